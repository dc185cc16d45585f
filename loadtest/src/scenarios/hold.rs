//! `hold`: N idle sessions, opened at a given rate, kept T seconds answering
//! pings; the servers' RSS before the first session and at the end of the
//! hold gives the memory per session.

use std::time::Duration;

use clap::Args;
use serde::Serialize;

use super::{end_progress, per_second, progress, storm, CommonArgs, Run};
use crate::report::Report;

#[derive(Debug, Clone, Args, Serialize)]
pub struct HoldArgs {
    #[command(flatten)]
    #[serde(skip)]
    pub common: CommonArgs,

    /// Sessions to open and hold.
    #[arg(long, default_value_t = 1000)]
    pub sessions: u64,

    /// Sessions started per second (0: all at once).
    #[arg(long, default_value_t = 1000.0)]
    pub rate: f64,

    /// Seconds to hold the sessions once all are open, before sampling RSS.
    #[arg(long, default_value_t = 30.0)]
    pub duration: f64,
}

pub async fn run(args: HoldArgs) -> Result<Report, String> {
    let run = Run::new(&args.common, args.sessions).await?;
    let mut report = args
        .common
        .report("hold", serde_json::to_value(&args).unwrap_or_default());
    // RSS "before": the servers with no session of this run.
    let (servers, client) = args.common.probes()?;

    let mut storm = storm(
        &run,
        args.sessions,
        args.rate,
        args.common.show_progress(),
        false,
    )
    .await;
    let connected = storm.connected;
    let lost_counter = storm.lost_counter();
    let bar = progress(args.common.show_progress(), move || {
        format!(
            "holding {} sessions, lost {}",
            connected,
            lost_counter.load(std::sync::atomic::Ordering::Relaxed)
        )
    });
    tokio::time::sleep(Duration::from_secs_f64(args.duration)).await;
    end_progress(bar);
    // RSS "after": every session still open.
    run.record_usage(&mut report, &servers, &client);
    let lost = storm.lost();
    let held = storm.connected - lost;

    report.figure("attempted", "sessions attempted", args.sessions as f64, "");
    report.figure(
        "connected",
        "sessions connected",
        storm.connected as f64,
        "",
    );
    report.figure("failed", "handshakes failed", storm.failed as f64, "");
    report.figure("lost", "lost during the hold", lost as f64, "");
    report.figure("held", "sessions held at the sample", held as f64, "");
    report.figure("storm_s", "time to open all", storm.storm_secs, "s");
    report.figure(
        "connects_per_s",
        "connects per second",
        per_second(storm.connected, storm.storm_secs),
        "/s",
    );
    report.rss_per("server_rss_kib_per_session", "server RSS per session", held);
    if let Some(c) = &report.client {
        let per = if held > 0 {
            (c.rss_after_kb as f64 - c.rss_before_kb as f64) / held as f64
        } else {
            f64::NAN
        };
        report.figure(
            "client_rss_kib_per_session",
            "client RSS per session",
            per,
            "KiB",
        );
    }
    report.latency("open", storm.open_latency.summary());
    report.latency("connect", storm.connect_latency.summary());
    if let Some(t) = storm.timeline.take() {
        args.common.keep_timeline(&mut report, t);
    }
    let alive = storm.release().await;
    report.figure("alive_at_end", "sessions open at the end", alive as f64, "");
    run.finish_report(&mut report);
    Ok(report)
}
