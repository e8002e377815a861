//! A member's side (seed 002, claims 1–10, 31–34, 59): following a master (its peer list, allow,
//! `CRMSG_PEERPING` and its answers), asking to join (`CRMSG_REQUESTTOJOIN`), and weighing what others
//! say of masters: a better claim is followed, an older one fenced.

use std::cmp::Ordering;
use std::time::Instant;

use tern_wire::community::{self, CommunityBody, CommunityMessage, Deny, DenyReason, Epoch, Peer, PeerList};
use tracing::{debug, warn};

use super::{Community, Joining, Phase, View};
use crate::event::{Event, Output, Role, TimerKind};
use crate::rank::{claim_cmp, same_peer};

impl Community {
    /// `CRMSG_UPDATEPEERLIST` or allow: adopt a newer list, join a better master, or fence an older one.
    pub(super) fn on_peer_list(
        &mut self,
        message: &CommunityMessage,
        list: &PeerList,
        now: Instant,
        out: &mut Vec<Output>,
    ) {
        let Some(view) = View::new(message.epoch, list.clone()) else {
            return;
        };
        if view.master.name == self.me.name {
            // A list of this peer's earlier process run, still in flight.
            return;
        }
        let listed = view.lists(&self.me);
        let theirs = (view.epoch.term, Some(&view.master));
        match self.role {
            Role::Left => {}
            Role::Master | Role::Leaving => {
                if claim_cmp(theirs, self.standing()) != Ordering::Greater {
                    self.counters.refused.stale_epoch += 1;
                    self.fence(message.address, now, out);
                    return;
                }
                if self.role == Role::Leaving {
                    // The nominee (or a better master) took over.
                    self.finish_leave(out);
                    return;
                }
                let (master, epoch) = (&view.master.name, view.epoch);
                debug!(peer = %self.me.name, %master, %epoch, "deposed by a better master");
                self.follow(view, listed, now, out);
            }
            Role::Member | Role::Electing | Role::Joining | Role::Discovering => {
                let current = self
                    .view
                    .as_ref()
                    .filter(|current| same_peer(&current.master, &view.master));
                if let Some(current) = current {
                    // The same master: only a newer version matters.
                    if view.epoch < current.epoch {
                        self.counters.refused.stale_epoch += 1;
                        return;
                    }
                    if view.epoch == current.epoch && self.role == Role::Member {
                        self.last_heard_master = now;
                        return;
                    }
                    if self.role == Role::Electing {
                        self.election_aborted(out);
                    }
                    self.follow(view, listed, now, out);
                    return;
                }
                let order = claim_cmp(theirs, self.standing());
                let joining_them = self
                    .joining
                    .as_ref()
                    .is_some_and(|joining| same_peer(&joining.target, &view.master));
                let newcomer = matches!(self.role, Role::Discovering | Role::Joining);
                if order == Ordering::Less && !(newcomer && listed) && !joining_them {
                    self.counters.refused.stale_epoch += 1;
                    self.fence(message.address, now, out);
                    return;
                }
                if listed {
                    self.adopt(view, now, out);
                } else if order == Ordering::Greater && !joining_them {
                    self.join(view.master.clone(), view.epoch, now, out);
                }
            }
        }
    }

    /// Becomes a member of `view`'s master if it lists this peer, else asks it to join.
    pub(super) fn follow(&mut self, view: View, listed: bool, now: Instant, out: &mut Vec<Output>) {
        if listed {
            self.adopt(view, now, out);
        } else {
            let (master, epoch) = (view.master.clone(), view.epoch);
            self.join(master, epoch, now, out);
        }
    }

    /// Becomes (or stays) a member with `view` in force.
    pub(super) fn adopt(&mut self, view: View, now: Instant, out: &mut Vec<Output>) {
        let changed = self
            .view
            .as_ref()
            .is_none_or(|current| current.epoch != view.epoch || !same_peer(&current.master, &view.master));
        let master = view.master.clone();
        let epoch = view.epoch;
        let own = &self.config.allocation;
        let table = &view.list.table;
        let differs = table.replicas != own.replicas || table.portioning != own.portioning;
        if differs && !self.table_differs_warned {
            // The master's table is the community's: this peer's own settings apply only while it leads.
            warn!(
                peer = %self.me.name,
                community = %self.config.community,
                master = %master.name,
                master_replicas = table.replicas,
                own_replicas = own.replicas,
                master_portioning = ?table.portioning,
                own_portioning = ?own.portioning,
                "the master divides content otherwise than this edge's settings (--replicas, host portions); the master's table applies: give every member the same settings"
            );
        }
        self.table_differs_warned = differs;
        if self.role == Role::Master || self.role == Role::Leaving {
            self.directory.clear();
            self.members_heard.clear();
        }
        self.view = Some(view);
        self.joining = None;
        self.contender = None;
        self.round = None;
        self.phase = Phase::Idle;
        self.failed_master = None;
        self.set_role(Role::Member, out);
        self.set_master(Some(master), out);
        self.last_heard_master = now;
        if changed {
            out.push(Output::Event(Event::PeerListChanged { epoch }));
        }
        if !self.timers.contains_key(&TimerKind::Ping) {
            self.arm(TimerKind::Ping, now + self.config.timers.ping_interval, out);
        }
        self.arm(TimerKind::MasterSilence, now + self.config.timers.master_silence, out);
    }

