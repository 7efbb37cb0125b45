//! SVG pictures of the benchmarks (plotters, SVG backend: no fonts needed).
//!
//! - latency: one panel per scenario, latency against percentile (log
//!   scales), reliable vs datagram with the raw-UDP echo for reference, so
//!   the reliable tail under loss stands out against the datagram one; a
//!   scenario run on both storages draws its memory-storage curves dashed,
//!   and one run with and without token checks draws the checked ones thin
//!   and dark, over the others;
//! - fan-out: delivered events per second and p99 against subscribers.

use std::path::Path;

use plotters::element::DashedPathElement;
use plotters::prelude::*;

use super::fanout::FanoutRow;
use super::latency::LatencyRow;
use super::BenchError;

const RELIABLE: RGBColor = RGBColor(31, 119, 180);
const DATAGRAM: RGBColor = RGBColor(230, 120, 20);
const COPIES: RGBColor = RGBColor(44, 160, 44);
const UDP: RGBColor = RGBColor(120, 120, 120);

fn color(delivery: &str) -> RGBColor {
    match delivery {
        "datagram" => DATAGRAM,
        "reliable+copies" => COPIES,
        "udp" => UDP,
        _ => RELIABLE,
    }
}

/// The colour of a curve with token checks, beside its twin without.
fn darker(c: RGBColor) -> RGBColor {
    let dim = |v: u8| (f64::from(v) * 0.55) as u8;
    RGBColor(dim(c.0), dim(c.1), dim(c.2))
}

fn plot_error(e: impl std::fmt::Display) -> BenchError {
    BenchError::Other(format!("drawing the plot: {e}"))
}

/// `q` as "nines": 0.9 → 1, 0.99 → 2; the x coordinate of the curves.
fn nines(q: f64) -> f64 {
    -(1.0 - q).max(1e-7).log10()
}

/// The percentile label of an x coordinate in nines: 1 → "90", 3 → "99.9".
fn percentile_label(x: f64) -> String {
    let pct = 100.0 * (1.0 - 10f64.powf(-x));
    let text = format!("{pct:.4}");
    let text = text.trim_end_matches('0').trim_end_matches('.');
    format!("p{text}")
}

/// Latency percentile curves of every scenario in `rows` to an SVG file.
pub fn latency_svg(path: &Path, rows: &[LatencyRow], title: &str) -> Result<(), BenchError> {
    let udp = rows.iter().find(|r| r.delivery == "udp");
    let mut names: Vec<&str> = Vec::new();
    for row in rows.iter().filter(|r| r.delivery != "udp") {
        if !names.contains(&row.name.as_str()) {
            names.push(&row.name);
        }
    }
    if names.is_empty() {
        return Err(BenchError::Other("nothing to plot".into()));
    }
    let cols = names.len().min(3);
    let panels_down = names.len().div_ceil(cols);
    let (width, height) = (460 * cols as u32, 360 * panels_down as u32 + 50);
    let root = SVGBackend::new(path, (width, height)).into_drawing_area();
    root.fill(&WHITE).map_err(plot_error)?;
    let (top, body) = root.split_vertically(50);
    top.titled(title, ("sans-serif", 20)).map_err(plot_error)?;

    // Shared axes, so panels compare at a glance.
    let all = rows.iter().flat_map(|r| r.curve.iter());
    let y_max = all.clone().map(|p| p.1).max().unwrap_or(1).max(10) as f64 * 1.5;
    let y_min = all.clone().map(|p| p.1).min().unwrap_or(1).max(1) as f64 / 1.5;
    let x_max = all.map(|p| nines(p.0)).fold(1.0f64, f64::max).min(6.0) + 0.1;

    for (panel, name) in body.split_evenly((panels_down, cols)).iter().zip(&names) {
        let loss = rows
            .iter()
            .find(|r| r.name == *name)
            .map_or(0.0, |r| r.loss_pct);
        let caption = if name.starts_with("netsim") {
            format!("relay via netsim, {loss}% loss")
        } else {
            format!("{name} (loopback)")
        };
        let mut chart = ChartBuilder::on(panel)
            .caption(caption, ("sans-serif", 16))
            .margin(10)
            .x_label_area_size(30)
            .y_label_area_size(55)
            .build_cartesian_2d(0.25f64..x_max, (y_min..y_max).log_scale())
            .map_err(plot_error)?;
        chart
            .configure_mesh()
            .x_labels(6)
            .x_label_formatter(&|x| percentile_label(*x))
            .y_desc("µs")
            .y_label_formatter(&|y| format!("{y:.0}"))
            .draw()
            .map_err(plot_error)?;
        let mut series: Vec<(&LatencyRow, RGBColor)> = rows
            .iter()
            .filter(|r| r.name == *name)
            .map(|r| (r, color(&r.delivery)))
            .collect();
        if let Some(udp) = udp {
            series.push((udp, color(&udp.delivery)));
        }
        let mut storages: Vec<&str> = Vec::new();
        let mut auths: Vec<&str> = Vec::new();
        for (row, _) in &series {
            if row.delivery != "udp" && !storages.contains(&row.storage.as_str()) {
                storages.push(&row.storage);
            }
            if row.delivery != "udp" && !auths.contains(&row.auth.as_str()) {
                auths.push(&row.auth);
            }
        }
        // The checked curves last, so they lie over their twins.
        if auths.len() > 1 {
            series.sort_by_key(|(row, _)| row.auth == "on");
        }
        for (row, color) in series {
            let points: Vec<(f64, f64)> = row
                .curve
                .iter()
                .map(|&(q, us)| (nines(q), us.max(1) as f64))
                .collect();
            let label = if row.delivery == "udp" {
                "raw UDP echo".to_string()
            } else {
                let mut what = row.delivery.clone();
                if storages.len() > 1 {
                    what = format!("{what}, {}", row.storage);
                }
                if auths.len() > 1 {
                    what = format!("{what}, auth {}", row.auth);
                }
                format!("{what} ({}/{} delivered)", row.delivered, row.sent)
            };
            let checked = row.auth == "on" && auths.len() > 1;
            let style = if checked {
                darker(color).stroke_width(1)
            } else {
                color.stroke_width(2)
            };
            if row.storage == "memory" && storages.len() > 1 {
                chart
                    .draw_series(DashedLineSeries::new(points, 6, 4, style))
                    .map_err(plot_error)?
                    .label(label)
                    .legend(move |(x, y)| {
                        DashedPathElement::new(vec![(x, y), (x + 16, y)], 4, 3, style)
                    });
            } else {
                chart
                    .draw_series(LineSeries::new(points, style))
                    .map_err(plot_error)?
                    .label(label)
                    .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], style));
            }
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK.mix(0.3))
            .draw()
            .map_err(plot_error)?;
    }
    root.present().map_err(plot_error)
}

