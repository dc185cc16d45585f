//! Engine.IO protocol revisions. A session speaks the revision its
//! handshake asked for (`EIO=4`, or `EIO=3` with `--allow-eio3`) for its
//! whole life, on every transport and every node it moves to: each
//! session has its own framing, so v3 and v4 clients share one gateway.
//!
//! What differs (everything else is the same on the wire):
//!
//! | | v4 | v3 |
//! |---|---|---|
//! | heartbeat | the server pings, the client answers `3` | the client pings `2`, the server answers `3`; the session ends when no ping came within pingInterval + pingTimeout |
//! | polling payload | packets joined by `\x1e`, binary as `b<base64>` | `<length>:<packet>` (length in UTF-16 units), binary as `b4<base64>` when the client asked `b64=1`, else the binary payload format (`payload_v3.rs`) |
//! | WebSocket binary frame | the data | the packet type byte `4`, then the data |

use std::fmt;

/// The Engine.IO revision of a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Protocol {
    /// Engine.IO v3: Socket.IO v2 clients (Socket.IO protocol v4).
    V3,
    /// Engine.IO v4: Socket.IO v3 and v4 clients (Socket.IO protocol v5).
    #[default]
    V4,
}

impl Protocol {
    /// The revision an `EIO` query value names, among those Ringway
    /// speaks. (The reference takes any value but `4` as v3 when v3 is
    /// allowed; Ringway only `3`.)
    pub fn from_eio(eio: &str) -> Option<Protocol> {
        match eio {
            "4" => Some(Protocol::V4),
            "3" => Some(Protocol::V3),
            _ => None,
        }
    }

    /// The `EIO` query value of this revision.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::V3 => "3",
            Protocol::V4 => "4",
        }
    }

    /// The revision as a number (`SessionState.protocol` between nodes).
    pub fn revision(self) -> u32 {
        match self {
            Protocol::V3 => 3,
            Protocol::V4 => 4,
        }
    }

    /// From `SessionState.protocol`: 0 (a node that did not send it) is v4.
    pub fn from_revision(revision: u32) -> Option<Protocol> {
        match revision {
            0 | 4 => Some(Protocol::V4),
            3 => Some(Protocol::V3),
            _ => None,
        }
    }

    /// Whether a request's `EIO` value is this session's revision.
    pub fn matches(self, eio: Option<&str>) -> bool {
        eio == Some(self.as_str())
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How a session frames what it sends: its revision and, for v3, whether
/// binary packets travel as base64 text on a transport (`b64=1`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Framing {
    pub protocol: Protocol,
    /// v3 only: the client cannot take binary on this transport (it asked
    /// `b64=1`, as socket.io-client 2 does in Node, where its XHR has no
    /// binary support).
    pub base64: bool,
}

impl Framing {
    pub const V4: Framing = Framing {
        protocol: Protocol::V4,
        base64: false,
    };

    pub fn v3(base64: bool) -> Framing {
        Framing {
            protocol: Protocol::V3,
            base64,
        }
    }

    /// The framing a request asks for: `b64` counts only for v3, and any
    /// non-empty value means yes (as the reference's `!!req._query.b64`).
    pub fn of(protocol: Protocol, b64: Option<&str>) -> Framing {
        match protocol {
            Protocol::V4 => Framing::V4,
            Protocol::V3 => Framing::v3(b64.is_some_and(|v| !v.is_empty())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn revisions() {
        assert_eq!(Protocol::from_eio("3"), Some(Protocol::V3));
        assert_eq!(Protocol::from_eio("4"), Some(Protocol::V4));
        assert_eq!(Protocol::from_eio("5"), None);
        assert_eq!(Protocol::from_eio(""), None);
        assert_eq!(Protocol::from_revision(0), Some(Protocol::V4));
        assert_eq!(Protocol::from_revision(3), Some(Protocol::V3));
        assert_eq!(Protocol::from_revision(2), None);
        assert!(Protocol::V3.matches(Some("3")));
        assert!(!Protocol::V3.matches(Some("4")));
        assert!(!Protocol::V4.matches(None));
        assert_eq!(Framing::of(Protocol::V4, Some("1")), Framing::V4);
        assert_eq!(Framing::of(Protocol::V3, Some("1")), Framing::v3(true));
        assert_eq!(Framing::of(Protocol::V3, Some("")), Framing::v3(false));
        assert_eq!(Framing::of(Protocol::V3, None), Framing::v3(false));
    }
}
