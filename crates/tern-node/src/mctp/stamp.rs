//! The envelope every core puts on its control messages, and the checks on those it receives.

use std::time::Instant;

use tern_wire::control::{ControlError, ReplayGuard};
use tern_wire::mctp::{self, MctpBody, MctpLimits, MctpMessage};

use super::Counters;
use super::config::Identity;
use crate::election::WallClock;

/// Stamps and encodes outgoing messages; decodes and guards incoming ones.
#[derive(Debug)]
pub(crate) struct Stamper {
    identity: Identity,
    limits: MctpLimits,
    incarnation: u64,
    seq: u64,
    wall_clock: WallClock,
    guard: ReplayGuard,
}

impl Stamper {
    pub(crate) fn new(identity: Identity, limits: MctpLimits, incarnation: u64, now: Instant, unix_ms: u64) -> Self {
        Stamper {
            identity,
            guard: ReplayGuard::new(limits.replay),
            limits,
            incarnation,
            seq: 0,
            wall_clock: WallClock::new(now, unix_ms),
        }
    }

    /// One tagged datagram saying `body`.
    pub(crate) fn encode(&mut self, body: MctpBody, now: Instant) -> Vec<u8> {
        self.seq += 1;
        let message = MctpMessage {
            segment: self.identity.segment.clone(),
            sender: self.identity.name.clone(),
            address: self.identity.address,
            incarnation: self.incarnation,
            seq: self.seq,
            sent_at_ms: self.wall_clock.ms_at(now),
            body,
        };
        mctp::encode(&self.identity.key, &message)
    }

    /// The message in `datagram` if it is authentic, fresh, not a replay, from this segment and not from
    /// this node; otherwise counts why not.
    pub(crate) fn open(&mut self, datagram: &[u8], now: Instant, counters: &mut Counters) -> Option<MctpMessage> {
        let message = match mctp::decode(&self.identity.key, datagram, &self.limits) {
            Ok(verified) => verified.into_message(),
            Err(error) => {
                counters.refuse(error.reason());
                return None;
            }
        };
        if message.segment != self.identity.segment {
            counters.refuse("other-segment");
            return None;
        }
        if message.sender == self.identity.name {
            counters.refuse("own-message");
            return None;
        }
        let checked: Result<(), ControlError> = self.guard.check_stamp(&message.stamp(), self.wall_clock.ms_at(now));
        if let Err(error) = checked {
            counters.refuse(error.reason());
            return None;
        }
        Some(message)
    }
}
