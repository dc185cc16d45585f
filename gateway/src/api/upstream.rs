//! The gRPC application (`--upstream URL`): the gateway calls the
//! backend's `ringway.v1.Upstream` service to decide CONNECTs
//! (`OnConnect`), hand over client events (`OnEvent`, whose reply is the
//! ack) and report disconnects (`OnDisconnect`).
//!
//! Every call is bounded twice: in time (`--upstream-timeout`, counted from
//! when the gateway got the packet) and in number (`--upstream-max-in-flight`
//! calls at once per node; past it calls fail at once rather than queue,
//! except disconnect notices, which wait for a permit until their deadline
//! so that a burst of disconnects is not lost).
//! A failed call has a defined outcome for the client, never a hang: a
//! CONNECT_ERROR for a CONNECT, an ack `[{"error": "<message>"}]` for an
//! event that asked for one (see [`CallError`] for the messages).
//!
//! Calls of one socket reach the backend in order: each waits for the
//! socket's previous call (event or disconnect) to finish, at most
//! [`MAX_QUEUED_PER_SOCKET`] of them, so a backend sees a client's events
//! in the order the client sent them and the disconnect last. Calls of
//! different sockets run concurrently.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ringway_proto::v1 as pb;
use ringway_proto::v1::upstream_client::UpstreamClient;
use serde_json::value::RawValue;
use thiserror::Error;
use tokio::sync::{oneshot, Semaphore};
use tokio::time::Instant;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};
use tracing::{debug, info, warn};

use crate::config::Config;
use crate::engineio::Sid;
use crate::socketio::{
    AckSender, Application, ConnectFuture, ConnectRequest, DisconnectReason, Event, Grant, Payload,
    Refusal, SocketRef,
};

/// Most calls of one socket waiting for their turn (the one running
/// included); past it the socket's events fail with "upstream busy".
pub const MAX_QUEUED_PER_SOCKET: usize = 64;

/// Largest `Allow.data` kept with a socket (it travels with every event).
pub const MAX_DATA: usize = 4096;

/// How much later than the gateway's own deadline the `grpc-timeout` of a
/// call is.
const DEADLINE_MARGIN: Duration = Duration::from_millis(50);

/// The CONNECT_ERROR message of a `Deny` without one.
const DEFAULT_DENY: &str = "not authorized";

/// A bad `--upstream` URL.
#[derive(Debug, Error)]
pub enum UpstreamConfigError {
    #[error("not a URL: {0:?}")]
    Invalid(String),
    #[error("only http:// URLs are supported: {0:?}")]
    Scheme(String),
}

/// Checks an `--upstream` URL: `http://host:port`.
pub fn check_url(url: &str) -> Result<(), UpstreamConfigError> {
    let uri: http::Uri = url
        .parse()
        .map_err(|_| UpstreamConfigError::Invalid(url.to_owned()))?;
    if uri.scheme_str() != Some("http") {
        return Err(UpstreamConfigError::Scheme(url.to_owned()));
    }
    if uri.authority().is_none() {
        return Err(UpstreamConfigError::Invalid(url.to_owned()));
    }
    Ok(())
}

/// Why an upstream call failed. The message is what the client sees (the
/// CONNECT_ERROR message, or the `error` of an ack).
#[derive(Debug, Error)]
pub enum CallError {
    /// `--upstream-max-in-flight` calls are running on this node, or the
    /// socket has [`MAX_QUEUED_PER_SOCKET`] calls waiting.
    #[error("upstream busy")]
    Busy,
    /// No answer within `--upstream-timeout`.
    #[error("upstream timeout")]
    Timeout,
    /// The backend cannot be reached.
    #[error("upstream unavailable")]
    Unavailable(Status),
    /// The backend answered with an error status.
    #[error("upstream error")]
    Failed(Status),
    /// The backend's answer breaks the contract (no decision, bad JSON,
    /// data too large).
    #[error("upstream error")]
    BadReply(&'static str),
}

impl From<Status> for CallError {
    fn from(status: Status) -> CallError {
        match status.code() {
            Code::Unavailable => CallError::Unavailable(status),
            Code::DeadlineExceeded => CallError::Timeout,
            _ => CallError::Failed(status),
        }
    }
}

impl CallError {
    /// The ack a client that asked for one gets: `[{"error":"..."}]`.
    pub fn ack_payload(&self) -> Payload {
        Payload::from_values(&[serde_json::json!({ "error": self.to_string() })])
    }

