//! Replacing a master that is non-operational (seed 002, claims 31–50): a member that has heard nothing
//! from its master for the threshold (claims 32–34) sends `CRMSG_HOLDELECTION` for the next term to
//! every peer (claims 35–36), the master included. The master, alive after all, answers every member
//! (claim 37: the election is aborted); a member that heard it a moment ago says so, which aborts it too;
//! every other peer takes part and sends its candidacy to all. When the election's time is up, each
//! participant picks the best ranked candidate it heard ([`crate::rank`]); the winner takes the term with
//! a list without the silent master, whose portions are reallocated (claims 39–40), and sends
//! `CRMSG_REPLACEMASTER` to the registry (claim 38); the others wait for that list, pinging the winner,
//! and hold the next term's election if it does not come.

use std::collections::BTreeMap;
use std::time::Instant;

use tern_wire::community::{
    CommunityBody, CommunityMessage, Deny, DenyReason, ElectionAnswer, Epoch, HoldElection, Peer,
};
use tracing::{debug, info};

use super::{Community, RegistryClaim, Round};
use crate::event::{Event, Output, Role, TimerKind};
use crate::rank::{best, same_peer};

impl Community {
    /// Member: the master's silence threshold (claim 32).
    pub(super) fn on_silence_timer(&mut self, now: Instant, out: &mut Vec<Output>) {
        if self.role != Role::Member {
            return;
        }
        let silence = self.config.timers.master_silence;
        let due = self.last_heard_master + silence;
        if now < due {
            self.arm(TimerKind::MasterSilence, due, out);
            return;
        }
        // (A peer that stood still past the threshold has already started the silence afresh:
        // `Community::on_resumed`.)
        self.hold_election(now, out);
    }

    /// Sends `CRMSG_HOLDELECTION` for the next term to every listed peer.
    pub(super) fn hold_election(&mut self, now: Instant, out: &mut Vec<Output>) {
        let Some(view) = &self.view else {
            return self.discover(now, out);
        };
        let term = self.highest_term.max(view.epoch.term).saturating_add(1);
        let silent_master = match &self.round {
            Some(round) => round.silent_master.clone(),
            None => view.master.name.clone(),
        };
        let peers = view.others(&self.me.name);
        info!(peer = %self.me.name, master = %silent_master, term, "master silent: holding an election");
        let body = CommunityBody::HoldElection(HoldElection {
            master: silent_master.clone(),
            candidate: self.me.clone(),
        });
        self.open_round(term, silent_master, None, now, out);
        self.send_all(&peers, Epoch::first_of(term), &body, now, out);
    }

    /// Takes part in the election for `term` (after hearing `candidate`): sends this peer's candidacy to
    /// every listed peer.
    fn join_round(&mut self, term: u64, candidate: &Peer, now: Instant, out: &mut Vec<Output>) {
        let Some(view) = &self.view else {
            return;
        };
        let silent_master = view.master.name.clone();
        let peers = view.others(&self.me.name);
        let body = CommunityBody::ElectionAnswer(ElectionAnswer::Candidate(self.me.clone()));
        self.open_round(term, silent_master, Some(candidate.clone()), now, out);
        self.send_all(&peers, Epoch::first_of(term), &body, now, out);
    }

    fn open_round(
        &mut self,
        term: u64,
        silent_master: String,
        other: Option<Peer>,
        now: Instant,
        out: &mut Vec<Output>,
    ) {
        self.highest_term = self.highest_term.max(term);
        let mut candidates = BTreeMap::from([(self.me.name.clone(), self.me.clone())]);
        if let Some(other) = other {
            candidates.insert(other.name.clone(), other);
        }
        self.round = Some(Round {
            term,
            silent_master,
            candidates,
            awaiting: None,
        });
        self.counters.elections += 1;
        self.set_role(Role::Electing, out);
        self.set_master(None, out);
        out.push(Output::Event(Event::ElectionHeld { term }));
        self.disarm(TimerKind::Ping, out);
        self.arm(TimerKind::Election, now + self.config.timers.election, out);
    }

    /// A `CRMSG_HOLDELECTION` (`initial`) or a candidacy sent in answer to one.
    pub(super) fn on_candidacy(
        &mut self,
        message: &CommunityMessage,
        candidate: &Peer,
        initial: bool,
        now: Instant,
        out: &mut Vec<Output>,
    ) {
        let term = message.epoch.term;
        match self.role {
            Role::Master => self.answer_as_master(message, candidate, term, now, out),
            Role::Member => {
                let Some(view) = &self.view else {
                    return;
                };
                let heard_recently =
                    now.saturating_duration_since(self.last_heard_master) <= self.config.timers.vouch_window;
                let (master, epoch) = (view.master.clone(), view.epoch);
                if heard_recently {
                    let body = CommunityBody::ElectionAnswer(ElectionAnswer::MasterHeard(master));
                    self.send(candidate.address, epoch, body, now, out);
                } else if term <= epoch.term {
                    self.counters.refused.stale_epoch += 1;
                    let body = CommunityBody::Deny(Deny {
                        reason: DenyReason::StaleEpoch,
                        master: Some(master),
                    });
                    self.send(candidate.address, epoch, body, now, out);
                } else {
                    self.join_round(term, candidate, now, out);
                }
            }
            Role::Electing => {
                let Some(round) = self.round.as_mut() else {
                    return;
                };
                let round_term = round.term;
                if term > round_term {
                    return self.join_round(term, candidate, now, out);
                }
                if term == round_term {
                    round.candidates.insert(candidate.name.clone(), candidate.clone());
                    if !initial {
                        return;
                    }
                }
                // The candidate missed this peer's candidacy, or stands for an older term: tell it.
                let body = CommunityBody::ElectionAnswer(ElectionAnswer::Candidate(self.me.clone()));
                self.send(candidate.address, Epoch::first_of(round_term), body, now, out);
            }
            Role::Discovering | Role::Joining | Role::Leaving | Role::Left => {}
        }
    }

