//! The node-to-node gRPC service every gateway serves: forwarded polling
//! requests, handoffs, and the delivery streams of the other nodes.

use std::sync::Arc;

use http::Method;
use ringway_proto::cluster::v1::node_server::Node;
use ringway_proto::cluster::v1::{
    deliver_item, DeliverAck, DeliverBatch, DeliverItem, Disposition, ForwardReply, ForwardRequest,
    HandoffReply, HandoffRequest, LocalReply, LocalRequest,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};
use tracing::debug;

use crate::api::push::LocalPush;
use crate::engineio::{Engine, ForwardedRequest, Frame, Sid};
use crate::socketio::{Application, SocketIo, Target};
use crate::telemetry::continue_trace;
use tracing::Instrument;

use super::Cluster;

pub struct NodeService<A: Application> {
    engine: Arc<Engine<SocketIo<A>>>,
    cluster: Arc<Cluster>,
    push: Arc<LocalPush<A>>,
}

impl<A: Application> NodeService<A> {
    pub fn new(engine: Arc<Engine<SocketIo<A>>>, cluster: Arc<Cluster>) -> Self {
        let push = LocalPush::new(engine.clone());
        NodeService {
            engine,
            cluster,
            push,
        }
    }
}

/// Applies one item of a peer's delivery stream.
fn apply<A: Application>(
    engine: &Engine<SocketIo<A>>,
    cluster: &Cluster,
    from: &str,
    item: DeliverItem,
) {
    match item.kind {
        Some(deliver_item::Kind::Emit(emit)) => {
            crate::telemetry::metrics().peer_emits.add(1, &[]);
            let Some(ns) = engine.handler().namespace(&emit.namespace) else {
                return;
            };
            let target = Target {
                rooms: emit.rooms,
                except_rooms: emit.except_rooms,
                except_socket: Sid::parse(&emit.except_socket),
            };
            let frames: Vec<Frame> = emit
                .frames
                .into_iter()
                .filter_map(Frame::from_proto)
                .collect();
            ns.send_frames(&target, &frames);
        }
        Some(deliver_item::Kind::Unlogged(entry)) => engine.handler().deliver_unlogged(entry),
        Some(deliver_item::Kind::Room(change)) => cluster.rooms().apply(from, &change),
        Some(deliver_item::Kind::Snapshot(snapshot)) => cluster.rooms().replace(from, &snapshot),
        None => {}
    }
}

fn unknown() -> ForwardReply {
    ForwardReply {
        disposition: Disposition::Unknown as i32,
        ..ForwardReply::default()
    }
}

#[tonic::async_trait]
impl<A: Application> Node for NodeService<A> {
    async fn forward(
        &self,
        request: Request<ForwardRequest>,
    ) -> Result<Response<ForwardReply>, Status> {
        let span = tracing::info_span!("node.forward");
        continue_trace(&request, &span);
        let request = request.into_inner();
        let Some(sid) = Sid::parse(&request.sid) else {
            return Ok(Response::new(unknown()));
        };
        let method = match request.method.as_str() {
            "GET" => Method::GET,
            "POST" => Method::POST,
            _ => return Err(Status::invalid_argument("only GET and POST are forwarded")),
        };
        let forwarded = ForwardedRequest {
            method,
            query: request.query,
            body: request.body,
            binary_body: request.binary_body,
        };
        Ok(Response::new(
            self.engine
                .serve_forwarded(sid, forwarded)
                .instrument(span)
                .await,
        ))
    }

    async fn handoff(
        &self,
        request: Request<HandoffRequest>,
    ) -> Result<Response<HandoffReply>, Status> {
        let span = tracing::info_span!("node.handoff");
        continue_trace(&request, &span);
        let request = request.into_inner();
        let Some(sid) = Sid::parse(&request.sid) else {
            return Ok(Response::new(HandoffReply {
                disposition: Disposition::Unknown as i32,
                ..HandoffReply::default()
            }));
        };
        if request.new_owner.is_empty() {
            return Err(Status::invalid_argument("new_owner is required"));
        }
        match self
            .engine
            .hand_off(sid, &request.new_owner)
            .instrument(span)
            .await
        {
            Ok(reply) => Ok(Response::new(reply)),
            Err(err) => Err(Status::failed_precondition(err.to_string())),
        }
    }

    async fn local(&self, request: Request<LocalRequest>) -> Result<Response<LocalReply>, Status> {
        let span = tracing::info_span!("node.local");
        continue_trace(&request, &span);
        Ok(Response::new(
            self.push
                .apply(request.into_inner())
                .instrument(span)
                .await?,
        ))
    }

    type DeliverStream = ReceiverStream<Result<DeliverAck, Status>>;

    async fn deliver(
        &self,
        request: Request<Streaming<DeliverBatch>>,
    ) -> Result<Response<Self::DeliverStream>, Status> {
        let mut stream = request.into_inner();
        let (acks, acks_rx) = mpsc::channel(64);
        let engine = self.engine.clone();
        let cluster = self.cluster.clone();
        tokio::spawn(async move {
            let mut from = String::new();
            loop {
                let batch = match stream.message().await {
                    Ok(Some(batch)) => batch,
                    Ok(None) => break,
                    Err(status) => {
                        debug!(peer = %from, %status, "delivery stream broken");
                        break;
                    }
                };
                if from.is_empty() {
                    if batch.from_node.is_empty() {
                        let refusal = Status::invalid_argument("the first batch names its node");
                        let _ = acks.send(Err(refusal)).await;
                        return;
                    }
                    from = batch.from_node;
                    debug!(peer = %from, "delivery stream opened");
                }
                for item in batch.items {
                    apply(&engine, &cluster, &from, item);
                }
                if batch.ack && acks.send(Ok(DeliverAck { seq: batch.seq })).await.is_err() {
                    break;
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(acks_rx)))
    }
}
