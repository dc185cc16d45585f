//! The HTTP server: accept loop, routes, CORS and graceful shutdown.
//!
//! Every connection is one task serving HTTP/1.1 (with upgrades for
//! WebSocket). Shutdown follows the broadcast + completion pattern: stop
//! accepting, close every session (clients see a close and reconnect
//! elsewhere), let in-flight requests finish, then return.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tracing::{debug, info, warn};

use crate::app::EngineEcho;
use crate::cluster::{Cluster, ClusterDirectory};
use crate::config::Config;
use crate::engineio::{Body, CloseReason, Engine, LocalDirectory, SidKey};
use crate::socketio::{Application, Recovery, SocketIo};

/// Path of the plain Engine.IO endpoint of the echo application.
pub const ENGINEIO_PATH: &str = "/engine.io/";

/// One gateway node: its engines and HTTP settings.
pub struct Gateway<A: Application> {
    path: String,
    socketio: Arc<Engine<SocketIo<A>>>,
    engineio: Option<Arc<Engine<EngineEcho>>>,
    cors: Cors,
    shutdown_timeout: Duration,
    cluster: Arc<Cluster>,
    /// The chat demo page under `/demo/` (`--demo`).
    demo: Option<crate::demo::Demo>,
    /// `/metrics` on the client port (not with `--metrics-listen`).
    metrics_here: bool,
    /// The balancers whose `X-Forwarded-For` is believed.
    trusted_proxies: Vec<Cidr>,
    /// Longest a client may take to send a request's headers.
    header_timeout: Duration,
    /// Polling answers this large or larger are compressed (0: never).
    compression_threshold: usize,
}

impl<A: Application> Gateway<A> {
    /// `engine_echo` also serves the plain Engine.IO echo at `/engine.io/`
    /// (sessions of this node only: not routed across a cluster).
    /// With `recovery`, connection state recovery is on. `sid_key` signs
    /// the Socket.IO engine's session ids (the cluster's key).
    pub fn new(
        config: &Config,
        app: A,
        engine_echo: bool,
        cluster: Arc<Cluster>,
        recovery: Option<Arc<Recovery>>,
        sid_key: SidKey,
    ) -> Arc<Self> {
        let mut engine_config = config.engine();
        engine_config.sid_key = sid_key;
        let socketio = Engine::new(
            engine_config,
            SocketIo::new(Arc::new(app), config.socketio(), cluster.clone(), recovery),
            Arc::new(ClusterDirectory(cluster.clone())),
        );
        let engineio =
            engine_echo.then(|| Engine::new(config.engine(), EngineEcho, Arc::new(LocalDirectory)));
        Arc::new(Gateway {
            path: config.path.clone(),
            socketio,
            engineio,
            cors: Cors::new(&config.cors_origins),
            shutdown_timeout: Duration::from_millis(config.shutdown_timeout),
            cluster,
            demo: config.demo.then(|| crate::demo::Demo::new(&config.path)),
            metrics_here: config.metrics_listen.is_none(),
            trusted_proxies: config.trusted_proxies.clone(),
            header_timeout: Duration::from_millis(config.header_read_timeout),
            compression_threshold: config.http_compression_threshold,
        })
    }

    pub fn socketio(&self) -> &Arc<Engine<SocketIo<A>>> {
        &self.socketio
    }

    /// The plain Engine.IO echo engine (`--app echo`), if served.
    pub fn engineio(&self) -> Option<&Arc<Engine<EngineEcho>>> {
        self.engineio.as_ref()
    }

