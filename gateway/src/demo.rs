//! The chat demo page (`--demo`, docs/DEMO.md): the static files of
//! `examples/chat/` embedded in the binary and served under `/demo/`, the
//! official `socket.io-client` browser bundle among them (installed from
//! npm at build time by `build.rs`, not committed), so the page needs
//! nothing but this gateway.
//!
//! The page chats through the echo application's `join` and `broadcast`
//! events on the Socket.IO path of this gateway (`--path`, written into the
//! page when it is served).

use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue, Method, Response, StatusCode};

use crate::engineio::Body;

/// Every file of the demo is under this path; `/demo` redirects to it.
pub const PREFIX: &str = "/demo/";

/// Version of the `socket.io-client` bundle (`examples/chat/package.json`).
pub const SOCKET_IO_CLIENT_VERSION: &str = "4.8.4";

const INDEX_HTML: &str = include_str!("../../examples/chat/index.html");
const APP_JS: &str = include_str!("../../examples/chat/app.js");
const STYLE_CSS: &str = include_str!("../../examples/chat/style.css");
const SOCKET_IO_JS: &str = include_str!(concat!(env!("OUT_DIR"), "/socket.io.min.js"));
const SOCKET_IO_LICENSE: &str = include_str!(concat!(env!("OUT_DIR"), "/LICENSE.socket.io-client"));

/// What the index page replaces with the Socket.IO path and the client's
/// version.
const PATH_PLACEHOLDER: &str = "{{SOCKETIO_PATH}}";
const VERSION_PLACEHOLDER: &str = "{{SOCKET_IO_CLIENT_VERSION}}";

/// The page only loads its own files and talks to its own origin (`'self'`
/// covers same-origin WebSocket URLs too).
const CSP: &str = "default-src 'self'; connect-src 'self'; img-src 'self' data:; \
                   base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

struct Asset {
    name: &'static str,
    content_type: &'static str,
    body: Bytes,
    etag: HeaderValue,
}

/// The demo's files, ready to serve.
pub struct Demo {
    assets: Vec<Asset>,
}

/// Whether `path` is the demo's (`/demo` or under `/demo/`).
pub fn matches(path: &str) -> bool {
    path.starts_with(PREFIX) || path == &PREFIX[..PREFIX.len() - 1]
}

impl Demo {
    /// The files, with `socketio_path` (the gateway's `--path`) in the page.
    pub fn new(socketio_path: &str) -> Demo {
        let index = INDEX_HTML
            .replace(PATH_PLACEHOLDER, &html_escape(socketio_path))
            .replace(VERSION_PLACEHOLDER, SOCKET_IO_CLIENT_VERSION);
        let files: [(&'static str, &'static str, Bytes); 5] = [
            ("index.html", "text/html; charset=utf-8", Bytes::from(index)),
            (
                "app.js",
                "application/javascript; charset=utf-8",
                Bytes::from_static(APP_JS.as_bytes()),
            ),
            (
                "style.css",
                "text/css; charset=utf-8",
                Bytes::from_static(STYLE_CSS.as_bytes()),
            ),
            (
                "socket.io.min.js",
                "application/javascript; charset=utf-8",
                Bytes::from_static(SOCKET_IO_JS.as_bytes()),
            ),
            (
                "socket.io-client.LICENSE",
                "text/plain; charset=utf-8",
                Bytes::from_static(SOCKET_IO_LICENSE.as_bytes()),
            ),
        ];
        let assets = files
            .into_iter()
            .map(|(name, content_type, body)| Asset {
                name,
                content_type,
                etag: HeaderValue::from_str(&format!("\"{:016x}\"", fnv1a(&body)))
                    .expect("hex is a valid header value"),
                body,
            })
            .collect();
        Demo { assets }
    }

