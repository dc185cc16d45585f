//! Gateway configuration: one struct, from flags or `RINGWAY_*` variables.
//! Defaults are the reference Socket.IO server's.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use ringway_redis::RedisArgs;

use crate::engineio::EngineConfig;
use crate::socketio::SocketIoConfig;

/// The default of `--registry-ttl`: 6 hours.
pub const REGISTRY_TTL_MS: u64 = 6 * 60 * 60 * 1000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum AppKind {
    /// The built-in echo application (docs/ECHO_APP.md).
    Echo,
}

/// A secret given on the command line or in the environment: kept out of
/// `Debug` (and so out of `--check-config` and logs).
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub String);

impl std::str::FromStr for Secret {
    type Err = std::convert::Infallible;

    fn from_str(s: &str) -> Result<Secret, Self::Err> {
        Ok(Secret(s.to_owned()))
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

pub use ringway_telemetry::LogFormat;

/// The Socket.IO wire form (`--parser`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ParserKind {
    /// The default parser (`socket.io-parser`): text packets, binaries as
    /// attachments.
    Default,
    /// `socket.io-msgpack-parser`: each packet one msgpack binary message.
    Msgpack,
}

#[derive(Debug, Clone, Parser)]
#[command(
    name = "ringway-gateway",
    version,
    about = "Ringway gateway node: Socket.IO (Engine.IO v4 + Socket.IO v5) over long-polling and WebSocket"
)]
pub struct Config {
    /// Address of the HTTP / WebSocket listener.
    #[arg(long, env = "RINGWAY_LISTEN", default_value = "0.0.0.0:3000")]
    pub listen: SocketAddr,

    /// Listen backlog (pending connections the kernel queues; capped by
    /// net.core.somaxconn).
    #[arg(long, env = "RINGWAY_LISTEN_BACKLOG", default_value_t = 4096)]
    pub listen_backlog: u32,

    /// Path of the Socket.IO endpoint.
    #[arg(long, env = "RINGWAY_PATH", default_value = "/socket.io/")]
    pub path: String,

    /// Milliseconds between server pings.
    #[arg(long, env = "RINGWAY_PING_INTERVAL", default_value_t = 25_000)]
    pub ping_interval: u64,

    /// Milliseconds to wait for a pong before closing the session.
    #[arg(long, env = "RINGWAY_PING_TIMEOUT", default_value_t = 20_000)]
    pub ping_timeout: u64,

    /// Largest message or polling POST body accepted, in bytes.
    #[arg(long, env = "RINGWAY_MAX_PAYLOAD", default_value_t = 1_000_000)]
    pub max_payload: usize,

    /// Bound of each session's outgoing queue in bytes; a client that lets
    /// it fill up is disconnected as a slow consumer.
    #[arg(long, env = "RINGWAY_MAX_QUEUED_BYTES", default_value_t = 4 << 20)]
    pub max_queued_bytes: usize,

    /// Milliseconds a WebSocket may take to complete the upgrade.
    #[arg(long, env = "RINGWAY_UPGRADE_TIMEOUT", default_value_t = 10_000)]
    pub upgrade_timeout: u64,

    /// Milliseconds a new session may take to join a namespace.
    #[arg(long, env = "RINGWAY_CONNECT_TIMEOUT", default_value_t = 45_000)]
    pub connect_timeout: u64,

    /// Initial WebSocket read buffer per connection, in bytes (it grows for
    /// larger messages). Small values keep idle sessions cheap.
    #[arg(long, env = "RINGWAY_WS_READ_BUFFER", default_value_t = 1024)]
    pub ws_read_buffer: usize,

    /// Shortest time in milliseconds between two writes to one WebSocket
    /// (0: every packet is written as soon as it is queued). Packets queued
    /// in between go out together in one write: fewer system calls and TCP
    /// segments under a steady stream of messages, for up to this much
    /// latency. A socket's first write after a quiet spell is never held.
    #[arg(long, env = "RINGWAY_WS_WRITE_INTERVAL", default_value_t = 0)]
    pub ws_write_interval: u64,

    /// Most packets in one polling answer (0: no limit); the rest waits
    /// for the next poll. python-socketio drops a session whose polling
    /// answer holds more than 16.
    #[arg(long, env = "RINGWAY_MAX_POLL_PACKETS", default_value_t = 16)]
    pub max_poll_packets: usize,

