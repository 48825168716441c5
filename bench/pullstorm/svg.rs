//! The plot: one hand-written SVG with the CDF of time-to-image of every target (a step line
//! each; failed workspaces keep a curve below 100%), p50 and p99 guides, axes and a legend.

use std::fmt::Write as _;

const WIDTH: f64 = 860.0;
const HEIGHT: f64 = 480.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 230.0;
const TOP: f64 = 44.0;
const BOTTOM: f64 = 56.0;
const COLOURS: [&str; 8] = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf"];

/// One target's curve.
pub struct Series<'a> {
    pub name: &'a str,
    /// Ascending times-to-image of the workspaces that got their image (ms).
    pub sorted_ms: &'a [f64],
    /// All workspaces, failed ones included: the curve's 100%.
    pub workspaces: usize,
}

/// What the axes say: the time measured, and what the share of workspaces have.
pub struct Axes {
    pub time: &'static str,
    pub share: &'static str,
}

/// A storm that ends with the image (the HTTP client, `ctr images pull`).
pub const TIME_TO_IMAGE: Axes = Axes { time: "time to image (ms, from the workspace's start to its last verified byte)", share: "workspaces with their image" };
/// A storm whose workspaces read files of their rootfs (`--read-file`).
pub const TIME_TO_FILES: Axes = Axes { time: "time until the files are read (ms, from the workspace's start: pull, mount, read)", share: "workspaces with their files read" };

