//! One gateway node as a library: the listeners, the cluster parts and
//! the background tasks of a [`Config`], started with [`Node::start`] and
//! drained and stopped with [`RunningNode::shutdown`]. The binary is this
//! with its signals, telemetry and exit codes; tests run nodes in-process
//! with it where one process is enough (real sockets all the same).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use ringway_proto::auth::{ClusterSecret, ClusterSecurity, ClusterTls};
use ringway_proto::cluster::v1::node_server::NodeServer;
use ringway_proto::v1::push_server::PushServer;
use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Certificate, Identity, ServerTlsConfig};
use tracing::{info, warn};

use crate::api::push::{ApiAuth, LocalPush, PushService};
use crate::app::EngineEcho;
use crate::cluster::membership::{HeartbeatLoad, LoadSource, MembershipClientTask, Registration};
use crate::cluster::peer::MAX_MESSAGE;
use crate::cluster::ring::DEFAULT_VNODES;
use crate::cluster::service::NodeService;
use crate::cluster::{refresh_interval, Cluster};
use crate::config::{advertised, redact_url_in, without_password, AppKind, Config};
use crate::engineio::{Engine, SidKey};
use crate::http::Gateway;
use crate::socketio::{Application, Recovery, SocketIo};
use crate::store::recovery::{MemoryRecoveryStore, ProstCodec, RecoveryStore, RedisRecoveryStore};
use crate::store::{MemoryRegistry, RedisRegistry, Registry};
use crate::telemetry;
use ringway_redis::RedisConfig;

/// Why a node could not start, or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// Redis did not answer at start.
    #[error("{0}")]
    Redis(String),
    #[error("{0}")]
    Other(String),
}

/// A gateway node to start.
pub struct Node<A> {
    config: Config,
    app: A,
}

/// A node serving: its bound addresses, and the handle that stops it.
pub struct RunningNode {
    /// The client port (Socket.IO, health, metrics unless elsewhere).
    pub addr: SocketAddr,
    /// The node-to-node gRPC listener (cluster mode).
    pub grpc_addr: Option<SocketAddr>,
    /// The Push API listener (with API tokens).
    pub api_addr: Option<SocketAddr>,
    /// `--metrics-listen`'s listener.
    pub metrics_addr: Option<SocketAddr>,
    shutdown: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), NodeError>>,
}

impl RunningNode {
    /// Drains the node as SIGTERM does (out of the ring, `--drain-delay`,
    /// sessions closed) and waits until it has stopped.
    pub async fn shutdown(mut self) -> Result<(), NodeError> {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        self.stopped().await
    }

    /// Waits until the node stops (it stops when asked, or when it fails).
    pub async fn stopped(self) -> Result<(), NodeError> {
        match self.task.await {
            Ok(result) => result,
            Err(err) => Err(NodeError::Other(format!("node task: {err}"))),
        }
    }

    /// The sender that starts the drain, for a caller that waits on
    /// something else (a signal) before asking.
    pub fn take_shutdown(&mut self) -> Option<oneshot::Sender<()>> {
        self.shutdown.take()
    }
}

impl<A: Application> Node<A> {
    /// A node of this configuration, serving `app`.
    pub fn new(config: Config, app: A) -> Node<A> {
        Node { config, app }
    }