    /// Serves until `shutdown` resolves, then closes every session and
    /// waits (at most the shutdown timeout) for connections to finish.
    pub async fn serve(
        self: Arc<Self>,
        listener: TcpListener,
        shutdown: impl Future<Output = ()>,
    ) -> std::io::Result<()> {
        // Broadcast to every connection task, and a channel whose closing
        // tells that all of them have finished.
        let (stop_tx, stop_rx) = watch::channel(false);
        let (done_tx, mut done_rx) = mpsc::channel::<()>(1);
        tokio::pin!(shutdown);
        let mut backoff = Duration::from_millis(5);
        loop {
            let (stream, remote) = tokio::select! {
                _ = &mut shutdown => break,
                accepted = listener.accept() => match accepted {
                    Ok(accepted) => {
                        backoff = Duration::from_millis(5);
                        accepted
                    }
                    Err(err) => {
                        // Out of file descriptors or similar: back off
                        // rather than spin, and keep serving who is here.
                        warn!(%err, "accept failed");
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(Duration::from_secs(1));
                        continue;
                    }
                }
            };
            let _ = stream.set_nodelay(true);
            let gateway = self.clone();
            let service = service_fn(move |req| {
                let gateway = gateway.clone();
                async move { Ok::<_, std::convert::Infallible>(gateway.handle(req, remote).await) }
            });
            let conn = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(self.header_timeout)
                .serve_connection(TokioIo::new(stream), service)
                .with_upgrades();
            let mut stop = stop_rx.clone();
            let done = done_tx.clone();
            tokio::spawn(async move {
                tokio::pin!(conn);
                let result = tokio::select! {
                    result = conn.as_mut() => result,
                    _ = async { let _ = stop.wait_for(|stop| *stop).await; } => {
                        // Finish the request in flight, then close.
                        conn.as_mut().graceful_shutdown();
                        conn.await
                    }
                };
                if let Err(err) = result {
                    debug!(%err, "connection ended with an error");
                }
                drop(done);
            });
        }

        drop(listener);
        info!("shutting down: closing every session");
        self.socketio.close_all(CloseReason::ServerShutdown);
        if let Some(engineio) = &self.engineio {
            engineio.close_all(CloseReason::ServerShutdown);
        }
        let deadline = tokio::time::Instant::now() + self.shutdown_timeout;
        let _ = stop_tx.send(true);
        drop(done_tx);
        if tokio::time::timeout_at(deadline, done_rx.recv())
            .await
            .is_err()
        {
            warn!("connections still open at the shutdown timeout");
        }
        // Sessions leave the table once their lifecycle task has run.
        while self.session_count() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Ok(())
    }

    fn session_count(&self) -> usize {
        self.socketio.session_count() + self.engineio.as_ref().map_or(0, |e| e.session_count())
    }

    async fn handle(&self, req: Request<Incoming>, remote: SocketAddr) -> Response<Body> {
        // Only CORS needs the Origin after the request is consumed.
        let origin = self
            .cors
            .enabled()
            .then(|| req.headers().get(header::ORIGIN).cloned())
            .flatten();
        if self.cors.enabled() && req.method() == Method::OPTIONS {
            return self.cors.preflight(origin.as_ref(), req.headers());
        }
        let path = req.uri().path();
        // Health for probes: alive, and ready for new sessions.
        if path == HEALTHZ {
            return plain(StatusCode::OK, "ok");
        }
        if path == METRICS && self.metrics_here {
            return metrics_response();
        }
        if path == READYZ {
            return if self.cluster.is_ready() && self.cluster.is_degraded() {
                // Serving its own sessions: a Redis outage must not take
                // every node out of the balancer at once.
                plain(StatusCode::OK, "degraded: registry (Redis) unreachable")
            } else if self.cluster.is_ready() {
                plain(StatusCode::OK, "ready")
            } else if self.cluster.is_draining() {
                plain(StatusCode::SERVICE_UNAVAILABLE, "draining")
            } else {
                plain(StatusCode::SERVICE_UNAVAILABLE, "not ready")
            };
        }
        // The client behind a trusted balancer, as far as it tells.
        let remote = client_addr(remote, req.headers(), &self.trusted_proxies);
        // How a polling answer may be compressed for this client.
        let encoding = (req.method() == Method::GET && self.compression_threshold > 0)
            .then(|| Encoding::accepted(req.headers()))
            .flatten();
        let mut resp = if path.starts_with(&self.path) {
            let resp = self.socketio.handle(req, remote).await;
            compress(resp, encoding, self.compression_threshold)
        } else if let Some(engineio) = self
            .engineio
            .as_ref()
            .filter(|_| path.starts_with(ENGINEIO_PATH))
        {
            let resp = engineio.handle(req, remote).await;
            compress(resp, encoding, self.compression_threshold)
        } else if let Some(demo) = self.demo.as_ref().filter(|_| crate::demo::matches(path)) {
            demo.serve(req.method(), path, req.uri().query(), req.headers())
        } else {
            not_found()
        };
        if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
            self.cors.apply(origin.as_ref(), resp.headers_mut());
        }
        resp
    }
}

