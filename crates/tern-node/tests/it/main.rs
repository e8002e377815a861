//! The content interpreter on real directories: publishes, patches, commit and rollback, and bad input.

mod atomicity;
mod durability;
mod election;
mod interpreter;
