//! The mover's state in SQLite: hosted sites and their published version, registered nodes and the version
//! each holds, jobs with their per-node state, and a history log. Every job's state is written here before
//! it is acted on, so a restart finds it (seed 004's CCM database).

use std::path::Path;

use rusqlite::{Connection, OptionalExtension, params};
use serde::Serialize;

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
}

/// A job.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Job {
    /// Id.
    pub id: String,
    /// `publish`, `synchronise`, `rollback`.
    pub kind: String,
    /// Site.
    pub site: String,
    /// `queued`, `running`, `committed`, `failed`.
    pub state: String,
    /// Why it failed.
    pub error: Option<String>,
    /// Per node: state and bytes sent.
    pub nodes: Vec<JobNode>,
    /// When it was created.
    pub created_ms: u64,
}

/// A node's part in a job.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct JobNode {
    /// The node.
    pub node: String,
    /// `pending`, `prepared`, `committed`, `failed`.
    pub state: String,
    /// Bytes sent to it.
    pub bytes: u64,
    /// Its error.
    pub error: Option<String>,
}

/// The database.
pub struct Store {
    connection: Connection,
}

/// Errors of the store.
pub type StoreResult<T> = Result<T, rusqlite::Error>;

impl Store {
    /// Opens (creating) the database at `path`.
    pub fn open(path: &Path) -> StoreResult<Store> {
        let connection = Connection::open(path)?;
        connection.pragma_update(None, "journal_mode", "WAL")?;
        connection.pragma_update(None, "synchronous", "FULL")?;
        connection.execute_batch(
            "CREATE TABLE IF NOT EXISTS sites (name TEXT PRIMARY KEY, sequence INTEGER NOT NULL, snapshot TEXT NOT NULL);
             CREATE TABLE IF NOT EXISTS nodes (name TEXT PRIMARY KEY, url TEXT NOT NULL, last_seen_ms INTEGER NOT NULL, free_disk INTEGER NOT NULL);
             CREATE TABLE IF NOT EXISTS node_versions (node TEXT NOT NULL, site TEXT NOT NULL, sequence INTEGER NOT NULL, PRIMARY KEY (node, site));
             CREATE TABLE IF NOT EXISTS jobs (id TEXT PRIMARY KEY, kind TEXT NOT NULL, site TEXT NOT NULL, state TEXT NOT NULL,
                 error TEXT, staging TEXT, created_ms INTEGER NOT NULL);
             CREATE TABLE IF NOT EXISTS job_nodes (job TEXT NOT NULL, node TEXT NOT NULL, state TEXT NOT NULL, bytes INTEGER NOT NULL,
                 error TEXT, PRIMARY KEY (job, node));
             CREATE TABLE IF NOT EXISTS history (at_ms INTEGER NOT NULL, job TEXT, message TEXT NOT NULL);
             CREATE TABLE IF NOT EXISTS checkpoints (site TEXT NOT NULL, number INTEGER NOT NULL, sequence INTEGER NOT NULL,
                 created_ms INTEGER NOT NULL, bytes INTEGER NOT NULL, PRIMARY KEY (site, number));",
        )?;
        Ok(Store { connection })
    }

    /// A site's published sequence and snapshot (JSON).
    pub fn site(&self, name: &str) -> StoreResult<Option<(u64, String)>> {
        self.connection
            .query_row(
                "SELECT sequence, snapshot FROM sites WHERE name = ?1",
                params![name],
                |row| Ok((row.get::<_, i64>(0)? as u64, row.get(1)?)),
            )
            .optional()
    }

    /// Records a site's newly published version.
    pub fn set_site(&self, name: &str, sequence: u64, snapshot: &str) -> StoreResult<()> {
        self.connection.execute(
            "INSERT INTO sites (name, sequence, snapshot) VALUES (?1, ?2, ?3)
             ON CONFLICT(name) DO UPDATE SET sequence = excluded.sequence, snapshot = excluded.snapshot",
            params![name, sequence as i64, snapshot],
        )?;
        Ok(())
    }

    /// Registers (or refreshes) a node and the versions it holds.
    pub fn register(&self, node: &Node, versions: &[(String, u64)]) -> StoreResult<()> {
        self.connection.execute(
            "INSERT INTO nodes (name, url, last_seen_ms, free_disk) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT(name) DO UPDATE SET url = excluded.url, last_seen_ms = excluded.last_seen_ms, free_disk = excluded.free_disk",
            params![node.name, node.url, node.last_seen_ms as i64, node.free_disk as i64],
        )?;
        for (site, sequence) in versions {
            self.set_node_version(&node.name, site, *sequence)?;
        }
        Ok(())
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
        let mut statement = self
            .connection
            .prepare("SELECT name, url, last_seen_ms, free_disk FROM nodes ORDER BY name")?;
        let rows = statement.query_map([], |row| {
            Ok(Node {
                name: row.get(0)?,
                url: row.get(1)?,
                last_seen_ms: row.get::<_, i64>(2)? as u64,
                free_disk: row.get::<_, i64>(3)? as u64,
            })
        })?;
        rows.collect()
    }

