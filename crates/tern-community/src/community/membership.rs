//! The master's side of membership (seed 002, claims 1–30 and 31–34): taking mastership, admitting
//! newcomers (`CRMSG_REQUESTTOJOIN` → allow or deny), answering `CRMSG_PEERPING`, dropping silent members,
//! sending every new peer list and allocation table with the next epoch (`CRMSG_UPDATEPEERLIST`), telling
//! the registry (`CRMSG_ADDMASTER`, `CRMSG_REPLACEMASTER`), and leaving on purpose
//! (`CRMSG_NOMINATEMASTER`); with the members' side of a leave and a nomination.

use std::cmp::Ordering;
use std::time::Instant;

use tern_wire::community::{
    CommunityBody, CommunityMessage, CommunityRecord, Deny, DenyReason, Epoch, MasterClaim, NominateMaster, Peer,
    PeerPingAnswer, RegistryAnswer, Wakeup,
};
use tracing::{debug, info, warn};

use super::{Community, Joining, Leaving, Phase, RegistryClaim, Round};
use crate::event::{Event, Output, Role, TimerKind};
use crate::rank::{best, claim_cmp, same_peer};

impl Community {
    /// Becomes master for `term` over `others` (and itself): the first list of the term goes to every
    /// other peer, and the claim to the registry.
    pub(super) fn take_mastership(
        &mut self,
        term: u64,
        others: Vec<Peer>,
        claim: RegistryClaim,
        now: Instant,
        out: &mut Vec<Output>,
    ) {
        self.highest_term = self.highest_term.max(term);
        let view = self.master_view(Epoch::first_of(term), others);
        let epoch = view.epoch;
        let others = view.others(&self.me.name);
        self.directory.clear();
        self.members_heard = others.iter().map(|peer| (peer.name.clone(), now)).collect();
        self.round = None;
        self.joining = None;
        self.contender = None;
        self.leaving = None;
        self.phase = Phase::Idle;
        self.failed_master = None;
        let list = view.list.clone();
        self.view = Some(view);
        self.set_role(Role::Master, out);
        let me = self.me.clone();
        self.set_master(Some(me), out);
        info!(peer = %self.me.name, community = %self.config.community, %epoch, "this peer is master");
        out.push(Output::Event(Event::PeerListChanged { epoch }));
        self.send_all(&others, epoch, &CommunityBody::UpdatePeerList(list), now, out);
        self.registry_claim = claim;
        self.registry_acknowledged = false;
        self.arm(TimerKind::Sweep, now + self.config.timers.ping_interval, out);
        // At once: the registry records the new master, and peers still joining the old one hear of it.
        self.announce(now, out);
    }

    /// The next epoch's list over `peers`: allow to `allowed` (a newcomer), `CRMSG_UPDATEPEERLIST` to
    /// every other member.
    fn publish(&mut self, peers: Vec<Peer>, allowed: Option<&str>, now: Instant, out: &mut Vec<Output>) {
        let epoch = self.current_epoch().next();
        let view = self.master_view(epoch, peers);
        let list = view.list.clone();
        let others = view.others(&self.me.name);
        self.view = Some(view);
        out.push(Output::Event(Event::PeerListChanged { epoch }));
        for peer in &others {
            let body = if allowed == Some(peer.name.as_str()) {
                CommunityBody::Allow(list.clone())
            } else {
                CommunityBody::UpdatePeerList(list.clone())
            };
            self.send(peer.address, epoch, body, now, out);
        }
    }

