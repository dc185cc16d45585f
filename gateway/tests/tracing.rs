//! Traces, metrics and logs with a real OTLP collector (a gRPC server run
//! by each test on a free port):
//! - one `Push.Emit` into a room with members on every node of a 3-node
//!   cluster is one trace with spans from all three nodes;
//! - a gateway's join is one trace with the coordinator's side of it, and
//!   both processes push their metrics;
//! - log lines inside a traced span name its trace, in JSON and human
//!   format.

mod common;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::cluster::{push_client, Cluster};
use common::{ws_expect, ws_open, ws_send, Gateway, Polling};
use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_server::{
    MetricsService, MetricsServiceServer,
};
use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsServiceRequest, ExportMetricsServiceResponse,
};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::resource::v1::Resource;
use ringway_proto::v1::{target, EmitRequest, RoomList, Target};
use ringway_testkit::{eventually, Describe};
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::{Request, Response, Status};

/// A span as the collector got it.
#[derive(Debug, Clone)]
struct Span {
    trace: Vec<u8>,
    id: Vec<u8>,
    parent: Vec<u8>,
    name: String,
    /// `service.instance.id` (a gateway's node id).
    node: String,
    /// `service.name`.
    service: String,
}

/// A metric as the collector got it: who sent it, and its name.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Metric {
    service: String,
    name: String,
}

#[derive(Clone, Default)]
struct Collector {
    spans: Arc<Mutex<Vec<Span>>>,
    metrics: Arc<Mutex<HashSet<Metric>>>,
}

/// A string attribute of a resource.
fn resource_attr(resource: Option<&Resource>, key: &str) -> String {
    resource
        .iter()
        .flat_map(|r| r.attributes.iter())
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref()?.value.as_ref())
        .map(|v| match v {
            Value::StringValue(s) => s.clone(),
            other => format!("{other:?}"),
        })
        .unwrap_or_default()
}

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: Request<ExportTraceServiceRequest>,
    ) -> Result<Response<ExportTraceServiceResponse>, Status> {
        let mut spans = self.spans.lock().expect("lock");
        for resource in request.into_inner().resource_spans {
            let node = resource_attr(resource.resource.as_ref(), "service.instance.id");
            let service = resource_attr(resource.resource.as_ref(), "service.name");
            for scope in resource.scope_spans {
                for span in scope.spans {
                    spans.push(Span {
                        trace: span.trace_id,
                        id: span.span_id,
                        parent: span.parent_span_id,
                        name: span.name,
                        node: node.clone(),
                        service: service.clone(),
                    });
                }
            }
        }
        Ok(Response::new(ExportTraceServiceResponse::default()))
    }
}

#[tonic::async_trait]
impl MetricsService for Collector {
    async fn export(
        &self,
        request: Request<ExportMetricsServiceRequest>,
    ) -> Result<Response<ExportMetricsServiceResponse>, Status> {
        let mut metrics = self.metrics.lock().expect("lock");
        for resource in request.into_inner().resource_metrics {
            let service = resource_attr(resource.resource.as_ref(), "service.name");
            for scope in resource.scope_metrics {
                for metric in scope.metrics {
                    metrics.insert(Metric {
                        service: service.clone(),
                        name: metric.name,
                    });
                }
            }
        }
        Ok(Response::new(ExportMetricsServiceResponse::default()))
    }
}

/// The collector's address reaches the processes a test starts through
/// the environment: one test at a time (nextest runs each test in a
/// process of its own, `cargo test` as threads of one).
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

