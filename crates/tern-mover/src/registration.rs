//! Registration of nodes (seed 004: a node registers with the CCM, and a node that missed assignments is
//! brought up to date). A node sends a [`Registration`] at start and then periodically; the mover records
//! it, and for every site the node hosts but holds an older (or no) version of, submits a `synchronise` job
//! for that node — unless [`catch_up`] says otherwise.
//!
//! Group leaders report their network segments here too (seed 004's discovery phase, claims 43–44, 55
//! and 58): a segment report once a leader's registration round converges, a network segment report when
//! members appear or go offline, a take-over report from a new leader ([`tern_wire::segment`]). A report is
//! one frame tagged with the cluster key (`tern mover --cluster-key FILE`, the nodes' key); it is refused
//! and counted ([`SegmentIntake`]) when forged, oversized, malformed, stale, replayed or superseded by a
//! later leader ([`crate::segments::admit_report`]). An accepted report is written to the database and to
//! [`Mover::segments`]; every member new to its segment is registered as if it had registered itself, so a
//! member behind on a site it hosts is caught up (a `synchronise` job, a full copy — the seed's replicate —
//! for a node that holds nothing). The answer carries the administrator's override of the segment's
//! leader, which the leader passes on to its segment's election.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tern_wire::SecretKey;
use tern_wire::control::{ControlError, ReplayGuard};
use tern_wire::mover::{JobKind, Registered, Registration};
use tern_wire::segment::{self, ReportAnswer, SegmentBody, SegmentLimits, SegmentMessage, SegmentView};
use tracing::{info, warn};

use crate::ccm::Mover;
use crate::schedule::{JobSpec, Target, plain_name};
use crate::segments::{ReportRefusal, SUPERSEDE_AFTER, admit_report, merge_report};
use crate::store::Node;
use crate::store_thread::StoreError;

/// The name the mover signs its answers to segment reports with.
pub const CCM_NAME: &str = "ccm";

/// Least time between two catch-up jobs for the same node and site: a node that keeps failing is retried
/// at most this often, not on every registration. Each further catch-up while the node stays behind
/// doubles it, up to [`SYNCHRONISE_BACKOFF_MAX`] ([`synchronise_backoff`]).
pub const SYNCHRONISE_BACKOFF: Duration = Duration::from_secs(60);

/// The longest wait between two catch-ups of a node that stays behind (a full disk, a wrong key): an
/// hour, so that it still catches up within one once mended, without a full copy a minute meanwhile.
pub const SYNCHRONISE_BACKOFF_MAX: Duration = Duration::from_secs(3600);

/// Catch-ups sent for one node and site since it last held the published version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CatchUpsSent {
    /// When the last one was sent (ms since the epoch).
    pub last_ms: u64,
    /// How many were sent in a row while the node stayed behind.
    pub count: u32,
    /// The node's free disk when the last one was sent, bytes (its registration's).
    pub free_disk: u64,
}

/// More free disk than a node had at its last catch-up, by this much, makes the next one due at once,
/// whatever the back-off: the operator made room, and a node that failed for a full disk would otherwise
/// wait out a back-off of up to an hour before it is tried again (a trial's finding).
pub const ROOM_MADE: u64 = 64 << 20;

/// Whether a node reporting `free_now` bytes free has made room since a catch-up sent when it reported
/// `free_then` ([`ROOM_MADE`] more).
pub fn room_made(free_then: u64, free_now: u64) -> bool {
    free_now >= free_then.saturating_add(ROOM_MADE)
}

/// The wait after `sent` catch-ups in a row that left the node behind: [`SYNCHRONISE_BACKOFF`], doubled
/// for each one after the first, at most [`SYNCHRONISE_BACKOFF_MAX`].
pub fn synchronise_backoff(sent: u32) -> Duration {
    let doublings = sent.saturating_sub(1).min(16);
    SYNCHRONISE_BACKOFF
        .saturating_mul(1u32 << doublings)
        .min(SYNCHRONISE_BACKOFF_MAX)
}

