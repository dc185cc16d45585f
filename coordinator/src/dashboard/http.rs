//! The coordinator's HTTP listener (hyper, HTTP/1.1):
//!
//! | path | answers |
//! |---|---|
//! | `/` | the dashboard page (`assets/`, built into the binary) |
//! | `/app.js`, `/app.css` | its script and style |
//! | `/api/state` | [`super::State`] as JSON |
//! | `/events` | Server-Sent Events: the state at once, then on every view or role change and every second |
//! | `/healthz` | 200 `ok` while the process serves HTTP |
//! | `/readyz` | 200 `ready` when acting (holds the lock, serves gRPC), else 503 `standby` / `stopping` |
//! | `/metrics` | the coordinator's metrics ([`crate::telemetry`]), Prometheus text format |
//!
//! Nothing is fetched from elsewhere: the page's Content-Security-Policy
//! only allows this origin.

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Empty, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt;
use tracing::{debug, warn};

use super::{Dashboard, Role};
use crate::service::stopped;

const INDEX_HTML: &str = include_str!("assets/index.html");
const APP_JS: &str = include_str!("assets/app.js");
const APP_CSS: &str = include_str!("assets/app.css");

/// `/events` pushes the state at least this often.
pub const PUSH_EVERY: Duration = Duration::from_secs(1);
/// Open `/events` streams at most (more get 503).
pub const MAX_STREAMS: usize = 64;
/// How long open connections get to finish once the coordinator stops.
const CLOSE_GRACE: Duration = Duration::from_secs(2);
/// A client has this long to send its request headers.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// Only this origin: no CDN, nothing from elsewhere, no inline code.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     connect-src 'self'; img-src 'self'; base-uri 'none'; form-action 'none'; \
     frame-ancestors 'none'";

type Body = UnsyncBoxBody<Bytes, Infallible>;

/// Serves `listener` until the dashboard's stop signal; then lets open
/// connections finish (the event streams end with the stop).
pub async fn serve(listener: TcpListener, dashboard: Arc<Dashboard>) {
    let mut stop = dashboard.stop_signal();
    let streams = Arc::new(AtomicUsize::new(0));
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            _ = stopped(&mut stop) => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    connections.spawn(connection(stream, dashboard.clone(), streams.clone()));
                }
                Err(err) => {
                    // Out of file descriptors and the like: do not spin.
                    warn!(%err, "HTTP accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
    drop(listener);
    let drained = tokio::time::timeout(CLOSE_GRACE, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        debug!("HTTP connections still open at shutdown, closing them");
    }
}

async fn connection(stream: TcpStream, dashboard: Arc<Dashboard>, streams: Arc<AtomicUsize>) {
    let _ = stream.set_nodelay(true);
    let mut stop = dashboard.stop_signal();
    let service = service_fn(move |request| {
        let response = route(&request, &dashboard, &streams);
        async move { Ok::<_, Infallible>(response) }
    });
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .serve_connection(TokioIo::new(stream), service);
    tokio::pin!(conn);
    tokio::select! {
        result = conn.as_mut() => {
            if let Err(err) = result {
                debug!(%err, "HTTP connection ended with an error");
            }
        }
        _ = stopped(&mut stop) => {
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
    }
}

fn route(
    request: &Request<Incoming>,
    dashboard: &Arc<Dashboard>,
    streams: &Arc<AtomicUsize>,
) -> Response<Body> {
    if request.method() != Method::GET && request.method() != Method::HEAD {
        let mut response = text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
        response
            .headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        return response;
    }
    match request.uri().path() {
        "/" | "/index.html" => asset(INDEX_HTML, "text/html; charset=utf-8"),
        "/app.js" => asset(APP_JS, "text/javascript; charset=utf-8"),
        "/app.css" => asset(APP_CSS, "text/css; charset=utf-8"),
        "/favicon.ico" => empty(StatusCode::NO_CONTENT),
        "/api/state" => json(dashboard),
        "/events" if request.method() == Method::HEAD => {
            let mut response = empty(StatusCode::OK);
            sse_headers(&mut response);
            response
        }
        "/events" => events(dashboard, streams),
        "/healthz" => text(StatusCode::OK, "ok\n"),
        "/readyz" => match dashboard.role() {
            Role::Acting => text(StatusCode::OK, "ready\n"),
            Role::Standby => text(StatusCode::SERVICE_UNAVAILABLE, "standby\n"),
            Role::Stopping => text(StatusCode::SERVICE_UNAVAILABLE, "stopping\n"),
        },
        "/metrics" => {
            let mut response = full(StatusCode::OK, ringway_telemetry::render());
            set(
                &mut response,
                header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            );
            set(&mut response, header::CACHE_CONTROL, "no-store");
            response
        }
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    }
}

fn set(response: &mut Response<Body>, name: header::HeaderName, value: &'static str) {
    response
        .headers_mut()
        .insert(name, HeaderValue::from_static(value));
}

fn full(status: StatusCode, body: impl Into<Bytes>) -> Response<Body> {
    let mut response = Response::new(Full::new(body.into()).boxed_unsync());
    *response.status_mut() = status;
    response
}

fn empty(status: StatusCode) -> Response<Body> {
    let mut response = Response::new(Empty::new().boxed_unsync());
    *response.status_mut() = status;
    response
}

fn text(status: StatusCode, body: &'static str) -> Response<Body> {
    let mut response = full(status, body);
    set(
        &mut response,
        header::CONTENT_TYPE,
        "text/plain; charset=utf-8",
    );
    set(&mut response, header::CACHE_CONTROL, "no-store");
    response
}

fn asset(body: &'static str, content_type: &'static str) -> Response<Body> {
    let mut response = full(StatusCode::OK, body);
    set(&mut response, header::CONTENT_TYPE, content_type);
    // Revalidated each time: a new binary may bring a new page.
    set(&mut response, header::CACHE_CONTROL, "no-cache");
    set(&mut response, header::CONTENT_SECURITY_POLICY, CSP);
    set(&mut response, header::X_CONTENT_TYPE_OPTIONS, "nosniff");
    set(&mut response, header::REFERRER_POLICY, "no-referrer");
    response
}

fn json(dashboard: &Dashboard) -> Response<Body> {
    match serde_json::to_vec(&dashboard.state()) {
        Ok(body) => {
            let mut response = full(StatusCode::OK, body);
            set(&mut response, header::CONTENT_TYPE, "application/json");
            set(&mut response, header::CACHE_CONTROL, "no-store");
            response
        }
        Err(err) => {
            warn!(%err, "cannot encode the dashboard state");
            text(
                StatusCode::INTERNAL_SERVER_ERROR,
                "cannot encode the state\n",
            )
        }
    }
}

fn sse_headers(response: &mut Response<Body>) {
    set(response, header::CONTENT_TYPE, "text/event-stream");
    set(response, header::CACHE_CONTROL, "no-store");
    // Proxies (nginx) must not buffer the stream.
    response.headers_mut().insert(
        header::HeaderName::from_static("x-accel-buffering"),
        HeaderValue::from_static("no"),
    );
}

/// Counts an open event stream; uncounts it when dropped.
struct StreamSlot(Arc<AtomicUsize>);

impl StreamSlot {
    fn take(count: &Arc<AtomicUsize>) -> Option<StreamSlot> {
        let taken = count
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < MAX_STREAMS).then_some(n + 1)
            })
            .is_ok();
        taken.then(|| StreamSlot(count.clone()))
    }
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// `/events`: one task per stream builds each message when the client
/// can take it (a slow client gets fresh states, never a backlog).
fn events(dashboard: &Arc<Dashboard>, streams: &Arc<AtomicUsize>) -> Response<Body> {
    let Some(slot) = StreamSlot::take(streams) else {
        return text(StatusCode::SERVICE_UNAVAILABLE, "too many event streams\n");
    };
    let (tx, rx) = mpsc::channel::<Bytes>(1);
    tokio::spawn(push_states(dashboard.clone(), tx, slot));
    let frames = ReceiverStream::new(rx).map(|chunk| Ok::<_, Infallible>(Frame::data(chunk)));
    let mut response = Response::new(BodyExt::boxed_unsync(StreamBody::new(frames)));
    sse_headers(&mut response);
    response
}

