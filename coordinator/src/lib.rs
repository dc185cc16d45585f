//! Ringway coordinator: owns the cluster membership.
//!
//! Gateways `Join` (and get a lease), `Heartbeat` to keep it, `Leave` to
//! drain, and `Watch` a versioned view of the live members
//! (`ringway.cluster.v1.Membership`, see `proto/`). The view is persisted
//! in Redis so that a restarted coordinator continues the same epochs.
//!
//! - [`membership`]: the state machine (pure, no I/O).
//! - [`service`]: the shared state, the reaper and the tonic service.
//! - [`store`]: Redis persistence and the coordinator lock.
//! - [`events`]: the recent membership events, for operators.
//! - the ring shares on the dashboard come from `ringway-ring`, the gateways' own ring.
//! - [`dashboard`]: the HTTP listener (dashboard page, state as JSON and as
//!   Server-Sent Events, health, metrics).
//! - [`run`]: the whole coordinator, as the binary runs it.
//!
//! # One acting coordinator
//!
//! Several coordinators may run (e.g. two replicas), but only one acts: at
//! start each tries to take the lock `{prefix}:coordinator` (`SET NX PX`,
//! TTL one lease TTL, value a random instance id). While another live
//! coordinator holds it, a starting coordinator waits (retrying every
//! heartbeat interval, not listening on gRPC yet; its HTTP port answers,
//! `/readyz` with 503). The acting coordinator renews
//! the lock every heartbeat interval and deletes it on a clean shutdown, so
//! a standby takes over at once after a clean stop, and within one lease
//! TTL after a crash. If the acting coordinator finds the lock held by
//! someone else (it could not renew it in time, e.g. Redis was away longer
//! than a TTL, and a standby took over), it stops with
//! [`CoordinatorError::LostOwnership`] rather than serve a second view.
//! This is a simple lock, not a consensus protocol: while Redis is
//! unreachable, the acting coordinator keeps serving from memory.
//!
//! # Persistence
//!
//! Every new view is written to `{prefix}:membership` by a background task
//! (RPCs never wait on Redis). The write is a Lua script that only replaces
//! a lower epoch. A failed write is retried with back-off, at the next
//! change, and by a periodic re-check every lease TTL (which also restores
//! the key if Redis lost its data). On start the stored view is loaded:
//! its members stay, with a grace lease of one TTL, and the epoch goes on
//! from one past the stored one (see [`membership::Membership::restore`]).

pub mod config;
pub mod dashboard;
pub mod events;
pub mod membership;
pub mod service;
pub mod store;
pub mod telemetry;

use std::future::Future;
use std::io::Write;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ringway_proto::cluster::v1::View;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tonic::service::interceptor::InterceptedService;
use tracing::{error, info, warn};

use crate::config::{Config, ConfigError};
use crate::dashboard::Dashboard;
use crate::events::EventKind;
use crate::membership::Membership;
use crate::service::{reap_loop, stopped, MembershipHub, MembershipService};
use crate::store::{Ownership, SaveOutcome, Store, StoreError};

pub use ringway_proto::cluster::v1 as proto;

/// This process's id (`<random hex>-pid<pid>`): its `service.instance.id`,
/// and the value its first coordinator run holds the lock with.
pub fn instance_id() -> &'static str {
    static ID: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    ID.get_or_init(|| format!("{:016x}-pid{}", rand::random::<u64>(), std::process::id()))
}

/// The lock id of one run: [`instance_id`], with a suffix past the first
/// run, so two coordinators in one process never share the lock.
fn run_instance_id() -> String {
    static RUNS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    match RUNS.fetch_add(1, std::sync::atomic::Ordering::Relaxed) {
        0 => instance_id().to_owned(),
        n => format!("{}-{n}", instance_id()),
    }
}

/// How long in-flight RPCs may take to finish after a shutdown signal.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// Least and most delay between retries of a failed persistence write.
const RETRY_MIN: Duration = Duration::from_millis(200);
const RETRY_MAX: Duration = Duration::from_secs(5);
/// At most one warning per this period for a failing Redis.
const WARN_EVERY: Duration = Duration::from_secs(10);