    /// Whether the failure says the backend is unwell (for the log).
    fn is_outage(&self) -> bool {
        matches!(self, CallError::Timeout | CallError::Unavailable(_))
    }
}

/// The upstream settings of a configuration.
#[derive(Debug, Clone)]
pub struct UpstreamSettings {
    pub url: String,
    pub timeout: Duration,
    pub max_in_flight: usize,
    pub node_id: String,
    pub namespaces: Vec<String>,
}

impl UpstreamSettings {
    /// `None` when no `--upstream` is set.
    pub fn from_config(config: &Config) -> Option<UpstreamSettings> {
        Some(UpstreamSettings {
            url: config.upstream.clone()?,
            timeout: Duration::from_millis(config.upstream_timeout),
            max_in_flight: config.upstream_max_in_flight,
            node_id: config.node_id(),
            namespaces: config.namespaces.clone(),
        })
    }
}

/// The application that calls the backend.
pub struct UpstreamApp {
    inner: Arc<Inner>,
}

struct Inner {
    client: UpstreamClient<Channel>,
    timeout: Duration,
    permits: Arc<Semaphore>,
    node_id: String,
    namespaces: Vec<String>,
    lanes: Lanes,
    /// Whether the last call reached the backend (logs a change once,
    /// not every failed call).
    healthy: AtomicBool,
}

impl UpstreamApp {
    /// Must run inside the tokio runtime. The connection is made on the
    /// first call (and again after a failure): the gateway starts while the
    /// backend is down.
    pub fn new(settings: UpstreamSettings) -> Result<UpstreamApp, UpstreamConfigError> {
        check_url(&settings.url)?;
        let endpoint = Endpoint::from_shared(settings.url.clone())
            .map_err(|_| UpstreamConfigError::Invalid(settings.url.clone()))?
            .connect_timeout(settings.timeout)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(20))
            .keep_alive_timeout(Duration::from_secs(10))
            .buffer_size(settings.max_in_flight);
        let client = UpstreamClient::new(endpoint.connect_lazy());
        Ok(UpstreamApp {
            inner: Arc::new(Inner {
                client,
                timeout: settings.timeout,
                permits: Arc::new(Semaphore::new(settings.max_in_flight)),
                node_id: settings.node_id,
                namespaces: settings.namespaces,
                lanes: Lanes::default(),
                healthy: AtomicBool::new(true),
            }),
        })
    }
}

impl Inner {
    /// One call: a permit (now or `Busy`; with `wait`, by the deadline),
    /// the answer by `deadline` or `Timeout`.
    async fn call<T, F, Fut>(
        &self,
        what: &'static str,
        deadline: Instant,
        wait: bool,
        f: F,
    ) -> Result<T, CallError>
    where
        F: FnOnce(UpstreamClient<Channel>, Duration) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        let span = tracing::info_span!("upstream", call = what);
        let started = std::time::Instant::now();
        let result = tracing::Instrument::instrument(self.try_call(deadline, wait, f), span).await;
        let outcome = match &result {
            Ok(_) => "ok",
            Err(CallError::Busy) => "busy",
            Err(CallError::Timeout) => "timeout",
            Err(CallError::Unavailable(_)) => "unavailable",
            Err(CallError::Failed(_)) => "failed",
            Err(CallError::BadReply(_)) => "bad_reply",
        };
        crate::telemetry::metrics().upstream_duration.record(
            crate::telemetry::seconds(started),
            &[
                opentelemetry::KeyValue::new("call", what),
                opentelemetry::KeyValue::new("outcome", outcome),
            ],
        );
        match &result {
            Ok(_) => {
                if !self.healthy.swap(true, Ordering::Relaxed) {
                    info!("upstream answers again");
                }
            }
            Err(err) if err.is_outage() => {
                if self.healthy.swap(false, Ordering::Relaxed) {
                    warn!(call = what, %err, detail = ?err, "upstream failing");
                } else {
                    debug!(call = what, %err, "upstream call failed");
                }
            }
            // Overload is the gateway's own limit at work: not worth a
            // warning per refused call.
            Err(CallError::Busy) => debug!(call = what, "upstream call refused: busy"),
            Err(err) => warn!(call = what, %err, detail = ?err, "upstream call failed"),
        }
        result
    }

    async fn try_call<T, F, Fut>(&self, deadline: Instant, wait: bool, f: F) -> Result<T, CallError>
    where
        F: FnOnce(UpstreamClient<Channel>, Duration) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        let _permit = if wait {
            tokio::time::timeout_at(deadline, self.permits.clone().acquire_owned())
                .await
                .map_err(|_| CallError::Timeout)?
                .map_err(|_| CallError::Busy)?
        } else {
            self.permits
                .clone()
                .try_acquire_owned()
                .map_err(|_| CallError::Busy)?
        };
        let remaining = deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            return Err(CallError::Timeout);
        }
        // The backend gets the deadline as the call's `grpc-timeout`, a
        // little later than ours: the client enforces it too, and the
        // failure should be ours ("upstream timeout"), not its
        // (`CANCELLED`).
        let call = f(self.client.clone(), remaining + DEADLINE_MARGIN);
        match tokio::time::timeout_at(deadline, call).await {
            Err(_) => Err(CallError::Timeout),
            Ok(Err(_)) if Instant::now() >= deadline => Err(CallError::Timeout),
            Ok(Err(status)) => Err(status.into()),
            Ok(Ok(reply)) => Ok(reply.into_inner()),
        }
    }
}