    /// Take Socket.IO v2 clients (Engine.IO v3, `EIO=3`), as the reference
    /// server's allowEIO3 (on by default here, so that every official
    /// client version works unchanged); `--allow-eio3 false` refuses their
    /// handshakes with "Unsupported protocol version". Not with `--parser
    /// msgpack` (v2 clients speak the text parser). The value (and the
    /// variable) takes true/false, 1/0, yes/no or on/off.
    #[arg(
        long = "allow-eio3",
        env = "RINGWAY_ALLOW_EIO3",
        value_parser = clap::builder::BoolishValueParser::new(),
        action = clap::ArgAction::Set,
        num_args = 0..=1,
        default_value = "true",
        default_missing_value = "true"
    )]
    pub allow_eio3: bool,

    /// Allowed CORS origins (repeatable, or comma-separated); `*` allows
    /// any origin. None: no CORS headers are sent.
    #[arg(
        long = "cors-origin",
        env = "RINGWAY_CORS_ORIGIN",
        value_delimiter = ','
    )]
    pub cors_origins: Vec<String>,

    /// Application run by the gateway.
    #[arg(long, env = "RINGWAY_APP", value_enum, default_value = "echo")]
    pub app: AppKind,

    /// Namespaces the application accepts (repeatable, or comma-separated).
    #[arg(
        long = "namespace",
        env = "RINGWAY_NAMESPACE",
        value_delimiter = ',',
        default_value = "/"
    )]
    pub namespaces: Vec<String>,

    /// Socket.IO parser of every namespace: `default` (socket.io-parser)
    /// or `msgpack` (socket.io-msgpack-parser; clients must be created
    /// with that parser). Every gateway of a cluster must use the same.
    #[arg(long, env = "RINGWAY_PARSER", value_enum, default_value = "default")]
    pub parser: ParserKind,

    /// Serve the chat demo page at /demo/ (docs/DEMO.md): static files in
    /// the binary, chatting through the echo application's rooms. The
    /// variable takes true/false, 1/0, yes/no or on/off.
    #[arg(
        long,
        env = "RINGWAY_DEMO",
        value_parser = clap::builder::BoolishValueParser::new()
    )]
    pub demo: bool,

    /// Milliseconds a node keeps serving after SIGTERM before it closes its
    /// sessions: `/readyz` answers 503 and new handshakes are refused at
    /// once, so load balancers stop sending new clients meanwhile.
    #[arg(long, env = "RINGWAY_DRAIN_DELAY", default_value_t = 0)]
    pub drain_delay: u64,

    /// Milliseconds allowed for closing sessions on SIGTERM before exiting.
    #[arg(long, env = "RINGWAY_SHUTDOWN_TIMEOUT", default_value_t = 10_000)]
    pub shutdown_timeout: u64,

    /// Log format on stderr (levels by RUST_LOG).
    #[arg(long, env = "RINGWAY_LOG_FORMAT", value_enum, default_value = "human")]
    pub log_format: LogFormat,

    /// Coordinator address (`host:port` or `http://host:port`). With
    /// `--redis-url` it turns cluster mode on; without both the gateway is
    /// a one-node cluster with in-memory state.
    #[arg(long, env = "RINGWAY_COORDINATOR")]
    pub coordinator: Option<String>,

    /// Redis of the session registry and the recovery log (cluster mode
    /// only): `--redis-url`, `--redis-mode`, `--redis-sentinel-master`,
    /// `--redis-password-file`, `--redis-ca-file`, `--redis-client-cert`,
    /// `--redis-client-key`.
    #[command(flatten)]
    pub redis: RedisArgs,

    /// This node's id in the cluster, unique (default: the hostname).
    #[arg(long, env = "RINGWAY_NODE_ID")]
    pub node_id: Option<String>,

    /// Address of the node-to-node gRPC listener (cluster mode).
    #[arg(long, env = "RINGWAY_GRPC_LISTEN", default_value = "0.0.0.0:7100")]
    pub grpc_listen: SocketAddr,

    /// `host:port` other gateways use to reach this node's gRPC listener
    /// (default: the listen address, with the hostname for 0.0.0.0).
    #[arg(long, env = "RINGWAY_ADVERTISE_GRPC")]
    pub advertise_grpc: Option<String>,

    /// `host:port` of this node's HTTP listener as operators see it
    /// (default: the listen address, with the hostname for 0.0.0.0).
    #[arg(long, env = "RINGWAY_ADVERTISE_HTTP")]
    pub advertise_http: Option<String>,

    /// Milliseconds a session's registry entry (and a live socket's
    /// recovery state) lives without a refresh; the owner refreshes them
    /// every third of this. Long by default (6 hours): what makes entries
    /// go missing sooner (Redis losing data, an outage, a failover) is
    /// caught by a heartbeat key per node and a check of each write, and
    /// answered by a rewrite at once, so idle sessions cost Redis next to
    /// nothing. It bounds how long a dead node's entries stay in Redis.
    #[arg(long, env = "RINGWAY_REGISTRY_TTL", default_value_t = REGISTRY_TTL_MS)]
    pub registry_ttl: u64,

    /// Prefix of every Redis key the cluster writes.
    #[arg(long, env = "RINGWAY_KEY_PREFIX", default_value = "ringway")]
    pub key_prefix: String,

    /// Connection state recovery: milliseconds after a disconnection
    /// during which a client gets its socket (id, rooms, data) back with
    /// every event it missed (the reference's maxDisconnectionDuration).
    /// Recoverable events then carry their offset as a last argument, which
    /// clients without recovery (python-socketio, socket.io-client before
    /// 4.6) hand to their handlers; so it is off by default, as in the
    /// reference (0: off; 120000 is the reference's usual window).
    #[arg(long, env = "RINGWAY_RECOVERY_WINDOW", default_value_t = 0)]
    pub recovery_window: u64,

    /// Most entries the recovery log keeps (the whole cluster's
    /// recoverable emits; the oldest go first). A client whose offset is
    /// older gets a fresh socket.
    #[arg(long, env = "RINGWAY_RECOVERY_MAX_LOG", default_value_t = 100_000)]
    pub recovery_max_log: usize,

    /// URL of the backend's `ringway.v1.Upstream` service
    /// (`http://host:port`): its hooks decide CONNECTs and receive events
    /// and disconnects, in place of the built-in application.
    #[arg(long, env = "RINGWAY_UPSTREAM")]
    pub upstream: Option<String>,

    /// Milliseconds each upstream call may take (queueing behind the same
    /// socket's earlier events included).
    #[arg(long, env = "RINGWAY_UPSTREAM_TIMEOUT", default_value_t = 5_000)]
    pub upstream_timeout: u64,

    /// Most upstream calls in flight on this node; past it calls fail at
    /// once ("upstream busy").
    #[arg(long, env = "RINGWAY_UPSTREAM_MAX_IN_FLIGHT", default_value_t = 1024)]
    pub upstream_max_in_flight: usize,

    /// Verify the CONNECT `auth.token` as an HS256 JWT with this secret.
    #[arg(long, env = "RINGWAY_JWT_HS256_SECRET", hide_env_values = true)]
    pub jwt_hs256_secret: Option<Secret>,

    /// As --jwt-hs256-secret, with the secret read from this file (one
    /// trailing newline is ignored).
    #[arg(long, env = "RINGWAY_JWT_HS256_SECRET_FILE")]
    pub jwt_hs256_secret_file: Option<PathBuf>,

    /// Verify the CONNECT `auth.token` as an RS256 JWT with the RSA public
    /// key in this PEM file.
    #[arg(long, env = "RINGWAY_JWT_RS256_PUBLIC_KEY")]
    pub jwt_rs256_public_key: Option<PathBuf>,

    /// Accepted JWT audiences (repeatable, or comma-separated); when set,
    /// a token must carry one of them in `aud`.
    #[arg(
        long = "jwt-audience",
        env = "RINGWAY_JWT_AUDIENCE",
        value_delimiter = ','
    )]
    pub jwt_audiences: Vec<String>,

    /// Accepted JWT issuers (repeatable, or comma-separated); when set, a
    /// token must carry one of them in `iss`.
    #[arg(long = "jwt-issuer", env = "RINGWAY_JWT_ISSUER", value_delimiter = ',')]
    pub jwt_issuers: Vec<String>,

    /// Seconds of clock skew allowed on the JWT `exp` and `nbf` claims.
    #[arg(long, env = "RINGWAY_JWT_LEEWAY", default_value_t = 5)]
    pub jwt_leeway: u64,

    /// Bearer tokens accepted by the `Push` API (repeatable, or
    /// comma-separated). With none (and no --api-token-file) every Push
    /// call is refused (UNAUTHENTICATED). Tokens turn the gRPC listener on
    /// for a node alone too.
    #[arg(
        long = "api-token",
        env = "RINGWAY_API_TOKEN",
        value_delimiter = ',',
        hide_env_values = true
    )]
    pub api_tokens: Vec<Secret>,

    /// A file of `Push` API tokens, one per line (blank lines and lines
    /// starting with `#` are ignored).
    #[arg(long, env = "RINGWAY_API_TOKEN_FILE")]
    pub api_token_file: Option<PathBuf>,

    /// Address of the Push API's gRPC listener (`ringway.v1.Push`, for
    /// backends). It listens when API tokens (or `--api-tls-client-ca`)
    /// are given; the node-to-node service is never served here.
    #[arg(long, env = "RINGWAY_API_LISTEN", default_value = "0.0.0.0:7200")]
    pub api_listen: SocketAddr,

    /// PEM certificate (chain) of the Push API listener: turns TLS on
    /// for it.
    #[arg(long, env = "RINGWAY_API_TLS_CERT")]
    pub api_tls_cert: Option<PathBuf>,

    /// PEM private key of `--api-tls-cert`.
    #[arg(long, env = "RINGWAY_API_TLS_KEY")]
    pub api_tls_key: Option<PathBuf>,

    /// PEM CA certificate(s) of backends' client certificates: a backend
    /// presenting a certificate chained to it may call the Push API
    /// without a token (needs `--api-tls-cert`).
    #[arg(long, env = "RINGWAY_API_TLS_CLIENT_CA")]
    pub api_tls_client_ca: Option<PathBuf>,

    /// File holding the cluster's shared secret (at least 32 bytes; one
    /// trailing newline is ignored). Every node-to-node and coordinator
    /// call carries a credential made with it (never the secret itself),
    /// and calls without one are refused. The same file on every gateway
    /// and the coordinator.
    #[arg(long, env = "RINGWAY_CLUSTER_SECRET_FILE")]
    pub cluster_secret_file: Option<PathBuf>,

    /// PEM CA certificate(s) the cluster's certificates chain to: with
    /// `--cluster-tls-cert` and `--cluster-tls-key`, node-to-node and
    /// coordinator connections use mutual TLS (both sides verify).
    #[arg(long, env = "RINGWAY_CLUSTER_TLS_CA")]
    pub cluster_tls_ca: Option<PathBuf>,

    /// PEM certificate (chain) of this node for mutual TLS in the cluster.
    /// A URI SAN `urn:ringway:node:<id>` binds it to one node id.
    #[arg(long, env = "RINGWAY_CLUSTER_TLS_CERT")]
    pub cluster_tls_cert: Option<PathBuf>,

    /// PEM private key of `--cluster-tls-cert`.
    #[arg(long, env = "RINGWAY_CLUSTER_TLS_KEY")]
    pub cluster_tls_key: Option<PathBuf>,

    /// Name checked in the other members' certificates (default: the host
    /// part of the address called).
    #[arg(long, env = "RINGWAY_CLUSTER_TLS_SERVER_NAME")]
    pub cluster_tls_server_name: Option<String>,

    /// Run a cluster with neither a shared secret nor mutual TLS: anyone
    /// who reaches the node port can read and take over sessions. For
    /// local experiments only; logged as a warning.
    #[arg(
        long,
        env = "RINGWAY_INSECURE_CLUSTER",
        value_parser = clap::builder::BoolishValueParser::new()
    )]
    pub insecure_cluster: bool,

    /// Address of a separate listener for `/metrics` (Prometheus text);
    /// when set, the client port no longer serves `/metrics`.
    #[arg(long, env = "RINGWAY_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,

    /// Polling answers of at least this many bytes are compressed (gzip or
    /// deflate, as the client's Accept-Encoding allows), as the reference
    /// server's httpCompression threshold; 0 turns compression off.
    #[arg(
        long,
        env = "RINGWAY_HTTP_COMPRESSION_THRESHOLD",
        default_value_t = 1024
    )]
    pub http_compression_threshold: usize,

    /// Most sessions this node holds; past it handshakes get 503 (0: no
    /// limit).
    #[arg(long, env = "RINGWAY_MAX_SESSIONS", default_value_t = 100_000)]
    pub max_sessions: usize,

    /// Most sessions one client address holds on this node (IPv6 counted
    /// by /64); past it handshakes get 429 (0: no limit).
    #[arg(long, env = "RINGWAY_MAX_SESSIONS_PER_IP", default_value_t = 1_000)]
    pub max_sessions_per_ip: usize,

    /// New sessions per second one client address may open on this node,
    /// after a burst of `--handshake-burst-per-ip`; past it handshakes get
    /// 429 (0: no limit).
    #[arg(long, env = "RINGWAY_HANDSHAKE_RATE_PER_IP", default_value_t = 20.0)]
    pub handshake_rate_per_ip: f64,

    /// Handshakes one client address may make at once before
    /// `--handshake-rate-per-ip` applies.
    #[arg(long, env = "RINGWAY_HANDSHAKE_BURST_PER_IP", default_value_t = 100.0)]
    pub handshake_burst_per_ip: f64,

    /// Networks of the load balancers and proxies in front (repeatable, or
    /// comma-separated; CIDR or a single address): a request from one of
    /// them is counted for the client address its `X-Forwarded-For`
    /// names (the last one not itself a proxy). From anyone else the
    /// header is ignored.
    #[arg(
        long = "trusted-proxy",
        env = "RINGWAY_TRUSTED_PROXY",
        value_delimiter = ','
    )]
    pub trusted_proxies: Vec<crate::http::Cidr>,

    /// Milliseconds a client may take to send a request's headers (and an
    /// idle connection may wait for its next request).
    #[arg(long, env = "RINGWAY_HEADER_READ_TIMEOUT", default_value_t = 10_000)]
    pub header_read_timeout: u64,

    /// Milliseconds a client may take to send a POST body; past it the
    /// request gets 408 and its connection is closed.
    #[arg(long, env = "RINGWAY_BODY_READ_TIMEOUT", default_value_t = 10_000)]
    pub body_read_timeout: u64,

    /// Bytes of POST bodies this node reads at once (all clients together);
    /// a POST waits for its share within its body timeout, then gets 503.
    #[arg(long, env = "RINGWAY_MAX_BODY_BUFFER", default_value_t = 64 << 20)]
    pub max_body_buffer: usize,

    /// Most rooms one socket may be in; past it a join is refused (0: no
    /// limit).
    #[arg(long, env = "RINGWAY_MAX_ROOMS_PER_SOCKET", default_value_t = 1_000)]
    pub max_rooms_per_socket: usize,

    /// Longest room name, in bytes; a longer one is refused.
    #[arg(long, env = "RINGWAY_MAX_ROOM_NAME", default_value_t = 256)]
    pub max_room_name: usize,

    /// Longest event name a client may send, in bytes; a longer one is
    /// dropped (an error ack if it asked for one).
    #[arg(long, env = "RINGWAY_MAX_EVENT_NAME", default_value_t = 256)]
    pub max_event_name: usize,

    /// Refused CONNECTs one session may make (bad namespace, refused by
    /// the application); the next one closes the session (0: no limit).
    #[arg(long, env = "RINGWAY_MAX_FAILED_CONNECTS", default_value_t = 10)]
    pub max_failed_connects: usize,

    /// Largest event kept in the recovery log, in bytes (its packet); a
    /// larger one is delivered but not logged (a client that misses it
    /// gets a fresh socket instead of it), and counted.
    #[arg(
        long,
        env = "RINGWAY_RECOVERY_MAX_EVENT_BYTES",
        default_value_t = 65_536
    )]
    pub recovery_max_event_bytes: usize,

    /// Memory the recovery log may take in Redis (or in memory alone), in
    /// bytes; past it the oldest entries go first, as with
    /// `--recovery-max-log`.
    #[arg(long, env = "RINGWAY_RECOVERY_MAX_LOG_BYTES", default_value_t = 256 << 20)]
    pub recovery_max_log_bytes: u64,

    /// Replicas every append to the recovery log waits for (Redis `WAIT`,
    /// at most 200 ms), so that an emit the Push API reports `durable`
    /// survives a failover of the primary (0: none; give the number of
    /// replicas of the primary, e.g. 1 behind Sentinel).
    #[arg(long, env = "RINGWAY_REDIS_WAIT_REPLICAS", default_value_t = 0)]
    pub redis_wait_replicas: u32,

    /// Parse and check the configuration, print it, and exit.
    #[arg(long)]
    pub check_config: bool,
}

