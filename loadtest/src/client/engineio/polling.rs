//! The long-polling transport: a handshake GET, then two request loops per
//! session, one for the long-poll GETs and one for the POSTs (several
//! queued packets go out in one `\x1e`-separated body), each over
//! keep-alive HTTP/1.1 connections.
//!
//! With a node list (non-sticky mode) every request goes to the next node
//! of the list ([`NodeCursor`]): each loop keeps one connection per node,
//! opened when first needed.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use http::{header, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::{clip, Frame, OpenInfo, RECORD_SEPARATOR};
use crate::client::error::{ClientError, ErrorKind};
use crate::client::{net, trace, trace_enabled, ClientConfig, Endpoint, NodeCursor};

type Body = Full<Bytes>;

/// Packets received and not yet read by the session.
const INBOUND_QUEUE: usize = 256;
/// Packets to send not yet POSTed.
const OUTBOUND_QUEUE: usize = 256;

pub struct PollingTransport {
    inbound: mpsc::Receiver<Result<Frame, ClientError>>,
    outbound: Option<mpsc::Sender<String>>,
    get_task: JoinHandle<()>,
    post_task: JoinHandle<()>,
    /// Set to stop the GET loop after its current request (an upgrade).
    paused: Arc<AtomicBool>,
}

impl Drop for PollingTransport {
    fn drop(&mut self) {
        self.get_task.abort();
        self.post_task.abort();
    }
}

impl PollingTransport {
    /// The handshake GET (on the cursor's next node, returned with the open
    /// packet), then the GET loop and the POST loop.
    pub async fn connect(
        cfg: &Arc<ClientConfig>,
        cursor: &NodeCursor,
    ) -> Result<(Self, OpenInfo, usize), ClientError> {
        let mut get_pool = Pool::new(cfg.clone());
        let home = cursor.next();
        let body = get_pool
            .expect_ok(
                home,
                Method::GET,
                cfg.request_target("polling", None),
                Bytes::new(),
            )
            .await?;
        let mut packets = split_payload(&body)?;
        if packets.is_empty() {
            return Err(ClientError::protocol("empty handshake answer"));
        }
        let open = match packets.remove(0) {
            Frame::Text(text) => OpenInfo::parse(&text)?,
            Frame::Binary(_) => {
                return Err(ClientError::protocol(
                    "binary packet instead of the open packet",
                ))
            }
        };
        let target = cfg.request_target("polling", Some(&open.sid));
        let mut post_pool = Pool::new(cfg.clone());
        if cfg.nodes.len() == 1 {
            // One server: both connections up front, as a browser would.
            post_pool.conn(0).await?;
        }

        let (in_tx, inbound) = mpsc::channel(INBOUND_QUEUE);
        for frame in packets {
            // The queue is empty and larger than one handshake answer.
            let _ = in_tx.try_send(Ok(frame));
        }
        let (out_tx, out_rx) = mpsc::channel(OUTBOUND_QUEUE);
        let poll_timeout = open.ping_deadline();
        let paused = Arc::new(AtomicBool::new(false));
        let get_task = tokio::spawn(get_loop(
            get_pool,
            cursor.clone(),
            target.clone(),
            poll_timeout,
            in_tx.clone(),
            paused.clone(),
        ));
        let post_task = tokio::spawn(post_loop(post_pool, cursor.clone(), target, out_rx, in_tx));
        Ok((
            PollingTransport {
                inbound,
                outbound: Some(out_tx),
                get_task,
                post_task,
                paused,
            },
            open,
            home,
        ))
    }

    pub async fn recv(&mut self) -> Result<Frame, ClientError> {
        match self.inbound.recv().await {
            Some(result) => result,
            None => Err(ClientError::closed("polling loops ended")),
        }
    }

    pub async fn send(&mut self, packet: String) -> Result<(), ClientError> {
        match &self.outbound {
            Some(tx) => tx
                .send(packet)
                .await
                .map_err(|_| ClientError::closed("polling POST loop ended")),
            None => Err(ClientError::closed("polling transport closed")),
        }
    }

