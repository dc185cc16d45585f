//! One connection type over the three modes.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::future::join_all;
use redis::aio::{
    ConnectionLike, ConnectionManager, ConnectionManagerConfig, MultiplexedConnection,
};
use redis::cluster::ClusterClientBuilder;
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::Slot;
use redis::sentinel::{SentinelClient, SentinelClientBuilder, SentinelServerType};
use redis::{
    AsyncConnectionConfig, Client, ClientTlsConfig, Cmd, ConnectionInfo, IntoConnectionInfo,
    Pipeline, RedisError, RedisFuture, RedisResult, TlsCertificates, TlsMode, Value,
};
use tracing::{debug, info};

use crate::args::{RedisConfig, RedisMode};

/// How a connection waits.
#[derive(Debug, Clone, Copy)]
pub struct ConnectOptions {
    /// Bound of one connection attempt.
    pub connect_timeout: Duration,
    /// Bound of one reply (longer than any `BLOCK` sent on it).
    pub response_timeout: Duration,
    /// Reconnection attempts of a standalone connection per failed call.
    pub retries: usize,
    /// Back-off between reconnection attempts.
    pub min_delay: Duration,
    pub max_delay: Duration,
}

impl ConnectOptions {
    pub fn new(connect_timeout: Duration, response_timeout: Duration) -> Self {
        ConnectOptions {
            connect_timeout,
            response_timeout,
            retries: 1,
            min_delay: Duration::from_millis(100),
            max_delay: Duration::from_millis(500),
        }
    }
}

/// A connection to Redis in any mode: cheap to clone (clones share it),
/// used as any of the redis crate's async connections (commands,
/// pipelines, scripts). It reconnects by itself: a standalone one to the
/// same server, a cluster one to the slots' new masters, a Sentinel one to
/// the primary the Sentinels name after a failover.
#[derive(Clone)]
pub enum RedisConn {
    Standalone(ConnectionManager),
    Cluster(ClusterConnection),
    Sentinel(SentinelConn),
}

impl RedisConn {
    /// Connects as `config` says.
    pub async fn connect(config: &RedisConfig, options: ConnectOptions) -> RedisResult<RedisConn> {
        match config.mode {
            RedisMode::Standalone => {
                let client = standalone_client(config)?;
                let manager = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(options.connect_timeout))
                    .set_response_timeout(Some(options.response_timeout))
                    .set_number_of_retries(options.retries)
                    .set_min_delay(options.min_delay)
                    .set_max_delay(options.max_delay);
                let conn = ConnectionManager::new_with_config(client, manager).await?;
                Ok(RedisConn::Standalone(conn))
            }
            RedisMode::Cluster => {
                let mut builder = ClusterClientBuilder::new(
                    config
                        .urls
                        .iter()
                        .map(|u| u.as_str().into_connection_info())
                        .collect::<RedisResult<Vec<ConnectionInfo>>>()?,
                )
                .connection_timeout(options.connect_timeout)
                .response_timeout(options.response_timeout);
                if let Some(password) = &config.password {
                    builder = builder.password(password);
                }
                if config.tls() {
                    builder = builder.tls(TlsMode::Secure);
                    if let Some(certs) = certificates(config) {
                        builder = builder.certs(certs);
                    }
                }
                let conn = builder.build()?.get_async_connection().await?;
                Ok(RedisConn::Cluster(conn))
            }
            RedisMode::Sentinel => {
                let conn = SentinelConn::connect(config, options).await?;
                Ok(RedisConn::Sentinel(conn))
            }
        }
    }
}

