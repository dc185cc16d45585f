//! The cluster dashboard: the state of the cluster as the coordinator sees
//! it (members, ring shares, load from heartbeats, recent events), served
//! on the coordinator's HTTP port ([`http`]) as a page, as JSON and as a
//! stream of Server-Sent Events.
//!
//! The HTTP port is up from the start, also while this coordinator waits
//! as a standby: `/healthz` answers, `/readyz` says whether it acts, and
//! the page says it is a standby (it has no view: the acting one holds it).

pub mod http;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use ringway_proto::cluster::v1::{MemberState, View};
use serde::Serialize;
use tokio::sync::watch;

use crate::events::{unix_ms, MembershipEvent};
use crate::service::MembershipHub;
use ringway_ring::{Ring, DEFAULT_VNODES as VNODES};

/// Version of the `/api/state` document (bumped on incompatible changes).
pub const STATE_VERSION: u32 = 1;

/// What this coordinator is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Waiting for the coordinator lock (another coordinator acts).
    Standby,
    /// Holds the lock and serves the Membership service.
    Acting,
    /// Shutting down.
    Stopping,
}

/// Each active member's share of the ring, by node id.
type Shares = Arc<[(String, f64)]>;

/// The dashboard's view of the coordinator; shared by the HTTP handlers.
pub struct Dashboard {
    instance_id: String,
    started_at: SystemTime,
    lease_ttl: Duration,
    heartbeat_interval: Duration,
    hub: OnceLock<Arc<MembershipHub>>,
    grpc_addr: OnceLock<SocketAddr>,
    role: watch::Sender<Role>,
    stop: watch::Receiver<bool>,
    /// Ring shares of the last epoch asked for (a view only changes with
    /// its epoch).
    shares: Mutex<Option<(u64, Shares)>>,
}

impl Dashboard {
    /// A standby dashboard; `stop` turning true means stopping.
    pub fn new(
        instance_id: &str,
        lease_ttl: Duration,
        heartbeat_interval: Duration,
        stop: watch::Receiver<bool>,
    ) -> Arc<Dashboard> {
        Arc::new(Dashboard {
            instance_id: instance_id.to_owned(),
            started_at: SystemTime::now(),
            lease_ttl,
            heartbeat_interval,
            hub: OnceLock::new(),
            grpc_addr: OnceLock::new(),
            role: watch::Sender::new(Role::Standby),
            stop,
            shares: Mutex::new(None),
        })
    }

    /// This coordinator took the lock and serves gRPC on `grpc_addr`.
    pub fn set_acting(&self, hub: Arc<MembershipHub>, grpc_addr: SocketAddr) {
        let _ = self.hub.set(hub);
        let _ = self.grpc_addr.set(grpc_addr);
        self.role.send_replace(Role::Acting);
    }

    pub fn role(&self) -> Role {
        if *self.stop.borrow() {
            Role::Stopping
        } else {
            *self.role.borrow()
        }
    }

    /// Ready: the acting coordinator (holds the lock), serving, not
    /// stopping.
    pub fn is_ready(&self) -> bool {
        self.role() == Role::Acting
    }

    /// The hub, once acting.
    pub fn hub(&self) -> Option<&Arc<MembershipHub>> {
        self.hub.get()
    }

    /// Changes of role (for `/events`).
    pub fn roles(&self) -> watch::Receiver<Role> {
        self.role.subscribe()
    }

    pub fn stop_signal(&self) -> watch::Receiver<bool> {
        self.stop.clone()
    }

    fn ring_shares(&self, view: &View) -> Shares {
        let mut cache = self.shares.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((epoch, shares)) = cache.as_ref() {
            if *epoch == view.epoch {
                return shares.clone();
            }
        }
        let active = view
            .members
            .iter()
            .filter(|m| m.state == MemberState::Active as i32)
            .map(|m| m.node_id.as_str());
        let shares: Shares = Ring::new(active, VNODES).shares().into();
        *cache = Some((view.epoch, shares.clone()));
        shares
    }

