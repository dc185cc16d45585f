//! Another gateway: one HTTP/2 channel for forwarded requests and
//! handoffs, and one long-lived ordered delivery stream fed by a bounded
//! queue. Items queued for the stream go out in batches.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ringway_proto::auth::{ClusterSecurity, Signer};
use ringway_proto::cluster::v1::node_client::NodeClient;
use ringway_proto::cluster::v1::{
    deliver_item, poll_message, DeliverBatch, DeliverItem, ForwardReply, ForwardRequest,
    HandoffReply, HandoffRequest, LocalReply, LocalRequest, PollMessage,
};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_stream::wrappers::ReceiverStream;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use tracing::{debug, warn};

use super::rooms::LocalRooms;
use ringway_engineio::engine::HOLD_WAIT;
use ringway_engineio::Receipt;
use ringway_telemetry::traced;

/// Items waiting for the delivery stream of one peer; past this a peer
/// that cannot keep up loses items (counted), instead of growing memory.
const QUEUE_ITEMS: usize = 65_536;
/// Most items in one batch.
const BATCH_ITEMS: usize = 512;
/// Largest node-to-node message: a polling answer (up to 16 packets of
/// `--max-payload`) or a handed-off session (its queue, up to
/// `--max-queued-bytes`, and a binary packet being reassembled) must fit;
/// tonic's default of 4 MiB does not.
pub const MAX_MESSAGE: usize = 256 << 20;
/// Bound of a handoff call.
const HANDOFF_TIMEOUT: Duration = Duration::from_secs(3);

/// A client of another member's node service: every call signed with
/// the cluster credential.
pub type NodeChannel = NodeClient<InterceptedService<Channel, Signer>>;

/// An item for the delivery stream, and who waits for the peer to have
/// applied it.
struct Outgoing {
    item: DeliverItem,
    applied: Option<oneshot::Sender<()>>,
}

/// Batches sent and not acknowledged yet, with their waiters.
type Unacked = Arc<Mutex<VecDeque<(u64, Vec<oneshot::Sender<()>>)>>>;

pub struct Peer {
    node_id: String,
    addr: String,
    client: NodeChannel,
    queue: mpsc::Sender<Outgoing>,
    dropped: AtomicU64,
    pump: JoinHandle<()>,
}

impl Drop for Peer {
    fn drop(&mut self) {
        self.pump.abort();
    }
}

impl Peer {
    /// A peer at `addr` (host:port of its gRPC listener). Connects lazily.
    pub fn new(
        self_id: &str,
        node_id: &str,
        addr: &str,
        local_rooms: Arc<LocalRooms>,
        security: &ClusterSecurity,
    ) -> Result<Arc<Peer>, tonic::transport::Error> {
        let channel = security
            .endpoint(addr)?
            .connect_timeout(Duration::from_secs(1))
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(10))
            .keep_alive_timeout(Duration::from_secs(5))
            .keep_alive_while_idle(true)
            .connect_lazy();
        let client = NodeClient::with_interceptor(channel, security.signer())
            .max_decoding_message_size(MAX_MESSAGE)
            .max_encoding_message_size(MAX_MESSAGE);
        let (queue, rx) = mpsc::channel(QUEUE_ITEMS);
        let pump = tokio::spawn(pump(
            self_id.to_owned(),
            node_id.to_owned(),
            client.clone(),
            rx,
            local_rooms,
        ));
        Ok(Arc::new(Peer {
            node_id: node_id.to_owned(),
            addr: addr.to_owned(),
            client,
            queue,
            dropped: AtomicU64::new(0),
            pump,
        }))
    }

    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// Items lost because the peer's queue was full.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Queues an item for the delivery stream; never blocks.
    pub fn send(&self, item: DeliverItem) {
        self.enqueue(Outgoing {
            item,
            applied: None,
        });
    }

    /// Queues an item and returns what resolves once the peer applied it
    /// (or the stream failed: a receiver that errs counts as done).
    pub fn send_confirmed(&self, item: DeliverItem) -> oneshot::Receiver<()> {
        let (tx, rx) = oneshot::channel();
        self.enqueue(Outgoing {
            item,
            applied: Some(tx),
        });
        rx
    }

    fn enqueue(&self, outgoing: Outgoing) {
        if self.queue.try_send(outgoing).is_err() {
            crate::metrics::metrics()
                .peer_queue_drops
                .add(1, &ringway_telemetry::attr("peer", self.node_id.clone()));
            let n = self.dropped.fetch_add(1, Ordering::Relaxed);
            if n.is_power_of_two() {
                warn!(peer = %self.node_id, dropped = n + 1, "peer delivery queue full: items dropped");
            }
        }
    }

    pub async fn forward(&self, request: ForwardRequest) -> Result<ForwardReply, tonic::Status> {
        let mut client = self.client.clone();
        timed("forward", async move {
            Ok(client.forward(traced(request)).await?.into_inner())
        })
        .await
    }

    /// A polling GET held by the peer (`Poll`), and the receipt that tells
    /// it whether the answer reached the client: until then the peer
    /// keeps the answer's packets. A peer without `Poll` gets `Forward`.
    pub async fn poll(
        &self,
        request: ForwardRequest,
    ) -> Result<(ForwardReply, Option<Receipt>), tonic::Status> {
        let mut client = self.client.clone();
        timed("poll", async move {
            let (messages, messages_rx) = mpsc::channel(2);
            let first = PollMessage {
                kind: Some(poll_message::Kind::Request(request.clone())),
            };
            // The channel is empty and its receiver alive.
            let _ = messages.try_send(first);
            let call = client.poll(traced(ReceiverStream::new(messages_rx))).await;
            let mut replies = match call {
                Ok(replies) => replies.into_inner(),
                Err(status) if status.code() == tonic::Code::Unimplemented => {
                    let reply = client.forward(traced(request)).await?.into_inner();
                    return Ok((reply, None));
                }
                Err(status) => return Err(status),
            };
            let reply = replies
                .message()
                .await?
                .ok_or_else(|| tonic::Status::unavailable("the poll ended unanswered"))?;
            // Not delivered: both halves of the call drop, which tells the
            // peer as much. Past a third of the peer's bound, the answer is
            // not given to the client at all (the peer may take it back).
            let expires = std::time::Instant::now() + HOLD_WAIT / 3;
            let receipt = Receipt::new(move |delivered| {
                if !delivered {
                    return;
                }
                tokio::spawn(async move {
                    let confirm = PollMessage {
                        kind: Some(poll_message::Kind::Delivered(true)),
                    };
                    if messages.send(confirm).await.is_ok() {
                        drop(messages);
                        // The call stays open until the peer ends it, so
                        // the confirmation is not cancelled on the way.
                        let _ = tokio::time::timeout(HOLD_WAIT, replies.message()).await;
                    }
                });
            })
            .expiring(expires);
            Ok((reply, Some(receipt)))
        })
        .await
    }

    /// A Push operation on the peer's own sockets.
    pub async fn local(&self, request: LocalRequest) -> Result<LocalReply, tonic::Status> {
        let mut client = self.client.clone();
        timed("local", async move {
            Ok(client.local(traced(request)).await?.into_inner())
        })
        .await
    }

    pub async fn handoff(&self, request: HandoffRequest) -> Result<HandoffReply, tonic::Status> {
        let mut client = self.client.clone();
        timed("handoff", async move {
            let call = client.handoff(traced(request));
            match tokio::time::timeout(HANDOFF_TIMEOUT, call).await {
                Ok(reply) => Ok(reply?.into_inner()),
                Err(_) => Err(tonic::Status::deadline_exceeded("handoff timed out")),
            }
        })
        .await
    }
}