impl RedisConn {
    /// Runs commands that each touch the one key given beside it, in as
    /// few round trips as the mode allows: one pipeline on one server, one
    /// pipeline per hash slot (side by side) on a Redis Cluster, which
    /// refuses a pipeline across slots. The replies come in the order of
    /// the commands.
    pub async fn query_keyed(&self, commands: Vec<(String, Cmd)>) -> RedisResult<Vec<Value>> {
        let mut conn = self.clone();
        if !matches!(self, RedisConn::Cluster(_)) {
            let mut pipe = Pipeline::new();
            for (_, cmd) in &commands {
                pipe.add_command(cmd.clone());
            }
            return pipe.query_async(&mut conn).await;
        }
        let mut groups: HashMap<Slot, (Vec<usize>, Pipeline)> = HashMap::new();
        for (i, (key, cmd)) in commands.iter().enumerate() {
            let (indices, pipe) = groups
                .entry(Slot::for_key(key.as_bytes()))
                .or_insert_with(|| (Vec::new(), Pipeline::new()));
            indices.push(i);
            pipe.add_command(cmd.clone());
        }
        let replies = join_all(groups.into_values().map(|(indices, pipe)| {
            let mut conn = conn.clone();
            async move {
                let values: Vec<Value> = pipe.query_async(&mut conn).await?;
                Ok::<_, RedisError>(indices.into_iter().zip(values).collect::<Vec<_>>())
            }
        }))
        .await;
        let mut out = vec![Value::Nil; commands.len()];
        for group in replies {
            for (i, value) in group? {
                out[i] = value;
            }
        }
        Ok(out)
    }
}

impl ConnectionLike for RedisConn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            RedisConn::Standalone(c) => c.req_packed_command(cmd),
            RedisConn::Cluster(c) => c.req_packed_command(cmd),
            RedisConn::Sentinel(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            RedisConn::Standalone(c) => c.req_packed_commands(pipeline, offset, count),
            RedisConn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
            RedisConn::Sentinel(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            RedisConn::Standalone(c) => c.get_db(),
            RedisConn::Cluster(c) => c.get_db(),
            RedisConn::Sentinel(c) => c.get_db(),
        }
    }
}

/// The URL's connection info with the password of --redis-password-file.
fn with_password(info: ConnectionInfo, password: &Option<String>) -> ConnectionInfo {
    match password {
        Some(password) => {
            let settings = info.redis_settings().clone().set_password(password);
            info.set_redis_settings(settings)
        }
        None => info,
    }
}

/// The CA and client certificate given, if any (otherwise the system's
/// roots check the server).
fn certificates(config: &RedisConfig) -> Option<TlsCertificates> {
    if config.ca.is_none() && config.client_cert.is_none() {
        return None;
    }
    Some(TlsCertificates {
        client_tls: config
            .client_cert
            .as_ref()
            .map(|(cert, key)| ClientTlsConfig {
                client_cert: cert.clone(),
                client_key: key.clone(),
            }),
        root_cert: config.ca.clone(),
    })
}

fn standalone_client(config: &RedisConfig) -> RedisResult<Client> {
    let url = config.urls.first().map(String::as_str).unwrap_or_default();
    let info = with_password(url.into_connection_info()?, &config.password);
    match certificates(config) {
        Some(certs) => Client::build_with_tls(info, certs),
        None => Client::open(info),
    }
}

/// A connection to the primary the Sentinels name. After an error that
/// says the primary may have changed (the connection dropped or timed
/// out, `READONLY` from a demoted primary), the next call asks the
/// Sentinels again and connects to the primary they name now.
#[derive(Clone)]
pub struct SentinelConn {
    inner: Arc<SentinelInner>,
}

struct SentinelInner {
    sentinel: tokio::sync::Mutex<SentinelClient>,
    config: AsyncConnectionConfig,
    /// The current connection with its number (a failure clears only the
    /// connection it happened on).
    current: Mutex<Option<(u64, MultiplexedConnection)>>,
    /// The number the next connection gets.
    next: AtomicU64,
    master: String,
}