    /// Pauses the transport for an upgrade, as the official client does:
    /// no new GET, the one in flight answered (the server releases it with
    /// a noop once probed), every queued packet POSTed. Returns what was
    /// received and not read yet, in order.
    pub async fn pause(&mut self, limit: Duration) -> Result<VecDeque<Frame>, ClientError> {
        self.paused.store(true, Ordering::Relaxed);
        self.outbound = None;
        let drained = async {
            let _ = (&mut self.get_task).await;
            let _ = (&mut self.post_task).await;
        };
        if tokio::time::timeout(limit, drained).await.is_err() {
            return Err(ClientError::new(
                ErrorKind::Upgrade,
                format!(
                    "pending poll not released within {} ms of the probe",
                    limit.as_millis()
                ),
            ));
        }
        let mut pending = VecDeque::new();
        while let Ok(frame) = self.inbound.try_recv() {
            pending.push_back(frame?);
        }
        Ok(pending)
    }

    /// Lets the POST loop flush what is queued (the close packet), then stops.
    pub async fn close(mut self) {
        self.outbound = None;
        let _ = tokio::time::timeout(Duration::from_secs(1), &mut self.post_task).await;
    }
}

/// Keep-alive connections of one request loop, one per node, opened when
/// first used and again when the server closed them.
struct Pool {
    cfg: Arc<ClientConfig>,
    conns: Vec<Option<HttpConn>>,
}

impl Pool {
    fn new(cfg: Arc<ClientConfig>) -> Self {
        let conns = (0..cfg.nodes.len()).map(|_| None).collect();
        Pool { cfg, conns }
    }

    async fn conn(&mut self, node: usize) -> Result<&mut HttpConn, ClientError> {
        let slot = &mut self.conns[node];
        if slot.as_ref().is_some_and(|c| c.sender.is_closed()) {
            *slot = None;
        }
        if slot.is_none() {
            *slot = Some(HttpConn::connect(&self.cfg, self.cfg.node(node)).await?);
        }
        Ok(slot.as_mut().expect("connected above"))
    }

    /// A request to node `node` that must answer 200; the body is returned.
    async fn expect_ok(
        &mut self,
        node: usize,
        method: Method,
        target: String,
        body: Bytes,
    ) -> Result<Bytes, ClientError> {
        let cfg = self.cfg.clone();
        let authority = &cfg.node(node).authority;
        let conn = self.conn(node).await?;
        let traced = trace_enabled().then(|| (method.clone(), target.clone()));
        if let Some((method, target)) = &traced {
            trace(format_args!("-> node {} {method} {target}", node + 1));
        }
        let result = conn.expect_ok(method, target, authority, body).await;
        if let Some((method, target)) = &traced {
            match &result {
                Ok(body) => trace(format_args!(
                    "<- node {} {method} {target}: {}",
                    node + 1,
                    clip(&String::from_utf8_lossy(body))
                )),
                Err(e) => trace(format_args!("<- node {} {method} {target}: {e}", node + 1)),
            }
        }
        if let Err(e) = result {
            // Whatever state the connection is in, do not reuse it.
            self.conns[node] = None;
            if cfg.nodes.len() > 1 {
                return Err(ClientError::new(
                    e.kind,
                    format!("node {} ({authority}): {}", node + 1, e.detail),
                ));
            }
            return Err(e);
        }
        result
    }
}

/// One keep-alive HTTP/1.1 connection.
struct HttpConn {
    sender: SendRequest<Body>,
    conn_task: JoinHandle<()>,
}

impl Drop for HttpConn {
    fn drop(&mut self) {
        self.conn_task.abort();
    }
}

impl HttpConn {
    async fn connect(cfg: &ClientConfig, node: &Endpoint) -> Result<Self, ClientError> {
        let stream = net::connect(node.target, &cfg.sources).await?;
        let (sender, conn) = http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| ClientError::new(ErrorKind::Http, format!("http handshake: {e}")))?;
        let conn_task = tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(HttpConn { sender, conn_task })
    }

    async fn request(
        &mut self,
        method: Method,
        target: String,
        authority: &str,
        body: Bytes,
    ) -> Result<(StatusCode, Bytes), ClientError> {
        self.sender
            .ready()
            .await
            .map_err(|e| ClientError::closed(format!("http connection: {e}")))?;
        let mut req = Request::builder()
            .method(method.clone())
            .uri(target)
            .header(header::HOST, authority);
        if method == Method::POST {
            req = req.header(header::CONTENT_TYPE, "text/plain;charset=UTF-8");
        }
        let req = req
            .body(Full::new(body))
            .map_err(|e| ClientError::new(ErrorKind::Http, format!("request: {e}")))?;
        let resp = self.sender.send_request(req).await.map_err(http_error)?;
        let status = resp.status();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(http_error)?
            .to_bytes();
        Ok((status, body))
    }

    /// A request that must answer 200; the body is returned.
    async fn expect_ok(
        &mut self,
        method: Method,
        target: String,
        authority: &str,
        body: Bytes,
    ) -> Result<Bytes, ClientError> {
        let what = format!("{method}");
        let (status, body) = self.request(method, target, authority, body).await?;
        if status != StatusCode::OK {
            return Err(ClientError::new(
                ErrorKind::HttpStatus,
                format!(
                    "{what} -> {} {}",
                    status.as_u16(),
                    clip(&String::from_utf8_lossy(&body))
                ),
            ));
        }
        Ok(body)
    }
}

