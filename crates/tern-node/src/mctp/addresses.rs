//! Where the group leader reaches each member by unicast (seed `004_1419c51402506f7e.txt`: "The Group
//! Leader sends a unicast request to any participating group member who did not report or whose response
//! was lost"). A member's authenticated messages name its address, but a member whose every report was
//! lost was never heard: its address then comes from its registration (the data channel address in the
//! profile it registered with, [`tern_wire::segment::Profile::data_channel`]).

use std::collections::HashMap;
use std::net::SocketAddr;

/// The members' unicast addresses: heard (the newest, from their authenticated messages) or registered.
#[derive(Debug, Clone)]
pub struct MemberAddresses {
    heard: HashMap<String, SocketAddr>,
    registered: HashMap<String, SocketAddr>,
    capacity: usize,
}

impl MemberAddresses {
    /// An empty book holding at most `capacity` members of each kind.
    pub fn new(capacity: usize) -> Self {
        MemberAddresses {
            heard: HashMap::new(),
            registered: HashMap::new(),
            capacity,
        }
    }

    /// A member's authenticated message named this address.
    pub fn heard(&mut self, name: &str, address: SocketAddr) {
        if self.heard.len() < self.capacity || self.heard.contains_key(name) {
            self.heard.insert(name.to_string(), address);
        }
    }

    /// The registered members and their data channel addresses now (replacing the last list); returns the
    /// members of the last list that this one lacks (they went offline).
    pub fn registered(&mut self, members: impl IntoIterator<Item = (String, SocketAddr)>) -> Vec<String> {
        let now: HashMap<String, SocketAddr> = members.into_iter().take(self.capacity).collect();
        let mut departed: Vec<String> = self
            .registered
            .keys()
            .filter(|name| !now.contains_key(*name))
            .cloned()
            .collect();
        departed.sort();
        self.registered = now;
        departed
    }

    /// Where to send a unicast datagram to `name`: the address it was last heard with, else the one it
    /// registered with.
    pub fn address(&self, name: &str) -> Option<SocketAddr> {
        self.heard.get(name).or_else(|| self.registered.get(name)).copied()
    }
}
