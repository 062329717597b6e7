//! `--plot FILE.svg`: two stacked charts over the run's seconds — accepted/s and acked/s on top,
//! accept p99 (ms) below. SVG backend only, to keep the dependency small.

use std::path::Path;

use anyhow::Context;
use plotters::prelude::*;

use crate::Report;

/// Draws the report's timeline to an SVG file.
pub fn draw(report: &Report, path: &Path) -> anyhow::Result<()> {
    let points = &report.timeline;
    let seconds = points.last().map(|p| p.second).unwrap_or(1).max(1) as f64;
    let max_rate =
        points.iter().flat_map(|p| [p.accepted_per_sec, p.acked_per_sec.unwrap_or(0.0)]).fold(1.0f64, f64::max) * 1.1;
    let max_p99 = points.iter().filter_map(|p| p.accept_p99_ms).fold(1.0f64, f64::max) * 1.1;
    let err = |e: &dyn std::fmt::Display| anyhow::anyhow!("drawing {}: {e}", path.display());

    let root = SVGBackend::new(path, (1000, 700)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let (top, bottom) = root.split_vertically(420);

    let mut rates = ChartBuilder::on(&top)
        .caption("ferry-loadgen: messages per second", ("sans-serif", 20))
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(70)
        .build_cartesian_2d(0f64..seconds, 0f64..max_rate)
        .map_err(|e| err(&e))?;
    rates.configure_mesh().x_desc("second").y_desc("msg/s").draw().map_err(|e| err(&e))?;
    rates
        .draw_series(LineSeries::new(points.iter().map(|p| (p.second as f64, p.accepted_per_sec)), &BLUE))
        .map_err(|e| err(&e))?
        .label("accepted/s")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLUE));
    if points.iter().any(|p| p.acked_per_sec.is_some()) {
        rates
            .draw_series(LineSeries::new(
                points.iter().filter_map(|p| p.acked_per_sec.map(|a| (p.second as f64, a))),
                &GREEN,
            ))
            .map_err(|e| err(&e))?
            .label("acked/s")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], GREEN));
    }
    rates.configure_series_labels().background_style(WHITE).border_style(BLACK).draw().map_err(|e| err(&e))?;

    let mut latency = ChartBuilder::on(&bottom)
        .caption("accept latency p99 (ms, from scheduled time)", ("sans-serif", 20))
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(70)
        .build_cartesian_2d(0f64..seconds, 0f64..max_p99)
        .map_err(|e| err(&e))?;
    latency.configure_mesh().x_desc("second").y_desc("ms").draw().map_err(|e| err(&e))?;
    latency
        .draw_series(LineSeries::new(points.iter().filter_map(|p| p.accept_p99_ms.map(|v| (p.second as f64, v))), &RED))
        .map_err(|e| err(&e))?;
    root.present().map_err(|e| err(&e))?;
    drop(rates);
    drop(latency);
    std::fs::metadata(path).with_context(|| format!("{} was not written", path.display()))?;
    Ok(())
}
