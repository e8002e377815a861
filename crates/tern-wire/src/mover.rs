//! Messages of the content mover (seed `004_1419c51402506f7e.txt`) between its processes: the content control
//! manager (CCM, `tern mover`), the nodes (`tern node`) and the clients of its job API (`tern publish`,
//! `tern jobs`, `tern checkpoint`, scripts).
//!
//! | message | from → to | HTTP |
//! |---|---|---|
//! | [`Registration`] / [`Registered`] | node → mover | `POST /api/nodes/register` |
//! | [`AssignmentAnswer`] / [`ErrorAnswer`] | node → mover, the answer to an assignment | `POST /assignments` |
//! | [`JobRequest`] / [`JobCreated`] | client → mover | `POST /api/jobs` |
//! | [`Job`] (with [`JobNode`]) | mover → client | `GET /api/jobs`, `GET /api/jobs/ID` |
//! | [`JobCancelled`] | mover → client | `POST /api/jobs/ID/cancel` |
//! | [`CheckpointRequest`] / [`CheckpointCreated`], [`Checkpoint`] | client ↔ mover | `/api/checkpoints` |
//! | [`GroupRequest`] | client → mover | `PUT /api/groups/NAME` |
//! | [`HistoryEntry`] | mover → client | `GET /api/history` |
//!
//! A site's caches ([`SiteCaches`]) travel with a publish (or restore) and become the site's; each job whose
//! commit changed what readers get shows how the caches took it ([`JobFreshness`]).
//!
//! Every body is JSON. The enums ([`JobKind`], [`JobState`], [`NodeState`], [`ConflictPolicy`]) travel as
//! the lowercase words the mover has always written, which are also what its database stores; a word
//! outside the list is refused with an [`UnknownValue`] that names the accepted ones. Times are
//! milliseconds since the Unix epoch (`*_ms`), periods seconds (`*_s`), sizes bytes.

#![warn(missing_docs)]

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// A word that is not one of an enum's values (a job kind, a job state, ...), from the network or the
/// mover's database.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown {what} `{value}`; one of {expected}")]
pub struct UnknownValue {
    /// What was read: `job kind`, `job state`, ...
    pub what: &'static str,
    /// The word.
    pub value: String,
    /// The accepted words, comma-separated.
    pub expected: String,
}

