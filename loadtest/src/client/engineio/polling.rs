//! The long-polling transport: a handshake GET, then two keep-alive HTTP/1.1
//! connections per session, one for the long-poll GET loop and one for the
//! POSTs (several queued packets go out in one `\x1e`-separated body).

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
use crate::client::{net, ClientConfig};

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
}

impl Drop for PollingTransport {
    fn drop(&mut self) {
        self.get_task.abort();
        self.post_task.abort();
    }
}

impl PollingTransport {
    /// The handshake GET, then the GET loop and the POST loop.
    pub async fn connect(cfg: &ClientConfig) -> Result<(Self, OpenInfo), ClientError> {
        let mut get_conn = HttpConn::connect(cfg).await?;
        let body = get_conn
            .expect_ok(
                Method::GET,
                cfg.request_target("polling", None),
                &cfg.authority,
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
        let post_conn = HttpConn::connect(cfg).await?;

        let (in_tx, inbound) = mpsc::channel(INBOUND_QUEUE);
        for frame in packets {
            // The queue is empty and larger than one handshake answer.
            let _ = in_tx.try_send(Ok(frame));
        }
        let (out_tx, out_rx) = mpsc::channel(OUTBOUND_QUEUE);
        let poll_timeout = open.ping_deadline();
        let get_task = tokio::spawn(get_loop(
            get_conn,
            target.clone(),
            cfg.authority.clone(),
            poll_timeout,
            in_tx.clone(),
        ));
        let post_task = tokio::spawn(post_loop(
            post_conn,
            target,
            cfg.authority.clone(),
            out_rx,
            in_tx,
        ));
        Ok((
            PollingTransport {
                inbound,
                outbound: Some(out_tx),
                get_task,
                post_task,
            },
            open,
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

    /// Lets the POST loop flush what is queued (the close packet), then stops.
    pub async fn close(mut self) {
        self.outbound = None;
        let _ = tokio::time::timeout(Duration::from_secs(1), &mut self.post_task).await;
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
    async fn connect(cfg: &ClientConfig) -> Result<Self, ClientError> {
        let stream = net::connect(cfg.target, &cfg.sources).await?;
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

/// Long-polls until the session ends, forwarding every packet.
async fn get_loop(
    mut conn: HttpConn,
    target: String,
    authority: String,
    poll_timeout: Duration,
    in_tx: mpsc::Sender<Result<Frame, ClientError>>,
) {
    loop {
        let answer = tokio::time::timeout(
            poll_timeout,
            conn.expect_ok(Method::GET, target.clone(), &authority, Bytes::new()),
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
    mut conn: HttpConn,
    target: String,
    authority: String,
    mut out_rx: mpsc::Receiver<String>,
    in_tx: mpsc::Sender<Result<Frame, ClientError>>,
) {
    while let Some(first) = out_rx.recv().await {
        let mut body = first;
        while let Ok(more) = out_rx.try_recv() {
            body.push(RECORD_SEPARATOR);
            body.push_str(&more);
        }
        if let Err(e) = conn
            .expect_ok(Method::POST, target.clone(), &authority, Bytes::from(body))
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