    /// Answers a request whose path [`matches`]: GET and HEAD only, a
    /// redirect from `/demo`, `index.html` for `/demo/`, 404 for anything
    /// else. Every file is revalidated (`no-cache` + ETag), so a new binary
    /// is picked up at once.
    pub fn serve(
        &self,
        method: &Method,
        path: &str,
        query: Option<&str>,
        headers: &HeaderMap,
    ) -> Response<Body> {
        if method != Method::GET && method != Method::HEAD {
            let mut resp = text(StatusCode::METHOD_NOT_ALLOWED, "Method Not Allowed");
            resp.headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
            return resp;
        }
        let Some(name) = path.strip_prefix(PREFIX) else {
            // `/demo`: the page's relative links need the trailing slash.
            let location = match query {
                Some(q) => format!("{PREFIX}?{q}"),
                None => PREFIX.to_owned(),
            };
            let mut resp = text(StatusCode::PERMANENT_REDIRECT, "Permanent Redirect");
            if let Ok(value) = HeaderValue::from_str(&location) {
                resp.headers_mut().insert(header::LOCATION, value);
            }
            return resp;
        };
        let name = if name.is_empty() { "index.html" } else { name };
        let Some(asset) = self.assets.iter().find(|a| a.name == name) else {
            return text(StatusCode::NOT_FOUND, "Not Found");
        };
        let fresh = headers
            .get(header::IF_NONE_MATCH)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|tags| {
                tags.split(',')
                    .map(|t| t.trim().trim_start_matches("W/"))
                    .any(|t| t == "*" || t.as_bytes() == asset.etag.as_bytes())
            });
        let mut resp = if fresh {
            let mut resp = Response::new(Body::default());
            *resp.status_mut() = StatusCode::NOT_MODIFIED;
            resp
        } else {
            let mut resp = Response::new(Body::new(asset.body.clone()));
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static(asset.content_type),
            );
            resp
        };
        let h = resp.headers_mut();
        h.insert(header::ETAG, asset.etag.clone());
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        h.insert(
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        );
        if asset.name == "index.html" {
            h.insert(
                header::CONTENT_SECURITY_POLICY,
                HeaderValue::from_static(CSP),
            );
            h.insert(
                header::REFERRER_POLICY,
                HeaderValue::from_static("no-referrer"),
            );
        }
        resp
    }
}

fn text(status: StatusCode, body: &'static str) -> Response<Body> {
    let mut resp = Response::new(Body::new(Bytes::from_static(body.as_bytes())));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

/// Escapes text for an HTML attribute value.
fn html_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// FNV-1a, 64 bits: the ETag of a file (same on every node of a cluster
/// running the same binary with the same `--path`).
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get(demo: &Demo, path: &str) -> Response<Body> {
        demo.serve(&Method::GET, path, None, &HeaderMap::new())
    }

    #[test]
    fn routes() {
        assert!(matches("/demo"));
        assert!(matches("/demo/"));
        assert!(matches("/demo/app.js"));
        assert!(!matches("/demonstration"));
        assert!(!matches("/socket.io/"));
    }

    #[test]
    fn the_page_carries_the_socketio_path() {
        let demo = Demo::new("/rt/\"x\"/");
        let resp = get(&demo, "/demo/");
        assert_eq!(resp.status(), StatusCode::OK);
        let page = demo.assets[0].body.clone();
        let page = std::str::from_utf8(&page).expect("utf-8");
        assert!(page.contains(r#"content="/rt/&quot;x&quot;/""#), "{page}");
        assert!(!page.contains("{{"), "{page}");
        assert!(page.contains(&format!(
            "</code> {SOCKET_IO_CLIENT_VERSION} browser bundle"
        )));
    }

    #[test]
    fn the_bundle_is_the_version_named_with_its_license_header() {
        let header = format!("/*!\n * Socket.IO v{SOCKET_IO_CLIENT_VERSION}\n");
        assert!(SOCKET_IO_JS.starts_with(&header), "{}", &SOCKET_IO_JS[..80]);
        assert!(SOCKET_IO_JS[..200].contains("Released under the MIT License."));
        assert!(SOCKET_IO_LICENSE.starts_with("The MIT License"));
    }

    #[test]
    fn unknown_files_methods_and_the_bare_prefix() {
        let demo = Demo::new("/socket.io/");
        assert_eq!(get(&demo, "/demo/nope.js").status(), StatusCode::NOT_FOUND);
        assert_eq!(
            get(&demo, "/demo/../Cargo.toml").status(),
            StatusCode::NOT_FOUND
        );
        let post = demo.serve(&Method::POST, "/demo/", None, &HeaderMap::new());
        assert_eq!(post.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(post.headers()[header::ALLOW], "GET, HEAD");
        let bare = demo.serve(&Method::GET, "/demo", Some("room=a"), &HeaderMap::new());
        assert_eq!(bare.status(), StatusCode::PERMANENT_REDIRECT);
        assert_eq!(bare.headers()[header::LOCATION], "/demo/?room=a");
    }

    #[test]
    fn revalidation_by_etag() {
        let demo = Demo::new("/socket.io/");
        let first = get(&demo, "/demo/socket.io.min.js");
        assert_eq!(
            first.headers()[header::CONTENT_TYPE],
            "application/javascript; charset=utf-8"
        );
        let etag = first.headers()[header::ETAG].clone();
        let mut headers = HeaderMap::new();
        headers.insert(header::IF_NONE_MATCH, etag);
        let again = demo.serve(&Method::GET, "/demo/socket.io.min.js", None, &headers);
        assert_eq!(again.status(), StatusCode::NOT_MODIFIED);
        assert_eq!(again.headers()[header::CACHE_CONTROL], "no-cache");
    }
}