impl Config {
    /// Checks what clap cannot.
    pub fn validate(&self) -> Result<(), String> {
        if !self.path.starts_with('/') {
            return Err(format!("--path must start with '/': {:?}", self.path));
        }
        if self.ping_interval == 0 || self.ping_timeout == 0 {
            return Err("--ping-interval and --ping-timeout must be positive".into());
        }
        if self.max_payload == 0 {
            return Err("--max-payload must be positive".into());
        }
        if self.ws_write_interval > MAX_WS_WRITE_INTERVAL {
            return Err(format!(
                "--ws-write-interval is at most {MAX_WS_WRITE_INTERVAL} ms: it delays messages"
            ));
        }
        if self.max_queued_bytes < self.max_payload {
            return Err("--max-queued-bytes must be at least --max-payload".into());
        }
        if let Some(ns) = self.namespaces.iter().find(|n| !n.starts_with('/')) {
            return Err(format!("--namespace must start with '/': {ns:?}"));
        }
        if self.coordinator.is_some() != self.redis.is_set() {
            return Err("cluster mode needs both --coordinator and --redis-url".into());
        }
        if self.api_tls_cert.is_some() != self.api_tls_key.is_some() {
            return Err("--api-tls-cert and --api-tls-key go together".into());
        }
        if self.api_tls_client_ca.is_some() && self.api_tls_cert.is_none() {
            return Err("--api-tls-client-ca needs --api-tls-cert and --api-tls-key".into());
        }
        self.validate_cluster_security()?;
        self.validate_addresses()?;
        if !(self.handshake_rate_per_ip >= 0.0 && self.handshake_rate_per_ip.is_finite()) {
            return Err("--handshake-rate-per-ip must be 0 or more".into());
        }
        if !(self.handshake_burst_per_ip >= 1.0 && self.handshake_burst_per_ip.is_finite()) {
            return Err("--handshake-burst-per-ip must be at least 1".into());
        }
        if self.header_read_timeout == 0 || self.body_read_timeout == 0 {
            return Err("--header-read-timeout and --body-read-timeout must be positive".into());
        }
        if self.max_body_buffer < self.max_payload {
            return Err("--max-body-buffer must be at least --max-payload".into());
        }
        if self.max_room_name == 0 || self.max_event_name == 0 {
            return Err("--max-room-name and --max-event-name must be positive".into());
        }
        if self.registry_ttl < 1000 {
            return Err("--registry-ttl must be at least 1000 ms".into());
        }
        if self.recovery_window > 0 && self.recovery_max_log == 0 {
            return Err("--recovery-max-log must be positive (or --recovery-window 0)".into());
        }
        if self
            .node_id
            .as_deref()
            .is_some_and(|id| id.is_empty() || id.contains(char::is_whitespace))
        {
            return Err("--node-id must be non-empty, without spaces".into());
        }
        self.validate_backend()
    }

