//! The gRPC `Membership` service over a shared [`Membership`].
//!
//! [`MembershipHub`] owns the state machine and a `tokio::sync::watch`
//! channel of views: every change is published at once, to the `Watch`
//! streams and to whoever else subscribes (the persister, the dashboard).
//! It also keeps the recent membership events ([`crate::events`]). It does
//! no I/O, so it can also be served in-process without Redis (tests,
//! tools).

use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use ringway_proto::auth::{member_token, same_bytes, Caller};
use ringway_proto::cluster::v1::membership_server::{self, MembershipServer};
use ringway_proto::cluster::v1::{
    HeartbeatReply, HeartbeatRequest, JoinReply, JoinRequest, LeaveReply, LeaveRequest, Member,
    View, WatchRequest,
};
use tokio::sync::watch;
use tokio_stream::wrappers::WatchStream;
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status};
use tracing::{debug, info, warn};

use crate::events::{EventKind, EventLog, MembershipEvent};
use crate::membership::{Load, MemberStats, Membership, MembershipError};
use crate::telemetry::rpc_done;

/// The membership state shared by the RPCs, the reaper, the persister and
/// the dashboard.
#[derive(Debug)]
pub struct MembershipHub {
    state: Mutex<Membership>,
    /// Signs the members' proofs of membership (`member_token`).
    member_key: [u8; 32],
    /// Most members in the view.
    max_members: usize,
    /// Written with `state` locked (so in epoch order), read alone.
    events: Mutex<EventLog>,
    views: watch::Sender<View>,
    heartbeat_interval: Duration,
}

/// The view and every member's bookkeeping, taken at one instant.
#[derive(Debug, Clone)]
pub struct HubSnapshot {
    pub view: View,
    /// Sorted by node id, like the view's members.
    pub stats: Vec<MemberStats>,
    pub lease_ttl: Duration,
    pub heartbeat_interval: Duration,
}

impl MembershipHub {
    /// A hub with a random member key (proofs do not outlive it) and no
    /// limit on members: tests and tools.
    pub fn new(membership: Membership, heartbeat_interval: Duration) -> Arc<Self> {
        Self::with_limits(membership, heartbeat_interval, rand::random(), usize::MAX)
    }

    /// A hub whose proofs of membership are signed with `member_key` (kept
    /// in Redis, so they hold across coordinator restarts), with at most
    /// `max_members` members.
    pub fn with_limits(
        membership: Membership,
        heartbeat_interval: Duration,
        member_key: [u8; 32],
        max_members: usize,
    ) -> Arc<Self> {
        let (views, _) = watch::channel(membership.view());
        Arc::new(MembershipHub {
            state: Mutex::new(membership),
            member_key,
            max_members,
            events: Mutex::new(EventLog::default()),
            views,
            heartbeat_interval,
        })
    }

