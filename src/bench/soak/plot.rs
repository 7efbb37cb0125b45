//! The soak's picture: the server's resident memory over time, and the
//! bystander's relay p99 per second, with the warm-up and attack phases
//! marked.

use std::path::Path;

use plotters::prelude::*;

use super::SoakReport;
use crate::bench::BenchError;

const MEMORY: RGBColor = RGBColor(31, 119, 180);
const LATENCY: RGBColor = RGBColor(230, 120, 20);
const PHASE: RGBColor = RGBColor(120, 120, 120);
const ATTACK: RGBColor = RGBColor(214, 39, 40);

fn plot_error(e: impl std::fmt::Display) -> BenchError {
    BenchError::Other(format!("drawing the plot: {e}"))
}

/// RSS over time and relay p99 per second of each report, one row each.
pub fn soak_svg(path: &Path, reports: &[SoakReport], title: &str) -> Result<(), BenchError> {
    if reports.is_empty() {
        return Err(BenchError::Other("nothing to plot".into()));
    }
    let height = 340 * reports.len() as u32 + 40;
    let root = SVGBackend::new(path, (1000, height)).into_drawing_area();
    root.fill(&WHITE).map_err(plot_error)?;
    let (top, body) = root.split_vertically(40);
    top.titled(title, ("sans-serif", 20)).map_err(plot_error)?;
    let rows = body.split_evenly((reports.len(), 2));
    for (panels, report) in rows.chunks(2).zip(reports) {
        let [memory, latency] = panels else { continue };
        memory_panel(memory, report)?;
        latency_panel(latency, report)?;
    }
    root.present().map_err(plot_error)
}

fn phases(report: &SoakReport) -> Vec<(f64, &'static str, RGBColor)> {
    let mut marks = vec![(report.warmup_s, "end of warm-up", PHASE)];
    if report.attack {
        let attack = report.warmup_s + (report.duration_s - report.warmup_s) / 2.0;
        marks.push((attack, "attacks start", ATTACK));
    }
    marks
}

fn memory_panel(
    area: &DrawingArea<SVGBackend<'_>, plotters::coord::Shift>,
    report: &SoakReport,
) -> Result<(), BenchError> {
    let mb = |b: u64| b as f64 / 1e6;
    let points: Vec<(f64, f64)> = report.rss.iter().map(|s| (s.t_s, mb(s.bytes))).collect();
    let y_max = points.iter().map(|p| p.1).fold(1.0, f64::max) * 1.15;
    let x_max = report.duration_s.max(1.0);
    let mut chart = ChartBuilder::on(area)
        .caption(
            format!(
                "{}: server RSS (growth after warm-up {:.1}%)",
                report.name, report.rss_growth_pct
            ),
            ("sans-serif", 15),
        )
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(55)
        .build_cartesian_2d(0f64..x_max, 0f64..y_max)
        .map_err(plot_error)?;
    chart
        .configure_mesh()
        .x_desc("s")
        .y_desc("MB")
        .draw()
        .map_err(plot_error)?;
    chart
        .draw_series(LineSeries::new(points, MEMORY.stroke_width(2)))
        .map_err(plot_error)?
        .label("RSS")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], MEMORY.stroke_width(2)));
    for (t, label, color) in phases(report) {
        chart
            .draw_series(LineSeries::new(
                vec![(t, 0.0), (t, y_max)],
                color.stroke_width(1),
            ))
            .map_err(plot_error)?
            .label(label)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], color));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK.mix(0.3))
        .draw()
        .map_err(plot_error)
}

fn latency_panel(
    area: &DrawingArea<SVGBackend<'_>, plotters::coord::Shift>,
    report: &SoakReport,
) -> Result<(), BenchError> {
    let points: Vec<(f64, f64)> = report
        .relay_p99_per_second
        .iter()
        .map(|s| (s.t_s as f64 + 0.5, s.p99_us.max(1) as f64))
        .collect();
    let y_max = points.iter().map(|p| p.1).fold(100.0, f64::max) * 2.0;
    let y_min = points
        .iter()
        .map(|p| p.1)
        .fold(f64::MAX, f64::min)
        .clamp(1.0, 1e9)
        / 2.0;
    let x_max = report.duration_s.max(1.0);
    let caption = match report.attack_p99_vs_clean {
        Some(r) => format!("bystander relay p99 per second (attack ÷ clean p99 {r:.2}×)"),
        None => "bystander relay p99 per second".to_string(),
    };
    let mut chart = ChartBuilder::on(area)
        .caption(caption, ("sans-serif", 15))
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(60)
        .build_cartesian_2d(0f64..x_max, (y_min..y_max).log_scale())
        .map_err(plot_error)?;
    chart
        .configure_mesh()
        .x_desc("s")
        .y_desc("µs")
        .y_label_formatter(&|y| format!("{y:.0}"))
        .draw()
        .map_err(plot_error)?;
    chart
        .draw_series(LineSeries::new(points, LATENCY.stroke_width(2)))
        .map_err(plot_error)?
        .label("relay p99")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], LATENCY.stroke_width(2)));
    let udp = report.udp_p50_us.max(1) as f64;
    chart
        .draw_series(LineSeries::new(
            vec![(0.0, udp), (x_max, udp)],
            PHASE.stroke_width(1),
        ))
        .map_err(plot_error)?
        .label("raw UDP echo p50")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], PHASE));
    for (t, _, color) in phases(report) {
        chart
            .draw_series(LineSeries::new(
                vec![(t, y_min), (t, y_max)],
                color.stroke_width(1),
            ))
            .map_err(plot_error)?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK.mix(0.3))
        .draw()
        .map_err(plot_error)
}
