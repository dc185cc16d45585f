//! `ringway-gateway`: one gateway node. With no cluster settings it is a
//! one-node cluster with in-memory state, ready on the listen address.

use std::io::Write;
use std::process::ExitCode;

use clap::Parser;
use ringway_gateway::app::EchoApp;
use ringway_gateway::config::{AppKind, Config, LogFormat};
use ringway_gateway::http::Gateway;
use tokio::net::{TcpListener, TcpSocket};
use tracing::{error, info};
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    let config = Config::parse();
    if let Err(err) = config.validate() {
        eprintln!("ringway-gateway: invalid configuration: {err}");
        return ExitCode::from(2);
    }
    if config.check_config {
        println!("{config:#?}");
        return ExitCode::SUCCESS;
    }
    init_logging(config.log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(err) => {
            eprintln!("ringway-gateway: cannot start the runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            error!("{err}");
            eprintln!("ringway-gateway: {err}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Human => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

async fn run(config: Config) -> Result<(), String> {
    let listener = listen(config.listen, config.listen_backlog)
        .map_err(|e| format!("cannot listen on {}: {e}", config.listen))?;
    let addr = listener
        .local_addr()
        .map_err(|e| format!("cannot read the bound address: {e}"))?;
    let gateway = match config.app {
        AppKind::Echo => Gateway::new(&config, EchoApp::new(config.namespaces.clone()), true),
    };
    info!(%addr, path = %config.path, "ringway-gateway listening");
    // Tests and scripts read the bound address from this line.
    println!("ringway-gateway listening on http://{addr}");
    let _ = std::io::stdout().flush();
    gateway
        .serve(listener, shutdown_signal())
        .await
        .map_err(|e| format!("server failed: {e}"))?;
    info!("ringway-gateway stopped");
    Ok(())
}

/// Binds with an explicit backlog: tokio's default (1024) overflows in
/// connection storms, and every dropped SYN costs the client a 1 s retry.
/// The kernel caps it at `net.core.somaxconn`.
fn listen(addr: std::net::SocketAddr, backlog: u32) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(backlog)
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(err) => {
            error!(%err, "cannot watch SIGTERM");
            std::future::pending::<()>().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => info!("SIGTERM received"),
        _ = tokio::signal::ctrl_c() => info!("SIGINT received"),
    }
}