    /// The cluster credential: a secret, mutual TLS, or an explicit
    /// `--insecure-cluster`.
    fn validate_cluster_security(&self) -> Result<(), String> {
        let tls = [
            self.cluster_tls_ca.is_some(),
            self.cluster_tls_cert.is_some(),
            self.cluster_tls_key.is_some(),
        ];
        if tls.iter().any(|t| *t) && !tls.iter().all(|t| *t) {
            return Err(
                "--cluster-tls-ca, --cluster-tls-cert and --cluster-tls-key go together".into(),
            );
        }
        if let Some(path) = &self.cluster_secret_file {
            ringway_proto::auth::ClusterSecret::from_file(path).map_err(|e| e.to_string())?;
        }
        let secured = self.cluster_secret_file.is_some() || self.cluster_tls_cert.is_some();
        if self.clustered() && !secured && !self.insecure_cluster {
            return Err(
                "cluster mode needs a cluster credential: --cluster-secret-file, or mutual TLS \
                 (--cluster-tls-ca, --cluster-tls-cert, --cluster-tls-key); \
                 --insecure-cluster runs without one (local experiments only)"
                    .into(),
            );
        }
        if self.insecure_cluster && secured {
            return Err("--insecure-cluster cannot be combined with a cluster credential".into());
        }
        Ok(())
    }

