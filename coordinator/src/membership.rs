//! The membership state machine: members, their leases and the view epoch.
//!
//! Pure: no I/O, no clock of its own (every call that needs the time takes
//! `now`), no randomness (the caller picks lease ids). Each mutating call
//! says whether the view changed; the caller publishes and persists.
//!
//! Rules:
//! - every change of the view (a member added, replaced, removed) bumps the
//!   epoch by one; nothing else does, so idle clusters see no epoch churn;
//! - a lease lapses `lease_ttl` after its last heartbeat (or join);
//! - after a coordinator restart ([`Membership::restore`]) the stored
//!   members stay in the view with a grace lease of one TTL and no lease id:
//!   their heartbeats answer "unknown" so they join again, which changes
//!   nothing in the view if their addresses and incarnation are the same.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use ringway_proto::cluster::v1::{JoinRequest, Member, MemberState, View};

/// Longest node id accepted (a DNS name).
pub const MAX_NODE_ID_LEN: usize = 253;
/// Longest address accepted (a DNS name, `:` and a port).
pub const MAX_ADDR_LEN: usize = 253 + 6;

/// Why a membership request is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MembershipError {
    #[error("node_id is empty")]
    EmptyNodeId,
    #[error("{field} is empty")]
    EmptyAddress { field: &'static str },
    #[error("{field} is too long ({len} bytes, at most {max})")]
    TooLong {
        field: &'static str,
        len: usize,
        max: usize,
    },
    #[error("lease {lease_id} is not the current lease of node {node_id:?}")]
    LeaseMismatch { node_id: String, lease_id: u64 },
    #[error("{field} {value:?} is not host:port: {reason}")]
    BadAddress {
        field: &'static str,
        value: String,
        reason: &'static str,
    },
    #[error("node {node_id:?} is a live member and the join does not prove it holds that membership (its member token); it can join once that lease lapses")]
    NotTheMember { node_id: String },
    #[error("the cluster has its most members ({max}, --max-members)")]
    Full { max: usize },
}

/// What [`Membership::join`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JoinOutcome {
    /// The lease the member now holds.
    pub lease_id: u64,
    /// Whether the view changed (new member, or new addresses,
    /// incarnation or state); if so the epoch was bumped.
    pub changed: bool,
    /// The epoch after the join.
    pub epoch: u64,
}

/// What [`Membership::heartbeat`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeartbeatOutcome {
    /// False when the node or its lease is unknown or lapsed: join again.
    pub known: bool,
    pub epoch: u64,
}

/// What [`Membership::leave`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaveOutcome {
    /// Whether the member was removed (false: it was not a member).
    pub removed: bool,
    pub epoch: u64,
}

/// What a gateway reports in each heartbeat.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Load {
    /// Sessions the node owns.
    pub sessions: u64,
    /// Sessions held there by transport, right now.
    pub polling_sessions: u64,
    pub websocket_sessions: u64,
    /// Cumulative counters since the gateway process started: Engine.IO
    /// messages from clients, Socket.IO packets queued for clients.
    pub messages_in: u64,
    pub messages_out: u64,
}

impl Load {
    /// A load of `sessions` sessions and nothing else known.
    pub fn sessions(sessions: u64) -> Load {
        Load {
            sessions,
            ..Load::default()
        }
    }
}

/// Message rates between a member's last two heartbeats, per second.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Rates {
    pub messages_in: f64,
    pub messages_out: f64,
}

/// Per-member bookkeeping outside the view, for operators.
#[derive(Debug, Clone, PartialEq)]
pub struct MemberStats {
    pub node_id: String,
    /// What the node reported in its last heartbeat (zeros before one).
    pub load: Load,
    /// Rates from its last two heartbeats (None: fewer than two since it
    /// joined, or its counters went back).
    pub rates: Option<Rates>,
    /// When its last heartbeat arrived (None: none since join or restore).
    pub last_heartbeat: Option<Instant>,
    /// When its lease lapses unless renewed.
    pub expires_at: Instant,
    /// False for members restored from Redis that have not joined again.
    pub has_lease: bool,
}

#[derive(Debug, Clone)]
struct Entry {
    member: Member,
    /// None: restored from the stored view, no lease handed out yet.
    lease_id: Option<u64>,
    expires_at: Instant,
    last_heartbeat: Option<Instant>,
    load: Load,
    rates: Option<Rates>,
}

