//! `connect`: a connection storm. Opens N sessions at a given rate and
//! measures the handshake (TCP connect to the Engine.IO open packet, and to
//! the Socket.IO CONNECT answer) and failures by kind.

use clap::Args;
use serde::Serialize;

use super::{per_second, storm, CommonArgs, Run};
use crate::report::Report;

#[derive(Debug, Clone, Args, Serialize)]
pub struct ConnectArgs {
    #[command(flatten)]
    #[serde(skip)]
    pub common: CommonArgs,

    /// Sessions to open.
    #[arg(long, default_value_t = 1000)]
    pub sessions: u64,

    /// Sessions started per second (0: all at once).
    #[arg(long, default_value_t = 500.0)]
    pub rate: f64,

    /// Seconds every session stays open after the last handshake ended.
    #[arg(long, default_value_t = 0.0)]
    pub linger: f64,
}

pub async fn run(args: ConnectArgs) -> Result<Report, String> {
    let run = Run::new(&args.common, args.sessions).await?;
    let mut report = args
        .common
        .report("connect", serde_json::to_value(&args).unwrap_or_default());
    let (servers, client) = args.common.probes()?;

    let storm = storm(&run, args.sessions, args.rate, args.common.quiet).await;
    if args.linger > 0.0 {
        tokio::time::sleep(std::time::Duration::from_secs_f64(args.linger)).await;
    }
    run.record_usage(&mut report, &servers, &client);
    let lost = storm.lost();
    report.figure("attempted", "sessions attempted", args.sessions as f64, "");
    report.figure(
        "connected",
        "sessions connected",
        storm.connected as f64,
        "",
    );
    report.figure("failed", "handshakes failed", storm.failed as f64, "");
    report.figure("lost", "lost after connecting", lost as f64, "");
    report.figure("storm_s", "storm duration", storm.storm_secs, "s");
    report.figure(
        "connects_per_s",
        "connects per second",
        per_second(storm.connected, storm.storm_secs),
        "/s",
    );
    report.cpu_per(
        "server_cpu_us_per_connect",
        "server CPU per connect",
        storm.connected,
    );
    report.latency("open", storm.open_latency.summary());
    report.latency("connect", storm.connect_latency.summary());
    let alive = storm.release().await;
    report.figure("alive_at_end", "sessions open at the end", alive as f64, "");
    run.finish_report(&mut report);
    Ok(report)
}
