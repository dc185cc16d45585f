//! The Redis flags of the gateway and the coordinator (feature `args`:
//! the binaries; the stores take only what they resolve to), and what
//! they resolve to.

#[cfg(feature = "args")]
use std::path::{Path, PathBuf};

#[cfg(feature = "args")]
use redis::IntoConnectionInfo;

/// How Ringway reaches Redis.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[cfg_attr(feature = "args", derive(clap::ValueEnum))]
pub enum RedisMode {
    /// One Redis server (`--redis-url` once).
    #[default]
    Standalone,
    /// A Redis Cluster: `--redis-url` names seed nodes (any of its
    /// masters or replicas); the client learns the slots from them.
    Cluster,
    /// A primary managed by Sentinel: `--redis-url` names the Sentinels,
    /// `--redis-sentinel-master` the primary's name; a failover is
    /// followed by asking the Sentinels again.
    Sentinel,
}

impl RedisMode {
    pub fn as_str(self) -> &'static str {
        match self {
            RedisMode::Standalone => "standalone",
            RedisMode::Cluster => "cluster",
            RedisMode::Sentinel => "sentinel",
        }
    }
}

/// The Redis flags (flattened into each binary's own).
#[cfg(feature = "args")]
#[derive(Debug, Clone, Default, clap::Args)]
pub struct RedisArgs {
    /// Redis URL (`redis://host:port/db`; `rediss://` for TLS). Repeat it
    /// (or separate with commas) for the seed nodes of a Redis Cluster or
    /// the Sentinels. Put the password in --redis-password-file, not here.
    #[arg(long = "redis-url", env = "RINGWAY_REDIS_URL", value_delimiter = ',')]
    pub redis_urls: Vec<String>,

    /// standalone (one server), cluster (a Redis Cluster, the URLs its
    /// seed nodes) or sentinel (the URLs the Sentinels).
    #[arg(
        long,
        env = "RINGWAY_REDIS_MODE",
        value_enum,
        default_value = "standalone"
    )]
    pub redis_mode: RedisMode,

    /// The primary's name the Sentinels know (`sentinel monitor <name>`),
    /// with --redis-mode sentinel.
    #[arg(long, env = "RINGWAY_REDIS_SENTINEL_MASTER")]
    pub redis_sentinel_master: Option<String>,

    /// File holding the Redis password (of the data nodes; Sentinels take
    /// theirs from their URLs). Trailing newlines are ignored.
    #[arg(long, env = "RINGWAY_REDIS_PASSWORD_FILE")]
    pub redis_password_file: Option<PathBuf>,

    /// CA certificate (PEM) that Redis' TLS certificates are checked
    /// against, instead of the system's roots (`rediss://` URLs).
    #[arg(long, env = "RINGWAY_REDIS_CA_FILE")]
    pub redis_ca_file: Option<PathBuf>,

    /// Client certificate (PEM) for Redis servers that require one
    /// (`tls-auth-clients yes`), with --redis-client-key.
    #[arg(long, env = "RINGWAY_REDIS_CLIENT_CERT")]
    pub redis_client_cert: Option<PathBuf>,

    /// The client certificate's private key (PEM).
    #[arg(long, env = "RINGWAY_REDIS_CLIENT_KEY")]
    pub redis_client_key: Option<PathBuf>,
}

/// A Redis set-up that cannot work, said before connecting.
#[derive(Debug, thiserror::Error)]
pub enum RedisConfigError {
    #[error("--redis-url {url}: {reason}")]
    Url { url: String, reason: String },
    #[error("--redis-mode {mode} takes {expected}, got {got} --redis-url")]
    UrlCount {
        mode: &'static str,
        expected: &'static str,
        got: usize,
    },
    #[error("--redis-mode sentinel needs --redis-sentinel-master")]
    NoSentinelMaster,
    #[error("--redis-sentinel-master is for --redis-mode sentinel")]
    SentinelMasterWithoutSentinel,
    #[error("--redis-client-cert and --redis-client-key go together")]
    HalfClientCertificate,
    #[error("TLS files (--redis-ca-file, --redis-client-cert) need rediss:// URLs")]
    TlsFilesWithoutTls,
    #[error("cannot read {flag} {path}: {reason}")]
    File {
        flag: &'static str,
        path: String,
        reason: String,
    },
}

/// The flags, checked and with their files read: what [`RedisConn`]
/// connects with.
///
/// [`RedisConn`]: crate::RedisConn
#[derive(Clone)]
pub struct RedisConfig {
    pub mode: RedisMode,
    pub urls: Vec<String>,
    pub sentinel_master: Option<String>,
    pub password: Option<String>,
    pub ca: Option<Vec<u8>>,
    pub client_cert: Option<(Vec<u8>, Vec<u8>)>,
}