    /// A deny: a refused join, or a redirection to the master the sender knows.
    pub(super) fn on_deny(&mut self, message: &CommunityMessage, deny: &Deny, now: Instant, out: &mut Vec<Output>) {
        let hint = deny.master.as_ref().filter(|master| master.name != self.me.name);
        if self.role == Role::Joining {
            let Some(joining) = &self.joining else {
                return;
            };
            if joining.target.name != message.sender {
                if let Some(master) = hint {
                    self.learn_master(master, message.epoch, now, out);
                }
                return;
            }
            let target = joining.target.name.clone();
            match deny.reason {
                DenyReason::NotMaster | DenyReason::StaleEpoch | DenyReason::Leaving => match hint {
                    Some(master) if master.name != target => {
                        let master = master.clone();
                        self.join(master, message.epoch, now, out);
                    }
                    _ => {
                        self.failed_master = Some(target);
                        self.discover(now, out);
                    }
                },
                DenyReason::Full | DenyReason::NameClash | DenyReason::BadTag => {
                    self.counters.denied += 1;
                    out.push(Output::Event(Event::Denied(deny.reason)));
                    self.back_off(now, out);
                }
            }
            return;
        }
        let from_contender = self.role == Role::Master
            && self
                .contender
                .as_ref()
                .is_some_and(|contender| contender.target.name == message.sender);
        if from_contender {
            // The master the registry records is alive but does not lead.
            return match hint {
                Some(master) => {
                    let master = master.clone();
                    self.contender = None;
                    self.learn_master(&master, message.epoch, now, out);
                }
                None => self.take_over_record(None, now, out),
            };
        }
        let from_my_master = matches!(self.role, Role::Member | Role::Electing)
            && self
                .view
                .as_ref()
                .is_some_and(|view| view.master.name == message.sender);
        if from_my_master {
            match (deny.reason, hint) {
                (DenyReason::Leaving, Some(nominee)) => {
                    let nominee = nominee.clone();
                    self.await_nominee(nominee, now, out);
                }
                (_, Some(master)) => {
                    let master = master.clone();
                    self.join(master, message.epoch, now, out);
                }
                // The master no longer leads and knows nobody who does.
                (_, None) if self.role == Role::Member => self.hold_election(now, out),
                (_, None) => {}
            }
            return;
        }
        if let Some(master) = hint {
            self.learn_master(master, message.epoch, now, out);
        }
    }

    /// The master's answer to this member's ping.
    pub(super) fn on_ping_answer(
        &mut self,
        message: &CommunityMessage,
        listed: bool,
        now: Instant,
        out: &mut Vec<Output>,
    ) {
        let Some(view) = &self.view else {
            return;
        };
        let from_master = view.master.name == message.sender && view.master.incarnation == message.incarnation;
        match self.role {
            Role::Member if from_master => {
                self.last_heard_master = now;
                if !listed {
                    let (master, epoch) = (view.master.clone(), view.epoch);
                    self.join(master, epoch, now, out);
                }
            }
            Role::Electing if from_master => {
                // The first master answered after all (claim 37).
                let view = view.clone();
                self.election_aborted(out);
                self.follow(view, listed, now, out);
            }
            Role::Electing => {
                let Some(round) = &self.round else {
                    return;
                };
                let Some(winner) = round.awaiting.as_ref().filter(|winner| winner.name == message.sender) else {
                    return;
                };
                if message.epoch.term >= round.term && !listed {
                    let winner = winner.clone();
                    self.join(winner, message.epoch, now, out);
                }
            }
            _ => {}
        }
    }

