//! RFC 9111 HTTP caching for tern's edge: the policy (what may be stored, for how long, when it must be
//! validated or may be served stale), cache keys and `Vary` variants, and the object store (a size-bounded
//! memory tier over a disk tier that survives restarts) with the indexes purges use.
//!
//! Nothing here does network I/O; the edge server (`tern-edge`) drives it.

pub mod directives;
pub mod disk;
pub mod inflight;
pub mod key;
pub mod meta;
pub mod policy;
pub mod s3fifo;
pub mod store;
pub mod structured;

pub use directives::Directives;
pub use inflight::{FetchTicket, PurgeScope};
pub use key::{KeyConfig, ObjectId, VaryValues, primary_key, variant_of, vary_values};
pub use meta::Meta;
pub use policy::{Freshness, NotStorable, PolicyConfig, ResponseDecision, UpstreamExchange, Usability};
pub use store::{
    BodySource, CachedObject, Fill, Hit, HoldingsListener, PurgeCount, PurgeMode, Store, StoreConfig, StoreError,
    StoreStats,
};
pub use tern_http::target::without_trailing_dot;
