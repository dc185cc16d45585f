//! `chat-backend`: an example Ringway backend. The gateways call its
//! `ringway.v1.Upstream` service (start them with `--upstream
//! http://LISTEN`); it answers clients through a gateway's
//! `ringway.v1.Push` service (`--gateway`, with `--api-token`). See
//! README.md beside this crate and `chat.rs` for the events.
//!
//! Exit codes: 0 clean stop (SIGTERM/SIGINT), 2 bad flags, 1 anything else.

mod chat;

use std::io::{IsTerminal, Write};
use std::net::SocketAddr;
use std::process::ExitCode;

use clap::Parser;
use ringway_proto::v1::push_client::PushClient;
use ringway_proto::v1::upstream_server::UpstreamServer;
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::transport::{Channel, Server};
use tracing::{error, info};
use tracing_subscriber::EnvFilter;

use chat::{Bearer, Chat};

/// A chat backend for Ringway: implements the Upstream hooks, pushes with
/// the Push API.
#[derive(Debug, Parser)]
#[command(name = "chat-backend", version)]
struct Args {
    /// Where the Upstream server listens (the gateways' `--upstream
    /// http://ADDR`). Port 0 picks a free port; the address is printed.
    #[arg(long, env = "CHAT_LISTEN", default_value = "127.0.0.1:7300")]
    listen: SocketAddr,
    /// A gateway's Push API address (its `--api-listen`) for Push calls (`host:port` or
    /// `http://host:port`); any gateway of the cluster reaches every client.
    #[arg(long, env = "CHAT_GATEWAY", default_value = "127.0.0.1:7200")]
    gateway: String,
    /// Bearer token for Push calls: one of the gateways' `--api-token`s.
    #[arg(long, env = "CHAT_API_TOKEN", hide_env_values = true)]
    api_token: String,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let bearer = match Bearer::new(&args.api_token) {
        Ok(bearer) => bearer,
        Err(err) => {
            eprintln!("chat-backend: --api-token: {err}");
            return ExitCode::from(2);
        }
    };
    let gateway = if args.gateway.contains("://") {
        args.gateway.clone()
    } else {
        format!("http://{}", args.gateway)
    };
    let endpoint = match Channel::from_shared(gateway.clone()) {
        Ok(endpoint) if gateway.starts_with("http://") => endpoint,
        _ => {
            eprintln!(
                "chat-backend: --gateway: not a host:port or http:// URL: {:?}",
                args.gateway
            );
            return ExitCode::from(2);
        }
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("chat-backend: cannot start the runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        // Connects on the first call (and again after a failure), so the
        // backend may start before the gateways.
        let push = PushClient::with_interceptor(endpoint.connect_lazy(), bearer);
        let listener = match TcpListener::bind(args.listen).await {
            Ok(listener) => listener,
            Err(err) => {
                eprintln!("chat-backend: cannot listen on {}: {err}", args.listen);
                return ExitCode::FAILURE;
            }
        };
        let addr = listener.local_addr().unwrap_or(args.listen);
        info!(push = gateway, "pushing through the gateway");
        println!("chat-backend listening on {addr}");
        let _ = std::io::stdout().flush();
        let served = Server::builder()
            .add_service(UpstreamServer::new(Chat::new(push)))
            .serve_with_incoming_shutdown(TcpListenerStream::new(listener), shutdown_signal())
            .await;
        match served {
            Ok(()) => ExitCode::SUCCESS,
            Err(err) => {
                error!(%err, "server failed");
                eprintln!("chat-backend: {err}");
                ExitCode::FAILURE
            }
        }
    })
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => tokio::select! {
            _ = term.recv() => info!("SIGTERM received"),
            _ = tokio::signal::ctrl_c() => info!("SIGINT received"),
        },
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
            info!("SIGINT received");
        }
    }
}
