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

/// A span as the collector got it: trace id, name, node.
type Seen = Arc<Mutex<Vec<(Vec<u8>, String, String)>>>;

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
                    spans.push((span.trace_id, span.name, node.clone()));
                }
            }
        }
        Ok(Response::new(ExportTraceServiceResponse::default()))
    }
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
        let root = seen.iter().find(|(_, name, _)| name == "push.emit");
        if let Some((trace, _, root_node)) = root {
            assert_eq!(root_node, "n1");
            let in_trace: Vec<&(Vec<u8>, String, String)> =
                seen.iter().filter(|(t, _, _)| t == trace).collect();
            let nodes: HashSet<&str> = in_trace.iter().map(|(_, _, n)| n.as_str()).collect();
            let mut locals: HashMap<&str, usize> = HashMap::new();
            for (_, name, node) in &in_trace {
                if name == "node.local" {
                    *locals.entry(node.as_str()).or_default() += 1;
                }
            }
            if nodes.len() == 3 {
                assert_eq!(locals.get("n2"), Some(&1), "{in_trace:?}");
                assert_eq!(locals.get("n3"), Some(&1), "{in_trace:?}");
                return;
            }
        }
        assert!(
            Instant::now() < deadline,
            "no trace across the 3 nodes; spans seen: {:?}",
            seen.iter()
                .map(|(_, name, node)| format!("{node}:{name}"))
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
