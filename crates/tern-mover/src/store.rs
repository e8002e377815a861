//! The mover's state in SQLite (seed 004's CCM database): hosted sites with their published version, rules and
//! target; registered nodes, the content groups they belong to and the version of each site they hold; the
//! network segments their group leaders report (the last accepted report of each, as JSON); jobs
//! with their schedule, policies and per-node state; the caches in front of each site and how they took each
//! job's commit ([`crate::freshness`]); checkpoints; snapshots; and a history log. Every job's
//! state is written here before it is acted on, so a restart finds it.
//!
//! Job kinds and states, and a node's state in a job, are stored as the words of their
//! [`tern_wire::mover`] enums; a word the enum does not know is read as an error naming the accepted ones
//! (`FromSqlConversionFailure`), never as a default. The store is used from one thread at a time:
//! [`crate::store_thread::StoreThread`] owns it.

use std::collections::BTreeSet;
use std::path::Path;
use std::str::FromStr;

use rusqlite::types::Type;
use rusqlite::{Connection, OptionalExtension, Row, params};
use serde::{Deserialize, Serialize};
use tern_wire::mover::{
    Checkpoint, FreshState, HistoryEntry, JobFreshness, JobState, NodeState, SiteCaches, UnknownValue,
};
use tern_wire::segment::SegmentView;
use tracing::warn;

use crate::rules::Rules;
use crate::schedule::{JobKind, JobSpec, Target, may_try_again};

/// A job and a node's part in it, as the job API shows them.
pub use tern_wire::mover::{Job, JobNode};

/// A registered node.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Node {
    /// Its name.
    pub name: String,
    /// Where it takes assignments (`http://HOST:PORT`).
    pub url: String,
    /// When it last registered (ms since the epoch).
    pub last_seen_ms: u64,
    /// Free disk bytes it reported.
    pub free_disk: u64,
    /// CPUs it reported.
    pub cpus: u32,
    /// Content groups it belongs to.
    pub groups: Vec<String>,
    /// Its instance id ([`tern_wire::mover::Registration::instance`]; empty from a node that predates it).
    /// Never shown (`/status`, the API): without a cluster key it is what proves a registration comes
    /// from the machine that holds the name.
    #[serde(skip_serializing)]
    pub instance: String,
}

/// A hosted site.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Site {
    /// Its name.
    pub name: String,
    /// The published version (0: none).
    pub sequence: u64,
    /// The version before it, kept for rollback (0: none).
    pub previous: u64,
    /// The highest version ever issued: a new version is always above it, so a version number names one
    /// content even after a rollback.
    pub high: u64,
    /// Where it is hosted.
    pub target: Target,
    /// Which staging files are published.
    pub rules: Rules,
    /// The published tree (a `tern_tree::Snapshot` as JSON).
    #[serde(skip)]
    pub snapshot: String,
}

impl Site {
    /// The number the site's next version takes: above every version ever issued.
    pub fn next_version(&self) -> u64 {
        self.high.max(self.sequence) + 1
    }
}

/// A snapshot: the assignment that made a version from the one before (kept until the next checkpoint).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SnapshotRecord {
    /// The version it made.
    pub sequence: u64,
    /// The version it applies to.
    pub base: u64,
    /// The job.
    pub job: String,
    /// Its size.
    pub bytes: u64,
    /// When.
    pub created_ms: u64,
}

/// A job's decision to commit, written ahead: recorded before the first commit message of the job leaves,
/// with everything needed to finish the job's record. Once the nodes may have switched, the mover's record
/// must follow them: a mover that stops after the decision finishes the record at its next start
/// ([`crate::recovery`]) rather than failing the job and "synchronising" the nodes back.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Decision {
    /// The job.
    pub job: String,
    /// Its site.
    pub site: String,
    /// The version the nodes hold once they committed (0: a remove, which leaves none).
    pub version: u64,
    /// What finishing the record does.
    pub finish: Finish,
}

/// What finishing a decided job's record does, by kind of job.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase", tag = "kind")]
pub enum Finish {
    /// A publish or a restore: `shadow-next` (built before the decision) becomes the shadow copy, the
    /// snapshot (written before the decision) is recorded, and the site's record becomes `site`.
    Publish {
        /// The site's record after the commit.
        site: DecidedSite,
        /// The snapshot of the version, when it was kept.
        snapshot: Option<SnapshotRecord>,
    },
    /// A rollback: the shadow copy and the previous tree swap, and the site's record becomes `site`.
    Rollback {
        /// The site's record after the commit.
        site: DecidedSite,
        /// The inode of the tree switched to (the previous tree at the decision): it tells a swap already
        /// done from one still to do, as a rename keeps it.
        inode: u64,
    },
    /// A remove: the mover's copies go aside and the site's record becomes a tombstone
    /// ([`Store::forget_site`]: not hosted, its highest version and caches kept).
    Remove,
}

/// A site's record as a decision carries it (the [`Site`] fields, with its published tree).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct DecidedSite {
    /// The published version after the commit.
    pub sequence: u64,
    /// The version kept for rollback.
    pub previous: u64,
    /// The highest version issued.
    pub high: u64,
    /// Where it is hosted.
    pub target: Target,
    /// Its rules.
    pub rules: Rules,
    /// The published tree (a `tern_tree::Snapshot` as JSON).
    pub snapshot: String,
}

impl DecidedSite {
    /// The record of `site` as decided.
    pub fn of(site: &Site) -> DecidedSite {
        DecidedSite {
            sequence: site.sequence,
            previous: site.previous,
            high: site.high,
            target: site.target.clone(),
            rules: site.rules.clone(),
            snapshot: site.snapshot.clone(),
        }
    }

    /// The site's record, named `name`.
    pub fn to_site(&self, name: &str) -> Site {
        Site {
            name: name.to_string(),
            sequence: self.sequence,
            previous: self.previous,
            high: self.high,
            target: self.target.clone(),
            rules: self.rules.clone(),
            snapshot: self.snapshot.clone(),
        }
    }
}

/// A decision not yet finished: the job is still committing.
const COMMITTING: &str = "committing";
/// A decision whose record is finished.
const FINISHED: &str = "finished";

/// A job's commit whose hand-over to its site's caches had not ended: see [`Store::pending_freshness`].
#[derive(Debug, Clone)]
pub struct PendingFreshness {
    /// The job.
    pub job: String,
    /// Its site.
    pub site: String,
    /// The hand-over as last recorded.
    pub view: JobFreshness,
    /// The URLs, as JSON.
    pub work: String,
    /// The caches they go to.
    pub caches: SiteCaches,
}

/// The database.
pub struct Store {
    connection: Connection,
}

/// Errors of the store.
pub type StoreResult<T> = Result<T, rusqlite::Error>;

/// Reads column `index` as the word of an enum; an unknown word is an error that names the accepted ones.
fn word<T: FromStr<Err = UnknownValue>>(row: &Row<'_>, index: usize) -> StoreResult<T> {
    let text: String = row.get(index)?;
    text.parse()
        .map_err(|error: UnknownValue| rusqlite::Error::FromSqlConversionFailure(index, Type::Text, Box::new(error)))
}

/// The states of jobs that have not ended, as stored.
const PENDING_STATES: &str = "'scheduled', 'queued', 'running'";