/// An enum carried as one lowercase word: `as_str`, [`std::str::FromStr`] (with [`UnknownValue`]),
/// `Display`, and serde as that word.
macro_rules! word_enum {
    (
        $(#[$meta:meta])*
        $name:ident, $what:literal {
            $( $(#[$variant_meta:meta])* $variant:ident = $word:literal, )+
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum $name {
            $( $(#[$variant_meta])* $variant, )+
        }

        impl $name {
            /// Every value, in the order of the list.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The word it travels and is stored as.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $word,)+
                }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.pad(self.as_str())
            }
        }

        impl std::str::FromStr for $name {
            type Err = UnknownValue;

            fn from_str(text: &str) -> Result<Self, UnknownValue> {
                match text {
                    $($word => Ok($name::$variant),)+
                    _ => Err(UnknownValue {
                        what: $what,
                        value: text.to_string(),
                        expected: [$($word),+].join(", "),
                    }),
                }
            }
        }

        impl Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.serialize_str(self.as_str())
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let text = String::deserialize(deserializer)?;
                text.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}

word_enum! {
    /// The job kinds of seed 004 (the CCM's jobs).
    JobKind, "job kind" {
        /// Send the staging tree's changes to the site's nodes; they switch to the new version at once.
        Publish = "publish",
        /// Bring nodes behind the published version up to date (snapshots, or a full copy).
        Synchronise = "synchronise",
        /// Send nodes a full copy of the published version.
        Replicate = "replicate",
        /// Take the site off its nodes and stop hosting it.
        Remove = "remove",
        /// Switch the nodes back to the version before the published one.
        Rollback = "rollback",
        /// Publish a checkpoint's tree as a new version.
        Restore = "restore",
        /// Keep a compressed full copy of the published version (on the mover only).
        Checkpoint = "checkpoint",
    }
}

impl JobKind {
    /// Whether a job of this kind makes a new version of its site (or removes it): two such jobs for one
    /// site never run at once, whatever their nodes.
    pub fn changes_version(self) -> bool {
        matches!(
            self,
            JobKind::Publish | JobKind::Restore | JobKind::Rollback | JobKind::Remove
        )
    }

    /// Whether a job of this kind sends anything to nodes.
    pub fn uses_nodes(self) -> bool {
        self != JobKind::Checkpoint
    }
}

word_enum! {
    /// Where a job is in its life.
    JobState, "job state" {
        /// Waiting for its time.
        Scheduled = "scheduled",
        /// Due, waiting for a conflicting job to end.
        Queued = "queued",
        /// A try is running.
        Running = "running",
        /// Ended: it committed on every node it was for.
        Committed = "committed",
        /// Ended: it failed, with no tries left.
        Failed = "failed",
        /// Ended: it conflicted with a running job and its policy is `refuse`.
        Refused = "refused",
        /// Ended: cancelled before it started.
        Cancelled = "cancelled",
    }
}

impl JobState {
    /// Whether a job in this state has ended (it will not run again).
    pub fn is_finished(self) -> bool {
        matches!(
            self,
            JobState::Committed | JobState::Failed | JobState::Refused | JobState::Cancelled
        )
    }
}

word_enum! {
    /// A node's part in a job's current try (seed 004's two-phase delivery: prepare, then commit).
    NodeState, "node state" {
        /// Nothing has reached it yet.
        Pending = "pending",
        /// It holds the content in a temporary tree, waiting for the commit.
        Prepared = "prepared",
        /// It switched: the assignment is live there.
        Committed = "committed",
        /// A delivery to it failed (the job's node entry says why).
        Failed = "failed",
    }
}

word_enum! {
    /// What to do with a job that conflicts with another at the time it is due (seed 004: the scheduler's
    /// runtime conflict policy).
    #[derive(Default)]
    ConflictPolicy, "conflict policy" {
        /// Wait until the other job has ended.
        #[default]
        Queue = "queue",
        /// Give up: the job ends `refused`.
        Refuse = "refuse",
    }
}

/// Which nodes a job is for. JSON: `"all"`, `{"group": NAME}` or `{"node": NAME}`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Target {
    /// Every registered node.
    #[default]
    All,
    /// The nodes of a content group.
    Group(String),
    /// One node.
    Node(String),
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::All => f.write_str("every node"),
            Target::Group(group) => write!(f, "group {group}"),
            Target::Node(node) => write!(f, "node {node}"),
        }
    }
}

/// A site's include and exclude rules as the operator wrote them (seed 004: the CCM's per-site policies):
/// globs over paths relative to the site root. The mover checks and applies them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rules {
    /// Only files matching one of these are published (none: every file).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub include: Vec<String>,
    /// Files matching one of these are never published.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exclude: Vec<String>,
}

impl Rules {
    /// Whether there are no rules (every file is published).
    pub fn is_empty(&self) -> bool {
        self.include.is_empty() && self.exclude.is_empty()
    }
}

/// Seconds between a failed try and the next when the request does not say.
pub const DEFAULT_RETRY_DELAY_S: u64 = 30;

fn default_retry_delay() -> u64 {
    DEFAULT_RETRY_DELAY_S
}

/// Everything needed to run a job, now or later, and again after a restart of the mover: what the mover
/// stores, and the first fields of a [`Job`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobSpec {
    /// What it does.
    pub kind: JobKind,
    /// The hosted site.
    pub site: String,
    /// Staging directory on the mover's machine (publish; restore uses the unpacked checkpoint).
    #[serde(default)]
    pub staging: Option<String>,
    /// Checkpoint number (restore).
    #[serde(default)]
    pub checkpoint: Option<u64>,
    /// Which nodes; none: where the site is hosted (every node, for a site not published yet). A publish
    /// or restore with a target hosts the site there from then on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<Target>,
    /// Run again this many seconds after each run was due (a repeating job).
    #[serde(default)]
    pub every_s: Option<u64>,
    /// When it conflicts with another job.
    #[serde(default)]
    pub on_conflict: ConflictPolicy,
    /// How many times a failed run is tried again (0: it fails at the first failure).
    #[serde(default)]
    pub retries: u32,
    /// Seconds between a failure and the next try.
    #[serde(default = "default_retry_delay")]
    pub retry_delay_s: u64,
    /// Include and exclude rules (publish); they become the site's rules.
    #[serde(default)]
    pub rules: Option<Rules>,
    /// The caches in front of the site's nodes (publish, restore); they become the site's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub caches: Option<SiteCaches>,
    /// Read and hash every staging file (publish), like `rsync -c`, instead of reusing the hashes of files
    /// whose size, times and inode are unchanged since the last publish from the same directory.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub checksum: bool,
}

