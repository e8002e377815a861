//! Content location (seed 002, claims 75–94; seed 003): the master answers location requests from its
//! directory of holders and the allocation table: owners holding a copy first, then other holders, then
//! owners without one (which fetch from the origin once and store); an empty answer says "go to origin".
//! A peer that stores or evicts a copy registers or deregisters as a holder.

use std::collections::BTreeSet;
use std::time::Instant;

use tern_wire::community::{
    CommunityBody, CommunityMessage, DenyReason, Holding, Location, LocationRequest, LocationResponse,
};

use super::Community;
use crate::event::{Event, Output, Role};

impl Community {
    /// The edge asks where an object is: the master answers itself; a member asks its master; without a
    /// master the table in force (if any) names the owners.
    pub(super) fn locate(&mut self, key: &str, host: &str, now: Instant, out: &mut Vec<Output>) {
        let master = match self.role {
            Role::Member => self.view.as_ref().map(|view| (view.master.address, view.epoch)),
            _ => None,
        };
        if let Some((address, epoch)) = master {
            let body = CommunityBody::LocationRequest(LocationRequest {
                key: key.to_string(),
                host: host.to_string(),
            });
            return self.send(address, epoch, body, now, out);
        }
        let with_holders = self.role == Role::Master;
        let response = self.location(key, host, &self.me.name, 0, with_holders);
        out.push(Output::Event(Event::Located {
            in_reply_to: None,
            response,
        }));
    }

    /// Where `key` is, for `requester` (never named in the answer).
    fn location(
        &self,
        key: &str,
        host: &str,
        requester: &str,
        in_reply_to: u64,
        with_holders: bool,
    ) -> LocationResponse {
        let mut peers = Vec::new();
        if let Some(view) = &self.view {
            let owners = view.allocation.owners(host, key);
            let holders: BTreeSet<&str> = if with_holders {
                self.directory.holders(key).collect()
            } else {
                BTreeSet::new()
            };
            let holding_owners = owners.iter().copied().filter(|owner| holders.contains(owner));
            let other_holders = holders.iter().copied().filter(|holder| !owners.contains(holder));
            let bare_owners = owners.iter().copied().filter(|owner| !holders.contains(owner));
            for name in holding_owners.chain(other_holders).chain(bare_owners) {
                if name == requester {
                    continue;
                }
                let Some(peer) = view.list.peer(name) else {
                    continue;
                };
                peers.push(Location {
                    name: name.to_string(),
                    http: peer.http,
                    owner: owners.contains(&name),
                    holds: holders.contains(name),
                });
            }
        }
        LocationResponse {
            in_reply_to,
            key: key.to_string(),
            go_to_origin: peers.is_empty(),
            peers,
        }
    }

    /// A location request (claims 79, 89): only the master answers; others redirect.
    pub(super) fn on_location_request(
        &mut self,
        message: &CommunityMessage,
        request: &LocationRequest,
        now: Instant,
        out: &mut Vec<Output>,
    ) {
        if self.role != Role::Master {
            return self.deny(message, DenyReason::NotMaster, now, out);
        }
        let response = self.location(&request.key, &request.host, &message.sender, message.seq, true);
        self.counters.location_requests += 1;
        let epoch = self.current_epoch();
        self.send(
            message.address,
            epoch,
            CommunityBody::LocationResponse(response),
            now,
            out,
        );
    }

    /// The edge stored (`held`) or dropped copies: the master's directory learns it.
    pub(super) fn holding(&mut self, keys: &[String], held: bool, now: Instant, out: &mut Vec<Output>) {
        match self.role {
            Role::Master => {
                let me = self.me.name.clone();
                self.apply_holding(&me, keys, held);
            }
            Role::Member => {
                let Some(view) = &self.view else {
                    return;
                };
                let (address, epoch) = (view.master.address, view.epoch);
                for chunk in keys.chunks(self.config.limits.max_keys.max(1)) {
                    let holding = Holding { keys: chunk.to_vec() };
                    let body = if held {
                        CommunityBody::HoldingRegistration(holding)
                    } else {
                        CommunityBody::HoldingDeregistration(holding)
                    };
                    self.send(address, epoch, body, now, out);
                }
            }
            // Soft state: a new master learns of copies stored from now on.
            _ => {}
        }
    }

    /// A member's holding registration or deregistration (seed 003).
    pub(super) fn on_holding(&mut self, message: &CommunityMessage, keys: &[String], held: bool) {
        if self.role != Role::Master {
            return;
        }
        let listed = self
            .view
            .as_ref()
            .and_then(|view| view.list.peer(&message.sender))
            .is_some_and(|peer| peer.incarnation == message.incarnation);
        if listed {
            self.apply_holding(&message.sender, keys, held);
        }
    }

    fn apply_holding(&mut self, holder: &str, keys: &[String], held: bool) {
        self.counters.holdings += 1;
        for key in keys {
            if held {
                self.directory.register(holder, key);
            } else {
                self.directory.deregister(holder, key);
            }
        }
    }
}