/// Columns added after the first release, with their definitions: added to an older database at open.
const ADDED_COLUMNS: &[(&str, &str, &str)] = &[
    ("sites", "previous", "INTEGER NOT NULL DEFAULT 0"),
    ("sites", "high", "INTEGER NOT NULL DEFAULT 0"),
    ("sites", "target", "TEXT NOT NULL DEFAULT '\"all\"'"),
    ("sites", "rules", "TEXT NOT NULL DEFAULT '{}'"),
    ("sites", "removed", "INTEGER NOT NULL DEFAULT 0"),
    ("nodes", "cpus", "INTEGER NOT NULL DEFAULT 0"),
    ("nodes", "instance", "TEXT NOT NULL DEFAULT ''"),
    ("jobs", "spec", "TEXT"),
    ("job_nodes", "via", "TEXT"),
    ("jobs", "due_ms", "INTEGER NOT NULL DEFAULT 0"),
    ("jobs", "attempt", "INTEGER NOT NULL DEFAULT 0"),
    ("jobs", "started_ms", "INTEGER"),
    ("jobs", "finished_ms", "INTEGER"),
];

impl Store {
    /// Opens (creating or upgrading) the database at `path`.
    pub fn open(path: &Path) -> StoreResult<Store> {
        let connection = Connection::open(path)?;
        connection.pragma_update(None, "journal_mode", "WAL")?;
        connection.pragma_update(None, "synchronous", "FULL")?;
        connection.execute_batch(
            "CREATE TABLE IF NOT EXISTS sites (name TEXT PRIMARY KEY, sequence INTEGER NOT NULL, snapshot TEXT NOT NULL);
             CREATE TABLE IF NOT EXISTS nodes (name TEXT PRIMARY KEY, url TEXT NOT NULL, last_seen_ms INTEGER NOT NULL, free_disk INTEGER NOT NULL);
             CREATE TABLE IF NOT EXISTS node_versions (node TEXT NOT NULL, site TEXT NOT NULL, sequence INTEGER NOT NULL, PRIMARY KEY (node, site));
             CREATE TABLE IF NOT EXISTS memberships (grp TEXT NOT NULL, node TEXT NOT NULL, source TEXT NOT NULL, PRIMARY KEY (grp, node, source));
             CREATE TABLE IF NOT EXISTS jobs (id TEXT PRIMARY KEY, kind TEXT NOT NULL, site TEXT NOT NULL, state TEXT NOT NULL,
                 error TEXT, staging TEXT, created_ms INTEGER NOT NULL);
             CREATE TABLE IF NOT EXISTS job_nodes (job TEXT NOT NULL, node TEXT NOT NULL, state TEXT NOT NULL, bytes INTEGER NOT NULL,
                 error TEXT, PRIMARY KEY (job, node));
             CREATE TABLE IF NOT EXISTS history (at_ms INTEGER NOT NULL, job TEXT, message TEXT NOT NULL);
             CREATE TABLE IF NOT EXISTS checkpoints (site TEXT NOT NULL, number INTEGER NOT NULL, sequence INTEGER NOT NULL,
                 created_ms INTEGER NOT NULL, bytes INTEGER NOT NULL, PRIMARY KEY (site, number));
             CREATE TABLE IF NOT EXISTS snapshots (site TEXT NOT NULL, sequence INTEGER NOT NULL, base INTEGER NOT NULL,
                 job TEXT NOT NULL, bytes INTEGER NOT NULL, created_ms INTEGER NOT NULL, PRIMARY KEY (site, sequence));
             CREATE TABLE IF NOT EXISTS segments (name TEXT PRIMARY KEY, view TEXT NOT NULL, reported_ms INTEGER NOT NULL);
             CREATE TABLE IF NOT EXISTS site_caches (site TEXT PRIMARY KEY, caches TEXT NOT NULL);
             CREATE TABLE IF NOT EXISTS issued (site TEXT PRIMARY KEY, high INTEGER NOT NULL);
             CREATE TABLE IF NOT EXISTS job_freshness (job TEXT PRIMARY KEY, site TEXT NOT NULL, since_ms INTEGER NOT NULL,
                 state TEXT NOT NULL, view TEXT NOT NULL, work TEXT NOT NULL, caches TEXT NOT NULL);
             CREATE TABLE IF NOT EXISTS decisions (job TEXT PRIMARY KEY, site TEXT NOT NULL, version INTEGER NOT NULL,
                 state TEXT NOT NULL, finish TEXT NOT NULL, decided_ms INTEGER NOT NULL);",
        )?;
        for (table, column, definition) in ADDED_COLUMNS {
            let present: bool = connection.query_row(
                &format!("SELECT COUNT(*) FROM pragma_table_info('{table}') WHERE name = ?1"),
                params![column],
                |row| row.get::<_, i64>(0).map(|n| n > 0),
            )?;
            if !present {
                connection.execute_batch(&format!("ALTER TABLE {table} ADD COLUMN {column} {definition}"))?;
            }
        }
        connection.execute_batch("CREATE INDEX IF NOT EXISTS jobs_by_state ON jobs (state, due_ms)")?;
        Ok(Store { connection })
    }

    /// A hosted site (not a removed one: see [`Store::site_record`]).
    pub fn site(&self, name: &str) -> StoreResult<Option<Site>> {
        self.read_site(name, true)
    }

    /// A site's record, hosted or removed. A removed site keeps a tombstone ([`Store::forget_site`]): no
    /// version, content, rules or target, but its highest version issued (`high`), so that a later publish
    /// of the name numbers above every version the removed one issued; its caches stay too.
    pub fn site_record(&self, name: &str) -> StoreResult<Option<Site>> {
        self.read_site(name, false)
    }

    /// Whether `name` is a removed site's tombstone.
    pub fn is_removed(&self, name: &str) -> StoreResult<bool> {
        self.connection.query_row(
            "SELECT EXISTS (SELECT 1 FROM sites WHERE name = ?1 AND removed <> 0)",
            params![name],
            |row| row.get(0),
        )
    }

    fn read_site(&self, name: &str, hosted_only: bool) -> StoreResult<Option<Site>> {
        self.connection
            .query_row(
                "SELECT name, sequence, previous, high, target, rules, snapshot FROM sites
                 WHERE name = ?1 AND (removed = 0 OR NOT ?2)",
                params![name, hosted_only],
                |row| {
                    Ok(Site {
                        name: row.get(0)?,
                        sequence: row.get::<_, i64>(1)? as u64,
                        previous: row.get::<_, i64>(2)? as u64,
                        high: row.get::<_, i64>(3)? as u64,
                        target: serde_json::from_str(&row.get::<_, String>(4)?).unwrap_or_default(),
                        rules: serde_json::from_str(&row.get::<_, String>(5)?).unwrap_or_default(),
                        snapshot: row.get(6)?,
                    })
                },
            )
            .optional()
    }

    /// Every hosted site (removed sites' tombstones are not).
    pub fn sites(&self) -> StoreResult<Vec<Site>> {
        let names: Vec<String> = {
            let mut statement = self
                .connection
                .prepare("SELECT name FROM sites WHERE removed = 0 ORDER BY name")?;
            let rows = statement.query_map([], |row| row.get(0))?;
            rows.collect::<StoreResult<_>>()?
        };
        Ok(names.iter().filter_map(|n| self.site(n).ok().flatten()).collect())
    }

