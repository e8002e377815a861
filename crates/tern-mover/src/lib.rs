//! The content control manager (CCM) of the content mover (seed `004_1419c51402506f7e.txt`). For now: change
//! detection (the staging tree against the site's shadow copy) and the planning of the assignment that
//! carries the difference to the nodes. The database, scheduler, API, node registration and delivery come
//! with the rest of the mover.

pub mod keys;
pub mod plan;
pub mod service;
pub mod store;

pub use plan::{Plan, PlanError, PlanPolicy, PlanStats, Publication, plan};
