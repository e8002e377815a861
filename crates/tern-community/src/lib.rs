//! Cache communities: a site's edges that divide the content between them, find who holds what, and
//! survive the loss of their master. The mechanisms of seed `002_82dbe7a209926976.txt` (dynamic
//! distributed caching: cache community, peer list, allocation table, master, member, election, cache
//! server) and seed `003_590cbd812baaa7e3.txt` (a retrieving server that knows which storage server holds
//! which content), as sans-IO cores with the seeds' names:
//!
//! - [`allocation`]: the allocation table (claims 11–14): weighted rendezvous hashing with `--replicas`
//!   owners per point and optional whole host names.
//! - [`Community`] ([`community`]): one edge's discovery, joining, liveness, election, nomination and
//!   location requests; input event + now → messages to send, timers to set, events.
//! - [`registry`]: the seed's cache server / administration module: communities, their masters and
//!   epochs, refusing stale masters.
//! - [`directory`]: seed 003's directory of holders, kept by the master.
//!
//! The messages are in [`tern_wire::community`]. The cores have no sockets; behind the `driver` feature,
//! [`driver`] is the tokio loop around [`Community`] that the edge runs, and [`service`] is `tern registry`.

pub mod allocation;
mod clock;
pub mod community;
mod config;
mod counters;
pub mod directory;
#[cfg(feature = "driver")]
pub mod driver;
mod event;
pub mod rank;
pub mod registry;
#[cfg(feature = "driver")]
pub mod service;

pub use allocation::{Allocation, AllocationConfig};
pub use clock::WallClock;
pub use community::Community;
pub use config::{CommunityConfig, ConfigError, DEFAULT_PRIORITY, DEFAULT_WEIGHT, Timers, shown_value};
pub use counters::{Counters, Refusals};
pub use directory::{Directory, DirectoryLimits};
pub use event::{Event, Input, Output, Role, TimerKind};
pub use registry::{Registry, RegistryConfig, RegistryReply, RegistryState};