    /// Records a site's state (its new version, target, rules and published tree): the site is hosted
    /// (again, for a removed one).
    pub fn save_site(&self, site: &Site) -> StoreResult<()> {
        self.connection.execute(
            "INSERT INTO sites (name, sequence, previous, high, target, rules, snapshot, removed) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, 0)
             ON CONFLICT(name) DO UPDATE SET sequence = excluded.sequence, previous = excluded.previous, high = MAX(high, excluded.high),
                 target = excluded.target, rules = excluded.rules, snapshot = excluded.snapshot, removed = 0",
            params![
                site.name,
                site.sequence as i64,
                site.previous as i64,
                site.high.max(site.sequence) as i64,
                serde_json::to_string(&site.target).unwrap_or_default(),
                serde_json::to_string(&site.rules).unwrap_or_default(),
                site.snapshot
            ],
        )?;
        Ok(())
    }

    /// Forgets a node: its record, the versions it held and its group memberships, so that no job targets
    /// it any more (a retired server). `None` when it was not known; else the content groups the operator
    /// had put it in (`PUT /api/groups/NAME`), which a replacement under the same name does not rejoin by
    /// registering (those it registers with, `--group`, it does). A node that is still running registers
    /// again.
    pub fn forget_node(&self, name: &str) -> StoreResult<Option<Vec<String>>> {
        let groups = {
            let mut statement = self
                .connection
                .prepare("SELECT grp FROM memberships WHERE node = ?1 AND source = 'api' ORDER BY grp")?;
            statement
                .query_map(params![name], |row| row.get::<_, String>(0))?
                .collect::<Result<Vec<_>, _>>()?
        };
        let known = self
            .connection
            .execute("DELETE FROM nodes WHERE name = ?1", params![name])?
            > 0;
        self.connection
            .execute("DELETE FROM node_versions WHERE node = ?1", params![name])?;
        self.connection
            .execute("DELETE FROM memberships WHERE node = ?1", params![name])?;
        Ok(known.then_some(groups))
    }

    /// Records that `version` of site `name` is issued before any node may prepare it, so that the number
    /// is never issued again for other content (a version number names one content; a node commits only
    /// the version it prepared): not after a mover that crashes between a node's commit and
    /// [`Store::save_site`], and not after a publish that failed, also a site's first, which has no record
    /// yet (its number is kept in [`Store::issued_high`]).
    pub fn reserve_version(&self, name: &str, version: u64) -> StoreResult<()> {
        self.connection.execute(
            "UPDATE sites SET high = MAX(high, ?2) WHERE name = ?1",
            params![name, version as i64],
        )?;
        self.connection.execute(
            "INSERT INTO issued (site, high) VALUES (?1, ?2)
                 ON CONFLICT (site) DO UPDATE SET high = MAX(high, excluded.high)",
            params![name, version as i64],
        )?;
        Ok(())
    }

    /// The highest version ever issued for site `name` (0: none), whether or not it has a record: a site's
    /// first publish numbers above a first publish of the name that failed.
    pub fn issued_high(&self, name: &str) -> StoreResult<u64> {
        let high: Option<i64> = self
            .connection
            .query_row("SELECT high FROM issued WHERE site = ?1", params![name], |row| {
                row.get(0)
            })
            .optional()?;
        Ok(high.unwrap_or(0).max(0) as u64)
    }

    /// Stops hosting a site (after a remove job): the versions nodes held, its snapshots and checkpoints
    /// (the mover's copies went aside) are forgotten, and its record becomes a tombstone — no version,
    /// content, rules or target, not among [`Store::sites`] nor found by [`Store::site`] — that keeps its
    /// highest version issued and its caches ([`Store::site_caches`]): a later publish of the name numbers
    /// above every version issued before (a version number names one content) and tells the same caches.
    /// Safe to repeat.
    pub fn forget_site(&self, name: &str, now_ms: u64) -> StoreResult<()> {
        self.connection.execute(
            "UPDATE sites SET removed = 1, high = MAX(high, sequence), sequence = 0, previous = 0,
                 target = ?2, rules = ?3, snapshot = '' WHERE name = ?1",
            params![
                name,
                serde_json::to_string(&Target::All).unwrap_or_default(),
                serde_json::to_string(&Rules::default()).unwrap_or_default()
            ],
        )?;
        self.connection
            .execute("DELETE FROM node_versions WHERE site = ?1", params![name])?;
        self.connection
            .execute("DELETE FROM snapshots WHERE site = ?1", params![name])?;
        self.connection
            .execute("DELETE FROM checkpoints WHERE site = ?1", params![name])?;
        self.log(None, &format!("site {name} removed"), now_ms)
    }

    /// Registers (or refreshes) a node, the versions it holds and the groups it declares (replacing the
    /// groups it declared before; memberships set through the API stay).
    pub fn register(&self, node: &Node, versions: &[(String, u64)]) -> StoreResult<()> {
        self.connection.execute(
            "INSERT INTO nodes (name, url, last_seen_ms, free_disk, cpus, instance) VALUES (?1, ?2, ?3, ?4, ?5, ?6)
             ON CONFLICT(name) DO UPDATE SET url = excluded.url, last_seen_ms = excluded.last_seen_ms,
                 free_disk = excluded.free_disk, cpus = excluded.cpus,
                 instance = CASE WHEN excluded.instance = '' THEN nodes.instance ELSE excluded.instance END",
            params![
                node.name,
                node.url,
                node.last_seen_ms as i64,
                node.free_disk as i64,
                node.cpus as i64,
                node.instance
            ],
        )?;
        self.connection.execute(
            "DELETE FROM memberships WHERE node = ?1 AND source = 'node'",
            params![node.name],
        )?;
        for group in &node.groups {
            self.connection.execute(
                "INSERT OR IGNORE INTO memberships (grp, node, source) VALUES (?1, ?2, 'node')",
                params![group, node.name],
            )?;
        }
        for (site, sequence) in versions {
            self.set_node_version(&node.name, site, *sequence)?;
        }
        Ok(())
    }

    /// Sets the members of a group that the operator manages through the API.
    pub fn set_group(&self, group: &str, nodes: &[String], now_ms: u64) -> StoreResult<()> {
        self.connection.execute(
            "DELETE FROM memberships WHERE grp = ?1 AND source = 'api'",
            params![group],
        )?;
        for node in nodes {
            self.connection.execute(
                "INSERT OR IGNORE INTO memberships (grp, node, source) VALUES (?1, ?2, 'api')",
                params![group, node],
            )?;
        }
        self.log(None, &format!("group {group} set to {}", nodes.join(", ")), now_ms)
    }

    /// Every group with its members.
    pub fn groups(&self) -> StoreResult<Vec<(String, Vec<String>)>> {
        let mut statement = self
            .connection
            .prepare("SELECT DISTINCT grp, node FROM memberships ORDER BY grp, node")?;
        let rows = statement.query_map([], |row| Ok((row.get::<_, String>(0)?, row.get::<_, String>(1)?)))?;
        let mut groups: Vec<(String, Vec<String>)> = Vec::new();
        for row in rows {
            let (group, node) = row?;
            match groups.last_mut() {
                Some((last, members)) if *last == group => members.push(node),
                _ => groups.push((group, vec![node])),
            }
        }
        Ok(groups)
    }

    /// The registered nodes a target names (a group's members that have registered).
    pub fn target_nodes(&self, target: &Target) -> StoreResult<BTreeSet<String>> {
        let nodes = self.nodes()?.into_iter();
        Ok(match target {
            Target::All => nodes.map(|n| n.name).collect(),
            Target::Node(name) => nodes.filter(|n| &n.name == name).map(|n| n.name).collect(),
            Target::Group(group) => nodes.filter(|n| n.groups.contains(group)).map(|n| n.name).collect(),
        })
    }

