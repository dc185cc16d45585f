//! Socket.IO v2 clients (Socket.IO protocol v4 over Engine.IO v3, with
//! `--allow-eio3`): the few places where their protocol differs from v5.
//! Events, acks and binary attachments are encoded the same way, so every
//! emit is encoded once for clients of both versions.
//!
//! - The server joins the default namespace `/` as soon as the Engine.IO
//!   session opens (with the CONNECT payload `{}`); the client never asks.
//! - A CONNECT to another namespace carries the client's query in the
//!   namespace part (`40/chat?token=abc,`): it becomes the CONNECT payload
//!   the application sees (`{"token":"abc"}`), as the reference server
//!   makes it its `auth`. The query is ignored in any other packet.
//! - The CONNECT answer has no payload (`40`, `40/chat,`): no socket id,
//!   no pid (v2 has no connection state recovery: such a socket never
//!   gets offsets either).
//! - A refused CONNECT is an ERROR packet with a string payload,
//!   `44/chat,"not allowed"` (the refusal's data instead, when it has
//!   any, as the reference's `err.data || err.message`).

use serde_json::{Map, Value};

use ringway_engineio::query::percent_decode;
use ringway_engineio::{Frame, Protocol, Session};

use super::packet::{encode_connect, encode_connect_error_payload};

/// Whether the session is a Socket.IO v2 client's.
pub fn is_v2<D>(session: &Session<D>) -> bool {
    session.protocol() == Protocol::V3
}

/// The namespace of a v2 packet and the query its CONNECT carries.
pub fn namespace(nsp: &str) -> (&str, Option<&str>) {
    match nsp.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (nsp, None),
    }
}

/// The CONNECT payload a v2 client's namespace query stands for: a JSON
/// object of its parameters, decoded, the last of a repeated name winning
/// (as the reference's `Object.fromEntries(searchParams)`).
pub fn auth(query: Option<&str>) -> String {
    let mut map = Map::new();
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        map.insert(
            percent_decode(key).into_owned(),
            Value::String(percent_decode(value).into_owned()),
        );
    }
    Value::Object(map).to_string()
}

/// The CONNECT answer: no payload.
pub fn connected(nsp: &str) -> Frame {
    encode_connect(nsp, "")
}

/// A refused CONNECT: the refusal's data if it has any (JavaScript-truthy),
/// else its message, as a JSON string.
pub fn connect_error(nsp: &str, message: &str, data: Option<&Value>) -> Frame {
    let payload = match data.filter(|d| truthy(d)) {
        Some(data) => data.to_string(),
        None => Value::String(message.to_owned()).to_string(),
    };
    encode_connect_error_payload(nsp, &payload)
}

fn truthy(v: &Value) -> bool {
    match v {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64().is_some_and(|f| f != 0.0),
        Value::String(s) => !s.is_empty(),
        Value::Array(_) | Value::Object(_) => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn text(frame: &Frame) -> &str {
        match frame {
            Frame::Text(t) => t.as_str(),
            Frame::Binary(_) => panic!("binary"),
        }
    }

    #[test]
    fn the_namespace_query_is_the_connect_payload() {
        assert_eq!(namespace("/chat?a=1"), ("/chat", Some("a=1")));
        assert_eq!(namespace("/"), ("/", None));
        assert_eq!(auth(None), "{}");
        let a: Value = serde_json::from_str(&auth(Some("a=1&b=x%20y+z&a=2&&flag"))).unwrap();
        assert_eq!(a, json!({"a": "2", "b": "x y z", "flag": ""}));
    }

    #[test]
    fn v2_connect_answers_and_errors() {
        assert_eq!(text(&connected("/")), "40");
        assert_eq!(text(&connected("/chat")), "40/chat,");
        assert_eq!(
            text(&connect_error("/chat", "not allowed", None)),
            "44/chat,\"not allowed\""
        );
        assert_eq!(text(&connect_error("/", "no", None)), "44\"no\"");
        assert_eq!(
            text(&connect_error("/", "no", Some(&json!({"code": 7})))),
            "44{\"code\":7}"
        );
        assert_eq!(text(&connect_error("/", "no", Some(&json!(0)))), "44\"no\"");
    }
}