/// Why a registration was refused.
#[derive(Debug, thiserror::Error)]
pub enum RegisterError {
    /// The node's name is not plain (HTTP 400).
    #[error("`{0}` is not a plain node name: 1 to 128 letters, digits, `-`, `_` or `.`, not starting with `.`")]
    Name(String),
    /// Another machine holds the name: a node with another instance id registered under it (HTTP 409).
    #[error(
        "node name {name} is held by another machine (another instance id, at {url}); give this node a name of its own with --name, or, if it replaces that machine, remove the old record first: tern nodes --remove {name}"
    )]
    Taken {
        /// The name.
        name: String,
        /// Where the holder takes assignments.
        url: String,
    },
    /// The address is not an `http://` or `https://` URL with a host (HTTP 400): every delivery to it
    /// would fail.
    #[error(
        "node address {0:?} is not an http:// or https:// URL with a host and port, and no user:password@, query, fragment or malformed % escape (tern node --listen, or --advertise)"
    )]
    Url(String),
    /// A content group's name is not plain (HTTP 400): the node would not host that group's sites.
    #[error(
        "content group {0:?} is not a plain name: 1 to 128 letters, digits, `-`, `_` or `.`, not starting with `.`"
    )]
    Group(String),
    /// The instance id is not 32 lowercase hex digits (HTTP 400).
    #[error("instance {0:?} is not a node instance id (32 lowercase hex digits)")]
    Instance(String),
    /// This mover encrypts assignments and the node holds no key, or another one (HTTP 400): it could open
    /// none of them, and a publish waiting for it would fail.
    #[error(
        "node {name} {why}: this mover encrypts every assignment, so the node could open none; start it with --encryption-key FILE, the mover's own key file"
    )]
    Encryption {
        /// The node.
        name: String,
        /// What is wrong with its key.
        why: &'static str,
    },
    /// The database failed (HTTP 500).
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What the database says about one hosted site, for a registering node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostedSite {
    /// The site.
    pub site: String,
    /// Whether the node is one of the site's nodes.
    pub hosts: bool,
    /// The version the node holds (0: none).
    pub held: u64,
    /// The site's published version.
    pub current: u64,
    /// Whether a job for the site is due now (it brings the node along, or would conflict with a catch-up).
    pub busy: bool,
    /// Whether the node holds a version above the published one that the mover never committed (its
    /// record is behind the node: restored from a backup, or written by another mover).
    pub unknown: bool,
}

/// Whether a registering node is sent a catch-up of a site.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CatchUp {
    /// It is behind: a `synchronise` job is submitted.
    Due,
    /// The node does not host the site.
    NotHosted,
    /// It holds the published version.
    Current,
    /// A job for the site is due now.
    Busy,
    /// It was sent one less than [`SYNCHRONISE_BACKOFF`] ago.
    BackingOff,
    /// It holds a version the mover never committed, above the published one: it is not overwritten
    /// without the operator asking (a `synchronise` or `replicate` job for it), as the mover's record may
    /// be the one that is behind.
    Unknown,
}

/// Decides, at `now_ms`, whether a node is sent a catch-up of `site`; `last_sent_ms` is when it was last
/// sent one. A clock that went back counts as long ago.
pub fn catch_up(site: &HostedSite, last_sent_ms: Option<u64>, now_ms: u64, backoff: Duration) -> CatchUp {
    if !site.hosts {
        return CatchUp::NotHosted;
    }
    if site.held == site.current {
        return CatchUp::Current;
    }
    if site.busy {
        return CatchUp::Busy;
    }
    let backoff_ms = u64::try_from(backoff.as_millis()).unwrap_or(u64::MAX);
    let recently = last_sent_ms.is_some_and(|sent| now_ms >= sent && now_ms - sent < backoff_ms);
    if recently {
        return CatchUp::BackingOff;
    }
    if site.unknown {
        return CatchUp::Unknown;
    }
    CatchUp::Due
}

/// Whether `url` is where a node can take assignments: `http://` or `https://`, a host, nothing after the
/// path but a path (no user information, query or fragment), printable ASCII without `<>"'` (it is shown
/// in listings and the admin UI).
/// What a registration changes that an operator should read in the log (a node re-registers every few
/// seconds; only news is logged).
#[derive(Debug, PartialEq, Eq)]
enum RegistrationNews {
    /// Nothing: the registration renews the node's.
    Same,
    /// A node the mover did not know.
    New { url: String, groups: Vec<String> },
    /// A known node's address or declared content groups, `(from, to)`.
    Changed {
        url: Option<(String, String)>,
        groups: Option<(Vec<String>, Vec<String>)>,
    },
}