pub fn cdf(title: &str, axes: &Axes, series: &[Series]) -> String {
    let x_max = nice_ceiling(series.iter().filter_map(|s| s.sorted_ms.last().copied()).fold(0.0, f64::max));
    let plot_w = WIDTH - LEFT - RIGHT;
    let plot_h = HEIGHT - TOP - BOTTOM;
    let x = |ms: f64| LEFT + ms / x_max * plot_w;
    let y = |fraction: f64| TOP + (1.0 - fraction) * plot_h;
    let mut svg = String::new();
    let _ = writeln!(svg, r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif" font-size="12">"#);
    let _ = writeln!(svg, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(svg, r#"<text x="{}" y="24" text-anchor="middle" font-size="14">{}</text>"#, LEFT + plot_w / 2.0, escape(title));
    draw_axes(&mut svg, axes, x_max, &x, &y);
    for (i, s) in series.iter().enumerate() {
        let colour = COLOURS[i % COLOURS.len()];
        let _ = writeln!(svg, r#"<polyline fill="none" stroke="{colour}" stroke-width="2" points="{}"/>"#, steps(s, &x, &y));
        legend(&mut svg, i, s, colour);
    }
    svg.push_str("</svg>\n");
    svg
}

fn draw_axes(svg: &mut String, axes: &Axes, x_max: f64, x: &dyn Fn(f64) -> f64, y: &dyn Fn(f64) -> f64) {
    let step = x_max / 5.0;
    for i in 0..=5 {
        let ms = step * f64::from(i);
        let _ = writeln!(svg, r##"<line x1="{0:.1}" y1="{1:.1}" x2="{0:.1}" y2="{2:.1}" stroke="#ddd"/><text x="{0:.1}" y="{3:.1}" text-anchor="middle">{4}</text>"##, x(ms), y(0.0), y(1.0), y(0.0) + 16.0, format_ms(ms));
    }
    for fraction in [0.0, 0.25, 0.5, 0.75, 1.0] {
        let _ = writeln!(svg, r##"<line x1="{0:.1}" y1="{1:.1}" x2="{2:.1}" y2="{1:.1}" stroke="#ddd"/><text x="{3:.1}" y="{4:.1}" text-anchor="end">{5}%</text>"##, x(0.0), y(fraction), x(x_max), x(0.0) - 6.0, y(fraction) + 4.0, fraction * 100.0);
    }
    for (fraction, label) in [(0.5, "p50"), (0.99, "p99")] {
        let _ = writeln!(svg, r##"<line x1="{0:.1}" y1="{1:.1}" x2="{2:.1}" y2="{1:.1}" stroke="#999" stroke-dasharray="4 3"/><text x="{3:.1}" y="{4:.1}" fill="#666">{label}</text>"##, x(0.0), y(fraction), x(x_max), x(x_max) + 4.0, y(fraction) + 4.0);
    }
    let _ = writeln!(svg, r#"<rect x="{:.1}" y="{:.1}" width="{:.1}" height="{:.1}" fill="none" stroke="black"/>"#, x(0.0), y(1.0), x(x_max) - x(0.0), y(0.0) - y(1.0));
    let _ = writeln!(svg, r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text>"#, (x(0.0) + x(x_max)) / 2.0, HEIGHT - 14.0, escape(axes.time));
    let _ = writeln!(svg, r#"<text transform="translate(18 {:.1}) rotate(-90)" text-anchor="middle">{}</text>"#, (y(0.0) + y(1.0)) / 2.0, escape(axes.share));
}

/// The empirical CDF as a step line, starting at 0% on the time axis.
fn steps(series: &Series, x: &dyn Fn(f64) -> f64, y: &dyn Fn(f64) -> f64) -> String {
    let total = series.workspaces.max(1) as f64;
    let mut points = format!("{:.1},{:.1}", x(0.0), y(0.0));
    for (i, &ms) in series.sorted_ms.iter().enumerate() {
        let _ = write!(points, " {:.1},{:.1} {:.1},{:.1}", x(ms), y(i as f64 / total), x(ms), y((i + 1) as f64 / total));
    }
    points
}

fn legend(svg: &mut String, index: usize, series: &Series, colour: &str) {
    let top = TOP + 10.0 + index as f64 * 36.0;
    let left = WIDTH - RIGHT + 36.0;
    let p99 = crate::report::percentile(series.sorted_ms, 99.0).map_or("-".to_owned(), format_ms);
    let failed = series.workspaces - series.sorted_ms.len();
    let _ = writeln!(svg, r#"<line x1="{left}" y1="{top}" x2="{}" y2="{top}" stroke="{colour}" stroke-width="3"/>"#, left + 22.0);
    let _ = writeln!(svg, r#"<text x="{}" y="{}">{}</text>"#, left + 28.0, top + 4.0, escape(series.name));
    let _ = writeln!(svg, r##"<text x="{}" y="{}" fill="#555" font-size="11">p99 {p99}, {failed} failed</text>"##, left + 28.0, top + 18.0);
}

/// A round axis end at or above `max` (1, 2 or 5 times a power of ten).
fn nice_ceiling(max: f64) -> f64 {
    if max <= 0.0 || !max.is_finite() {
        return 1.0;
    }
    let magnitude = 10f64.powf(max.log10().floor());
    [1.0, 2.0, 5.0, 10.0].iter().map(|m| m * magnitude).find(|&v| v >= max).unwrap_or(10.0 * magnitude)
}

fn format_ms(ms: f64) -> String {
    if ms >= 10_000.0 {
        format!("{:.0} s", ms / 1e3)
    } else if ms >= 1000.0 {
        format!("{:.1} s", ms / 1e3)
    } else {
        format!("{ms:.0} ms")
    }
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_each_series() {
        let a = [10.0, 20.0, 30.0];
        let b = [15.0];
        let svg = cdf("t <1>", &TIME_TO_FILES, &[Series { name: "facade", sorted_ms: &a, workspaces: 3 }, Series { name: "nginx & co", sorted_ms: &b, workspaces: 2 }]);
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert_eq!(svg.matches("<polyline").count(), 2);
        assert!(svg.contains("t &lt;1&gt;") && svg.contains("nginx &amp; co") && svg.contains("1 failed"));
        assert!(svg.contains("time until the files are read") && svg.contains("workspaces with their files read"));
        assert_eq!(nice_ceiling(31.0), 50.0);
        assert_eq!(nice_ceiling(0.0), 1.0);
        assert_eq!(nice_ceiling(1000.0), 1000.0);
    }
}
