//! The node side of the content mover (seed `004_1419c51402506f7e.txt`): the agent ([`agent`]), which
//! registers with the mover and takes assignments over HTTP, and the content interpreter ([`interpreter`]),
//! which applies verified assignments to a hosted site and switches versions atomically, and the LAN
//! group-leader election of the discovery phase ([`election`], Fig. 5: a sans-IO core and its multicast
//! driver), the segment's registration and the leader's reports to the mover ([`registration`], claims
//! 38–44: a sans-IO core and its driver), and [`discovery`], which starts both beside the agent; the spool
//! every assignment is received into and checked on the way ([`spool`]), and the group leader's part in
//! the store-and-forward tree ([`forward`], Figs. 6 and 7).

pub mod agent;
mod clock;
pub mod discovery;
pub mod election;
pub mod forward;
pub mod interpreter;
pub mod mctp;
pub mod metrics;
pub mod paths;
pub mod registration;
pub mod spool;

pub use interpreter::{Applied, ApplyError, Interpreter};