impl Collector {
    /// Serves on a free port; sets the OTLP variables every process this
    /// test starts inherits. Keep the guard for the whole test.
    async fn start(metric_interval_ms: u64) -> (Collector, tokio::sync::MutexGuard<'static, ()>) {
        let serial = SERIAL.lock().await;
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let endpoint = format!("http://{}", listener.local_addr().expect("addr"));
        let collector = Collector::default();
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(TraceServiceServer::new(collector.clone()))
                .add_service(MetricsServiceServer::new(collector.clone()))
                .serve_with_incoming(TcpListenerStream::new(listener)),
        );
        std::env::set_var("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint);
        std::env::set_var("OTEL_BSP_SCHEDULE_DELAY", "100");
        std::env::set_var(
            "OTEL_METRIC_EXPORT_INTERVAL",
            metric_interval_ms.to_string(),
        );
        (collector, serial)
    }

    fn spans(&self) -> Vec<Span> {
        self.spans.lock().expect("lock").clone()
    }

    fn has_metric(&self, service: &str, name: &str) -> bool {
        self.metrics.lock().expect("lock").contains(&Metric {
            service: service.into(),
            name: name.into(),
        })
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Whether `span` is `root` or one of its descendants in `by_id`.
fn descends<'a>(by_id: &HashMap<&'a [u8], &'a Span>, root: &Span, mut span: &'a Span) -> bool {
    for _ in 0..16 {
        if span.id == root.id {
            return true;
        }
        match by_id.get(span.parent.as_slice()) {
            Some(parent) => span = parent,
            None => return false,
        }
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_push_into_a_room_is_one_trace_across_the_nodes() {
    let (collector, _serial) = Collector::start(600_000).await;
    let c = Cluster::start(3, &["--api-token", "t"]).await;

    let mut members = Vec::new();
    for i in 0..3 {
        let (mut ws, _) = ws_open(c.addr(i)).await;
        ws_send(&mut ws, "40").await;
        ws_expect(&mut ws, "42[\"auth\"").await;
        ws_send(&mut ws, "421[\"join\",\"traced\"]").await;
        ws_expect(&mut ws, "431[true]").await;
        members.push(ws);
    }
    let mut api = push_client(c.nodes[0].api.as_deref().expect("api"), Some("t")).await;
    let reply = api
        .emit(EmitRequest {
            namespace: "/".into(),
            target: Some(Target {
                to: Some(target::To::Rooms(RoomList {
                    rooms: vec!["traced".into()],
                })),
                except_rooms: vec![],
            }),
            event: "t".into(),
            args_json: "[]".into(),
            attachments: vec![],
            volatile: false,
            skip_count: false,
        })
        .await
        .expect("emit")
        .into_inner();
    assert_eq!(reply.sockets, 3);
    for ws in members.iter_mut() {
        ws_expect(ws, "42[\"t\"").await;
    }

    // The trace of the push: its root on node 1, the fan-out's spans on
    // nodes 2 and 3 (one per node, not one per message).
    let failed = Describe(|| {
        let seen: Vec<String> = collector
            .spans()
            .iter()
            .map(|s| format!("{}:{}", s.node, s.name))
            .collect();
        format!("a trace across the 3 nodes; spans seen: {seen:?}")
    });
    let seen = eventually(Duration::from_secs(20), failed, || async {
        let seen = collector.spans();
        let across = seen
            .iter()
            .find(|s| s.name == "push.emit")
            .is_some_and(|root| {
                let nodes: HashSet<&str> = seen
                    .iter()
                    .filter(|s| s.trace == root.trace)
                    .map(|s| s.node.as_str())
                    .collect();
                nodes.len() == 3
            });
        across.then_some(seen)
    })
    .await;
    let root = seen
        .iter()
        .find(|s| s.name == "push.emit")
        .expect("the push's span");
    assert_eq!(root.node, "n1");
    let in_trace: Vec<&Span> = seen.iter().filter(|s| s.trace == root.trace).collect();
    let mut locals: HashMap<&str, usize> = HashMap::new();
    for s in &in_trace {
        if s.name == "node.local" {
            *locals.entry(s.node.as_str()).or_default() += 1;
        }
    }
    assert_eq!(locals.get("n2"), Some(&1), "{in_trace:?}");
    assert_eq!(locals.get("n3"), Some(&1), "{in_trace:?}");
    // Parent and child links: the push is the root (no parent
    // in its trace), and each other node's span is a child of
    // a span of node 1 that descends from the push.
    let by_id: HashMap<&[u8], &Span> = in_trace.iter().map(|s| (s.id.as_slice(), *s)).collect();
    assert!(
        !by_id.contains_key(root.parent.as_slice()),
        "push.emit has a parent in its own trace: {in_trace:?}"
    );

    for local in in_trace.iter().filter(|s| s.name == "node.local") {
        let parent = by_id
            .get(local.parent.as_slice())
            .unwrap_or_else(|| panic!("{local:?} has no parent in the trace"));
        assert_eq!(parent.node, "n1", "{local:?}'s parent {parent:?}");
        assert!(
            descends(&by_id, root, local),
            "{local:?} does not descend from the push"
        );
    }
}

/// The gateway's `Join` carries its trace context: the coordinator's
/// span of it is a child of the gateway's, in the same trace. Both push
/// their metrics by OTLP, and the coordinator exports its Redis calls.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_join_is_one_trace_through_the_coordinator_and_both_push_metrics() {
    let (collector, _serial) = Collector::start(300).await;
    let _c = Cluster::start(1, &[]).await;

    let (join, served) = eventually(
        Duration::from_secs(20),
        "the join's spans on both sides",
        || async {
            let spans = collector.spans();
            let join = spans
                .iter()
                .find(|s| s.name == "membership.join" && s.node == "n1")?;
            let served = spans
                .iter()
                .find(|s| s.name == "coordinator.join" && s.trace == join.trace)?;
            Some((join.clone(), served.clone()))
        },
    )
    .await;
    assert_eq!(join.service, "ringway-gateway");
    assert_eq!(served.service, "ringway-coordinator");
    assert!(
        served.node.contains("-pid"),
        "coordinator instance id {:?}",
        served.node
    );
    assert_eq!(
        hex(&served.parent),
        hex(&join.id),
        "coordinator.join is not the child of membership.join"
    );
    eventually(
        Duration::from_secs(20),
        "a Redis span of the coordinator",
        || async {
            collector
                .spans()
                .iter()
                .any(|s| s.service == "ringway-coordinator" && s.name == "redis")
                .then_some(())
        },
    )
    .await;

    for (service, name) in [
        ("ringway-coordinator", "ringway.coordinator.epoch"),
        ("ringway-coordinator", "ringway.coordinator.members"),
        ("ringway-coordinator", "ringway.coordinator.events"),
        ("ringway-coordinator", "ringway.coordinator.rpc.duration"),
        ("ringway-coordinator", "ringway.coordinator.store.duration"),
        ("ringway-gateway", "ringway.membership.members"),
        ("ringway-gateway", "ringway.sessions"),
    ] {
        eventually(
            Duration::from_secs(20),
            &format!("{service}'s {name} by OTLP"),
            || async { collector.has_metric(service, name).then_some(()) },
        )
        .await;
    }
}

/// Every log line inside a traced span names the trace: a `trace_id`
/// member of the JSON object (`--log-format json`), `trace_id=…` at the
/// end of a human line; lines outside spans have none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_lines_inside_a_span_name_its_trace() {
    let (collector, _serial) = Collector::start(600_000).await;
    let rust_log = "info,ringway=debug";
    let (json_gw, json_log) = Gateway::start_logged(
        &["--listen", "127.0.0.1:0", "--log-format", "json"],
        rust_log,
    );
    let (human_gw, human_log) = Gateway::start_logged(&["--listen", "127.0.0.1:0"], rust_log);

    // A polling handshake: "session opened" is logged in its span.
    let json_sid = Polling::open(&json_gw.addr, "/socket.io/").await.sid;
    let human_sid = Polling::open(&human_gw.addr, "/socket.io/").await.sid;
    let handshakes = eventually(Duration::from_secs(20), "both handshake spans", || async {
        let spans: Vec<Span> = collector
            .spans()
            .into_iter()
            .filter(|s| s.name == "handshake")
            .collect();
        (spans.len() >= 2).then_some(spans)
    })
    .await;
    let traces: HashSet<String> = handshakes.iter().map(|s| hex(&s.trace)).collect();

    // JSON: every line an object; the handshake's line in its trace.
    let opened = eventually(
        Duration::from_secs(20),
        "the JSON line of the handshake",
        || async {
            json_log
                .lines()
                .into_iter()
                .find(|l| l.contains("session opened") && l.contains(&json_sid))
        },
    )
    .await;
    for line in json_log.lines() {
        let value: serde_json::Value = serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("not a JSON log line ({e}): {line}"));
        assert!(value["level"].is_string(), "{line}");
        assert!(value["fields"].is_object(), "{line}");
    }
    let opened: serde_json::Value = serde_json::from_str(&opened).expect("json");
    let trace = opened["trace_id"]
        .as_str()
        .unwrap_or_else(|| panic!("no trace_id: {opened}"));
    assert!(traces.contains(trace), "{trace} is not a handshake's trace");
    assert_eq!(opened["span"]["name"], "handshake", "{opened}");
    // The start-up lines are logged outside any span.
    let started = json_log
        .lines()
        .into_iter()
        .find(|l| l.contains("listening"))
        .expect("a start-up line");
    assert!(!started.contains("trace_id"), "{started}");