    /// The nodes a job is for, now: its target's, or else its site's (none for a job that sends nothing
    /// to nodes).
    pub fn job_nodes(&self, spec: &JobSpec) -> StoreResult<BTreeSet<String>> {
        if !spec.uses_nodes() {
            return Ok(BTreeSet::new());
        }
        let target = match &spec.target {
            Some(target) => target.clone(),
            None => self.site(&spec.site)?.map(|s| s.target).unwrap_or_default(),
        };
        self.target_nodes(&target)
    }

    /// Records the version a node holds of a site.
    pub fn set_node_version(&self, node: &str, site: &str, sequence: u64) -> StoreResult<()> {
        self.connection.execute(
            "INSERT INTO node_versions (node, site, sequence) VALUES (?1, ?2, ?3)
             ON CONFLICT(node, site) DO UPDATE SET sequence = excluded.sequence",
            params![node, site, sequence as i64],
        )?;
        Ok(())
    }

    /// The version a node holds of a site (0: none).
    pub fn node_version(&self, node: &str, site: &str) -> StoreResult<u64> {
        Ok(self
            .connection
            .query_row(
                "SELECT sequence FROM node_versions WHERE node = ?1 AND site = ?2",
                params![node, site],
                |row| row.get::<_, i64>(0),
            )
            .optional()?
            .unwrap_or(0) as u64)
    }

    /// Every registered node.
    pub fn nodes(&self) -> StoreResult<Vec<Node>> {
        let groups = self.groups()?;
        let mut statement = self
            .connection
            .prepare("SELECT name, url, last_seen_ms, free_disk, cpus, instance FROM nodes ORDER BY name")?;
        let rows = statement.query_map([], |row| {
            let name: String = row.get(0)?;
            Ok(Node {
                groups: groups
                    .iter()
                    .filter(|(_, members)| members.contains(&name))
                    .map(|(group, _)| group.clone())
                    .collect(),
                name,
                url: row.get(1)?,
                last_seen_ms: row.get::<_, i64>(2)? as u64,
                free_disk: row.get::<_, i64>(3)? as u64,
                cpus: row.get::<_, i64>(4)? as u32,
                instance: row.get(5)?,
            })
        })?;
        rows.collect()
    }

    /// The content groups the node registered as `name` declared itself (not those the API gave it), sorted.
    pub fn declared_groups(&self, name: &str) -> StoreResult<Vec<String>> {
        let mut statement = self
            .connection
            .prepare("SELECT grp FROM memberships WHERE node = ?1 AND source = 'node' ORDER BY grp")?;
        let rows = statement.query_map(params![name], |row| row.get::<_, String>(0))?;
        rows.collect()
    }

    /// The instance id and URL the node registered as `name` last had, if it is registered.
    pub fn node_holder(&self, name: &str) -> StoreResult<Option<(String, String)>> {
        self.connection
            .query_row(
                "SELECT instance, url FROM nodes WHERE name = ?1",
                params![name],
                |row| Ok((row.get(0)?, row.get(1)?)),
            )
            .optional()
    }

    /// Creates a job, due at `due_ms` (state `scheduled`).
    pub fn create_job(&self, id: &str, spec: &JobSpec, due_ms: u64, now_ms: u64) -> StoreResult<()> {
        self.connection.execute(
            "INSERT INTO jobs (id, kind, site, state, error, staging, created_ms, spec, due_ms, attempt)
             VALUES (?1, ?2, ?3, ?4, NULL, ?5, ?6, ?7, ?8, 0)",
            params![
                id,
                spec.kind.as_str(),
                spec.site,
                JobState::Scheduled.as_str(),
                spec.staging,
                now_ms as i64,
                serde_json::to_string(spec).unwrap_or_default(),
                due_ms as i64
            ],
        )?;
        let when = if due_ms > now_ms {
            format!(" due in {} s", (due_ms - now_ms).div_ceil(1000))
        } else {
            String::new()
        };
        self.log(
            Some(id),
            &format!(
                "{} of {} for {} created{when}",
                spec.kind,
                spec.site,
                spec.target
                    .as_ref()
                    .map(|t| t.to_string())
                    .unwrap_or("its nodes".into())
            ),
            now_ms,
        )
    }

    /// Marks a job running on `nodes` (a new try: the per-node states start again).
    pub fn start_job(&self, id: &str, nodes: &BTreeSet<String>, now_ms: u64) -> StoreResult<()> {
        self.connection
            .execute("DELETE FROM job_nodes WHERE job = ?1", params![id])?;
        for node in nodes {
            self.connection.execute(
                "INSERT INTO job_nodes (job, node, state, bytes, error) VALUES (?1, ?2, ?3, 0, NULL)",
                params![id, node, NodeState::Pending.as_str()],
            )?;
        }
        self.connection.execute(
            "UPDATE jobs SET state = ?3, error = NULL, attempt = attempt + 1, started_ms = ?2 WHERE id = ?1",
            params![id, now_ms as i64, JobState::Running.as_str()],
        )?;
        self.log(Some(id), &format!("job running on {} nodes", nodes.len()), now_ms)
    }

    /// Sets a job's state; a finished state records when it finished.
    pub fn set_job_state(&self, id: &str, state: JobState, error: Option<&str>, now_ms: u64) -> StoreResult<()> {
        let finished = state.is_finished().then_some(now_ms as i64);
        self.connection.execute(
            "UPDATE jobs SET state = ?2, error = ?3, finished_ms = COALESCE(?4, finished_ms) WHERE id = ?1",
            params![id, state.as_str(), error, finished],
        )?;
        self.log(
            Some(id),
            &format!("job {state}{}", error.map(|e| format!(": {e}")).unwrap_or_default()),
            now_ms,
        )
    }

    /// Ends `job` in `state` (committed, failed or refused) and, when it repeats (`--every`), schedules its
    /// next run as a new job `next_id`, due at [`crate::schedule::next_run`] of its due time, in one
    /// transaction: a repeating job goes on repeating whatever ended this run, the run itself or a restart
    /// of the mover that finished or failed it. Returns the next run's due time (ms since the epoch).
    pub fn end_job(
        &self,
        job: &Job,
        state: JobState,
        error: Option<&str>,
        next_id: &str,
        now_ms: u64,
    ) -> StoreResult<Option<u64>> {
        let transaction = self.connection.unchecked_transaction()?;
        self.set_job_state(&job.id, state, error, now_ms)?;
        let next = crate::schedule::next_run(job.due_ms, job.spec.every_s, now_ms);
        if let Some(due_ms) = next {
            self.create_job(next_id, &job.spec, due_ms, now_ms)?;
        }
        transaction.commit()?;
        Ok(next)
    }

    /// Puts a failed try back on the schedule, due at `due_ms`.
    pub fn retry_job(&self, id: &str, error: &str, due_ms: u64, now_ms: u64) -> StoreResult<()> {
        self.connection.execute(
            "UPDATE jobs SET state = ?4, error = ?2, due_ms = ?3 WHERE id = ?1",
            params![id, error, due_ms as i64, JobState::Scheduled.as_str()],
        )?;
        self.log(
            Some(id),
            &format!(
                "try failed ({error}); tried again in {} s",
                due_ms.saturating_sub(now_ms) / 1000
            ),
            now_ms,
        )
    }

    /// Notes why a due job waits (state `queued`), without logging it again and again.
    pub fn queue_job(&self, id: &str, reason: &str, now_ms: u64) -> StoreResult<()> {
        let changed = self.connection.execute(
            "UPDATE jobs SET state = ?3, error = ?2 WHERE id = ?1 AND (state != ?3 OR error IS NOT ?2)",
            params![id, reason, JobState::Queued.as_str()],
        )?;
        if changed > 0 {
            self.log(Some(id), reason, now_ms)?;
        }
        Ok(())
    }

