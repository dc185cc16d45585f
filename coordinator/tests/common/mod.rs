//! Helpers of the coordinator's integration tests: real `redis-server` and
//! `ringway-coordinator` processes (killed on drop), a tonic client, and a
//! watcher that records every view it receives.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ringway_coordinator::proto::membership_client::MembershipClient;
use ringway_coordinator::proto::{JoinRequest, View, WatchRequest};
use ringway_proto::auth::{ClusterSecret, Signer};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

/// Upper bound of any wait that should take far less on an idle machine.
pub const WAIT: Duration = Duration::from_secs(30);

pub const COORDINATOR_BIN: &str = env!("CARGO_BIN_EXE_ringway-coordinator");

pub use ringway_testkit::cluster::Timing;
use ringway_testkit::cluster::{CoordinatorProcess, CoordinatorSpec};
/// A port that was free a moment ago; children killed on drop; a
/// `redis-server` of the test's own: the test kit's.
#[allow(unused_imports)] // not every test binary uses each
pub use ringway_testkit::process::{free_port, ChildGuard};
pub use ringway_testkit::redis::RedisServer;

/// What the coordinator keeps in Redis, read by the tests.
#[allow(async_fn_in_trait)]
pub trait CoordinatorKeys {
    async fn stored_view(&self) -> Option<View>;
    async fn lock_holder(&self) -> Option<String>;
}

impl CoordinatorKeys for RedisServer {
    /// The view stored by the coordinator (default key prefix).
    async fn stored_view(&self) -> Option<View> {
        let client = redis::Client::open(self.url()).expect("redis url");
        let mut con = tokio::time::timeout(
            Duration::from_secs(5),
            client.get_multiplexed_async_connection(),
        )
        .await
        .ok()?
        .ok()?;
        let raw: Option<String> = redis::cmd("GET")
            .arg("ringway:membership")
            .query_async(&mut con)
            .await
            .ok()?;
        raw.map(|r| ringway_coordinator::store::decode_view(&r).expect("stored view is readable"))
    }

    /// The holder of the coordinator lock.
    async fn lock_holder(&self) -> Option<String> {
        let client = redis::Client::open(self.url()).expect("redis url");
        let mut con = client.get_multiplexed_async_connection().await.ok()?;
        redis::cmd("GET")
            .arg("ringway:coordinator")
            .query_async(&mut con)
            .await
            .ok()?
    }
}

/// A `ringway-coordinator` process (the test kit's), with this suite's
/// log filter; `Deref` gives the kit's calls (`wait_listening`,
/// `wait_http`, `addr`, `http_addr`, `stderr`, `kill`, `terminate`,
/// `wait_exit`).
pub struct Coordinator(CoordinatorProcess);

impl std::ops::Deref for Coordinator {
    type Target = CoordinatorProcess;
    fn deref(&self) -> &CoordinatorProcess {
        &self.0
    }
}

impl std::ops::DerefMut for Coordinator {
    fn deref_mut(&mut self) -> &mut CoordinatorProcess {
        &mut self.0
    }
}

pub const FAST: Timing = Timing {
    ttl: 1000,
    interval: 200,
};
pub const RELAXED: Timing = Timing {
    ttl: 3000,
    interval: 500,
};

impl Coordinator {
    fn spec(redis_url: &str, timing: Timing, extra: &[&str]) -> CoordinatorSpec {
        let spec = CoordinatorSpec::new(redis_url)
            .timing(timing)
            .args(extra)
            .rust_log("info,ringway_coordinator=debug");
        // The test's own credential flags replace the secret.
        if extra
            .iter()
            .any(|a| a.starts_with("--cluster-") || *a == "--insecure-cluster")
        {
            spec.without_secret()
        } else {
            spec
        }
    }

    /// Spawns the binary without waiting for it to listen.
    pub fn spawn(redis_url: &str, timing: Timing, extra: &[&str]) -> Self {
        Coordinator(Self::spec(redis_url, timing, extra).spawn())
    }

    /// Spawns it and waits for its `listening on` line.
    pub fn start(redis_url: &str, timing: Timing) -> Self {
        Coordinator(Self::spec(redis_url, timing, &[]).start())
    }

    pub async fn client(&self) -> Client {
        connect(self.addr()).await
    }
}

