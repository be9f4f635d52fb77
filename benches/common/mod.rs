//! Helpers shared by the benches (each bench uses some of them).
#![allow(dead_code)]

use gradlift::codegen::CompileOptions;
use gradlift::runtime::HostTensor;
use gradlift::{Graph, Shape};

/// Deterministic inputs for a step graph: pixels `x` in [0,1), `labels` 0..9, and the
/// learning rate `lr` = 0.001 when the graph has that input.
pub fn feeds(g: &Graph) -> Vec<(&'static str, HostTensor)> {
    let x = &g[g.find("x").unwrap()].ty;
    let b = x.shape.0[0];
    let xs = (0..x.shape.numel())
        .map(|i| ((i * 37) % 101) as f32 / 101.0)
        .collect();
    let ys = (0..b).map(|i| (i % 10) as i32).collect();
    let mut f = vec![
        ("x", HostTensor::f32(x.shape.clone(), xs)),
        ("labels", HostTensor::i32([b], ys)),
    ];
    if g.find("lr").is_some() {
        f.push(("lr", HostTensor::f32(Shape::scalar(), vec![0.001])));
    }
    f
}

/// Compile options of the benches: defaults without the Cranelift verifier (as a release
/// build compiles).
pub fn opts() -> CompileOptions {
    CompileOptions {
        verify: false,
        ..CompileOptions::default()
    }
}

/// Resets the peak resident set size (Linux: `clear_refs` 5).
pub fn reset_peak() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// Peak resident set size in MB since the last [`reset_peak`] (NaN where `/proc` has none).
pub fn peak_mb() -> f64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    s.lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        .map_or(f64::NAN, |kb| kb / 1024.0)
}