    /// Notes what a running job waits for (`None`: nothing in particular any more), in the job's `error`
    /// field as a queued job's reason is; a job that is no longer running is left as it is. A new note goes
    /// to the history log once.
    pub fn note_running(&self, id: &str, note: Option<&str>, now_ms: u64) -> StoreResult<()> {
        let changed = self.connection.execute(
            "UPDATE jobs SET error = ?2 WHERE id = ?1 AND state = ?3 AND error IS NOT ?2",
            params![id, note, JobState::Running.as_str()],
        )?;
        match note {
            Some(note) if changed > 0 => self.log(Some(id), &format!("waiting: {note}"), now_ms),
            _ => Ok(()),
        }
    }

    /// Sets a node's state in a job; `via`, the group leader that passed the assignment on to it, is kept
    /// once known.
    pub fn set_job_node(
        &self,
        id: &str,
        node: &str,
        state: NodeState,
        bytes: u64,
        error: Option<&str>,
        via: Option<&str>,
    ) -> StoreResult<()> {
        self.connection.execute(
            "UPDATE job_nodes SET state = ?3, bytes = bytes + ?4, error = ?5, via = COALESCE(?6, via) \
             WHERE job = ?1 AND node = ?2",
            params![id, node, state.as_str(), bytes as i64, error, via],
        )?;
        Ok(())
    }

    /// A job with its nodes.
    pub fn job(&self, id: &str) -> StoreResult<Option<Job>> {
        let job = self
            .connection
            .query_row(
                "SELECT id, kind, site, state, error, created_ms, spec, staging, due_ms, attempt, started_ms, finished_ms
                 FROM jobs WHERE id = ?1",
                params![id],
                |row| {
                    // Jobs written before specs were stored have only kind, site and staging.
                    let stored = row
                        .get::<_, Option<String>>(6)?
                        .and_then(|text| serde_json::from_str::<JobSpec>(&text).ok());
                    let spec = match stored {
                        Some(spec) => spec,
                        None => {
                            let mut spec = JobSpec::new(word::<JobKind>(row, 1)?, &row.get::<_, String>(2)?);
                            spec.staging = row.get(7)?;
                            spec
                        }
                    };
                    Ok(Job {
                        id: row.get(0)?,
                        spec,
                        state: word(row, 3)?,
                        error: row.get(4)?,
                        nodes: Vec::new(),
                        created_ms: row.get::<_, i64>(5)? as u64,
                        due_ms: row.get::<_, i64>(8)? as u64,
                        attempt: row.get::<_, i64>(9)? as u32,
                        started_ms: row.get::<_, Option<i64>>(10)?.map(|v| v as u64),
                        finished_ms: row.get::<_, Option<i64>>(11)?.map(|v| v as u64),
                        freshness: None,
                    })
                },
            )
            .optional()?;
        let Some(mut job) = job else {
            return Ok(None);
        };
        let mut statement = self
            .connection
            .prepare("SELECT node, state, bytes, error, via FROM job_nodes WHERE job = ?1 ORDER BY node")?;
        let rows = statement.query_map(params![id], |row| {
            Ok(JobNode {
                node: row.get(0)?,
                state: word(row, 1)?,
                bytes: row.get::<_, i64>(2)? as u64,
                error: row.get(3)?,
                via: row.get(4)?,
            })
        })?;
        job.nodes = rows.collect::<StoreResult<_>>()?;
        job.freshness = self.freshness(id)?;
        Ok(Some(job))
    }

    /// Job ids, newest first.
    pub fn job_ids(&self, limit: usize) -> StoreResult<Vec<String>> {
        let mut statement = self
            .connection
            .prepare("SELECT id FROM jobs ORDER BY created_ms DESC, id DESC LIMIT ?1")?;
        let rows = statement.query_map(params![limit as i64], |row| row.get(0))?;
        rows.collect()
    }

    /// Jobs that are not finished, in the order they are due (then created). A job whose record cannot be
    /// read (a kind or state this version does not know) is left out, with a warning.
    pub fn pending_jobs(&self) -> StoreResult<Vec<Job>> {
        let ids: Vec<String> = {
            let mut statement = self.connection.prepare(&format!(
                "SELECT id FROM jobs WHERE state IN ({PENDING_STATES}) ORDER BY due_ms, created_ms, id"
            ))?;
            let rows = statement.query_map([], |row| row.get(0))?;
            rows.collect::<StoreResult<_>>()?
        };
        Ok(self.readable_jobs(&ids))
    }

    /// The jobs of `ids` that can be read, in that order.
    pub fn readable_jobs(&self, ids: &[String]) -> Vec<Job> {
        ids.iter()
            .filter_map(|id| match self.job(id) {
                Ok(job) => job,
                Err(error) => {
                    warn!(job = %id, %error, "job record unreadable; left out");
                    None
                }
            })
            .collect()
    }

    /// How many jobs have not ended.
    pub fn pending_count(&self) -> StoreResult<u64> {
        self.connection.query_row(
            &format!("SELECT COUNT(*) FROM jobs WHERE state IN ({PENDING_STATES})"),
            [],
            |row| row.get::<_, i64>(0).map(|n| n as u64),
        )
    }

    /// Jobs left running by a previous run of the mover. Each is tried again when its policy allows
    /// (it resumes from the start: assignments are idempotent on the nodes) or fails cleanly; none stays
    /// running. Scheduled and queued jobs stay on the schedule. Returns (tried again, failed).
    pub fn recover_interrupted(&self, now_ms: u64) -> StoreResult<(usize, usize)> {
        let running: Vec<Job> = self
            .pending_jobs()?
            .into_iter()
            .filter(|job| job.state == JobState::Running)
            .collect();
        let (mut resumed, mut failed) = (0, 0);
        for (n, job) in running.into_iter().enumerate() {
            // Its record was finished (the nodes switched, the site took the version) but the mover stopped
            // before the job was marked committed: it is, and running it again would publish twice.
            let recorded: bool = self.connection.query_row(
                "SELECT EXISTS(SELECT 1 FROM decisions WHERE job = ?1 AND state = ?2)",
                params![job.id, FINISHED],
                |row| row.get(0),
            )?;
            if recorded {
                let message = "the mover stopped after recording the commit; the job is committed (a node that did not answer is brought up to date when it registers)";
                self.log(Some(&job.id), message, now_ms)?;
                self.end_job(
                    &job,
                    JobState::Committed,
                    Some(message),
                    &restart_job_id(job.spec.kind, now_ms, "recorded", n),
                    now_ms,
                )?;
                continue;
            }
            if may_try_again(job.attempt, job.spec.retries) {
                self.retry_job(&job.id, "the mover restarted during the job", now_ms, now_ms)?;
                resumed += 1;
            } else {
                // A repeating job's next run is scheduled all the same.
                let reason = if job.spec.every_s.is_some() {
                    "the mover restarted during the job; its next run is on the schedule"
                } else {
                    "the mover restarted during the job; submit it again"
                };
                self.end_job(
                    &job,
                    JobState::Failed,
                    Some(reason),
                    &restart_job_id(job.spec.kind, now_ms, "restarted", n),
                    now_ms,
                )?;
                // Its nodes that had not switched failed with it (a prepared tree is never committed now).
                self.connection.execute(
                    "UPDATE job_nodes SET state = ?2, error = ?3 WHERE job = ?1 AND state IN (?4, ?5)",
                    params![
                        job.id,
                        NodeState::Failed.as_str(),
                        "the mover restarted during the job",
                        NodeState::Pending.as_str(),
                        NodeState::Prepared.as_str()
                    ],
                )?;
                failed += 1;
            }
        }
        Ok((resumed, failed))
    }