    /// The whole state, as `/api/state` and `/events` send it.
    pub fn state(&self) -> State {
        let role = self.role();
        let coordinator = CoordinatorInfo {
            instance_id: self.instance_id.clone(),
            role,
            ready: role == Role::Acting,
            started_at_ms: unix_ms(self.started_at),
            grpc_addr: self.grpc_addr.get().map(ToString::to_string),
            lease_ttl_ms: millis(self.lease_ttl),
            heartbeat_interval_ms: millis(self.heartbeat_interval),
            vnodes: VNODES,
        };
        let generated_at_ms = unix_ms(SystemTime::now());
        let Some(hub) = self.hub.get() else {
            return State {
                version: STATE_VERSION,
                generated_at_ms,
                coordinator,
                epoch: None,
                members: Vec::new(),
                totals: Totals::default(),
                events: Vec::new(),
            };
        };
        let snapshot = hub.snapshot();
        let events = hub.events();
        let shares = self.ring_shares(&snapshot.view);
        let now = Instant::now();
        let members: Vec<MemberInfo> = snapshot
            .view
            .members
            .iter()
            .map(|m| {
                let stats = snapshot.stats.iter().find(|s| s.node_id == m.node_id);
                let load = stats.map(|s| s.load).unwrap_or_default();
                let rates = stats.and_then(|s| s.rates);
                MemberInfo {
                    node_id: m.node_id.clone(),
                    state: state_name(m.state),
                    grpc_addr: m.grpc_addr.clone(),
                    http_addr: m.http_addr.clone(),
                    incarnation: m.incarnation.to_string(),
                    joined_epoch: m.joined_epoch,
                    ring_share: shares
                        .iter()
                        .find(|(node, _)| *node == m.node_id)
                        .map_or(0.0, |(_, share)| *share),
                    sessions: load.sessions,
                    polling_sessions: load.polling_sessions,
                    websocket_sessions: load.websocket_sessions,
                    messages_in: load.messages_in,
                    messages_out: load.messages_out,
                    messages_in_per_sec: rates.map(|r| r.messages_in),
                    messages_out_per_sec: rates.map(|r| r.messages_out),
                    last_heartbeat_ms_ago: stats
                        .and_then(|s| s.last_heartbeat)
                        .map(|t| millis(now.saturating_duration_since(t))),
                    lease_expires_in_ms: stats
                        .map_or(0, |s| millis(s.expires_at.saturating_duration_since(now))),
                    has_lease: stats.is_some_and(|s| s.has_lease),
                }
            })
            .collect();
        let totals = Totals {
            members: members.len(),
            active_members: members.iter().filter(|m| m.state == "active").count(),
            sessions: members.iter().map(|m| m.sessions).sum(),
            polling_sessions: members.iter().map(|m| m.polling_sessions).sum(),
            websocket_sessions: members.iter().map(|m| m.websocket_sessions).sum(),
            messages_in_per_sec: members.iter().filter_map(|m| m.messages_in_per_sec).sum(),
            messages_out_per_sec: members.iter().filter_map(|m| m.messages_out_per_sec).sum(),
        };
        State {
            version: STATE_VERSION,
            generated_at_ms,
            coordinator,
            epoch: Some(snapshot.view.epoch),
            members,
            totals,
            events,
        }
    }
}

/// `/api/state` (see `docs/OPERATIONS.md`, "Dashboard").
#[derive(Debug, Clone, Serialize)]
pub struct State {
    pub version: u32,
    /// When this document was made, ms since the Unix epoch.
    pub generated_at_ms: u64,
    pub coordinator: CoordinatorInfo,
    /// The view's epoch; null on a standby (it has no view).
    pub epoch: Option<u64>,
    /// Sorted by node id.
    pub members: Vec<MemberInfo>,
    pub totals: Totals,
    /// The last membership events (at most 100), newest first.
    pub events: Vec<MembershipEvent>,
}

#[derive(Debug, Clone, Serialize)]
pub struct CoordinatorInfo {
    /// The id it holds the Redis lock with (`<hex>-pid<pid>`).
    pub instance_id: String,
    pub role: Role,
    /// What `/readyz` answers (true: 200).
    pub ready: bool,
    pub started_at_ms: u64,
    /// The gRPC address it serves on (null on a standby).
    pub grpc_addr: Option<String>,
    pub lease_ttl_ms: u64,
    pub heartbeat_interval_ms: u64,
    /// Virtual nodes per member on the gateways' ring.
    pub vnodes: u32,
}