    /// Addresses given as text: parsed now, so a typo fails at start and
    /// not at the first call that uses it.
    fn validate_addresses(&self) -> Result<(), String> {
        if let Some(addr) = &self.advertise_grpc {
            check_host_port(addr, true).map_err(|e| format!("--advertise-grpc {addr:?}: {e}"))?;
        }
        if let Some(addr) = &self.advertise_http {
            check_host_port(addr, true).map_err(|e| format!("--advertise-http {addr:?}: {e}"))?;
        }
        if let Some(addr) = &self.coordinator {
            let host_port = match addr.split_once("://") {
                Some(("http" | "https", rest)) => rest.trim_end_matches('/'),
                Some((scheme, _)) => {
                    return Err(format!(
                        "--coordinator {addr:?}: the scheme is http or https, not {scheme:?}"
                    ))
                }
                None => addr.as_str(),
            };
            check_host_port(host_port, false)
                .map_err(|e| format!("--coordinator {addr:?}: {e}"))?;
        }
        if self.redis.is_set() {
            self.redis.check().map_err(|e| e.to_string())?;
        }
        let listeners = [
            ("--listen", Some(self.listen)),
            (
                "--grpc-listen",
                self.clustered().then_some(self.grpc_listen),
            ),
            (
                "--api-listen",
                self.api_enabled().then_some(self.api_listen),
            ),
            ("--metrics-listen", self.metrics_listen),
        ];
        for (i, (name, addr)) in listeners.iter().enumerate() {
            let Some(addr) = addr.filter(|a| a.port() != 0) else {
                continue;
            };
            if let Some((other, _)) = listeners[i + 1..]
                .iter()
                .find(|(_, b)| b.is_some_and(|b| b == addr))
            {
                return Err(format!("{name} and {other} are the same address ({addr})"));
            }
        }
        Ok(())
    }

