//! The node side of the content mover (seed `004_1419c51402506f7e.txt`): the agent ([`agent`]), which
//! registers with the mover and takes assignments over HTTP, and the content interpreter ([`interpreter`]),
//! which applies verified assignments to a hosted site and switches versions atomically, and the LAN
//! group-leader election of the discovery phase ([`election`], Fig. 5: a sans-IO core and its multicast
//! driver). The group leader's duties (registration, reports) and the tree and multicast transports are
//! still to come with part 2 of the mover.

pub mod agent;
pub mod election;
pub mod interpreter;
pub mod paths;

pub use interpreter::{Applied, ApplyError, Interpreter};
