//! Coordinator configuration: one struct, from flags or `RINGWAY_*`
//! variables.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use ringway_redis::RedisArgs;

/// Shortest lease the coordinator accepts, in milliseconds.
pub const MIN_LEASE_TTL_MS: u64 = 50;

pub use ringway_telemetry::LogFormat;

#[derive(Clone, Parser)]
#[command(
    name = "ringway-coordinator",
    version,
    about = "Ringway coordinator: cluster membership (leases, versioned views) for the gateways"
)]
pub struct Config {
    /// Address of the gRPC `Membership` service (port 0: any free port).
    #[arg(long, env = "RINGWAY_LISTEN", default_value = "0.0.0.0:7000")]
    pub listen: SocketAddr,

    /// Address of the HTTP listener: the dashboard (`/`), `/api/state`,
    /// `/events`, `/healthz`, `/readyz`, `/metrics` (port 0: any free port).
    #[arg(long, env = "RINGWAY_HTTP_LISTEN", default_value = "0.0.0.0:7080")]
    pub http_listen: SocketAddr,

    /// Redis holding the persisted view and the coordinator lock:
    /// `--redis-url` (e.g. `redis://127.0.0.1:6379/0`), `--redis-mode`,
    /// `--redis-sentinel-master`, `--redis-password-file`,
    /// `--redis-ca-file`, `--redis-client-cert`, `--redis-client-key`, as
    /// the gateways take them.
    #[command(flatten)]
    pub redis: RedisArgs,

    /// Milliseconds a lease lives after the last heartbeat.
    #[arg(long, env = "RINGWAY_LEASE_TTL", default_value_t = 5_000)]
    pub lease_ttl: u64,

    /// Milliseconds between gateway heartbeats (told to gateways on Join);
    /// must be below half the lease TTL.
    #[arg(long, env = "RINGWAY_HEARTBEAT_INTERVAL", default_value_t = 1_000)]
    pub heartbeat_interval: u64,

    /// Prefix of the Redis keys (`{prefix}:membership`, `{prefix}:coordinator`).
    #[arg(long, env = "RINGWAY_KEY_PREFIX", default_value = "ringway")]
    pub key_prefix: String,

    /// Log format on stderr (levels by RUST_LOG).
    #[arg(long, env = "RINGWAY_LOG_FORMAT", value_enum, default_value = "human")]
    pub log_format: LogFormat,

    /// File holding the cluster's shared secret (at least 32 bytes; one
    /// trailing newline is ignored), the same file as the gateways':
    /// Membership calls without a credential made with it are refused.
    #[arg(long, env = "RINGWAY_CLUSTER_SECRET_FILE")]
    pub cluster_secret_file: Option<PathBuf>,

    /// PEM CA certificate(s) of the cluster: with `--cluster-tls-cert` and
    /// `--cluster-tls-key`, the Membership service takes mutual TLS only.
    #[arg(long, env = "RINGWAY_CLUSTER_TLS_CA")]
    pub cluster_tls_ca: Option<PathBuf>,

    /// PEM certificate (chain) of the coordinator's gRPC listener.
    #[arg(long, env = "RINGWAY_CLUSTER_TLS_CERT")]
    pub cluster_tls_cert: Option<PathBuf>,

    /// PEM private key of `--cluster-tls-cert`.
    #[arg(long, env = "RINGWAY_CLUSTER_TLS_KEY")]
    pub cluster_tls_key: Option<PathBuf>,

    /// Serve the Membership service with neither a shared secret nor mutual
    /// TLS: anyone who reaches it can join, replace or remove gateways.
    /// For local experiments only; logged as a warning.
    #[arg(
        long,
        env = "RINGWAY_INSECURE_CLUSTER",
        value_parser = clap::builder::BoolishValueParser::new()
    )]
    pub insecure_cluster: bool,

    /// Most gateways in the view; joins of new node ids past it are
    /// refused (RESOURCE_EXHAUSTED).
    #[arg(long, env = "RINGWAY_MAX_MEMBERS", default_value_t = 1024)]
    pub max_members: usize,

    /// Parse and check the configuration, print it, and exit.
    #[arg(long)]
    pub check_config: bool,
}

