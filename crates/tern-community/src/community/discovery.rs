//! Finding the community (seed 002, claims 51–74 and 95–100): ask the registry for the community list
//! and wait a threshold (claims 51–53); without a registry, or when it is silent, multicast a
//! `CRMSG_WAKEUP` probe and wait a threshold for masters' answers (claims 54–58); join the community found
//! (claim 59), or generate a new one with `CRMSG_ADDMASTER` and listen for joins (claims 60–62). A master
//! answers probes, and its own periodic `CRMSG_WAKEUP` lets two masters of one community meet.

use std::cmp::Ordering;
use std::time::Instant;

use tern_wire::community::{
    CommunityBody, CommunityList, CommunityListRequest, CommunityMessage, Epoch, Peer, Wakeup, WakeupAnswer,
};

use super::{Community, Phase, RegistryClaim};
use crate::event::{Event, Output, Role, TimerKind};
use crate::rank::claim_cmp;

impl Community {
    /// Starts (or restarts) looking for the community.
    pub(super) fn discover(&mut self, now: Instant, out: &mut Vec<Output>) {
        self.joining = None;
        self.round = None;
        self.leaving = None;
        self.set_role(Role::Discovering, out);
        self.set_master(None, out);
        if self.config.registry {
            self.phase = Phase::Registry;
            let body = CommunityBody::CommunityListRequest(CommunityListRequest {
                only: Some(self.config.community.clone()),
            });
            self.send_to_registry(Epoch::default(), body, now, out);
            self.arm(TimerKind::Discovery, now + self.config.timers.registry_timeout, out);
        } else if self.config.discovery {
            self.probe(now, out);
        } else {
            self.create(now, out);
        }
    }

    /// Multicasts `CRMSG_WAKEUP` and waits for answers (claims 54–58).
    fn probe(&mut self, now: Instant, out: &mut Vec<Output>) {
        self.phase = Phase::Probe;
        self.answers.clear();
        let message = self.message(Epoch::default(), CommunityBody::Wakeup(Wakeup::default()), now);
        self.counters.sent += 1;
        out.push(Output::Multicast { message });
        self.arm(TimerKind::Discovery, now + self.config.timers.probe_timeout, out);
    }

    /// A denied newcomer waits [`Timers::denied_backoff`](crate::Timers::denied_backoff), then looks
    /// again.
    pub(super) fn back_off(&mut self, now: Instant, out: &mut Vec<Output>) {
        self.joining = None;
        self.set_role(Role::Discovering, out);
        self.set_master(None, out);
        self.phase = Phase::Backoff;
        self.arm(TimerKind::Discovery, now + self.config.timers.denied_backoff, out);
    }

    pub(super) fn on_discovery_timer(&mut self, now: Instant, out: &mut Vec<Output>) {
        if self.role != Role::Discovering {
            return;
        }
        match self.phase {
            // The registry did not answer within the threshold (claim 53).
            Phase::Registry if self.config.discovery => self.probe(now, out),
            Phase::Registry => self.create(now, out),
            Phase::Probe => {
                let failed = self.failed_master.take();
                let best = self
                    .answers
                    .iter()
                    .filter(|(master, _)| failed.as_ref() != Some(&master.name))
                    .max_by(|a, b| claim_cmp((a.1.term, Some(&a.0)), (b.1.term, Some(&b.0))))
                    .cloned();
                match best {
                    Some((master, epoch)) => self.join(master, epoch, now, out),
                    None => self.create(now, out),
                }
            }
            Phase::Backoff => self.discover(now, out),
            Phase::Idle => {}
        }
    }

    /// The registry's community list (claims 51, 95): join the community's master, or create it.
    pub(super) fn on_community_list(&mut self, list: &CommunityList, now: Instant, out: &mut Vec<Output>) {
        if self.role != Role::Discovering || self.phase != Phase::Registry {
            return;
        }
        let record = list
            .communities
            .iter()
            .find(|record| record.community == self.config.community)
            .cloned();
        let Some(record) = record else {
            return self.create(now, out);
        };
        self.highest_term = self.highest_term.max(record.epoch.term);
        let recorded_master_failed = self.failed_master.as_ref() == Some(&record.master.name);
        if record.master.name == self.me.name || recorded_master_failed {
            // This peer's earlier run was master, or the recorded master does not answer: look on the
            // discovery group, else take over at the next term.
            if self.config.discovery {
                return self.probe(now, out);
            }
            return self.create(now, out);
        }
        self.join(record.master, record.epoch, now, out);
    }

    /// No community found: this peer creates it, as its master for a term above any seen (claims 60–62).
    pub(super) fn create(&mut self, now: Instant, out: &mut Vec<Output>) {
        let term = self.highest_term.saturating_add(1);
        self.counters.communities_created += 1;
        out.push(Output::Event(Event::Created {
            epoch: Epoch::first_of(term),
        }));
        self.take_mastership(term, Vec::new(), RegistryClaim::Add, now, out);
    }

    /// `CRMSG_WAKEUP`: a master answers the prober; a master's own `CRMSG_WAKEUP` tells every peer of
    /// its claim (the weaker of two masters steps down).
    pub(super) fn on_wakeup(
        &mut self,
        message: &CommunityMessage,
        wakeup: &Wakeup,
        now: Instant,
        out: &mut Vec<Output>,
    ) {
        if self.role == Role::Master {
            let body = CommunityBody::WakeupAnswer(WakeupAnswer {
                in_reply_to: message.seq,
                master: self.me.clone(),
            });
            let epoch = self.current_epoch();
            self.send(message.address, epoch, body, now, out);
        }
        if let Some(master) = &wakeup.master {
            self.on_master_announced(master, message.epoch, now, out);
        }
    }

    /// A master's answer to a probe (or to this master's own `CRMSG_WAKEUP`).
    pub(super) fn on_wakeup_answer(
        &mut self,
        message: &CommunityMessage,
        master: &Peer,
        now: Instant,
        out: &mut Vec<Output>,
    ) {
        self.on_master_announced(master, message.epoch, now, out);
    }

    fn on_master_announced(&mut self, master: &Peer, epoch: Epoch, now: Instant, out: &mut Vec<Output>) {
        match self.role {
            Role::Discovering if self.phase == Phase::Probe => {
                let known = self.answers.iter_mut().find(|(known, _)| known.name == master.name);
                match known {
                    Some(known)
                        if claim_cmp((epoch.term, Some(master)), (known.1.term, Some(&known.0)))
                            == Ordering::Greater =>
                    {
                        *known = (master.clone(), epoch);
                    }
                    Some(_) => {}
                    None => self.answers.push((master.clone(), epoch)),
                }
            }
            Role::Discovering | Role::Left => {}
            _ => self.learn_master(master, epoch, now, out),
        }
    }
}