impl SentinelConn {
    async fn connect(config: &RedisConfig, options: ConnectOptions) -> RedisResult<SentinelConn> {
        let infos = config
            .urls
            .iter()
            .map(|u| u.as_str().into_connection_info())
            .collect::<RedisResult<Vec<ConnectionInfo>>>()?;
        let master = config.sentinel_master.clone().unwrap_or_default();
        let mut builder = SentinelClientBuilder::new(
            infos.iter().map(|i| i.addr().clone()),
            &master,
            SentinelServerType::Master,
        )?;
        let first = infos.first().map(|i| i.redis_settings().clone());
        if let Some(password) = first.as_ref().and_then(|s| s.password()) {
            builder = builder.set_client_to_sentinel_password(password);
        }
        // The URL's user is the data nodes' (an ACL user), as in the
        // other modes.
        if let Some(user) = first.as_ref().and_then(|s| s.username()) {
            builder = builder.set_client_to_redis_username(user);
        }
        if let Some(db) = first.as_ref().map(|s| s.db()).filter(|db| *db != 0) {
            builder = builder.set_client_to_redis_db(db);
        }
        if let Some(password) = &config.password {
            builder = builder.set_client_to_redis_password(password);
        }
        if config.tls() {
            builder = builder
                .set_client_to_redis_tls_mode(TlsMode::Secure)
                .set_client_to_sentinel_tls_mode(TlsMode::Secure);
            if let Some(certs) = certificates(config) {
                builder = builder
                    .set_client_to_redis_certificates(certs.clone())
                    .set_client_to_sentinel_certificates(certs);
            }
        }
        let conn = SentinelConn {
            inner: Arc::new(SentinelInner {
                sentinel: tokio::sync::Mutex::new(builder.build()?),
                config: AsyncConnectionConfig::new()
                    .set_connection_timeout(Some(options.connect_timeout))
                    .set_response_timeout(Some(options.response_timeout)),
                current: Mutex::new(None),
                next: AtomicU64::new(0),
                master,
            }),
        };
        // Fails now if no Sentinel names a reachable primary.
        conn.connection().await?;
        Ok(conn)
    }

    fn current(&self) -> Option<(u64, MultiplexedConnection)> {
        self.inner
            .current
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The connection to the primary, asking the Sentinels for it if there
    /// is none (one caller asks; the others wait for its answer).
    async fn connection(&self) -> RedisResult<(u64, MultiplexedConnection)> {
        if let Some(current) = self.current() {
            return Ok(current);
        }
        let mut sentinel = self.inner.sentinel.lock().await;
        if let Some(current) = self.current() {
            return Ok(current);
        }
        let client = sentinel.async_get_client().await?;
        let conn = client
            .get_multiplexed_async_connection_with_config(&self.inner.config)
            .await?;
        let number = self.inner.next.fetch_add(1, Ordering::Relaxed);
        let mut current = self.inner.current.lock().unwrap_or_else(|e| e.into_inner());
        info!(master = %self.inner.master, addr = %client.get_connection_info().addr(), "redis: connected to the primary the Sentinels name");
        *current = Some((number, conn.clone()));
        Ok((number, conn))
    }

    /// After a failed call on connection `number`: drops it if the error
    /// says the primary may be elsewhere now.
    fn failed(&self, number: u64, err: &RedisError) {
        let moved = err.is_io_error()
            || err.is_connection_dropped()
            || err.is_connection_refusal()
            || err.is_timeout()
            || err.is_unrecoverable_error()
            || err.code() == Some("READONLY");
        if !moved {
            return;
        }
        let mut current = self.inner.current.lock().unwrap_or_else(|e| e.into_inner());
        if current.as_ref().is_some_and(|(n, _)| *n == number) {
            debug!(master = %self.inner.master, %err, "redis: asking the Sentinels for the primary again");
            *current = None;
        }
    }
}

impl ConnectionLike for SentinelConn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        Box::pin(async move {
            let (number, mut conn) = self.connection().await?;
            let result = conn.req_packed_command(cmd).await;
            if let Err(err) = &result {
                self.failed(number, err);
            }
            result
        })
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        Box::pin(async move {
            let (number, mut conn) = self.connection().await?;
            let result = conn.req_packed_commands(pipeline, offset, count).await;
            if let Err(err) = &result {
                self.failed(number, err);
            }
            result
        })
    }

    fn get_db(&self) -> i64 {
        self.current().map_or(0, |(_, c)| c.get_db())
    }
}
