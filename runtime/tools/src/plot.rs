//! SVG line charts for the tools' reports (plotters, SVG backend only: no fonts or images
//! needed, so it builds everywhere).

use crate::error::ToolError;
use plotters::prelude::*;
use std::path::Path;

/// One named line of (x, y) points.
pub struct Line {
    pub name: String,
    pub points: Vec<(f64, f64)>,
}

const COLORS: [RGBColor; 6] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
];

/// Draws `lines` into an SVG file at `path`.
pub fn line_chart(
    path: &Path,
    title: &str,
    x_label: &str,
    y_label: &str,
    lines: &[Line],
) -> Result<(), ToolError> {
    let err = |e: &dyn std::fmt::Display| ToolError::Plot(format!("{}: {e}", path.display()));
    let pts = lines.iter().flat_map(|l| l.points.iter());
    let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, 0.0f64, f64::MIN);
    for &(x, y) in pts.filter(|(x, y)| x.is_finite() && y.is_finite()) {
        x0 = x0.min(x);
        x1 = x1.max(x);
        y0 = y0.min(y);
        y1 = y1.max(y);
    }
    if x0 > x1 {
        (x0, x1, y1) = (0.0, 1.0, 1.0);
    }
    if x1 <= x0 {
        x1 = x0 + 1.0;
    }
    if y1 <= y0 {
        y1 = y0 + 1.0;
    }
    let root = SVGBackend::new(path, (800, 480)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(64)
        .build_cartesian_2d(x0..x1, y0..y1 * 1.05)
        .map_err(|e| err(&e))?;
    chart
        .configure_mesh()
        .x_desc(x_label)
        .y_desc(y_label)
        .draw()
        .map_err(|e| err(&e))?;
    for (i, l) in lines.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        chart
            .draw_series(LineSeries::new(
                l.points.iter().copied(),
                color.stroke_width(2),
            ))
            .map_err(|e| err(&e))?
            .label(l.name.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
    }
    if lines.len() > 1 || lines.first().is_some_and(|l| !l.name.is_empty()) {
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()
            .map_err(|e| err(&e))?;
    }
    root.present().map_err(|e| err(&e))?;
    Ok(())
}

/// The empirical CDF of sorted values, thinned to at most `max_points` points.
pub fn cdf(sorted: &[f64], max_points: usize) -> Vec<(f64, f64)> {
    let n = sorted.len();
    if n == 0 {
        return vec![];
    }
    let step = (n / max_points.max(1)).max(1);
    let mut out: Vec<(f64, f64)> = (0..n)
        .step_by(step)
        .map(|i| (sorted[i], (i + 1) as f64 / n as f64))
        .collect();
    out.push((sorted[n - 1], 1.0));
    out
}

/// Draws one horizontal stacked bar per entry of `bars` (name, one value per layer, first
/// bar on top), layers named by `layers` and stacked left to right, into an SVG at `path`.
pub fn stacked_bars(
    path: &Path,
    title: &str,
    x_label: &str,
    layers: &[&str],
    bars: &[(String, Vec<f64>)],
) -> Result<(), ToolError> {
    let err = |e: &dyn std::fmt::Display| ToolError::Plot(format!("{}: {e}", path.display()));
    let right = bars
        .iter()
        .map(|(_, v)| v.iter().sum::<f64>())
        .fold(0.0f64, f64::max)
        .max(f64::MIN_POSITIVE);
    let n = bars.len();
    let height = (120 + 34 * n).max(320) as u32;
    let root = SVGBackend::new(path, (900, height)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    // Room on the right for the legend, clear of the bars.
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(180)
        .build_cartesian_2d(0.0..right * 1.4, -0.5f64..(n as f64 - 0.5))
        .map_err(|e| err(&e))?;
    let name_at = |y: &f64| -> String {
        let y = *y;
        let i = y.round();
        if (y - i).abs() > 1e-6 || i < 0.0 {
            return String::new();
        }
        n.checked_sub(1 + i as usize)
            .and_then(|k| bars.get(k))
            .map(|b| b.0.clone())
            .unwrap_or_default()
    };
    chart
        .configure_mesh()
        .disable_y_mesh()
        .y_labels(n.max(1))
        .y_label_formatter(&name_at)
        .x_desc(x_label)
        .draw()
        .map_err(|e| err(&e))?;
    for (k, layer) in layers.iter().enumerate() {
        let color = COLORS[k % COLORS.len()];
        let rects = bars.iter().enumerate().map(|(i, (_, v))| {
            let base: f64 = v[..k.min(v.len())].iter().sum();
            let w = v.get(k).copied().unwrap_or(0.0);
            let y = (n - 1 - i) as f64;
            Rectangle::new([(base, y - 0.35), (base + w, y + 0.35)], color.filled())
        });
        chart
            .draw_series(rects)
            .map_err(|e| err(&e))?
            .label(*layer)
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 12, y + 5)], color.filled()));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK)
        .draw()
        .map_err(|e| err(&e))?;
    root.present().map_err(|e| err(&e))?;
    Ok(())
}

/// Measured points (dots) and fitted curves (lines), paired by index and colour, on log-log
/// axes, into an SVG at `path`. Points must be positive.
pub fn log_log_chart(
    path: &Path,
    title: &str,
    x_label: &str,
    y_label: &str,
    measured: &[Line],
    fitted: &[Line],
) -> Result<(), ToolError> {
    let err = |e: &dyn std::fmt::Display| ToolError::Plot(format!("{}: {e}", path.display()));
    let pts = measured
        .iter()
        .chain(fitted)
        .flat_map(|l| l.points.iter())
        .filter(|(x, y)| *x > 0.0 && *y > 0.0 && x.is_finite() && y.is_finite());
    let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
    for &(x, y) in pts {
        (x0, x1, y0, y1) = (x0.min(x), x1.max(x), y0.min(y), y1.max(y));
    }
    if x0 > x1 {
        (x0, x1, y0, y1) = (1.0, 10.0, 1.0, 10.0);
    }
    let root = SVGBackend::new(path, (860, 560)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(
            (x0 / 1.2..x1 * 1.2).log_scale(),
            (y0 / 1.5..y1 * 1.5).log_scale(),
        )
        .map_err(|e| err(&e))?;
    chart
        .configure_mesh()
        .x_desc(x_label)
        .y_desc(y_label)
        .draw()
        .map_err(|e| err(&e))?;
    for (i, l) in measured.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        chart
            .draw_series(l.points.iter().map(|&p| Circle::new(p, 4, color.filled())))
            .map_err(|e| err(&e))?
            .label(l.name.clone())
            .legend(move |(x, y)| Circle::new((x + 10, y), 4, color.filled()));
    }
    for (i, l) in fitted.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        chart
            .draw_series(LineSeries::new(
                l.points.iter().copied(),
                color.stroke_width(1),
            ))
            .map_err(|e| err(&e))?
            .label(l.name.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK)
        .draw()
        .map_err(|e| err(&e))?;
    root.present().map_err(|e| err(&e))?;
    Ok(())
}
