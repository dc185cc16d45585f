//! The gateway's side of membership: join the coordinator, hold the lease
//! by heartbeat, apply every view it streams. While the coordinator is
//! away the node keeps serving on its last view and joins again when the
//! coordinator answers.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use ringway_proto::auth::Signer;
use ringway_proto::cluster::v1::membership_client::MembershipClient;
use ringway_proto::cluster::v1::{HeartbeatRequest, JoinRequest, LeaveRequest, WatchRequest};
use tokio::sync::watch;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use tracing::{info, warn, Instrument};

use super::Cluster;
use ringway_telemetry::traced;

/// Bound of each call to the coordinator.
const CALL_TIMEOUT: Duration = Duration::from_secs(2);

/// How this node presents itself.
#[derive(Debug, Clone)]
pub struct Registration {
    pub grpc_addr: String,
    pub http_addr: String,
}

/// What each heartbeat reports besides the session count (for the
/// coordinator's dashboard).
#[derive(Debug, Clone, Copy, Default)]
pub struct HeartbeatLoad {
    pub polling_sessions: u64,
    pub websocket_sessions: u64,
    /// Cumulative since the process started.
    pub messages_in: u64,
    pub messages_out: u64,
}

/// A client of the coordinator: every call signed with the cluster
/// credential.
type Coordinator = MembershipClient<InterceptedService<Channel, Signer>>;

/// Reads the load at each heartbeat.
pub type LoadSource = Arc<dyn Fn() -> HeartbeatLoad + Send + Sync>;

pub struct MembershipClientTask {
    cluster: Arc<Cluster>,
    coordinator: String,
    registration: Registration,
    load: LoadSource,
    lease: Mutex<Option<u64>>,
    /// The proof of this node's membership (the coordinator's
    /// `member_token`), for joining again while the old membership lives.
    proof: Mutex<bytes::Bytes>,
}

impl MembershipClientTask {
    pub fn new(
        cluster: Arc<Cluster>,
        coordinator: &str,
        registration: Registration,
        load: LoadSource,
    ) -> Arc<Self> {
        Arc::new(MembershipClientTask {
            cluster,
            coordinator: coordinator.to_owned(),
            registration,
            load,
            lease: Mutex::new(None),
            proof: Mutex::new(bytes::Bytes::new()),
        })
    }

    fn client(&self) -> Result<Coordinator, tonic::transport::Error> {
        let security = self.cluster.security();
        let channel = security
            .endpoint(&self.coordinator)?
            .connect_timeout(Duration::from_secs(1))
            .timeout(CALL_TIMEOUT)
            .connect_lazy();
        Ok(MembershipClient::with_interceptor(
            channel,
            security.signer(),
        ))
    }

    /// Joins, heartbeats and watches until `stop` turns true; never
    /// returns early on coordinator failures (it retries with backoff).
    pub async fn run(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let client = match self.client() {
            Ok(client) => client,
            Err(err) => {
                warn!(%err, coordinator = %self.coordinator, "bad coordinator address");
                return;
            }
        };
        let mut backoff = Duration::from_millis(100);
        loop {
            if *stop.borrow() {
                return;
            }
            let session = self.clone().session(client.clone());
            tokio::select! {
                result = session => {
                    match result {
                        Ok(()) => backoff = Duration::from_millis(100),
                        Err(err) if err.code() == tonic::Code::AlreadyExists => {
                            warn!(%err, "this node id is a live member without our proof (an earlier process?): joining once its lease lapses");
                        }
                        Err(err) if matches!(err.code(), tonic::Code::Unauthenticated | tonic::Code::PermissionDenied) => {
                            warn!(%err, coordinator = %self.coordinator, "the coordinator refused our cluster credential: check --cluster-secret-file / --cluster-tls-*");
                        }
                        Err(err) => {
                            warn!(%err, coordinator = %self.coordinator, "coordinator unreachable: serving on the last view");
                        }
                    }
                }
                _ = stop.wait_for(|s| *s) => return,
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(2));
        }
    }

    /// One registration: join, then heartbeat and watch until the lease is
    /// lost (`Ok`, join again at once) or the coordinator fails (`Err`).
    async fn session(self: Arc<Self>, mut client: Coordinator) -> Result<(), tonic::Status> {
        let span = tracing::info_span!("membership.join");
        let proof = self.proof.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let join = async {
            client
                .join(traced(JoinRequest {
                    node_id: self.cluster.node_id().to_owned(),
                    grpc_addr: self.registration.grpc_addr.clone(),
                    http_addr: self.registration.http_addr.clone(),
                    incarnation: self.cluster.incarnation(),
                    proof,
                }))
                .await
        };
        let reply = join.instrument(span).await?.into_inner();
        *self.proof.lock().unwrap_or_else(|e| e.into_inner()) = reply.member_token.clone();
        info!(lease = reply.lease_id, "joined the cluster");
        self.cluster.set_joined();
        *self.lease.lock().unwrap_or_else(|e| e.into_inner()) = Some(reply.lease_id);
        if let Some(view) = reply.view {
            self.cluster.apply_view(view, true);
        }
        let interval = Duration::from_millis(u64::from(reply.heartbeat_interval_ms.max(50)));
        let mut watch_client = client.clone();
        let cluster = self.cluster.clone();
        let node_id = self.cluster.node_id().to_owned();
        let watching = async move {
            let mut stream = watch_client
                .watch(WatchRequest { node_id })
                .await?
                .into_inner();
            let mut fresh = true;
            while let Some(view) = stream.message().await? {
                cluster.apply_view(view, fresh);
                fresh = false;
            }
            Err::<(), _>(tonic::Status::unavailable("membership stream ended"))
        };
        let heartbeats = async {
            let mut ticker = tokio::time::interval(interval);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticker.tick().await;
                let load = (self.load)();
                let beat = client
                    .heartbeat(HeartbeatRequest {
                        node_id: self.cluster.node_id().to_owned(),
                        lease_id: reply.lease_id,
                        sessions: self.cluster.session_count() as u64,
                        polling_sessions: load.polling_sessions,
                        websocket_sessions: load.websocket_sessions,
                        messages_in: load.messages_in,
                        messages_out: load.messages_out,
                    })
                    .await?
                    .into_inner();
                if !beat.known {
                    info!("lease lost: joining again");
                    return Ok::<(), tonic::Status>(());
                }
            }
        };
        tokio::select! {
            result = watching => result,
            result = heartbeats => result,
        }
    }

    /// Leaves the cluster (drain): the coordinator drops this node from
    /// the view at once.
    pub async fn leave(&self) {
        let lease = self.lease.lock().unwrap_or_else(|e| e.into_inner()).take();
        let Some(lease_id) = lease else {
            return;
        };
        let Ok(mut client) = self.client() else {
            return;
        };
        let request = LeaveRequest {
            node_id: self.cluster.node_id().to_owned(),
            lease_id,
        };
        let span = tracing::info_span!("membership.leave");
        let leave = async { client.leave(traced(request)).await };
        match tokio::time::timeout(CALL_TIMEOUT, leave.instrument(span)).await {
            Ok(Ok(_)) => info!("left the cluster"),
            Ok(Err(err)) => warn!(%err, "leave failed"),
            Err(_) => warn!("leave timed out"),
        }
    }
}