    fn lock(&self) -> MutexGuard<'_, Membership> {
        // The state machine has no invariant a panic could break halfway
        // that matters more than staying up.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn lock_events(&self) -> MutexGuard<'_, EventLog> {
        self.events.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records an event at `epoch` (callers that change the view hold the
    /// state lock, so events are in epoch order).
    fn push_event(&self, kind: EventKind, node_id: Option<&str>, epoch: u64, detail: String) {
        crate::telemetry::metrics()
            .events
            .add(1, &ringway_telemetry::attr("kind", kind.as_str()));
        self.lock_events()
            .push(kind, node_id, epoch, detail, SystemTime::now());
    }

    /// Records an event at the current epoch (e.g. the coordinator's start).
    pub fn record(&self, kind: EventKind, node_id: Option<&str>, detail: String) {
        let m = self.lock();
        self.push_event(kind, node_id, m.epoch(), detail);
    }

    /// The recent membership events, newest first.
    pub fn events(&self) -> Vec<MembershipEvent> {
        self.lock_events().recent()
    }

    /// The view and the members' bookkeeping, consistent with each other.
    pub fn snapshot(&self) -> HubSnapshot {
        let m = self.lock();
        HubSnapshot {
            view: m.view(),
            stats: m.stats(),
            lease_ttl: m.lease_ttl(),
            heartbeat_interval: self.heartbeat_interval,
        }
    }

    /// Publishes the view; called with the lock held so views go out in
    /// epoch order.
    fn publish(&self, membership: &Membership) {
        self.views.send_replace(membership.view());
    }

    /// Receives the current view, then every new one.
    pub fn subscribe(&self) -> watch::Receiver<View> {
        self.views.subscribe()
    }

    pub fn view(&self) -> View {
        self.views.borrow().clone()
    }

    pub fn epoch(&self) -> u64 {
        self.views.borrow().epoch
    }

    /// Per-member bookkeeping (session counts, last heartbeats).
    pub fn stats(&self) -> Vec<MemberStats> {
        self.lock().stats()
    }

    pub fn heartbeat_interval(&self) -> Duration {
        self.heartbeat_interval
    }

    pub fn join(&self, request: &JoinRequest) -> Result<JoinReply, MembershipError> {
        let lease_id = new_lease_id();
        let mut m = self.lock();
        let before = m.member(&request.node_id).cloned();
        match &before {
            // A live member's place is taken only by who proves it holds
            // it (the same process joining again).
            Some(live) => {
                let expected = member_token(&self.member_key, &live.node_id, live.incarnation);
                if !same_bytes(&request.proof, &expected) {
                    return Err(MembershipError::NotTheMember {
                        node_id: request.node_id.clone(),
                    });
                }
            }
            None if m.len() >= self.max_members => {
                return Err(MembershipError::Full {
                    max: self.max_members,
                })
            }
            None => {}
        }
        let out = m.join(request, lease_id, Instant::now())?;
        if out.changed {
            self.publish(&m);
            let (kind, detail) = join_event(before.as_ref(), request);
            self.push_event(kind, Some(&request.node_id), out.epoch, detail);
            info!(
                node_id = %request.node_id,
                grpc_addr = %request.grpc_addr,
                http_addr = %request.http_addr,
                incarnation = request.incarnation,
                epoch = out.epoch,
                members = m.len(),
                "member joined"
            );
        } else {
            info!(node_id = %request.node_id, epoch = out.epoch, "member re-joined unchanged");
        }
        Ok(JoinReply {
            lease_id: out.lease_id,
            lease_ttl_ms: millis_u32(m.lease_ttl()),
            heartbeat_interval_ms: millis_u32(self.heartbeat_interval),
            view: Some(m.view()),
            member_token: member_token(&self.member_key, &request.node_id, request.incarnation)
                .to_vec()
                .into(),
        })
    }

    pub fn heartbeat(&self, request: &HeartbeatRequest) -> HeartbeatReply {
        let load = Load {
            sessions: request.sessions,
            polling_sessions: request.polling_sessions,
            websocket_sessions: request.websocket_sessions,
            messages_in: request.messages_in,
            messages_out: request.messages_out,
        };
        let out = self
            .lock()
            .heartbeat(&request.node_id, request.lease_id, load, Instant::now());
        if out.known {
            debug!(node_id = %request.node_id, sessions = request.sessions, "heartbeat");
        } else {
            info!(node_id = %request.node_id, lease_id = request.lease_id, "heartbeat for an unknown lease");
        }
        HeartbeatReply {
            known: out.known,
            epoch: out.epoch,
        }
    }

    pub fn leave(&self, request: &LeaveRequest) -> Result<LeaveReply, MembershipError> {
        let mut m = self.lock();
        let out = m.leave(&request.node_id, request.lease_id)?;
        if out.removed {
            self.publish(&m);
            self.push_event(
                EventKind::Leave,
                Some(&request.node_id),
                out.epoch,
                "left the cluster (drain)".to_owned(),
            );
            info!(node_id = %request.node_id, epoch = out.epoch, members = m.len(), "member left");
        }
        Ok(LeaveReply { epoch: out.epoch })
    }

    /// Removes the members whose lease lapsed; returns their ids.
    pub fn reap(&self, now: Instant) -> Vec<String> {
        let mut m = self.lock();
        let lapsed = m.reap(now);
        if !lapsed.is_empty() {
            self.publish(&m);
            let detail = format!(
                "no heartbeat for a lease TTL ({} ms)",
                m.lease_ttl().as_millis()
            );
            for node in &lapsed {
                self.push_event(EventKind::Lapse, Some(node), m.epoch(), detail.clone());
            }
            warn!(nodes = ?lapsed, epoch = m.epoch(), members = m.len(), "leases lapsed, members removed");
        }
        lapsed
    }
}

/// Names a join that changed the view: new member, restarted process
/// (new incarnation) or new addresses/state.
fn join_event(before: Option<&Member>, request: &JoinRequest) -> (EventKind, String) {
    let addrs = format!("grpc {}, http {}", request.grpc_addr, request.http_addr);
    match before {
        None => (
            EventKind::Join,
            format!("{addrs}, incarnation {}", request.incarnation),
        ),
        Some(old) if old.incarnation != request.incarnation => (
            EventKind::Restart,
            format!(
                "new incarnation {} (was {}); {addrs}",
                request.incarnation, old.incarnation
            ),
        ),
        Some(old) => (
            EventKind::Update,
            format!(
                "{addrs} (was grpc {}, http {})",
                old.grpc_addr, old.http_addr
            ),
        ),
    }
}

/// Reaps lapsed leases every `every` until `shutdown` turns true.
pub async fn reap_loop(
    hub: Arc<MembershipHub>,
    every: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stopped(&mut shutdown) => return,
            _ = tick.tick() => {
                hub.reap(Instant::now());
            }
        }
    }
}

