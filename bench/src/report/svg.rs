//! The SVG chart: each workload relative to the ceiling.

use super::{human, ratio_s, Results, Topo, WORKLOADS};

fn esc(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

const BAR_H: f64 = 14.0;
const GROUP_GAP: f64 = 14.0;
const LEFT: f64 = 190.0;
const WIDTH: f64 = 820.0;
const PLOT_W: f64 = 480.0;
const TOP: f64 = 56.0;

/// The largest ratio to the ceiling shown, at least 1.2.
fn max_ratio(r: &Results) -> f64 {
    let mut max_ratio: f64 = 1.2;
    for w in WORKLOADS {
        for t in Topo::ALL {
            if let Some(x) = r.ratio_to(w.id, t, Topo::Ceiling) {
                max_ratio = max_ratio.max(x);
            }
        }
    }
    max_ratio
}

/// The bars of every measured workload; returns them and the y below them.
fn bars(r: &Results, x_of: &dyn Fn(f64) -> f64) -> (String, f64) {
    let mut body = String::new();
    let mut y = TOP;
    for w in WORKLOADS {
        if !r.cells.iter().any(|(id, _, _)| *id == w.id) {
            continue;
        }
        body += &format!(
            "<text x=\"{:.0}\" y=\"{:.1}\" text-anchor=\"end\" font-weight=\"bold\">{}</text>\n",
            LEFT - 8.0,
            y + 2.0 * BAR_H + 4.0,
            esc(w.label)
        );
        for t in Topo::ALL {
            let Some(c) = r.cell(w.id, t) else { continue };
            let label = match (&c.na, c.median()) {
                (Some(na), _) => na.clone(),
                (None, Some(m)) => {
                    format!("{} {} ({})", human(m), w.unit(), ratio_s(r.ratio_to(w.id, t, Topo::Ceiling)))
                }
                (None, None) => "–".into(),
            };
            let x1 = x_of(r.ratio_to(w.id, t, Topo::Ceiling).unwrap_or(0.0));
            body += &format!(
                "<rect x=\"{LEFT:.0}\" y=\"{y:.1}\" width=\"{:.1}\" height=\"{:.1}\" fill=\"{}\"><title>{} {}: {}</title></rect>\n",
                (x1 - LEFT).max(0.0),
                BAR_H - 2.0,
                t.color(),
                esc(w.label),
                t.name(),
                esc(&label)
            );
            body += &format!(
                "<text x=\"{:.1}\" y=\"{:.1}\" font-size=\"10\">{} {}</text>\n",
                x1 + 4.0,
                y + BAR_H - 4.0,
                t.name(),
                esc(&label)
            );
            y += BAR_H;
        }
        y += GROUP_GAP;
    }
    (body, y)
}

/// A grouped horizontal bar chart: for each workload, one bar per topology,
/// length = median relative to the ceiling (1.0), labelled with the value.
pub fn svg(r: &Results, title: &str) -> String {
    let max_ratio = max_ratio(r);
    let x_of = |ratio: f64| LEFT + PLOT_W * (ratio / max_ratio).min(1.0);
    let (body, y) = bars(r, &x_of);
    let height = y + 30.0;
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{WIDTH:.0}\" height=\"{height:.0}\" viewBox=\"0 0 {WIDTH:.0} {height:.0}\" font-family=\"sans-serif\" font-size=\"12\">\n"
    );
    s += &format!("<rect width=\"{WIDTH:.0}\" height=\"{height:.0}\" fill=\"white\"/>\n");
    s += &format!("<text x=\"10\" y=\"22\" font-size=\"15\" font-weight=\"bold\">{}</text>\n", esc(title));
    s += "<text x=\"10\" y=\"40\" font-size=\"11\" fill=\"#555\">median of the rounds, bar length relative to the ceiling (direct veth pair) = 1.0; higher is better</text>\n";
    for (ratio, dash) in [(0.95, "4,3"), (1.0, "")] {
        let x = x_of(ratio);
        let dash = if dash.is_empty() { String::new() } else { format!(" stroke-dasharray=\"{dash}\"") };
        s += &format!(
            "<line x1=\"{x:.1}\" y1=\"{:.0}\" x2=\"{x:.1}\" y2=\"{:.0}\" stroke=\"#444\"{dash}/>\n",
            TOP - 6.0,
            y
        );
        s += &format!(
            "<text x=\"{x:.1}\" y=\"{:.0}\" font-size=\"10\" text-anchor=\"middle\">{ratio:.2}×</text>\n",
            y + 14.0
        );
    }
    s += &body;
    s += "</svg>\n";
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::tests::sample;

    #[test]
    fn svg_is_well_formed_enough() {
        let s = svg(&sample(), "t <1>");
        assert!(s.starts_with("<svg") && s.trim_end().ends_with("</svg>"));
        assert!(s.contains("t &lt;1&gt;"));
        assert!(s.contains("n/a (eBPF SNAT not available)"));
        assert_eq!(s.matches("<rect").count(), 1 + 4 + 3);
    }
}