impl JobSpec {
    /// A job of `kind` for `site` where the site is hosted, due now, queued on conflict, not retried.
    pub fn new(kind: JobKind, site: &str) -> JobSpec {
        JobSpec {
            kind,
            site: site.to_string(),
            staging: None,
            checkpoint: None,
            target: None,
            every_s: None,
            on_conflict: ConflictPolicy::Queue,
            retries: 0,
            retry_delay_s: DEFAULT_RETRY_DELAY_S,
            rules: None,
            caches: None,
            checksum: false,
        }
    }

    /// Whether the job makes a new version of the site (or removes it).
    pub fn changes_version(&self) -> bool {
        self.kind.changes_version()
    }

    /// Whether the job is sent to nodes at all.
    pub fn uses_nodes(&self) -> bool {
        self.kind.uses_nodes()
    }
}

/// A job as `POST /api/jobs` takes it. Unknown fields are refused, so a misspelt option is not ignored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobRequest {
    /// What it does.
    pub kind: JobKind,
    /// The hosted site.
    pub site: String,
    /// Staging directory on the mover's machine (publish).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub staging: Option<String>,
    /// Checkpoint number (restore).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkpoint: Option<u64>,
    /// Only this content group's nodes (a publish hosts the site there from then on).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// Only this node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// When to run (ms since the epoch); default now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub at_ms: Option<u64>,
    /// Run again every this many seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub every_s: Option<u64>,
    /// `queue` (default) or `refuse` when it conflicts with a running job.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_conflict: Option<ConflictPolicy>,
    /// Tries after a failure (default 0: a failed job fails at once).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retries: Option<u32>,
    /// Seconds between tries (default [`DEFAULT_RETRY_DELAY_S`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_delay_s: Option<u64>,
    /// Include patterns (publish): only matching files are published.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub include: Option<Vec<String>>,
    /// Exclude patterns (publish).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exclude: Option<Vec<String>>,
    /// The caches in front of the site's nodes (publish, restore): they become the site's, and the mover
    /// keeps them fresh after every commit. One without a sync service or edges turns that off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub caches: Option<SiteCaches>,
    /// Read and hash every staging file (publish, `tern publish --checksum`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub checksum: bool,
}

/// Why a [`JobRequest`] does not make a job.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JobRequestError {
    /// Both `group` and `node` are given.
    #[error("give a group or a node, not both")]
    GroupAndNode,
}

impl JobRequest {
    /// A request for a job of `kind` for `site` with every option left to its default.
    pub fn new(kind: JobKind, site: &str) -> JobRequest {
        JobRequest {
            kind,
            site: site.to_string(),
            staging: None,
            checkpoint: None,
            group: None,
            node: None,
            at_ms: None,
            every_s: None,
            on_conflict: None,
            retries: None,
            retry_delay_s: None,
            include: None,
            exclude: None,
            caches: None,
            checksum: false,
        }
    }

    /// The job it asks for, and when it is due (ms since the epoch; 0: now).
    pub fn into_spec(self) -> Result<(JobSpec, u64), JobRequestError> {
        let mut spec = JobSpec::new(self.kind, &self.site);
        spec.staging = self.staging;
        spec.checkpoint = self.checkpoint;
        spec.target = match (self.group, self.node) {
            (Some(_), Some(_)) => return Err(JobRequestError::GroupAndNode),
            (Some(group), None) => Some(Target::Group(group)),
            (None, Some(node)) => Some(Target::Node(node)),
            (None, None) => None,
        };
        spec.every_s = self.every_s;
        spec.on_conflict = self.on_conflict.unwrap_or_default();
        spec.retries = self.retries.unwrap_or(0);
        spec.retry_delay_s = self.retry_delay_s.unwrap_or(DEFAULT_RETRY_DELAY_S);
        if self.include.is_some() || self.exclude.is_some() {
            spec.rules = Some(Rules {
                include: self.include.unwrap_or_default(),
                exclude: self.exclude.unwrap_or_default(),
            });
        }
        spec.caches = self.caches;
        spec.checksum = self.checksum;
        // A due time of 0 means "now"; a time asked for at the epoch itself is a time long past, and
        // stays one (1 ms later), so that the mover refuses it instead of starting the job at once.
        let due_ms = match self.at_ms {
            None => 0,
            Some(at_ms) => at_ms.max(1),
        };
        Ok((spec, due_ms))
    }
}