    /// The upstream and JWT settings: one way of deciding CONNECTs.
    fn validate_backend(&self) -> Result<(), String> {
        if let Some(url) = &self.upstream {
            crate::api::upstream::check_url(url).map_err(|e| format!("--upstream: {e}"))?;
            if self.upstream_timeout == 0 {
                return Err("--upstream-timeout must be positive".into());
            }
            if self.upstream_max_in_flight == 0 {
                return Err("--upstream-max-in-flight must be positive".into());
            }
        }
        let keys = [
            self.jwt_hs256_secret.is_some(),
            self.jwt_hs256_secret_file.is_some(),
            self.jwt_rs256_public_key.is_some(),
        ];
        match keys.iter().filter(|k| **k).count() {
            0 if !self.jwt_audiences.is_empty() || !self.jwt_issuers.is_empty() => Err(
                "--jwt-audience and --jwt-issuer need --jwt-hs256-secret(-file) or --jwt-rs256-public-key"
                    .into(),
            ),
            0 => Ok(()),
            1 if self.upstream.is_some() => Err(
                "--upstream and --jwt-* cannot be combined: with an upstream, its OnConnect hook decides who connects"
                    .into(),
            ),
            1 if self.jwt_hs256_secret.as_ref().is_some_and(|s| s.0.is_empty()) => {
                Err("--jwt-hs256-secret must not be empty".into())
            }
            // The key itself: a missing file or a bad PEM is a configuration
            // error too (and `--check-config` reports it).
            1 => crate::api::jwt::Verifier::from_config(self)
                .map(drop)
                .map_err(|e| e.to_string()),
            _ => Err(
                "give one JWT key: --jwt-hs256-secret, --jwt-hs256-secret-file or --jwt-rs256-public-key"
                    .into(),
            ),
        }
    }