/// The news of `node`'s registration, given the address it had (`None`: not registered) and the groups it
/// declared before (sorted).
fn registration_news(url_before: Option<&str>, groups_before: &[String], node: &Node) -> RegistrationNews {
    let mut groups: Vec<String> = node.groups.clone();
    groups.sort();
    groups.dedup();
    let Some(url_before) = url_before else {
        return RegistrationNews::New {
            url: node.url.clone(),
            groups,
        };
    };
    let url = (url_before != node.url).then(|| (url_before.to_string(), node.url.clone()));
    let groups = (groups_before != groups.as_slice()).then(|| (groups_before.to_vec(), groups));
    if url.is_none() && groups.is_none() {
        return RegistrationNews::Same;
    }
    RegistrationNews::Changed { url, groups }
}

fn node_url(url: &str) -> bool {
    if !url
        .bytes()
        .all(|b| b.is_ascii_graphic() && !matches!(b, b'#' | b'<' | b'>' | b'"' | b'\'' | b'`'))
    {
        return false;
    }
    let Ok(uri) = url.parse::<http::Uri>() else {
        return false;
    };
    matches!(uri.scheme_str(), Some("http" | "https"))
        && uri.host().is_some_and(|host| !host.is_empty())
        && uri.authority().is_some_and(|authority| {
            !authority.as_str().contains('@') && tern_http::target::port_is_valid(authority.as_str())
        })
        && tern_http::target::escapes_are_valid(uri.path())
        && uri.query().is_none()
        && url.len() <= 2048
}

