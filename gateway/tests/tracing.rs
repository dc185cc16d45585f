//! Traces across nodes: a 3-node cluster exporting spans by OTLP to a
//! collector run by this test; one `Push.Emit` into a room with members
//! on every node is one trace with spans from all three nodes.

mod common;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::cluster::{push_client, Cluster};
use common::{ws_open, ws_send, ws_text, Ws};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use ringway_proto::v1::{target, EmitRequest, RoomList, Target};
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
    node: String,
}

type Seen = Arc<Mutex<Vec<Span>>>;

#[derive(Clone, Default)]
struct Collector {
    spans: Seen,
}

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: Request<ExportTraceServiceRequest>,
    ) -> Result<Response<ExportTraceServiceResponse>, Status> {
        let mut spans = self.spans.lock().expect("lock");
        for resource in request.into_inner().resource_spans {
            let node = resource
                .resource
                .iter()
                .flat_map(|r| r.attributes.iter())
                .find(|kv| kv.key == "service.instance.id")
                .and_then(|kv| kv.value.as_ref()?.value.as_ref())
                .map(|v| match v {
                    Value::StringValue(s) => s.clone(),
                    other => format!("{other:?}"),
                })
                .unwrap_or_default();
            for scope in resource.scope_spans {
                for span in scope.spans {
                    spans.push(Span {
                        trace: span.trace_id,
                        id: span.span_id,
                        parent: span.parent_span_id,
                        name: span.name,
                        node: node.clone(),
                    });
                }
            }
        }
        Ok(Response::new(ExportTraceServiceResponse::default()))
    }
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

async fn expect(ws: &mut Ws, prefix: &str) -> String {
    loop {
        let text = ws_text(ws).await.expect("websocket closed");
        if text.starts_with(prefix) {
            return text;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_push_into_a_room_is_one_trace_across_the_nodes() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let endpoint = format!("http://{}", listener.local_addr().expect("addr"));
    let collector = Collector::default();
    let spans = collector.spans.clone();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(collector))
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );
    // The gateways inherit these (this test binary runs alone).
    // SAFETY-free in edition 2021; nothing else reads the environment now.
    std::env::set_var("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint);
    std::env::set_var("OTEL_BSP_SCHEDULE_DELAY", "100");
    std::env::set_var("OTEL_METRIC_EXPORT_INTERVAL", "600000");
    let c = Cluster::start(3, &["--api-token", "t"]).await;

    let mut members = Vec::new();
    for i in 0..3 {
        let (mut ws, _) = ws_open(c.addr(i)).await;
        ws_send(&mut ws, "40").await;
        expect(&mut ws, "42[\"auth\"").await;
        ws_send(&mut ws, "421[\"join\",\"traced\"]").await;
        expect(&mut ws, "431[true]").await;
        members.push(ws);
    }
    let mut api = push_client(c.nodes[0].grpc.as_deref().expect("grpc"), Some("t")).await;
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
        })
        .await
        .expect("emit")
        .into_inner();
    assert_eq!(reply.sockets, 3);
    for ws in members.iter_mut() {
        expect(ws, "42[\"t\"").await;
    }

    // The trace of the push: its root on node 1, the fan-out's spans on
    // nodes 2 and 3 (one per node, not one per message).
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let seen = spans.lock().expect("lock").clone();
        let root = seen.iter().find(|s| s.name == "push.emit");
        if let Some(root) = root {
            assert_eq!(root.node, "n1");
            let in_trace: Vec<&Span> = seen.iter().filter(|s| s.trace == root.trace).collect();
            let nodes: HashSet<&str> = in_trace.iter().map(|s| s.node.as_str()).collect();
            let mut locals: HashMap<&str, usize> = HashMap::new();
            for s in &in_trace {
                if s.name == "node.local" {
                    *locals.entry(s.node.as_str()).or_default() += 1;
                }
            }
            if nodes.len() == 3 {
                assert_eq!(locals.get("n2"), Some(&1), "{in_trace:?}");
                assert_eq!(locals.get("n3"), Some(&1), "{in_trace:?}");
                // Parent and child links: the push is the root (no parent
                // in its trace), and each other node's span is a child of
                // a span of node 1 that descends from the push.
                let by_id: HashMap<&[u8], &Span> =
                    in_trace.iter().map(|s| (s.id.as_slice(), *s)).collect();
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
                return;
            }
        }
        assert!(
            Instant::now() < deadline,
            "no trace across the 3 nodes; spans seen: {:?}",
            seen.iter()
                .map(|s| format!("{}:{}", s.node, s.name))
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