    /// `CRMSG_REQUESTTOJOIN` (claims 2–7): allow with the new list, or deny with a reason.
    pub(super) fn on_request_to_join(
        &mut self,
        message: &CommunityMessage,
        newcomer: &Peer,
        now: Instant,
        out: &mut Vec<Output>,
    ) {
        match self.role {
            Role::Master => {}
            Role::Leaving => return self.deny(message, DenyReason::Leaving, now, out),
            _ => return self.deny(message, DenyReason::NotMaster, now, out),
        }
        let Some(view) = &self.view else {
            return;
        };
        let existing = view.list.peer(&newcomer.name).cloned();
        let mut peers = view.others(&newcomer.name);
        match existing {
            Some(existing) if existing.incarnation == newcomer.incarnation => {
                self.members_heard.insert(newcomer.name.clone(), now);
                self.counters.joins_allowed += 1;
                if existing == *newcomer {
                    // A retry whose allow was lost: the same list again.
                    let list = view.list.clone();
                    let epoch = view.epoch;
                    self.send(message.address, epoch, CommunityBody::Allow(list), now, out);
                    return;
                }
            }
            Some(existing) => {
                let heard = self.members_heard.get(&existing.name).copied();
                let silent =
                    heard.is_none_or(|at| now.saturating_duration_since(at) > self.config.timers.member_silence);
                let restarted = existing.address == newcomer.address;
                if newcomer.name == self.me.name || !(restarted || silent) {
                    return self.deny(message, DenyReason::NameClash, now, out);
                }
                // The same peer restarted: its old run holds nothing any more.
                self.directory.forget_holder(&existing.name);
                self.counters.joins_allowed += 1;
            }
            None => {
                if newcomer.name == self.me.name {
                    return self.deny(message, DenyReason::NameClash, now, out);
                }
                if view.list.peers.len() >= self.config.max_peers {
                    return self.deny(message, DenyReason::Full, now, out);
                }
                self.counters.joins_allowed += 1;
            }
        }
        self.members_heard.insert(newcomer.name.clone(), now);
        peers.push(newcomer.clone());
        self.publish(peers, Some(&newcomer.name), now, out);
        info!(
            master = %self.me.name,
            community = %self.config.community,
            newcomer = %newcomer.name,
            address = %newcomer.address,
            epoch = %self.current_epoch(),
            peers = self.peer_count(),
            "join allowed"
        );
    }

    /// The number of peers listed, the master among them.
    fn peer_count(&self) -> usize {
        self.view.as_ref().map_or(0, |view| view.list.peers.len())
    }

    /// Denies `message`'s request, naming the master this peer knows.
    pub(super) fn deny(&mut self, message: &CommunityMessage, reason: DenyReason, now: Instant, out: &mut Vec<Output>) {
        if matches!(reason, DenyReason::Full | DenyReason::NameClash | DenyReason::BadTag) {
            self.counters.joins_denied += 1;
            info!(
                master = %self.me.name,
                community = %self.config.community,
                newcomer = %message.sender,
                address = %message.address,
                reason = reason.as_str(),
                "join denied"
            );
        }
        let known = self.known_master();
        let epoch = known.as_ref().map_or(self.current_epoch(), |(_, epoch)| *epoch);
        let body = CommunityBody::Deny(Deny {
            reason,
            master: known
                .map(|(master, _)| master)
                .filter(|master| master.name != message.sender),
        });
        self.send(message.address, epoch, body, now, out);
    }

    /// `CRMSG_PEERPING` (claims 32–33): the master notes the member alive and answers; a member whose
    /// copy of the list is older gets the list too. A peer that is not master redirects.
    pub(super) fn on_ping(&mut self, message: &CommunityMessage, now: Instant, out: &mut Vec<Output>) {
        match self.role {
            Role::Master => {}
            Role::Leaving => return self.deny(message, DenyReason::Leaving, now, out),
            _ => return self.deny(message, DenyReason::NotMaster, now, out),
        }
        let Some(view) = &self.view else {
            return;
        };
        let listed = view
            .list
            .peer(&message.sender)
            .is_some_and(|peer| peer.incarnation == message.incarnation);
        let (epoch, list) = (view.epoch, view.list.clone());
        if listed {
            self.members_heard.insert(message.sender.clone(), now);
        }
        let answer = CommunityBody::PeerPingAnswer(PeerPingAnswer {
            in_reply_to: message.seq,
            listed,
        });
        self.send(message.address, epoch, answer, now, out);
        if listed && message.epoch != epoch {
            self.send(message.address, epoch, CommunityBody::UpdatePeerList(list), now, out);
        }
    }

