//! Authentication of peer requests (`--peer-listen`): each request carries, in the `tern-community-token`
//! field, `v4 SENDER SENT_AT_MS NONCE MAC` where SENDER is the hex of the sending member's name, NONCE is
//! the sender's run id and a counter of its tokens (hex, `RUN-COUNT`), and MAC is lowercase hex of
//! HMAC-SHA256 under the community's peer key (itself HMAC-SHA256 of the cluster key over a label and the
//! community's name) over the sender, the nonce, the method, the request's host (`Host`; empty for a purge
//! relay, whose body names the URLs), the request target, the send time and the SHA-256 of the body. Only a holder of the cluster key can make one; one seen on the wire authorises
//! nothing but the same request within the freshness window, and a purge relay (a POST) is accepted once
//! ([`PeerAuth::verify`]'s replay memory). Because the sender and a nonce it never repeats are signed, two
//! members relaying the same purge in the same millisecond (the sync service purges every edge at once,
//! and each relays to the others) make different tokens, and one member never makes the same token twice:
//! only a copy of a token is a replay. Peers' clocks must agree within the window (NTP): the same window
//! as the community messages' own stamps ([`tern_wire::control::DEFAULT_FRESHNESS`]), so an edge whose
//! clock lets it join is never refused by its peers for its clock.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tern_wire::SecretKey;

/// How far a request's send time may be from the receiver's clock: the community messages' window.
pub const FRESHNESS_WINDOW: Duration = tern_wire::control::DEFAULT_FRESHNESS;
/// Most purge relays remembered against replay (one window's worth on a busy community).
const MAX_REMEMBERED: usize = 100_000;
/// The token's version prefix.
const VERSION: &str = "v4";
/// Longest sender name accepted, bytes (the community's own limit on member names).
const MAX_SENDER_LEN: usize = 64;
/// Longest nonce accepted: two u64 in hex and the dash.
const MAX_NONCE_LEN: usize = 33;

/// Why a peer request's token was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PeerAuthError {
    /// No token, or not of the form `v4 SENDER SENT_AT_MS NONCE MAC`.
    #[error(
        "peer requests need the community's token (`v4 SENDER SENT_AT_MS NONCE MAC`): is every member the same tern version?"
    )]
    Missing,
    /// The MAC does not match: another cluster key or community, or a changed request.
    #[error("the peer token does not match this request: another cluster key or community")]
    BadMac,
    /// The send time is outside the window.
    #[error("the peer token's time is more than 60 s from this edge's clock: check both clocks (NTP)")]
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

/// Signs and verifies peer requests of one community, as one member.
pub struct PeerAuth {
    key: [u8; 32],
    /// This member's name, signed into its tokens.
    sender: String,
    /// This run's id: a restarted member does not repeat the nonces of its previous run.
    run: u64,
    /// Tokens made in this run.
    count: AtomicU64,
    /// MACs of purge relays accepted, with their send times, for the replay check.
    seen: Mutex<HashMap<[u8; 32], u64>>,
}

impl PeerAuth {
    /// The authenticator of member `sender` of `community` under the cluster key.
    pub fn new(cluster_key: &SecretKey, community: &str, sender: &str) -> PeerAuth {
        let mut mac = hmac(cluster_key.as_bytes());
        mac.update(b"tern community peer v4\0");
        mac.update(community.as_bytes());
        PeerAuth {
            key: mac.finalize().into_bytes().into(),
            sender: sender.to_string(),
            run: run_id(),
            count: AtomicU64::new(0),
            seen: Mutex::new(HashMap::new()),
        }
    }

    /// The token for a request with `method`, `host` (its `Host`; empty for a purge relay), `target` (path
    /// and query) and `body`, sent at `now_ms` (milliseconds since the Unix epoch). Each call makes a new
    /// nonce.
    pub fn sign(&self, method: &str, host: &str, target: &str, body: &[u8], now_ms: u64) -> String {
        let count = self.count.fetch_add(1, Ordering::Relaxed);
        let nonce = format!("{:x}-{count:x}", self.run);
        let signed = Signed {
            sender: self.sender.as_bytes(),
            nonce: &nonce,
            method,
            host,
            target,
            body,
            sent_ms: now_ms,
        };
        format!(
            "{VERSION} {} {now_ms} {nonce} {}",
            hex::encode(&self.sender),
            hex::encode(self.mac(&signed))
        )
    }

