//! The cluster as one gateway sees it: the membership view and the hash
//! ring built from it, the session registry, the other gateways (peers)
//! and the room index. It is the engine's [`Directory`] (where sessions
//! live) and the Socket.IO layer's [`Fabric`] (emits to other nodes).
//!
//! A node alone is the same cluster with one member, no peers and the
//! in-memory registry.

pub mod convert;
mod directory;
mod fabric;
pub mod membership;
pub mod metrics;
pub mod peer;
/// The hash ring, shared with the coordinator (`gateway/ring`).
pub use ringway_ring as ring;
pub mod rooms;
pub mod service;
pub mod store;
mod upkeep;
mod users;

pub use upkeep::{Rewrite, VERIFY_AFTER};

pub use self::directory::ClusterDirectory;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use futures_util::FutureExt;
use ringway_proto::cluster::v1::{Member, MemberState, View};
use tracing::{debug, info, warn};

use crate::store::{Entry, Registry};
use ringway_engineio::{Located, RequestError, Sid};

use ringway_proto::auth::ClusterSecurity;

use self::peer::Peer;
use self::ring::Ring;
use self::rooms::{LocalRooms, RoomIndex};

/// Owners learnt per node are cached up to this many sessions.
const OWNER_CACHE_MAX: usize = 200_000;
/// Attempts to reach a session's owner (registry, moves) per request.
const ROUTE_ATTEMPTS: usize = 4;

pub struct Cluster {
    node_id: String,
    incarnation: u64,
    vnodes: u32,
    registry: Arc<dyn Registry>,
    view: RwLock<Arc<ClusterView>>,
    peers: RwLock<HashMap<String, Arc<Peer>>>,
    rooms: RoomIndex,
    local_rooms: Arc<LocalRooms>,
    /// sid -> owner, learnt from the registry and from moves.
    owners: Mutex<HashMap<Sid, String>>,
    /// Sessions held here, with their epochs (refreshed in the registry).
    local: Mutex<HashMap<Sid, u64>>,
    draining: AtomicBool,
    /// Registered with the coordinator at least once (always, alone).
    joined: AtomicBool,
    /// The registry answered its last health check.
    registry_ok: AtomicBool,
    /// What keeps the registry true between its rare refreshes.
    upkeep: Arc<upkeep::Upkeep>,
    /// The users this node has sockets of, written to the registry.
    users: users::Users,
    /// When this run of the node started (ms since the epoch): its
    /// heartbeat says so, for the recovery window of its sockets.
    started_ms: u64,
    /// How this node authenticates to the others (the cluster credential,
    /// mutual TLS).
    security: ClusterSecurity,
}

/// One membership view and its ring.
pub struct ClusterView {
    pub epoch: u64,
    pub members: Vec<Member>,
    pub ring: Ring,
}

impl Cluster {
    /// `members` is the first view (the node itself when alone).
    pub fn new(
        node_id: &str,
        vnodes: u32,
        registry: Arc<dyn Registry>,
        security: ClusterSecurity,
    ) -> Arc<Cluster> {
        let incarnation = rand::random::<u64>();
        let me = Member {
            node_id: node_id.to_owned(),
            state: MemberState::Active as i32,
            incarnation,
            ..Member::default()
        };
        let view = ClusterView {
            epoch: 0,
            ring: Ring::new([node_id], vnodes),
            members: vec![me],
        };
        Arc::new(Cluster {
            node_id: node_id.to_owned(),
            incarnation,
            vnodes,
            registry,
            view: RwLock::new(Arc::new(view)),
            peers: RwLock::new(HashMap::new()),
            rooms: RoomIndex::default(),
            local_rooms: Arc::new(LocalRooms::default()),
            owners: Mutex::new(HashMap::new()),
            local: Mutex::new(HashMap::new()),
            draining: AtomicBool::new(false),
            joined: AtomicBool::new(false),
            registry_ok: AtomicBool::new(true),
            upkeep: Arc::default(),
            users: users::Users::default(),
            started_ms: ringway_socketio::store::now_ms(),
            security,
        })
    }

    /// Ready for new sessions: in the ring (joined, not draining) and,
    /// in a cluster, the registry answering.
    /// Whether the node serves (`/readyz`): in the view and not
    /// draining. A Redis outage does not take it out (it serves its own
    /// sessions and delivers over gRPC): it is only
    /// [degraded](Cluster::is_degraded).
    pub fn is_ready(&self) -> bool {
        !self.is_draining() && self.joined.load(Ordering::Acquire)
    }