    /// Every accepted API token: the flags' and the file's.
    pub fn api_tokens(&self) -> Result<Vec<String>, String> {
        let mut tokens: Vec<String> = self
            .api_tokens
            .iter()
            .map(|t| t.0.trim().to_owned())
            .filter(|t| !t.is_empty())
            .collect();
        if let Some(path) = &self.api_token_file {
            let text = std::fs::read_to_string(path)
                .map_err(|e| format!("cannot read --api-token-file {}: {e}", path.display()))?;
            tokens.extend(
                text.lines()
                    .map(str::trim)
                    .filter(|l| !l.is_empty() && !l.starts_with('#'))
                    .map(str::to_owned),
            );
        }
        Ok(tokens)
    }

    /// Whether the Push API listens (tokens, or client certificates).
    pub fn api_enabled(&self) -> bool {
        !self.api_tokens.is_empty()
            || self.api_token_file.is_some()
            || self.api_tls_client_ca.is_some()
    }

    /// Whether the gateway runs as a member of a cluster.
    pub fn clustered(&self) -> bool {
        self.coordinator.is_some() && self.redis.is_set()
    }

    /// The node id: `--node-id`, else the hostname.
    pub fn node_id(&self) -> String {
        self.node_id.clone().unwrap_or_else(hostname)
    }
}

/// Checks an address to advertise or call: `host:port`, no scheme, a
/// port, and (`advertised`) not an unspecified IP that others cannot
/// reach.
pub fn check_host_port(addr: &str, advertised: bool) -> Result<(), String> {
    if addr.contains("://") {
        return Err("give host:port, without a scheme".into());
    }
    if addr.contains('/') || addr.contains(char::is_whitespace) {
        return Err("give host:port, without a path or spaces".into());
    }
    let Some((host, port)) = addr.rsplit_once(':') else {
        return Err("the port is missing (host:port)".into());
    };
    match port.parse::<u16>() {
        Ok(0) | Err(_) => return Err(format!("{port:?} is not a port")),
        Ok(_) => {}
    }
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    if bare.is_empty() {
        return Err("the host is missing (host:port)".into());
    }
    if host.contains(':') && !(host.starts_with('[') && host.ends_with(']')) {
        return Err("an IPv6 address goes in brackets: [::1]:7100".into());
    }
    if advertised {
        if let Ok(ip) = bare.parse::<std::net::IpAddr>() {
            if ip.is_unspecified() {
                return Err(format!("{ip} is not an address others can reach"));
            }
        }
    }
    Ok(())
}

/// The URL with its password replaced by `***`, for printing.
pub use ringway_redis::redact_url as without_password;

/// `text` with every appearance of `url`'s password (as written, and
/// percent-decoded) replaced by `***`: for messages that may quote the URL
/// or the server's answer about it.
pub fn redact_url_in(text: &str, url: &str) -> String {
    let Some(password) = url_password(url) else {
        return text.to_owned();
    };
    let mut out = text.replace(url, &without_password(url));
    for form in [password.clone(), percent_decode(&password)] {
        if !form.is_empty() {
            out = out.replace(&form, "***");
        }
    }
    out
}

/// The password part of `scheme://user:password@host`.
fn url_password(url: &str) -> Option<String> {
    let (_, rest) = url.split_once("://")?;
    let at = rest.rfind('@')?;
    let (_, password) = rest[..at].split_once(':')?;
    (!password.is_empty()).then(|| password.to_owned())
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 3 <= bytes.len() {
            let hex = |b: u8| (b as char).to_digit(16);
            if let (Some(hi), Some(lo)) = (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                out.push((hi * 16 + lo) as u8);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The machine's hostname (the pod name on Kubernetes).
pub fn hostname() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .ok()
                .map(|h| h.trim().to_owned())
                .filter(|h| !h.is_empty())
        })
        .unwrap_or_else(|| "localhost".to_owned())
}

/// The address to advertise for a bound listener: the given one, else the
/// bound address with the hostname in place of an unspecified IP.
pub fn advertised(given: Option<&str>, bound: SocketAddr) -> String {
    match given {
        Some(addr) => addr.to_owned(),
        None if bound.ip().is_unspecified() => format!("{}:{}", hostname(), bound.port()),
        None => bound.to_string(),
    }
}

