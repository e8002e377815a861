//! tern's lab: the harness every multi-host test and benchmark of tern uses.
//!
//! - [`topology`]: hosts as network namespaces on per-segment bridges joined by a router, rate limits,
//!   faults; a loopback mode where namespaces are not available.
//! - [`probe`]: small network probes run inside hosts (multicast, TCP echo, throughput).
//! - [`fleet`]: a mover and nodes as real `tern` processes in lab segments (the tree's lab test and
//!   benchmark).
//! - [`load`]: an HTTP load generator (Zipf popularity, size mix, HDR latency percentiles).
//! - [`origin`]: a synthetic origin with injectable latency.
//! - [`bench`]: `tern-lab bench edge`, tern against nginx and Varnish.
//! - [`mover_bench`]: `tern-lab bench mover`, the content mover against rsync (sequential and parallel).
//! - [`multicast_bench`]: `tern-lab bench multicast`, the content mover's local distribution on a
//!   segment's multicast data channel against HTTP unicast and UFTP.
//! - [`delta_bench`]: `tern-lab bench delta`, differential caching over a rate-limited long link.
//! - [`sync_bench`]: `tern-lab bench sync`, write-to-fresh and purge times across many edges.
//! - [`community_bench`]: `tern-lab bench community`, a cache community against independent edges and one
//!   big edge.

pub mod bench;
pub mod community_bench;
pub mod delta_bench;
pub mod fleet;
pub mod load;
pub mod mover_bench;
pub mod multicast_bench;
pub mod origin;
pub mod probe;
pub mod sync_bench;
pub mod topology;

pub use topology::{Host, HostProcess, Lab, LabError, LabSpec, Mode};