    /// Records checkpoint `number` of a site (the next number: see [`Store::checkpoints`]).
    pub fn add_checkpoint(&self, site: &str, number: u64, sequence: u64, bytes: u64, now_ms: u64) -> StoreResult<()> {
        self.connection.execute(
            "INSERT INTO checkpoints (site, number, sequence, created_ms, bytes) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![site, number as i64, sequence as i64, now_ms as i64, bytes as i64],
        )?;
        self.log(
            None,
            &format!("checkpoint {number} of {site} (version {sequence})"),
            now_ms,
        )
    }

    /// A site's checkpoints, oldest first.
    pub fn checkpoints(&self, site: &str) -> StoreResult<Vec<Checkpoint>> {
        let mut statement = self
            .connection
            .prepare("SELECT number, sequence, created_ms, bytes FROM checkpoints WHERE site = ?1 ORDER BY number")?;
        let rows = statement.query_map(params![site], |row| {
            Ok(Checkpoint {
                number: row.get::<_, i64>(0)? as u64,
                version: row.get::<_, i64>(1)? as u64,
                created_ms: row.get::<_, i64>(2)? as u64,
                bytes: row.get::<_, i64>(3)? as u64,
            })
        })?;
        rows.collect()
    }

    /// Forgets a checkpoint.
    pub fn remove_checkpoint(&self, site: &str, number: u64) -> StoreResult<()> {
        self.connection.execute(
            "DELETE FROM checkpoints WHERE site = ?1 AND number = ?2",
            params![site, number as i64],
        )?;
        Ok(())
    }