impl std::fmt::Debug for RedisConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisConfig")
            .field("mode", &self.mode)
            .field(
                "urls",
                &self.urls.iter().map(|u| redact_url(u)).collect::<Vec<_>>(),
            )
            .field("sentinel_master", &self.sentinel_master)
            .field("password", &self.password.as_ref().map(|_| "***"))
            .field("ca", &self.ca.is_some())
            .field("client_cert", &self.client_cert.is_some())
            .finish()
    }
}

impl RedisConfig {
    /// Whether the URLs ask for TLS.
    pub fn tls(&self) -> bool {
        self.urls.iter().any(|u| u.starts_with("rediss://"))
    }

    /// The URLs without their passwords, for logs.
    pub fn redacted(&self) -> String {
        let urls: Vec<String> = self.urls.iter().map(|u| redact_url(u)).collect();
        format!("{} {}", self.mode.as_str(), urls.join(","))
    }
}

#[cfg(feature = "args")]
impl RedisArgs {
    /// Whether a Redis is configured at all.
    pub fn is_set(&self) -> bool {
        !self.redis_urls.is_empty()
    }

    /// The URLs without their passwords, for logs and `--help`-like output.
    pub fn redacted(&self) -> String {
        let urls: Vec<String> = self.redis_urls.iter().map(|u| redact_url(u)).collect();
        urls.join(",")
    }

    /// Checks the flags against each other and the URLs' syntax, without
    /// reading files.
    pub fn check(&self) -> Result<(), RedisConfigError> {
        let n = self.redis_urls.len();
        match self.redis_mode {
            RedisMode::Standalone if n != 1 => {
                return Err(RedisConfigError::UrlCount {
                    mode: "standalone",
                    expected: "exactly one",
                    got: n,
                })
            }
            RedisMode::Cluster | RedisMode::Sentinel if n == 0 => {
                return Err(RedisConfigError::UrlCount {
                    mode: self.redis_mode.as_str(),
                    expected: "at least one",
                    got: 0,
                })
            }
            _ => {}
        }
        match (self.redis_mode, &self.redis_sentinel_master) {
            (RedisMode::Sentinel, None) => return Err(RedisConfigError::NoSentinelMaster),
            (RedisMode::Standalone | RedisMode::Cluster, Some(_)) => {
                return Err(RedisConfigError::SentinelMasterWithoutSentinel)
            }
            _ => {}
        }
        for url in &self.redis_urls {
            let shown = redact_url(url);
            if !(url.starts_with("redis://") || url.starts_with("rediss://")) {
                return Err(RedisConfigError::Url {
                    url: shown,
                    reason: "not a redis:// or rediss:// URL".into(),
                });
            }
            url.as_str()
                .into_connection_info()
                .map_err(|e| RedisConfigError::Url {
                    url: shown,
                    reason: e.to_string(),
                })?;
        }
        if self.redis_client_cert.is_some() != self.redis_client_key.is_some() {
            return Err(RedisConfigError::HalfClientCertificate);
        }
        let tls = self.redis_urls.iter().any(|u| u.starts_with("rediss://"));
        if !tls && (self.redis_ca_file.is_some() || self.redis_client_cert.is_some()) {
            return Err(RedisConfigError::TlsFilesWithoutTls);
        }
        Ok(())
    }

    /// Checks the flags and reads the password and certificate files.
    pub fn resolve(&self) -> Result<RedisConfig, RedisConfigError> {
        self.check()?;
        let password = self
            .redis_password_file
            .as_deref()
            .map(|p| read("--redis-password-file", p))
            .transpose()?
            .map(|bytes| {
                String::from_utf8_lossy(&bytes)
                    .trim_end_matches(['\r', '\n'])
                    .to_owned()
            });
        let ca = self
            .redis_ca_file
            .as_deref()
            .map(|p| read("--redis-ca-file", p))
            .transpose()?;
        let client_cert = match (&self.redis_client_cert, &self.redis_client_key) {
            (Some(cert), Some(key)) => Some((
                read("--redis-client-cert", cert)?,
                read("--redis-client-key", key)?,
            )),
            _ => None,
        };
        Ok(RedisConfig {
            mode: self.redis_mode,
            urls: self.redis_urls.clone(),
            sentinel_master: self.redis_sentinel_master.clone(),
            password,
            ca,
            client_cert,
        })
    }
}

