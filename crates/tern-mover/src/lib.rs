#![warn(missing_docs)]
//! The content control manager (CCM) of the content mover (seed `004_1419c51402506f7e.txt`). One concern per
//! module:
//!
//! - [`service`]: starting the mover (data, keys, database, listeners, scheduler); [`ccm`]: the [`Mover`]
//!   the other modules work on, and its status;
//! - [`api`]: the JSON API (bodies are the types of [`tern_wire::mover`]);
//! - [`admission`]: accepting and cancelling jobs; [`dispatch`]: the scheduler loop, which starts due jobs
//!   and records how each try ended; [`schedule`]: its decisions (conflicts, retries, repeats), a pure core;
//! - the job bodies: [`publish`] (publish, restore), [`synchronise`] (synchronise, replicate), [`rollback`],
//!   [`remove`], [`checkpoint`];
//! - [`delivery`]: the two-phase delivery every job body goes through (prepare, quorum, commit, record), and
//!   its transport seam [`delivery::Delivery`], which carries a [`payload::Payload`] (an assignment in a
//!   file, read a chunk at a time); [`star`]: the transport that sends every node its own copy
//!   over HTTP; [`segments`]: the segments and group leaders the CCM knows, and a job's targets grouped by
//!   them; [`tree`]: the store-and-forward tree over group leaders (Figs. 6 and 7), the CCM's core, and
//!   [`tree_delivery`]: the transport that drives it over HTTP (the GLs' reports, the mover as the root);
//! - [`recovery`]: at start, finishing the record of jobs that decided to commit before the mover stopped
//!   (the write-ahead [`store::Decision`]); [`fault`]: fault points for tests of it;
//! - [`registration`]: nodes registering, and catching up a node that is behind;
//! - [`rotation`]: the load-balancer interface (HAProxy's runtime API): stale nodes out of the rotation;
//! - [`freshness`]: after a commit, the changed paths as URLs to the site's caches (the sync service, or the
//!   edges), and their acknowledgement;
//! - [`plan`](mod@plan): change detection (the staging tree against the site's shadow copy) and the assignment that
//!   carries the difference to the nodes; [`rules`]: a site's include and exclude rules;
//! - [`store`]: the CCM database (sites, nodes, groups, jobs, checkpoints, history) in SQLite, used through
//!   [`store_thread`], its own thread; [`versions`]: the shadow copy, previous tree, snapshots and checkpoints
//!   on disk; [`keys`]: the signing key; [`metrics`]: the Prometheus metrics.

pub mod admission;
pub mod api;
pub mod ccm;
pub mod checkpoint;
pub mod delivery;
pub mod dispatch;
pub mod fault;
pub mod freshness;
pub mod keys;
pub mod metrics;
pub mod payload;
pub mod plan;
pub mod publish;
pub mod recovery;
pub mod registration;
pub mod remove;
pub mod rollback;
pub mod rotation;
pub mod rules;
pub mod schedule;
pub mod segments;
pub mod service;
pub mod star;
pub mod store;
pub mod store_thread;
pub mod synchronise;
pub mod tree;
pub mod tree_delivery;
pub mod versions;

pub use ccm::{Mover, MoverConfig};
pub use plan::{Plan, PlanError, PlanPolicy, PlanStats, Publication, plan};
pub use rules::Rules;
pub use schedule::{ConflictPolicy, JobSpec, Target};
pub use tern_wire::mover::{JobKind, JobState, NodeState};
