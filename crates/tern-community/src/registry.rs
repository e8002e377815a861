//! The registry: seed `002_82dbe7a209926976.txt`'s "cache server" (claims 51–53, 60–61) and
//! "administration module" (claims 95–100) as a sans-IO state machine. It keeps every community with its
//! master and epoch, answers community requests with the community list, records `CRMSG_ADDMASTER` (a new
//! community) and `CRMSG_REPLACEMASTER` (an elected master, claims 35 and 38), and refuses a stale master:
//! another master is recorded only with a higher term ([`admit`]), so no two masters are ever recorded at
//! one term. Its [`RegistryState`] is serialisable; the driver persists it whenever
//! [`RegistryReply::changed`] says so.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use serde::{Deserialize, Serialize};
use tern_wire::SecretKey;
use tern_wire::community::{
    self, CommunityBody, CommunityLimits, CommunityList, CommunityMessage, CommunityRecord, Epoch, Peer,
    RegistryAnswer, Verified,
};
use tern_wire::control::{ControlError, ReplayGuard};
use tracing::{info, warn};

use crate::clock::SplitMix64;
use crate::counters::Refusals;

/// The name the registry signs its answers with, unless configured otherwise.
pub const DEFAULT_NAME: &str = "registry";

/// What the registry keeps: every community by name.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegistryState {
    /// The communities.
    pub communities: BTreeMap<String, CommunityRecord>,
}

/// Settings of the registry.
#[derive(Debug, Clone)]
pub struct RegistryConfig {
    /// The name its answers carry.
    pub name: String,
    /// Its address, carried in its answers.
    pub address: SocketAddr,
    /// The cluster key.
    pub key: SecretKey,
    /// Bounds on the messages accepted (HTTP bodies: [`CommunityLimits::http`]).
    pub limits: CommunityLimits,
}

impl RegistryConfig {
    /// Settings with the default name and HTTP limits.
    pub fn new(address: SocketAddr, key: SecretKey) -> RegistryConfig {
        RegistryConfig {
            name: DEFAULT_NAME.to_string(),
            address,
            key,
            limits: CommunityLimits::http(),
        }
    }
}

/// How a master claim stands against the record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Admission {
    /// The community was unknown: recorded (claim 60's new community).
    New,
    /// The recorded master, same process run, at its term or later: the record is refreshed.
    Refresh,
    /// Another master with a higher term: it replaces the record (claim 38).
    Replace,
    /// An older term, or another master at the recorded term: refused.
    Stale,
}

impl Admission {
    /// Whether the claim is recorded.
    pub fn accepted(self) -> bool {
        self != Admission::Stale
    }
}

/// The registry's rule: a claim by `master` at `epoch` against the `record` it would change.
pub fn admit(record: Option<&CommunityRecord>, master: &Peer, epoch: Epoch) -> Admission {
    let Some(record) = record else {
        return Admission::New;
    };
    let same_run = record.master.name == master.name && record.master.incarnation == master.incarnation;
    if same_run && epoch.term >= record.epoch.term {
        return Admission::Refresh;
    }
    if epoch.term > record.epoch.term {
        return Admission::Replace;
    }
    Admission::Stale
}

/// What the driver must do with a request: persist the state if it changed, then answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistryReply {
    /// The answer to send back to the requester (encoded with the cluster key).
    pub answer: CommunityMessage,
    /// The state changed: persist it before answering.
    pub changed: bool,
}

/// What the registry counts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RegistryCounters {
    /// Requests refused before being read (bad tag, malformed, replayed, …).
    pub refused: Refusals,
    /// Communities recorded.
    pub added: u64,
    /// Masters replaced.
    pub replaced: u64,
    /// Refreshes of the recorded master.
    pub refreshed: u64,
    /// Stale master claims refused.
    pub stale: u64,
    /// Community lists answered.
    pub lists: u64,
    /// New communities refused because the registry is full.
    pub full: u64,
}