impl Mover {
    /// Registers a node at `now_ms`; a node that is behind on a site it hosts (it was down, or a delivery
    /// failed) is brought up to date by itself.
    pub async fn register(&self, registration: Registration, now_ms: u64) -> Result<Registered, RegisterError> {
        if !plain_name(&registration.name) {
            return Err(RegisterError::Name(registration.name));
        }
        if !tern_wire::mover::valid_instance(&registration.instance) {
            return Err(RegisterError::Instance(
                tern_wire::cut_at(&registration.instance, 64).to_string(),
            ));
        }
        if !node_url(&registration.url) {
            return Err(RegisterError::Url(
                tern_wire::cut_at(&registration.url, 200).to_string(),
            ));
        }
        if let Some(group) = registration.groups.iter().find(|group| !plain_name(group)) {
            return Err(RegisterError::Group(tern_wire::cut_at(group, 200).to_string()));
        }
        if let Some(key) = &self.config.policy.encryption {
            let why = match registration.encryption_key_id.as_deref() {
                None => Some("has no encryption key"),
                Some(id) if id != tern_wire::mover::encryption_key_id(key) => Some("holds another encryption key"),
                Some(_) => None,
            };
            if let Some(why) = why {
                return Err(RegisterError::Encryption {
                    name: registration.name,
                    why,
                });
            }
        }
        let node = Node {
            name: registration.name,
            url: registration.url,
            last_seen_ms: now_ms,
            free_disk: registration.free_disk,
            cpus: registration.cpus,
            groups: registration.groups,
            instance: registration.instance,
        };
        let versions: Vec<(String, u64)> = registration.versions.into_iter().collect();
        let name = node.name.clone();
        let free_disk = node.free_disk;
        // Before a catch-up below can read it.
        self.prepared
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(name.clone(), registration.prepared);
        let hosted = self
            .store
            .call(move |store| {
                // One machine per name: job states and versions are recorded by name, so a second
                // machine under it would be reported as the first (committed while the first is down).
                let before = store.node_holder(&node.name)?;
                if let Some((holder, url)) = &before
                    && !holder.is_empty()
                    && *holder != node.instance
                {
                    return Ok(Err(RegisterError::Taken {
                        name: node.name.clone(),
                        url: url.clone(),
                    }));
                }
                let groups_before = store.declared_groups(&node.name)?;
                let news = registration_news(before.as_ref().map(|(_, url)| url.as_str()), &groups_before, &node);
                store.register(&node, &versions)?;
                store.confirm_commits(&node.name, &versions)?;
                let pending = store.pending_jobs()?;
                let mut hosted = Vec::new();
                for site in store.sites()? {
                    let held = store.node_version(&node.name, &site.name)?;
                    hosted.push(HostedSite {
                        hosts: store.target_nodes(&site.target)?.contains(&node.name),
                        held,
                        unknown: held > site.sequence && !store.committed_version(&site.name, held)?,
                        current: site.sequence,
                        busy: pending
                            .iter()
                            .any(|job| job.spec.site == site.name && job.due_ms <= now_ms),
                        site: site.name,
                    });
                }
                Ok(Ok((hosted, news)))
            })
            .await??;
        let (hosted, news) = hosted;
        match news {
            RegistrationNews::Same => {}
            RegistrationNews::New { url, groups } => info!(node = %name, %url, ?groups, "node registered"),
            RegistrationNews::Changed { url, groups } => {
                if let Some((from, to)) = url {
                    info!(node = %name, %from, %to, "node's address changed; deliveries go to the new one");
                }
                if let Some((from, to)) = groups {
                    info!(node = %name, ?from, ?to, "node's content groups changed");
                }
            }
        }
        let mut started = Vec::new();
        for site in hosted {
            let key = (name.clone(), site.site.clone());
            let mut sent = self.sent_catch_ups().get(&key).copied();
            if let Some(earlier) = sent
                && room_made(earlier.free_disk, free_disk)
            {
                info!(node = %name, site = %site.site, free_then = earlier.free_disk, free_now = free_disk,
                      "node has more free disk than at its last catch-up; the next one is due now");
                sent = None;
            }
            let backoff = synchronise_backoff(sent.map_or(0, |sent| sent.count));
            match catch_up(&site, sent.map(|sent| sent.last_ms), now_ms, backoff) {
                CatchUp::Due => {}
                CatchUp::Current => {
                    // Caught up: the next time it falls behind starts with the shortest wait again.
                    self.sent_catch_ups().remove(&key);
                    continue;
                }
                CatchUp::Unknown => {
                    // Noted once per back-off, like a catch-up, not on every registration.
                    self.sent_catch_ups().insert(
                        key,
                        CatchUpsSent {
                            last_ms: now_ms,
                            count: 1,
                            free_disk,
                        },
                    );
                    warn!(node = %name, site = %site.site, held = site.held, version = site.current,
                          "node holds a version this mover never committed; not overwritten");
                    let message = format!(
                        "node {name} holds version {} of {}, above the published version {} and never committed by this mover: it is left as it is; submit a synchronise or replicate job for it to replace it with version {}",
                        site.held, site.site, site.current, site.current
                    );
                    let _ = self.store.call(move |store| store.note(None, &message, now_ms)).await;
                    continue;
                }
                _ => continue,
            }
            let mut spec = JobSpec::new(JobKind::Synchronise, &site.site);
            spec.target = Some(Target::Node(name.clone()));
            if let Ok(id) = self.submit(spec, now_ms).await {
                let count = sent.map_or(0, |sent| sent.count).saturating_add(1);
                self.sent_catch_ups().insert(
                    key,
                    CatchUpsSent {
                        last_ms: now_ms,
                        count,
                        free_disk,
                    },
                );
                let next = synchronise_backoff(count);
                if count > 1 {
                    warn!(node = %name, site = %site.site, held = site.held, version = site.current, job = %id, tries = count,
                          next_in_secs = next.as_secs(),
                          "node is still behind after earlier catch-ups (see their jobs for why: a full disk, another mover's key); synchronising it again, and waiting longer each time");
                } else {
                    info!(node = %name, site = %site.site, held = site.held, version = site.current, job = %id, "node is behind; synchronising it");
                }
                started.push(id);
            }
        }
        Ok(Registered {
            registered: name,
            synchronising: started,
        })
    }

