//! The node side of the content mover (seed `004_1419c51402506f7e.txt`): the agent ([`agent`]), which
//! registers with the mover and takes assignments over HTTP, and the content interpreter ([`interpreter`]),
//! which applies verified assignments to a hosted site and switches versions atomically. LAN election, the
//! group leader's duties and the tree and multicast transports come with part 2 of the mover.

pub mod agent;
pub mod interpreter;
pub mod paths;

pub use interpreter::{Applied, ApplyError, Interpreter};