    /// Binds the listeners, connects to Redis and the coordinator (in
    /// cluster mode) and starts serving; returns once the node serves.
    pub async fn start(self) -> Result<RunningNode, NodeError> {
        let Node { config, app } = self;
        let node_id = config.node_id();
        let listener = listen(config.listen, config.listen_backlog)
            .map_err(|e| NodeError::Other(format!("cannot listen on {}: {e}", config.listen)))?;
        let addr = listener
            .local_addr()
            .map_err(|e| NodeError::Other(format!("cannot read the bound address: {e}")))?;

        let redis = if config.clustered() {
            let redis = config
                .redis
                .resolve()
                .map_err(|e| NodeError::Other(e.to_string()))?;
            info!(redis = %redis.redacted(), "Redis");
            Some(redis)
        } else {
            None
        };
        let registry: Arc<dyn Registry> = match &redis {
            Some(redis) => {
                let ttl = Duration::from_millis(config.registry_ttl);
                let registry = RedisRegistry::connect(redis, &config.key_prefix, ttl)
                    .await
                    .map_err(|e| redis_unreachable(redis, e))?;
                Arc::new(registry)
            }
            None => Arc::new(MemoryRegistry::default()),
        };
        let security = cluster_security(&config, &node_id).map_err(NodeError::Other)?;
        if config.clustered() && !security.is_secure() {
            warn!("--insecure-cluster: node-to-node calls are neither authenticated nor encrypted; anyone who reaches the node port can read and take over sessions");
        }
        let cluster = Cluster::new(&node_id, DEFAULT_VNODES, registry, security.clone());
        if !config.clustered() {
            // A node alone is its own cluster from the start.
            cluster.set_joined();
        }
        let (stop_tx, stop_rx) = watch::channel(false);
        let recovery = match config.recovery() {
            Some(settings) => {
                let store: Arc<dyn RecoveryStore> = match &redis {
                    Some(redis) => Arc::new(
                        RedisRecoveryStore::connect(
                            redis,
                            &config.key_prefix,
                            config.recovery_max_log,
                            config.recovery_max_log_bytes,
                            config.redis_wait_replicas,
                        )
                        .await
                        .map_err(|e| redis_unreachable(redis, e))?,
                    ),
                    None => Arc::new(MemoryRecoveryStore::new(
                        config.recovery_max_log,
                        config.recovery_max_log_bytes,
                    )),
                };
                let recovery = Recovery::open(store, Arc::new(ProstCodec), settings, &node_id)
                    .await
                    .map_err(|e| {
                        let message = format!("recovery log: {e}");
                        NodeError::Redis(match &redis {
                            Some(redis) => redact_redis_in(&message, redis),
                            None => message,
                        })
                    })?;
                info!(
                    window_ms = config.recovery_window,
                    max_log = config.recovery_max_log,
                    "connection state recovery on"
                );
                Some(recovery)
            }
            None => None,
        };
        // The plain Engine.IO echo endpoint belongs to the built-in echo
        // application only.
        let engine_echo = config.upstream.is_none() && config.app == AppKind::Echo;
        // Session ids are signed with the cluster's key (one per node alone).
        let sid_key = cluster
            .registry()
            .sid_key()
            .await
            .map_err(|e| match &redis {
                Some(redis) => redis_unreachable(redis, e),
                None => NodeError::Other(format!("session id key: {e}")),
            })?;
        let gateway = Gateway::new(
            &config,
            app,
            engine_echo,
            cluster.clone(),
            recovery.clone(),
            SidKey::new(&sid_key),
        );
        spawn_upkeep(
            cluster.clone(),
            recovery.clone(),
            refresh_interval(Duration::from_millis(config.registry_ttl)),
            stop_rx.clone(),
        );
        if let Some(trimmer) = recovery {
            spawn_ticker(RECOVERY_TRIM_EVERY, stop_rx.clone(), move || {
                let recovery = trimmer.clone();
                async move { recovery.trim().await }
            });
        }
        let observers = register_observers(
            gateway.socketio().clone(),
            gateway.engineio().cloned(),
            cluster.clone(),
        );

        let mut metrics_addr = None;
        if let Some(wanted) = config.metrics_listen {
            let listener = TcpListener::bind(wanted).await.map_err(|e| {
                NodeError::Other(format!("cannot listen on {wanted} (--metrics-listen): {e}"))
            })?;
            let bound = listener
                .local_addr()
                .map_err(|e| NodeError::Other(format!("cannot read the bound address: {e}")))?;
            tokio::spawn(crate::http::serve_metrics(listener, stop_rx.clone()));
            metrics_addr = Some(bound);
        }

        // The Push API for backends, on its own listener.
        let mut tasks = Vec::new();
        let mut api_addr = None;
        let api_tokens = config.api_tokens().map_err(NodeError::Other)?;
        // Push operations on this node's sockets: the Push API's share
        // here and what other nodes ask of this one (`Node.Local`).
        let local_push = LocalPush::new(gateway.socketio().clone());
        if config.api_enabled() {
            let api_listener = TcpListener::bind(config.api_listen).await.map_err(|e| {
                NodeError::Other(format!(
                    "cannot listen on {} (--api-listen): {e}",
                    config.api_listen
                ))
            })?;
            let bound_api = api_listener
                .local_addr()
                .map_err(|e| NodeError::Other(format!("cannot read the bound address: {e}")))?;
            let push = PushService::new(local_push.clone(), cluster.clone(), config.max_payload);
            let mut auth = ApiAuth::new(api_tokens);
            if config.api_tls_client_ca.is_some() {
                auth = auth.with_client_certificates();
            }
            let push = InterceptedService::new(
                PushServer::new(push).max_decoding_message_size(MAX_MESSAGE),
                auth,
            );
            let mut server = tonic::transport::Server::builder();
            if let Some(tls) = api_tls(&config).map_err(NodeError::Other)? {
                server = server
                    .tls_config(tls)
                    .map_err(|e| NodeError::Other(format!("API TLS: {e}")))?;
            }
            let mut api_stop = stop_rx.clone();
            let incoming = TcpIncoming::from(api_listener).with_nodelay(Some(true));
            tasks.push(tokio::spawn(
                server
                    .tcp_nodelay(true)
                    .add_service(push)
                    .serve_with_incoming_shutdown(incoming, async move {
                        let _ = api_stop.wait_for(|stop| *stop).await;
                    }),
            ));
            api_addr = Some(bound_api);
        }

        // The node-to-node service (cluster mode), then membership and the
        // registry refresher.
        let mut membership = None;
        let mut grpc_addr = None;
        if config.clustered() {
            let grpc_listener = TcpListener::bind(config.grpc_listen).await.map_err(|e| {
                NodeError::Other(format!(
                    "cannot listen on {} (--grpc-listen): {e}",
                    config.grpc_listen
                ))
            })?;
            let bound_grpc = grpc_listener
                .local_addr()
                .map_err(|e| NodeError::Other(format!("cannot read the bound address: {e}")))?;
            let guard = security.guard().on_refusal(Arc::new(|reason| {
                telemetry::cluster_metrics()
                    .cluster_auth_refusals
                    .add(1, &telemetry::attr("reason", reason.as_str()));
            }));
            let node = InterceptedService::new(
                NodeServer::new(NodeService::new(
                    gateway.socketio().clone(),
                    cluster.clone(),
                    local_push.clone(),
                ))
                .max_decoding_message_size(MAX_MESSAGE)
                .max_encoding_message_size(MAX_MESSAGE),
                guard,
            );
            let mut grpc_stop = stop_rx.clone();
            // Accepted node-to-node connections get TCP_NODELAY too: without
            // it a forwarded answer's HTTP/2 frames wait on delayed ACKs (a
            // 40 ms p99 on forwarded polls).
            let grpc_incoming = TcpIncoming::from(grpc_listener).with_nodelay(Some(true));
            let mut server = tonic::transport::Server::builder();
            if let Some(tls) = &security.tls {
                server = server
                    .tls_config(tls.server())
                    .map_err(|e| NodeError::Other(format!("cluster TLS: {e}")))?;
            }
            tasks.push(tokio::spawn(
                server
                    .tcp_nodelay(true)
                    .max_concurrent_streams(Some(1 << 20))
                    .add_service(node)
                    .serve_with_incoming_shutdown(grpc_incoming, async move {
                        let _ = grpc_stop.wait_for(|stop| *stop).await;
                    }),
            ));
            if let Some(coordinator) = config.coordinator.as_deref() {
                let registration = Registration {
                    grpc_addr: advertised(config.advertise_grpc.as_deref(), bound_grpc),
                    http_addr: advertised(config.advertise_http.as_deref(), addr),
                };
                info!(node = %node_id, grpc = %registration.grpc_addr, %coordinator, "cluster mode");
                let engine = gateway.socketio().clone();
                let load: LoadSource = Arc::new(move || {
                    let (polling_sessions, websocket_sessions) = engine.transport_counts();
                    HeartbeatLoad {
                        polling_sessions,
                        websocket_sessions,
                        messages_in: telemetry::engine_metrics().messages_in.total(),
                        messages_out: telemetry::socketio_metrics().messages_out.total(),
                    }
                });
                let task =
                    MembershipClientTask::new(cluster.clone(), coordinator, registration, load);
                tokio::spawn(task.clone().run(stop_rx.clone()));
                membership = Some(task);
                let checker = cluster.clone();
                spawn_ticker(HEALTH_CHECK_EVERY, stop_rx.clone(), move || {
                    let cluster = checker.clone();
                    async move { cluster.check_registry().await }
                });
            }
            grpc_addr = Some(bound_grpc);
        }

        info!(
            %addr,
            path = %config.path,
            node = %node_id,
            parser = config.socketio().parser.as_str(),
            "ringway-gateway listening"
        );

        let (shutdown, requested) = oneshot::channel::<()>();
        let drain_delay = Duration::from_millis(config.drain_delay);
        let drain = {
            let cluster = cluster.clone();
            let membership = membership.clone();
            let stop_tx = stop_tx.clone();
            async move {
                // A shutdown asked for, or the handle dropped.
                let _ = requested.await;
                // Drain: no new sessions here, out of the ring at once.
                cluster.start_draining();
                let _ = stop_tx.send(true);
                if let Some(membership) = membership {
                    membership.leave().await;
                }
                tokio::time::sleep(drain_delay).await;
            }
        };
        let task = tokio::spawn(async move {
            let _observers = observers;
            let served = gateway.serve(listener, drain).await;
            let _ = stop_tx.send(true);
            for task in tasks {
                let _ = tokio::time::timeout(Duration::from_secs(2), task).await;
            }
            served.map_err(|e| NodeError::Other(format!("server failed: {e}")))?;
            info!("ringway-gateway stopped");
            Ok(())
        });
        Ok(RunningNode {
            addr,
            grpc_addr,
            api_addr,
            metrics_addr,
            shutdown: Some(shutdown),
            task,
        })
    }
}

