//! Trend charts drawn on the server as SVG: one value per build, oldest
//! on the left, each point coloured by its build's status and linking to it.

use maud::{html, Markup};
use serde_json::Value;

const W: f64 = 440.0;
const H: f64 = 150.0;
const LEFT: f64 = 48.0;
const RIGHT: f64 = 10.0;
const TOP: f64 = 22.0;
const BOTTOM: f64 = 18.0;

fn colour(status: &str) -> &'static str {
    match status {
        "success" => "#2e9c3a",
        "warnings" => "#c89400",
        "failure" => "#d0312d",
        "exception" => "#8e44ad",
        _ => "#888",
    }
}

fn label(v: f64) -> String {
    if v.abs() >= 1e6 {
        format!("{:.1}M", v / 1e6)
    } else if v.abs() >= 1e4 {
        format!("{:.0}k", v / 1e3)
    } else if v.fract() == 0.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
    }
}

/// A chart of `points` (`{"value", "commit", "build", "status"}`), or
/// nothing when there are none.
pub fn chart(title: &str, points: &[Value]) -> Markup {
    let vals: Vec<f64> = points.iter().map(|p| p["value"].as_f64().unwrap_or(0.0)).collect();
    if vals.is_empty() {
        return html! {};
    }
    let lo = vals.iter().copied().fold(f64::INFINITY, f64::min).min(0.0);
    let hi = vals.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    // A flat series still gets an axis of some height.
    let hi = if hi > lo { hi } else { lo + 1.0 };
    let span = hi - lo;
    let n = vals.len();
    let x = |i: usize| LEFT + if n == 1 { 0.0 } else { i as f64 * (W - LEFT - RIGHT) / (n - 1) as f64 };
    let y = |v: f64| TOP + (H - TOP - BOTTOM) * (1.0 - (v - lo) / span);
    let line: Vec<String> = vals.iter().enumerate().map(|(i, v)| format!("{:.1},{:.1}", x(i), y(*v))).collect();
    html! {
        svg.chart xmlns="http://www.w3.org/2000/svg" width=(W) height=(H) viewBox={"0 0 " (W) " " (H)} role="img" aria-label=(title) {
            text x="8" y="15" font-size="12" font-weight="600" { (title) }
            line x1=(LEFT) y1=(y(hi)) x2=(W - RIGHT) y2=(y(hi)) stroke="#eee" {}
            line x1=(LEFT) y1=(y(lo)) x2=(W - RIGHT) y2=(y(lo)) stroke="#ccc" {}
            text x=(LEFT - 4.0) y=(y(hi) + 4.0) font-size="10" text-anchor="end" { (label(hi)) }
            text x=(LEFT - 4.0) y=(y(lo) + 4.0) font-size="10" text-anchor="end" { (label(lo)) }
            text x=(LEFT) y=(H - 4.0) font-size="10" fill="#777" { "older" }
            text x=(W - RIGHT) y=(H - 4.0) font-size="10" fill="#777" text-anchor="end" { "newer" }
            polyline points=(line.join(" ")) fill="none" stroke="#4a7ab5" stroke-width="1.5" {}
            @for (i, p) in points.iter().enumerate() {
                @let commit = p["commit"].as_str().unwrap_or_default();
                a href={"/builds/" (p["build"].as_str().unwrap_or_default())} {
                    circle cx=(format!("{:.1}", x(i))) cy=(format!("{:.1}", y(vals[i]))) r="3.5"
                        fill=(colour(p["status"].as_str().unwrap_or_default())) {
                        title { (super::short(commit)) ": " (label(vals[i])) }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_chart_has_a_point_per_build_and_scales_to_its_values() {
        let pts: Vec<Value> = [3.0, 9.0, 6.0]
            .iter()
            .enumerate()
            .map(|(i, v)| json!({"value": v, "commit": format!("c{i}"), "build": format!("b{i}"), "status": "success"}))
            .collect();
        let svg = chart("warnings", &pts).into_string();
        assert_eq!(svg.matches("<circle").count(), 3);
        assert!(svg.contains("href=\"/builds/b2\""));
        // The highest value sits on the top line, zero on the bottom one.
        assert!(svg.contains(&format!("{:.1},{:.1}", LEFT + (W - LEFT - RIGHT) / 2.0, TOP)), "{svg}");
        assert!(svg.contains(">9<") && svg.contains(">0<"), "{svg}");
        assert!(chart("empty", &[]).into_string().is_empty());
    }
}