/// The registry's state machine.
#[derive(Debug)]
pub struct Registry {
    config: RegistryConfig,
    state: RegistryState,
    guard: ReplayGuard,
    incarnation: u64,
    seq: u64,
    counters: RegistryCounters,
    /// Community → when its recorded master's last claim was accepted (wall clock, milliseconds since the
    /// Unix epoch). Kept in memory only: after a restart a community shows no claim until its master's next
    /// periodic refresh, which is what an operator looking for a silent master wants to see.
    last_claim_ms: BTreeMap<String, u64>,
    /// When this run handled its first request (ms since the Unix epoch): a community not claimed since
    /// counts as last claimed then.
    started_ms: Option<u64>,
    /// When the last "registry full" warning was logged (ms since the Unix epoch): one a minute.
    last_full_warning_ms: Option<u64>,
}

/// A community whose master has not claimed it for this long (milliseconds) is forgotten when the
/// registry is full and a new community needs its place: a master refreshes its claim every few seconds,
/// so an hour of silence means the community is gone (or its name was a mistake).
pub const FORGET_SILENT_COMMUNITY_MS: u64 = 60 * 60 * 1000;

impl Registry {
    /// A registry with `state` (empty, or as persisted). `seed` gives its process run's random id.
    pub fn new(config: RegistryConfig, state: RegistryState, seed: u64) -> Registry {
        Registry {
            guard: ReplayGuard::new(config.limits.replay()),
            incarnation: SplitMix64(seed).next_u64(),
            config,
            state,
            seq: 0,
            counters: RegistryCounters::default(),
            last_claim_ms: BTreeMap::new(),
            started_ms: None,
            last_full_warning_ms: None,
        }
    }

    /// Forgets the community claimed least recently, if its last claim (or this run's start, for one not
    /// claimed since) is older than [`FORGET_SILENT_COMMUNITY_MS`]; returns its name.
    fn forget_silent_community(&mut self, now_ms: u64) -> Option<String> {
        let started = self.started_ms.unwrap_or(now_ms);
        let (name, last) = self
            .state
            .communities
            .keys()
            .map(|name| (name.clone(), self.last_claim_ms.get(name).copied().unwrap_or(started)))
            .min_by_key(|(_, last)| *last)?;
        if now_ms.saturating_sub(last) < FORGET_SILENT_COMMUNITY_MS {
            return None;
        }
        self.state.communities.remove(&name);
        self.last_claim_ms.remove(&name);
        Some(name)
    }

    /// The communities.
    pub fn state(&self) -> &RegistryState {
        &self.state
    }

    /// What it counted.
    pub fn counters(&self) -> &RegistryCounters {
        &self.counters
    }

    /// Community → when its recorded master last claimed it and was accepted (milliseconds since the Unix
    /// epoch), for the communities claimed since this registry started. A master refreshes its claim
    /// periodically, so an old value names a community whose master went silent.
    pub fn last_claims(&self) -> &BTreeMap<String, u64> {
        &self.last_claim_ms
    }

    /// Handles one request body as received; `now_ms` is the wall clock (milliseconds since the Unix
    /// epoch). A request that does not decode is refused, counted and answered with nothing.
    pub fn handle_bytes(&mut self, bytes: &[u8], now_ms: u64) -> Result<RegistryReply, ControlError> {
        match community::decode(&self.config.key, bytes, &self.config.limits) {
            Ok(verified) => self.handle(&verified, now_ms),
            Err(error) => {
                self.counters.refused.count(&error);
                Err(error)
            }
        }
    }

    /// Handles one authenticated request.
    pub fn handle(&mut self, verified: &Verified, now_ms: u64) -> Result<RegistryReply, ControlError> {
        self.started_ms.get_or_insert(now_ms);
        let message = verified.message();
        if let Err(error) = self.guard.check_stamp(&message.stamp(), now_ms) {
            self.counters.refused.count(&error);
            return Err(error);
        }
        match &message.body {
            CommunityBody::AddMaster(claim) | CommunityBody::ReplaceMaster(claim) => {
                Ok(self.on_claim(message, &claim.master, now_ms))
            }
            CommunityBody::CommunityListRequest(request) => {
                self.counters.lists += 1;
                let communities = self
                    .state
                    .communities
                    .values()
                    .filter(|record| request.only.as_ref().is_none_or(|only| *only == record.community))
                    .take(self.config.limits.max_communities)
                    .cloned()
                    .collect();
                let body = CommunityBody::CommunityList(CommunityList {
                    in_reply_to: message.seq,
                    communities,
                });
                Ok(RegistryReply {
                    answer: self.answer(message, Epoch::default(), body, now_ms),
                    changed: false,
                })
            }
            _ => {
                self.counters.refused.malformed += 1;
                Err(ControlError::Malformed(format!(
                    "{} is not a request to the registry",
                    message.body.name()
                )))
            }
        }
    }

