//! A hand-written SVG line chart of the per-second series: samples go in, a self-contained
//! `<svg>` document comes out, with IDs/s per second as a solid line, the ceiling
//! (4,096,000 IDs/s per worker by default) as a dashed line, labelled axes and a legend.
//! Plain string building keeps plotting crates out of the dependency tree.

use std::fmt::Write;

use crate::stats::{thousands, Sample};

const WIDTH: f64 = 760.0;
const HEIGHT: f64 = 380.0;
const LEFT: f64 = 84.0;
const RIGHT: f64 = 24.0;
const TOP: f64 = 64.0;
const BOTTOM: f64 = 56.0;
const MEASURED: &str = "#1f77b4";
const CEILING: &str = "#d62728";

/// Draws `series` against the `ceiling` line. `workers` only feeds the legend text.
pub fn chart(series: &[Sample], ceiling: f64, workers: usize, title: &str) -> String {
    let peak = series.iter().map(|s| s.ids_per_sec).fold(0.0, f64::max);
    let y_step = nice_step(peak.max(ceiling).max(1.0) * 1.1, 6);
    let y_max = (peak.max(ceiling).max(1.0) * 1.1 / y_step).ceil() * y_step;
    let x_max = series.last().map_or(1.0, |s| s.t).max(1.0);
    let x_step = nice_step(x_max, 10).max(1.0);
    let plot = Plot { x_max, y_max };

    let mut svg = String::with_capacity(8 * 1024);
    // Writing to a String cannot fail, so the results of write! are ignored throughout.
    let _ = write!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif" font-size="12">
<rect width="100%" height="100%" fill="white"/>
<text x="{:.1}" y="24" text-anchor="middle" font-size="15">{}</text>
"#,
        WIDTH / 2.0,
        escape(title)
    );
    axes(&mut svg, &plot, x_step, y_step);
    let ceiling_y = plot.y(ceiling);
    let _ = writeln!(
        svg,
        r#"<line class="ceiling" x1="{LEFT}" y1="{ceiling_y:.1}" x2="{:.1}" y2="{ceiling_y:.1}" stroke="{CEILING}" stroke-width="1.5" stroke-dasharray="6 4"/>"#,
        WIDTH - RIGHT
    );
    if series.is_empty() {
        let _ = writeln!(
            svg,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="middle" fill="gray">no samples</text>"#,
            (LEFT + WIDTH - RIGHT) / 2.0,
            (TOP + HEIGHT - BOTTOM) / 2.0
        );
    } else {
        measured(&mut svg, &plot, series);
    }
    legend(&mut svg, ceiling, workers);
    svg.push_str("</svg>\n");
    svg
}

/// Maps data to pixels inside the plot area.
struct Plot {
    x_max: f64,
    y_max: f64,
}

impl Plot {
    fn x(&self, t: f64) -> f64 {
        LEFT + t / self.x_max * (WIDTH - LEFT - RIGHT)
    }

    fn y(&self, v: f64) -> f64 {
        HEIGHT - BOTTOM - v.min(self.y_max) / self.y_max * (HEIGHT - TOP - BOTTOM)
    }
}

fn axes(svg: &mut String, plot: &Plot, x_step: f64, y_step: f64) {
    let (x0, x1, y0, y1) = (LEFT, WIDTH - RIGHT, HEIGHT - BOTTOM, TOP);
    // Bounded: at most ~7 y ticks and ~11 x ticks by construction of the steps.
    let mut v = 0.0;
    while v <= plot.y_max + y_step * 1e-9 {
        let y = plot.y(v);
        let _ = writeln!(
            svg,
            r##"<line x1="{x0}" y1="{y:.1}" x2="{x1}" y2="{y:.1}" stroke="#e0e0e0"/><text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"##,
            x0 - 6.0,
            y + 4.0,
            si(v)
        );
        v += y_step;
    }
    let mut t = 0.0;
    while t <= plot.x_max + x_step * 1e-9 {
        let x = plot.x(t);
        let _ = writeln!(
            svg,
            r##"<line x1="{x:.1}" y1="{y0}" x2="{x:.1}" y2="{:.1}" stroke="#333"/><text x="{x:.1}" y="{:.1}" text-anchor="middle">{}</text>"##,
            y0 + 5.0,
            y0 + 19.0,
            trim(t)
        );
        t += x_step;
    }
    let _ = writeln!(
        svg,
        r##"<line x1="{x0}" y1="{y0}" x2="{x1}" y2="{y0}" stroke="#333"/><line x1="{x0}" y1="{y0}" x2="{x0}" y2="{y1}" stroke="#333"/>
<text x="{:.1}" y="{:.1}" text-anchor="middle">seconds</text>
<text x="18" y="{:.1}" text-anchor="middle" transform="rotate(-90 18 {:.1})">IDs per second</text>"##,
        (x0 + x1) / 2.0,
        HEIGHT - 14.0,
        (y0 + y1) / 2.0,
        (y0 + y1) / 2.0
    );
}

