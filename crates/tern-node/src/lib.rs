//! The node side of the content mover (seed `004_1419c51402506f7e.txt`). For now: the content interpreter,
//! which applies verified assignments to a hosted site and switches versions atomically. Registration,
//! LAN election, the group leader's duties and the transports come with the rest of the mover.

pub mod agent;
pub mod interpreter;
pub mod paths;

pub use interpreter::{Applied, ApplyError, Interpreter};