    /// A member leaves on purpose (claim 15): its portion is reallocated at once.
    pub(super) fn on_leave(&mut self, message: &CommunityMessage, now: Instant, out: &mut Vec<Output>) {
        if self.role != Role::Master {
            return;
        }
        let Some(view) = &self.view else {
            return;
        };
        let listed = view
            .list
            .peer(&message.sender)
            .is_some_and(|peer| peer.incarnation == message.incarnation);
        if !listed {
            return;
        }
        let peers = view.others(&message.sender);
        self.members_heard.remove(&message.sender);
        self.directory.forget_holder(&message.sender);
        self.publish(peers, None, now, out);
        info!(
            master = %self.me.name,
            community = %self.config.community,
            member = %message.sender,
            epoch = %self.current_epoch(),
            peers = self.peer_count(),
            "member left"
        );
    }

    /// Drops members silent past [`Timers::member_silence`](crate::Timers::member_silence): one new
    /// list for all of them.
    pub(super) fn sweep(&mut self, now: Instant, out: &mut Vec<Output>) {
        if self.role != Role::Master {
            return;
        }
        let Some(view) = &self.view else {
            return;
        };
        let threshold = self.config.timers.member_silence;
        let silent: Vec<String> = view
            .others(&self.me.name)
            .into_iter()
            .map(|peer| peer.name)
            .filter(|name| {
                self.members_heard
                    .get(name)
                    .is_none_or(|at| now.saturating_duration_since(*at) > threshold)
            })
            .collect();
        if !silent.is_empty() {
            let peers: Vec<Peer> = view
                .list
                .peers
                .iter()
                .filter(|peer| !silent.contains(&peer.name))
                .cloned()
                .collect();
            for name in &silent {
                self.members_heard.remove(name);
                self.directory.forget_holder(name);
            }
            self.counters.members_dropped += silent.len() as u64;
            self.publish(peers, None, now, out);
            for name in &silent {
                info!(
                    master = %self.me.name,
                    community = %self.config.community,
                    member = %name,
                    why = %format_args!("no ping for more than {:?}", threshold),
                    epoch = %self.current_epoch(),
                    peers = self.peer_count(),
                    "member dropped"
                );
            }
        }
        self.arm(TimerKind::Sweep, now + self.config.timers.ping_interval, out);
    }

    /// The master's periodic refresh: its claim to the registry (whose answer names the recorded master)
    /// and its `CRMSG_WAKEUP` on the discovery group (which another master of the community answers).
    pub(super) fn announce(&mut self, now: Instant, out: &mut Vec<Output>) {
        if self.role != Role::Master {
            return;
        }
        self.claim_to_registry(now, out);
        if self.config.discovery {
            let body = CommunityBody::Wakeup(Wakeup {
                master: Some(self.me.clone()),
            });
            let message = self.message(self.current_epoch(), body, now);
            self.counters.sent += 1;
            out.push(Output::Multicast { message });
        }
        self.arm(TimerKind::Announce, now + self.config.timers.announce_interval, out);
    }

    fn claim_to_registry(&mut self, now: Instant, out: &mut Vec<Output>) {
        if !self.config.registry {
            return;
        }
        let claim = MasterClaim {
            master: self.me.clone(),
        };
        let body = match self.registry_claim {
            RegistryClaim::Add => CommunityBody::AddMaster(claim),
            RegistryClaim::Replace => CommunityBody::ReplaceMaster(claim),
        };
        let epoch = self.current_epoch();
        self.send_to_registry(epoch, body, now, out);
    }

