//! `--plot FILE.svg`: latency percentiles (p50, p90, p99 of each second)
//! and throughput over the run, drawn with plotters' SVG backend.

use std::path::Path;

use plotters::prelude::*;

use crate::report::Report;
use crate::timeline::Sample;

/// One latency line: its name, colour and value in a sample.
type Line = (&'static str, RGBColor, fn(&Sample) -> u64);

fn err<E: std::fmt::Display>(e: E) -> String {
    format!("plot: {e}")
}

/// Writes the run's timeline as an SVG chart.
pub fn write_svg(report: &Report, path: &Path) -> Result<(), String> {
    let timeline = report
        .timeline
        .as_ref()
        .ok_or("plot: this run recorded no timeline")?;
    let samples = &timeline.samples;
    let t_max = samples.last().map(|s| s.t_s).unwrap_or(1.0).max(1.0);
    let with_values: Vec<&Sample> = samples.iter().filter(|s| s.count > 0).collect();
    let lat_max = with_values
        .iter()
        .map(|s| s.p99_us as f64 / 1e3)
        .fold(0.0f64, f64::max)
        .max(0.001)
        * 1.1;
    let rate_max = samples
        .iter()
        .map(|s| s.per_s)
        .fold(0.0f64, f64::max)
        .max(1.0)
        * 1.1;

    let root = SVGBackend::new(path, (1000, 720)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let (upper, lower) = root.split_vertically(420);

    let title = format!(
        "{} {} ({}): {} latency per second",
        report.scenario,
        report.urls.join(" "),
        report.transport.as_str(),
        timeline.latency
    );
    let mut chart = ChartBuilder::on(&upper)
        .caption(title, ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(32)
        .y_label_area_size(60)
        .build_cartesian_2d(0f64..t_max, 0f64..lat_max)
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc("seconds")
        .y_desc("ms")
        .draw()
        .map_err(err)?;
    let lines: [Line; 3] = [
        ("p50", BLUE, |s| s.p50_us),
        ("p90", GREEN, |s| s.p90_us),
        ("p99", RED, |s| s.p99_us),
    ];
    for (name, color, value) in lines {
        chart
            .draw_series(LineSeries::new(
                with_values.iter().map(|s| (s.t_s, value(s) as f64 / 1e3)),
                color.stroke_width(2),
            ))
            .map_err(err)?
            .label(name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(err)?;

    let mut chart = ChartBuilder::on(&lower)
        .caption(
            format!("throughput ({} per second)", timeline.latency),
            ("sans-serif", 18),
        )
        .margin(12)
        .x_label_area_size(32)
        .y_label_area_size(60)
        .build_cartesian_2d(0f64..t_max, 0f64..rate_max)
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc("seconds")
        .y_desc("per second")
        .draw()
        .map_err(err)?;
    chart
        .draw_series(LineSeries::new(
            samples.iter().map(|s| (s.t_s, s.per_s)),
            BLACK.stroke_width(2),
        ))
        .map_err(err)?;
    root.present().map_err(err)?;
    Ok(())
}