/// One Server-Sent Event carrying the state (JSON has no raw newlines).
fn state_event(dashboard: &Dashboard) -> Bytes {
    let json = serde_json::to_string(&dashboard.state()).unwrap_or_else(|_| "{}".to_owned());
    Bytes::from(format!("event: state\ndata: {json}\n\n"))
}

async fn push_states(dashboard: Arc<Dashboard>, tx: mpsc::Sender<Bytes>, _slot: StreamSlot) {
    let mut stop = dashboard.stop_signal();
    let mut roles = dashboard.roles();
    let mut views = dashboard.hub().map(|hub| hub.subscribe());
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + PUSH_EVERY, PUSH_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The browser reconnects after 1 s if the stream breaks.
    if tx
        .send(Bytes::from_static(b"retry: 1000\n\n"))
        .await
        .is_err()
    {
        return;
    }
    loop {
        let Ok(permit) = tx.reserve().await else {
            return;
        };
        permit.send(state_event(&dashboard));
        tokio::select! {
            _ = stopped(&mut stop) => return,
            _ = tx.closed() => return,
            _ = tick.tick() => {}
            changed = roles.changed() => {
                if changed.is_err() {
                    return;
                }
                roles.borrow_and_update();
                if views.is_none() {
                    views = dashboard.hub().map(|hub| hub.subscribe());
                }
                tick.reset();
            }
            changed = async {
                match views.as_mut() {
                    Some(views) => views.changed().await,
                    None => std::future::pending().await,
                }
            } => {
                if changed.is_err() {
                    return;
                }
                if let Some(views) = views.as_mut() {
                    views.borrow_and_update();
                }
                tick.reset();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_assets_name_nothing_outside_this_origin() {
        for (name, body) in [
            ("index.html", INDEX_HTML),
            ("app.js", APP_JS),
            ("app.css", APP_CSS),
        ] {
            for needle in ["http://", "https://", "//cdn", "@import", "url("] {
                assert!(!body.contains(needle), "{name} contains {needle:?}");
            }
        }
        assert!(INDEX_HTML.contains("src=\"app.js\""));
        assert!(INDEX_HTML.contains("href=\"app.css\""));
    }
}
