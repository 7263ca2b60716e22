//! # diffusion-viz
//!
//! Figures as PNG files, with no system dependencies (the DejaVu Sans font is embedded;
//! its licence is in `assets/LICENSE_DEJAVU`):
//!
//! - [`scatter`]: 2-D point clouds, e.g. samples against data;
//! - [`line_plot`]: curves on linear or logarithmic axes, e.g. loss curves or error vs NFE;
//! - [`trajectories`]: 2-D paths side by side, e.g. the ODE trajectories of several flows;
//! - [`image_grid`]: a batch of images as one PNG grid.

use std::path::Path;
use std::sync::Once;

use plotters::coord::Shift;
use plotters::coord::types::RangedCoordf64;
use plotters::prelude::*;
use plotters::style::FontStyle;

/// A figure that could not be drawn or written.
#[derive(Debug, thiserror::Error)]
#[error("cannot draw {path}: {reason}")]
pub struct PlotError {
    /// The output file.
    pub path: String,
    /// What went wrong.
    pub reason: String,
}

/// Shorthand for results of this crate.
pub type Result<T> = std::result::Result<T, PlotError>;

const FONT: &[u8] = include_bytes!("../assets/DejaVuSans.ttf");

fn register_font() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // The embedded font is valid; a failure here would be a packaging bug.
        plotters::style::register_font("sans-serif", FontStyle::Normal, FONT)
            .unwrap_or_else(|_| panic!("the embedded DejaVu Sans font does not load"));
    });
}

/// A colour as RGB.
pub type Rgb = (u8, u8, u8);

/// A palette of distinguishable colours (Tableau 10).
pub const PALETTE: [Rgb; 8] = [
    (31, 119, 180),
    (255, 127, 14),
    (44, 160, 44),
    (214, 39, 40),
    (148, 103, 189),
    (140, 86, 75),
    (227, 119, 194),
    (127, 127, 127),
];

/// A named 2-D point cloud.
#[derive(Clone, Copy, Debug)]
pub struct Points<'a> {
    /// The legend label.
    pub label: &'a str,
    /// The points, row-major `[n, 2]`.
    pub xy: &'a [f64],
    /// The colour.
    pub color: Rgb,
}

/// A named curve.
#[derive(Clone, Copy, Debug)]
pub struct Curve<'a> {
    /// The legend label.
    pub label: &'a str,
    /// The x values.
    pub x: &'a [f64],
    /// The y values.
    pub y: &'a [f64],
    /// The colour.
    pub color: Rgb,
}

/// Axis options of a line plot.
#[derive(Clone, Copy, Debug, Default)]
pub struct Axes<'a> {
    /// The label of the x axis.
    pub x_label: &'a str,
    /// The label of the y axis.
    pub y_label: &'a str,
    /// Logarithmic x axis.
    pub log_x: bool,
    /// Logarithmic y axis.
    pub log_y: bool,
}

fn err(path: &Path, e: impl std::fmt::Display) -> PlotError {
    PlotError {
        path: path.display().to_string(),
        reason: e.to_string(),
    }
}

fn rgb(c: Rgb) -> RGBColor {
    RGBColor(c.0, c.1, c.2)
}

/// The range of values, padded by 5% (and widened if degenerate).
fn padded(values: impl Iterator<Item = f64>) -> (f64, f64) {
    let (lo, hi) = values
        .filter(|v| v.is_finite())
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| {
            (a.min(v), b.max(v))
        });
    if !lo.is_finite() {
        return (-1.0, 1.0);
    }
    let pad = ((hi - lo) * 0.05).max(1e-9);
    (lo - pad, hi + pad)
}

/// `range`, or the padded range of every point `points()` yields (rows of 2).
fn common_range<'p, I: Iterator<Item = &'p [f64]>>(
    range: Option<((f64, f64), (f64, f64))>,
    points: impl Fn() -> I,
) -> ((f64, f64), (f64, f64)) {
    range.unwrap_or_else(|| (padded(points().map(|p| p[0])), padded(points().map(|p| p[1]))))
}

