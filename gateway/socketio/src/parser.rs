//! Which wire form the Socket.IO layer speaks: chosen once per gateway
//! (`--parser`), so every namespace speaks it and every node of a cluster
//! must speak the same (frames encoded on one node are queued as they are
//! on another). Every packet the gateway writes is encoded through it;
//! packets from clients are decoded by [`super::SocketIo`] according to it.

use serde_json::Value;

use ringway_engineio::Frame;

use super::msgpack;
use super::packet::{self, Payload};

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Parser {
    /// The default `socket.io-parser`: text packets, binaries as
    /// attachments after a BINARY_EVENT / BINARY_ACK.
    #[default]
    Default,
    /// `socket.io-msgpack-parser`: one msgpack binary message per packet.
    Msgpack,
}

impl Parser {
    pub fn as_str(self) -> &'static str {
        match self {
            Parser::Default => "default",
            Parser::Msgpack => "msgpack",
        }
    }

    /// An EVENT, with an ack id when the sender waits for the client's
    /// ack.
    pub fn encode_event(
        self,
        nsp: &str,
        event: &str,
        args: &Payload,
        id: Option<u64>,
    ) -> Vec<Frame> {
        match self {
            Parser::Default => packet::encode_event(nsp, event, args, id),
            Parser::Msgpack => msgpack::encode_event(nsp, event, args, id, None),
        }
    }

    /// A recoverable EVENT: its log offset goes last, as one more string
    /// argument.
    pub fn encode_recoverable(
        self,
        nsp: &str,
        event: &str,
        args: &Payload,
        offset: &str,
    ) -> Vec<Frame> {
        match self {
            Parser::Default => packet::encode_recoverable(nsp, event, args, offset),
            Parser::Msgpack => msgpack::encode_event(nsp, event, args, None, Some(offset)),
        }
    }

    /// The ACK of a client's event.
    pub fn encode_ack(self, nsp: &str, id: u64, args: &Payload) -> Vec<Frame> {
        match self {
            Parser::Default => packet::encode_ack(nsp, id, args),
            Parser::Msgpack => msgpack::encode_ack(nsp, id, args),
        }
    }

    /// The CONNECT answer; `data` is a JSON object text.
    pub fn encode_connect(self, nsp: &str, data: &str) -> Frame {
        match self {
            Parser::Default => packet::encode_connect(nsp, data),
            Parser::Msgpack => msgpack::encode_connect(nsp, data),
        }
    }

    /// CONNECT_ERROR with `{message[, data]}`.
    pub fn encode_connect_error(self, nsp: &str, message: &str, data: Option<&Value>) -> Frame {
        match self {
            Parser::Default => packet::encode_connect_error(nsp, message, data),
            Parser::Msgpack => msgpack::encode_connect_error(nsp, message, data),
        }
    }

    /// DISCONNECT of a namespace.
    pub fn encode_disconnect(self, nsp: &str) -> Frame {
        match self {
            Parser::Default => packet::encode_disconnect(nsp),
            Parser::Msgpack => msgpack::encode_disconnect(nsp),
        }
    }
}