/// The answer to `POST /api/jobs` (status 202): the new job's id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobCreated {
    /// The job's id.
    pub id: String,
}

/// The answer to `POST /api/jobs/ID/cancel`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobCancelled {
    /// The job's id.
    pub id: String,
    /// Always [`JobState::Cancelled`].
    pub state: JobState,
}

/// How long the mover keeps trying to have a commit's URLs acknowledged by a site's caches, when the site
/// does not say ([`SiteCaches::confirm_within_s`]).
pub const DEFAULT_CONFIRM_WITHIN_S: u64 = 600;

/// The caches in front of a site's nodes, which the mover keeps fresh after every commit (seed 004: the CCM
/// sends invalidation messages to the caches; seed 001: the sync service's cacher purges and prefetches).
/// The changed paths go as URLs under `public_url` either to the sync service, which purges them on every
/// cache it drives and fetches the changed ones again, or straight to `edges`. Key and CA files are paths on
/// the mover's machine, like a staging directory: no secret travels in a job or is kept in the database.
/// A key file holding one of the mover's own secrets (its signing key, cluster key, API or admin token,
/// encryption key) is refused: a job must not make the mover send them anywhere.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SiteCaches {
    /// The site's public base URL (`https://www.example.com`, or with a path prefix): published path
    /// `docs/a.html` is read at `https://www.example.com/docs/a.html`.
    #[serde(default)]
    pub public_url: String,
    /// The sync service's admin URL (`tern sync --admin`), `http://` or `https://`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sync_url: Option<String>,
    /// Key file whose token the sync service takes for purges (the sync service's `--key`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sync_key: Option<String>,
    /// Edges the mover purges itself (`PURGE`, then a prefetch `GET`), by base URL.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub edges: Vec<String>,
    /// The edges' purge key file (their `--purge-key`); none when they allow the mover by address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub edge_key: Option<String>,
    /// CA certificate (PEM) that alone vouches for an `https://` sync service or edge [default: the
    /// system's roots].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca: Option<String>,
    /// Seconds the mover keeps trying to have a commit acknowledged by every cache before it records the
    /// edges as not confirmed fresh [default: [`DEFAULT_CONFIRM_WITHIN_S`]].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub confirm_within_s: Option<u64>,
}

impl SiteCaches {
    /// Whether no cache is named: the mover tells nobody (this is how a site's caches are turned off).
    pub fn is_off(&self) -> bool {
        self.sync_url.is_none() && self.edges.is_empty()
    }
}

word_enum! {
    /// Whether the caches in front of a site serve what a job committed.
    FreshState, "freshness state" {
        /// The changed URLs are with the caches (or on their way); not every cache has acknowledged them.
        Pending = "pending",
        /// Every cache acknowledged: the edges serve what the job committed.
        Fresh = "fresh",
        /// The mover stopped trying before every cache acknowledged (the error says why). The commit stands;
        /// an edge not confirmed serves the old copy until it expires or is purged.
        Unconfirmed = "unconfirmed",
    }
}

/// How the caches in front of a site took what a job committed: `GET /api/jobs/ID` shows it as
/// `freshness`, and `tern publish --wait-fresh` waits for `fresh_ms`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobFreshness {
    /// Where it stands.
    pub state: FreshState,
    /// Where the URLs went: `sync service URL`, or `N edges`.
    pub via: String,
    /// URLs purged (every spelling, and index files' directories).
    pub purged: u64,
    /// Of those, URLs fetched again at once (the changed content, one spelling each).
    pub prefetched: u64,
    /// When the commit handed them over (ms since the epoch).
    pub since_ms: u64,
    /// When every cache had acknowledged them (ms since the epoch): from then on every edge serves what the
    /// job committed.
    #[serde(default)]
    pub fresh_ms: Option<u64>,
    /// Tries to hand them over so far.
    #[serde(default)]
    pub attempts: u32,
    /// The last failure, and what to do about it.
    #[serde(default)]
    pub error: Option<String>,
    /// Each cache, as last heard.
    #[serde(default)]
    pub caches: Vec<CacheFreshness>,
}

