//! The content interpreter on real directories: publishes, patches, commit and rollback, and bad input.

mod atomicity;
mod election;
mod interpreter;
