//! Who may open a session: the node's and each client address's share.
//!
//! A handshake is admitted when the node holds fewer than its most
//! sessions, the client's address holds fewer than its most, and the
//! address has a handshake token left (a token bucket: a burst, then a
//! steady rate). IPv6 addresses count by their /64 prefix, the block one
//! subscriber usually gets, so rotating through a prefix buys nothing.
//!
//! The table of addresses is bounded: entries with no session and a full
//! bucket are dropped as it grows, and past [`MAX_TRACKED`] addresses with
//! sessions a new address is refused (the node is under a distributed
//! flood; the sessions it holds keep being served).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Instant;

/// Most client addresses tracked at once.
pub const MAX_TRACKED: usize = 1 << 20;
/// Past this many entries, a handshake first drops the idle ones.
const SWEEP_AT: usize = 4096;

/// The limits; 0 turns one off.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdmissionConfig {
    /// Most sessions held by this node.
    pub max_sessions: usize,
    /// Most sessions per client address on this node.
    pub max_sessions_per_ip: usize,
    /// Handshakes per second per client address (steady rate).
    pub handshake_rate_per_ip: f64,
    /// Handshakes a client address may make at once (the bucket's size).
    pub handshake_burst_per_ip: f64,
}

impl Default for AdmissionConfig {
    fn default() -> Self {
        AdmissionConfig {
            max_sessions: 0,
            max_sessions_per_ip: 0,
            handshake_rate_per_ip: 0.0,
            handshake_burst_per_ip: 0.0,
        }
    }
}

/// Why a handshake was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The node holds its most sessions.
    NodeFull,
    /// The client's address holds its most sessions.
    AddressFull,
    /// The client's address made too many handshakes lately.
    AddressRate,
    /// Too many client addresses hold sessions here at once.
    TooManyAddresses,
}

impl Refusal {
    /// A label for metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::NodeFull => "sessions",
            Refusal::AddressFull => "sessions_per_ip",
            Refusal::AddressRate => "handshake_rate_per_ip",
            Refusal::TooManyAddresses => "tracked_ips",
        }
    }
}

/// The key an address counts under: itself (IPv4), or its /64 (IPv6; an
/// IPv4-mapped address counts as the IPv4 one).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AddressKey {
    V4(u32),
    V6(u64),
}

impl AddressKey {
    pub fn of(ip: IpAddr) -> AddressKey {
        match ip {
            IpAddr::V4(v4) => AddressKey::V4(u32::from(v4)),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => AddressKey::V4(u32::from(v4)),
                None => AddressKey::V6((u128::from(v6) >> 64) as u64),
            },
        }
    }
}

#[derive(Debug)]
struct Entry {
    sessions: u32,
    tokens: f64,
    refilled: Instant,
}

/// The node's admission state.
#[derive(Debug)]
pub struct Admission {
    config: AdmissionConfig,
    table: Mutex<HashMap<AddressKey, Entry>>,
}

impl Admission {
    pub fn new(config: AdmissionConfig) -> Admission {
        Admission {
            config,
            table: Mutex::new(HashMap::new()),
        }
    }

    pub fn config(&self) -> &AdmissionConfig {
        &self.config
    }

    fn per_address(&self) -> bool {
        self.config.max_sessions_per_ip > 0 || self.config.handshake_rate_per_ip > 0.0
    }

    /// Admits a handshake from `ip` while the node holds `held` sessions;
    /// on success the session counts for `ip` until [`Admission::closed`].
    pub fn admit(&self, ip: IpAddr, held: usize, now: Instant) -> Result<(), Refusal> {
        if self.config.max_sessions > 0 && held >= self.config.max_sessions {
            return Err(Refusal::NodeFull);
        }
        if !self.per_address() {
            return Ok(());
        }
        let key = AddressKey::of(ip);
        let mut table = self.table.lock().unwrap_or_else(|e| e.into_inner());
        if !table.contains_key(&key) {
            if table.len() >= SWEEP_AT && table.len().is_power_of_two() {
                self.sweep(&mut table, now);
            }
            if table.len() >= MAX_TRACKED {
                self.sweep(&mut table, now);
                if table.len() >= MAX_TRACKED {
                    return Err(Refusal::TooManyAddresses);
                }
            }
        }
        let burst = self.config.handshake_burst_per_ip.max(1.0);
        let entry = table.entry(key).or_insert(Entry {
            sessions: 0,
            tokens: burst,
            refilled: now,
        });
        if self.config.max_sessions_per_ip > 0
            && entry.sessions as usize >= self.config.max_sessions_per_ip
        {
            return Err(Refusal::AddressFull);
        }
        if self.config.handshake_rate_per_ip > 0.0 {
            let elapsed = now.saturating_duration_since(entry.refilled).as_secs_f64();
            entry.tokens = (entry.tokens + elapsed * self.config.handshake_rate_per_ip).min(burst);
            entry.refilled = now;
            if entry.tokens < 1.0 {
                return Err(Refusal::AddressRate);
            }
            entry.tokens -= 1.0;
        }
        entry.sessions = entry.sessions.saturating_add(1);
        Ok(())
    }

    /// Counts a session that arrived otherwise (taken over from another
    /// node): it holds a place of its address, without a handshake token.
    pub fn adopted(&self, ip: IpAddr, now: Instant) {
        if !self.per_address() {
            return;
        }
        let burst = self.config.handshake_burst_per_ip.max(1.0);
        let mut table = self.table.lock().unwrap_or_else(|e| e.into_inner());
        let entry = table.entry(AddressKey::of(ip)).or_insert(Entry {
            sessions: 0,
            tokens: burst,
            refilled: now,
        });
        entry.sessions = entry.sessions.saturating_add(1);
    }