#[cfg(feature = "args")]
fn read(flag: &'static str, path: &Path) -> Result<Vec<u8>, RedisConfigError> {
    std::fs::read(path).map_err(|e| RedisConfigError::File {
        flag,
        path: path.display().to_string(),
        reason: e.to_string(),
    })
}

/// A Redis URL with its password (if any) replaced by `***`:
/// `redis://user:***@host:6379/0`.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    let Some((userinfo, host)) = authority.rsplit_once('@') else {
        return url.to_owned();
    };
    match userinfo.split_once(':') {
        Some((user, _)) => format!("{scheme}://{user}:***@{host}{path}"),
        None => url.to_owned(),
    }
}

#[cfg(all(test, feature = "args"))]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        redis: RedisArgs,
    }

    fn parse(args: &[&str]) -> RedisArgs {
        let mut all = vec!["test"];
        all.extend_from_slice(args);
        Cli::try_parse_from(all).expect("flags parse").redis
    }

    #[test]
    fn modes_take_the_urls_they_need() {
        assert!(parse(&["--redis-url", "redis://a:1/"]).check().is_ok());
        let two = ["--redis-url", "redis://a:1/", "--redis-url", "redis://b:1/"];
        assert!(matches!(
            parse(&two).check(),
            Err(RedisConfigError::UrlCount { got: 2, .. })
        ));
        let mut cluster = two.to_vec();
        cluster.extend_from_slice(&["--redis-mode", "cluster"]);
        assert!(parse(&cluster).check().is_ok());
        let commas = parse(&[
            "--redis-url",
            "redis://a:1/,redis://b:1/",
            "--redis-mode",
            "cluster",
        ]);
        assert_eq!(commas.redis_urls.len(), 2);
        let sentinel = ["--redis-url", "redis://s:26379", "--redis-mode", "sentinel"];
        assert!(matches!(
            parse(&sentinel).check(),
            Err(RedisConfigError::NoSentinelMaster)
        ));
        let mut named = sentinel.to_vec();
        named.extend_from_slice(&["--redis-sentinel-master", "mymaster"]);
        assert!(parse(&named).check().is_ok());
        assert!(matches!(
            parse(&[
                "--redis-url",
                "redis://a:1/",
                "--redis-sentinel-master",
                "m"
            ])
            .check(),
            Err(RedisConfigError::SentinelMasterWithoutSentinel)
        ));
    }

    #[test]
    fn bad_urls_and_half_tls_are_refused_without_the_password() {
        let err = parse(&["--redis-url", "http://u:secret@a:1/"])
            .check()
            .expect_err("not redis");
        assert!(!err.to_string().contains("secret"), "{err}");
        assert!(matches!(
            parse(&["--redis-url", "redis://a:1/", "--redis-ca-file", "/ca.pem"]).check(),
            Err(RedisConfigError::TlsFilesWithoutTls)
        ));
        assert!(matches!(
            parse(&[
                "--redis-url",
                "rediss://a:1/",
                "--redis-client-cert",
                "/c.pem"
            ])
            .check(),
            Err(RedisConfigError::HalfClientCertificate)
        ));
    }

    #[test]
    fn the_password_file_is_read_and_trimmed() {
        let dir = std::env::temp_dir().join(format!("ringway-redis-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let file = dir.join("password");
        std::fs::write(&file, "hunter2\n").expect("write");
        let args = parse(&[
            "--redis-url",
            "redis://a:1/",
            "--redis-password-file",
            file.to_str().expect("utf-8 path"),
        ]);
        let config = args.resolve().expect("resolves");
        assert_eq!(config.password.as_deref(), Some("hunter2"));
        assert!(!format!("{config:?}").contains("hunter2"));
        let missing = parse(&[
            "--redis-url",
            "redis://a:1/",
            "--redis-password-file",
            "/nope",
        ]);
        assert!(matches!(
            missing.resolve(),
            Err(RedisConfigError::File { .. })
        ));
    }

    #[test]
    fn urls_are_redacted() {
        assert_eq!(
            redact_url("redis://user:secret@host:6379/0"),
            "redis://user:***@host:6379/0"
        );
        assert_eq!(redact_url("rediss://:secret@host"), "rediss://:***@host");
        assert_eq!(redact_url("redis://host:6379"), "redis://host:6379");
        assert_eq!(redact_url("redis://user@host"), "redis://user@host");
        assert_eq!(redact_url("redis://u:p@ss@h:1/"), "redis://u:***@h:1/");
    }
}