    /// Records the snapshot of a successful publish.
    pub fn add_snapshot(&self, site: &str, record: &SnapshotRecord) -> StoreResult<()> {
        self.connection.execute(
            "INSERT OR REPLACE INTO snapshots (site, sequence, base, job, bytes, created_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![
                site,
                record.sequence as i64,
                record.base as i64,
                record.job,
                record.bytes as i64,
                record.created_ms as i64
            ],
        )?;
        Ok(())
    }

    /// A site's snapshots, oldest first.
    pub fn snapshots(&self, site: &str) -> StoreResult<Vec<SnapshotRecord>> {
        let mut statement = self.connection.prepare(
            "SELECT sequence, base, job, bytes, created_ms FROM snapshots WHERE site = ?1 ORDER BY sequence",
        )?;
        let rows = statement.query_map(params![site], |row| {
            Ok(SnapshotRecord {
                sequence: row.get::<_, i64>(0)? as u64,
                base: row.get::<_, i64>(1)? as u64,
                job: row.get(2)?,
                bytes: row.get::<_, i64>(3)? as u64,
                created_ms: row.get::<_, i64>(4)? as u64,
            })
        })?;
        rows.collect()
    }

    /// Forgets the snapshots of versions up to `sequence` (a checkpoint now covers them).
    pub fn drop_snapshots_through(&self, site: &str, sequence: u64) -> StoreResult<()> {
        self.connection.execute(
            "DELETE FROM snapshots WHERE site = ?1 AND sequence <= ?2",
            params![site, sequence as i64],
        )?;
        Ok(())
    }

    /// The newest history entries, newest first.
    pub fn history(&self, limit: usize) -> StoreResult<Vec<HistoryEntry>> {
        let mut statement = self
            .connection
            .prepare("SELECT at_ms, job, message FROM history ORDER BY rowid DESC LIMIT ?1")?;
        let rows = statement.query_map(params![limit as i64], |row| {
            Ok(HistoryEntry {
                at_ms: row.get::<_, i64>(0)? as u64,
                job: row.get(1)?,
                message: row.get(2)?,
            })
        })?;
        rows.collect()
    }

    /// Records what the CCM knows of a network segment (its last accepted report and the administrator's
    /// override of its leader), replacing the previous record.
    pub fn save_segment(&self, view: &SegmentView) -> StoreResult<()> {
        let json = serde_json::to_string(view).unwrap_or_default();
        self.connection.execute(
            "INSERT INTO segments (name, view, reported_ms) VALUES (?1, ?2, ?3)
             ON CONFLICT(name) DO UPDATE SET view = excluded.view, reported_ms = excluded.reported_ms",
            params![view.name, json, view.reported_ms as i64],
        )?;
        Ok(())
    }

    /// Every network segment recorded, by name. A record that does not parse is left out with a warning
    /// (it is replaced by the segment's next report).
    pub fn segments(&self) -> StoreResult<Vec<SegmentView>> {
        let mut statement = self
            .connection
            .prepare("SELECT name, view FROM segments ORDER BY name")?;
        let rows = statement.query_map([], |row| Ok((row.get::<_, String>(0)?, row.get::<_, String>(1)?)))?;
        let mut views = Vec::new();
        for row in rows {
            let (name, json) = row?;
            match serde_json::from_str::<SegmentView>(&json) {
                Ok(view) => views.push(view),
                Err(error) => warn!(segment = %name, %error, "unreadable segment record left out"),
            }
        }
        Ok(views)
    }

    /// The caches in front of a site (none: it names none). A record that does not parse is read as none,
    /// with a warning.
    pub fn site_caches(&self, site: &str) -> StoreResult<Option<SiteCaches>> {
        let text: Option<String> = self
            .connection
            .query_row("SELECT caches FROM site_caches WHERE site = ?1", params![site], |row| {
                row.get(0)
            })
            .optional()?;
        let Some(text) = text else {
            return Ok(None);
        };
        match serde_json::from_str(&text) {
            Ok(caches) => Ok(Some(caches)),
            Err(error) => {
                warn!(%site, %error, "unreadable caches record; the site's caches are not told of commits");
                Ok(None)
            }
        }
    }

    /// Sets the caches in front of a site; caches that name no cache turn that off.
    pub fn set_site_caches(&self, site: &str, caches: &SiteCaches, now_ms: u64) -> StoreResult<()> {
        if self.site_caches(site)?.as_ref() == Some(caches) {
            return Ok(());
        }
        if caches.is_off() {
            self.connection
                .execute("DELETE FROM site_caches WHERE site = ?1", params![site])?;
            return self.log(None, &format!("site {site}: no caches are told of its commits"), now_ms);
        }
        self.connection.execute(
            "INSERT INTO site_caches (site, caches) VALUES (?1, ?2)
             ON CONFLICT(site) DO UPDATE SET caches = excluded.caches",
            params![site, serde_json::to_string(caches).unwrap_or_default()],
        )?;
        let mut via = Vec::new();
        if let Some(sync) = &caches.sync_url {
            via.push(format!("the sync service at {sync}"));
        }
        if !caches.edges.is_empty() {
            via.push(format!("{} edges", caches.edges.len()));
        }
        self.log(
            None,
            &format!(
                "site {site}: commits are purged at {} through {}",
                caches.public_url,
                via.join(" and ")
            ),
            now_ms,
        )
    }

    /// Records that a job's commit was handed to its site's caches: `view` as it starts, the URLs (`work`,
    /// JSON) and the caches it goes to, kept so a restart of the mover resumes the hand-over. Replaces what an
    /// earlier try of the job recorded.
    pub fn start_freshness(
        &self,
        job: &str,
        site: &str,
        view: &JobFreshness,
        work: &str,
        caches: &SiteCaches,
    ) -> StoreResult<()> {
        self.connection.execute(
            "INSERT OR REPLACE INTO job_freshness (job, site, since_ms, state, view, work, caches)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            params![
                job,
                site,
                view.since_ms as i64,
                view.state.as_str(),
                serde_json::to_string(view).unwrap_or_default(),
                work,
                serde_json::to_string(caches).unwrap_or_default()
            ],
        )?;
        Ok(())
    }

    /// Updates the hand-over of a job's commit (the one that started at `view.since_ms`: a later try's
    /// hand-over is not overwritten by an earlier one's); once it has ended, the URLs are no longer kept.
    pub fn update_freshness(&self, job: &str, view: &JobFreshness) -> StoreResult<()> {
        let ended = view.state != FreshState::Pending;
        self.connection.execute(
            "UPDATE job_freshness SET state = ?3, view = ?4, work = CASE WHEN ?5 THEN '' ELSE work END
             WHERE job = ?1 AND since_ms = ?2",
            params![
                job,
                view.since_ms as i64,
                view.state.as_str(),
                serde_json::to_string(view).unwrap_or_default(),
                ended
            ],
        )?;
        Ok(())
    }

    /// How the caches took a job's commit, if it was handed to any.
    pub fn freshness(&self, job: &str) -> StoreResult<Option<JobFreshness>> {
        let text: Option<String> = self
            .connection
            .query_row("SELECT view FROM job_freshness WHERE job = ?1", params![job], |row| {
                row.get(0)
            })
            .optional()?;
        Ok(text.and_then(|text| serde_json::from_str(&text).ok()))
    }

    /// Hand-overs a previous run of the mover left pending: (job, site, view, URLs as JSON, caches). A record
    /// that does not parse is left out with a warning.
    pub fn pending_freshness(&self) -> StoreResult<Vec<PendingFreshness>> {
        let mut statement = self
            .connection
            .prepare("SELECT job, site, view, work, caches FROM job_freshness WHERE state = ?1 ORDER BY since_ms")?;
        let rows = statement.query_map(params![FreshState::Pending.as_str()], |row| {
            Ok((
                row.get::<_, String>(0)?,
                row.get::<_, String>(1)?,
                row.get::<_, String>(2)?,
                row.get::<_, String>(3)?,
                row.get::<_, String>(4)?,
            ))
        })?;
        let mut pending = Vec::new();
        for row in rows {
            let (job, site, view, work, caches) = row?;
            match (serde_json::from_str(&view), serde_json::from_str(&caches)) {
                (Ok(view), Ok(caches)) => pending.push(PendingFreshness {
                    job,
                    site,
                    view,
                    work,
                    caches,
                }),
                _ => warn!(%job, "unreadable freshness record left out"),
            }
        }
        Ok(pending)
    }

    /// Records a job's decision to commit (see [`Decision`]), durably, before any commit message leaves.
    pub fn decide(&self, decision: &Decision, now_ms: u64) -> StoreResult<()> {
        let finish =
            serde_json::to_string(decision).map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))?;
        self.connection.execute(
            "INSERT OR REPLACE INTO decisions (job, site, version, state, finish, decided_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![
                decision.job,
                decision.site,
                decision.version as i64,
                COMMITTING,
                finish,
                now_ms as i64
            ],
        )?;
        Ok(())
    }

    /// Finishes a decided job's record in one transaction: the snapshot (if kept) is recorded, the site's
    /// record saved (or, for `None`, left as a removed site's tombstone, [`Store::forget_site`]) and the decision marked finished.
    pub fn finish_decision(
        &self,
        job: &str,
        site_name: &str,
        site: Option<&Site>,
        snapshot: Option<&SnapshotRecord>,
        now_ms: u64,
    ) -> StoreResult<()> {
        let transaction = self.connection.unchecked_transaction()?;
        if let Some(record) = snapshot {
            self.add_snapshot(site_name, record)?;
        }
        match site {
            Some(site) => self.save_site(site)?,
            None => self.forget_site(site_name, now_ms)?,
        }
        self.connection
            .execute("UPDATE decisions SET state = ?2 WHERE job = ?1", params![job, FINISHED])?;
        transaction.commit()
    }

    /// Drops a decision whose job keeps the record as it was (a remove that did not reach every node: the
    /// site stays hosted, and the remove is run again).
    pub fn abandon_decision(&self, job: &str) -> StoreResult<()> {
        self.connection
            .execute("DELETE FROM decisions WHERE job = ?1", params![job])?;
        Ok(())
    }

    /// Decisions whose record was not finished (the mover stopped after deciding), oldest first. One that
    /// cannot be read is left out with a warning.
    pub fn unfinished_decisions(&self) -> StoreResult<Vec<Decision>> {
        let mut statement = self
            .connection
            .prepare("SELECT job, finish FROM decisions WHERE state = ?1 ORDER BY decided_ms, job")?;
        let rows = statement.query_map(params![COMMITTING], |row| {
            Ok((row.get::<_, String>(0)?, row.get::<_, String>(1)?))
        })?;
        let mut decisions = Vec::new();
        for row in rows {
            let (job, text) = row?;
            match serde_json::from_str(&text) {
                Ok(decision) => decisions.push(decision),
                Err(error) => warn!(%job, %error, "commit decision unreadable; left out"),
            }
        }
        Ok(decisions)
    }

    /// Whether the mover committed `version` of `site` (a decision, or a snapshot that made it): a version a
    /// node may hold although the site has moved on (a rollback the node missed).
    pub fn committed_version(&self, site: &str, version: u64) -> StoreResult<bool> {
        self.connection.query_row(
            "SELECT EXISTS (SELECT 1 FROM decisions WHERE site = ?1 AND version = ?2)
                 OR EXISTS (SELECT 1 FROM snapshots WHERE site = ?1 AND sequence = ?2)",
            params![site, version as i64],
            |row| row.get(0),
        )
    }

    /// A node registered holding `versions`: where a decided job committed one of them and the node's row in
    /// that job still says prepared (the mover stopped before it recorded the node's answer to the commit),
    /// the row says committed.
    pub fn confirm_commits(&self, node: &str, versions: &[(String, u64)]) -> StoreResult<()> {
        for (site, version) in versions {
            self.connection.execute(
                "UPDATE job_nodes SET state = ?4, error = NULL WHERE node = ?1 AND state = ?5
                     AND job IN (SELECT job FROM decisions WHERE site = ?2 AND version = ?3 AND state = ?6)",
                params![
                    node,
                    site,
                    *version as i64,
                    NodeState::Committed.as_str(),
                    NodeState::Prepared.as_str(),
                    FINISHED
                ],
            )?;
        }
        Ok(())
    }

    /// Adds an entry to the history log.
    pub fn note(&self, job: Option<&str>, message: &str, now_ms: u64) -> StoreResult<()> {
        self.log(job, message, now_ms)
    }

    fn log(&self, job: Option<&str>, message: &str, now_ms: u64) -> StoreResult<()> {
        self.connection.execute(
            "INSERT INTO history (at_ms, job, message) VALUES (?1, ?2, ?3)",
            params![now_ms as i64, job, message],
        )?;
        Ok(())
    }
}