/// The shared secret of the test clusters, and a file holding it.
#[allow(unused_imports)] // not every test binary uses each
pub use ringway_testkit::cluster::{secret_file, SECRET};

/// A Membership client signed with the test secret.
pub type Client = MembershipClient<InterceptedService<Channel, Signer>>;

pub async fn connect(addr: SocketAddr) -> Client {
    connect_as(addr, Some("test-client")).await
}

/// A Membership client signed as `node` (`None`: with no credential).
pub async fn connect_as(addr: SocketAddr, node: Option<&str>) -> Client {
    let signer = node.map_or_else(Signer::none, |node| {
        Signer::new(
            Some(ClusterSecret::new(SECRET.as_bytes()).expect("secret")),
            node,
        )
    });
    let channel = eventually(WAIT, format!("a connection to {addr}"), || async {
        Channel::from_shared(format!("http://{addr}"))
            .expect("url")
            .connect()
            .await
            .ok()
    })
    .await;
    MembershipClient::with_interceptor(channel, signer)
}

pub fn join_req(node: &str, incarnation: u64) -> JoinRequest {
    JoinRequest {
        node_id: node.into(),
        grpc_addr: format!("{node}.local:7001"),
        http_addr: format!("{node}.local:3000"),
        incarnation,
        ..JoinRequest::default()
    }
}

pub fn ids(view: &View) -> Vec<String> {
    view.members.iter().map(|m| m.node_id.clone()).collect()
}

/// Reads a `Watch` stream in a task and keeps every view received.
pub struct Watcher {
    latest: watch::Receiver<Option<View>>,
    history: Arc<Mutex<Vec<View>>>,
    ended: Arc<Mutex<Option<String>>>,
    task: JoinHandle<()>,
}

impl Watcher {
    pub async fn open(client: &mut Client, node_id: &str) -> Self {
        let mut stream = client
            .watch(WatchRequest {
                node_id: node_id.into(),
            })
            .await
            .expect("watch")
            .into_inner();
        let (tx, latest) = watch::channel(None);
        let history = Arc::new(Mutex::new(Vec::new()));
        let ended = Arc::new(Mutex::new(None));
        let (h, e) = (history.clone(), ended.clone());
        let task = tokio::spawn(async move {
            let end = loop {
                match stream.message().await {
                    Ok(Some(view)) => {
                        if let Ok(mut h) = h.lock() {
                            h.push(view.clone());
                        }
                        tx.send_replace(Some(view));
                    }
                    Ok(None) => break "end of stream".to_string(),
                    Err(status) => break format!("error: {status}"),
                }
            };
            if let Ok(mut e) = e.lock() {
                *e = Some(end);
            }
            // Wake waiters so they notice the end.
            tx.send_modify(|_| {});
        });
        Watcher {
            latest,
            history,
            ended,
            task,
        }
    }

    /// Waits up to `timeout` for a view matching `pred`.
    pub async fn wait_for(
        &mut self,
        timeout: Duration,
        what: &str,
        pred: impl Fn(&View) -> bool,
    ) -> View {
        let found = tokio::time::timeout(
            timeout,
            self.latest.wait_for(|v| v.as_ref().is_some_and(&pred)),
        )
        .await;
        let found = found.ok().and_then(|r| r.ok()).and_then(|v| v.clone());
        match found {
            Some(v) => v,
            None => panic!(
                "no view with {what} within {timeout:?}; last view: {:?}; stream: {:?}",
                self.latest.borrow().clone(),
                self.ended()
            ),
        }
    }

    /// Waits up to `timeout` for the stream to end; its reason.
    pub async fn wait_end(&mut self, timeout: Duration) -> Option<String> {
        ringway_testkit::poll_until(timeout, || std::future::ready(self.ended())).await
    }

    pub fn ended(&self) -> Option<String> {
        self.ended.lock().ok().and_then(|e| e.clone())
    }

    pub fn history(&self) -> Vec<View> {
        self.history.lock().map(|h| h.clone()).unwrap_or_default()
    }

    pub fn latest(&self) -> Option<View> {
        self.latest.borrow().clone()
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The one wait of every Ringway test (`gateway/testkit`).
pub use ringway_testkit::eventually;