/// A configuration value the coordinator cannot run with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("--lease-ttl must be between {MIN_LEASE_TTL_MS} and {max} ms, got {got}", max = u32::MAX)]
    LeaseTtl { got: u64 },
    #[error("--heartbeat-interval must be positive")]
    ZeroHeartbeatInterval,
    #[error("--heartbeat-interval ({interval} ms) must be below half of --lease-ttl ({ttl} ms)")]
    HeartbeatTooSlow { interval: u64, ttl: u64 },
    #[error("--key-prefix must be non-empty and without whitespace, got {0:?}")]
    KeyPrefix(String),
    #[error("{0}")]
    Redis(String),
    #[error("the coordinator needs Redis: --redis-url")]
    NoRedis,
    #[error("the coordinator needs a cluster credential: --cluster-secret-file, or mutual TLS (--cluster-tls-ca, --cluster-tls-cert, --cluster-tls-key); --insecure-cluster runs without one (local experiments only)")]
    NoCredential,
    #[error("--insecure-cluster cannot be combined with a cluster credential")]
    InsecureWithCredential,
    #[error("--cluster-tls-ca, --cluster-tls-cert and --cluster-tls-key go together")]
    PartialTls,
    #[error("{0}")]
    Secret(String),
    #[error("--max-members must be positive")]
    ZeroMaxMembers,
}

impl Config {
    /// Checks what clap cannot.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.lease_ttl < MIN_LEASE_TTL_MS || self.lease_ttl > u64::from(u32::MAX) {
            return Err(ConfigError::LeaseTtl {
                got: self.lease_ttl,
            });
        }
        if self.heartbeat_interval == 0 {
            return Err(ConfigError::ZeroHeartbeatInterval);
        }
        if self.heartbeat_interval.saturating_mul(2) >= self.lease_ttl {
            return Err(ConfigError::HeartbeatTooSlow {
                interval: self.heartbeat_interval,
                ttl: self.lease_ttl,
            });
        }
        if self.key_prefix.is_empty() || self.key_prefix.chars().any(char::is_whitespace) {
            return Err(ConfigError::KeyPrefix(self.key_prefix.clone()));
        }
        let tls = [
            self.cluster_tls_ca.is_some(),
            self.cluster_tls_cert.is_some(),
            self.cluster_tls_key.is_some(),
        ];
        if tls.iter().any(|t| *t) && !tls.iter().all(|t| *t) {
            return Err(ConfigError::PartialTls);
        }
        if let Some(path) = &self.cluster_secret_file {
            ringway_proto::auth::ClusterSecret::from_file(path)
                .map_err(|e| ConfigError::Secret(e.to_string()))?;
        }
        let secured = self.cluster_secret_file.is_some() || self.cluster_tls_cert.is_some();
        match (secured, self.insecure_cluster) {
            (false, false) => return Err(ConfigError::NoCredential),
            (true, true) => return Err(ConfigError::InsecureWithCredential),
            _ => {}
        }
        if self.max_members == 0 {
            return Err(ConfigError::ZeroMaxMembers);
        }
        if !self.redis.is_set() {
            return Err(ConfigError::NoRedis);
        }
        self.redis
            .check()
            .map_err(|e| ConfigError::Redis(e.to_string()))?;
        Ok(())
    }

    pub fn lease_ttl(&self) -> Duration {
        Duration::from_millis(self.lease_ttl)
    }

    pub fn heartbeat_interval(&self) -> Duration {
        Duration::from_millis(self.heartbeat_interval)
    }

    /// How often lapsed leases are looked for: half a heartbeat interval,
    /// so a lapse reaches watchers well within one interval.
    pub fn reap_interval(&self) -> Duration {
        Duration::from_millis((self.heartbeat_interval / 2).max(1))
    }

    /// `{prefix}:membership`: the persisted view.
    pub fn membership_key(&self) -> String {
        format!("{}:membership", self.key_prefix)
    }

    /// `{prefix}:coordinator`: the lock naming the acting coordinator.
    pub fn owner_key(&self) -> String {
        format!("{}:coordinator", self.key_prefix)
    }

    /// The cluster credential and mutual TLS of the coordinator.
    pub fn security(&self) -> Result<ringway_proto::auth::ClusterSecurity, String> {
        let secret = self
            .cluster_secret_file
            .as_deref()
            .map(ringway_proto::auth::ClusterSecret::from_file)
            .transpose()
            .map_err(|e| e.to_string())?;
        let tls = match (
            &self.cluster_tls_ca,
            &self.cluster_tls_cert,
            &self.cluster_tls_key,
        ) {
            (Some(ca), Some(cert), Some(key)) => Some(
                ringway_proto::auth::ClusterTls::from_files(ca, cert, key, None)
                    .map_err(|e| e.to_string())?,
            ),
            _ => None,
        };
        Ok(ringway_proto::auth::ClusterSecurity {
            node_id: "coordinator".to_owned(),
            secret,
            tls,
        })
    }

    /// The Redis mode and URLs with their passwords replaced by `***`.
    pub fn redis_url_redacted(&self) -> String {
        format!(
            "{} {}",
            self.redis.redis_mode.as_str(),
            self.redis.redacted()
        )
    }
}

