//! Engine.IO errors and their mapping to the wire.

use thiserror::Error;

/// A packet or payload that cannot be decoded. Any of these closes the
/// session ("parse error").
#[derive(Debug, Error, Clone, Copy, PartialEq, Eq)]
pub enum DecodeError {
    #[error("empty packet")]
    Empty,
    #[error("unknown packet type")]
    UnknownType,
    #[error("unexpected data after packet type")]
    UnexpectedData,
    #[error("payload is not valid UTF-8")]
    InvalidUtf8,
    #[error("invalid base64 in binary packet")]
    InvalidBase64,
    /// Engine.IO v3 payloads: a packet length that is not decimal digits
    /// or does not match what follows.
    #[error("malformed packet length in payload")]
    BadLength,
}

/// A request the engine refuses. Each maps to the reference server's
/// `{"code":N,"message":"..."}` answer.
#[derive(Debug, Error, Clone, Copy, PartialEq, Eq)]
pub enum RequestError {
    #[error("Transport unknown")]
    UnknownTransport,
    #[error("Session ID unknown")]
    UnknownSid,
    #[error("Bad handshake method")]
    BadHandshakeMethod,
    #[error("Bad request")]
    BadRequest,
    #[error("Forbidden")]
    Forbidden,
    #[error("Unsupported protocol version")]
    UnsupportedProtocolVersion,
    /// This node is draining and takes no new sessions (the load balancer
    /// sends the retry elsewhere). Not a reference error: 503, code 3.
    #[error("Server draining")]
    Unavailable,
    /// The node holds its most sessions (`--max-sessions`): 503, code 3.
    #[error("Server full")]
    ServerFull,
    /// The client's address holds its most sessions here
    /// (`--max-sessions-per-ip`): 429, code 3.
    #[error("Too many sessions from this address")]
    TooManySessions,
    /// The client's address opened sessions too fast
    /// (`--handshake-rate-per-ip`): 429, code 3.
    #[error("Too many handshakes from this address")]
    TooManyHandshakes,
    /// A POST body did not arrive within `--body-read-timeout`: 408,
    /// code 3, and the connection is closed.
    #[error("Request body timeout")]
    BodyTimeout,
    /// No room to read a POST body within its timeout (`--max-body-buffer`):
    /// 503, code 3.
    #[error("Server busy")]
    Busy,
}

impl RequestError {
    pub fn code(self) -> u8 {
        match self {
            RequestError::UnknownTransport => 0,
            RequestError::UnknownSid => 1,
            RequestError::BadHandshakeMethod => 2,
            RequestError::BadRequest
            | RequestError::Unavailable
            | RequestError::ServerFull
            | RequestError::TooManySessions
            | RequestError::TooManyHandshakes
            | RequestError::BodyTimeout
            | RequestError::Busy => 3,
            RequestError::Forbidden => 4,
            RequestError::UnsupportedProtocolVersion => 5,
        }
    }

    pub fn status(self) -> u16 {
        match self {
            RequestError::Forbidden => 403,
            RequestError::Unavailable | RequestError::ServerFull | RequestError::Busy => 503,
            RequestError::TooManySessions | RequestError::TooManyHandshakes => 429,
            RequestError::BodyTimeout => 408,
            _ => 400,
        }
    }

    /// Whether the connection is closed after the answer (the request's
    /// body may still be on its way).
    pub fn closes_connection(self) -> bool {
        matches!(self, RequestError::BodyTimeout | RequestError::Busy)
    }

    /// The JSON body the reference server sends with this error.
    pub fn body(self) -> String {
        format!("{{\"code\":{},\"message\":\"{}\"}}", self.code(), self)
    }
}