    fn on_claim(&mut self, message: &CommunityMessage, master: &Peer, now_ms: u64) -> RegistryReply {
        let record = self.state.communities.get(&message.community);
        let mut admission = admit(record, master, message.epoch);
        let full = self.state.communities.len() >= self.config.limits.max_communities;
        let mut forgotten = None;
        if admission == Admission::New && full {
            forgotten = self.forget_silent_community(now_ms);
            if let Some(name) = &forgotten {
                info!(community = %name, "registry full: forgot the community silent the longest (over an hour)");
            }
        }
        let record = self.state.communities.get(&message.community);
        if admission == Admission::New && full && forgotten.is_none() {
            self.counters.full += 1;
            if self
                .last_full_warning_ms
                .is_none_or(|last| now_ms.saturating_sub(last) >= 60_000)
            {
                self.last_full_warning_ms = Some(now_ms);
                warn!(
                    community = %message.community,
                    master = %master.name,
                    limit = self.config.limits.max_communities,
                    "registry full: a new community is not recorded (its edges form communities of their own); every recorded one claimed within the hour (repeats counted as `full`)"
                );
            }
            admission = Admission::Stale;
        } else {
            match admission {
                Admission::New => self.counters.added += 1,
                Admission::Refresh => self.counters.refreshed += 1,
                Admission::Replace => self.counters.replaced += 1,
                Admission::Stale => self.counters.stale += 1,
            }
        }
        let mut changed = false;
        if admission.accepted() {
            let epoch = match (admission, record) {
                (Admission::Refresh, Some(record)) => record.epoch.max(message.epoch),
                _ => message.epoch,
            };
            changed = record.is_none_or(|record| record.epoch != epoch || record.master != *master);
            let updated = CommunityRecord {
                community: message.community.clone(),
                master: master.clone(),
                epoch,
            };
            self.state.communities.insert(message.community.clone(), updated);
            self.last_claim_ms.insert(message.community.clone(), now_ms);
        }
        let record = self.state.communities.get(&message.community).cloned();
        let epoch = record.as_ref().map(|record| record.epoch).unwrap_or_default();
        let body = CommunityBody::RegistryAnswer(RegistryAnswer {
            in_reply_to: message.seq,
            accepted: admission.accepted(),
            record,
        });
        RegistryReply {
            answer: self.answer(message, epoch, body, now_ms),
            changed,
        }
    }