    fn sent_catch_ups(&self) -> std::sync::MutexGuard<'_, HashMap<(String, String), CatchUpsSent>> {
        self.last_synchronise.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Why a segment report was refused; each maps to an HTTP status ([`ReportError::status`]) and a counter
/// ([`ReportError::reason`]).
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    /// The mover was started without the cluster key.
    #[error("this mover takes no segment reports: start it with --cluster-key FILE (the key file the nodes use)")]
    NoKey,
    /// The frame did not open or parse (a wrong key, damaged, over the limit, malformed, stale, replayed).
    #[error("segment report refused: {0}")]
    Frame(#[from] ControlError),
    /// A well-formed message that is not a segment report.
    #[error("not a segment report")]
    NotAReport,
    /// Its tag was good, but another leader's report takes precedence, or it is a replay.
    #[error(transparent)]
    Refused(#[from] ReportRefusal),
    /// The leader that sent it runs under a name another machine holds (another instance id registered
    /// under it): it is not taken as the segment's leader.
    #[error(
        "segment report from {leader} refused: that name is held by another node (at {url}); give this node a name of its own with --name"
    )]
    NameTaken {
        /// The leader's name.
        leader: String,
        /// Where the name's holder takes assignments.
        url: String,
    },
    /// The database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl ReportError {
    /// A short token for counters.
    pub fn reason(&self) -> &'static str {
        match self {
            ReportError::NoKey => "no-key",
            ReportError::Frame(error) => error.reason(),
            ReportError::NotAReport => "malformed",
            ReportError::Refused(refusal) => refusal.reason(),
            ReportError::NameTaken { .. } => "name-taken",
            ReportError::Store(_) => "store",
        }
    }

    /// The HTTP status it is answered with.
    pub fn status(&self) -> http::StatusCode {
        use http::StatusCode;
        match self.reason() {
            "no-key" => StatusCode::FORBIDDEN,
            "bad-tag" => StatusCode::UNAUTHORIZED,
            "oversized" => StatusCode::PAYLOAD_TOO_LARGE,
            "stale" | "replayed" | "superseded" | "two-leaders" | "name-taken" => StatusCode::CONFLICT,
            "store" => StatusCode::INTERNAL_SERVER_ERROR,
            _ => StatusCode::BAD_REQUEST,
        }
    }
}

/// Why an override of a segment's leader was refused.
#[derive(Debug, thiserror::Error)]
pub enum OverrideError {
    /// No report from this segment yet (HTTP 404).
    #[error("no segment {0}: none of its leaders has reported")]
    NoSegment(String),
    /// The node is not a member of the segment (HTTP 400).
    #[error("{node} is not a member of segment {segment}; its members are {members}")]
    NotAMember {
        /// The segment.
        segment: String,
        /// The node asked for.
        node: String,
        /// The segment's members, comma-separated.
        members: String,
    },
    /// The database failed (HTTP 500).
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The mover's intake of segment reports: the replay guard, the numbering of its answers, and counts of
/// reports taken and refused (by reason, shown in `/status`). The key is the mover's
/// [`MoverConfig::cluster_key`](crate::ccm::MoverConfig::cluster_key).
#[derive(Debug)]
pub struct SegmentIntake {
    guard: Mutex<ReplayGuard>,
    limits: SegmentLimits,
    incarnation: u64,
    seq: AtomicU64,
    accepted: AtomicU64,
    refused: Mutex<BTreeMap<&'static str, u64>>,
    /// Refusals are logged once per reason every 30 s (a leader with the wrong key sends every second).
    warnings: Mutex<tern_admin::KeyedThrottle<&'static str>>,
}

impl Default for SegmentIntake {
    fn default() -> Self {
        let limits = SegmentLimits::http();
        let mut random = [0u8; 8];
        // Without randomness the answers still count up from a clock-derived run id.
        if getrandom::fill(&mut random).is_err() {
            random = crate::ccm::now_ms().to_le_bytes();
        }
        SegmentIntake {
            guard: Mutex::new(ReplayGuard::new(limits.replay())),
            limits,
            incarnation: u64::from_le_bytes(random),
            seq: AtomicU64::new(0),
            accepted: AtomicU64::new(0),
            refused: Mutex::new(BTreeMap::new()),
            warnings: Mutex::new(tern_admin::KeyedThrottle::default()),
        }
    }
}

impl SegmentIntake {
    /// Reports taken, and refused by reason.
    pub fn counts(&self) -> (u64, BTreeMap<&'static str, u64>) {
        let refused = self.refused.lock().unwrap_or_else(|p| p.into_inner()).clone();
        (self.accepted.load(Ordering::Relaxed), refused)
    }

    /// Counts a report refused for `reason` (also before it reached the intake: an oversized body).
    pub(crate) fn count_refusal(&self, reason: &'static str) {
        *self
            .refused
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(reason)
            .or_default() += 1;
    }
}

impl Mover {
    /// The intake of segment reports (its counters).
    pub fn segment_intake(&self) -> &SegmentIntake {
        &self.segment_intake
    }

    /// Fills [`Mover::segments`] from the database (at start-up).
    pub async fn restore_segments(&self) -> Result<usize, StoreError> {
        let views = self.store.call(|store| store.segments()).await?;
        let count = views.len();
        for view in views {
            self.segments.record(view);
        }
        Ok(count)
    }

