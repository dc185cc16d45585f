//! The gateway's side of membership: join the coordinator, hold the lease
//! by heartbeat, apply every view it streams. While the coordinator is
//! away the node keeps serving on its last view and joins again when the
//! coordinator answers.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use ringway_proto::cluster::v1::membership_client::MembershipClient;
use ringway_proto::cluster::v1::{HeartbeatRequest, JoinRequest, LeaveRequest, WatchRequest};
use tokio::sync::watch;
use tonic::transport::{Channel, Endpoint};
use tracing::{info, warn, Instrument};

use super::Cluster;
use crate::telemetry::traced;

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

/// Reads the load at each heartbeat.
pub type LoadSource = Arc<dyn Fn() -> HeartbeatLoad + Send + Sync>;

pub struct MembershipClientTask {
    cluster: Arc<Cluster>,
    coordinator: String,
    registration: Registration,
    load: LoadSource,
    lease: Mutex<Option<u64>>,
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
        })
    }

    fn channel(&self) -> Result<Channel, tonic::transport::Error> {
        let url = if self.coordinator.contains("://") {
            self.coordinator.clone()
        } else {
            format!("http://{}", self.coordinator)
        };
        Ok(Endpoint::from_shared(url)?
            .connect_timeout(Duration::from_secs(1))
            .timeout(CALL_TIMEOUT)
            .connect_lazy())
    }

    /// Joins, heartbeats and watches until `stop` turns true; never
    /// returns early on coordinator failures (it retries with backoff).
    pub async fn run(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let channel = match self.channel() {
            Ok(channel) => channel,
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
            let session = self.clone().session(channel.clone());
            tokio::select! {
                result = session => {
                    match result {
                        Ok(()) => backoff = Duration::from_millis(100),
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
    async fn session(self: Arc<Self>, channel: Channel) -> Result<(), tonic::Status> {
        let mut client = MembershipClient::new(channel);
        let span = tracing::info_span!("membership.join");
        let join = async {
            client
                .join(traced(JoinRequest {
                    node_id: self.cluster.node_id().to_owned(),
                    grpc_addr: self.registration.grpc_addr.clone(),
                    http_addr: self.registration.http_addr.clone(),
                    incarnation: self.cluster.incarnation(),
                }))
                .await
        };
        let reply = join.instrument(span).await?.into_inner();
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
        let Ok(channel) = self.channel() else {
            return;
        };
        let mut client = MembershipClient::new(channel);
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