/// A white PNG at `path` for a row of `count` panels of `panel` pixels each.
fn panel_row(path: &Path, count: usize, panel: (u32, u32)) -> Result<DrawingArea<BitMapBackend<'_>, Shift>> {
    let width = panel.0 * count.max(1) as u32;
    let root = BitMapBackend::new(path, (width, panel.1)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(path, e))?;
    Ok(root)
}

/// The axes of one panel: its title, the common ranges, a light mesh.
fn panel_axes<'a, 'b>(
    path: &Path,
    area: &'a DrawingArea<BitMapBackend<'b>, Shift>,
    title: &str,
    ((x0, x1), (y0, y1)): ((f64, f64), (f64, f64)),
) -> Result<ChartContext<'a, BitMapBackend<'b>, Cartesian2d<RangedCoordf64, RangedCoordf64>>> {
    let mut chart = ChartBuilder::on(area)
        .caption(title, ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(30)
        .y_label_area_size(40)
        .build_cartesian_2d(x0..x1, y0..y1)
        .map_err(|e| err(path, e))?;
    chart
        .configure_mesh()
        .light_line_style(WHITE)
        .draw()
        .map_err(|e| err(path, e))?;
    Ok(chart)
}

/// Draws point clouds on common axes into a PNG of `size` pixels. Non-finite points are
/// skipped. With `range` = `Some(((x0, x1), (y0, y1)))` the axes are fixed.
pub fn scatter(
    path: &Path,
    title: &str,
    clouds: &[Points<'_>],
    size: (u32, u32),
    range: Option<((f64, f64), (f64, f64))>,
) -> Result<()> {
    scatter_panels(path, &[ScatterPanel { title, clouds }], size, range)
}

/// One panel of [`scatter_panels`].
#[derive(Clone, Copy, Debug)]
pub struct ScatterPanel<'a> {
    /// The panel's title.
    pub title: &'a str,
    /// Its point clouds.
    pub clouds: &'a [Points<'a>],
}