/// Resolves once `flag` is true (or its sender is gone).
pub async fn stopped(flag: &mut watch::Receiver<bool>) {
    let _ = flag.wait_for(|stop| *stop).await;
}

fn new_lease_id() -> u64 {
    loop {
        let id: u64 = rand::random();
        // 0 is what a gateway without a lease sends.
        if id != 0 {
            return id;
        }
    }
}

fn millis_u32(d: Duration) -> u32 {
    u32::try_from(d.as_millis()).unwrap_or(u32::MAX)
}

fn status(err: MembershipError) -> Status {
    match err {
        MembershipError::EmptyNodeId
        | MembershipError::EmptyAddress { .. }
        | MembershipError::BadAddress { .. }
        | MembershipError::TooLong { .. } => Status::invalid_argument(err.to_string()),
        MembershipError::LeaseMismatch { .. } => Status::failed_precondition(err.to_string()),
        MembershipError::NotTheMember { .. } => Status::already_exists(err.to_string()),
        MembershipError::Full { .. } => Status::resource_exhausted(err.to_string()),
    }
}

/// The tonic implementation of `ringway.cluster.v1.Membership`.
#[derive(Debug, Clone)]
pub struct MembershipService {
    hub: Arc<MembershipHub>,
    shutdown: watch::Receiver<bool>,
}

impl MembershipService {
    /// `shutdown` turning true ends the open `Watch` streams, so a
    /// graceful server shutdown does not wait for them forever.
    pub fn new(hub: Arc<MembershipHub>, shutdown: watch::Receiver<bool>) -> Self {
        MembershipService { hub, shutdown }
    }

    pub fn into_server(self) -> MembershipServer<Self> {
        MembershipServer::new(self)
    }
}