    /// The registry's answer to a master claim: recorded, or refused with the record. A better recorded
    /// master is joined; a worse one at this peer's term means the registry saw it first, so this master
    /// takes the next term, which the registry will record.
    pub(super) fn on_registry_answer(&mut self, answer: &RegistryAnswer, now: Instant, out: &mut Vec<Output>) {
        if self.role != Role::Master {
            return;
        }
        if answer.accepted {
            self.registry_acknowledged = true;
            return;
        }
        let Some(record) = &answer.record else {
            // Refused with no record of the community: the registry is full (it says so in its log and
            // counts it as `full`). Edges started later for this community will not find this one.
            if !self.registry_full_warned {
                self.registry_full_warned = true;
                warn!(peer = %self.me.name, community = %self.config.community, "the registry refused to record this community (it is full): edges started later will not find it through the registry; see the registry's log");
            }
            return;
        };
        self.highest_term = self.highest_term.max(record.epoch.term);
        if same_peer(&record.master, &self.me) {
            return;
        }
        let theirs = (record.epoch.term, Some(&record.master));
        let record_is_better =
            record.master.name != self.me.name && claim_cmp(theirs, self.standing()) == Ordering::Greater;
        if record_is_better {
            let CommunityRecord { master, epoch, .. } = record.clone();
            let asked = self
                .contender
                .as_ref()
                .is_some_and(|contender| same_peer(&contender.target, &master));
            if asked {
                return;
            }
            // Step down only once that master admits this peer: the record may name a dead master.
            debug!(peer = %self.me.name, master = %master.name, %epoch, "the registry records a better master");
            self.send_join_request(&master, now, out);
            self.contender = Some(Joining {
                target: master,
                epoch,
                attempts: 0,
            });
            self.arm(TimerKind::JoinRetry, now + self.config.timers.join_retry, out);
            return;
        }
        debug!(peer = %self.me.name, term = record.epoch.term, "the registry recorded a weaker master at this term");
        let weaker = (record.master.name != self.me.name).then(|| record.master.clone());
        self.take_over_record(weaker, now, out);
    }

    /// Asks the recorded master again, or, when it does not answer, takes a term above the record's.
    pub(super) fn on_contender_retry(&mut self, now: Instant, out: &mut Vec<Output>) {
        let Some(contender) = self.contender.as_mut() else {
            return;
        };
        contender.attempts += 1;
        if contender.attempts >= self.config.timers.join_attempts {
            debug!(peer = %self.me.name, master = %contender.target.name, "the recorded master does not answer");
            return self.take_over_record(None, now, out);
        }
        let target = contender.target.clone();
        self.send_join_request(&target, now, out);
        self.arm(TimerKind::JoinRetry, now + self.config.timers.join_retry, out);
    }

    /// Stays master with the next term above any seen, which the registry will record; the `weaker`
    /// master it recorded is told at once, so that it steps down without waiting for its next refresh.
    pub(super) fn take_over_record(&mut self, weaker: Option<Peer>, now: Instant, out: &mut Vec<Output>) {
        self.contender = None;
        let term = self.highest_term.max(self.current_epoch().term).saturating_add(1);
        let others = self
            .view
            .as_ref()
            .map(|view| view.others(&self.me.name))
            .unwrap_or_default();
        self.take_mastership(term, others, RegistryClaim::Replace, now, out);
        if let Some(weaker) = weaker {
            self.fence(weaker.address, now, out);
        }
    }

    /// Leaves on purpose: a master nominates the best ranked member and waits for it to take over; a
    /// member tells its master.
    pub(super) fn leave(&mut self, now: Instant, out: &mut Vec<Output>) {
        match self.role {
            Role::Master => {
                let Some(view) = &self.view else {
                    return self.finish_leave(out);
                };
                let others = view.others(&self.me.name);
                let Some(nominee) = best(&others).cloned() else {
                    return self.finish_leave(out);
                };
                info!(peer = %self.me.name, nominee = %nominee.name, "master leaving: nominating its successor");
                self.leaving = Some(Leaving {
                    nominee: nominee.clone(),
                    until: now + self.config.timers.leave_timeout,
                });
                self.set_role(Role::Leaving, out);
                self.nominate(&others, &nominee, now, out);
                self.arm(TimerKind::Leave, now + self.config.timers.ping_interval, out);
            }
            Role::Member | Role::Electing => {
                if let Some(view) = &self.view {
                    let (address, epoch) = (view.master.address, view.epoch);
                    self.send(address, epoch, CommunityBody::Leave, now, out);
                }
                self.finish_leave(out);
            }
            Role::Discovering | Role::Joining => self.finish_leave(out),
            Role::Leaving | Role::Left => {}
        }
    }