/// Draws panels of point clouds in one row, each `panel` pixels, on common axes `range` (or
/// the range of all points).
pub fn scatter_panels(
    path: &Path,
    panels: &[ScatterPanel<'_>],
    panel: (u32, u32),
    range: Option<((f64, f64), (f64, f64))>,
) -> Result<()> {
    register_font();
    let ((x0, x1), (y0, y1)) = common_range(range, || {
        panels
            .iter()
            .flat_map(|p| p.clouds.iter().flat_map(|c| c.xy.chunks_exact(2)))
    });
    let root = panel_row(path, panels.len(), panel)?;
    for (area, p) in root.split_evenly((1, panels.len().max(1))).iter().zip(panels) {
        let mut chart = panel_axes(path, area, p.title, ((x0, x1), (y0, y1)))?;
        for cloud in p.clouds {
            let color = rgb(cloud.color);
            let points = cloud
                .xy
                .chunks_exact(2)
                .filter(|p| p[0].is_finite() && p[1].is_finite())
                .map(move |p| Circle::new((p[0], p[1]), 1, color.mix(0.5).filled()));
            chart
                .draw_series(points)
                .map_err(|e| err(path, e))?
                .label(cloud.label)
                .legend(move |(x, y)| Circle::new((x, y), 4, color.filled()));
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .position(SeriesLabelPosition::UpperRight)
            .draw()
            .map_err(|e| err(path, e))?;
    }
    root.present().map_err(|e| err(path, e))
}

/// Draws curves into a PNG of `size` pixels; logarithmic axes plot log₁₀ of the values
/// (non-positive values are skipped there) with ticks labelled in powers of ten.
pub fn line_plot(
    path: &Path,
    title: &str,
    curves: &[Curve<'_>],
    axes: Axes<'_>,
    size: (u32, u32),
) -> Result<()> {
    register_font();
    let tx = |v: f64| if axes.log_x { v.log10() } else { v };
    let ty = |v: f64| if axes.log_y { v.log10() } else { v };
    let valid = |x: f64, y: f64| tx(x).is_finite() && ty(y).is_finite();
    let xs = curves.iter().flat_map(|c| {
        c.x.iter()
            .zip(c.y)
            .filter(|(x, y)| valid(**x, **y))
            .map(|(x, _)| tx(*x))
    });
    let ys = curves.iter().flat_map(|c| {
        c.x.iter()
            .zip(c.y)
            .filter(|(x, y)| valid(**x, **y))
            .map(|(_, y)| ty(*y))
    });
    let ((x0, x1), (y0, y1)) = (padded(xs), padded(ys));
    let root = BitMapBackend::new(path, size).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(path, e))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(x0..x1, y0..y1)
        .map_err(|e| err(path, e))?;
    let fmt = |log: bool| move |v: &f64| tick_label(if log { 10f64.powf(*v) } else { *v });
    let (fx, fy) = (fmt(axes.log_x), fmt(axes.log_y));
    chart
        .configure_mesh()
        .x_desc(axes.x_label)
        .y_desc(axes.y_label)
        .x_label_formatter(&fx)
        .y_label_formatter(&fy)
        .draw()
        .map_err(|e| err(path, e))?;
    for curve in curves {
        let color = rgb(curve.color);
        let pts: Vec<(f64, f64)> = curve
            .x
            .iter()
            .zip(curve.y)
            .filter(|(x, y)| valid(**x, **y))
            .map(|(x, y)| (tx(*x), ty(*y)))
            .collect();
        chart
            .draw_series(LineSeries::new(pts.clone(), color.stroke_width(2)))
            .map_err(|e| err(path, e))?
            .label(curve.label)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], color.stroke_width(2)));
        chart
            .draw_series(pts.into_iter().map(|p| Circle::new(p, 3, color.filled())))
            .map_err(|e| err(path, e))?;
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(|e| err(path, e))?;
    root.present().map_err(|e| err(path, e))
}

/// One panel of [`trajectories`]: paths from their start (grey) to their end (coloured).
#[derive(Clone, Copy, Debug)]
pub struct TrajectoryPanel<'a> {
    /// The panel's title.
    pub title: &'a str,
    /// The paths, each row-major `[steps + 1, 2]`.
    pub paths: &'a [Vec<f64>],
    /// The colour of the paths' ends.
    pub color: Rgb,
}