/// One cache's part in a [`JobFreshness`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CacheFreshness {
    /// The cache's base URL.
    pub url: String,
    /// Whether it has acknowledged every URL.
    pub acknowledged: bool,
    /// Why it has not, when it failed.
    #[serde(default)]
    pub error: Option<String>,
}

/// A job as `GET /api/jobs/ID` shows it (and `GET /api/jobs`, newest first): its [`JobSpec`]'s fields,
/// then its state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Job {
    /// Id.
    pub id: String,
    /// What it does.
    #[serde(flatten)]
    pub spec: JobSpec,
    /// Where it is in its life.
    pub state: JobState,
    /// Why it failed or was refused, or what it waits for: queued, why it is not started yet; running,
    /// what the delivery waits for when it is worth saying (a group leader that stopped reporting, a
    /// segment waiting for a new one), cleared when it no longer waits.
    #[serde(default)]
    pub error: Option<String>,
    /// Per node: its state and the bytes sent to it in the current try.
    #[serde(default)]
    pub nodes: Vec<JobNode>,
    /// When it was created (ms since the epoch).
    pub created_ms: u64,
    /// When it is (or was) due (ms since the epoch).
    pub due_ms: u64,
    /// Tries so far.
    #[serde(default)]
    pub attempt: u32,
    /// When the last try started (ms since the epoch).
    #[serde(default)]
    pub started_ms: Option<u64>,
    /// When it ended (ms since the epoch).
    #[serde(default)]
    pub finished_ms: Option<u64>,
    /// How the caches in front of the site took what the job committed (none: the site names no caches,
    /// or the job changed nothing readers get).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub freshness: Option<JobFreshness>,
}

impl Job {
    /// Whether the job has ended (it will not run again).
    pub fn finished(&self) -> bool {
        self.state.is_finished()
    }
}

/// A node's part in a job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobNode {
    /// The node's name.
    pub node: String,
    /// Where the node is in the job's current try.
    pub state: NodeState,
    /// Bytes sent to it in the current try.
    pub bytes: u64,
    /// Why its delivery failed.
    #[serde(default)]
    pub error: Option<String>,
    /// Who passed the assignment on to it through seed 004's store-and-forward tree: its group leader, the
    /// leader a leader fetched from, or `mover` for a leader that fetched its copy from the mover (counted
    /// in the tree's figures). `bytes` counts only what the mover sent it otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub via: Option<String>,
}

impl JobNode {
    /// Who passed the assignment on to it, when the mover itself sent it nothing: what a listing shows
    /// in place of its bytes (`via a0`).
    pub fn served_via(&self) -> Option<&str> {
        self.via.as_deref().filter(|_| self.bytes == 0)
    }
}

/// A node's registration (seed 004: registration with the CCM), sent at start and then periodically.
/// Only `name` and `url` are required.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Registration {
    /// The node's name (letters, digits, `-`, `_`, `.`).
    pub name: String,
    /// Where it takes assignments: `http://HOST:PORT` or `https://HOST:PORT`.
    pub url: String,
    /// Bytes free for the hosted sites.
    #[serde(default)]
    pub free_disk: u64,
    /// CPUs.
    #[serde(default)]
    pub cpus: u32,
    /// Content groups it declares itself a member of.
    #[serde(default)]
    pub groups: Vec<String>,
    /// The version (sequence) of each site it holds live.
    #[serde(default)]
    pub versions: BTreeMap<String, u64>,
    /// The version (sequence) of each site it holds prepared and whole in its temporary tree, waiting for
    /// a commit (a publish whose commit never came, e.g. the mover stopped after deciding): the mover's
    /// catch-up sends that version's commit alone instead of its content again.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub prepared: BTreeMap<String, u64>,
    /// The node's instance: a random id ([`INSTANCE_LEN`] hex digits) it made at its first start and keeps
    /// in its root, so that two machines given one name are told apart (the mover refuses the second
    /// while the first holds the name). Empty from a node that predates it.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub instance: String,
    /// The id of the key it opens encrypted assignments with ([`encryption_key_id`]); `None` without one.
    /// A mover that encrypts refuses a node whose key is not its own: every delivery to it would fail.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encryption_key_id: Option<String>,
}