/// A compression the client accepts for polling answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Encoding {
    Gzip,
    Deflate,
}

impl Encoding {
    /// The client's choice from `Accept-Encoding`: gzip first, as the
    /// reference server prefers it; a coding with `q=0` is refused.
    fn accepted(headers: &HeaderMap) -> Option<Encoding> {
        let mut gzip = false;
        let mut deflate = false;
        for value in headers.get_all(header::ACCEPT_ENCODING) {
            let Ok(value) = value.to_str() else { continue };
            for item in value.split(',') {
                let mut parts = item.split(';');
                let coding = parts.next().unwrap_or("").trim().to_ascii_lowercase();
                let refused = parts.any(|p| {
                    p.trim()
                        .strip_prefix("q=")
                        .and_then(|q| q.trim().parse::<f32>().ok())
                        .is_some_and(|q| q <= 0.0)
                });
                if refused {
                    continue;
                }
                match coding.as_str() {
                    "gzip" | "x-gzip" => gzip = true,
                    "deflate" => deflate = true,
                    _ => {}
                }
            }
        }
        if gzip {
            Some(Encoding::Gzip)
        } else if deflate {
            Some(Encoding::Deflate)
        } else {
            None
        }
    }

    fn name(self) -> &'static str {
        match self {
            Encoding::Gzip => "gzip",
            Encoding::Deflate => "deflate",
        }
    }

    fn encode(self, data: &[u8]) -> std::io::Result<Vec<u8>> {
        use std::io::Write;
        let level = flate2::Compression::default();
        match self {
            Encoding::Gzip => {
                let mut out = flate2::write::GzEncoder::new(Vec::new(), level);
                out.write_all(data)?;
                out.finish()
            }
            // HTTP's "deflate" is the zlib format (RFC 9110).
            Encoding::Deflate => {
                let mut out = flate2::write::ZlibEncoder::new(Vec::new(), level);
                out.write_all(data)?;
                out.finish()
            }
        }
    }
}

/// Compresses a polling answer of at least `threshold` bytes, as the
/// reference server's `httpCompression` does. A forwarded answer keeps its
/// delivery receipt.
fn compress(resp: Response<Body>, encoding: Option<Encoding>, threshold: usize) -> Response<Body> {
    let Some(encoding) = encoding else {
        return resp;
    };
    let is_payload = resp.status() == StatusCode::OK
        && resp
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|t| {
                t.starts_with("text/plain") || t.starts_with("application/octet-stream")
            });
    if !is_payload || resp.headers().contains_key(header::CONTENT_ENCODING) {
        return resp;
    }
    let (mut parts, body) = resp.into_parts();
    let (data, receipt) = body.into_parts();
    if data.len() < threshold {
        return Response::from_parts(parts, Body::with_receipt(data, receipt));
    }
    let data = match encoding.encode(&data) {
        Ok(compressed) => Bytes::from(compressed),
        // In-memory encoding does not fail; were it to, send it plain.
        Err(_) => return Response::from_parts(parts, Body::with_receipt(data, receipt)),
    };
    parts.headers.insert(
        header::CONTENT_ENCODING,
        HeaderValue::from_static(encoding.name()),
    );
    parts.headers.remove(header::CONTENT_LENGTH);
    parts
        .headers
        .append(header::VARY, HeaderValue::from_static("Accept-Encoding"));
    Response::from_parts(parts, Body::with_receipt(data, receipt))
}

/// A network: `10.0.0.0/8`, `fd00::/8`, or one address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    net: std::net::IpAddr,
    prefix: u8,
}

impl std::str::FromStr for Cidr {
    type Err = String;