/// Draws panels of 2-D paths in one row, each `panel` pixels, on common axes `range`
/// (or the range of all paths).
pub fn trajectories(
    path: &Path,
    panels: &[TrajectoryPanel<'_>],
    panel: (u32, u32),
    range: Option<((f64, f64), (f64, f64))>,
) -> Result<()> {
    register_font();
    let ((x0, x1), (y0, y1)) = common_range(range, || {
        panels
            .iter()
            .flat_map(|p| p.paths.iter().flat_map(|q| q.chunks_exact(2)))
    });
    let root = panel_row(path, panels.len(), panel)?;
    for (area, p) in root.split_evenly((1, panels.len().max(1))).iter().zip(panels) {
        let mut chart = panel_axes(path, area, p.title, ((x0, x1), (y0, y1)))?;
        let color = rgb(p.color);
        for q in p.paths {
            let pts: Vec<(f64, f64)> = q
                .chunks_exact(2)
                .filter(|v| v[0].is_finite() && v[1].is_finite())
                .map(|v| (v[0], v[1]))
                .collect();
            chart
                .draw_series(LineSeries::new(pts.clone(), color.mix(0.25).stroke_width(1)))
                .map_err(|e| err(path, e))?;
            if let (Some(first), Some(last)) = (pts.first(), pts.last()) {
                chart
                    .draw_series([
                        Circle::new(*first, 1, rgb(PALETTE[7]).filled()),
                        Circle::new(*last, 2, color.filled()),
                    ])
                    .map_err(|e| err(path, e))?;
            }
        }
    }
    root.present().map_err(|e| err(path, e))
}

/// A tick label with three significant digits and no trailing zeros: `500`, `0.281`, `1.5e-5`.
pub fn tick_label(v: f64) -> String {
    if v == 0.0 || !v.is_finite() {
        return format!("{v}");
    }
    let magnitude = v.abs().log10().floor() as i32;
    if !(-3..5).contains(&magnitude) {
        let text = format!("{v:.2e}");
        let (mantissa, exp) = text.split_once('e').unwrap_or((&text, "0"));
        let mantissa = mantissa.trim_end_matches('0').trim_end_matches('.');
        return format!("{mantissa}e{exp}");
    }
    let decimals = (2 - magnitude).max(0) as usize;
    let text = format!("{v:.decimals$}");
    if text.contains('.') {
        text.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        text
    }
}

/// Writes `n` images (`[n, channels, height, width]` row-major, values in [−1, 1]) as one PNG
/// grid of `columns` columns with a 2-pixel gap: 3 channels as RGB, 1 as grey, others as the
/// grey of their first channel.
pub fn image_grid(
    path: &Path,
    images: &[f64],
    [n, channels, height, width]: [usize; 4],
    columns: usize,
) -> Result<()> {
    if images.len() != n * channels * height * width || n == 0 || columns == 0 {
        return Err(err(
            path,
            format!(
                "{} values do not make {n} images of {channels}×{height}×{width}",
                images.len()
            ),
        ));
    }
    let gap = 2;
    let rows = n.div_ceil(columns);
    let (gw, gh) = (columns * (width + gap) - gap, rows * (height + gap) - gap);
    let mut canvas = image::RgbImage::from_pixel(gw as u32, gh as u32, image::Rgb([255, 255, 255]));
    let byte = |v: f64| ((v.clamp(-1.0, 1.0) + 1.0) * 127.5).round() as u8;
    for k in 0..n {
        let (ox, oy) = ((k % columns) * (width + gap), (k / columns) * (height + gap));
        let img = &images[k * channels * height * width..(k + 1) * channels * height * width];
        for y in 0..height {
            for x in 0..width {
                let at = |c: usize| img[(c * height + y) * width + x];
                let rgb = if channels == 3 {
                    [byte(at(0)), byte(at(1)), byte(at(2))]
                } else {
                    let g = byte(at(0));
                    [g, g, g]
                };
                canvas.put_pixel((ox + x) as u32, (oy + y) as u32, image::Rgb(rgb));
            }
        }
    }
    canvas.save(path).map_err(|e| err(path, e))
}

#[cfg(test)]
mod tests {
    #[test]
    fn tick_labels_are_short() {
        use super::tick_label;
        assert_eq!(tick_label(500.0), "500");
        assert_eq!(tick_label(0.28123), "0.281");
        assert_eq!(tick_label(1.5e-5), "1.5e-5");
        assert_eq!(tick_label(2500.0), "2500");
        assert_eq!(tick_label(0.1), "0.1");
    }

    use super::*;

    #[test]
    fn writes_pngs() {
        let dir = std::env::temp_dir().join(format!("diffusion-viz-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let a = [0.0, 0.0, 1.0, 1.0, f64::NAN, 2.0];
        let path = dir.join("s.png");
        scatter(
            &path,
            "test",
            &[Points {
                label: "a",
                xy: &a,
                color: PALETTE[0],
            }],
            (300, 300),
            None,
        )
        .unwrap();
        assert!(std::fs::metadata(&path).unwrap().len() > 1000);
        let path = dir.join("l.png");
        let axes = Axes {
            x_label: "NFE",
            y_label: "error",
            log_x: true,
            log_y: true,
        };
        let curve = Curve {
            label: "euler",
            x: &[1.0, 10.0, 100.0],
            y: &[1.0, 0.1, 0.0],
            color: PALETTE[1],
        };
        line_plot(&path, "t", &[curve], axes, (300, 200)).unwrap();
        assert!(std::fs::metadata(&path).unwrap().len() > 1000);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