/// Gauges read at collection time: sessions by transport, rooms, the
/// membership view, peers' queue losses.
fn register_observers<A: Application>(
    engine: Arc<Engine<SocketIo<A>>>,
    echo: Option<Arc<Engine<EngineEcho>>>,
    cluster: Arc<Cluster>,
) -> Vec<Box<dyn std::any::Any + Send + Sync>> {
    let meter = telemetry::meter();
    let engine_ns = engine.clone();
    let held = engine.clone();
    let sessions = meter
        .u64_observable_gauge("ringway.sessions")
        .with_description("Sessions held by this node, by transport")
        .with_callback(move |observer| {
            let (polling, websocket) = engine.transport_counts();
            observer.observe(polling, &telemetry::attr("transport", "polling"));
            observer.observe(websocket, &telemetry::attr("transport", "websocket"));
        })
        .build();
    let held_requests = meter
        .u64_observable_gauge("ringway.requests.held")
        .with_description(
            "Polling requests held open on this node: GETs waiting for packets (kind=poll), \
             POSTs being read or applied (kind=post)",
        )
        .with_callback(move |observer| {
            let mut now = held.held_requests();
            if let Some(echo) = &echo {
                let more = echo.held_requests();
                now.polls += more.polls;
                now.posts += more.posts;
            }
            observer.observe(now.polls, &telemetry::attr("kind", "poll"));
            observer.observe(now.posts, &telemetry::attr("kind", "post"));
        })
        .build();
    let view = cluster.clone();
    let epoch = meter
        .u64_observable_gauge("ringway.membership.epoch")
        .with_description("Epoch of the membership view this node serves on")
        .with_callback(move |observer| observer.observe(view.view().epoch, &[]))
        .build();
    let view = cluster.clone();
    let members = meter
        .u64_observable_gauge("ringway.membership.members")
        .with_description("Members in the view (this node included)")
        .with_callback(move |observer| observer.observe(view.view().members.len() as u64, &[]))
        .build();
    let per_namespace = engine_ns.clone();
    let sockets = meter
        .u64_observable_gauge("ringway.sockets")
        .with_description("Sockets connected to each namespace on this node")
        .with_callback(move |observer| {
            for ns in per_namespace.handler().namespaces() {
                observer.observe(
                    ns.socket_count() as u64,
                    &telemetry::attr("namespace", ns.name().to_owned()),
                );
            }
        })
        .build();
    let rooms = meter
        .u64_observable_gauge("ringway.rooms")
        .with_description("Rooms with members on this node, by namespace")
        .with_callback(move |observer| {
            for ns in engine_ns.handler().namespaces() {
                observer.observe(
                    ns.room_count() as u64,
                    &telemetry::attr("namespace", ns.name().to_owned()),
                );
            }
        })
        .build();
    let routes = cluster.clone();
    let room_routes = meter
        .u64_observable_gauge("ringway.cluster.room.routes")
        .with_description(
            "Rooms other nodes announced members in, by node and namespace: \
             where this node's room emits go",
        )
        .with_callback(move |observer| {
            for (node, namespace, rooms) in routes.rooms().counts() {
                observer.observe(
                    rooms,
                    &[
                        opentelemetry::KeyValue::new("node", node),
                        opentelemetry::KeyValue::new("namespace", namespace),
                    ],
                );
            }
        })
        .build();
    let degraded_cluster = cluster.clone();
    let ready = meter
        .u64_observable_gauge("ringway.ready")
        .with_description("1 when the node serves (in the view, not draining; /readyz)")
        .with_callback(move |observer| observer.observe(u64::from(cluster.is_ready()), &[]))
        .build();
    let degraded = meter
        .u64_observable_gauge("ringway.degraded")
        .with_description("1 while the registry (Redis) is unreachable: sessions served, recoveries get fresh sockets, emits unlogged")
        .with_callback(move |observer| {
            observer.observe(u64::from(degraded_cluster.is_degraded()), &[])
        })
        .build();
    vec![
        Box::new(sessions),
        Box::new(held_requests),
        Box::new(epoch),
        Box::new(members),
        Box::new(sockets),
        Box::new(room_routes),
        Box::new(rooms),
        Box::new(ready),
        Box::new(degraded),
    ]
}

