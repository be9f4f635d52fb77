//! Pictures of a training [`History`]: one panel per quantity (loss, then each metric), its
//! training curve and, when validation was logged, its validation curve, against the epoch.
//! Drawn as SVG with the `plotters` crate (its SVG backend needs no fonts: text is SVG text).

use super::History;
use plotters::prelude::*;
use std::path::Path;

/// A curve: its label, its points and its color.
type Series<'a> = (&'a str, Vec<(f64, f64)>, RGBColor);

/// The quantities to plot: every logged name but the learning rate and the validation
/// copies, loss first, each with its validation name if that was logged.
fn panels(h: &History) -> Vec<(String, Option<String>)> {
    let mut names: Vec<&String> = h
        .history
        .keys()
        .filter(|k| *k != "lr" && !k.starts_with("val_"))
        .collect();
    names.sort_by_key(|k| (*k != "loss", (*k).clone()));
    names
        .into_iter()
        .map(|k| {
            let v = format!("val_{k}");
            let val = h.history.contains_key(&v).then_some(v);
            (k.clone(), val)
        })
        .collect()
}

impl History {
    /// Draws the history into an SVG file at `path` (which must end in `.svg`): one panel per
    /// quantity, 480 px wide each, training curve in blue, validation in orange, the epoch
    /// (from 1) on the x axis. Non-finite values are left out of the curves. An empty history,
    /// another extension or a failed write is an error that says which.
    pub fn plot(&self, path: &Path) -> Result<(), String> {
        if path.extension().and_then(|e| e.to_str()) != Some("svg") {
            return Err(format!("{}: a plot file must end in .svg", path.display()));
        }
        let panels = panels(self);
        if panels.is_empty() || self.epoch.is_empty() {
            return Err(format!("{}: no epochs to plot", path.display()));
        }
        let err =
            |e: &dyn std::fmt::Display| format!("{}: cannot draw the plot: {e}", path.display());
        let width = 480 * panels.len() as u32;
        let root = SVGBackend::new(path, (width, 360)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| err(&e))?;
        let areas = root.split_evenly((1, panels.len()));
        let xs: Vec<f64> = self.epoch.iter().map(|&e| (e + 1) as f64).collect();
        let (x0, x1) = (xs[0], xs[xs.len() - 1].max(xs[0] + 1.0));
        for ((name, val), area) in panels.iter().zip(&areas) {
            let series: Vec<Series<'_>> =
                std::iter::once((name.as_str(), self.get(name), RGBColor(31, 119, 180)))
                    .chain(
                        val.iter()
                            .map(|v| (v.as_str(), self.get(v), RGBColor(255, 127, 14))),
                    )
                    .map(|(label, ys, color)| {
                        let pts = xs
                            .iter()
                            .zip(ys)
                            .filter(|(_, y)| y.is_finite())
                            .map(|(&x, &y)| (x, y))
                            .collect();
                        (label, pts, color)
                    })
                    .collect();
            let ys = series.iter().flat_map(|s| s.1.iter().map(|p| p.1));
            let (lo, hi) = ys.fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), y| {
                (a.min(y), b.max(y))
            });
            let (lo, hi) = if lo.is_finite() && hi > lo {
                let pad = (hi - lo) * 0.05;
                (lo - pad, hi + pad)
            } else if lo.is_finite() {
                (lo - 0.5, lo + 0.5)
            } else {
                (0.0, 1.0)
            };
            let mut chart = ChartBuilder::on(area)
                .caption(name, ("sans-serif", 20))
                .margin(12)
                .x_label_area_size(32)
                .y_label_area_size(56)
                .build_cartesian_2d(x0..x1, lo..hi)
                .map_err(|e| err(&e))?;
            chart
                .configure_mesh()
                .x_desc("epoch")
                .draw()
                .map_err(|e| err(&e))?;
            for (label, pts, color) in series {
                chart
                    .draw_series(LineSeries::new(pts.clone(), color.stroke_width(2)))
                    .map_err(|e| err(&e))?
                    .label(label)
                    .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], color));
                chart
                    .draw_series(pts.into_iter().map(|p| Circle::new(p, 3, color.filled())))
                    .map_err(|e| err(&e))?;
            }
            chart
                .configure_series_labels()
                .background_style(WHITE.mix(0.8))
                .border_style(BLACK)
                .draw()
                .map_err(|e| err(&e))?;
        }
        root.present().map_err(|e| err(&e))
    }
}