    /// Takes one segment report (the request's body) at `now_ms`; answers with the frame to send back.
    pub async fn take_segment_report(&self, body: &[u8], now_ms: u64) -> Result<Vec<u8>, ReportError> {
        let outcome = self.admit_segment_report(body, now_ms).await;
        match &outcome {
            Ok(_) => {
                self.segment_intake.accepted.fetch_add(1, Ordering::Relaxed);
            }
            Err(error) => {
                let reason = error.reason();
                self.segment_intake.count_refusal(reason);
                self.metrics
                    .tree_refused
                    .get_or_create(&crate::metrics::ReasonLabel { reason: reason.into() })
                    .inc();
                let due = self
                    .segment_intake
                    .warnings
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .check(reason, std::time::Instant::now());
                if let Some(suppressed) = due {
                    let hint = if reason == "bad-tag" {
                        "; the leader's --cluster-key is not this mover's: give both the same key file"
                    } else {
                        ""
                    };
                    warn!(reason, %error, suppressed, "segment report refused{hint}");
                }
            }
        }
        outcome
    }

    async fn admit_segment_report(&self, body: &[u8], now_ms: u64) -> Result<Vec<u8>, ReportError> {
        let intake = &self.segment_intake;
        let key = self.config.cluster_key.clone().ok_or(ReportError::NoKey)?;
        let message = segment::decode(&key, body, &intake.limits)?.into_message();
        let SegmentBody::SegmentReport(report) = &message.body else {
            return Err(ReportError::NotAReport);
        };
        intake
            .guard
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .check_stamp(&message.stamp(), now_ms)?;
        let stored = self.segments.view(&message.segment);
        admit_report(stored.as_ref(), &message, report, now_ms, SUPERSEDE_AFTER)?;
        let report = &self
            .without_other_machines(&message.segment, &message.sender, report)
            .await?;
        let (view, appeared) = merge_report(stored.as_ref(), &message, report, now_ms);
        // Another node, or the same one elected again (a new term, or a restarted process): either is a
        // take-over the log says.
        let changed_leader = stored.as_ref().is_none_or(|before| {
            before.leader != view.leader || before.term != view.term || before.incarnation != view.incarnation
        });
        let departed: Vec<String> = stored
            .as_ref()
            .map(|before| {
                before
                    .members
                    .iter()
                    .filter(|member| view.members.iter().all(|now| now.name != member.name))
                    .map(|member| member.name.clone())
                    .collect()
            })
            .unwrap_or_default();
        let record = view.clone();
        let note = describe(&view, changed_leader, &appeared, &departed);
        let logged = note.clone();
        // A refresh that says nothing new is kept in memory only: the database is written when the
        // segment changes (its leader, members or their resources, its location).
        let unchanged = stored.as_ref().is_some_and(|before| same_segment(before, &view));
        if !unchanged {
            self.store
                .call(move |store| {
                    store.save_segment(&record)?;
                    match logged {
                        Some(note) => store.note(None, &note, now_ms),
                        None => Ok(()),
                    }
                })
                .await?;
        }
        if let Some(note) = note {
            info!(segment = %view.name, leader = %view.leader, kind = report.kind.as_str(), "{note}");
        }
        let answer = self.answer(&key, &message, view.leader_override.clone(), now_ms);
        self.segments.record(view);
        for member in appeared {
            let registration = Registration {
                name: member.name.clone(),
                url: member.profile.url,
                free_disk: member.profile.free_disk,
                cpus: member.profile.cpus,
                groups: member.profile.groups,
                versions: member.profile.versions,
                prepared: member.profile.prepared,
                instance: member.profile.instance,
                encryption_key_id: member.profile.encryption_key_id,
            };
            // A member new to the segment is registered, and caught up on the sites it hosts.
            if let Err(error) = self.register(registration, now_ms).await {
                warn!(node = %member.name, %error, "a member reported by its segment's leader was not registered");
            }
        }
        Ok(answer)
    }