    /// Checks `token` for the request at `now_ms`. A POST (a purge relay) is also checked against the
    /// relays accepted within the window and remembered.
    pub fn verify(
        &self,
        token: Option<&[u8]>,
        method: &str,
        host: &str,
        target: &str,
        body: &[u8],
        now_ms: u64,
    ) -> Result<(), PeerAuthError> {
        let text = token
            .and_then(|token| std::str::from_utf8(token).ok())
            .ok_or(PeerAuthError::Missing)?;
        let mut fields = text.split(' ');
        let (Some(VERSION), Some(sender), Some(sent), Some(nonce), Some(presented), None) = (
            fields.next(),
            fields.next(),
            fields.next(),
            fields.next(),
            fields.next(),
            fields.next(),
        ) else {
            return Err(PeerAuthError::Missing);
        };
        let sender = hex::decode(sender)
            .ok()
            .filter(|name| !name.is_empty() && name.len() <= MAX_SENDER_LEN)
            .ok_or(PeerAuthError::Missing)?;
        let nonce_valid = !nonce.is_empty()
            && nonce.len() <= MAX_NONCE_LEN
            && nonce.bytes().all(|byte| byte.is_ascii_hexdigit() || byte == b'-');
        if !nonce_valid {
            return Err(PeerAuthError::Missing);
        }
        let sent_ms: u64 = sent.parse().map_err(|_| PeerAuthError::Missing)?;
        let presented: [u8; 32] = hex::decode(presented)
            .ok()
            .and_then(|bytes| bytes.try_into().ok())
            .ok_or(PeerAuthError::Missing)?;
        let expected = self.mac(&Signed {
            sender: &sender,
            nonce,
            method,
            host,
            target,
            body,
            sent_ms,
        });
        if !bool::from(expected.ct_eq(&presented)) {
            return Err(PeerAuthError::BadMac);
        }
        let window = FRESHNESS_WINDOW.as_millis() as u64;
        if sent_ms.abs_diff(now_ms) > window {
            return Err(PeerAuthError::Stale);
        }
        if method == "POST" {
            // Keyed by the MAC, which covers sender and nonce: equal only for a copy of one token.
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

    fn mac(&self, signed: &Signed<'_>) -> [u8; 32] {
        let mut mac = hmac(&self.key);
        // Each variable-length field with its length first, so no two field lists sign the same bytes.
        for field in [
            signed.sender,
            signed.nonce.as_bytes(),
            signed.method.as_bytes(),
            signed.host.as_bytes(),
            signed.target.as_bytes(),
        ] {
            mac.update(&(field.len() as u64).to_be_bytes());
            mac.update(field);
        }
        mac.update(&signed.sent_ms.to_be_bytes());
        mac.update(&Sha256::digest(signed.body));
        mac.finalize().into_bytes().into()
    }
}

/// What a token signs.
struct Signed<'a> {
    sender: &'a [u8],
    nonce: &'a str,
    method: &'a str,
    host: &'a str,
    target: &'a str,
    body: &'a [u8],
    sent_ms: u64,
}

/// A run id unlikely to repeat: the standard library's per-process random hash keys over the clock.
fn run_id() -> u64 {
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| since.as_nanos());
    hasher.write_u128(nanos);
    hasher.write_u32(std::process::id());
    hasher.finish()
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

    fn member(key: &str, community: &str, name: &str) -> PeerAuth {
        PeerAuth::new(&SecretKey::parse(&key.repeat(32)).expect("key"), community, name)
    }

    fn auth(key: &str, community: &str) -> PeerAuth {
        member(key, community, "edge-a")
    }

    #[test]
    fn a_token_authorises_its_own_request_only() {
        let site = auth("11", "site");
        let now = 1_800_000_000_000;
        let token = site.sign("GET", "www.test", "/a", b"", now);
        assert_eq!(
            site.verify(Some(token.as_bytes()), "GET", "www.test", "/a", b"", now + 5),
            Ok(())
        );
        // Replaying a GET within the window is harmless and allowed.
        assert_eq!(
            site.verify(Some(token.as_bytes()), "GET", "www.test", "/a", b"", now + 6),
            Ok(())
        );
        for (method, host, target) in [
            ("GET", "www.test", "/b"),
            ("HEAD", "www.test", "/a"),
            ("GET", "evil.test", "/a"),
        ] {
            assert_eq!(
                site.verify(Some(token.as_bytes()), method, host, target, b"", now),
                Err(PeerAuthError::BadMac),
                "{method} {host}{target}"
            );
        }
        assert_eq!(
            auth("22", "site").verify(Some(token.as_bytes()), "GET", "www.test", "/a", b"", now),
            Err(PeerAuthError::BadMac)
        );
        assert_eq!(
            auth("11", "other").verify(Some(token.as_bytes()), "GET", "www.test", "/a", b"", now),
            Err(PeerAuthError::BadMac)
        );
        let late = now + FRESHNESS_WINDOW.as_millis() as u64 + 1;
        assert_eq!(
            site.verify(Some(token.as_bytes()), "GET", "www.test", "/a", b"", late),
            Err(PeerAuthError::Stale)
        );
    }