#[derive(Debug, Clone, Serialize)]
pub struct MemberInfo {
    pub node_id: String,
    /// `active`, `draining` or `unspecified`.
    pub state: &'static str,
    pub grpc_addr: String,
    pub http_addr: String,
    /// A u64 as a decimal string (JSON numbers lose precision above 2^53).
    pub incarnation: String,
    pub joined_epoch: u64,
    /// Fraction of the sid hash space it owns on the gateways' ring; 0
    /// when not active. The members' shares sum to 1.
    pub ring_share: f64,
    /// From its last heartbeat (0 before the first).
    pub sessions: u64,
    pub polling_sessions: u64,
    pub websocket_sessions: u64,
    /// Cumulative since the gateway process started.
    pub messages_in: u64,
    pub messages_out: u64,
    /// Per second, between its last two heartbeats (null before two).
    pub messages_in_per_sec: Option<f64>,
    pub messages_out_per_sec: Option<f64>,
    /// Null: no heartbeat since it joined (or since this coordinator
    /// restored it from Redis).
    pub last_heartbeat_ms_ago: Option<u64>,
    pub lease_expires_in_ms: u64,
    /// False for a member restored from Redis that has not joined again.
    pub has_lease: bool,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Totals {
    pub members: usize,
    pub active_members: usize,
    pub sessions: u64,
    pub polling_sessions: u64,
    pub websocket_sessions: u64,
    pub messages_in_per_sec: f64,
    pub messages_out_per_sec: f64,
}

fn state_name(state: i32) -> &'static str {
    match MemberState::try_from(state) {
        Ok(MemberState::Active) => "active",
        Ok(MemberState::Draining) => "draining",
        Ok(MemberState::Unspecified) | Err(_) => "unspecified",
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use ringway_proto::cluster::v1::{HeartbeatRequest, JoinRequest};

    use super::*;
    use crate::membership::Membership;

    fn join(hub: &MembershipHub, node: &str) -> u64 {
        hub.join(&JoinRequest {
            node_id: node.into(),
            grpc_addr: format!("{node}:7100"),
            http_addr: format!("{node}:3000"),
            incarnation: u64::MAX - 1,
            ..JoinRequest::default()
        })
        .expect("join")
        .lease_id
    }

    #[test]
    fn state_of_a_standby_then_of_the_acting_coordinator() {
        let (stop_tx, stop) = watch::channel(false);
        let ttl = Duration::from_secs(5);
        let dash = Dashboard::new("abc-pid1", ttl, Duration::from_secs(1), stop);
        let standby = dash.state();
        assert_eq!(standby.coordinator.role, Role::Standby);
        assert!(!dash.is_ready());
        assert_eq!(standby.epoch, None);
        assert!(standby.members.is_empty());

        let hub = MembershipHub::new(Membership::new(ttl), Duration::from_secs(1));
        let lease = join(&hub, "n1");
        join(&hub, "n2");
        join(&hub, "n3");
        hub.heartbeat(&HeartbeatRequest {
            node_id: "n1".into(),
            lease_id: lease,
            sessions: 5,
            polling_sessions: 2,
            websocket_sessions: 3,
            messages_in: 10,
            messages_out: 20,
        });
        dash.set_acting(hub.clone(), "127.0.0.1:7000".parse().unwrap());
        assert!(dash.is_ready());
        let state = dash.state();
        assert_eq!(state.epoch, Some(3));
        assert_eq!(
            state.coordinator.grpc_addr.as_deref(),
            Some("127.0.0.1:7000")
        );
        let ids: Vec<&str> = state.members.iter().map(|m| m.node_id.as_str()).collect();
        assert_eq!(ids, ["n1", "n2", "n3"]);
        let expected = Ring::new(["n1", "n2", "n3"], VNODES).shares();
        for (member, (node, share)) in state.members.iter().zip(&expected) {
            assert_eq!(&member.node_id, node);
            assert_eq!(member.ring_share, *share);
        }
        let n1 = &state.members[0];
        assert_eq!(n1.incarnation, (u64::MAX - 1).to_string());
        assert_eq!(
            (n1.sessions, n1.polling_sessions, n1.websocket_sessions),
            (5, 2, 3)
        );
        assert_eq!(n1.messages_in_per_sec, None);
        assert!(n1.last_heartbeat_ms_ago.is_some());
        assert!(state.members[1].last_heartbeat_ms_ago.is_none());
        assert_eq!(state.totals.sessions, 5);
        assert_eq!(state.totals.active_members, 3);
        assert_eq!(state.events.len(), 3);

        let json = serde_json::to_value(&state).expect("serializable");
        assert_eq!(json["coordinator"]["role"], "acting");
        assert_eq!(json["members"][0]["state"], "active");
        assert!(json["members"][0]["messages_in_per_sec"].is_null());
        assert_eq!(json["events"][0]["kind"], "join");
        assert_eq!(json["events"][0]["node_id"], "n3");

        stop_tx.send_replace(true);
        assert_eq!(dash.role(), Role::Stopping);
        assert!(!dash.is_ready());
    }
}