    pub(super) fn on_ping_timer(&mut self, now: Instant, out: &mut Vec<Output>) {
        let target = match self.role {
            Role::Member => self.view.as_ref().map(|view| view.master.clone()),
            Role::Electing => self.round.as_ref().and_then(|round| round.awaiting.clone()),
            _ => None,
        };
        let Some(target) = target else {
            return;
        };
        self.ping(&target, now, out);
        self.arm(TimerKind::Ping, now + self.config.timers.ping_interval, out);
    }

    /// Sends `CRMSG_PEERPING` to `master`.
    pub(super) fn ping(&mut self, master: &Peer, now: Instant, out: &mut Vec<Output>) {
        let body = CommunityBody::PeerPing(community::PeerPing {
            master: master.name.clone(),
        });
        let epoch = self.current_epoch();
        self.send(master.address, epoch, body, now, out);
    }

    /// The claim this peer stands by: its own as master, its master's as member (or electing: the
    /// election replaces it), its target's while joining, none while discovering.
    pub(super) fn standing(&self) -> (u64, Option<&Peer>) {
        match self.role {
            Role::Master | Role::Leaving => (self.current_epoch().term, Some(&self.me)),
            Role::Member | Role::Electing => self
                .view
                .as_ref()
                .map_or((0, None), |view| (view.epoch.term, Some(&view.master))),
            Role::Joining => self
                .joining
                .as_ref()
                .map_or((0, None), |joining| (joining.epoch.term, Some(&joining.target))),
            Role::Discovering | Role::Left => (0, None),
        }
    }

    /// The master this peer would send others to, with its epoch.
    pub(super) fn known_master(&self) -> Option<(Peer, Epoch)> {
        match self.role {
            Role::Master => Some((self.me.clone(), self.current_epoch())),
            Role::Leaving => self
                .leaving
                .as_ref()
                .map(|leaving| (leaving.nominee.clone(), self.current_epoch())),
            Role::Member => self.view.as_ref().map(|view| (view.master.clone(), view.epoch)),
            Role::Joining => self
                .joining
                .as_ref()
                .map(|joining| (joining.target.clone(), joining.epoch)),
            Role::Electing | Role::Discovering | Role::Left => None,
        }
    }

    /// Someone named `master` at `epoch`: follow it if its claim beats this peer's standing.
    pub(super) fn learn_master(&mut self, master: &Peer, epoch: Epoch, now: Instant, out: &mut Vec<Output>) {
        if master.name == self.me.name {
            return;
        }
        if let Some(view) = &self.view
            && matches!(self.role, Role::Member | Role::Electing)
            && same_peer(&view.master, master)
        {
            if self.role == Role::Electing {
                // Someone heard the master this peer found silent.
                let view = view.clone();
                self.election_aborted(out);
                self.adopt(view, now, out);
            }
            return;
        }
        if claim_cmp((epoch.term, Some(master)), self.standing()) == Ordering::Greater {
            self.join(master.clone(), epoch, now, out);
        }
    }

    /// Asks `target` to join (claim 59); a master steps down first.
    pub(super) fn join(&mut self, target: Peer, epoch: Epoch, now: Instant, out: &mut Vec<Output>) {
        if matches!(self.role, Role::Master | Role::Leaving) {
            self.directory.clear();
            self.members_heard.clear();
        }
        self.round = None;
        self.leaving = None;
        self.contender = None;
        self.phase = Phase::Idle;
        self.joining = Some(Joining {
            target: target.clone(),
            epoch,
            attempts: 0,
        });
        self.set_role(Role::Joining, out);
        self.set_master(None, out);
        self.send_join_request(&target, now, out);
        self.arm(TimerKind::JoinRetry, now + self.config.timers.join_retry, out);
    }

    pub(super) fn send_join_request(&mut self, target: &Peer, now: Instant, out: &mut Vec<Output>) {
        let body = CommunityBody::RequestToJoin(community::RequestToJoin { peer: self.me.clone() });
        let epoch = self.current_epoch();
        self.send(target.address, epoch, body, now, out);
    }

    pub(super) fn on_join_retry(&mut self, now: Instant, out: &mut Vec<Output>) {
        if self.role == Role::Master {
            return self.on_contender_retry(now, out);
        }
        let Some(joining) = self.joining.as_mut() else {
            return;
        };
        joining.attempts += 1;
        if joining.attempts >= self.config.timers.join_attempts {
            self.failed_master = Some(joining.target.name.clone());
            self.discover(now, out);
            return;
        }
        let target = joining.target.clone();
        self.send_join_request(&target, now, out);
        self.arm(TimerKind::JoinRetry, now + self.config.timers.join_retry, out);
    }
}