    /// The registry (Redis) did not answer its last health check. The node
    /// still serves: established sessions, cross-node delivery over gRPC,
    /// new sessions (found by the ring, written to the registry when it
    /// answers again); a recovery gets a fresh socket, recoverable emits
    /// go out unlogged.
    pub fn is_degraded(&self) -> bool {
        !self.registry_ok.load(Ordering::Acquire)
    }

    /// Whether this node has been in a coordinator's view (set at once for
    /// a node alone).
    pub fn set_joined(&self) {
        self.joined.store(true, Ordering::Release);
    }

    /// Checks the registry (for readiness) with this node's heartbeat,
    /// checks the entries written [`VERIFY_AFTER`] ago, and asks for a
    /// rewrite of every entry when Redis lost data, answers again, or
    /// refused writes (see `upkeep.rs`). Every second.
    pub async fn check_registry(&self) {
        let beat = self
            .registry
            .heartbeat(&self.node_id, self.started_ms)
            .await;
        let ok = beat.is_ok();
        let was_ok = self.registry_ok.swap(ok, Ordering::AcqRel);
        if was_ok != ok {
            if ok {
                info!("registry (Redis) reachable again: taking new sessions");
            } else {
                warn!("registry (Redis) unreachable: degraded; sessions are served, registry writes wait for Redis, recoveries get fresh sockets and emits go out unlogged until it answers");
            }
        }
        let Ok(kept) = beat else {
            return;
        };
        if let Some(why) = self.upkeep.after_beat(kept, !was_ok) {
            info!(
                reason = why.describe(),
                "writing this node's registry entries and recovery states again"
            );
            crate::metrics::metrics()
                .registry_rewrites
                .add(1, &ringway_telemetry::attr("reason", why.as_str()));
            self.upkeep.request_rewrite();
            return;
        }
        let due: Vec<(Sid, Entry)> = {
            let local = self.local.lock().unwrap_or_else(|e| e.into_inner());
            self.upkeep
                .due(std::time::Instant::now())
                .into_iter()
                // Still here at that epoch: its entry must be there.
                .filter(|(sid, entry)| local.get(sid) == Some(&entry.epoch))
                .collect()
        };
        if due.is_empty() {
            return;
        }
        match self.registry.refresh(due).await {
            Ok(0) => {}
            Ok(rewritten) => warn!(
                rewritten,
                "registry entries lost by Redis after their write (a failover): written again"
            ),
            Err(err) => {
                debug!(%err, "registry check failed");
                self.upkeep.write_failed();
            }
        }
    }

    /// Resolves when this node should write its registry entries and its
    /// live sockets' recovery states again at once (see
    /// [`Cluster::check_registry`]).
    pub async fn rewrite_requested(&self) {
        self.upkeep.rewrite_requested().await;
    }

    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    /// The cluster credential and TLS settings of this node.
    pub fn security(&self) -> &ClusterSecurity {
        &self.security
    }

    pub fn incarnation(&self) -> u64 {
        self.incarnation
    }

    pub fn registry(&self) -> &Arc<dyn Registry> {
        &self.registry
    }

    pub fn view(&self) -> Arc<ClusterView> {
        self.view.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn rooms(&self) -> &RoomIndex {
        &self.rooms
    }

    pub fn session_count(&self) -> usize {
        self.local.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    /// Stops taking new sessions (drain).
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::Release);
    }

    /// The peer of another member.
    pub fn peer_for(&self, node: &str) -> Option<Arc<Peer>> {
        self.peer(node)
    }

    /// The other nodes that have sockets of `user` in `namespace`, from
    /// the registry (users' rooms are not announced); every peer when the
    /// registry does not answer.
    pub async fn user_nodes(&self, namespace: &str, user: &str) -> Vec<String> {
        match self.registry.user_nodes(namespace, user).await {
            Ok(nodes) => {
                let peers = self.peers.read().unwrap_or_else(|e| e.into_inner());
                nodes
                    .into_iter()
                    .filter(|n| peers.contains_key(n))
                    .collect()
            }
            Err(err) => {
                ringway_telemetry::warn_every!(Duration::from_secs(10), %err, "user lookup failed: asking every node");
                self.peer_ids()
            }
        }
    }