/// Why the coordinator could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum CoordinatorError {
    #[error("invalid configuration: {0}")]
    Config(#[from] ConfigError),
    #[error("cannot reach Redis at {url}: {source}")]
    RedisUnavailable {
        url: String,
        #[source]
        source: StoreError,
    },
    #[error("{0}; delete the key (losing the epoch) or fix it")]
    StoredView(#[source] StoreError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("gRPC server failed: {0}")]
    Serve(#[from] tonic::transport::Error),
    #[error("another coordinator ({holder}) took the coordinator lock")]
    LostOwnership { holder: String },
    #[error("cluster credential: {0}")]
    Security(String),
}

impl CoordinatorError {
    /// Process exit code: 2 bad configuration, 3 Redis unreachable at
    /// start, 1 anything else.
    pub fn exit_code(&self) -> u8 {
        match self {
            CoordinatorError::Config(_) | CoordinatorError::Security(_) => 2,
            CoordinatorError::RedisUnavailable { .. } => 3,
            _ => 1,
        }
    }
}

/// A listener the coordinator bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listener {
    /// The HTTP port (`--http-listen`): bound at start, standby or not.
    Http,
    /// The gRPC Membership service (`--listen`): bound once acting.
    Grpc,
}

/// Runs the coordinator until `shutdown` resolves, as the binary does:
/// prints `ringway-coordinator http on ADDR` once the HTTP port is bound,
/// and `ringway-coordinator listening on ADDR` once the gRPC service
/// listens (ADDR the bound `host:port`), on stdout.
pub async fn run<F>(config: Config, shutdown: F) -> Result<(), CoordinatorError>
where
    F: Future<Output = ()> + Send + 'static,
{
    run_with(config, shutdown, |listener, addr| {
        // Tests and scripts read the bound addresses from these lines.
        let mut out = std::io::stdout().lock();
        let _ = match listener {
            Listener::Http => writeln!(out, "ringway-coordinator http on {addr}"),
            Listener::Grpc => writeln!(out, "ringway-coordinator listening on {addr}"),
        };
        let _ = out.flush();
    })
    .await
}

/// [`run`], calling `on_ready` with each bound address instead of printing.
pub async fn run_with<F>(
    config: Config,
    shutdown: F,
    on_ready: impl FnMut(Listener, SocketAddr),
) -> Result<(), CoordinatorError>
where
    F: Future<Output = ()> + Send + 'static,
{
    config.validate()?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let stop_tx = Arc::new(stop_tx);
    let signal_task = {
        let stop_tx = stop_tx.clone();
        tokio::spawn(async move {
            shutdown.await;
            stop_tx.send_replace(true);
        })
    };
    let result = run_inner(&config, stop_tx, stop_rx, on_ready).await;
    signal_task.abort();
    result
}

async fn run_inner(
    config: &Config,
    stop_tx: Arc<watch::Sender<bool>>,
    stop_rx: watch::Receiver<bool>,
    mut on_ready: impl FnMut(Listener, SocketAddr),
) -> Result<(), CoordinatorError> {
    let redis_unavailable = |source| CoordinatorError::RedisUnavailable {
        url: config.redis_url_redacted(),
        source,
    };
    let redis = config
        .redis
        .resolve()
        .map_err(|e| CoordinatorError::Config(ConfigError::Redis(e.to_string())))?;
    let store = Store::connect(&redis, &config.key_prefix, run_instance_id())
        .await
        .map_err(redis_unavailable)?;
    info!(redis = %config.redis_url_redacted(), instance = store.instance_id(), "connected to Redis");

    // The HTTP port is up from now on, standby or acting (a standby is
    // alive, just not ready).
    let http_bind_error = |source| CoordinatorError::Bind {
        addr: config.http_listen,
        source,
    };
    let http_listener = tokio::net::TcpListener::bind(config.http_listen)
        .await
        .map_err(http_bind_error)?;
    let http_addr = http_listener.local_addr().map_err(http_bind_error)?;
    let dashboard = Dashboard::new(
        store.instance_id(),
        config.lease_ttl(),
        config.heartbeat_interval(),
        stop_rx.clone(),
    );
    let _observers = telemetry::register_observers(dashboard.clone());
    let http = tokio::spawn(dashboard::http::serve(http_listener, dashboard.clone()));
    info!(%http_addr, "HTTP listening (dashboard, /healthz, /readyz)");
    on_ready(Listener::Http, http_addr);

    let result = run_coordinator(
        config,
        &store,
        &dashboard,
        stop_tx.clone(),
        stop_rx,
        |addr| on_ready(Listener::Grpc, addr),
    )
    .await;
    stop_tx.send_replace(true);
    if tokio::time::timeout(SHUTDOWN_GRACE, http).await.is_err() {
        warn!("the HTTP listener did not stop in {SHUTDOWN_GRACE:?}");
    }
    result
}

/// Takes the coordinator lock, then serves the Membership service until
/// the stop.
async fn run_coordinator(
    config: &Config,
    store: &Store,
    dashboard: &Dashboard,
    stop_tx: Arc<watch::Sender<bool>>,
    mut stop_rx: watch::Receiver<bool>,
    on_ready: impl FnOnce(SocketAddr),
) -> Result<(), CoordinatorError> {
    let redis_unavailable = |source| CoordinatorError::RedisUnavailable {
        url: config.redis_url_redacted(),
        source,
    };
    let security = config.security().map_err(CoordinatorError::Security)?;
    if !security.is_secure() {
        warn!("--insecure-cluster: Membership calls are neither authenticated nor encrypted; anyone who reaches the port can join, replace or remove gateways");
    }
    if !acquire_ownership(store, config, &mut stop_rx)
        .await
        .map_err(redis_unavailable)?
    {
        info!("stopped before taking the coordinator lock");
        return Ok(());
    }

    let (membership, start) = match store.load_view().await {
        Ok(Some(view)) => {
            let stored_epoch = view.epoch;
            let m = Membership::restore(view, config.lease_ttl(), Instant::now());
            info!(
                epoch = m.epoch(),
                members = m.len(),
                "restored the stored view; members have one lease TTL to join again"
            );
            let start = format!(
                "took the coordinator lock; restored {} members from the view stored at epoch {stored_epoch}",
                m.len()
            );
            (m, start)
        }
        Ok(None) => {
            info!(
                key = store.membership_key(),
                "no stored view, starting at epoch 0"
            );
            let start = "took the coordinator lock; no stored view, starting at epoch 0".to_owned();
            (Membership::new(config.lease_ttl()), start)
        }
        Err(err @ StoreError::Corrupt { .. }) => {
            let _ = store.release_owner().await;
            return Err(CoordinatorError::StoredView(err));
        }
        Err(err) => {
            let _ = store.release_owner().await;
            return Err(redis_unavailable(err));
        }
    };
    let member_key = match store.member_key().await {
        Ok(key) => key,
        Err(err) => {
            let _ = store.release_owner().await;
            return Err(redis_unavailable(err));
        }
    };
    let hub = MembershipHub::with_limits(
        membership,
        config.heartbeat_interval(),
        member_key,
        config.max_members,
    );
    hub.record(EventKind::Start, None, start);

    let listener = match tokio::net::TcpListener::bind(config.listen).await {
        Ok(l) => l,
        Err(source) => {
            let _ = store.release_owner().await;
            return Err(CoordinatorError::Bind {
                addr: config.listen,
                source,
            });
        }
    };
    let addr = listener
        .local_addr()
        .map_err(|source| CoordinatorError::Bind {
            addr: config.listen,
            source,
        })?;

    let reaper = tokio::spawn(reap_loop(
        hub.clone(),
        config.reap_interval(),
        stop_rx.clone(),
    ));
    let persister = tokio::spawn(persist_loop(
        store.clone(),
        hub.subscribe(),
        stop_rx.clone(),
        config.lease_ttl(),
    ));
    let owner: JoinHandle<Result<(), CoordinatorError>> = tokio::spawn(owner_loop(
        store.clone(),
        config.lease_ttl(),
        config.heartbeat_interval(),
        stop_tx.clone(),
        stop_rx.clone(),
    ));

    info!(
        %addr,
        lease_ttl_ms = config.lease_ttl,
        heartbeat_interval_ms = config.heartbeat_interval,
        epoch = hub.epoch(),
        "ringway-coordinator listening"
    );
    dashboard.set_acting(hub.clone(), addr);
    on_ready(addr);

    let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
    let guard = security.guard().on_refusal(Arc::new(|reason| {
        telemetry::metrics()
            .auth_refusals
            .add(1, &ringway_telemetry::attr("reason", reason.as_str()));
    }));
    let mut builder = tonic::transport::Server::builder();
    if let Some(tls) = &security.tls {
        builder = builder.tls_config(tls.server())?;
    }
    let server = builder
        .http2_keepalive_interval(Some(Duration::from_secs(10)))
        .http2_keepalive_timeout(Some(Duration::from_secs(20)))
        .add_service(InterceptedService::new(
            MembershipService::new(hub.clone(), stop_rx.clone()).into_server(),
            guard,
        ))
        .serve_with_incoming_shutdown(incoming, {
            let mut stop = stop_rx.clone();
            async move { stopped(&mut stop).await }
        });
    let served = {
        let mut stop = stop_rx.clone();
        tokio::select! {
            r = server => r.map_err(CoordinatorError::from),
            _ = async { stopped(&mut stop).await; tokio::time::sleep(SHUTDOWN_GRACE).await } => {
                warn!("in-flight requests did not finish in {SHUTDOWN_GRACE:?}, stopping anyway");
                Ok(())
            }
        }
    };
    info!("gRPC server stopped");
    stop_tx.send_replace(true);

    let _ = reaper.await;
    // The persister makes one last write attempt if a view is unsaved.
    let _ = tokio::time::timeout(store::OP_TIMEOUT * 2, persister).await;
    let owned = match owner.await {
        Ok(r) => r,
        Err(join_err) => {
            error!(%join_err, "the lock task failed");
            Ok(())
        }
    };
    if owned.is_ok() {
        match store.release_owner().await {
            Ok(_) => info!("released the coordinator lock"),
            Err(err) => warn!(%err, "cannot release the coordinator lock; it lapses by itself"),
        }
    }
    served?;
    owned?;
    info!(epoch = hub.epoch(), "ringway-coordinator stopped");
    Ok(())
}

/// Waits for the coordinator lock. Ok(false): stopped while waiting. A
/// Redis error on the first try is returned (Redis unreachable at start);
/// later ones, while waiting for another coordinator, are logged and
/// retried.
async fn acquire_ownership(
    store: &Store,
    config: &Config,
    stop: &mut watch::Receiver<bool>,
) -> Result<bool, StoreError> {
    let mut waiting_log = RateLimit::new(Duration::from_secs(30));
    let mut error_log = RateLimit::new(WARN_EVERY);
    let mut first_try = true;
    loop {
        match store.claim_owner(config.lease_ttl()).await {
            Ok(Ownership::Ours) => {
                info!(key = store.owner_key(), "took the coordinator lock");
                return Ok(true);
            }
            Ok(Ownership::HeldBy(holder)) => {
                if waiting_log.allow().is_some() {
                    warn!(
                        key = store.owner_key(),
                        %holder,
                        "another coordinator is acting; waiting for its lock to be released or to lapse"
                    );
                }
            }
            Err(err) if first_try => return Err(err),
            Err(err) => {
                if let Some(suppressed) = error_log.allow() {
                    warn!(%err, suppressed, "cannot read the coordinator lock; retrying");
                }
            }
        }
        first_try = false;
        tokio::select! {
            _ = stopped(stop) => return Ok(false),
            _ = tokio::time::sleep(config.heartbeat_interval()) => {}
        }
    }
}

/// Renews the coordinator lock every `every`. Redis errors are logged and
/// retried at the next tick; the lock held by another coordinator stops
/// everything.
async fn owner_loop(
    store: Store,
    ttl: Duration,
    every: Duration,
    stop_tx: Arc<watch::Sender<bool>>,
    mut stop: watch::Receiver<bool>,
) -> Result<(), CoordinatorError> {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    let mut warn_log = RateLimit::new(WARN_EVERY);
    let mut failing = false;
    loop {
        tokio::select! {
            _ = stopped(&mut stop) => return Ok(()),
            _ = tick.tick() => {}
        }
        match store.claim_owner(ttl).await {
            Ok(Ownership::Ours) => {
                if failing {
                    info!("coordinator lock renewed again");
                    failing = false;
                    warn_log.reset();
                }
            }
            Ok(Ownership::HeldBy(holder)) => {
                error!(%holder, "another coordinator holds the coordinator lock; stopping");
                stop_tx.send_replace(true);
                return Err(CoordinatorError::LostOwnership { holder });
            }
            Err(err) => {
                failing = true;
                if let Some(suppressed) = warn_log.allow() {
                    warn!(%err, suppressed, "cannot renew the coordinator lock; serving from memory");
                }
            }
        }
    }
}

/// Writes every new view to Redis, retrying failed writes; re-checks the
/// stored view every `resync` (idempotent: an equal epoch is not
/// rewritten). On stop, one last attempt if a view is unsaved.
async fn persist_loop(
    store: Store,
    mut views: watch::Receiver<View>,
    mut stop: watch::Receiver<bool>,
    resync: Duration,
) {
    let mut pending: Option<View> = Some(views.borrow_and_update().clone());
    let mut next_attempt = tokio::time::Instant::now();
    let mut backoff = RETRY_MIN;
    let mut warn_log = RateLimit::new(WARN_EVERY);
    let mut failing = false;
    let mut resync_tick = tokio::time::interval(resync);
    resync_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    resync_tick.tick().await;
    loop {
        if let Some(view) = &pending {
            if tokio::time::Instant::now() >= next_attempt {
                match store.save_view(view).await {
                    Ok(outcome) => {
                        if failing {
                            info!(epoch = view.epoch, "persisting the view works again");
                            failing = false;
                            warn_log.reset();
                        }
                        match outcome {
                            SaveOutcome::Written => {
                                info!(
                                    epoch = view.epoch,
                                    members = view.members.len(),
                                    "view persisted"
                                )
                            }
                            SaveOutcome::AlreadyAtOrPast { stored_epoch }
                                if stored_epoch > view.epoch =>
                            {
                                warn!(
                                    stored_epoch,
                                    epoch = view.epoch,
                                    "Redis holds a later epoch than this coordinator (another coordinator?)"
                                )
                            }
                            SaveOutcome::AlreadyAtOrPast { .. } => {}
                        }
                        pending = None;
                        backoff = RETRY_MIN;
                    }
                    Err(err) => {
                        failing = true;
                        if let Some(suppressed) = warn_log.allow() {
                            warn!(
                                %err,
                                epoch = view.epoch,
                                suppressed,
                                "cannot persist the view; serving from memory, will retry"
                            );
                        }
                        next_attempt = tokio::time::Instant::now() + backoff;
                        backoff = (backoff * 2).min(RETRY_MAX);
                    }
                }
            }
        }
        tokio::select! {
            _ = stopped(&mut stop) => break,
            changed = views.changed() => {
                if changed.is_err() {
                    break;
                }
                pending = Some(views.borrow_and_update().clone());
                next_attempt = tokio::time::Instant::now();
            }
            _ = tokio::time::sleep_until(next_attempt), if pending.is_some() => {}
            _ = resync_tick.tick() => {
                if pending.is_none() {
                    pending = Some(views.borrow().clone());
                    next_attempt = tokio::time::Instant::now();
                }
            }
        }
    }
    // Last chance for a view made just before the stop.
    if views.has_changed().unwrap_or(false) {
        pending = Some(views.borrow_and_update().clone());
    }
    if let Some(view) = pending {
        match store.save_view(&view).await {
            Ok(_) => info!(epoch = view.epoch, "view persisted at shutdown"),
            Err(err) => warn!(%err, epoch = view.epoch, "cannot persist the last view at shutdown"),
        }
    }
}

/// Lets a log line through at most once per period, counting the rest.
#[derive(Debug)]
struct RateLimit {
    every: Duration,
    last: Option<Instant>,
    suppressed: u64,
}

impl RateLimit {
    fn new(every: Duration) -> Self {
        RateLimit {
            every,
            last: None,
            suppressed: 0,
        }
    }

    /// Some(lines suppressed since the last one) if a line may go out now.
    fn allow(&mut self) -> Option<u64> {
        let now = Instant::now();
        match self.last {
            Some(last) if now.duration_since(last) < self.every => {
                self.suppressed += 1;
                None
            }
            _ => {
                self.last = Some(now);
                Some(std::mem::take(&mut self.suppressed))
            }
        }
    }

    fn reset(&mut self) {
        self.last = None;
        self.suppressed = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_limit_counts_suppressed_lines() {
        let mut r = RateLimit::new(Duration::from_secs(3600));
        assert_eq!(r.allow(), Some(0));
        assert_eq!(r.allow(), None);
        assert_eq!(r.allow(), None);
        r.last = Some(Instant::now() - Duration::from_secs(3601));
        assert_eq!(r.allow(), Some(2));
        r.reset();
        assert_eq!(r.allow(), Some(0));
    }

    #[test]
    fn exit_codes() {
        assert_eq!(
            CoordinatorError::Config(ConfigError::ZeroHeartbeatInterval).exit_code(),
            2
        );
        let e = CoordinatorError::RedisUnavailable {
            url: "redis://x".into(),
            source: StoreError::Timeout {
                op: "connect",
                timeout: Duration::from_secs(1),
            },
        };
        assert_eq!(e.exit_code(), 3);
        assert_eq!(
            CoordinatorError::LostOwnership { holder: "x".into() }.exit_code(),
            1
        );
    }
}