    /// `report` without the members whose name another machine holds (a node with another instance id
    /// registered under it, [`RegisterError::Taken`]): listed in a segment, such a member would be
    /// delivered to and reported committed as the node that holds the name. Each is warned about (once a
    /// minute per segment). A report whose `leader` is such a member is refused whole.
    async fn without_other_machines(
        &self,
        segment: &str,
        leader: &str,
        report: &segment::SegmentReport,
    ) -> Result<segment::SegmentReport, ReportError> {
        let names: Vec<(String, String)> = report
            .members
            .iter()
            .map(|member| (member.name.clone(), member.profile.instance.clone()))
            .collect();
        let taken: Vec<(String, String)> = self
            .store
            .call(move |store| {
                let mut taken = Vec::new();
                for (name, instance) in names {
                    if let Some((holder, url)) = store.node_holder(&name)?
                        && !holder.is_empty()
                        && holder != instance
                    {
                        taken.push((name, url));
                    }
                }
                Ok(taken)
            })
            .await?;
        if let Some((_, url)) = taken.iter().find(|(name, _)| name == leader) {
            return Err(ReportError::NameTaken {
                leader: leader.to_string(),
                url: url.clone(),
            });
        }
        let mut report = report.clone();
        let mut warnings = self.segment_intake.warnings.lock().unwrap_or_else(|p| p.into_inner());
        report.members.retain(|member| {
            let Some((_, url)) = taken.iter().find(|(name, _)| *name == member.name) else {
                return true;
            };
            if let Some(suppressed) = warnings.check("member-name-taken", std::time::Instant::now()) {
                warn!(%segment, node = %member.name, holder = %url, member = %member.profile.url, suppressed,
                      "a segment lists a member under a name another machine holds; left out of the segment: give it a name of its own with --name");
            }
            false
        });
        Ok(report)
    }

    fn answer(
        &self,
        key: &SecretKey,
        report: &SegmentMessage,
        leader_override: Option<String>,
        now_ms: u64,
    ) -> Vec<u8> {
        let intake = &self.segment_intake;
        let message = SegmentMessage {
            segment: report.segment.clone(),
            sender: CCM_NAME.into(),
            address: self.config.listen,
            term: report.term,
            incarnation: intake.incarnation,
            seq: intake.seq.fetch_add(1, Ordering::Relaxed) + 1,
            sent_at_ms: now_ms,
            body: SegmentBody::ReportAnswer(ReportAnswer {
                seq: report.seq,
                leader_override,
            }),
        };
        segment::encode(key, &message)
    }