    /// Other nodes with members in any of these rooms.
    pub fn room_nodes(&self, namespace: &str, rooms: &[String]) -> Vec<String> {
        self.rooms.nodes_for(namespace, rooms)
    }

    fn peer(&self, node: &str) -> Option<Arc<Peer>> {
        self.peers
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(node)
            .cloned()
    }

    pub fn peer_ids(&self) -> Vec<String> {
        self.peers
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .keys()
            .cloned()
            .collect()
    }

    /// Applies a membership view: rebuilds the ring over the active
    /// members, opens peers for new members and drops departed ones.
    /// Views older than the current one are ignored, unless `fresh`: the
    /// first view of a new coordinator stream is the truth whatever its
    /// epoch (a coordinator that lost unsaved views starts lower).
    pub fn apply_view(&self, view: View, fresh: bool) {
        let current = self.view();
        if view.epoch < current.epoch && !fresh {
            return;
        }
        let mut members = view.members;
        // This node serves on its last view even if the coordinator lost
        // it for a moment; it joins again on its own.
        if !members.iter().any(|m| m.node_id == self.node_id) {
            if let Some(me) = current.members.iter().find(|m| m.node_id == self.node_id) {
                members.push(me.clone());
            }
        }
        let active = members
            .iter()
            .filter(|m| {
                m.state == MemberState::Active as i32
                    && !(m.node_id == self.node_id && self.is_draining())
            })
            .map(|m| m.node_id.as_str());
        let ring = Ring::new(active, self.vnodes);
        {
            let mut peers = self.peers.write().unwrap_or_else(|e| e.into_inner());
            let before: Vec<String> = peers.keys().cloned().collect();
            for member in &members {
                if member.node_id == self.node_id || member.grpc_addr.is_empty() {
                    continue;
                }
                let fresh = peers
                    .get(&member.node_id)
                    .is_none_or(|p| p.addr() != member.grpc_addr);
                if !fresh {
                    continue;
                }
                match Peer::new(
                    &self.node_id,
                    &member.node_id,
                    &member.grpc_addr,
                    self.local_rooms.clone(),
                    &self.security,
                ) {
                    Ok(peer) => {
                        info!(peer = %member.node_id, addr = %member.grpc_addr, "peer added");
                        peers.insert(member.node_id.clone(), peer);
                    }
                    Err(err) => warn!(peer = %member.node_id, %err, "bad peer address"),
                }
            }
            for node in before {
                if !members.iter().any(|m| m.node_id == node) {
                    info!(peer = %node, "peer removed");
                    peers.remove(&node);
                    self.rooms.forget(&node);
                }
            }
        }
        info!(
            epoch = view.epoch,
            members = members.len(),
            ring = ring.members().len(),
            "membership view"
        );
        *self.view.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(ClusterView {
            epoch: view.epoch,
            members,
            ring,
        });
    }

    fn ring_owner(&self, sid: &Sid) -> Option<String> {
        self.view()
            .ring
            .owner_of_sid(sid.as_str())
            .map(str::to_owned)
    }

    fn cached_owner(&self, sid: &Sid) -> Option<String> {
        self.owners
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(sid)
            .cloned()
    }

    fn cache_owner(&self, sid: Sid, node: Option<String>) {
        let mut owners = self.owners.lock().unwrap_or_else(|e| e.into_inner());
        match node {
            Some(node) => {
                if owners.len() >= OWNER_CACHE_MAX {
                    owners.clear();
                }
                owners.insert(sid, node);
            }
            None => {
                owners.remove(&sid);
            }
        }
    }

    /// Where a session lives: the cache, else the registry (one round
    /// trip, then cached), else the ring (a session not registered yet, or
    /// the registry unreachable).
    async fn locate(&self, sid: Sid, use_cache: bool) -> Option<String> {
        if use_cache {
            if let Some(node) = self.cached_owner(&sid) {
                return Some(node);
            }
        }
        match self.registry.get(sid).await {
            Ok(Some(entry)) => {
                self.cache_owner(sid, Some(entry.owner.clone()));
                Some(entry.owner)
            }
            Ok(None) => self.ring_owner(&sid),
            Err(err) => {
                ringway_telemetry::warn_every!(
                    Duration::from_secs(10),
                    %err,
                    "registry lookup failed: trying the ring owner"
                );
                debug!(%sid, %err, "registry lookup failed");
                self.ring_owner(&sid)
            }
        }
    }

