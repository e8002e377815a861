//! Authentication of peer requests (`--peer-listen`): each request carries, in the `tern-community-token`
//! field, `v2 SENT_AT_MS MAC` where MAC is lowercase hex of HMAC-SHA256 under the community's peer key
//! (itself HMAC-SHA256 of the cluster key over a label and the community's name) over the method, the
//! request target, the send time and the SHA-256 of the body. Only a holder of the cluster key can make
//! one; one seen on the wire authorises nothing but the same request within the freshness window, and a
//! purge relay (a POST) is accepted once ([`PeerAuth::verify`]'s replay memory). Peers' clocks must agree
//! within the window (NTP), as they must for the community messages' own stamps.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tern_wire::SecretKey;

/// How far a request's send time may be from the receiver's clock.
pub const FRESHNESS_WINDOW: Duration = Duration::from_secs(30);
/// Most purge relays remembered against replay (one window's worth on a busy community).
const MAX_REMEMBERED: usize = 100_000;
/// The token's version prefix.
const VERSION: &str = "v2";

/// Why a peer request's token was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PeerAuthError {
    /// No token, or not of the form `v2 SENT_AT_MS MAC`.
    #[error("peer requests need the community's token (`v2 SENT_AT_MS MAC`)")]
    Missing,
    /// The MAC does not match: another cluster key or community, or a changed request.
    #[error("the peer token does not match this request: another cluster key or community")]
    BadMac,
    /// The send time is outside the window.
    #[error("the peer token's time is more than 30 s from this edge's clock: check both clocks (NTP)")]
    Stale,
    /// A purge relay seen before.
    #[error("this purge relay was seen before (a replay)")]
    Replayed,
}

impl PeerAuthError {
    /// A short name for counters.
    pub fn reason(self) -> &'static str {
        match self {
            PeerAuthError::Missing => "missing",
            PeerAuthError::BadMac => "bad-mac",
            PeerAuthError::Stale => "stale",
            PeerAuthError::Replayed => "replayed",
        }
    }
}

/// Signs and verifies peer requests of one community.
pub struct PeerAuth {
    key: [u8; 32],
    /// MACs of purge relays accepted, with their send times, for the replay check.
    seen: Mutex<HashMap<[u8; 32], u64>>,
}

impl PeerAuth {
    /// The authenticator of `community` under the cluster key.
    pub fn new(cluster_key: &SecretKey, community: &str) -> PeerAuth {
        let mut mac = hmac(cluster_key.as_bytes());
        mac.update(b"tern community peer v2\0");
        mac.update(community.as_bytes());
        PeerAuth {
            key: mac.finalize().into_bytes().into(),
            seen: Mutex::new(HashMap::new()),
        }
    }

    /// The token for a request with `method`, `target` (path and query) and `body`, sent at `now_ms`
    /// (milliseconds since the Unix epoch).
    pub fn sign(&self, method: &str, target: &str, body: &[u8], now_ms: u64) -> String {
        format!(
            "{VERSION} {now_ms} {}",
            hex::encode(self.mac(method, target, body, now_ms))
        )
    }

    /// Checks `token` for the request at `now_ms`. A POST (a purge relay) is also checked against the
    /// relays accepted within the window and remembered.
    pub fn verify(
        &self,
        token: Option<&[u8]>,
        method: &str,
        target: &str,
        body: &[u8],
        now_ms: u64,
    ) -> Result<(), PeerAuthError> {
        let text = token
            .and_then(|token| std::str::from_utf8(token).ok())
            .ok_or(PeerAuthError::Missing)?;
        let mut fields = text.split(' ');
        let (Some(VERSION), Some(sent), Some(presented), None) =
            (fields.next(), fields.next(), fields.next(), fields.next())
        else {
            return Err(PeerAuthError::Missing);
        };
        let sent_ms: u64 = sent.parse().map_err(|_| PeerAuthError::Missing)?;
        let presented: [u8; 32] = hex::decode(presented)
            .ok()
            .and_then(|bytes| bytes.try_into().ok())
            .ok_or(PeerAuthError::Missing)?;
        let expected = self.mac(method, target, body, sent_ms);
        if !bool::from(expected.ct_eq(&presented)) {
            return Err(PeerAuthError::BadMac);
        }
        let window = FRESHNESS_WINDOW.as_millis() as u64;
        if sent_ms.abs_diff(now_ms) > window {
            return Err(PeerAuthError::Stale);
        }
        if method == "POST" {
            let mut seen = self.seen.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            if seen.len() >= MAX_REMEMBERED {
                seen.retain(|_, at| at.abs_diff(now_ms) <= window);
            }
            if seen.len() >= MAX_REMEMBERED {
                // Still full of fresh entries: refuse rather than forget one that could be replayed.
                return Err(PeerAuthError::Replayed);
            }
            if seen.insert(presented, sent_ms).is_some() {
                return Err(PeerAuthError::Replayed);
            }
        }
        Ok(())
    }