    // Human: the id closes the line.
    let opened = eventually(
        Duration::from_secs(20),
        "the human line of the handshake",
        || async {
            human_log
                .lines()
                .into_iter()
                .find(|l| l.contains("session opened") && l.contains(&human_sid))
        },
    )
    .await;
    let (_, trace) = opened
        .rsplit_once(" trace_id=")
        .unwrap_or_else(|| panic!("no trace_id: {opened}"));
    assert!(traces.contains(trace), "{trace} is not a handshake's trace");
}

/// The spans of a session's path through a cluster, each exported by the
/// node that did the work: the handshake on node 1, a POST forwarded from
/// node 2 (`forward` there, `node.forward` on the owner), the WebSocket
/// upgrade on node 3 (`handoff` and `upgrade` there, `node.handoff` on
/// the old owner), and the registry's Redis calls.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshake_forward_handoff_upgrade_and_redis_spans_are_exported() {
    let (collector, _serial) = Collector::start(600_000).await;
    let c = Cluster::start(3, &[]).await;
    let (n1, n2, n3) = (c.addr(0), c.addr(1), c.addr(2));
    let p = Polling::open(n1, "/socket.io/").await;
    p.on(n2).send("40").await;
    let mut ws = p.on(n3).upgrade().await;
    ws_send(&mut ws, "42[\"message\",1]").await;
    ws_expect(&mut ws, "42[\"message-back\"").await;

    for (node, name) in [
        ("n1", "handshake"),
        ("n2", "forward"),
        ("n1", "node.forward"),
        ("n3", "handoff"),
        ("n1", "node.handoff"),
        ("n3", "upgrade"),
        ("n1", "redis"),
        ("n3", "redis"),
    ] {
        eventually(
            Duration::from_secs(20),
            &format!("a {name} span from {node}"),
            || async {
                collector
                    .spans()
                    .iter()
                    .any(|s| s.node == node && s.name == name)
                    .then_some(())
            },
        )
        .await;
    }
    // The owner's side of each call is in the caller's trace.
    let spans = collector.spans();
    for (caller, callee) in [("forward", "node.forward"), ("handoff", "node.handoff")] {
        let outer = spans.iter().find(|s| s.name == caller).expect("caller");
        let inner = spans.iter().find(|s| s.name == callee).expect("callee");
        assert_eq!(
            hex(&inner.trace),
            hex(&outer.trace),
            "{callee} not in {caller}'s trace"
        );
    }
}