    /// The master hears an election about it: it is alive (claim 37). Every member hears so once per
    /// term, the candidate always; a candidate it does not list is told of it as a better master.
    fn answer_as_master(
        &mut self,
        message: &CommunityMessage,
        candidate: &Peer,
        term: u64,
        now: Instant,
        out: &mut Vec<Output>,
    ) {
        let Some(view) = &self.view else {
            return;
        };
        let epoch = view.epoch;
        if !view.lists(candidate) {
            let body = CommunityBody::Deny(Deny {
                reason: DenyReason::StaleEpoch,
                master: Some(self.me.clone()),
            });
            return self.send(message.address, epoch, body, now, out);
        }
        let alive = CommunityBody::ElectionAnswer(ElectionAnswer::MasterAlive);
        if self.alive_told_for == term {
            return self.send(candidate.address, epoch, alive, now, out);
        }
        self.alive_told_for = term;
        let members = view.others(&self.me.name);
        self.send_all(&members, epoch, &alive, now, out);
    }

    pub(super) fn on_election_answer(
        &mut self,
        message: &CommunityMessage,
        answer: &ElectionAnswer,
        now: Instant,
        out: &mut Vec<Output>,
    ) {
        match answer {
            ElectionAnswer::Candidate(candidate) => self.on_candidacy(message, candidate, false, now, out),
            ElectionAnswer::MasterAlive => self.on_master_alive(message, now, out),
            ElectionAnswer::MasterHeard(master) => {
                if self.role == Role::Electing || self.role == Role::Member {
                    self.learn_master(master, message.epoch, now, out);
                }
            }
        }
    }

    /// "Master alive" from a master: the election is aborted (claim 37) when it is this peer's master;
    /// another master is followed if its claim is better.
    fn on_master_alive(&mut self, message: &CommunityMessage, now: Instant, out: &mut Vec<Output>) {
        let Some(view) = &self.view else {
            return;
        };
        let from_my_master = view.master.name == message.sender && view.master.incarnation == message.incarnation;
        match self.role {
            Role::Member if from_my_master => self.last_heard_master = now,
            Role::Electing if from_my_master => {
                let view = view.clone();
                self.election_aborted(out);
                self.adopt(view, now, out);
            }
            Role::Electing | Role::Member => {
                let listed = view.list.peer(&message.sender).cloned();
                if let Some(master) = listed.filter(|peer| peer.incarnation == message.incarnation) {
                    self.learn_master(&master, message.epoch, now, out);
                }
            }
            _ => {}
        }
    }

    pub(super) fn election_aborted(&mut self, out: &mut Vec<Output>) {
        debug!(peer = %self.me.name, "the master answered: election aborted");
        self.round = None;
        self.counters.elections_aborted += 1;
        out.push(Output::Event(Event::ElectionAborted));
    }

    /// The candidacies are in: the best ranked takes over; or the winner's list is overdue: the next
    /// term's election.
    pub(super) fn on_election_timer(&mut self, now: Instant, out: &mut Vec<Output>) {
        if self.role != Role::Electing {
            return;
        }
        let Some(round) = &self.round else {
            return;
        };
        if round.awaiting.is_some() {
            return self.hold_election(now, out);
        }
        let Some(winner) = best(round.candidates.values()).cloned() else {
            return;
        };
        if same_peer(&winner, &self.me) {
            return self.win(now, out);
        }
        debug!(peer = %self.me.name, winner = %winner.name, term = round.term, "waiting for the winner's peer list");
        if let Some(round) = self.round.as_mut() {
            round.awaiting = Some(winner.clone());
        }
        self.ping(&winner, now, out);
        self.arm(TimerKind::Ping, now + self.config.timers.ping_interval, out);
        self.arm(TimerKind::Election, now + self.config.timers.election, out);
    }

    /// This peer won: the term's first list, of the candidates heard (the silent master's portions, and
    /// those of peers that died with it, reallocated), to every peer of the old list. A live peer whose
    /// candidacy was lost learns it is not listed when it pings the winner, and joins.
    fn win(&mut self, now: Instant, out: &mut Vec<Output>) {
        let (Some(round), Some(view)) = (self.round.take(), &self.view) else {
            return;
        };
        let others: Vec<Peer> = round
            .candidates
            .into_iter()
            .filter(|(name, _)| *name != self.me.name && *name != round.silent_master)
            .map(|(_, candidate)| candidate)
            .collect();
        let left_out: Vec<Peer> = view
            .list
            .peers
            .iter()
            .filter(|peer| peer.name != self.me.name && !others.iter().any(|other| other.name == peer.name))
            .cloned()
            .collect();
        self.counters.elections_won += 1;
        out.push(Output::Event(Event::ElectionWon { term: round.term }));
        self.take_mastership(round.term, others, RegistryClaim::Replace, now, out);
        // Peers of the old list left out (the silent master among them) hear of the new master too.
        if let Some(list) = self.view.as_ref().map(|view| view.list.clone()) {
            let body = CommunityBody::UpdatePeerList(list);
            self.send_all(&left_out, Epoch::first_of(round.term), &body, now, out);
        }
    }
}
