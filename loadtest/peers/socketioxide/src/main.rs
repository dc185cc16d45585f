//! Peer server for Ringway's benchmarks: the echo application of
//! docs/ECHO_APP.md written with socketioxide (crates.io) on axum, so the
//! same `ringway-loadtest` scenarios run against it.
//!
//!   socketioxide-peer [--host 127.0.0.1] [--port 3000] [--namespace / ...]
//!                     [--ping-interval MS] [--ping-timeout MS] [--max-payload BYTES]
//!
//! `--port 0` picks a free port; once bound it prints
//! `listening on http://HOST:PORT` on stdout.

use std::fmt;
use std::io::Write as _;
use std::time::Duration;

use axum::serve::ListenerExt;
use clap::Parser;
use serde::de::{SeqAccess, Visitor};
use serde::ser::SerializeTuple;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use socketioxide::extract::{AckSender, Data, SocketRef, TryData};
use socketioxide::handler::ConnectHandler;
use socketioxide::SocketIo;

const ASK_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, Parser)]
#[command(
    name = "socketioxide-peer",
    about = "The docs/ECHO_APP.md echo application on socketioxide"
)]
struct Opts {
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// 0: a free port.
    #[arg(long, default_value_t = 3000)]
    port: u16,
    /// Namespaces served (repeatable); default `/`.
    #[arg(long = "namespace")]
    namespaces: Vec<String>,
    /// Milliseconds between server pings.
    #[arg(long, default_value_t = 25_000)]
    ping_interval: u64,
    /// Milliseconds to wait for a pong.
    #[arg(long, default_value_t = 20_000)]
    ping_timeout: u64,
    /// Largest message or polling body, bytes.
    #[arg(long, default_value_t = 1_000_000)]
    max_payload: u64,
}

/// All the arguments of an event, binary ones included. Deserialized as a
/// tuple so socketioxide hands over every argument, serialized as a tuple
/// so it sends them back as separate arguments.
#[derive(Debug, Default)]
struct Args(Vec<rmpv::Value>);

impl<'de> Deserialize<'de> for Args {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct ArgsVisitor;
        impl<'de> Visitor<'de> for ArgsVisitor {
            type Value = Args;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("event arguments")
            }
            fn visit_seq<S: SeqAccess<'de>>(self, mut seq: S) -> Result<Args, S::Error> {
                let mut args = Vec::new();
                while let Some(v) = seq.next_element()? {
                    args.push(v);
                }
                Ok(Args(args))
            }
        }
        d.deserialize_tuple(usize::MAX, ArgsVisitor)
    }
}

impl Serialize for Args {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut t = s.serialize_tuple(self.0.len())?;
        for v in &self.0 {
            t.serialize_element(v)?;
        }
        t.end()
    }
}

/// `{"room": R, "msg": M}` of the `broadcast` event.
#[derive(Debug, Deserialize)]
struct BroadcastReq {
    room: String,
    msg: rmpv::Value,
}

/// Emits `auth` with the CONNECT payload (`{}` when there is none).
///
/// socketioxide sends the CONNECT answer, then runs the connect handler in a
/// task of its own: event handlers registered there may come too late for a
/// client that emits as soon as it is connected (its first event is then
/// dropped). So the handlers are registered in a connect middleware
/// ([`register_handlers`]), which runs before the CONNECT answer is sent.
async fn on_connect(socket: SocketRef, TryData(auth): TryData<serde_json::Value>) {
    let auth = match auth {
        Ok(v) if !v.is_null() => v,
        _ => serde_json::json!({}),
    };
    socket.emit("auth", &auth).ok();
}

/// Registers the echo application's event handlers (a connect middleware).
async fn register_handlers(
    socket: SocketRef,
    io: SocketIo,
) -> Result<(), std::convert::Infallible> {
    socket.on("message", async |s: SocketRef, Data::<Args>(args)| {
        s.emit("message-back", &args).ok();
    });

    socket.on(
        "message-with-ack",
        async |Data::<Args>(args), ack: AckSender| {
            ack.send(&args).ok();
        },
    );

    socket.on(
        "echo",
        async |s: SocketRef, Data::<Args>(args), ack: AckSender| {
            s.emit("echo", &args).ok();
            // Sending an ack the client did not ask for is a no-op.
            ack.send(&args).ok();
        },
    );

    socket.on(
        "join",
        async |s: SocketRef, Data::<Args>(args), ack: AckSender| {
            if let Some(room) = args.0.first().and_then(|v| v.as_str()) {
                s.join(room.to_string());
            }
            ack.send(&true).ok();
        },
    );

    socket.on(
        "leave",
        async |s: SocketRef, Data::<Args>(args), ack: AckSender| {
            if let Some(room) = args.0.first().and_then(|v| v.as_str()) {
                s.leave(room.to_string());
            }
            ack.send(&true).ok();
        },
    );

    let io_b = io.clone();
    socket.on(
        "broadcast",
        async move |s: SocketRef, Data::<BroadcastReq>(req), ack: AckSender| {
            // The namespace's operators (not the socket's): the sender is
            // included when it is a member of the room.
            let Some(nsp) = io_b.of(s.ns()) else { return };
            let reached = nsp.clone().within(req.room.clone()).sockets().len();
            nsp.to(req.room).emit("message", &req.msg).await.ok();
            ack.send(&reached).ok();
        },
    );

    socket.on("ask", async |s: SocketRef, Data::<Args>(args)| {
        let answer = match s
            .timeout(ASK_TIMEOUT)
            .emit_with_ack::<_, Args>("question", &args)
        {
            Ok(stream) => stream.await,
            Err(_) => return,
        };
        match answer {
            Ok(answer) => s.emit("answer", &answer).ok(),
            Err(_) => s.emit("answer-timeout", &()).ok(),
        };
    });

    socket.on("server-disconnect", async |s: SocketRef| {
        s.disconnect().ok();
    });

    // socketioxide has no public call that closes the whole Engine.IO
    // session; leaving the namespace is the closest.
    socket.on("server-close", async |s: SocketRef| {
        s.disconnect().ok();
    });
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let opts = Opts::parse();
    let (layer, io) = SocketIo::builder()
        .ping_interval(Duration::from_millis(opts.ping_interval))
        .ping_timeout(Duration::from_millis(opts.ping_timeout))
        .max_payload(opts.max_payload)
        .build_layer();

    let mut namespaces = if opts.namespaces.is_empty() {
        vec!["/".to_string()]
    } else {
        opts.namespaces.clone()
    };
    for ns in &mut namespaces {
        if !ns.starts_with('/') {
            ns.insert(0, '/');
        }
        io.ns(ns.clone(), on_connect.with(register_handlers));
    }

    let app = axum::Router::new().layer(layer);
    let listener = tokio::net::TcpListener::bind((opts.host.as_str(), opts.port)).await?;
    let addr = listener.local_addr()?;
    // Like Ringway and Node.js: no Nagle delay on small writes (without it a
    // reply that follows another small write waits for the delayed ACK).
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    println!("listening on http://{addr}");
    std::io::stdout().flush().ok();
    axum::serve(listener, app)
        .with_graceful_shutdown(async {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                    .expect("SIGTERM handler");
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        })
        .await?;
    Ok(())
}
