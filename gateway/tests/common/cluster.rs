//! Cluster fixtures: a real `redis-server`, a real `ringway-coordinator`
//! and real gateway processes on 127.0.0.1, each on a free port, started
//! and stopped by the tests themselves.

use std::time::Duration;

use ringway_proto::auth::{ClusterSecret, Signer};
use ringway_proto::cluster::v1::membership_client::MembershipClient;
use ringway_proto::cluster::v1::node_client::NodeClient;
use ringway_proto::cluster::v1::{View, WatchRequest};
use ringway_testkit::cluster::{CoordinatorProcess, CoordinatorSpec, CLUSTER_TIMING};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

use super::{get, sample, Gateway};

impl Gateway {
    /// Waits until this gateway serves on the membership view of `epoch`
    /// or a later one (its `ringway_membership_epoch` gauge).
    pub async fn wait_epoch(&self, epoch: u64) {
        let addr = self.addr.clone();
        let what = format!("{addr} on the view of epoch {epoch}");
        ringway_testkit::eventually(Duration::from_secs(20), &what, || async {
            let metrics = get(&addr, "/metrics").await.text();
            sample(&metrics, "ringway_membership_epoch").is_some_and(|e| e >= epoch as f64)
        })
        .await;
    }
}

/// The shared secret of every test cluster, and a file holding it (the
/// test kit's).
pub use ringway_testkit::cluster::{secret_file, SECRET};

/// Signs calls as `node_id` with the test clusters' secret.
pub fn signer(node_id: &str) -> Signer {
    Signer::new(
        Some(ClusterSecret::new(SECRET.as_bytes()).expect("secret")),
        node_id,
    )
}

pub type NodeChannel = NodeClient<InterceptedService<Channel, Signer>>;

/// A client of a node's `Node` service, calling as `as_node` with the
/// cluster's credential (`None`: with no credential at all).
pub async fn node_client(grpc: &str, as_node: Option<&str>) -> NodeChannel {
    let channel = Channel::from_shared(format!("http://{grpc}"))
        .expect("url")
        .connect()
        .await
        .expect("connect to the node service");
    NodeClient::with_interceptor(channel, as_node.map_or_else(Signer::none, signer))
}

pub type MembershipChannel = MembershipClient<InterceptedService<Channel, Signer>>;

/// A client of the coordinator, calling as `as_node` with the cluster's
/// credential (`None`: with none).
pub async fn membership_client(addr: &str, as_node: Option<&str>) -> MembershipChannel {
    let channel = Channel::from_shared(format!("http://{addr}"))
        .expect("url")
        .connect()
        .await
        .expect("connect to the coordinator");
    MembershipClient::with_interceptor(channel, as_node.map_or_else(Signer::none, signer))
}

/// A free TCP port on 127.0.0.1 (bound, then released).
pub use ringway_testkit::process::free_port;

/// A `redis-server` of the test's own (the test kit's).
pub use ringway_testkit::redis::RedisServer as Redis;

/// The registry's view of a session, as the tests read it.
pub trait RegistryExt {
    /// A registry entry: `"<epoch> <owner>"`.
    fn registry_entry(&self, sid: &str) -> Option<String>;
}

impl RegistryExt for Redis {
    fn registry_entry(&self, sid: &str) -> Option<String> {
        self.get(&format!("ringway:sid:{sid}"))
    }
}

/// Mutual TLS for a test cluster: PEM files, and the name the
/// certificates carry.
#[derive(Clone, Debug)]
pub struct TestTls {
    pub ca: String,
    pub cert: String,
    pub key: String,
    pub name: String,
}

impl TestTls {
    /// The flags of a gateway using it.
    pub fn flags(&self) -> Vec<String> {
        let mut flags = self.coordinator_flags();
        flags.extend(["--cluster-tls-server-name".to_owned(), self.name.clone()]);
        flags
    }

    /// The flags of a coordinator using it (it calls nobody: no server
    /// name).
    pub fn coordinator_flags(&self) -> Vec<String> {
        vec![
            "--cluster-tls-ca".to_owned(),
            self.ca.clone(),
            "--cluster-tls-cert".to_owned(),
            self.cert.clone(),
            "--cluster-tls-key".to_owned(),
            self.key.clone(),
        ]
    }

    /// A channel to `addr` presenting this certificate.
    pub async fn channel(&self, addr: &str) -> Channel {
        let read = |path: &str| std::fs::read(path).expect("read a PEM");
        let tls = tonic::transport::ClientTlsConfig::new()
            .ca_certificate(tonic::transport::Certificate::from_pem(read(&self.ca)))
            .identity(tonic::transport::Identity::from_pem(
                read(&self.cert),
                read(&self.key),
            ))
            .domain_name(&self.name);
        Channel::from_shared(format!("https://{addr}"))
            .expect("url")
            .tls_config(tls)
            .expect("tls config")
            .connect()
            .await
            .expect("TLS connection")
    }
}