    fn mac(&self, method: &str, target: &str, body: &[u8], sent_ms: u64) -> [u8; 32] {
        let mut mac = hmac(&self.key);
        mac.update(method.as_bytes());
        mac.update(b"\0");
        mac.update(target.as_bytes());
        mac.update(b"\0");
        mac.update(&sent_ms.to_be_bytes());
        mac.update(&Sha256::digest(body));
        mac.finalize().into_bytes().into()
    }
}

fn hmac(key: &[u8]) -> Hmac<Sha256> {
    // HMAC accepts keys of any length, so this cannot fail.
    <Hmac<Sha256> as Mac>::new_from_slice(key).unwrap_or_else(|_| unreachable!())
}

/// Milliseconds since the Unix epoch by the system clock.
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| since.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth(key: &str, community: &str) -> PeerAuth {
        PeerAuth::new(&SecretKey::parse(&key.repeat(32)).expect("key"), community)
    }

    #[test]
    fn a_token_authorises_its_own_request_only() {
        let site = auth("11", "site");
        let now = 1_800_000_000_000;
        let token = site.sign("GET", "/a", b"", now);
        assert_eq!(site.verify(Some(token.as_bytes()), "GET", "/a", b"", now + 5), Ok(()));
        // Replaying a GET within the window is harmless and allowed.
        assert_eq!(site.verify(Some(token.as_bytes()), "GET", "/a", b"", now + 6), Ok(()));
        for (method, target) in [("GET", "/b"), ("HEAD", "/a")] {
            assert_eq!(
                site.verify(Some(token.as_bytes()), method, target, b"", now),
                Err(PeerAuthError::BadMac)
            );
        }
        assert_eq!(
            auth("22", "site").verify(Some(token.as_bytes()), "GET", "/a", b"", now),
            Err(PeerAuthError::BadMac)
        );
        assert_eq!(
            auth("11", "other").verify(Some(token.as_bytes()), "GET", "/a", b"", now),
            Err(PeerAuthError::BadMac)
        );
        let late = now + FRESHNESS_WINDOW.as_millis() as u64 + 1;
        assert_eq!(
            site.verify(Some(token.as_bytes()), "GET", "/a", b"", late),
            Err(PeerAuthError::Stale)
        );
    }

    #[test]
    fn a_purge_relay_is_accepted_once_and_binds_its_body() {
        let site = auth("11", "site");
        let now = 1_800_000_000_000;
        let body = br#"{"urls":["http://h/a"]}"#;
        let token = site.sign("POST", "/purge", body, now);
        assert_eq!(
            site.verify(
                Some(token.as_bytes()),
                "POST",
                "/purge",
                br#"{"prefixes":["http://h/"]}"#,
                now
            ),
            Err(PeerAuthError::BadMac)
        );
        assert_eq!(site.verify(Some(token.as_bytes()), "POST", "/purge", body, now), Ok(()));
        assert_eq!(
            site.verify(Some(token.as_bytes()), "POST", "/purge", body, now + 1),
            Err(PeerAuthError::Replayed)
        );
    }

    #[test]
    fn malformed_tokens_are_refused_without_panicking() {
        let site = auth("11", "site");
        for token in [
            &b""[..],
            b"v2",
            b"v2 1",
            b"v2 x 00",
            b"v1 1 00",
            b"v2 1 zz",
            b"v2 1 00 extra",
            b"\xff\xfe",
            &[b'0'; 64],
        ] {
            assert_eq!(
                site.verify(Some(token), "GET", "/", b"", 1),
                Err(PeerAuthError::Missing),
                "{:?}",
                String::from_utf8_lossy(token)
            );
        }
        assert_eq!(site.verify(None, "GET", "/", b"", 1), Err(PeerAuthError::Missing));
    }
}