    fn from_str(s: &str) -> Result<Cidr, String> {
        let (addr, prefix) = match s.split_once('/') {
            Some((addr, prefix)) => (addr, Some(prefix)),
            None => (s, None),
        };
        let net: std::net::IpAddr = addr
            .trim()
            .parse()
            .map_err(|_| format!("{s:?} is not an address or a CIDR network"))?;
        let max = if net.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(p) => p
                .trim()
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("{s:?}: the prefix length is 0 to {max}"))?,
            None => max,
        };
        Ok(Cidr { net, prefix })
    }
}

impl Cidr {
    pub fn contains(&self, ip: std::net::IpAddr) -> bool {
        use std::net::IpAddr;
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        match (self.net, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

/// The client's address: the peer, or, when the peer is a trusted proxy,
/// the last address of `X-Forwarded-For` that is not one (each proxy
/// appends the address it got the request from).
pub fn client_addr(remote: SocketAddr, headers: &HeaderMap, trusted: &[Cidr]) -> SocketAddr {
    let is_trusted = |ip: std::net::IpAddr| trusted.iter().any(|c| c.contains(ip));
    if trusted.is_empty() || !is_trusted(remote.ip()) {
        return remote;
    }
    let hops: Vec<std::net::IpAddr> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|hop| parse_hop(hop.trim()))
        .collect();
    match hops.iter().rev().find(|ip| !is_trusted(**ip)) {
        Some(ip) => SocketAddr::new(*ip, 0),
        // Every hop is a proxy: the first one is the closest to the client.
        None => hops.first().map_or(remote, |ip| SocketAddr::new(*ip, 0)),
    }
}

/// One `X-Forwarded-For` entry: an address, with or without a port.
fn parse_hop(hop: &str) -> Option<std::net::IpAddr> {
    if let Ok(ip) = hop.parse() {
        return Some(ip);
    }
    hop.parse::<SocketAddr>().ok().map(|a| a.ip())
}

/// Liveness: the process serves HTTP.
pub const HEALTHZ: &str = "/healthz";
/// Prometheus text of every metric.
pub const METRICS: &str = "/metrics";
/// Readiness: in the ring, registry reachable, not draining.
pub const READYZ: &str = "/readyz";

fn metrics_response() -> Response<Body> {
    let mut resp = Response::new(Body::new(Bytes::from(crate::telemetry::render())));
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    resp
}

/// Serves `/metrics` (and `/healthz`) alone on `listener`
/// (`--metrics-listen`) until `stop` turns true.
pub async fn serve_metrics(listener: TcpListener, mut stop: watch::Receiver<bool>) {
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(err) => {
                    warn!(%err, "metrics listener: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = async { let _ = stop.wait_for(|s| *s).await; } => return,
        };
        let service = service_fn(|req: Request<Incoming>| async move {
            let resp = match req.uri().path() {
                METRICS => metrics_response(),
                HEALTHZ => plain(StatusCode::OK, "ok"),
                _ => not_found(),
            };
            Ok::<_, std::convert::Infallible>(resp)
        });
        let conn = http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(Duration::from_secs(10))
            .serve_connection(TokioIo::new(stream), service);
        tokio::spawn(async move {
            if let Err(err) = conn.await {
                debug!(%err, "metrics connection ended with an error");
            }
        });
    }
}

fn plain(status: StatusCode, text: &'static str) -> Response<Body> {
    let mut resp = Response::new(Body::new(Bytes::from_static(text.as_bytes())));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

fn not_found() -> Response<Body> {
    let mut resp = Response::new(Body::new(Bytes::from_static(b"Not Found")));
    *resp.status_mut() = StatusCode::NOT_FOUND;
    resp
}

/// CORS for browsers on other origins: allowed origins are echoed back
/// with credentials allowed; others get no CORS headers (the browser then
/// blocks them).
struct Cors {
    any: bool,
    origins: Vec<String>,
}

impl Cors {
    fn new(origins: &[String]) -> Cors {
        Cors {
            any: origins.iter().any(|o| o == "*"),
            origins: origins.iter().filter(|o| *o != "*").cloned().collect(),
        }
    }

    fn enabled(&self) -> bool {
        self.any || !self.origins.is_empty()
    }

    fn allowed<'a>(&self, origin: Option<&'a HeaderValue>) -> Option<&'a HeaderValue> {
        let origin = origin?;
        let text = origin.to_str().ok()?;
        (self.any || self.origins.iter().any(|o| o == text)).then_some(origin)
    }

    /// Headers on every answer when CORS is on (errors included), as the
    /// reference's cors middleware sends them.
    fn apply(&self, origin: Option<&HeaderValue>, headers: &mut HeaderMap) {
        if !self.enabled() {
            return;
        }
        if let Some(origin) = self.allowed(origin) {
            headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
        }
        headers.append(header::VARY, HeaderValue::from_static("Origin"));
        headers.insert(
            header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
            HeaderValue::from_static("true"),
        );
    }

    /// Preflight: always 204; only an allowed origin gets
    /// `Access-Control-Allow-Origin`, which is what the browser checks.
    fn preflight(&self, origin: Option<&HeaderValue>, req: &HeaderMap) -> Response<Body> {
        let mut resp = Response::new(Body::default());
        *resp.status_mut() = StatusCode::NO_CONTENT;
        let h = resp.headers_mut();
        self.apply(origin, h);
        h.insert(
            header::VARY,
            HeaderValue::from_static("Origin, Access-Control-Request-Headers"),
        );
        h.insert(
            header::ACCESS_CONTROL_ALLOW_METHODS,
            HeaderValue::from_static("GET,HEAD,PUT,PATCH,POST,DELETE"),
        );
        if let Some(asked) = req.get(header::ACCESS_CONTROL_REQUEST_HEADERS) {
            h.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, asked.clone());
        }
        h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("0"));
        resp
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn networks_parse_and_contain() {
        let net: Cidr = "10.0.0.0/8".parse().expect("cidr");
        assert!(net.contains("10.1.2.3".parse().expect("ip")));
        assert!(net.contains("::ffff:10.1.2.3".parse().expect("ip")));
        assert!(!net.contains("11.0.0.1".parse().expect("ip")));
        let one: Cidr = "127.0.0.1".parse().expect("one address");
        assert!(one.contains("127.0.0.1".parse().expect("ip")));
        assert!(!one.contains("127.0.0.2".parse().expect("ip")));
        let v6: Cidr = "fd00::/8".parse().expect("v6");
        assert!(v6.contains("fd12::1".parse().expect("ip")));
        let all: Cidr = "0.0.0.0/0".parse().expect("all");
        assert!(all.contains("8.8.8.8".parse().expect("ip")));
        for bad in ["10.0.0.0/33", "nope", "10.0.0.0/x", "::/129"] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad}");
        }
    }

    #[test]
    fn forwarded_for_is_believed_only_from_trusted_proxies() {
        let trusted: Vec<Cidr> = vec!["10.0.0.0/8".parse().expect("cidr")];
        let mut headers = HeaderMap::new();
        headers.append(
            "x-forwarded-for",
            HeaderValue::from_static("6.6.6.6, 1.2.3.4"),
        );
        headers.append("x-forwarded-for", HeaderValue::from_static("10.0.0.7"));
        let proxy: SocketAddr = "10.0.0.9:5555".parse().expect("addr");
        let stranger: SocketAddr = "9.9.9.9:5555".parse().expect("addr");
        // The last hop that is not a proxy: a client cannot spoof it by
        // prepending addresses.
        assert_eq!(
            client_addr(proxy, &headers, &trusted).ip().to_string(),
            "1.2.3.4"
        );
        assert_eq!(client_addr(stranger, &headers, &trusted), stranger);
        assert_eq!(client_addr(proxy, &headers, &[]), proxy);
        assert_eq!(client_addr(proxy, &HeaderMap::new(), &trusted), proxy);
        let mut ported = HeaderMap::new();
        ported.insert(
            "x-forwarded-for",
            HeaderValue::from_static("[2001:db8::1]:443"),
        );
        assert_eq!(
            client_addr(proxy, &ported, &trusted).ip().to_string(),
            "2001:db8::1"
        );
    }
}