/// A Redis that did not answer at start; the message never shows a
/// password (of a URL or of the password file).
fn redis_unreachable(redis: &RedisConfig, err: impl std::fmt::Display) -> NodeError {
    let urls: Vec<String> = redis.urls.iter().map(|u| without_password(u)).collect();
    let message = format!(
        "cannot reach Redis at {} ({}): {err}",
        urls.join(","),
        redis.mode.as_str()
    );
    NodeError::Redis(redact_redis_in(&message, redis))
}

/// `text` without any of the Redis passwords.
fn redact_redis_in(text: &str, redis: &RedisConfig) -> String {
    let mut text = redis
        .urls
        .iter()
        .fold(text.to_owned(), |text, url| redact_url_in(&text, url));
    if let Some(password) = redis.password.as_deref().filter(|p| !p.is_empty()) {
        text = text.replace(password, "***");
    }
    text
}

/// The Push API listener's TLS, from `--api-tls-cert` and `--api-tls-key`;
/// with `--api-tls-client-ca`, backends may present client certificates
/// (optional: a token still works).
fn api_tls(config: &Config) -> Result<Option<ServerTlsConfig>, String> {
    let (Some(cert), Some(key)) = (&config.api_tls_cert, &config.api_tls_key) else {
        return Ok(None);
    };
    let read = |path: &std::path::Path| {
        std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))
    };
    let mut tls = ServerTlsConfig::new().identity(Identity::from_pem(read(cert)?, read(key)?));
    if let Some(ca) = &config.api_tls_client_ca {
        tls = tls
            .client_ca_root(Certificate::from_pem(read(ca)?))
            .client_auth_optional(true);
    }
    Ok(Some(tls))
}

