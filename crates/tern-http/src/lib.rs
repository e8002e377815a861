//! HTTP semantics shared by tern's servers (RFC 9110): response bodies that stream with bounded memory,
//! entity tags and conditional requests, byte ranges, hop-by-hop fields and HTTP dates; and the HTTP/1.1
//! response framing ([`h1`]) the edge's own origin client reads responses with.
//!
//! Both the static origin (`tern serve`) and the edge cache (`tern edge`) answer conditional and range
//! requests; the rules live here once so the two cannot disagree.

pub mod body;
pub mod conditional;
pub mod date;
pub mod etag;
pub mod h1;
pub mod hop;
pub mod list;
pub mod quick_ack;
pub mod range;
pub mod server;
pub mod target;
#[cfg(any(test, feature = "testsuite"))]
pub mod testsuite;
pub mod tls;

pub use body::{
    Body, BodyEndedEarly, BodyStalled, BoxError, ChannelSender, CollectError, REQUEST_BODY_DEADLINE, channel,
    collect_within, empty, file_range, full, slice, with_abort, with_data_counter, with_idle_timeout,
};