/// Longest `--ws-write-interval`, in milliseconds.
const MAX_WS_WRITE_INTERVAL: u64 = 1_000;

/// Frames written to a WebSocket at once are buffered up to this many
/// bytes and sent with one write; larger batches are written as they fill.
/// The buffer only grows to what a batch needs.
const WS_WRITE_BUFFER: usize = 16 << 10;

impl Config {
    pub fn engine(&self) -> EngineConfig {
        EngineConfig {
            ping_interval: Duration::from_millis(self.ping_interval),
            ping_timeout: Duration::from_millis(self.ping_timeout),
            max_payload: self.max_payload,
            upgrade_timeout: Duration::from_millis(self.upgrade_timeout),
            max_queued_bytes: self.max_queued_bytes,
            ws_read_buffer: self.ws_read_buffer.max(256),
            ws_write_buffer: WS_WRITE_BUFFER,
            ws_write_interval: Duration::from_millis(self.ws_write_interval),
            max_poll_packets: self.max_poll_packets,
            sid_key: crate::engineio::SidKey::random(),
            admission: crate::engineio::AdmissionConfig {
                max_sessions: self.max_sessions,
                max_sessions_per_ip: self.max_sessions_per_ip,
                handshake_rate_per_ip: self.handshake_rate_per_ip,
                handshake_burst_per_ip: self.handshake_burst_per_ip,
            },
            body_timeout: Duration::from_millis(self.body_read_timeout),
            max_body_buffer: self.max_body_buffer,
            // v2 clients speak the text parser only.
            allow_eio3: self.allow_eio3 && self.parser == ParserKind::Default,
        }
    }

    /// The recovery settings; `None` with recovery off.
    pub fn recovery(&self) -> Option<crate::socketio::RecoveryConfig> {
        (self.recovery_window > 0).then(|| {
            let window = Duration::from_millis(self.recovery_window);
            crate::socketio::RecoveryConfig {
                window,
                // A live socket's state outlives a missed refresh or two.
                live_ttl: window + Duration::from_millis(self.registry_ttl),
                max_replay: self.recovery_max_log,
                max_event_bytes: self.recovery_max_event_bytes,
            }
        })
    }

    pub fn socketio(&self) -> SocketIoConfig {
        SocketIoConfig {
            connect_timeout: Duration::from_millis(self.connect_timeout),
            limits: crate::socketio::SocketLimits {
                max_rooms_per_socket: self.max_rooms_per_socket,
                max_room_name: self.max_room_name,
                max_event_name: self.max_event_name,
                max_failed_connects: self.max_failed_connects,
            },
            parser: match self.parser {
                ParserKind::Default => crate::socketio::Parser::Default,
                ParserKind::Msgpack => crate::socketio::Parser::Msgpack,
            },
        }
    }
}

#[cfg(test)]
mod redaction_tests {
    use super::without_password;

    #[test]
    fn passwords_are_hidden_and_the_rest_kept() {
        assert_eq!(
            without_password("redis://:hunter2@10.0.0.1:6379/0"),
            "redis://:***@10.0.0.1:6379/0"
        );
        assert_eq!(
            without_password("redis://user:pw@redis:6379/"),
            "redis://user:***@redis:6379/"
        );
        assert_eq!(
            without_password("redis://redis:6379/"),
            "redis://redis:6379/"
        );
        assert_eq!(
            without_password("redis://user@redis/"),
            "redis://user@redis/"
        );
        assert_eq!(without_password("not a url"), "not a url");
    }

    #[test]
    fn messages_lose_the_password_in_every_form() {
        use super::redact_url_in;
        let url = "redis://u:p%40ss@127.0.0.1:1/";
        let message = format!("cannot reach {url}: auth failed for p@ss (p%40ss)");
        let redacted = redact_url_in(&message, url);
        assert!(
            !redacted.contains("p@ss") && !redacted.contains("p%40ss"),
            "{redacted}"
        );
        assert!(
            redacted.contains("redis://u:***@127.0.0.1:1/"),
            "{redacted}"
        );
        assert_eq!(
            redact_url_in("no password here", "redis://h:1/"),
            "no password here"
        );
    }

    #[test]
    fn addresses_are_checked() {
        use super::check_host_port;
        for good in ["127.0.0.1:7100", "gw-0.peers:7100", "[::1]:7100"] {
            assert_eq!(check_host_port(good, true), Ok(()), "{good}");
        }
        for bad in [
            "http://127.0.0.1:7101",
            "127.0.0.1",
            "127.0.0.1:0",
            "127.0.0.1:port",
            ":7100",
            "0.0.0.0:7100",
            "[::]:7100",
            "::1:7100",
            "host:7100/path",
        ] {
            assert!(check_host_port(bad, true).is_err(), "{bad}");
        }
        assert_eq!(check_host_port("0.0.0.0:7000", false), Ok(()));
    }
}