/// A `ringway-coordinator` process (the test kit's) on a port of its
/// own, so that a test can stop it and start it again at the same address.
pub struct Coordinator {
    process: Option<CoordinatorProcess>,
    spec: CoordinatorSpec,
    pub addr: String,
    /// The HTTP port (dashboard, health), `host:port`.
    pub http: String,
    tls: Option<TestTls>,
}

/// Lease settings of the tests: short, so that failures show quickly.
pub const LEASE_TTL_MS: u64 = CLUSTER_TIMING.ttl;

impl Coordinator {
    pub fn start(redis_url: &str) -> Coordinator {
        Coordinator::start_tls(redis_url, None)
    }

    /// A coordinator that also takes mutual TLS only.
    pub fn start_tls(redis_url: &str, tls: Option<TestTls>) -> Coordinator {
        Coordinator::start_on(redis_flags(redis_url), tls)
    }

    /// A coordinator on any Redis set-up (its flags: a mode, URLs, TLS
    /// files).
    pub fn start_on(redis: Vec<String>, tls: Option<TestTls>) -> Coordinator {
        let tls_flags: Vec<String> = tls.iter().flat_map(TestTls::coordinator_flags).collect();
        let mut c = Coordinator {
            process: None,
            spec: CoordinatorSpec::on(redis).fixed_port().args(&tls_flags),
            addr: String::new(),
            http: String::new(),
            tls,
        };
        c.restart();
        c
    }

    /// Starts (again) on the same port.
    pub fn restart(&mut self) {
        assert!(self.process.is_none(), "coordinator is running");
        let mut process = self.spec.start();
        self.addr = process.addr().to_string();
        self.http = process.http_addr().to_string();
        self.process = Some(process);
    }

    /// SIGKILL.
    pub fn stop(&mut self) {
        self.process = None;
    }

    /// The current membership view (the first message of a watch).
    pub async fn view(&self) -> View {
        let mut client = match &self.tls {
            Some(tls) => MembershipClient::with_interceptor(
                tls.channel(&self.addr).await,
                signer("test-watcher"),
            ),
            None => membership_client(&self.addr, Some("test-watcher")).await,
        };
        let mut stream = client
            .watch(WatchRequest::default())
            .await
            .expect("watch")
            .into_inner();
        stream.message().await.expect("view").expect("a first view")
    }

    /// Waits until the view has exactly these members.
    pub async fn wait_members(&self, ids: &[&str]) -> View {
        let mut want = ids.to_vec();
        want.sort();
        let what = format!("the view's members to be {want:?}");
        ringway_testkit::eventually(Duration::from_secs(20), what, || async {
            let view = self.view().await;
            let mut have: Vec<&str> = view.members.iter().map(|m| m.node_id.as_str()).collect();
            have.sort();
            (have == want).then_some(view)
        })
        .await
    }
}

/// The flags of one plain Redis.
pub fn redis_flags(url: &str) -> Vec<String> {
    vec!["--redis-url".to_owned(), url.to_owned()]
}

/// A clustered gateway: `--node-id`, with the coordinator and Redis.
pub fn start_node(
    node_id: &str,
    coordinator: &Coordinator,
    redis: &Redis,
    extra: &[&str],
) -> Gateway {
    start_node_on(node_id, coordinator, &redis_flags(&redis.url()), extra)
}

/// A clustered gateway on any Redis set-up (`redis`: its flags).
pub fn start_node_on(
    node_id: &str,
    coordinator: &Coordinator,
    redis: &[String],
    extra: &[&str],
) -> Gateway {
    let coordinator_addr = coordinator.addr.clone();
    let mut args = vec![
        "--listen",
        "127.0.0.1:0",
        "--grpc-listen",
        "127.0.0.1:0",
        "--node-id",
        node_id,
        "--coordinator",
        &coordinator_addr,
        "--cluster-secret-file",
        secret_file(),
    ];
    args.extend(redis.iter().map(String::as_str));
    args.extend_from_slice(extra);
    Gateway::start_raw(&args)
}

/// Gateways `n1..n{n}` of `coordinator` on a Redis set-up (its flags),
/// once every one is in the view and serves on it.
async fn start_members(
    coordinator: &Coordinator,
    n: usize,
    redis: &[String],
    extra: &[&str],
) -> Vec<Gateway> {
    let ids: Vec<String> = (1..=n).map(|i| format!("n{i}")).collect();
    let nodes: Vec<Gateway> = ids
        .iter()
        .map(|id| start_node_on(id, coordinator, redis, extra))
        .collect();
    let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
    let view = coordinator.wait_members(&ids).await;
    // Views reach the gateways by their watch streams: wait until each
    // serves on this one (its epoch gauge).
    for node in &nodes {
        node.wait_epoch(view.epoch).await;
    }
    nodes
}