    /// Serves a request at the session's owner, following moves and
    /// asking the registry again when a cached owner no longer has it.
    pub async fn route<T, F, Fut>(
        &self,
        sid: Sid,
        hint: Option<String>,
        call: F,
    ) -> Result<T, RequestError>
    where
        F: Fn(Arc<Peer>) -> Fut,
        Fut: std::future::Future<Output = Result<Located<T>, RequestError>>,
    {
        let mut asked_registry = hint.is_none() && self.cached_owner(&sid).is_none();
        let mut target = match hint {
            Some(node) => Some(node),
            None => self.locate(sid, true).await,
        };
        for _ in 0..ROUTE_ATTEMPTS {
            let peer = target
                .as_deref()
                .filter(|node| *node != self.node_id)
                .and_then(|node| self.peer(node));
            let Some(peer) = peer else {
                // Nobody (else) to ask: the session is unknown, unless a
                // fresh registry read says otherwise.
                self.cache_owner(sid, None);
                if asked_registry {
                    return Err(RequestError::UnknownSid);
                }
                asked_registry = true;
                target = self.locate(sid, false).await;
                continue;
            };
            let node = peer.node_id().to_owned();
            match call(peer).await? {
                Located::Served(value) => {
                    // Whatever found it (registry, ring, a move), the next
                    // request goes straight there.
                    if self.cached_owner(&sid).as_deref() != Some(node.as_str()) {
                        self.cache_owner(sid, Some(node));
                    }
                    return Ok(value);
                }
                Located::Moved(node) => {
                    self.cache_owner(sid, Some(node.clone()));
                    target = Some(node);
                }
                Located::Unknown => {
                    self.cache_owner(sid, None);
                    if asked_registry {
                        return Err(RequestError::UnknownSid);
                    }
                    asked_registry = true;
                    target = self.locate(sid, false).await;
                }
            }
        }
        Err(RequestError::UnknownSid)
    }

    /// Keeps the registry entries of live sessions (and of the users with
    /// sockets here) from expiring.
    pub async fn refresh_registry(&self) {
        match self
            .registry
            .refresh_users(self.users.snapshot(&self.node_id))
            .await
        {
            Ok(0) => {}
            Ok(rewritten) => warn!(rewritten, "user entries lost by Redis: written again"),
            Err(err) => warn!(%err, "user entries refresh failed"),
        }
        let entries: Vec<(Sid, Entry)> = self
            .local
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(sid, epoch)| {
                let entry = Entry {
                    owner: self.node_id.clone(),
                    epoch: *epoch,
                };
                (*sid, entry)
            })
            .collect();
        if entries.is_empty() {
            return;
        }
        match self.registry.refresh(entries).await {
            Ok(0) => {}
            Ok(rewritten) => {
                warn!(
                    rewritten,
                    "registry entries lost by Redis (a restart or a failover): written again"
                )
            }
            Err(err) => warn!(%err, "registry refresh failed"),
        }
    }

    fn spawn_registry_write(self: &Arc<Self>, sid: Sid, entry: Entry, remove: bool) {
        let registry = self.registry.clone();
        let cluster = self.clone();
        let mut write = Box::pin(async move {
            let result = if remove {
                registry.remove(sid, entry).await
            } else {
                match registry.put(sid, entry.clone()).await {
                    Ok(true) => {
                        cluster.upkeep.written(sid, entry);
                        Ok(())
                    }
                    Ok(false) => {
                        debug!(%sid, "registry holds a later owner for this session");
                        Ok(())
                    }
                    Err(err) => Err(err),
                }
            };
            if let Err(err) = result {
                cluster.upkeep.write_failed();
                ringway_telemetry::warn_every!(Duration::from_secs(10), %err, "registry write failed");
                debug!(%sid, %err, "registry write failed");
            }
        });
        // The in-memory registry answers at once: no task for it.
        if (&mut write).now_or_never().is_none() {
            tokio::spawn(write);
        }
    }
}

/// How often live sessions' registry entries are refreshed: a third of
/// their TTL.
pub fn refresh_interval(ttl: Duration) -> Duration {
    (ttl / 3).max(Duration::from_millis(100))
}
