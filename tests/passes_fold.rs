//! Constant folding computes what the compiled f32 code computes: a folded graph gives the
//! unfolded graph's results, bit for bit, where f64 arithmetic would differ (an overflow to
//! infinity, a sum past f32's 24-bit significand).

use gradlift::codegen::CompileOptions;
use gradlift::passes::Pipeline;
use gradlift::runtime;
use gradlift::{text, Graph, Op};

/// The output `y` of `g` compiled as is.
fn compiled(g: &Graph) -> f32 {
    let mut exe = runtime::compile(g, &CompileOptions::default()).unwrap();
    let out = exe.run(&[]).unwrap();
    out[0].1.as_f32().unwrap()[0]
}

fn graph(body: &str) -> Graph {
    let src = format!("graph g {{\nbody:\n{body}\noutputs:\n  y = %y\n}}\n");
    text::parse(&src, "fold_case.ir").unwrap()
}

/// Whether the output `y` of `g` is a constant.
fn folded(g: &Graph) -> bool {
    g.output("y")
        .is_some_and(|y| matches!(g[y].op, Op::Const { .. }))
}

#[test]
fn folding_matches_the_unfolded_f32_code() {
    let cases = [
        // 1e300 is infinity in f32, and infinity times zero is NaN (f64: 0)
        (
            "  %a: f32[] = const 1e300\n  %z: f32[] = const 0.0\n  %y: f32[] = mul %a, %z",
            f32::NAN,
            false,
        ),
        // 1e30 * 1e30 overflows f32 (f64: 1e60, and times zero 0)
        (
            "  %a: f32[] = const 1e30\n  %z: f32[] = const 0.0\n  %p: f32[] = mul %a, %a\n  %y: f32[] = mul %p, %z",
            f32::NAN,
            false,
        ),
        // 16777216 + 1 rounds to 16777216 in f32 (f64: the difference is 1)
        (
            "  %a: f32[] = const 16777216.0\n  %o: f32[] = const 1.0\n  %s: f32[] = add %a, %o\n  %y: f32[] = sub %s, %a",
            0.0,
            true,
        ),
    ];
    for (body, want, fold) in cases {
        let g = graph(body);
        let mut h = g.clone();
        Pipeline::default().run(&mut h).unwrap();
        let (before, after) = (compiled(&g), compiled(&h));
        assert!(
            before.to_bits() == after.to_bits() || (before.is_nan() && after.is_nan()),
            "{body}: {before} unfolded, {after} folded"
        );
        assert!(
            after.to_bits() == want.to_bits() || (want.is_nan() && after.is_nan()),
            "{body}: {after}, want {want}"
        );
        // a NaN result is not folded (the text format prints finite numbers)
        assert_eq!(folded(&h), fold, "{body}: {}", text::print(&h));
    }
}