/// The members, their leases and the epoch of the view they form.
#[derive(Debug, Clone)]
pub struct Membership {
    epoch: u64,
    lease_ttl: Duration,
    members: BTreeMap<String, Entry>,
}

impl Membership {
    /// An empty cluster at epoch 0.
    pub fn new(lease_ttl: Duration) -> Self {
        Membership {
            epoch: 0,
            lease_ttl,
            members: BTreeMap::new(),
        }
    }

    /// Continues from a view stored by an earlier coordinator: the stored
    /// members stay, each with a grace lease of one TTL from `now` and no
    /// lease id (their heartbeats answer unknown until they join again).
    /// The epoch is one past the stored one, so the first view published
    /// after a restart is newer than everything stored before.
    pub fn restore(stored: View, lease_ttl: Duration, now: Instant) -> Self {
        let expires_at = now + lease_ttl;
        let members = stored
            .members
            .into_iter()
            .map(|member| {
                let entry = Entry {
                    member,
                    lease_id: None,
                    expires_at,
                    last_heartbeat: None,
                    load: Load::default(),
                    rates: None,
                };
                (entry.member.node_id.clone(), entry)
            })
            .collect();
        Membership {
            epoch: stored.epoch.saturating_add(1),
            lease_ttl,
            members,
        }
    }

    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    pub fn lease_ttl(&self) -> Duration {
        self.lease_ttl
    }

    pub fn len(&self) -> usize {
        self.members.len()
    }

    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// The current view, members sorted by node id.
    pub fn view(&self) -> View {
        View {
            epoch: self.epoch,
            members: self.members.values().map(|e| e.member.clone()).collect(),
        }
    }

    /// Bookkeeping of every member, sorted by node id.
    pub fn stats(&self) -> Vec<MemberStats> {
        self.members
            .values()
            .map(|e| MemberStats {
                node_id: e.member.node_id.clone(),
                load: e.load,
                rates: e.rates,
                last_heartbeat: e.last_heartbeat,
                expires_at: e.expires_at,
                has_lease: e.lease_id.is_some(),
            })
            .collect()
    }

    /// The member `node_id`, as it is in the view.
    pub fn member(&self, node_id: &str) -> Option<&Member> {
        self.members.get(node_id).map(|e| &e.member)
    }

    /// The earliest lease expiry, if any member.
    pub fn next_expiry(&self) -> Option<Instant> {
        self.members.values().map(|e| e.expires_at).min()
    }

    /// Adds or replaces a member (state ACTIVE) with lease `lease_id`.
    /// Joining again with the same addresses, incarnation and state keeps
    /// the view (and epoch) as it is and only renews the lease.
    pub fn join(
        &mut self,
        request: &JoinRequest,
        lease_id: u64,
        now: Instant,
    ) -> Result<JoinOutcome, MembershipError> {
        validate_join(request)?;
        let member = Member {
            node_id: request.node_id.clone(),
            grpc_addr: request.grpc_addr.clone(),
            http_addr: request.http_addr.clone(),
            state: MemberState::Active as i32,
            joined_epoch: 0,
            incarnation: request.incarnation,
        };
        let expires_at = now + self.lease_ttl;
        if let Some(entry) = self.members.get_mut(&request.node_id) {
            if same_member(&entry.member, &member) {
                entry.lease_id = Some(lease_id);
                entry.expires_at = expires_at;
                return Ok(JoinOutcome {
                    lease_id,
                    changed: false,
                    epoch: self.epoch,
                });
            }
        }
        self.epoch = self.epoch.saturating_add(1);
        let entry = Entry {
            member: Member {
                joined_epoch: self.epoch,
                ..member
            },
            lease_id: Some(lease_id),
            expires_at,
            last_heartbeat: None,
            load: Load::default(),
            rates: None,
        };
        self.members.insert(request.node_id.clone(), entry);
        Ok(JoinOutcome {
            lease_id,
            changed: true,
            epoch: self.epoch,
        })
    }

