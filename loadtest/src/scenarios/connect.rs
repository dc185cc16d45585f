//! `connect`: a connection storm. Opens N sessions at a given rate and
//! measures the handshake (TCP connect to the Engine.IO open packet, and to
//! the Socket.IO CONNECT answer) and failures by kind.
//!
//! With `--upgrade`, every session connects over long-polling, then
//! upgrades to WebSocket like the official client (upgrade request,
//! `2probe`/`3probe`, polling paused, `5`), timed from the upgrade request:
//! to the 101 answer (`upgrade_101`), to `3probe` (`upgrade_probe`) and to
//! the switch (`upgrade_done`); one `echo` ack over the WebSocket then
//! checks the session (`after_upgrade_ack`). With a node list the upgrade
//! goes to the node after the handshake's (a handoff in a Ringway cluster).

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

    /// Handshake over long-polling, then upgrade to WebSocket (implies
    /// `--transport polling` for the handshake).
    #[arg(long)]
    pub upgrade: bool,
}

pub async fn run(mut args: ConnectArgs) -> Result<Report, String> {
    if args.upgrade {
        args.common.transport = crate::client::TransportKind::Polling;
    }
    let run = Run::new(&args.common, args.sessions).await?;
    let mut report = args
        .common
        .report("connect", serde_json::to_value(&args).unwrap_or_default());
    let (servers, client) = args.common.probes()?;

    let storm = storm(
        &run,
        args.sessions,
        args.rate,
        args.common.show_progress(),
        args.upgrade,
    )
    .await;
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
    if let Some(u) = &storm.upgrade {
        report.figure(
            "upgraded",
            "sessions upgraded and checked",
            u.check.summary().count as f64,
            "",
        );
        report.latency("upgrade_101", u.response.summary());
        report.latency("upgrade_probe", u.probe.summary());
        report.latency("upgrade_done", u.done.summary());
        report.latency("after_upgrade_ack", u.check.summary());
    }
    let mut storm = storm;
    if let Some(t) = storm.timeline.take() {
        args.common.keep_timeline(&mut report, t);
    }
    let alive = storm.release().await;
    report.figure("alive_at_end", "sessions open at the end", alive as f64, "");
    run.finish_report(&mut report);
    Ok(report)
}