/// A request with the deadline the backend should honour too.
fn with_deadline<T>(message: T, timeout: Duration) -> tonic::Request<T> {
    // The current span's trace context goes along: the backend's spans
    // join the trace.
    let mut request = crate::telemetry::traced(message);
    request.set_timeout(timeout);
    request
}

/// The handshake headers as a map; repeated headers joined with ", ".
fn header_map(request: &ConnectRequest) -> HashMap<String, String> {
    let mut headers: HashMap<String, String> = HashMap::new();
    for (name, value) in request.session.handshake().headers() {
        headers
            .entry(name.to_owned())
            .and_modify(|v| {
                v.push_str(", ");
                v.push_str(value);
            })
            .or_insert_with(|| value.to_owned());
    }
    headers
}

fn grant(reply: pb::ConnectReply) -> Result<Grant, Refusal> {
    match reply.decision {
        Some(pb::connect_reply::Decision::Allow(allow)) => {
            if allow.data.len() > MAX_DATA {
                let err = CallError::BadReply("Allow.data over 4 KiB");
                warn!(%err, detail = ?err, "upstream OnConnect reply refused");
                return Err(Refusal::new(err.to_string()));
            }
            Ok(Grant {
                user: (!allow.user.is_empty()).then_some(allow.user),
                rooms: allow.rooms,
                data: (!allow.data.is_empty()).then_some(allow.data),
            })
        }
        Some(pb::connect_reply::Decision::Deny(deny)) => Err(Refusal {
            message: if deny.message.is_empty() {
                DEFAULT_DENY.to_owned()
            } else {
                deny.message
            },
            data: (!deny.data_json.is_empty()).then(|| {
                serde_json::from_str(&deny.data_json)
                    .unwrap_or(serde_json::Value::String(deny.data_json))
            }),
        }),
        None => {
            let err = CallError::BadReply("OnConnect reply without a decision");
            warn!(%err, detail = ?err, "upstream OnConnect reply refused");
            Err(Refusal::new(err.to_string()))
        }
    }
}

/// The ack of an `OnEvent` reply.
fn ack_payload(reply: pb::EventReply) -> Result<Payload, CallError> {
    let json = if reply.ack_args_json.trim().is_empty() {
        "[]".to_owned()
    } else {
        reply.ack_args_json
    };
    if serde_json::from_str::<Vec<&RawValue>>(&json).is_err() {
        return Err(CallError::BadReply(
            "EventReply.ack_args_json is not a JSON array",
        ));
    }
    if reply.ack_attachments.is_empty() {
        return Ok(Payload::from_json_array(json));
    }
    Payload::checked(json, reply.ack_attachments).map_err(|_| {
        CallError::BadReply("EventReply.ack_attachments do not match the placeholders")
    })
}

impl Application for UpstreamApp {
    fn has_namespace(&self, namespace: &str) -> bool {
        self.inner.namespaces.iter().any(|n| n == namespace)
    }

    fn authorize(&self, request: ConnectRequest) -> ConnectFuture {
        let inner = self.inner.clone();
        let deadline = Instant::now() + inner.timeout;
        let handshake = request.session.handshake();
        let message = pb::ConnectRequest {
            sid: request.session.sid().to_string(),
            headers: header_map(&request),
            remote_addr: handshake.remote_addr.to_string(),
            query: handshake.query.clone(),
            namespace: request.namespace,
            auth_json: request.auth,
            node_id: inner.node_id.clone(),
        };
        Box::pin(async move {
            let reply = inner
                .call(
                    "OnConnect",
                    deadline,
                    false,
                    |mut client, timeout| async move {
                        client.on_connect(with_deadline(message, timeout)).await
                    },
                )
                .await
                .map_err(|err| Refusal::new(err.to_string()))?;
            grant(reply)
        })
    }