/// A coordinator and `n` gateways `n1..` on a Redis set-up the test holds
/// (a Redis Cluster, a Sentinel set, TLS), every gateway in the view.
pub struct ClusterOn {
    pub coordinator: Coordinator,
    pub nodes: Vec<Gateway>,
}

impl ClusterOn {
    pub async fn start(n: usize, redis: &[String], extra: &[&str]) -> ClusterOn {
        let coordinator = Coordinator::start_on(redis.to_vec(), None);
        let nodes = start_members(&coordinator, n, redis, extra).await;
        ClusterOn { coordinator, nodes }
    }

    pub fn addr(&self, i: usize) -> &str {
        &self.nodes[i].addr
    }
}

/// Redis, a coordinator and `n` gateways `n1..`, with every gateway in
/// the view.
pub struct Cluster {
    pub redis: Redis,
    pub coordinator: Coordinator,
    pub nodes: Vec<Gateway>,
}

impl Cluster {
    pub async fn start(n: usize, extra: &[&str]) -> Cluster {
        Cluster::start_tls(n, None, extra).await
    }

    /// A cluster whose members (coordinator included) also use mutual TLS.
    pub async fn start_tls(n: usize, tls: Option<TestTls>, extra: &[&str]) -> Cluster {
        let redis = Redis::start();
        let coordinator = Coordinator::start_tls(&redis.url(), tls.clone());
        let tls_flags: Vec<String> = tls.iter().flat_map(TestTls::flags).collect();
        let mut all: Vec<&str> = tls_flags.iter().map(String::as_str).collect();
        all.extend_from_slice(extra);
        let nodes = start_members(&coordinator, n, &redis_flags(&redis.url()), &all).await;
        Cluster {
            redis,
            coordinator,
            nodes,
        }
    }

    pub fn addr(&self, i: usize) -> &str {
        &self.nodes[i].addr
    }

    /// Waits until every node of the cluster routes room emits of the
    /// namespace `/` to each of the nodes `holders` (indexes; node `i` is
    /// `n{i+1}`): their room announcements have arrived.
    pub async fn wait_routes(&self, holders: &[usize]) {
        let nodes: Vec<(&str, String)> = self
            .nodes
            .iter()
            .enumerate()
            .map(|(i, node)| (node.addr.as_str(), format!("n{}", i + 1)))
            .collect();
        let nodes: Vec<(&str, &str)> = nodes.iter().map(|(a, id)| (*a, id.as_str())).collect();
        let holders: Vec<String> = holders.iter().map(|i| format!("n{}", i + 1)).collect();
        let holders: Vec<&str> = holders.iter().map(String::as_str).collect();
        wait_routes(&nodes, &holders, "/").await;
    }
}

/// Waits until each gateway of `nodes` (address, node id) routes room
/// emits of `namespace` to every node of `holders` but itself: the room
/// announcements of those nodes have reached it (its
/// `ringway_cluster_room_routes` gauge shows a room of theirs).
pub async fn wait_routes(nodes: &[(&str, &str)], holders: &[&str], namespace: &str) {
    for (addr, id) in nodes {
        for holder in holders.iter().filter(|h| *h != id) {
            let what = format!("{id} to route {namespace} rooms to {holder}");
            let node_label = format!("node=\"{holder}\"");
            let ns_label = format!("namespace=\"{namespace}\"");
            ringway_testkit::eventually(Duration::from_secs(20), &what, || async {
                let metrics = get(addr, "/metrics").await.text();
                metrics.lines().any(|line| {
                    line.starts_with("ringway_cluster_room_routes{")
                        && line.contains(&node_label)
                        && line.contains(&ns_label)
                        && line
                            .rsplit(' ')
                            .next()
                            .and_then(|v| v.parse::<f64>().ok())
                            .is_some_and(|n| n >= 1.0)
                })
            })
            .await;
        }
    }
}

/// Adds a bearer token to every call.
#[derive(Clone)]
pub struct Bearer(pub Option<&'static str>);

impl tonic::service::Interceptor for Bearer {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(token) = self.0 {
            let value = format!("Bearer {token}").parse().expect("header value");
            req.metadata_mut().insert("authorization", value);
        }
        Ok(req)
    }
}

pub type PushClient = ringway_proto::v1::push_client::PushClient<
    tonic::service::interceptor::InterceptedService<tonic::transport::Channel, Bearer>,
>;

/// A `Push` client of a gateway's API address, with this token (if any).
pub async fn push_client(api: &str, token: Option<&'static str>) -> PushClient {
    let channel = tonic::transport::Channel::from_shared(format!("http://{api}"))
        .expect("url")
        .connect()
        .await
        .expect("connect to the gateway's API port");
    ringway_proto::v1::push_client::PushClient::with_interceptor(channel, Bearer(token))
}