/// Debug without the Redis password (`--check-config` prints this).
impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("listen", &self.listen)
            .field("http_listen", &self.http_listen)
            .field("redis", &self.redis_url_redacted())
            .field("lease_ttl", &self.lease_ttl)
            .field("heartbeat_interval", &self.heartbeat_interval)
            .field("key_prefix", &self.key_prefix)
            .field("log_format", &self.log_format)
            .field("cluster_secret_file", &self.cluster_secret_file)
            .field("cluster_tls_ca", &self.cluster_tls_ca)
            .field("cluster_tls_cert", &self.cluster_tls_cert)
            .field("cluster_tls_key", &self.cluster_tls_key)
            .field("insecure_cluster", &self.insecure_cluster)
            .field("max_members", &self.max_members)
            .field("check_config", &self.check_config)
            .finish()
    }
}

/// Replaces the password of `scheme://user:password@host...` by `***`.
pub use ringway_redis::redact_url;

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Config {
        let mut all = vec!["ringway-coordinator"];
        if !args.contains(&"--redis-url") {
            all.extend_from_slice(&["--redis-url", "redis://127.0.0.1:1/"]);
        }
        if !args
            .iter()
            .any(|a| a.starts_with("--cluster-") || *a == "--insecure-cluster")
        {
            all.push("--insecure-cluster");
        }
        all.extend_from_slice(args);
        match Config::try_parse_from(all) {
            Ok(c) => c,
            Err(e) => panic!("{e}"),
        }
    }

    #[test]
    fn defaults_are_valid() {
        let c = parse(&[]);
        assert_eq!(c.validate(), Ok(()));
        assert_eq!(c.lease_ttl, 5_000);
        assert_eq!(c.heartbeat_interval, 1_000);
        assert_eq!(c.key_prefix, "ringway");
        assert_eq!(c.membership_key(), "ringway:membership");
        assert_eq!(c.owner_key(), "ringway:coordinator");
        assert_eq!(c.listen.port(), 7000);
        assert_eq!(c.http_listen.to_string(), "0.0.0.0:7080");
        let c = parse(&["--http-listen", "127.0.0.1:0"]);
        assert_eq!(c.http_listen.port(), 0);
    }

    #[test]
    fn heartbeat_must_be_below_half_ttl() {
        let c = parse(&["--lease-ttl", "1000", "--heartbeat-interval", "500"]);
        assert!(matches!(
            c.validate(),
            Err(ConfigError::HeartbeatTooSlow { .. })
        ));
        let c = parse(&["--lease-ttl", "1000", "--heartbeat-interval", "499"]);
        assert_eq!(c.validate(), Ok(()));
        let c = parse(&["--heartbeat-interval", "0"]);
        assert_eq!(c.validate(), Err(ConfigError::ZeroHeartbeatInterval));
    }

    #[test]
    fn bad_values_are_refused() {
        assert!(matches!(
            parse(&["--lease-ttl", "10"]).validate(),
            Err(ConfigError::LeaseTtl { .. })
        ));
        assert!(matches!(
            parse(&["--key-prefix", ""]).validate(),
            Err(ConfigError::KeyPrefix(_))
        ));
        assert!(matches!(
            parse(&["--redis-url", "http://nope"]).validate(),
            Err(ConfigError::Redis(_))
        ));
    }

    #[test]
    fn a_credential_is_required() {
        let mut bare = parse(&[]);
        bare.insecure_cluster = false;
        assert_eq!(bare.validate(), Err(ConfigError::NoCredential));
        assert!(matches!(
            parse(&["--cluster-tls-ca", "/ca.pem"]).validate(),
            Err(ConfigError::PartialTls)
        ));
        assert!(matches!(
            parse(&["--cluster-secret-file", "/nonexistent/secret"]).validate(),
            Err(ConfigError::Secret(_))
        ));
        assert!(matches!(
            parse(&["--max-members", "0"]).validate(),
            Err(ConfigError::ZeroMaxMembers)
        ));
    }

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(
            redact_url("redis://user:secret@host:6379/0"),
            "redis://user:***@host:6379/0"
        );
        assert_eq!(redact_url("redis://:secret@host"), "redis://:***@host");
        assert_eq!(redact_url("redis://host:6379"), "redis://host:6379");
        assert_eq!(redact_url("redis://user@host"), "redis://user@host");
        let c = parse(&["--redis-url", "redis://:hunter2@127.0.0.1/"]);
        assert!(!format!("{c:?}").contains("hunter2"));
    }
}