    /// Renews a lease and records the node's load (and its message rates
    /// since the previous heartbeat). Unknown node, wrong lease or a lease
    /// already lapsed: `known == false` (the member is left for
    /// [`Membership::reap`]).
    pub fn heartbeat(
        &mut self,
        node_id: &str,
        lease_id: u64,
        load: Load,
        now: Instant,
    ) -> HeartbeatOutcome {
        let known = match self.members.get_mut(node_id) {
            Some(entry) if entry.lease_id == Some(lease_id) && now < entry.expires_at => {
                entry.expires_at = now + self.lease_ttl;
                entry.rates = entry
                    .last_heartbeat
                    .and_then(|last| rates(&entry.load, &load, now.duration_since(last)));
                entry.last_heartbeat = Some(now);
                entry.load = load;
                true
            }
            _ => false,
        };
        HeartbeatOutcome {
            known,
            epoch: self.epoch,
        }
    }

    /// Removes a member at once. Not a member: nothing to do (idempotent).
    /// A member under another lease: [`MembershipError::LeaseMismatch`].
    pub fn leave(&mut self, node_id: &str, lease_id: u64) -> Result<LeaveOutcome, MembershipError> {
        match self.members.get(node_id) {
            None => Ok(LeaveOutcome {
                removed: false,
                epoch: self.epoch,
            }),
            Some(entry) if entry.lease_id != Some(lease_id) => {
                Err(MembershipError::LeaseMismatch {
                    node_id: node_id.to_owned(),
                    lease_id,
                })
            }
            Some(_) => {
                self.members.remove(node_id);
                self.epoch = self.epoch.saturating_add(1);
                Ok(LeaveOutcome {
                    removed: true,
                    epoch: self.epoch,
                })
            }
        }
    }

    /// Removes every member whose lease lapsed at `now` (one epoch bump
    /// for all of them); returns their node ids (empty: no change).
    pub fn reap(&mut self, now: Instant) -> Vec<String> {
        let lapsed: Vec<String> = self
            .members
            .values()
            .filter(|e| e.expires_at <= now)
            .map(|e| e.member.node_id.clone())
            .collect();
        if !lapsed.is_empty() {
            for id in &lapsed {
                self.members.remove(id);
            }
            self.epoch = self.epoch.saturating_add(1);
        }
        lapsed
    }
}

/// Rates between two successive loads `elapsed` apart; None when no time
/// passed or a counter went back (not the same counting process).
fn rates(before: &Load, after: &Load, elapsed: Duration) -> Option<Rates> {
    let secs = elapsed.as_secs_f64();
    if secs <= 0.0 {
        return None;
    }
    let rate = |a: u64, b: u64| b.checked_sub(a).map(|d| d as f64 / secs);
    Some(Rates {
        messages_in: rate(before.messages_in, after.messages_in)?,
        messages_out: rate(before.messages_out, after.messages_out)?,
    })
}

fn same_member(a: &Member, b: &Member) -> bool {
    a.grpc_addr == b.grpc_addr
        && a.http_addr == b.http_addr
        && a.incarnation == b.incarnation
        && a.state == b.state
}

fn validate_join(request: &JoinRequest) -> Result<(), MembershipError> {
    if request.node_id.is_empty() {
        return Err(MembershipError::EmptyNodeId);
    }
    check_len("node_id", &request.node_id, MAX_NODE_ID_LEN)?;
    for (field, value) in [
        ("grpc_addr", &request.grpc_addr),
        ("http_addr", &request.http_addr),
    ] {
        if value.is_empty() {
            return Err(MembershipError::EmptyAddress { field });
        }
        check_len(field, value, MAX_ADDR_LEN)?;
        check_host_port(field, value)?;
    }
    Ok(())
}

/// An address other members call: `host:port`, nothing else (a scheme
/// would make every call to it fail later).
fn check_host_port(field: &'static str, value: &str) -> Result<(), MembershipError> {
    let bad = |reason| MembershipError::BadAddress {
        field,
        value: value.to_owned(),
        reason,
    };
    if value.contains("://") || value.contains('/') || value.contains(char::is_whitespace) {
        return Err(bad("no scheme, path or spaces"));
    }
    let (host, port) = value.rsplit_once(':').ok_or_else(|| bad("no port"))?;
    if host.is_empty() {
        return Err(bad("no host"));
    }
    match port.parse::<u16>() {
        Ok(p) if p > 0 => Ok(()),
        _ => Err(bad("bad port")),
    }
}