/// Delivered events per second and p99 against subscribers, to an SVG file.
pub fn fanout_svg(path: &Path, rows: &[FanoutRow], title: &str) -> Result<(), BenchError> {
    if rows.is_empty() {
        return Err(BenchError::Other("nothing to plot".into()));
    }
    let root = SVGBackend::new(path, (920, 420)).into_drawing_area();
    root.fill(&WHITE).map_err(plot_error)?;
    let (top, body) = root.split_vertically(40);
    top.titled(title, ("sans-serif", 20)).map_err(plot_error)?;
    let panels = body.split_evenly((1, 2));
    let x_max = rows.iter().map(|r| r.subscribers).max().unwrap_or(1).max(2) as f64 * 2.0;

    type Metric = fn(&FanoutRow) -> f64;
    let metrics: [(&str, &str, Metric); 2] = [
        ("delivered events/s", "events/s", |r| {
            r.events_per_sec.max(1.0)
        }),
        ("p99 latency under load", "µs", |r| r.p99_us.max(1) as f64),
    ];
    for (panel, (caption, unit, metric)) in panels.iter().zip(metrics) {
        let y_max = rows.iter().map(metric).fold(10.0, f64::max) * 2.0;
        let y_min = rows.iter().map(metric).fold(f64::MAX, f64::min).max(1.0) / 2.0;
        let mut chart = ChartBuilder::on(panel)
            .caption(caption, ("sans-serif", 16))
            .margin(10)
            .x_label_area_size(30)
            .y_label_area_size(70)
            .build_cartesian_2d((0.5f64..x_max).log_scale(), (y_min..y_max).log_scale())
            .map_err(plot_error)?;
        chart
            .configure_mesh()
            .x_desc("subscribers")
            .y_desc(unit)
            .x_label_formatter(&|x| format!("{x:.0}"))
            .y_label_formatter(&|y| format_si(*y))
            .draw()
            .map_err(plot_error)?;
        for delivery in ["reliable", "reliable+copies", "datagram"] {
            let color = color(delivery);
            let points: Vec<(f64, f64)> = rows
                .iter()
                .filter(|r| r.delivery == delivery)
                .map(|r| (r.subscribers as f64, metric(r)))
                .collect();
            if points.is_empty() {
                continue;
            }
            chart
                .draw_series(LineSeries::new(points.clone(), color.stroke_width(2)))
                .map_err(plot_error)?
                .label(delivery)
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 16, y)], color.stroke_width(2))
                });
            chart
                .draw_series(
                    points
                        .into_iter()
                        .map(|p| Circle::new(p, 4, color.filled())),
                )
                .map_err(plot_error)?;
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK.mix(0.3))
            .draw()
            .map_err(plot_error)?;
    }
    root.present().map_err(plot_error)
}

/// 1500 → "1.5k", 2000000 → "2M".
fn format_si(v: f64) -> String {
    if v >= 1e6 {
        format!("{}M", trim(v / 1e6))
    } else if v >= 1e3 {
        format!("{}k", trim(v / 1e3))
    } else {
        trim(v)
    }
}

fn trim(v: f64) -> String {
    let text = format!("{v:.1}");
    text.trim_end_matches('0').trim_end_matches('.').to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_read_as_percentiles_and_si() {
        assert_eq!(percentile_label(nines(0.5)), "p50");
        assert_eq!(percentile_label(1.0), "p90");
        assert_eq!(percentile_label(3.0), "p99.9");
        assert_eq!(format_si(1500.0), "1.5k");
        assert_eq!(format_si(2_000_000.0), "2M");
        assert_eq!(format_si(42.0), "42");
    }
}