    fn on_event(&self, socket: &SocketRef, event: Event, ack: Option<AckSender>) {
        let inner = self.inner.clone();
        let deadline = Instant::now() + inner.timeout;
        let Some(mut turn) = inner.lanes.enter(socket.id(), false) else {
            debug!(socket = %socket.id(), "too many upstream events queued for one socket");
            if let Some(ack) = ack {
                let _ = ack.send(&CallError::Busy.ack_payload());
            }
            return;
        };
        let (args_json, attachments) = event.args.into_parts();
        let message = pb::EventRequest {
            sid: socket.session().sid().to_string(),
            namespace: socket.namespace().name().to_owned(),
            user: socket.user().unwrap_or_default().to_owned(),
            event: event.name,
            args_json,
            attachments,
            wants_ack: ack.is_some(),
            data: socket.data().cloned().unwrap_or_default(),
            socket_id: socket.id().to_string(),
        };
        tokio::spawn(async move {
            turn.wait().await;
            let result = inner
                .call(
                    "OnEvent",
                    deadline,
                    false,
                    |mut client, timeout| async move {
                        client.on_event(with_deadline(message, timeout)).await
                    },
                )
                .await;
            if let Some(ack) = ack {
                let payload = result.and_then(ack_payload).unwrap_or_else(|err| {
                    if let CallError::BadReply(_) = err {
                        warn!(%err, detail = ?err, "upstream OnEvent reply refused");
                    }
                    err.ack_payload()
                });
                let _ = ack.send(&payload);
            }
            // The next call of the socket goes once this ack is queued.
            drop(turn);
        });
    }

    fn on_disconnect(&self, socket: &SocketRef, reason: DisconnectReason) {
        let inner = self.inner.clone();
        let deadline = Instant::now() + inner.timeout;
        let message = pb::DisconnectNotice {
            sid: socket.session().sid().to_string(),
            namespace: socket.namespace().name().to_owned(),
            user: socket.user().unwrap_or_default().to_owned(),
            reason: reason.as_str().to_owned(),
            data: socket.data().cloned().unwrap_or_default(),
            socket_id: socket.id().to_string(),
        };
        // Always queued (once per socket), after the socket's events.
        let Some(mut turn) = inner.lanes.enter(socket.id(), true) else {
            return;
        };
        tokio::spawn(async move {
            turn.wait().await;
            let _ = inner
                .call(
                    "OnDisconnect",
                    deadline,
                    true,
                    |mut client, timeout| async move {
                        client.on_disconnect(with_deadline(message, timeout)).await
                    },
                )
                .await;
            drop(turn);
        });
    }
}

/// Per-socket order of upstream calls: each call waits for the one
/// before it on the same socket. A socket has an entry only while it has
/// calls queued or running.
#[derive(Default)]
struct Lanes {
    lanes: Arc<Mutex<HashMap<Sid, Lane>>>,
}

#[derive(Default)]
struct Lane {
    /// Calls queued or running.
    queued: usize,
    /// Resolves when the last queued call is done.
    tail: Option<oneshot::Receiver<()>>,
}

/// A call's place in its socket's lane; dropping it lets the next one go.
struct Turn {
    lanes: Arc<Mutex<HashMap<Sid, Lane>>>,
    socket: Sid,
    previous: Option<oneshot::Receiver<()>>,
    done: Option<oneshot::Sender<()>>,
}

impl Lanes {
    /// Queues a call behind the socket's others. `None` when the socket
    /// already has [`MAX_QUEUED_PER_SOCKET`] (unless `always`).
    fn enter(&self, socket: Sid, always: bool) -> Option<Turn> {
        let mut lanes = self.lanes.lock().unwrap_or_else(|e| e.into_inner());
        let lane = lanes.entry(socket).or_default();
        if lane.queued >= MAX_QUEUED_PER_SOCKET && !always {
            return None;
        }
        lane.queued += 1;
        let (done, tail) = oneshot::channel();
        let previous = lane.tail.replace(tail);
        Some(Turn {
            lanes: self.lanes.clone(),
            socket,
            previous,
            done: Some(done),
        })
    }
}

impl Turn {
    /// Waits until the socket's previous call is done. That call's
    /// deadline is no later than this one's, so the wait is bounded.
    async fn wait(&mut self) {
        if let Some(previous) = self.previous.take() {
            // An error means the previous call's task ended without
            // sending: it is done all the same.
            let _ = previous.await;
        }
    }
}