/// The public id of an assignment encryption key: 16 hex digits of a hash derived from it (BLAKE3's key
/// derivation, its own context), so that a node and the mover can tell whether they hold one key without
/// either sending it.
pub fn encryption_key_id(key: &[u8; 32]) -> String {
    let derived = blake3::derive_key("tern 2026 assignment encryption key id", key);
    hex::encode(&derived[..ENCRYPTION_KEY_ID_LEN / 2])
}

/// Length of an [`encryption_key_id`], in hex digits.
pub const ENCRYPTION_KEY_ID_LEN: usize = 16;

/// Whether `id` has the shape of an [`encryption_key_id`] ([`ENCRYPTION_KEY_ID_LEN`] lowercase hex digits).
pub fn valid_encryption_key_id(id: &str) -> bool {
    id.len() == ENCRYPTION_KEY_ID_LEN && id.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Length of a node's instance id, in hex digits (128 random bits).
pub const INSTANCE_LEN: usize = 32;

/// A new random node instance id ([`INSTANCE_LEN`] lowercase hex digits).
pub fn new_instance() -> String {
    let mut bytes = [0u8; INSTANCE_LEN / 2];
    // The system's random source; if it fails (no entropy at boot), the time and process id still make
    // two machines' ids differ.
    if getrandom::fill(&mut bytes).is_err() {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        bytes[..8].copy_from_slice(&(nanos as u64).to_le_bytes());
        bytes[8..12].copy_from_slice(&std::process::id().to_le_bytes());
    }
    hex::encode(bytes)
}

/// Whether `instance` is a node instance id as [`Registration::instance`] carries: empty (an older node) or
/// [`INSTANCE_LEN`] lowercase hex digits.
pub fn valid_instance(instance: &str) -> bool {
    instance.is_empty()
        || (instance.len() == INSTANCE_LEN
            && instance
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)))
}

/// The mover's answer to a [`Registration`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Registered {
    /// The node's name.
    pub registered: String,
    /// Catch-up jobs started for sites the node is behind on.
    #[serde(default)]
    pub synchronising: Vec<String>,
}

/// A node's answer to an assignment it applied (status 200).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AssignmentAnswer {
    /// The assignment's id.
    pub id: String,
    /// Commands applied.
    pub commands: u64,
    /// The version now live (its directory name), when the assignment switched versions.
    #[serde(default)]
    pub live: Option<String>,
}

/// The body of every refusal and failure, from the mover and from nodes: `{"error": REASON}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorAnswer {
    /// Why, in lowercase words.
    pub error: String,
}

impl ErrorAnswer {
    /// The most of a refusal's body worth reading (bytes): a reason is one line.
    pub const MAX_BODY: usize = 4096;

    /// The reason a refusal's `body` gives, for a log line or a job's error: its `error` when it is an
    /// [`ErrorAnswer`], else the body as text; on one line (runs of white space become one space), at
    /// most [`ErrorAnswer::MAX_BODY`] bytes.
    pub fn reason_in(body: &[u8]) -> String {
        let text = match serde_json::from_slice::<ErrorAnswer>(body) {
            Ok(answer) => answer.error,
            Err(_) => String::from_utf8_lossy(&body[..body.len().min(Self::MAX_BODY)]).into_owned(),
        };
        let line = text.split_whitespace().collect::<Vec<_>>().join(" ");
        crate::cut_at(&line, Self::MAX_BODY).trim_end().to_string()
    }
}

/// Why an assignment sent to a node (`POST NODE/assignments`, by the mover or a group leader) got no
/// answer, from the HTTP client's `reason`: `connected` false is a node never reached; true is one that
/// closed the connection before it answered, which may be a refusal part-way (a full disk) whose answer
/// did not get through while the sender was still sending.
pub fn assignment_not_answered(connected: bool, reason: &str) -> String {
    if connected {
        format!(
            "the connection to the node broke while the assignment was sent ({reason}): the node may have \
             refused it part-way (a full disk, a bad assignment), or stopped; its log says why"
        )
    } else {
        format!("node unreachable: {reason}")
    }
}