    fn nominate(&mut self, others: &[Peer], nominee: &Peer, now: Instant, out: &mut Vec<Output>) {
        let body = CommunityBody::NominateMaster(NominateMaster {
            nominee: nominee.name.clone(),
        });
        let epoch = self.current_epoch();
        self.send_all(others, epoch, &body, now, out);
    }

    /// Leaving: repeat the nomination until the nominee's list arrives, or go.
    pub(super) fn on_leave_timer(&mut self, now: Instant, out: &mut Vec<Output>) {
        let Some(leaving) = &self.leaving else {
            return;
        };
        if now >= leaving.until {
            return self.finish_leave(out);
        }
        let nominee = leaving.nominee.clone();
        let until = leaving.until;
        let others = self
            .view
            .as_ref()
            .map(|view| view.others(&self.me.name))
            .unwrap_or_default();
        self.nominate(&others, &nominee, now, out);
        self.arm(
            TimerKind::Leave,
            (now + self.config.timers.ping_interval).min(until),
            out,
        );
    }

    pub(super) fn finish_leave(&mut self, out: &mut Vec<Output>) {
        self.leaving = None;
        self.round = None;
        self.joining = None;
        self.set_role(Role::Left, out);
        self.set_master(None, out);
        out.push(Output::Event(Event::Left));
    }

    /// `CRMSG_NOMINATEMASTER` from this peer's master: the nominee takes the next term over the list
    /// without the leaver; the others wait for its list.
    pub(super) fn on_nominate(
        &mut self,
        message: &CommunityMessage,
        nominee: &str,
        now: Instant,
        out: &mut Vec<Output>,
    ) {
        if !matches!(self.role, Role::Member | Role::Electing) {
            return;
        }
        let Some(view) = &self.view else {
            return;
        };
        let from_master = view.master.name == message.sender && view.master.incarnation == message.incarnation;
        if !from_master {
            return;
        }
        if nominee == self.me.name {
            let term = self.highest_term.max(view.epoch.term).saturating_add(1);
            let others: Vec<Peer> = view
                .list
                .peers
                .iter()
                .filter(|peer| peer.name != message.sender && peer.name != self.me.name)
                .cloned()
                .collect();
            self.counters.elections_won += 1;
            out.push(Output::Event(Event::ElectionWon { term }));
            self.take_mastership(term, others, RegistryClaim::Replace, now, out);
            // The leaver learns from the first list that its successor took over.
            if let Some(list) = self.view.as_ref().map(|view| view.list.clone()) {
                let epoch = Epoch::first_of(term);
                self.send(message.address, epoch, CommunityBody::UpdatePeerList(list), now, out);
            }
            return;
        }
        if let Some(nominee) = view.list.peer(nominee).cloned() {
            self.await_nominee(nominee, now, out);
        }
    }

    /// Waits for `nominee`'s list as for an election's winner, pinging it meanwhile.
    pub(super) fn await_nominee(&mut self, nominee: Peer, now: Instant, out: &mut Vec<Output>) {
        let Some(view) = &self.view else {
            return;
        };
        if self
            .round
            .as_ref()
            .and_then(|round| round.awaiting.as_ref())
            .is_some_and(|winner| winner.name == nominee.name)
        {
            return;
        }
        self.round = Some(Round {
            term: view.epoch.term.saturating_add(1),
            silent_master: view.master.name.clone(),
            candidates: Default::default(),
            awaiting: Some(nominee.clone()),
        });
        self.set_role(Role::Electing, out);
        self.set_master(None, out);
        self.ping(&nominee, now, out);
        self.arm(TimerKind::Ping, now + self.config.timers.ping_interval, out);
        self.arm(TimerKind::Election, now + self.config.timers.election * 2, out);
    }
}