    /// Creates a job for `nodes`.
    pub fn create_job(
        &self,
        id: &str,
        kind: &str,
        site: &str,
        staging: Option<&str>,
        nodes: &[String],
        now_ms: u64,
    ) -> StoreResult<()> {
        self.connection.execute(
            "INSERT INTO jobs (id, kind, site, state, error, staging, created_ms) VALUES (?1, ?2, ?3, 'queued', NULL, ?4, ?5)",
            params![id, kind, site, staging, now_ms as i64],
        )?;
        for node in nodes {
            self.connection.execute(
                "INSERT INTO job_nodes (job, node, state, bytes, error) VALUES (?1, ?2, 'pending', 0, NULL)",
                params![id, node],
            )?;
        }
        self.log(
            Some(id),
            &format!("{kind} of {site} created for {} nodes", nodes.len()),
            now_ms,
        )
    }

    /// Sets a job's state.
    pub fn set_job_state(&self, id: &str, state: &str, error: Option<&str>, now_ms: u64) -> StoreResult<()> {
        self.connection.execute(
            "UPDATE jobs SET state = ?2, error = ?3 WHERE id = ?1",
            params![id, state, error],
        )?;
        self.log(
            Some(id),
            &format!("job {state}{}", error.map(|e| format!(": {e}")).unwrap_or_default()),
            now_ms,
        )
    }

    /// Sets a node's state in a job.
    pub fn set_job_node(&self, id: &str, node: &str, state: &str, bytes: u64, error: Option<&str>) -> StoreResult<()> {
        self.connection.execute(
            "UPDATE job_nodes SET state = ?3, bytes = bytes + ?4, error = ?5 WHERE job = ?1 AND node = ?2",
            params![id, node, state, bytes as i64, error],
        )?;
        Ok(())
    }

    /// A job with its nodes.
    pub fn job(&self, id: &str) -> StoreResult<Option<Job>> {
        let job = self
            .connection
            .query_row(
                "SELECT id, kind, site, state, error, created_ms FROM jobs WHERE id = ?1",
                params![id],
                |row| {
                    Ok(Job {
                        id: row.get(0)?,
                        kind: row.get(1)?,
                        site: row.get(2)?,
                        state: row.get(3)?,
                        error: row.get(4)?,
                        nodes: Vec::new(),
                        created_ms: row.get::<_, i64>(5)? as u64,
                    })
                },
            )
            .optional()?;
        let Some(mut job) = job else {
            return Ok(None);
        };
        let mut statement = self
            .connection
            .prepare("SELECT node, state, bytes, error FROM job_nodes WHERE job = ?1 ORDER BY node")?;
        let rows = statement.query_map(params![id], |row| {
            Ok(JobNode {
                node: row.get(0)?,
                state: row.get(1)?,
                bytes: row.get::<_, i64>(2)? as u64,
                error: row.get(3)?,
            })
        })?;
        job.nodes = rows.collect::<StoreResult<_>>()?;
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

    /// The staging directory of a job.
    pub fn job_staging(&self, id: &str) -> StoreResult<Option<String>> {
        Ok(self
            .connection
            .query_row("SELECT staging FROM jobs WHERE id = ?1", params![id], |row| row.get(0))
            .optional()?
            .flatten())
    }

    /// Jobs left running or queued by a previous run of the mover: they fail cleanly, never stay running.
    pub fn fail_interrupted(&self, now_ms: u64) -> StoreResult<usize> {
        let ids: Vec<String> = {
            let mut statement = self
                .connection
                .prepare("SELECT id FROM jobs WHERE state IN ('queued', 'running')")?;
            let rows = statement.query_map([], |row| row.get(0))?;
            rows.collect::<StoreResult<_>>()?
        };
        for id in &ids {
            self.set_job_state(
                id,
                "failed",
                Some("the mover restarted during the job; publish again"),
                now_ms,
            )?;
        }
        Ok(ids.len())
    }

    /// Records a checkpoint; returns its number.
    pub fn add_checkpoint(&self, site: &str, sequence: u64, bytes: u64, now_ms: u64) -> StoreResult<u64> {
        let number: i64 = self.connection.query_row(
            "SELECT COALESCE(MAX(number), 0) + 1 FROM checkpoints WHERE site = ?1",
            params![site],
            |row| row.get(0),
        )?;
        self.connection.execute(
            "INSERT INTO checkpoints (site, number, sequence, created_ms, bytes) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![site, number, sequence as i64, now_ms as i64, bytes as i64],
        )?;
        self.log(
            None,
            &format!("checkpoint {number} of {site} (version {sequence})"),
            now_ms,
        )?;
        Ok(number as u64)
    }

    /// A site's checkpoints: (number, version, created, bytes), oldest first.
    pub fn checkpoints(&self, site: &str) -> StoreResult<Vec<(u64, u64, u64, u64)>> {
        let mut statement = self
            .connection
            .prepare("SELECT number, sequence, created_ms, bytes FROM checkpoints WHERE site = ?1 ORDER BY number")?;
        let rows = statement.query_map(params![site], |row| {
            Ok((
                row.get::<_, i64>(0)? as u64,
                row.get::<_, i64>(1)? as u64,
                row.get::<_, i64>(2)? as u64,
                row.get::<_, i64>(3)? as u64,
            ))
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

    fn log(&self, job: Option<&str>, message: &str, now_ms: u64) -> StoreResult<()> {
        self.connection.execute(
            "INSERT INTO history (at_ms, job, message) VALUES (?1, ?2, ?3)",
            params![now_ms as i64, job, message],
        )?;
        Ok(())
    }
}