    #[test]
    fn a_purge_relay_is_accepted_once_and_binds_its_body() {
        let site = auth("11", "site");
        let now = 1_800_000_000_000;
        let body = br#"{"urls":["http://h/a"]}"#;
        let token = site.sign("POST", "www.test", "/purge", body, now);
        assert_eq!(
            site.verify(
                Some(token.as_bytes()),
                "POST",
                "www.test",
                "/purge",
                br#"{"prefixes":["http://h/"]}"#,
                now
            ),
            Err(PeerAuthError::BadMac)
        );
        assert_eq!(
            site.verify(Some(token.as_bytes()), "POST", "www.test", "/purge", body, now),
            Ok(())
        );
        assert_eq!(
            site.verify(Some(token.as_bytes()), "POST", "www.test", "/purge", body, now + 1),
            Err(PeerAuthError::Replayed)
        );
    }

    /// The sync service purges every edge at once and each relays to the others: relays of one purge by
    /// different members in one millisecond, or by one member twice, are not replays.
    #[test]
    fn relays_of_one_purge_at_one_time_by_two_senders_are_both_accepted() {
        let (a, b, receiver) = (
            member("11", "site", "edge-a"),
            member("11", "site", "edge-b"),
            member("11", "site", "edge-c"),
        );
        let now = 1_800_000_000_000;
        let body = br#"{"urls":["http://h/a"]}"#;
        let from_a = a.sign("POST", "www.test", "/purge", body, now);
        let from_b = b.sign("POST", "www.test", "/purge", body, now);
        assert_ne!(from_a, from_b);
        assert_eq!(
            receiver.verify(Some(from_a.as_bytes()), "POST", "www.test", "/purge", body, now),
            Ok(())
        );
        assert_eq!(
            receiver.verify(Some(from_b.as_bytes()), "POST", "www.test", "/purge", body, now),
            Ok(())
        );
        let again_from_a = a.sign("POST", "www.test", "/purge", body, now);
        assert_eq!(
            receiver.verify(Some(again_from_a.as_bytes()), "POST", "www.test", "/purge", body, now),
            Ok(()),
            "one sender's second purge of the same URL in the same millisecond is new"
        );
        for token in [&from_a, &from_b, &again_from_a] {
            assert_eq!(
                receiver.verify(Some(token.as_bytes()), "POST", "www.test", "/purge", body, now + 2),
                Err(PeerAuthError::Replayed)
            );
        }
        // A member restarted within the window starts a new run of nonces.
        let a_restarted = member("11", "site", "edge-a");
        let after_restart = a_restarted.sign("POST", "www.test", "/purge", body, now);
        assert_eq!(
            receiver.verify(Some(after_restart.as_bytes()), "POST", "www.test", "/purge", body, now),
            Ok(())
        );
        // The sender is signed: a token's sender cannot be swapped for another's.
        let forged = from_a.replacen(&hex::encode("edge-a"), &hex::encode("edge-b"), 1);
        assert_eq!(
            member("11", "site", "edge-d").verify(Some(forged.as_bytes()), "POST", "www.test", "/purge", body, now),
            Err(PeerAuthError::BadMac)
        );
    }

    #[test]
    fn malformed_tokens_are_refused_without_panicking() {
        let site = auth("11", "site");
        let mac = "00".repeat(32);
        let long_sender = hex::encode([b'a'; 65]);
        let tokens: Vec<Vec<u8>> = [
            String::new(),
            "v4".into(),
            "v4 6161 1".into(),
            "v4 6161 1 0-0".into(),
            format!("v2 1 {mac}"),
            format!("v4 6161 x 0-0 {mac}"),
            format!("v4 zz 1 0-0 {mac}"),
            format!("v4  1 0-0 {mac}"),
            format!("v4 {long_sender} 1 0-0 {mac}"),
            format!("v4 6161 1 nonce {mac}"),
            format!("v4 6161 1 {} {mac}", "0".repeat(40)),
            "v4 6161 1 0-0 zz".into(),
            format!("v4 6161 1 0-0 {mac} extra"),
        ]
        .into_iter()
        .map(String::into_bytes)
        .chain([b"\xff\xfe".to_vec(), vec![b'0'; 64]])
        .collect();
        for token in &tokens {
            assert_eq!(
                site.verify(Some(token), "GET", "www.test", "/", b"", 1),
                Err(PeerAuthError::Missing),
                "{:?}",
                String::from_utf8_lossy(token)
            );
        }
        assert_eq!(
            site.verify(None, "GET", "www.test", "/", b"", 1),
            Err(PeerAuthError::Missing)
        );
    }
}