/// The cluster credential and mutual TLS of this node, from
/// `--cluster-secret-file` and `--cluster-tls-*`.
fn cluster_security(config: &Config, node_id: &str) -> Result<ClusterSecurity, String> {
    let secret = config
        .cluster_secret_file
        .as_deref()
        .map(ClusterSecret::from_file)
        .transpose()
        .map_err(|e| e.to_string())?;
    let tls = match (
        &config.cluster_tls_ca,
        &config.cluster_tls_cert,
        &config.cluster_tls_key,
    ) {
        (Some(ca), Some(cert), Some(key)) => Some(
            ClusterTls::from_files(ca, cert, key, config.cluster_tls_server_name.clone())
                .map_err(|e| e.to_string())?,
        ),
        _ => None,
    };
    Ok(ClusterSecurity {
        node_id: node_id.to_owned(),
        secret,
        tls,
    })
}

/// How often the recovery log is trimmed to its window.
const RECOVERY_TRIM_EVERY: Duration = Duration::from_secs(1);

/// How often the registry is checked for readiness.
const HEALTH_CHECK_EVERY: Duration = Duration::from_secs(1);

/// Runs `job` every `period` until `stop` turns true.
/// Refreshes the registry entries of this node's sessions and the
/// recovery states of its live sockets every `every` (a third of
/// `--registry-ttl`); both soon when the cluster asks for a rewrite (Redis
/// lost data, answers again, or refused writes), the states alone when a
/// state write was dropped or failed. Early refreshes are at least
/// [`EARLY_REFRESH_SPACING`] apart: a store failing for long is not
/// hammered with them.
fn spawn_upkeep(
    cluster: Arc<Cluster>,
    recovery: Option<Arc<Recovery>>,
    every: Duration,
    mut stop: watch::Receiver<bool>,
) {
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(every);
        loop {
            let states_due = async {
                match &recovery {
                    Some(recovery) => recovery.refresh_requested().await,
                    None => std::future::pending().await,
                }
            };
            // (registry too, asked early)
            let (registry, early) = tokio::select! {
                _ = ticker.tick() => (true, false),
                _ = cluster.rewrite_requested() => (true, true),
                _ = states_due => (false, true),
                _ = stop.wait_for(|stop| *stop) => return,
            };
            if registry {
                cluster.refresh_registry().await;
            }
            if let Some(recovery) = &recovery {
                recovery.refresh().await;
            }
            if early {
                tokio::time::sleep(EARLY_REFRESH_SPACING).await;
            }
        }
    });
}

/// Least time between two refreshes asked for early.
const EARLY_REFRESH_SPACING: Duration = Duration::from_secs(5);

fn spawn_ticker<F, Fut>(period: Duration, mut stop: watch::Receiver<bool>, job: F)
where
    F: Fn() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(period);
        loop {
            let stopped = tokio::select! {
                _ = ticker.tick() => false,
                _ = stop.wait_for(|stop| *stop) => true,
            };
            if stopped {
                return;
            }
            job().await;
        }
    });
}

/// Binds with an explicit backlog: tokio's default (1024) overflows in
/// connection storms, and every dropped SYN costs the client a 1 s retry.
/// The kernel caps it at `net.core.somaxconn`.
fn listen(addr: std::net::SocketAddr, backlog: u32) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(backlog)
}
