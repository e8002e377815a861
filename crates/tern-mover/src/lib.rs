//! The content control manager (CCM) of the content mover (seed `004_1419c51402506f7e.txt`):
//!
//! - [`plan`]: change detection (the staging tree against the site's shadow copy) and the assignment that
//!   carries the difference to the nodes;
//! - [`rotation`]: the load-balancer interface (HAProxy's runtime API): stale nodes out of the rotation;
//! - [`rules`]: a site's include and exclude rules;
//! - [`schedule`]: the scheduler's decisions (which due job starts, waits or is refused), a pure core;
//! - [`store`]: the CCM database (sites, nodes, groups, jobs, checkpoints, history) in SQLite;
//! - [`versions`]: the shadow copy, previous tree, snapshots and checkpoints on disk;
//! - [`service`]: the JSON API, the scheduler loop and the two-phase delivery to nodes.

pub mod api;
pub mod keys;
pub mod metrics;
pub mod plan;
pub mod rotation;
pub mod rules;
pub mod schedule;
pub mod service;
pub mod store;
pub mod versions;

pub use plan::{Plan, PlanError, PlanPolicy, PlanStats, Publication, plan};
pub use rules::Rules;
pub use schedule::{ConflictPolicy, JobSpec, Target};