impl Drop for Turn {
    fn drop(&mut self) {
        {
            let mut lanes = self.lanes.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(lane) = lanes.get_mut(&self.socket) {
                lane.queued = lane.queued.saturating_sub(1);
                if lane.queued == 0 {
                    lanes.remove(&self.socket);
                }
            }
        }
        if let Some(done) = self.done.take() {
            let _ = done.send(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    #[test]
    fn urls() {
        assert!(check_url("http://127.0.0.1:9000").is_ok());
        assert!(check_url("http://backend:9000/").is_ok());
        assert!(matches!(
            check_url("https://backend:9000"),
            Err(UpstreamConfigError::Scheme(_))
        ));
        assert!(check_url("backend:9000").is_err());
        assert!(check_url("not a url").is_err());
    }

    #[test]
    fn error_acks_and_messages() {
        assert_eq!(
            CallError::Timeout.ack_payload().json(),
            r#"[{"error":"upstream timeout"}]"#
        );
        assert_eq!(
            CallError::from(Status::unavailable("down")).to_string(),
            "upstream unavailable"
        );
        assert_eq!(
            CallError::from(Status::deadline_exceeded("slow")).to_string(),
            "upstream timeout"
        );
        assert_eq!(
            CallError::from(Status::internal("boom")).to_string(),
            "upstream error"
        );
    }

    #[test]
    fn replies() {
        let reply = |json: &str| pb::EventReply {
            ack_args_json: json.into(),
            ack_attachments: Vec::new(),
        };
        assert_eq!(ack_payload(reply("")).expect("empty").json(), "[]");
        assert_eq!(
            ack_payload(reply("[1,\"a\"]")).expect("ok").json(),
            "[1,\"a\"]"
        );
        assert!(ack_payload(reply("{}")).is_err());
        assert!(ack_payload(reply("[")).is_err());
        let binary = pb::EventReply {
            ack_args_json: r#"[{"_placeholder":true,"num":0}]"#.into(),
            ack_attachments: vec![Bytes::from_static(b"\x01")],
        };
        assert_eq!(ack_payload(binary).expect("binary").attachments().len(), 1);

        let deny = grant(pb::ConnectReply {
            decision: Some(pb::connect_reply::Decision::Deny(pb::Deny {
                message: String::new(),
                data_json: r#"{"code":1}"#.into(),
            })),
        })
        .expect_err("denied");
        assert_eq!(deny.message, DEFAULT_DENY);
        assert_eq!(deny.data, Some(serde_json::json!({"code": 1})));
        let allow = grant(pb::ConnectReply {
            decision: Some(pb::connect_reply::Decision::Allow(pb::Allow {
                user: "u".into(),
                rooms: vec!["r".into()],
                data: Bytes::from_static(b"d"),
            })),
        })
        .expect("allowed");
        assert_eq!(allow.user.as_deref(), Some("u"));
        assert_eq!(allow.data.as_deref(), Some(&b"d"[..]));
        let big = grant(pb::ConnectReply {
            decision: Some(pb::connect_reply::Decision::Allow(pb::Allow {
                data: Bytes::from(vec![0; MAX_DATA + 1]),
                ..Default::default()
            })),
        });
        assert_eq!(big.expect_err("too big").message, "upstream error");
        assert!(grant(pb::ConnectReply { decision: None }).is_err());
    }

    #[tokio::test]
    async fn lanes_keep_order_and_forget_idle_sockets() {
        let lanes = Lanes::default();
        let sid = Sid::random();
        let mut first = lanes.enter(sid, false).expect("first");
        let mut second = lanes.enter(sid, false).expect("second");
        first.wait().await;
        let waiting = tokio::spawn(async move {
            second.wait().await;
            second
        });
        // fixed: a negative check (the second still waits a moment later).
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiting.is_finished(), "the second waits for the first");
        drop(first);
        let second = waiting.await.expect("task");
        assert_eq!(lanes.lanes.lock().expect("lock").len(), 1);
        drop(second);
        assert!(lanes.lanes.lock().expect("lock").is_empty());

        let turns: Vec<_> = (0..MAX_QUEUED_PER_SOCKET)
            .map(|_| lanes.enter(sid, false).expect("room"))
            .collect();
        assert!(lanes.enter(sid, false).is_none(), "bounded");
        assert!(lanes.enter(sid, true).is_some(), "disconnects always queue");
        drop(turns);
    }
}
