//! Client errors, classified by kind so that a run counts them instead of
//! failing: every network or protocol surprise becomes one `ClientError`.

use std::fmt;
use std::io;

/// What went wrong, as a stable short name used in reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ErrorKind {
    /// Binding the client socket to its 127.0.0.N source address failed.
    Bind,
    /// The process ran out of file descriptors (EMFILE / ENFILE).
    FdLimit,
    /// The TCP connection could not be established.
    TcpConnect,
    /// The WebSocket upgrade was refused or failed.
    WsHandshake,
    /// The upgrade of a polling session failed after the 101 (probe,
    /// pausing the polling transport).
    Upgrade,
    /// An HTTP request (polling transport) failed below the HTTP status.
    Http,
    /// The server answered an HTTP request with an unexpected status.
    HttpStatus,
    /// A step did not finish within its time limit.
    Timeout,
    /// The server sent something that is not valid Engine.IO / Socket.IO.
    Protocol,
    /// The server refused the namespace CONNECT (CONNECT_ERROR).
    ConnectError,
    /// The server closed the session or the connection.
    Closed,
    /// The server sent no ping within pingInterval + pingTimeout.
    PingTimeout,
    /// A read or write failed on an established connection.
    Io,
    /// The server answered, but not what the scenario expected.
    UnexpectedReply,
    /// No answer to a scenario request within its time limit.
    ReplyTimeout,
}

impl ErrorKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Bind => "bind",
            ErrorKind::FdLimit => "fd_limit",
            ErrorKind::TcpConnect => "tcp_connect",
            ErrorKind::WsHandshake => "ws_handshake",
            ErrorKind::Upgrade => "upgrade",
            ErrorKind::Http => "http",
            ErrorKind::HttpStatus => "http_status",
            ErrorKind::Timeout => "timeout",
            ErrorKind::Protocol => "protocol",
            ErrorKind::ConnectError => "connect_error",
            ErrorKind::Closed => "closed",
            ErrorKind::PingTimeout => "ping_timeout",
            ErrorKind::Io => "io",
            ErrorKind::UnexpectedReply => "unexpected_reply",
            ErrorKind::ReplyTimeout => "reply_timeout",
        }
    }
}

/// One failure: its kind and a human detail (the first one of each kind is
/// shown in reports).
#[derive(Debug, Clone)]
pub struct ClientError {
    pub kind: ErrorKind,
    pub detail: String,
}

impl ClientError {
    pub fn new(kind: ErrorKind, detail: impl Into<String>) -> Self {
        ClientError {
            kind,
            detail: detail.into(),
        }
    }

    /// Classifies an I/O error, using `default` unless it is an fd shortage.
    pub fn from_io(default: ErrorKind, context: &str, err: &io::Error) -> Self {
        let kind = match err.raw_os_error() {
            Some(libc::EMFILE) | Some(libc::ENFILE) => ErrorKind::FdLimit,
            _ => default,
        };
        ClientError::new(kind, format!("{context}: {err}"))
    }

    pub fn timeout(what: &str) -> Self {
        ClientError::new(ErrorKind::Timeout, format!("{what} timed out"))
    }

    pub fn protocol(detail: impl Into<String>) -> Self {
        ClientError::new(ErrorKind::Protocol, detail)
    }

    pub fn closed(detail: impl Into<String>) -> Self {
        ClientError::new(ErrorKind::Closed, detail)
    }
}

impl fmt::Display for ClientError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.kind.as_str(), self.detail)
    }
}

impl std::error::Error for ClientError {}