    fn answer(
        &mut self,
        request: &CommunityMessage,
        epoch: Epoch,
        body: CommunityBody,
        now_ms: u64,
    ) -> CommunityMessage {
        self.seq += 1;
        CommunityMessage {
            community: request.community.clone(),
            sender: self.config.name.clone(),
            address: self.config.address,
            epoch,
            incarnation: self.incarnation,
            seq: self.seq,
            sent_at_ms: now_ms,
            body,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tern_wire::community::{CommunityListRequest, MasterClaim};

    const NOW_MS: u64 = 1_700_000_000_000;

    fn key() -> SecretKey {
        SecretKey::parse(&"4e".repeat(32)).expect("key")
    }

    fn peer(name: &str, incarnation: u64) -> Peer {
        Peer {
            name: name.into(),
            address: "10.0.0.1:7400".parse().expect("address"),
            http: "10.0.0.1:7401".parse().expect("address"),
            weight: 100,
            priority: 128,
            capacity: 0,
            started_at_ms: 0,
            incarnation,
        }
    }

    struct Sender {
        seq: u64,
    }

    impl Sender {
        fn claim(&mut self, community: &str, master: &Peer, term: u64, replace: bool) -> Vec<u8> {
            self.claim_at(community, master, term, replace, NOW_MS)
        }

        fn claim_at(&mut self, community: &str, master: &Peer, term: u64, replace: bool, sent_at_ms: u64) -> Vec<u8> {
            self.seq += 1;
            let claim = MasterClaim { master: master.clone() };
            let body = if replace {
                CommunityBody::ReplaceMaster(claim)
            } else {
                CommunityBody::AddMaster(claim)
            };
            let message = CommunityMessage {
                community: community.into(),
                sender: master.name.clone(),
                address: master.address,
                epoch: Epoch::first_of(term),
                incarnation: master.incarnation,
                seq: self.seq,
                sent_at_ms,
                body,
            };
            community::encode(&key(), &message)
        }
    }

    fn registry() -> Registry {
        let config = RegistryConfig::new("10.0.0.9:7300".parse().expect("address"), key());
        Registry::new(config, RegistryState::default(), 1)
    }

    fn answer(reply: &RegistryReply) -> RegistryAnswer {
        match &reply.answer.body {
            CommunityBody::RegistryAnswer(answer) => answer.clone(),
            other => panic!("not a registry answer: {other:?}"),
        }
    }

    #[test]
    fn addmaster_records_a_community_and_replacemaster_needs_a_higher_term() {
        let mut registry = registry();
        let (a, b, c) = (peer("a", 1), peer("b", 2), peer("c", 3));
        let (mut from_a, mut from_b, mut from_c) = (Sender { seq: 0 }, Sender { seq: 0 }, Sender { seq: 0 });

        let out = registry
            .handle_bytes(&from_a.claim("site", &a, 1, false), NOW_MS)
            .expect("valid");
        assert!(out.changed);
        assert!(answer(&out).accepted);

        // Another edge creating the same community at the same term is refused and told the master.
        let out = registry
            .handle_bytes(&from_b.claim("site", &b, 1, false), NOW_MS)
            .expect("valid");
        let refused = answer(&out);
        assert!(!refused.accepted);
        assert_eq!(refused.record.expect("record").master.name, "a");
        assert!(!out.changed);

        // An elected master at the next term replaces it; the deposed one's refresh is stale.
        assert!(
            answer(
                &registry
                    .handle_bytes(&from_b.claim("site", &b, 2, true), NOW_MS)
                    .expect("ok")
            )
            .accepted
        );
        let stale = answer(
            &registry
                .handle_bytes(&from_a.claim("site", &a, 1, false), NOW_MS)
                .expect("ok"),
        );
        assert!(!stale.accepted);
        assert_eq!(stale.record.as_ref().map(|r| r.master.name.as_str()), Some("b"));
        // A second master at term 2 is refused: never two masters at one term.
        assert!(
            !answer(
                &registry
                    .handle_bytes(&from_c.claim("site", &c, 2, true), NOW_MS)
                    .expect("ok")
            )
            .accepted
        );
        // The recorded master's refresh is accepted, and shows as its last claim; refused claims do not.
        assert_eq!(registry.last_claims().get("site"), Some(&NOW_MS));
        assert!(
            answer(
                &registry
                    .handle_bytes(&from_b.claim("site", &b, 2, false), NOW_MS + 2_000)
                    .expect("ok")
            )
            .accepted
        );
        assert_eq!(registry.last_claims().get("site"), Some(&(NOW_MS + 2_000)));
        let counters = *registry.counters();
        assert_eq!(
            (counters.added, counters.replaced, counters.refreshed, counters.stale),
            (1, 1, 1, 3)
        );
        assert!(
            !answer(
                &registry
                    .handle_bytes(&from_c.claim("site", &c, 1, false), NOW_MS + 3_000)
                    .expect("ok")
            )
            .accepted
        );
        assert_eq!(registry.last_claims().get("site"), Some(&(NOW_MS + 2_000)));
        // A restarted master (another process run) needs a higher term like anyone else.
        assert_eq!(
            admit(
                registry.state().communities.get("site"),
                &peer("b", 9),
                Epoch::first_of(2)
            ),
            Admission::Stale
        );
    }

    #[test]
    fn a_full_registry_forgets_the_community_silent_for_over_an_hour_to_take_a_new_one() {
        let mut config = RegistryConfig::new("10.0.0.9:7300".parse().expect("address"), key());
        config.limits.max_communities = 2;
        let mut registry = Registry::new(config, RegistryState::default(), 1);
        let (a, b, c) = (peer("a", 1), peer("b", 2), peer("c", 3));
        let (mut from_a, mut from_b, mut from_c) = (Sender { seq: 0 }, Sender { seq: 0 }, Sender { seq: 0 });
        for (sender, master, community) in [(&mut from_a, &a, "typo"), (&mut from_b, &b, "www")] {
            let out = registry
                .handle_bytes(&sender.claim_at(community, master, 1, false, NOW_MS), NOW_MS)
                .expect("valid");
            assert!(answer(&out).accepted);
        }
        // Ten minutes on, both were claimed recently enough: the new one is refused (and counted).
        let soon = NOW_MS + 10 * 60 * 1000;
        let out = registry
            .handle_bytes(&from_c.claim_at("shop", &c, 1, false, soon), soon)
            .expect("valid");
        assert!(!answer(&out).accepted);
        assert_eq!(registry.counters().full, 1);
        // www's master keeps claiming; "typo" was never claimed again.
        let later = NOW_MS + 61 * 60 * 1000;
        let refresh = from_b.claim_at("www", &b, 1, false, later - 1000);
        assert!(answer(&registry.handle_bytes(&refresh, later - 1000).expect("valid")).accepted);
        let out = registry
            .handle_bytes(&from_c.claim_at("shop", &c, 1, false, later), later)
            .expect("valid");
        assert!(answer(&out).accepted, "the silent community made room");
        let names: Vec<&String> = registry.state().communities.keys().collect();
        assert_eq!(names, ["shop", "www"]);
    }

    #[test]
    fn the_community_list_answers_and_the_state_survives_serialisation() {
        let mut registry = registry();
        let mut sender = Sender { seq: 0 };
        for (community, name) in [("site-1", "a"), ("site-2", "b")] {
            registry
                .handle_bytes(&sender.claim(community, &peer(name, 1), 1, false), NOW_MS)
                .expect("valid");
        }
        sender.seq += 1;
        let request = CommunityMessage {
            community: "site-2".into(),
            sender: "newcomer".into(),
            address: "10.0.0.5:7400".parse().expect("address"),
            epoch: Epoch::default(),
            incarnation: 5,
            seq: sender.seq,
            sent_at_ms: NOW_MS,
            body: CommunityBody::CommunityListRequest(CommunityListRequest {
                only: Some("site-2".into()),
            }),
        };
        let out = registry
            .handle_bytes(&community::encode(&key(), &request), NOW_MS)
            .expect("valid");
        let answer = &out.answer;
        assert!(!out.changed);
        let CommunityBody::CommunityList(list) = &answer.body else {
            panic!("a list: {answer:?}");
        };
        assert_eq!(list.in_reply_to, request.seq);
        assert_eq!(list.communities.len(), 1);
        assert_eq!(list.communities[0].master.name, "b");
        // The answer is itself a valid, tagged message.
        assert!(community::decode(&key(), &community::encode(&key(), answer), &CommunityLimits::http()).is_ok());

        let json = serde_json::to_string(registry.state()).expect("serialises");
        let restored: RegistryState = serde_json::from_str(&json).expect("deserialises");
        assert_eq!(&restored, registry.state());
    }

    #[test]
    fn forged_and_replayed_claims_change_nothing_and_are_counted() {
        let mut registry = registry();
        let mut sender = Sender { seq: 0 };
        let genuine = sender.claim("site", &peer("a", 1), 1, false);
        registry.handle_bytes(&genuine, NOW_MS).expect("valid");
        assert_eq!(
            registry.handle_bytes(&genuine, NOW_MS).expect_err("replay").reason(),
            "replayed"
        );
        let other = SecretKey::parse(&"99".repeat(32)).expect("key");
        let mut forged = sender.claim("site", &peer("m", 7), 50, true);
        let claim = community::decode(&key(), &forged, &CommunityLimits::http()).expect("valid");
        forged = community::encode(&other, claim.message());
        let before = registry.state().clone();
        assert_eq!(
            registry.handle_bytes(&forged, NOW_MS).expect_err("forged").reason(),
            "bad-tag"
        );
        assert_eq!(registry.state(), &before);
        assert_eq!(registry.counters().refused.bad_tag, 1);
        assert_eq!(registry.counters().refused.replayed, 1);
    }
}