/// The id of the next run of a repeating job scheduled while the mover starts (finishing or failing a run
/// it left behind), before the mover's own job numbering runs: `<kind>-<now_ms>-<step><n>`, `step` naming
/// the part of the start (`rolled`, `restarted`) and `n` counting within it, so unique.
pub fn restart_job_id(kind: JobKind, now_ms: u64, step: &str, n: usize) -> String {
    format!("{kind}-{now_ms}-{step}{n}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_version_issued_before_a_crash_is_never_issued_again() {
        let area = tempfile::tempdir().expect("tempdir");
        let store = Store::open(&area.path().join("mover.db")).expect("open");
        let site = Site {
            name: "www".into(),
            sequence: 6,
            previous: 5,
            high: 6,
            target: Target::All,
            rules: Rules::default(),
            snapshot: String::new(),
        };
        store.save_site(&site).expect("save");
        // Version 7 goes out; the mover dies before it records the commit.
        store.reserve_version("www", 7).expect("reserve");
        let reopened = Store::open(&area.path().join("mover.db")).expect("reopen");
        let read = reopened.site("www").expect("read").expect("site");
        assert_eq!((read.sequence, read.next_version()), (6, 8));
        // A save from a copy read before the reservation does not lower it.
        reopened.save_site(&site).expect("save");
        assert_eq!(reopened.site("www").expect("read").expect("site").next_version(), 8);
        // A site without a record (a first publish that then failed) keeps its number all the same.
        reopened.reserve_version("new", 1).expect("reserve");
        assert!(reopened.site("new").expect("read").is_none());
        assert_eq!(reopened.issued_high("new").expect("issued"), 1);
        assert_eq!(reopened.issued_high("never").expect("issued"), 0);
    }

    #[test]
    fn a_removed_site_is_a_tombstone_that_keeps_its_high_water_mark_and_caches() {
        let area = tempfile::tempdir().expect("tempdir");
        let store = Store::open(&area.path().join("mover.db")).expect("open");
        let site = Site {
            name: "www".into(),
            sequence: 2,
            previous: 1,
            high: 2,
            target: Target::Group("eu".into()),
            rules: Rules::default(),
            snapshot: "{}".into(),
        };
        store.save_site(&site).expect("save");
        let caches = SiteCaches {
            public_url: "https://www.example.com".into(),
            edges: vec!["http://edge:8080".into()],
            ..SiteCaches::default()
        };
        store.set_site_caches("www", &caches, 1).expect("caches");
        store.add_checkpoint("www", 1, 2, 10, 1).expect("checkpoint");
        store.forget_site("www", 2).expect("remove");
        store
            .forget_site("www", 3)
            .expect("a second remove (recovery) changes nothing");
        assert!(store.site("www").expect("read").is_none(), "not hosted");
        assert!(store.sites().expect("sites").is_empty(), "not listed");
        assert!(store.is_removed("www").expect("removed"));
        let tombstone = store.site_record("www").expect("read").expect("tombstone");
        assert_eq!(
            (
                tombstone.sequence,
                tombstone.next_version(),
                tombstone.target,
                tombstone.snapshot.as_str()
            ),
            (0, 3, Target::All, "")
        );
        assert_eq!(store.site_caches("www").expect("caches"), Some(caches));
        assert!(store.checkpoints("www").expect("checkpoints").is_empty());
        assert!(
            store
                .job_nodes(&JobSpec::new(JobKind::Publish, "www"))
                .expect("nodes")
                .is_empty()
        );
        // A publish of the name again: it reserves above the old versions, and is hosted once saved.
        store.reserve_version("www", 3).expect("reserve");
        assert!(
            store.site("www").expect("read").is_none(),
            "still not hosted while delivering"
        );
        let again = Site {
            sequence: 3,
            high: 3,
            target: Target::All,
            ..tombstone
        };
        store.save_site(&again).expect("save");
        assert_eq!(store.site("www").expect("read").map(|s| s.sequence), Some(3));
        assert_eq!(store.sites().expect("sites").len(), 1);
        assert!(!store.is_removed("www").expect("removed"));
    }

    #[test]
    fn pending_states_are_the_states_that_have_not_ended() {
        let pending: Vec<String> = JobState::ALL
            .iter()
            .filter(|state| !state.is_finished())
            .map(|state| format!("'{state}'"))
            .collect();
        assert_eq!(pending.join(", "), PENDING_STATES);
    }

    #[test]
    fn a_running_job_notes_what_it_waits_for_once_and_an_ended_job_keeps_its_error() {
        let area = tempfile::tempdir().expect("tempdir");
        let store = Store::open(&area.path().join("mover.db")).expect("open");
        let mut spec = JobSpec::new(JobKind::Publish, "www");
        spec.staging = Some("/staging".into());
        store.create_job("j1", &spec, 10, 5).expect("create");
        store.start_job("j1", &["n1".to_string()].into(), 10).expect("start");
        let note = "group leader a0 of segment a has not reported for 16 s (given up on at 30 s)";
        store.note_running("j1", Some(note), 11).expect("note");
        store.note_running("j1", Some(note), 12).expect("the same note again");
        let job = store.job("j1").expect("read").expect("job");
        assert_eq!((job.state, job.error.as_deref()), (JobState::Running, Some(note)));
        let logged = store.history(10).expect("history");
        let waits: Vec<&str> = logged
            .iter()
            .filter(|entry| entry.message.starts_with("waiting: "))
            .map(|entry| entry.message.as_str())
            .collect();
        assert_eq!(waits, [format!("waiting: {note}")], "logged once");
        store.note_running("j1", None, 13).expect("cleared");
        assert_eq!(store.job("j1").expect("read").expect("job").error, None);
        store
            .set_job_state("j1", JobState::Failed, Some("no quorum"), 14)
            .expect("failed");
        store.note_running("j1", Some(note), 15).expect("too late");
        let job = store.job("j1").expect("read").expect("job");
        assert_eq!(
            job.error.as_deref(),
            Some("no quorum"),
            "a note never replaces why a job ended"
        );
    }

    #[test]
    fn states_are_stored_as_words_and_an_unknown_word_is_an_error_that_names_it() {
        let area = tempfile::tempdir().expect("tempdir");
        let store = Store::open(&area.path().join("mover.db")).expect("open");
        let mut spec = JobSpec::new(JobKind::Publish, "www");
        spec.staging = Some("/staging".into());
        store.create_job("j1", &spec, 10, 5).expect("create");
        let nodes: BTreeSet<String> = ["n1".to_string()].into();
        store.start_job("j1", &nodes, 10).expect("start");
        store
            .set_job_node("j1", "n1", NodeState::Prepared, 100, None, None)
            .expect("node");
        let job = store.job("j1").expect("read").expect("job");
        assert_eq!(job.state, JobState::Running);
        assert_eq!(job.nodes[0].state, NodeState::Prepared);
        let stored: String = store
            .connection
            .query_row("SELECT state FROM jobs WHERE id = 'j1'", [], |row| row.get(0))
            .expect("state");
        assert_eq!(stored, "running", "the same words as before the enums");
        assert_eq!(store.pending_count().expect("count"), 1);

        store
            .connection
            .execute("UPDATE jobs SET state = 'paused' WHERE id = 'j1'", [])
            .expect("update");
        let error = store.job("j1").expect_err("an unknown state is not read as another");
        assert!(error.to_string().contains("unknown job state `paused`"), "{error}");
        store
            .connection
            .execute(
                "UPDATE jobs SET state = 'queued', spec = NULL, kind = 'explode' WHERE id = 'j1'",
                [],
            )
            .expect("update");
        let error = store.job("j1").expect_err("an unknown kind is refused");
        assert!(error.to_string().contains("unknown job kind `explode`"), "{error}");
        assert!(store.pending_jobs().expect("pending").is_empty(), "left out, not fatal");
    }
}
