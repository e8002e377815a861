//! The `/metrics` of local distribution (seed `004_1419c51402506f7e.txt`, "local distribution"): one
//! registry for the group leader's and the member's counters alike, and how the driver adds what each
//! sans-IO core counted ([`Counters`]) since it last looked.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::mctp::Counters;

/// Label: why a datagram was refused.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    /// `bad-tag`, `replayed`, `unannounced`, `sequence-outside`, `injected-loss`, ...
    pub reason: String,
}

/// Label: how a report request was sent.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HowLabel {
    /// `unicast` or `multicast`.
    pub how: String,
}

/// The `/metrics` of local distribution, on leaders and members alike.
pub struct MctpMetrics {
    /// The registry the node's `/metrics` encodes.
    pub registry: Registry,
    /// GL: sessions started.
    pub sessions: Counter,
    /// GL: passes sent (pass 1 included).
    pub passes: Counter,
    /// GL: data frames sent.
    pub frames_sent: Counter,
    /// GL: parity frames sent in repair passes.
    pub frames_repaired: Counter,
    /// GL: NACKed frames in status reports (summed over members).
    pub nacks: Counter,
    /// GL: status reports received.
    pub status_reports: Counter,
    /// GL: report requests sent (end-of-pass status requests and report collection's), by how.
    pub report_requests: Family<HowLabel, Counter>,
    /// GL: bytes sent on the data channel (UDP payloads: frames and control messages).
    pub sent_bytes: Counter,
    /// GL: assignment bytes delivered to members by the data channel (size × members complete).
    pub goodput_bytes: Counter,
    /// GL: goodput of the last session, bytes per second to all its members together.
    pub last_goodput: Gauge,
    /// Member: sessions received complete.
    pub received: Counter,
    /// Member: new frames received and written.
    pub frames_received: Counter,
    /// Member: lost source frames rebuilt from parity frames, in assignments that then passed their
    /// check (counted by the node after the rebuild and the check).
    pub frames_rebuilt: Counter,
    /// Member: assignments received complete whose check then failed (damaged or forged frames, or a
    /// disk fault), taken by unicast instead.
    pub received_refused: Counter,
    /// Member: frames received again.
    pub duplicates: Counter,
    /// Datagrams refused or ignored, by reason.
    pub refused: Family<ReasonLabel, Counter>,
}

impl MctpMetrics {
    /// A registry with every metric at zero.
    pub(super) fn new() -> Self {
        let mut registry = Registry::with_prefix("tern_node_mctp");
        let sessions = Counter::default();
        registry.register(
            "sessions",
            "Sessions this node started as group leader",
            sessions.clone(),
        );
        let passes = Counter::default();
        registry.register("passes", "Passes sent, the first included", passes.clone());
        let frames_sent = Counter::default();
        registry.register("frames_sent", "Data frames sent", frames_sent.clone());
        let frames_repaired = Counter::default();
        registry.register(
            "frames_repaired",
            "Data frames resent in repair passes",
            frames_repaired.clone(),
        );
        let nacks = Counter::default();
        registry.register("nacks", "Frames NACKed in members' status reports", nacks.clone());
        let status_reports = Counter::default();
        registry.register("status_reports", "Status reports received", status_reports.clone());
        let report_requests = Family::<HowLabel, Counter>::default();
        registry.register(
            "report_requests",
            "Report requests sent, by how",
            report_requests.clone(),
        );
        let sent_bytes = Counter::default();
        registry.register("sent_bytes", "Bytes sent on the data channel", sent_bytes.clone());
        let goodput_bytes = Counter::default();
        registry.register(
            "goodput_bytes",
            "Assignment bytes delivered by the data channel (size times members complete)",
            goodput_bytes.clone(),
        );
        let last_goodput = Gauge::default();
        registry.register(
            "last_goodput_bytes_per_second",
            "Goodput of the last session to all its members together",
            last_goodput.clone(),
        );
        let received = Counter::default();
        registry.register("received", "Sessions received complete (member)", received.clone());
        let frames_received = Counter::default();
        registry.register(
            "frames_received",
            "New data frames received (member)",
            frames_received.clone(),
        );
        let frames_rebuilt = Counter::default();
        registry.register(
            "frames_rebuilt",
            "Lost source frames rebuilt from parity frames, in assignments that passed their check (member)",
            frames_rebuilt.clone(),
        );
        let received_refused = Counter::default();
        registry.register(
            "received_refused",
            "Assignments received complete that failed their check: damaged or forged frames, or a disk fault (member)",
            received_refused.clone(),
        );
        let duplicates = Counter::default();
        registry.register("duplicates", "Data frames received again (member)", duplicates.clone());
        let refused = Family::<ReasonLabel, Counter>::default();
        registry.register("refused", "Datagrams refused or ignored, by reason", refused.clone());
        MctpMetrics {
            registry,
            sessions,
            passes,
            frames_sent,
            frames_repaired,
            nacks,
            status_reports,
            report_requests,
            sent_bytes,
            goodput_bytes,
            last_goodput,
            received,
            frames_received,
            frames_rebuilt,
            received_refused,
            duplicates,
            refused,
        }
    }

    /// Adds what a core counted since `last` (its counters the previous time), then remembers `now`.
    pub(super) fn publish(&self, last: &mut Counters, now: &Counters) {
        let delta = |after: u64, before: u64| after.saturating_sub(before);
        self.sessions.inc_by(delta(now.sessions, last.sessions));
        self.passes.inc_by(delta(now.passes, last.passes));
        self.frames_sent.inc_by(delta(now.frames_sent, last.frames_sent));
        self.frames_repaired
            .inc_by(delta(now.frames_repaired, last.frames_repaired));
        self.nacks.inc_by(delta(now.nacks, last.nacks));
        self.status_reports
            .inc_by(delta(now.status_reports, last.status_reports));
        let unicast = delta(now.unicast_requests, last.unicast_requests);
        let multicast = delta(now.multicast_requests, last.multicast_requests);
        if unicast > 0 {
            self.report_requests.get_or_create(&how("unicast")).inc_by(unicast);
        }
        if multicast > 0 {
            self.report_requests.get_or_create(&how("multicast")).inc_by(multicast);
        }
        self.frames_received
            .inc_by(delta(now.frames_received, last.frames_received));
        self.duplicates.inc_by(delta(now.duplicates, last.duplicates));
        for (reason, count) in &now.refused {
            let added = delta(*count, last.refused(reason));
            if added > 0 {
                self.refuse(reason, added);
            }
        }
        *last = now.clone();
    }

    /// Counts `count` datagrams refused for `reason` (the driver's own refusals: injected loss).
    pub(super) fn refuse(&self, reason: &str, count: u64) {
        self.refused
            .get_or_create(&ReasonLabel {
                reason: reason.to_string(),
            })
            .inc_by(count);
    }
}

fn how(how: &str) -> HowLabel {
    HowLabel { how: how.to_string() }
}