fn measured(svg: &mut String, plot: &Plot, series: &[Sample]) {
    let points: Vec<String> = series
        .iter()
        .map(|s| format!("{:.1},{:.1}", plot.x(s.t), plot.y(s.ids_per_sec)))
        .collect();
    let _ = writeln!(
        svg,
        r#"<polyline class="measured" points="{}" fill="none" stroke="{MEASURED}" stroke-width="2"/>"#,
        points.join(" ")
    );
    // Dots only while they stay distinguishable.
    if series.len() <= 120 {
        for s in series {
            let _ = writeln!(
                svg,
                r#"<circle cx="{:.1}" cy="{:.1}" r="2.5" fill="{MEASURED}"/>"#,
                plot.x(s.t),
                plot.y(s.ids_per_sec)
            );
        }
    }
}

/// One row above the plot area, so it never hides the lines.
fn legend(svg: &mut String, ceiling: f64, workers: usize) {
    let y = 46.0;
    let x = LEFT;
    let plural = if workers == 1 { "" } else { "s" };
    let _ = write!(
        svg,
        r##"<line x1="{x:.1}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="{MEASURED}" stroke-width="2"/><text x="{:.1}" y="{:.1}">measured IDs/s (each second)</text>
<line x1="{:.1}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="{CEILING}" stroke-width="1.5" stroke-dasharray="6 4"/><text x="{:.1}" y="{:.1}">ceiling {} IDs/s ({workers} worker{plural})</text>
"##,
        x + 28.0,
        x + 36.0,
        y + 4.0,
        x + 250.0,
        x + 278.0,
        x + 286.0,
        y + 4.0,
        thousands(ceiling.round() as u64)
    );
}

/// A round step (1, 2 or 5 times a power of ten) giving at most about `ticks` intervals.
pub fn nice_step(range: f64, ticks: u32) -> f64 {
    if range <= 0.0 || !range.is_finite() {
        return 1.0;
    }
    let raw = range / f64::from(ticks.max(1));
    let magnitude = 10f64.powf(raw.log10().floor());
    let normalized = raw / magnitude;
    let nice = if normalized <= 1.0 {
        1.0
    } else if normalized <= 2.0 {
        2.0
    } else if normalized <= 5.0 {
        5.0
    } else {
        10.0
    };
    nice * magnitude
}

/// Axis labels: 4500000 as `4.5M`, 2000 as `2k`.
pub fn si(v: f64) -> String {
    if v >= 1e6 {
        format!("{}M", trim(v / 1e6))
    } else if v >= 1e3 {
        format!("{}k", trim(v / 1e3))
    } else {
        trim(v)
    }
}

fn trim(v: f64) -> String {
    let s = format!("{v:.2}");
    s.trim_end_matches('0').trim_end_matches('.').to_owned()
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn sample(t: f64, ids_per_sec: f64) -> Sample {
        Sample {
            t,
            ids: ids_per_sec as u64,
            leases: 0,
            errors: 0,
            ids_per_sec,
            leases_per_sec: 0.0,
        }
    }

    #[test]
    fn the_chart_has_one_point_per_sample_and_a_ceiling_line() {
        let series: Vec<Sample> = (1..=5).map(|i| sample(f64::from(i), 3.0e6)).collect();
        let svg = chart(&series, 4_096_000.0, 1, "raw <mode> & co");
        assert!(svg.starts_with("<svg xmlns=\"http://www.w3.org/2000/svg\""));
        assert!(svg.trim_end().ends_with("</svg>"));
        let points = svg
            .split("class=\"measured\" points=\"")
            .nth(1)
            .and_then(|rest| rest.split('"').next())
            .unwrap_or_default();
        assert_eq!(points.split(' ').count(), 5, "{points}");
        assert_eq!(svg.matches("<circle").count(), 5);
        assert!(svg.contains("class=\"ceiling\""));
        assert!(svg.contains("ceiling 4,096,000 IDs/s (1 worker)"));
        assert!(svg.contains("raw &lt;mode&gt; &amp; co"));
        assert!(svg.contains(">seconds<") && svg.contains(">IDs per second<"));
    }

    #[test]
    fn the_ceiling_sits_at_its_value_on_the_y_axis() {
        let svg = chart(&[sample(1.0, 1.0e6)], 4_000_000.0, 1, "t");
        // y range is 0..5M (4M * 1.1 rounded up to a 1M step): 4M is 80 % of the height.
        let expected = HEIGHT - BOTTOM - 0.8 * (HEIGHT - TOP - BOTTOM);
        assert!(
            svg.contains(&format!(
                "class=\"ceiling\" x1=\"{LEFT}\" y1=\"{expected:.1}\""
            )),
            "{svg}"
        );
        assert!(svg.contains(">5M<"));
    }

    #[test]
    fn an_empty_series_still_draws_axes_and_says_so() {
        let svg = chart(&[], 8_192_000.0, 2, "empty");
        assert!(svg.contains("no samples"));
        assert!(svg.contains("(2 workers)"));
        assert!(!svg.contains("<polyline"));
    }

    #[test]
    fn steps_and_labels_are_round() {
        assert_eq!(nice_step(4_500_000.0, 6), 1_000_000.0);
        assert_eq!(nice_step(10.0, 10), 1.0);
        assert_eq!(nice_step(30.0, 10), 5.0);
        assert_eq!(nice_step(0.0, 10), 1.0);
        assert_eq!(si(4_500_000.0), "4.5M");
        assert_eq!(si(2000.0), "2k");
        assert_eq!(si(0.0), "0");
    }
}