type ViewStream = Pin<Box<dyn Stream<Item = Result<View, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl membership_server::Membership for MembershipService {
    async fn join(&self, request: Request<JoinRequest>) -> Result<Response<JoinReply>, Status> {
        let span = tracing::info_span!("coordinator.join", node = %request.get_ref().node_id);
        ringway_telemetry::continue_trace(&request, &span);
        let _entered = span.enter();
        let started = Instant::now();
        let result = Caller::of(&request)
            .check_acts_as(&request.get_ref().node_id, "node_id")
            .and_then(|()| self.hub.join(request.get_ref()).map_err(status));
        rpc_done("join", started, &result);
        result.map(Response::new)
    }

    async fn heartbeat(
        &self,
        request: Request<HeartbeatRequest>,
    ) -> Result<Response<HeartbeatReply>, Status> {
        // Every member, every interval: timed, but its span is at debug
        // (not exported by default).
        let span = tracing::debug_span!("coordinator.heartbeat", node = %request.get_ref().node_id);
        ringway_telemetry::continue_trace(&request, &span);
        let _entered = span.enter();
        let started = Instant::now();
        let result = Caller::of(&request)
            .check_acts_as(&request.get_ref().node_id, "node_id")
            .map(|()| self.hub.heartbeat(request.get_ref()));
        rpc_done("heartbeat", started, &result);
        result.map(Response::new)
    }

    async fn leave(&self, request: Request<LeaveRequest>) -> Result<Response<LeaveReply>, Status> {
        let span = tracing::info_span!("coordinator.leave", node = %request.get_ref().node_id);
        ringway_telemetry::continue_trace(&request, &span);
        let _entered = span.enter();
        let started = Instant::now();
        let result = Caller::of(&request)
            .check_acts_as(&request.get_ref().node_id, "node_id")
            .and_then(|()| self.hub.leave(request.get_ref()).map_err(status));
        rpc_done("leave", started, &result);
        result.map(Response::new)
    }

    type WatchStream = ViewStream;

    async fn watch(
        &self,
        request: Request<WatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let started = Instant::now();
        // Cloned before the check: a shutdown after it is still seen below.
        let shutdown = self.shutdown.clone();
        if *shutdown.borrow() {
            let refused = Err(Status::unavailable("the coordinator is shutting down"));
            rpc_done("watch", started, &refused);
            return refused;
        }
        rpc_done("watch", started, &Ok(()));
        let watcher = request.into_inner().node_id;
        info!(watcher = %watcher, epoch = self.hub.epoch(), "watch opened");
        // Views as Some(view); shutdown as one None that ends the stream.
        // Nothing is spawned: when the client goes away tonic drops the
        // stream and with it both receivers.
        let views = WatchStream::new(self.hub.subscribe()).map(Some);
        let stop = WatchStream::from_changes(shutdown)
            .filter(|stop| *stop)
            .map(|_| None);
        let stream = views
            .merge(stop)
            .map_while(|item: Option<View>| item)
            .map(Ok);
        Ok(Response::new(Box::pin(stream)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use membership_server::Membership as _;
    use ringway_proto::cluster::v1::MemberState;

    const TTL: Duration = Duration::from_millis(1000);
    const INTERVAL: Duration = Duration::from_millis(200);
    const WAIT: Duration = Duration::from_secs(10);

    fn req(node: &str) -> JoinRequest {
        JoinRequest {
            node_id: node.into(),
            grpc_addr: "127.0.0.1:7001".into(),
            http_addr: "127.0.0.1:3000".into(),
            incarnation: 1,
            ..JoinRequest::default()
        }
    }

    async fn next(stream: &mut ViewStream) -> Option<View> {
        tokio::time::timeout(WAIT, stream.next())
            .await
            .expect("a stream item in time")
            .map(|r| r.expect("a view"))
    }

    #[test]
    fn a_live_member_is_replaced_only_with_its_proof() {
        let key = [9u8; 32];
        let hub = MembershipHub::with_limits(Membership::new(TTL), INTERVAL, key, 2);
        let a = hub.join(&req("a")).expect("join");
        // Someone else's claim to the id: refused, and the view is as it was.
        let mut intruder = req("a");
        intruder.grpc_addr = "10.6.6.6:7100".into();
        intruder.incarnation = 66;
        for proof in [vec![], vec![0u8; 32], a.member_token[..31].to_vec()] {
            intruder.proof = proof.into();
            assert!(matches!(
                hub.join(&intruder),
                Err(MembershipError::NotTheMember { .. })
            ));
        }
        assert_eq!(hub.view().members[0].grpc_addr, "127.0.0.1:7001");
        // A proof is bound to the node id and the incarnation it was for.
        let b = hub.join(&req("b")).expect("join b");
        intruder.proof = b.member_token;
        assert!(hub.join(&intruder).is_err());
        // A proof survives the hub (the key lives in Redis).
        let restarted = MembershipHub::with_limits(
            Membership::restore(hub.view(), TTL, Instant::now()),
            INTERVAL,
            key,
            2,
        );
        let mut again = req("a");
        again.proof = a.member_token;
        restarted
            .join(&again)
            .expect("the member itself, after a restart");
        // Full: new ids are refused, members may still rejoin.
        assert!(matches!(
            restarted.join(&req("c")),
            Err(MembershipError::Full { max: 2 })
        ));
        // Addresses must be host:port.
        let mut bad = req("d");
        bad.grpc_addr = "http://127.0.0.1:7101".into();
        assert!(matches!(
            MembershipHub::new(Membership::new(TTL), INTERVAL).join(&bad),
            Err(MembershipError::BadAddress { .. })
        ));
    }

    #[tokio::test]
    async fn watch_streams_views_and_ends_on_shutdown() {
        let hub = MembershipHub::new(Membership::new(TTL), INTERVAL);
        let (stop_tx, stop_rx) = watch::channel(false);
        let svc = MembershipService::new(hub.clone(), stop_rx);
        let mut stream = svc
            .watch(Request::new(WatchRequest::default()))
            .await
            .expect("watch")
            .into_inner();
        assert_eq!(next(&mut stream).await.map(|v| v.epoch), Some(0));
        let reply = svc.join(Request::new(req("a"))).await.expect("join");
        let reply = reply.into_inner();
        assert_eq!(reply.lease_ttl_ms, 1000);
        assert_eq!(reply.heartbeat_interval_ms, 200);
        let view = next(&mut stream).await.expect("a view");
        assert_eq!(view.epoch, 1);
        assert_eq!(view.members[0].state, MemberState::Active as i32);

        // A dropped stream releases its receiver (nothing left behind).
        assert_eq!(hub.views.receiver_count(), 1);
        drop(stream);
        assert_eq!(hub.views.receiver_count(), 0);

        let mut stream = svc
            .watch(Request::new(WatchRequest::default()))
            .await
            .expect("watch")
            .into_inner();
        assert_eq!(next(&mut stream).await.map(|v| v.epoch), Some(1));
        stop_tx.send_replace(true);
        assert_eq!(next(&mut stream).await, None);
        let refused = svc.watch(Request::new(WatchRequest::default())).await;
        assert_eq!(
            refused.err().map(|s| s.code()),
            Some(tonic::Code::Unavailable)
        );
    }

    #[tokio::test]
    async fn rpc_errors_map_to_grpc_codes() {
        let hub = MembershipHub::new(Membership::new(TTL), INTERVAL);
        let (_stop_tx, stop_rx) = watch::channel(false);
        let svc = MembershipService::new(hub.clone(), stop_rx);
        let err = svc.join(Request::new(req(""))).await.expect_err("empty id");
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
        let lease = svc
            .join(Request::new(req("a")))
            .await
            .expect("join")
            .into_inner()
            .lease_id;
        assert_ne!(lease, 0);
        let err = svc
            .leave(Request::new(LeaveRequest {
                node_id: "a".into(),
                lease_id: lease ^ 1,
            }))
            .await
            .expect_err("wrong lease");
        assert_eq!(err.code(), tonic::Code::FailedPrecondition);
        let hb = svc
            .heartbeat(Request::new(HeartbeatRequest {
                node_id: "a".into(),
                lease_id: lease,
                sessions: 42,
                polling_sessions: 40,
                websocket_sessions: 2,
                messages_in: 7,
                messages_out: 9,
            }))
            .await
            .expect("heartbeat")
            .into_inner();
        assert!(hb.known);
        let load = hub.stats()[0].load;
        assert_eq!(
            load,
            Load {
                sessions: 42,
                polling_sessions: 40,
                websocket_sessions: 2,
                messages_in: 7,
                messages_out: 9
            }
        );
        let left = svc
            .leave(Request::new(LeaveRequest {
                node_id: "unknown".into(),
                lease_id: 1,
            }))
            .await
            .expect("idempotent")
            .into_inner();
        assert_eq!(left.epoch, 1);
    }

    #[test]
    fn view_changes_are_recorded_as_events() {
        let hub = MembershipHub::new(Membership::new(TTL), INTERVAL);
        hub.record(EventKind::Start, None, "started".into());
        let first = hub.join(&req("a")).expect("join");
        // Unchanged: no event. A live member's id joins again only with
        // its proof.
        assert!(matches!(
            hub.join(&req("a")),
            Err(MembershipError::NotTheMember { .. })
        ));
        let mut again = req("a");
        again.proof = first.member_token.clone();
        let a = hub.join(&again).expect("rejoin").lease_id;
        let mut restarted = again.clone();
        restarted.incarnation = 2;
        let restart = hub.join(&restarted).expect("restart");
        let mut moved = restarted.clone();
        moved.proof = restart.member_token;
        moved.http_addr = "127.0.0.1:3001".into();
        let a2 = hub.join(&moved).expect("update").lease_id;
        assert_ne!(a, a2);
        hub.leave(&LeaveRequest {
            node_id: "a".into(),
            lease_id: a2,
        })
        .expect("leave");
        hub.join(&req("b")).expect("join b");
        hub.join(&req("c")).expect("join c");
        assert_eq!(hub.reap(Instant::now() + TTL), ["b", "c"]);

        let events = hub.events();
        let got: Vec<(EventKind, Option<&str>, u64)> = events
            .iter()
            .map(|e| (e.kind, e.node_id.as_deref(), e.epoch))
            .collect();
        use EventKind::*;
        assert_eq!(
            got,
            [
                (Lapse, Some("c"), 7),
                (Lapse, Some("b"), 7),
                (Join, Some("c"), 6),
                (Join, Some("b"), 5),
                (Leave, Some("a"), 4),
                (Update, Some("a"), 3),
                (Restart, Some("a"), 2),
                (Join, Some("a"), 1),
                (Start, None, 0),
            ]
        );
        let ids: Vec<u64> = events.iter().map(|e| e.id).collect();
        assert!(ids.windows(2).all(|w| w[0] == w[1] + 1), "{ids:?}");
        assert!(events[6].detail.contains("new incarnation 2 (was 1)"));
        assert!(events[5].detail.contains("http 127.0.0.1:3001"));
        let snap = hub.snapshot();
        assert_eq!(snap.view.epoch, 7);
        assert!(snap.stats.is_empty());
        assert_eq!(snap.lease_ttl, TTL);
    }

    #[tokio::test]
    async fn the_reaper_publishes_lapses() {
        let hub = MembershipHub::new(Membership::new(Duration::from_millis(100)), INTERVAL);
        let mut views = hub.subscribe();
        hub.join(&req("a")).expect("join");
        let (stop_tx, stop_rx) = watch::channel(false);
        let reaper = tokio::spawn(reap_loop(hub.clone(), Duration::from_millis(20), stop_rx));
        let view = tokio::time::timeout(WAIT, views.wait_for(|v| v.epoch == 2))
            .await
            .expect("lapse in time")
            .expect("hub alive")
            .clone();
        assert!(view.members.is_empty());
        stop_tx.send_replace(true);
        tokio::time::timeout(WAIT, reaper)
            .await
            .expect("the reaper stops")
            .expect("no panic");
    }
}