    /// Sets (or, with `None`, clears) the administrator's choice of `segment`'s leader. It reaches the
    /// nodes with the answer to the leader's next report (within its refresh period): the leader passes it
    /// to its election and multicasts it to its members.
    pub async fn override_leader(
        &self,
        segment: &str,
        leader: Option<String>,
        now_ms: u64,
    ) -> Result<SegmentView, OverrideError> {
        let Some(mut view) = self.segments.view(segment) else {
            return Err(OverrideError::NoSegment(segment.to_string()));
        };
        if let Some(node) = &leader
            && view.members.iter().all(|member| member.name != *node)
        {
            let members: Vec<&str> = view.members.iter().map(|member| member.name.as_str()).collect();
            return Err(OverrideError::NotAMember {
                segment: segment.to_string(),
                node: node.clone(),
                members: members.join(", "),
            });
        }
        view.leader_override = leader.clone();
        let record = view.clone();
        let note = match &leader {
            Some(node) => format!("segment {segment}: leader overridden to {node}"),
            None => format!("segment {segment}: leader override cleared; the election decides"),
        };
        self.store
            .call(move |store| {
                store.save_segment(&record)?;
                store.note(None, &note, now_ms)
            })
            .await?;
        self.segments.record(view.clone());
        info!(%segment, leader = ?leader, "segment leader override set");
        Ok(view)
    }
}

/// The segments as `/status` shows them: each one's leader, term, location, members and the age of its
/// last report.
pub fn segment_summary(views: &[SegmentView]) -> serde_json::Value {
    let now = crate::ccm::now_ms();
    views
        .iter()
        .map(|view| {
            serde_json::json!({
                "name": view.name,
                "location": view.location,
                "leader": view.leader,
                "term": view.term,
                "members": view.members.iter().map(|member| member.name.as_str()).collect::<Vec<_>>(),
                "reported_seconds_ago": now.saturating_sub(view.reported_ms) / 1000,
                "leader_silent": crate::segments::leader_silent(view, now),
                "leader_override": view.leader_override,
            })
        })
        .collect()
}

/// Whether two records of a segment say the same but for when and in which report.
fn same_segment(before: &SegmentView, after: &SegmentView) -> bool {
    let normalised = SegmentView {
        seq: before.seq,
        reported_ms: before.reported_ms,
        kind: before.kind,
        ..after.clone()
    };
    normalised == *before
}

/// The history line for a report, when it says something new.
fn describe(
    view: &SegmentView,
    changed_leader: bool,
    appeared: &[tern_wire::segment::Member],
    departed: &[String],
) -> Option<String> {
    let mut parts = Vec::new();
    if changed_leader {
        parts.push(format!("leader {} (term {})", view.leader, view.term));
    }
    if !appeared.is_empty() {
        let names: Vec<&str> = appeared.iter().map(|member| member.name.as_str()).collect();
        parts.push(format!("appeared {}", names.join(", ")));
    }
    if !departed.is_empty() {
        parts.push(format!("went offline {}", departed.join(", ")));
    }
    if parts.is_empty() {
        return None;
    }
    Some(format!(
        "segment {} ({} report, {} members): {}",
        view.name,
        view.kind.as_str(),
        view.members.len(),
        parts.join("; ")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn site(hosts: bool, held: u64, current: u64, busy: bool) -> HostedSite {
        HostedSite {
            site: "www".into(),
            hosts,
            held,
            current,
            busy,
            unknown: false,
        }
    }

    #[test]
    fn only_a_new_node_or_a_changed_address_or_group_is_news() {
        let node = |url: &str, groups: &[&str]| Node {
            name: "n1".into(),
            url: url.into(),
            last_seen_ms: 0,
            free_disk: 0,
            cpus: 1,
            groups: groups.iter().map(|g| g.to_string()).collect(),
            instance: "i".into(),
        };
        let strings = |list: &[&str]| list.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let (a, b) = ("http://10.0.0.1:7100", "http://10.0.0.2:7100");
        assert_eq!(
            registration_news(None, &[], &node(a, &["web", "api", "web"])),
            RegistrationNews::New {
                url: a.into(),
                groups: strings(&["api", "web"])
            }
        );
        assert_eq!(
            registration_news(Some(a), &strings(&["api", "web"]), &node(a, &["web", "api"])),
            RegistrationNews::Same,
            "a renewal in another order is no news"
        );
        assert_eq!(
            registration_news(Some(a), &strings(&["web"]), &node(b, &[])),
            RegistrationNews::Changed {
                url: Some((a.into(), b.into())),
                groups: Some((strings(&["web"]), vec![]))
            }
        );
    }

    #[test]
    fn a_node_that_stays_behind_waits_twice_as_long_each_time_up_to_an_hour() {
        let waits: Vec<u64> = (0..9).map(|sent| synchronise_backoff(sent).as_secs()).collect();
        assert_eq!(waits, [60, 60, 120, 240, 480, 960, 1920, 3600, 3600]);
        assert_eq!(synchronise_backoff(u32::MAX), SYNCHRONISE_BACKOFF_MAX);
    }

    #[test]
    fn a_node_behind_on_a_site_it_hosts_is_caught_up_at_most_once_per_backoff() {
        let backoff = Duration::from_secs(60);
        assert_eq!(catch_up(&site(true, 2, 3, false), None, 1_000, backoff), CatchUp::Due);
        assert_eq!(
            catch_up(&site(true, 0, 3, false), None, 1_000, backoff),
            CatchUp::Due,
            "never got it"
        );
        assert_eq!(
            catch_up(&site(true, 4, 3, false), None, 1_000, backoff),
            CatchUp::Due,
            "missed a rollback"
        );
        assert_eq!(
            catch_up(&site(false, 2, 3, false), None, 1_000, backoff),
            CatchUp::NotHosted
        );
        assert_eq!(
            catch_up(&site(true, 3, 3, false), None, 1_000, backoff),
            CatchUp::Current
        );
        assert_eq!(catch_up(&site(true, 2, 3, true), None, 1_000, backoff), CatchUp::Busy);
        let unknown = HostedSite {
            unknown: true,
            ..site(true, 7, 6, false)
        };
        assert_eq!(
            catch_up(&unknown, None, 1_000, backoff),
            CatchUp::Unknown,
            "a version the mover never committed is not overwritten by itself"
        );
        let behind = site(true, 2, 3, false);
        assert_eq!(catch_up(&behind, Some(1_000), 60_999, backoff), CatchUp::BackingOff);
        assert_eq!(catch_up(&behind, Some(1_000), 61_000, backoff), CatchUp::Due);
        assert_eq!(
            catch_up(&behind, Some(90_000), 1_000, backoff),
            CatchUp::Due,
            "a clock that went back does not hold catch-ups back"
        );
    }
}