fn http_error(e: hyper::Error) -> ClientError {
    if e.is_incomplete_message() || e.is_closed() || e.is_canceled() {
        ClientError::closed(format!("http: {e}"))
    } else {
        ClientError::new(ErrorKind::Http, format!("http: {e}"))
    }
}

/// Splits a polling payload into packets; `b...` packets are base64 binary.
fn split_payload(body: &[u8]) -> Result<Vec<Frame>, ClientError> {
    let text = std::str::from_utf8(body)
        .map_err(|_| ClientError::protocol("polling payload is not UTF-8"))?;
    let mut frames = Vec::new();
    for packet in text.split(RECORD_SEPARATOR) {
        if let Some(b64) = packet.strip_prefix('b') {
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(b64)
                .map_err(|e| ClientError::protocol(format!("bad base64 packet: {e}")))?;
            frames.push(Frame::Binary(bytes));
        } else if packet.is_empty() {
            return Err(ClientError::protocol("empty packet in polling payload"));
        } else {
            frames.push(Frame::Text(packet.to_owned()));
        }
    }
    Ok(frames)
}

/// Long-polls until the session ends (or pauses), forwarding every packet.
async fn get_loop(
    mut pool: Pool,
    cursor: NodeCursor,
    target: String,
    poll_timeout: Duration,
    in_tx: mpsc::Sender<Result<Frame, ClientError>>,
    paused: Arc<AtomicBool>,
) {
    while !paused.load(Ordering::Relaxed) {
        let node = cursor.next();
        let answer = tokio::time::timeout(
            poll_timeout,
            pool.expect_ok(node, Method::GET, target.clone(), Bytes::new()),
        )
        .await;
        let result = match answer {
            Err(_) => Err(ClientError::new(
                ErrorKind::PingTimeout,
                format!(
                    "long-poll GET unanswered for {} ms",
                    poll_timeout.as_millis()
                ),
            )),
            Ok(r) => r.and_then(|body| split_payload(&body)),
        };
        match result {
            Ok(frames) => {
                for frame in frames {
                    let is_close = matches!(&frame, Frame::Text(t) if t == "1");
                    if in_tx.send(Ok(frame)).await.is_err() || is_close {
                        return;
                    }
                }
            }
            Err(e) => {
                let _ = in_tx.send(Err(e)).await;
                return;
            }
        }
    }
}

/// POSTs queued packets, batching whatever is queued into one body.
async fn post_loop(
    mut pool: Pool,
    cursor: NodeCursor,
    target: String,
    mut out_rx: mpsc::Receiver<String>,
    in_tx: mpsc::Sender<Result<Frame, ClientError>>,
) {
    while let Some(first) = out_rx.recv().await {
        let mut body = first;
        while let Ok(more) = out_rx.try_recv() {
            body.push(RECORD_SEPARATOR);
            body.push_str(&more);
        }
        let node = cursor.next();
        if let Err(e) = pool
            .expect_ok(node, Method::POST, target.clone(), Bytes::from(body))
            .await
        {
            let _ = in_tx.send(Err(e)).await;
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_split() {
        let frames = split_payload(b"4hello\x1e2\x1ebAQID").unwrap();
        assert_eq!(frames.len(), 3);
        assert!(matches!(&frames[0], Frame::Text(t) if t == "4hello"));
        assert!(matches!(&frames[2], Frame::Binary(b) if b == &[1, 2, 3]));
        assert!(split_payload(b"4a\x1e\x1e4b").is_err());
        assert!(split_payload(b"b!!").is_err());
    }
}