/// `POST /api/checkpoints`: make a checkpoint of a site's published version now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckpointRequest {
    /// The hosted site.
    pub site: String,
}

/// The answer to a [`CheckpointRequest`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckpointCreated {
    /// The hosted site.
    pub site: String,
    /// The checkpoint's number.
    pub number: u64,
}

/// A checkpoint as `GET /api/checkpoints?site=S` and `GET /api/sites/NAME` list it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// Its number (1, 2, ...; a restore names it).
    pub number: u64,
    /// The site version it holds.
    pub version: u64,
    /// When it was made (ms since the epoch).
    pub created_ms: u64,
    /// Its size, compressed.
    pub bytes: u64,
}

/// `PUT /api/groups/NAME`: the members of a content group the operator manages (the answer adds `group`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupRequest {
    /// Node names.
    pub nodes: Vec<String>,
}

/// An entry of the mover's history log (`GET /api/history`, newest first).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryEntry {
    /// When (ms since the epoch).
    pub at_ms: u64,
    /// The job it is about, if any.
    pub job: Option<String>,
    /// What happened.
    pub message: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_round_trip_and_unknown_ones_name_the_accepted_ones() {
        for kind in JobKind::ALL {
            assert_eq!(kind.as_str().parse::<JobKind>(), Ok(*kind));
        }
        for state in JobState::ALL {
            assert_eq!(state.as_str().parse::<JobState>(), Ok(*state));
        }
        for state in NodeState::ALL {
            assert_eq!(state.as_str().parse::<NodeState>(), Ok(*state));
        }
        assert_eq!(format!("[{:9}]", JobState::Running), "[running  ]", "padded like a str");
        let error = "explode".parse::<JobKind>().expect_err("unknown");
        assert_eq!(
            error.to_string(),
            "unknown job kind `explode`; one of publish, synchronise, replicate, remove, rollback, restore, checkpoint"
        );
        let error = serde_json::from_str::<JobState>("\"paused\"").expect_err("unknown");
        assert!(error.to_string().contains("unknown job state `paused`"), "{error}");
    }

    #[test]
    fn a_refusal_gives_its_reason_on_one_bounded_line() {
        let answer = b"{\n  \"error\": \"commit of version 2 refused: no version is prepared\"\n}";
        assert_eq!(
            ErrorAnswer::reason_in(answer),
            "commit of version 2 refused: no version is prepared"
        );
        assert_eq!(ErrorAnswer::reason_in(b"  bad\r\ngateway \n"), "bad gateway");
        assert_eq!(ErrorAnswer::reason_in(b""), "");
        let long = "é".repeat(ErrorAnswer::MAX_BODY);
        let reason = ErrorAnswer::reason_in(format!("{{\"error\": \"{long}\"}}").as_bytes());
        assert!(reason.len() <= ErrorAnswer::MAX_BODY && reason.chars().all(|c| c == 'é'));
        assert!(ErrorAnswer::reason_in(&[0xff; 10_000]).len() <= ErrorAnswer::MAX_BODY);
    }

    #[test]
    fn finished_states_and_version_changing_kinds() {
        let finished: Vec<_> = JobState::ALL.iter().filter(|s| s.is_finished()).collect();
        assert_eq!(
            finished,
            [
                &JobState::Committed,
                &JobState::Failed,
                &JobState::Refused,
                &JobState::Cancelled
            ]
        );
        assert!(JobKind::Rollback.changes_version());
        assert!(!JobKind::Synchronise.changes_version());
        assert!(!JobKind::Checkpoint.uses_nodes());
    }

    #[test]
    fn a_job_request_reads_as_before_and_refuses_unknown_fields() {
        let request: JobRequest = serde_json::from_str(
            r#"{"kind": "publish", "site": "www", "staging": "/s", "group": "eu", "on_conflict": "refuse",
                "retries": 2, "exclude": ["*.tmp"]}"#,
        )
        .expect("request");
        let (spec, due) = request.clone().into_spec().expect("spec");
        assert_eq!(due, 0);
        assert_eq!(spec.kind, JobKind::Publish);
        assert_eq!(spec.target, Some(Target::Group("eu".into())));
        assert_eq!(spec.on_conflict, ConflictPolicy::Refuse);
        assert_eq!(spec.retry_delay_s, DEFAULT_RETRY_DELAY_S);
        assert_eq!(spec.rules.as_ref().map(|r| r.exclude.len()), Some(1));
        // A client's request is written with only the fields it sets.
        let written = serde_json::to_value(&request).expect("json");
        assert_eq!(written.as_object().map(|o| o.len()), Some(7), "{written}");
        assert!(serde_json::from_str::<JobRequest>(r#"{"kind": "publish", "site": "w", "stagin": "/s"}"#).is_err());
        let mut both = JobRequest::new(JobKind::Synchronise, "www");
        both.group = Some("eu".into());
        both.node = Some("n1".into());
        assert_eq!(both.into_spec(), Err(JobRequestError::GroupAndNode));
        // A time asked for at the epoch (a date field left at 1970-01-01) is not "now".
        let mut epoch = JobRequest::new(JobKind::Synchronise, "www");
        epoch.at_ms = Some(0);
        assert_eq!(epoch.into_spec().expect("spec").1, 1);
    }

    #[test]
    fn a_sites_caches_travel_with_a_publish_and_a_misspelt_one_is_refused() {
        let request: JobRequest = serde_json::from_str(
            r#"{"kind": "publish", "site": "www", "staging": "/s",
                "caches": {"public_url": "https://www.example.com", "sync_url": "http://sync:7071",
                           "sync_key": "/etc/tern/sync.key"}}"#,
        )
        .expect("request");
        let (spec, _) = request.into_spec().expect("spec");
        let caches = spec.caches.expect("caches");
        assert_eq!(caches.sync_key.as_deref(), Some("/etc/tern/sync.key"));
        assert!(!caches.is_off());
        assert!(SiteCaches::default().is_off(), "naming no cache turns them off");
        let misspelt =
            r#"{"kind": "publish", "site": "w", "caches": {"public_url": "http://h", "edge": ["http://e"]}}"#;
        assert!(serde_json::from_str::<JobRequest>(misspelt).is_err());
        // A job from before caches existed reads without them.
        let old: JobSpec = serde_json::from_str(r#"{"kind": "rollback", "site": "www"}"#).expect("old spec");
        assert_eq!(old.caches, None);
        let freshness: JobFreshness = serde_json::from_str(
            r#"{"state": "pending", "via": "2 edges", "purged": 3, "prefetched": 1, "since_ms": 5}"#,
        )
        .expect("freshness");
        assert_eq!(
            (freshness.state, freshness.fresh_ms, freshness.attempts),
            (FreshState::Pending, None, 0)
        );
    }

    #[test]
    fn a_job_reads_back_what_the_mover_writes() {
        let mut spec = JobSpec::new(JobKind::Publish, "www");
        spec.staging = Some("/s".into());
        spec.target = Some(Target::Node("n1".into()));
        let job = Job {
            id: "publish-1-0".into(),
            spec,
            state: JobState::Running,
            error: None,
            nodes: vec![JobNode {
                node: "n1".into(),
                state: NodeState::Prepared,
                bytes: 10,
                error: None,
                via: None,
            }],
            created_ms: 1,
            due_ms: 2,
            attempt: 1,
            started_ms: Some(3),
            finished_ms: None,
            freshness: None,
        };
        let value = serde_json::to_value(&job).expect("json");
        assert_eq!(value["kind"], "publish", "the spec is flattened: {value}");
        assert_eq!(value["state"], "running");
        assert_eq!(value["nodes"][0]["state"], "prepared");
        assert_eq!(value["target"], serde_json::json!({ "node": "n1" }));
        let back: Job = serde_json::from_value(value).expect("job");
        assert_eq!(back, job);
    }

    #[test]
    fn a_registration_needs_only_a_name_and_a_url() {
        let registration: Registration =
            serde_json::from_str(r#"{"name": "held", "url": "http://127.0.0.1:1"}"#).expect("registration");
        assert_eq!(registration.cpus, 0);
        assert!(registration.versions.is_empty());
        assert!(serde_json::from_str::<Registration>(r#"{"name": "n"}"#).is_err());
    }
}