    /// A session of `ip` ended (or left this node).
    pub fn closed(&self, ip: IpAddr) {
        if !self.per_address() {
            return;
        }
        let mut table = self.table.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(entry) = table.get_mut(&AddressKey::of(ip)) {
            entry.sessions = entry.sessions.saturating_sub(1);
        }
    }

    /// Sessions counted for `ip`.
    pub fn sessions_of(&self, ip: IpAddr) -> u32 {
        self.table
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&AddressKey::of(ip))
            .map_or(0, |e| e.sessions)
    }

    /// Addresses tracked.
    pub fn tracked(&self) -> usize {
        self.table.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Drops the entries that hold no session and whose bucket is full
    /// again (they are as if never seen).
    fn sweep(&self, table: &mut HashMap<AddressKey, Entry>, now: Instant) {
        let burst = self.config.handshake_burst_per_ip.max(1.0);
        let rate = self.config.handshake_rate_per_ip;
        table.retain(|_, e| {
            let refilled = if rate > 0.0 {
                e.tokens + now.saturating_duration_since(e.refilled).as_secs_f64() * rate >= burst
            } else {
                true
            };
            e.sessions > 0 || !refilled
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    #[test]
    fn the_node_and_each_address_have_their_share() {
        let a = Admission::new(AdmissionConfig {
            max_sessions: 10,
            max_sessions_per_ip: 2,
            ..AdmissionConfig::default()
        });
        let now = Instant::now();
        assert_eq!(a.admit(ip("10.0.0.1"), 0, now), Ok(()));
        assert_eq!(a.admit(ip("10.0.0.1"), 1, now), Ok(()));
        assert_eq!(a.admit(ip("10.0.0.1"), 2, now), Err(Refusal::AddressFull));
        assert_eq!(a.admit(ip("10.0.0.2"), 2, now), Ok(()));
        assert_eq!(a.admit(ip("10.0.0.3"), 10, now), Err(Refusal::NodeFull));
        a.closed(ip("10.0.0.1"));
        assert_eq!(a.admit(ip("10.0.0.1"), 3, now), Ok(()));
        assert_eq!(a.sessions_of(ip("10.0.0.1")), 2);
    }

    #[test]
    fn handshakes_come_in_a_burst_then_at_the_rate() {
        let a = Admission::new(AdmissionConfig {
            handshake_rate_per_ip: 10.0,
            handshake_burst_per_ip: 5.0,
            ..AdmissionConfig::default()
        });
        let t0 = Instant::now();
        for _ in 0..5 {
            assert_eq!(a.admit(ip("10.0.0.1"), 0, t0), Ok(()));
        }
        assert_eq!(a.admit(ip("10.0.0.1"), 0, t0), Err(Refusal::AddressRate));
        // Another address has its own bucket.
        assert_eq!(a.admit(ip("10.0.0.2"), 0, t0), Ok(()));
        // 10 per second: one more after 100 ms, not two.
        let t1 = t0 + Duration::from_millis(100);
        assert_eq!(a.admit(ip("10.0.0.1"), 0, t1), Ok(()));
        assert_eq!(a.admit(ip("10.0.0.1"), 0, t1), Err(Refusal::AddressRate));
    }

    #[test]
    fn ipv6_counts_by_prefix_and_mapped_v4_as_v4() {
        let a = Admission::new(AdmissionConfig {
            max_sessions_per_ip: 1,
            ..AdmissionConfig::default()
        });
        let now = Instant::now();
        assert_eq!(a.admit(ip("2001:db8:1:2::1"), 0, now), Ok(()));
        assert_eq!(
            a.admit(ip("2001:db8:1:2:ffff::9"), 0, now),
            Err(Refusal::AddressFull)
        );
        assert_eq!(a.admit(ip("2001:db8:1:3::1"), 0, now), Ok(()));
        assert_eq!(a.admit(ip("10.1.1.1"), 0, now), Ok(()));
        assert_eq!(
            a.admit(ip("::ffff:10.1.1.1"), 0, now),
            Err(Refusal::AddressFull)
        );
    }

    #[test]
    fn idle_addresses_are_forgotten() {
        let a = Admission::new(AdmissionConfig {
            handshake_rate_per_ip: 1000.0,
            handshake_burst_per_ip: 2.0,
            ..AdmissionConfig::default()
        });
        let t0 = Instant::now();
        for i in 0..(SWEEP_AT as u32 * 2) {
            let addr = IpAddr::V4(std::net::Ipv4Addr::from(0x0a00_0000 + i));
            assert_eq!(a.admit(addr, 0, t0), Ok(()));
            a.closed(addr);
        }
        // Entries are swept as the table passes powers of two; later ones
        // remain until the next sweep.
        let later = t0 + Duration::from_secs(1);
        let mut table = a.table.lock().expect("lock");
        a.sweep(&mut table, later);
        assert!(table.is_empty(), "{} left", table.len());
    }

    #[test]
    fn no_limits_track_nothing() {
        let a = Admission::new(AdmissionConfig::default());
        for _ in 0..100 {
            assert_eq!(a.admit(ip("10.0.0.1"), 1_000_000, Instant::now()), Ok(()));
        }
        assert_eq!(a.tracked(), 0);
    }
}