fn check_len(field: &'static str, value: &str, max: usize) -> Result<(), MembershipError> {
    if value.len() > max {
        return Err(MembershipError::TooLong {
            field,
            len: value.len(),
            max,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const TTL: Duration = Duration::from_millis(1000);

    fn req(node: &str, port: u16, incarnation: u64) -> JoinRequest {
        JoinRequest {
            node_id: node.into(),
            grpc_addr: format!("10.0.0.1:{port}"),
            http_addr: format!("10.0.0.1:{}", port + 1000),
            incarnation,
            ..JoinRequest::default()
        }
    }

    fn ids(view: &View) -> Vec<&str> {
        view.members.iter().map(|m| m.node_id.as_str()).collect()
    }

    #[test]
    fn join_adds_members_and_bumps_the_epoch() {
        let t0 = Instant::now();
        let mut m = Membership::new(TTL);
        assert_eq!(m.epoch(), 0);
        let a = m.join(&req("b", 7001, 1), 11, t0).unwrap();
        assert_eq!(
            a,
            JoinOutcome {
                lease_id: 11,
                changed: true,
                epoch: 1
            }
        );
        let b = m.join(&req("a", 7002, 1), 12, t0).unwrap();
        assert_eq!(b.epoch, 2);
        let view = m.view();
        assert_eq!(view.epoch, 2);
        assert_eq!(ids(&view), ["a", "b"]);
        let a = &view.members[0];
        assert_eq!(a.joined_epoch, 2);
        assert_eq!(a.state, MemberState::Active as i32);
        assert_eq!(a.grpc_addr, "10.0.0.1:7002");
        assert_eq!(a.http_addr, "10.0.0.1:8002");
        assert_eq!(view.members[1].joined_epoch, 1);
    }

    #[test]
    fn join_validates_its_input() {
        let t0 = Instant::now();
        let mut m = Membership::new(TTL);
        let mut r = req("", 1, 1);
        assert_eq!(m.join(&r, 1, t0), Err(MembershipError::EmptyNodeId));
        r.node_id = "a".into();
        r.grpc_addr.clear();
        assert_eq!(
            m.join(&r, 1, t0),
            Err(MembershipError::EmptyAddress { field: "grpc_addr" })
        );
        let mut r = req("a", 1, 1);
        r.http_addr.clear();
        assert_eq!(
            m.join(&r, 1, t0),
            Err(MembershipError::EmptyAddress { field: "http_addr" })
        );
        let r = req(&"x".repeat(MAX_NODE_ID_LEN + 1), 1, 1);
        assert!(matches!(
            m.join(&r, 1, t0),
            Err(MembershipError::TooLong {
                field: "node_id",
                ..
            })
        ));
        assert_eq!(m.epoch(), 0);
        assert!(m.is_empty());
    }

    #[test]
    fn rejoin_without_change_keeps_the_epoch_but_renews_the_lease() {
        let t0 = Instant::now();
        let mut m = Membership::new(TTL);
        m.join(&req("a", 7001, 5), 1, t0).unwrap();
        let again = m.join(&req("a", 7001, 5), 2, t0 + TTL / 2).unwrap();
        assert_eq!(
            again,
            JoinOutcome {
                lease_id: 2,
                changed: false,
                epoch: 1
            }
        );
        // The old lease is gone, the new one works and lives from the rejoin.
        assert!(!m.heartbeat("a", 1, Load::sessions(0), t0 + TTL / 2).known);
        assert!(m.reap(t0 + TTL).is_empty());
        assert!(m.heartbeat("a", 2, Load::sessions(0), t0 + TTL).known);
    }

    #[test]
    fn rejoin_with_new_incarnation_or_address_replaces_the_member() {
        let t0 = Instant::now();
        let mut m = Membership::new(TTL);
        m.join(&req("a", 7001, 5), 1, t0).unwrap();
        let out = m.join(&req("a", 7001, 6), 2, t0).unwrap();
        assert!(out.changed);
        assert_eq!(out.epoch, 2);
        let out = m.join(&req("a", 7005, 6), 3, t0).unwrap();
        assert!(out.changed);
        assert_eq!(out.epoch, 3);
        let view = m.view();
        assert_eq!(view.members.len(), 1);
        assert_eq!(view.members[0].incarnation, 6);
        assert_eq!(view.members[0].grpc_addr, "10.0.0.1:7005");
        assert_eq!(view.members[0].joined_epoch, 3);
        assert!(!m.heartbeat("a", 2, Load::sessions(0), t0).known);
        assert!(m.heartbeat("a", 3, Load::sessions(0), t0).known);
    }

    #[test]
    fn heartbeat_keeps_a_member_and_records_sessions() {
        let t0 = Instant::now();
        let mut m = Membership::new(TTL);
        m.join(&req("a", 7001, 1), 9, t0).unwrap();
        let mut t = t0;
        for i in 0..10 {
            t += TTL / 2;
            let hb = m.heartbeat("a", 9, Load::sessions(i), t);
            assert_eq!(
                hb,
                HeartbeatOutcome {
                    known: true,
                    epoch: 1
                }
            );
            assert!(m.reap(t).is_empty());
        }
        let stats = m.stats();
        assert_eq!(stats.len(), 1);
        assert_eq!(stats[0].load.sessions, 9);
        assert_eq!(stats[0].last_heartbeat, Some(t));
        assert!(stats[0].has_lease);
        assert_eq!(m.epoch(), 1);
    }

    #[test]
    fn heartbeats_give_message_rates() {
        let t0 = Instant::now();
        let mut m = Membership::new(TTL);
        m.join(&req("a", 7001, 1), 9, t0).unwrap();
        let load = |messages_in, messages_out| Load {
            sessions: 3,
            polling_sessions: 1,
            websocket_sessions: 2,
            messages_in,
            messages_out,
        };
        let t1 = t0 + TTL / 4;
        assert!(m.heartbeat("a", 9, load(100, 1000), t1).known);
        // One heartbeat: no rate yet.
        assert_eq!(m.stats()[0].rates, None);
        assert_eq!(m.stats()[0].load, load(100, 1000));
        let t2 = t1 + Duration::from_millis(500);
        assert!(m.heartbeat("a", 9, load(150, 1200), t2).known);
        let stats = &m.stats()[0];
        assert_eq!(stats.load, load(150, 1200));
        assert_eq!(
            stats.rates,
            Some(Rates {
                messages_in: 100.0,
                messages_out: 400.0
            })
        );
        // Counters going back are no rate (not the same counting process).
        let t3 = t2 + Duration::from_millis(500);
        assert!(m.heartbeat("a", 9, load(10, 1300), t3).known);
        assert_eq!(m.stats()[0].rates, None);
        // A restarted gateway (new incarnation) starts from nothing.
        m.join(&req("a", 7001, 2), 10, t3).unwrap();
        assert_eq!(m.stats()[0].load, Load::default());
        assert_eq!(m.stats()[0].rates, None);
        assert_eq!(m.stats()[0].last_heartbeat, None);
    }

    #[test]
    fn heartbeat_with_unknown_node_or_lease_is_not_known() {
        let t0 = Instant::now();
        let mut m = Membership::new(TTL);
        assert!(!m.heartbeat("nobody", 1, Load::sessions(0), t0).known);
        m.join(&req("a", 7001, 1), 9, t0).unwrap();
        assert!(!m.heartbeat("a", 8, Load::sessions(0), t0).known);
        // Lapsed but not yet reaped: unknown too.
        assert!(!m.heartbeat("a", 9, Load::sessions(0), t0 + TTL).known);
        assert_eq!(m.epoch(), 1);
    }

    #[test]
    fn a_lapsed_lease_is_reaped() {
        let t0 = Instant::now();
        let mut m = Membership::new(TTL);
        m.join(&req("a", 7001, 1), 1, t0).unwrap();
        m.join(&req("b", 7002, 1), 2, t0).unwrap();
        m.join(&req("c", 7003, 1), 3, t0).unwrap();
        assert!(m.heartbeat("b", 2, Load::sessions(0), t0 + TTL / 2).known);
        assert_eq!(m.next_expiry(), Some(t0 + TTL));
        assert!(m.reap(t0 + TTL - Duration::from_millis(1)).is_empty());
        assert_eq!(m.reap(t0 + TTL), ["a", "c"]);
        // One bump for both.
        assert_eq!(m.epoch(), 4);
        assert_eq!(ids(&m.view()), ["b"]);
        assert!(m.reap(t0 + TTL).is_empty());
        assert_eq!(m.epoch(), 4);
        assert_eq!(m.reap(t0 + TTL / 2 + TTL), ["b"]);
        assert_eq!(m.epoch(), 5);
        assert!(m.is_empty());
    }

    #[test]
    fn leave_removes_at_once_and_is_idempotent() {
        let t0 = Instant::now();
        let mut m = Membership::new(TTL);
        m.join(&req("a", 7001, 1), 1, t0).unwrap();
        m.join(&req("b", 7002, 1), 2, t0).unwrap();
        assert_eq!(
            m.leave("a", 99),
            Err(MembershipError::LeaseMismatch {
                node_id: "a".into(),
                lease_id: 99
            })
        );
        assert_eq!(m.epoch(), 2);
        assert_eq!(
            m.leave("a", 1),
            Ok(LeaveOutcome {
                removed: true,
                epoch: 3
            })
        );
        assert_eq!(ids(&m.view()), ["b"]);
        assert_eq!(
            m.leave("a", 1),
            Ok(LeaveOutcome {
                removed: false,
                epoch: 3
            })
        );
        assert!(!m.heartbeat("a", 1, Load::sessions(0), t0).known);
    }

    #[test]
    fn the_epoch_only_grows() {
        let t0 = Instant::now();
        let mut m = Membership::new(TTL);
        let mut last = m.epoch();
        let mut t = t0;
        for i in 0..50u64 {
            t += Duration::from_millis(100);
            let node = format!("n{}", i % 4);
            match i % 5 {
                0 | 1 => {
                    m.join(&req(&node, 7000, i % 3), i + 1, t).unwrap();
                }
                2 => {
                    m.heartbeat(&node, i, Load::sessions(0), t);
                }
                3 => {
                    let _ = m.leave(&node, i);
                }
                _ => {
                    m.reap(t);
                }
            }
            assert!(m.epoch() >= last);
            assert_eq!(m.view().epoch, m.epoch());
            last = m.epoch();
        }
    }

    #[test]
    fn restore_keeps_members_for_a_grace_ttl() {
        let t0 = Instant::now();
        let mut old = Membership::new(TTL);
        old.join(&req("a", 7001, 1), 1, t0).unwrap();
        old.join(&req("b", 7002, 2), 2, t0).unwrap();
        let stored = old.view();
        assert_eq!(stored.epoch, 2);

        let t1 = t0 + 10 * TTL;
        let mut m = Membership::restore(stored.clone(), TTL, t1);
        // Newer than everything stored, same members.
        assert_eq!(m.epoch(), 3);
        assert_eq!(m.view().members, stored.members);
        assert!(m.stats().iter().all(|s| !s.has_lease));
        // Nothing lapses during the grace period.
        assert!(m.reap(t1 + TTL / 2).is_empty());
        // Old leases are unknown.
        assert!(!m.heartbeat("a", 1, Load::sessions(0), t1).known);
        // Rejoining unchanged: no epoch churn, joined_epoch kept.
        let out = m.join(&req("a", 7001, 1), 5, t1 + TTL / 2).unwrap();
        assert_eq!(
            out,
            JoinOutcome {
                lease_id: 5,
                changed: false,
                epoch: 3
            }
        );
        assert_eq!(m.view().members[0].joined_epoch, 1);
        assert!(m.heartbeat("a", 5, Load::sessions(3), t1 + TTL / 2).known);
        // A restarted gateway (new incarnation) is a change.
        let out = m.join(&req("b", 7002, 3), 6, t1 + TTL / 2).unwrap();
        assert!(out.changed);
        assert_eq!(out.epoch, 4);
        // Stored members that do not join again lapse after the grace TTL.
        let mut m2 = Membership::restore(stored, TTL, t1);
        m2.join(&req("a", 7001, 1), 7, t1).unwrap();
        assert!(m2.heartbeat("a", 7, Load::sessions(0), t1 + TTL / 2).known);
        assert_eq!(m2.reap(t1 + TTL), ["b"]);
        assert_eq!(m2.epoch(), 4);
        assert_eq!(ids(&m2.view()), ["a"]);
    }

    #[test]
    fn restore_of_an_empty_view() {
        let t0 = Instant::now();
        let m = Membership::restore(View::default(), TTL, t0);
        assert_eq!(m.epoch(), 1);
        assert!(m.is_empty());
        assert_eq!(m.next_expiry(), None);
    }
}