/// Records a call's duration and outcome (`ok`, or the gRPC code).
async fn timed<T>(
    method: &'static str,
    call: impl std::future::Future<Output = Result<T, tonic::Status>>,
) -> Result<T, tonic::Status> {
    let started = std::time::Instant::now();
    let result = call.await;
    let outcome = ringway_telemetry::grpc_outcome(&result);
    crate::metrics::metrics().peer_duration.record(
        ringway_telemetry::seconds(started),
        &[
            opentelemetry::KeyValue::new("method", method),
            opentelemetry::KeyValue::new("outcome", outcome),
        ],
    );
    result
}

/// Feeds the delivery stream: opens it with a snapshot of this node's
/// rooms, then sends queued items in batches; reopens it after a failure.
async fn pump(
    self_id: String,
    peer_id: String,
    client: NodeChannel,
    mut rx: mpsc::Receiver<Outgoing>,
    local_rooms: Arc<LocalRooms>,
) {
    let mut backoff = Duration::from_millis(50);
    loop {
        let (tx, stream_rx) = mpsc::channel::<DeliverBatch>(64);
        let opening = DeliverBatch {
            from_node: self_id.clone(),
            items: vec![DeliverItem {
                kind: Some(deliver_item::Kind::Snapshot(local_rooms.snapshot())),
            }],
            seq: 1,
            ack: false,
        };
        if tx.send(opening).await.is_err() {
            return;
        }
        let mut seq = 1u64;
        let unacked: Unacked = Arc::default();
        let mut client = client.clone();
        let acks = unacked.clone();
        let mut call = tokio::spawn(async move {
            let mut acked = client
                .deliver(ReceiverStream::new(stream_rx))
                .await?
                .into_inner();
            while let Some(ack) = acked.message().await? {
                let mut unacked = acks.lock().unwrap_or_else(|e| e.into_inner());
                while unacked.front().is_some_and(|(seq, _)| *seq <= ack.seq) {
                    if let Some((_, waiters)) = unacked.pop_front() {
                        for waiter in waiters {
                            let _ = waiter.send(());
                        }
                    }
                }
            }
            Ok::<(), tonic::Status>(())
        });
        let mut sent_any = false;
        let ended = loop {
            let first = tokio::select! {
                item = rx.recv() => item,
                // The stream failed (peer down, restarted): reopen it.
                ended = &mut call => break Some(ended),
            };
            let Some(first) = first else {
                // The peer left the view: this task ends.
                call.abort();
                return;
            };
            let mut items = Vec::with_capacity(16);
            let mut waiters = Vec::new();
            let mut next = Some(first);
            while let Some(outgoing) = next.take() {
                items.push(outgoing.item);
                waiters.extend(outgoing.applied);
                if items.len() < BATCH_ITEMS {
                    next = rx.try_recv().ok();
                }
            }
            seq += 1;
            let ack = !waiters.is_empty();
            if ack {
                unacked
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push_back((seq, waiters));
            }
            let batch = DeliverBatch {
                from_node: String::new(),
                items,
                seq,
                ack,
            };
            if tx.send(batch).await.is_err() {
                break None;
            }
            sent_any = true;
        };
        let ended = match ended {
            Some(ended) => ended,
            None => call.await,
        };
        match ended {
            Ok(Err(status)) => debug!(peer = %peer_id, %status, "delivery stream ended"),
            Ok(Ok(())) => debug!(peer = %peer_id, "delivery stream closed"),
            Err(_) => {}
        }
        // Waiters of a broken stream are released (their receivers err).
        unacked.lock().unwrap_or_else(|e| e.into_inner()).clear();
        if sent_any {
            backoff = Duration::from_millis(50);
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
}
