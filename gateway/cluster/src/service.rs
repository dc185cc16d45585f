//! The node-to-node gRPC service every gateway serves: forwarded polling
//! requests, handoffs, and the delivery streams of the other nodes.

use std::sync::Arc;

use http::Method;
use ringway_proto::auth::Caller;
use ringway_proto::cluster::v1::node_server::Node;
use ringway_proto::cluster::v1::{
    deliver_item, poll_message, DeliverAck, DeliverBatch, DeliverItem, ForwardReply,
    ForwardRequest, HandoffReply, HandoffRequest, LocalReply, LocalRequest, PollMessage,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};
use tracing::debug;

use ringway_engineio::engine::HOLD_WAIT;
use ringway_engineio::{BoxFuture, Engine, ForwardedRequest, Frame, Located, Sid};
use ringway_socketio::{Application, SocketIo, Target};
use ringway_telemetry::continue_trace;
use tracing::Instrument;

use super::convert::{self, ProtoFrame};
use super::Cluster;

/// What a node does for another's `Local` call: a Push operation on its
/// own sockets (emit, join, disconnect, count, ...), an evict, an ack or
/// frames for a session that moved. The gateway's Push API implements it
/// (the same code serves its own node's share of a Push call).
pub trait LocalOps: Send + Sync + 'static {
    fn apply(&self, request: LocalRequest) -> BoxFuture<'_, Result<LocalReply, Status>>;
}

pub struct NodeService<A: Application> {
    engine: Arc<Engine<SocketIo<A>>>,
    cluster: Arc<Cluster>,
    local: Arc<dyn LocalOps>,
}

impl<A: Application> NodeService<A> {
    pub fn new(
        engine: Arc<Engine<SocketIo<A>>>,
        cluster: Arc<Cluster>,
        local: Arc<dyn LocalOps>,
    ) -> Self {
        NodeService {
            engine,
            cluster,
            local,
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
            crate::metrics::metrics().peer_emits.add(1, &[]);
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
        Some(deliver_item::Kind::Unlogged(entry)) => engine
            .handler()
            .deliver_unlogged(convert::log_entry_from(entry)),
        Some(deliver_item::Kind::Room(change)) => cluster.rooms().apply(from, &change),
        Some(deliver_item::Kind::Snapshot(snapshot)) => cluster.rooms().replace(from, &snapshot),
        None => {}
    }
}

fn unknown() -> ForwardReply {
    convert::forward_reply(Located::Unknown).0
}

/// A forwarded request as the engine takes it; `None` for a garbage sid.
fn forwarded(request: ForwardRequest) -> Result<Option<(Sid, ForwardedRequest)>, Status> {
    let method = match request.method.as_str() {
        "GET" => Method::GET,
        "POST" => Method::POST,
        _ => return Err(Status::invalid_argument("only GET and POST are forwarded")),
    };
    let Some(sid) = Sid::parse(&request.sid) else {
        return Ok(None);
    };
    let forwarded = ForwardedRequest {
        method,
        query: request.query,
        body: request.body,
        binary_body: request.binary_body,
    };
    Ok(Some((sid, forwarded)))
}

/// Waits for the caller of a `Poll` to say the answer reached its client.
/// Anything else (another message, its stream ending or breaking, silence
/// past the bound) means it did not, as far as the caller can tell: the
/// session weighs that against what the client's next request shows
/// (`Session::forwarder_settles`).
async fn delivered(inbound: &mut Streaming<PollMessage>) -> bool {
    let message = tokio::time::timeout(HOLD_WAIT, inbound.message()).await;
    matches!(
        message,
        Ok(Ok(Some(PollMessage {
            kind: Some(poll_message::Kind::Delivered(true))
        })))
    )
}

#[tonic::async_trait]
impl<A: Application> Node for NodeService<A> {
    async fn forward(
        &self,
        request: Request<ForwardRequest>,
    ) -> Result<Response<ForwardReply>, Status> {
        let span = tracing::info_span!("node.forward");
        continue_trace(&request, &span);
        let Some((sid, forwarded)) = forwarded(request.into_inner())? else {
            return Ok(Response::new(unknown()));
        };
        let (reply, receipt) = convert::forward_reply(
            self.engine
                .serve_forwarded(sid, forwarded, false)
                .instrument(span)
                .await,
        );
        // A caller without receipts: delivered as far as anyone knows.
        if let Some(receipt) = receipt {
            receipt.settle(true);
        }
        Ok(Response::new(reply))
    }

    type PollStream = ReceiverStream<Result<ForwardReply, Status>>;

    async fn poll(
        &self,
        request: Request<Streaming<PollMessage>>,
    ) -> Result<Response<Self::PollStream>, Status> {
        let span = tracing::info_span!("node.poll");
        continue_trace(&request, &span);
        let mut inbound = request.into_inner();
        // The request comes with the call (a caller silent past the bound
        // is refused, not waited for).
        let first = tokio::time::timeout(HOLD_WAIT, inbound.message())
            .await
            .map_err(|_| Status::deadline_exceeded("no request"))??;
        let Some(PollMessage {
            kind: Some(poll_message::Kind::Request(request)),
        }) = first
        else {
            return Err(Status::invalid_argument("a poll starts with its request"));
        };
        if request.method != "GET" {
            return Err(Status::invalid_argument("only a GET is polled"));
        }
        let (replies, replies_rx) = mpsc::channel(1);
        let Some((sid, forwarded)) = forwarded(request)? else {
            let _ = replies.try_send(Ok(unknown()));
            return Ok(Response::new(ReceiverStream::new(replies_rx)));
        };
        let engine = self.engine.clone();
        tokio::spawn(
            async move {
                // The caller going away (its client left, or it failed)
                // ends the poll unanswered: nothing leaves the queue.
                let (reply, receipt) = tokio::select! {
                    served = engine.serve_forwarded(sid, forwarded, true) => {
                        convert::forward_reply(served)
                    }
                    _ = inbound.message() => return,
                };
                if replies.send(Ok(reply)).await.is_err() {
                    return;
                }
                if let Some(receipt) = receipt {
                    receipt.settle(delivered(&mut inbound).await);
                }
            }
            .instrument(span),
        );
        Ok(Response::new(ReceiverStream::new(replies_rx)))
    }

    async fn handoff(
        &self,
        request: Request<HandoffRequest>,
    ) -> Result<Response<HandoffReply>, Status> {
        let span = tracing::info_span!("node.handoff");
        continue_trace(&request, &span);
        let caller = Caller::of(&request);
        let request = request.into_inner();
        let Some(sid) = Sid::parse(&request.sid) else {
            return Ok(Response::new(convert::handoff_reply(Located::Unknown)));
        };
        if request.new_owner.is_empty() {
            return Err(Status::invalid_argument("new_owner is required"));
        }
        // Only the node that takes the session may ask for it.
        caller.check_acts_as(&request.new_owner, "new_owner")?;
        match self
            .engine
            .hand_off(sid, &request.new_owner)
            .instrument(span)
            .await
        {
            Ok(handed) => Ok(Response::new(convert::handoff_reply(handed))),
            Err(err) => Err(Status::failed_precondition(err.to_string())),
        }
    }

    async fn local(&self, request: Request<LocalRequest>) -> Result<Response<LocalReply>, Status> {
        let span = tracing::info_span!("node.local");
        continue_trace(&request, &span);
        Ok(Response::new(
            self.local
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
        let caller = Caller::of(&request);
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
                    // A stream speaks for the node that opened it only.
                    if let Err(refusal) = caller.check_acts_as(&batch.from_node, "from_node") {
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
