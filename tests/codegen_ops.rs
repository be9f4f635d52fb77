//! Differential tests: for every op on random shapes (odd sizes that exercise the `f32x4`
//! tails, size-1 and broadcast dimensions), the JIT's outputs equal the interpreter's.
//!
//! Tolerance: the one of `tests/common` (`common::close`), where `n` is the number of terms
//! summed into an element (1 for elementwise ops, the reduction length for reductions, `k` for
//! matmul, `kh*kw*c` for convolutions). NaN must match NaN; i32 results exactly.

mod common;

use common::{by_name, close, feeds_with, host_inputs, jit_options, rounded};
use gradlift::codegen::{CompileOptions, MatmulKernel};
use gradlift::init::Rng;
use gradlift::interp;
use gradlift::op::{OpClass, OpKind};
use gradlift::runtime::{self, HostTensor};
use gradlift::{
    BinaryOp, CmpOp, DType, Graph, Literal, NodeId, Op, Padding, ReduceOp, Shape, TensorType,
    UnaryOp,
};
use proptest::prelude::*;
use std::collections::HashMap;

/// How the values of an input are drawn.
#[derive(Clone, Copy, Debug)]
enum Dom {
    /// Uniform in `[lo, hi)`.
    Range(f64, f64),
    /// Integers in `lo..hi` (as f32 for f32 inputs, as i32 for i32 inputs).
    Ints(i64, i64),
    /// Magnitude in `[0.5, 2)`, random sign (denominators).
    AwayFromZero,
    /// One of [`interp::SPECIAL_VALUES`] half of the time (NaN, infinities, signed zeros, a
    /// denormal, ties), else uniform in `[-2, 2)`.
    Special,
}

fn draw(rng: &mut Rng, d: Dom) -> f64 {
    match d {
        Dom::Range(lo, hi) => lo + (hi - lo) * rng.uniform(),
        Dom::Ints(lo, hi) => lo as f64 + rng.below((hi - lo) as u64) as f64,
        Dom::Special => {
            if rng.below(2) == 0 {
                interp::SPECIAL_VALUES[rng.below(interp::SPECIAL_VALUES.len() as u64) as usize]
            } else {
                -2.0 + 4.0 * rng.uniform()
            }
        }
        Dom::AwayFromZero => {
            let m = 0.5 + 1.5 * rng.uniform();
            if rng.below(2) == 0 {
                m
            } else {
                -m
            }
        }
    }
}

/// Compiles `g` with both matmul kernels, runs it on random inputs drawn from `dom(name)`,
/// evaluates it with the interpreter and compares every output (`terms` = summed terms).
fn check(g: &Graph, seed: u64, dom: &dyn Fn(&str) -> Dom, terms: usize) {
    let mut rng = Rng::new(seed);
    let feeds = feeds_with(g, &mut rng, |id, rng| {
        draw(rng, dom(g[id].name.as_deref().unwrap_or_default()))
    });
    let host = host_inputs(g, &feeds);
    // what the JIT sees (rounded to f32)
    let want = interp::eval::<f64>(g, &rounded(g, &feeds)).expect("interpreter");
    let inputs = by_name(&host);
    // other values of the same types: a first call with them leaves every buffer dirty, so a
    // kernel that forgets to write (or zero) part of its result is caught by the second call
    let dirty: Vec<(&str, HostTensor)> = inputs
        .iter()
        .map(|(n, t)| {
            let v: Vec<f64> = t.to_f64().iter().map(|x| 1.5 - 2.0 * x).collect();
            (*n, HostTensor::from_f64(&t.ty(), &v))
        })
        .collect();
    for kernel in [MatmulKernel::Gemm, MatmulKernel::Cranelift] {
        // IEEE denormals, as the interpreter computes (flush-to-zero has its own tests in
        // runtime_fpenv.rs): special values include denormals
        let mut exe =
            runtime::compile(g, &jit_options(kernel)).unwrap_or_else(|e| panic!("compile: {e}"));
        exe.run(&dirty).unwrap();
        let got = exe.run(&inputs).unwrap();
        for (o, (name, t)) in g.outputs().iter().zip(&got) {
            assert_eq!(&o.name, name);
            let w = want.get(o.node).expect("interpreter value");
            assert_eq!(t.shape, w.shape, "output {name}");
            let what = format!("output {name} ({kernel:?})");
            close(&what, &t.to_f64(), &w.data, t.dtype(), terms);
        }
    }
}

fn any_dom(_: &str) -> Dom {
    Dom::Range(-2.0, 2.0)
}

/// A shape of rank 0..=3 with dimensions 1..=9.
fn shape() -> impl Strategy<Value = Vec<usize>> {
    prop::collection::vec(1usize..=9, 0..=3)
}

/// An output shape and two operand shapes that broadcast to it: each operand drops some
/// leading dimensions and sets others to 1.
fn broadcast_pair() -> impl Strategy<Value = (Vec<usize>, Vec<usize>, Vec<usize>)> {
    (shape(), any::<u64>()).prop_map(|(out, bits)| {
        let mut r = Rng::new(bits);
        let mut sub = || {
            let drop = r.below(out.len() as u64 + 1) as usize;
            out[drop..]
                .iter()
                .map(|&d| if r.below(3) == 0 { 1 } else { d })
                .collect::<Vec<_>>()
        };
        let a = sub();
        let b = sub();
        (out, a, b)
    })
}

fn out(g: &mut Graph, id: NodeId) {
    let n = format!("out{}", g.outputs().len());
    g.add_output(&n, id).unwrap();
}

/// Exp, sigmoid, tanh, expm1, log1p and erf (inline polynomial code) over the whole float range and at special
/// values, vector lanes and scalar tail alike.
#[test]
fn transcendentals_at_extremes() {
    let specials = [
        0.0,
        -0.0,
        1e-7,
        -1e-7,
        1e-3,
        0.6249,
        0.6251,
        -0.6251,
        1.0,
        -1.0,
        10.0,
        -10.0,
        20.0,
        -20.0,
        80.0,
        87.5,
        88.5,
        88.72,
        88.73,
        100.0,
        -80.0,
        -87.5,
        -88.5,
        -95.0,
        -103.0,
        -110.0,
        f64::INFINITY,
        f64::NEG_INFINITY,
        f64::NAN,
    ];
    let n = specials.len();
    for u in [
        UnaryOp::Exp,
        UnaryOp::Sigmoid,
        UnaryOp::Tanh,
        UnaryOp::Expm1,
        UnaryOp::Log1p,
        UnaryOp::Erf,
        UnaryOp::Sin,
        UnaryOp::Cos,
    ] {
        let mut g = Graph::new("extremes");
        let c = g
            .constant(TensorType::f32([n]), Literal::Dense(specials.to_vec()))
            .unwrap();
        let y = g.add(Op::Unary(u), &[c]).unwrap();
        out(&mut g, y);
        let want = interp::eval::<f64>(&g, &HashMap::new()).unwrap();
        let mut exe = runtime::compile(&g, &CompileOptions::default()).unwrap();
        let got = exe.run(&[]).unwrap();
        let w = &want.get(y).unwrap().data;
        for (i, (&x, &r)) in got[0].1.as_f32().unwrap().iter().zip(w).enumerate() {
            // the interpreter's f64 result rounded to f32 is the reference
            let r = r as f32;
            let ok = if r.is_nan() {
                x.is_nan()
            } else if r.is_infinite() || r == 0.0 {
                x == r || (x.abs() < 1e-37 && r == 0.0)
            } else {
                ((x - r) / r).abs() <= 1e-5 || (x - r).abs() <= 1e-38
            };
            assert!(ok, "{} of {}: jit {x:e} vs {r:e}", u.name(), specials[i]);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    #[test]
    fn unary(s in shape(), seed in any::<u64>()) {
        for u in UnaryOp::ALL {
            let mut g = Graph::new("unary");
            let x = g.input("x", TensorType::f32(s.clone())).unwrap();
            let y = g.add(Op::Unary(u), &[x]).unwrap();
            out(&mut g, y);
            let dom = move |_: &str| match u {
                UnaryOp::Log | UnaryOp::Sqrt => Dom::Range(0.05, 4.0),
                UnaryOp::Log1p => Dom::Range(-0.95, 4.0),
                UnaryOp::Sign => Dom::Ints(-2, 3),
                _ => Dom::Range(-3.0, 3.0),
            };
            check(&g, seed, &dom, 1);
        }
    }

    #[test]
    fn binary_with_broadcasting((o, a, b) in broadcast_pair(), seed in any::<u64>()) {
        let _ = o;
        for op in BinaryOp::ALL {
            let mut g = Graph::new("binary");
            let x = g.input("a", TensorType::f32(a.clone())).unwrap();
            let y = g.input("b", TensorType::f32(b.clone())).unwrap();
            let z = g.add(Op::Binary(op), &[x, y]).unwrap();
            out(&mut g, z);
            let dom = move |n: &str| match (op, n) {
                (BinaryOp::Div, "b") => Dom::AwayFromZero,
                (BinaryOp::Pow, "a") => Dom::Range(0.1, 3.0),
                _ => Dom::Range(-2.0, 2.0),
            };
            check(&g, seed, &dom, 1);
        }
    }

    #[test]
    fn compare_and_select((o, a, b) in broadcast_pair(), seed in any::<u64>()) {
        for dt in [DType::F32, DType::I32] {
            for c in CmpOp::ALL {
                let mut g = Graph::new("cmp");
                let x = g.input("a", TensorType::new(dt, a.clone())).unwrap();
                let y = g.input("b", TensorType::new(dt, b.clone())).unwrap();
                let m = g.compare(c, x, y).unwrap();
                out(&mut g, m);
                check(&g, seed, &|_| Dom::Ints(-2, 3), 1);
            }
            let mut g = Graph::new("select");
            let m = g.input("m", TensorType::f32(o.clone())).unwrap();
            let x = g.input("a", TensorType::new(dt, a.clone())).unwrap();
            let y = g.input("b", TensorType::new(dt, b.clone())).unwrap();
            let s = g.select(m, x, y).unwrap();
            out(&mut g, s);
            check(&g, seed, &|n| if n == "m" { Dom::Ints(0, 2) } else { Dom::Ints(-50, 50) }, 1);
        }
    }

    #[test]
    fn cast(s in shape(), seed in any::<u64>()) {
        for (from, to) in [(DType::F32, DType::I32), (DType::I32, DType::F32), (DType::F32, DType::F32)] {
            let mut g = Graph::new("cast");
            let x = g.input("x", TensorType::new(from, s.clone())).unwrap();
            let y = g.cast(x, to).unwrap();
            out(&mut g, y);
            check(&g, seed, &|_| Dom::Range(-100.0, 100.0), 1);
        }
    }

    #[test]
    fn reductions(s in prop::collection::vec(1usize..=9, 1..=4), bits in any::<u64>(), keep in any::<bool>(), seed in any::<u64>()) {
        let axes: Vec<usize> = (0..s.len()).filter(|i| bits >> i & 1 == 1).collect();
        let terms: usize = axes.iter().map(|&a| s[a]).product();
        for kind in ReduceOp::ALL {
            let mut g = Graph::new("reduce");
            let x = g.input("x", TensorType::f32(s.clone())).unwrap();
            let y = g.reduce(kind, x, &axes, keep).unwrap();
            out(&mut g, y);
            check(&g, seed, &any_dom, terms);
        }
        let mut g = Graph::new("reduce_i32");
        let x = g.input("x", TensorType::i32(s.clone())).unwrap();
        let y = g.reduce(ReduceOp::Max, x, &axes, keep).unwrap();
        out(&mut g, y);
        check(&g, seed, &|_| Dom::Ints(-1000, 1000), 1);
    }

    #[test]
    fn argmax(s in prop::collection::vec(1usize..=9, 1..=3), axis in 0usize..3, seed in any::<u64>()) {
        let axis = axis % s.len();
        for (dt, dom) in [(DType::F32, Dom::Range(-2.0, 2.0)), (DType::I32, Dom::Ints(-3, 3))] {
            let mut g = Graph::new("argmax");
            let x = g.input("x", TensorType::new(dt, s.clone())).unwrap();
            let y = g.argmax(x, axis).unwrap();
            out(&mut g, y);
            check(&g, seed, &move |_| dom, 1);
        }
    }

    #[test]
    fn data_movement(s in prop::collection::vec(1usize..=7, 1..=4), bits in any::<u64>(), seed in any::<u64>()) {
        let mut r = Rng::new(bits);
        let rank = s.len();
        for dt in [DType::F32, DType::I32] {
            let mut g = Graph::new("movement");
            let x = g.input("x", TensorType::new(dt, s.clone())).unwrap();
            // transpose by a random permutation
            let mut perm: Vec<usize> = (0..rank).collect();
            for i in (1..rank).rev() {
                perm.swap(i, r.below(i as u64 + 1) as usize);
            }
            let t = g.transpose(x, &perm).unwrap();
            out(&mut g, t);
            // reshape to flat and back through a transpose (reshape of a computed value)
            let n: usize = s.iter().product();
            let f = g.reshape(t, [n]).unwrap();
            out(&mut g, f);
            // slice a random box
            let (mut b, mut e) = (vec![], vec![]);
            for &d in &s {
                let lo = r.below(d as u64) as usize;
                let hi = lo + 1 + r.below((d - lo) as u64) as usize;
                b.push(lo);
                e.push(hi);
            }
            let sl = g.slice(x, &b, &e).unwrap();
            out(&mut g, sl);
            // broadcast: add a leading dimension of 3 and expand size-1 dimensions
            let mut small = s.clone();
            small[rank - 1] = 1;
            let y = g.input("y", TensorType::new(dt, small)).unwrap();
            let mut target = vec![3];
            target.extend(&s);
            let bc = g.broadcast(y, target).unwrap();
            out(&mut g, bc);
            // concat along a random axis with a differently sized operand
            let axis = r.below(rank as u64) as usize;
            let mut s2 = s.clone();
            s2[axis] = 1 + r.below(5) as usize;
            let z = g.input("z", TensorType::new(dt, s2)).unwrap();
            let c = g.concat(&[x, z, x], axis).unwrap();
            out(&mut g, c);
            check(&g, seed, &|_| Dom::Ints(-1000, 1000), 1);
        }
    }

    #[test]
    fn matmul(m in 1usize..=40, k in 1usize..=40, n in 1usize..=40, seed in any::<u64>()) {
        let mut g = Graph::new("matmul");
        let a = g.input("a", TensorType::f32([m, k])).unwrap();
        let b = g.input("b", TensorType::f32([k, n])).unwrap();
        let c = g.matmul(a, b).unwrap();
        out(&mut g, c);
        // a transposed operand, as gradients produce
        let bt = g.input("bt", TensorType::f32([n, k])).unwrap();
        let t = g.transpose(bt, &[1, 0]).unwrap();
        let c2 = g.matmul(a, t).unwrap();
        out(&mut g, c2);
        check(&g, seed, &any_dom, k);
    }

    #[test]
    fn conv2d_and_gradients(
        // c up to 5 and o up to 36: the direct paths (pointwise convolutions and the input
        // gradient by im2col + GEMM; `conv2d_paths_at_their_limits` has the other im2col
        // cases), the 16-channel vector loop and its tail
        n in 1usize..=2, h in 1usize..=8, w in 1usize..=8, c in 1usize..=5, o in 1usize..=36,
        kh in 1usize..=3, kw in 1usize..=3, sh in 1usize..=2, sw in 1usize..=2,
        same in any::<bool>(), seed in any::<u64>(),
    ) {
        let padding = if same { Padding::Same } else { Padding::Valid };
        let (Some((oh, _)), Some((ow, _))) = (padding.out_and_pad(h, kh, sh), padding.out_and_pad(w, kw, sw)) else {
            return Ok(());
        };
        let mut g = Graph::new("conv");
        let x = g.input("x", TensorType::f32([n, h, w, c])).unwrap();
        let f = g.input("f", TensorType::f32([kh, kw, c, o])).unwrap();
        let dy = g.input("dy", TensorType::f32([n, oh, ow, o])).unwrap();
        let y = g.conv2d(x, f, [sh, sw], padding).unwrap();
        out(&mut g, y);
        let dx = g.add(Op::Conv2dInputGrad { stride: [sh, sw], padding, shape: Shape(vec![n, h, w, c]) }, &[dy, f]).unwrap();
        out(&mut g, dx);
        let df = g.add(Op::Conv2dFilterGrad { stride: [sh, sw], padding, kernel: [kh, kw] }, &[x, dy]).unwrap();
        out(&mut g, df);
        check(&g, seed, &any_dom, (kh * kw * c).max(n * oh * ow).max(o * kh * kw));
    }

    #[test]
    fn max_pool_and_gradient(
        // c up to 36: the 16-channel vector loop and its tail
        n in 1usize..=2, h in 1usize..=9, w in 1usize..=9, c in 1usize..=36,
        wh in 1usize..=3, ww in 1usize..=3, sh in 1usize..=3, sw in 1usize..=3, seed in any::<u64>(),
    ) {
        let (Some((oh, _)), Some((ow, _))) = (Padding::Valid.out_and_pad(h, wh, sh), Padding::Valid.out_and_pad(w, ww, sw)) else {
            return Ok(());
        };
        let mut g = Graph::new("pool");
        let x = g.input("x", TensorType::f32([n, h, w, c])).unwrap();
        let dy = g.input("dy", TensorType::f32([n, oh, ow, c])).unwrap();
        let y = g.max_pool2d(x, [wh, ww], [sh, sw]).unwrap();
        out(&mut g, y);
        let dx = g.add(Op::MaxPool2dGrad { window: [wh, ww], stride: [sh, sw] }, &[x, dy]).unwrap();
        out(&mut g, dx);
        // disjoint windows (window = stride), the kernel's other path, with uncovered edges
        if sh <= h && sw <= w {
            let (qh, qw) = (h / sh, w / sw);
            let dq = g.input("dq", TensorType::f32([n, qh, qw, c])).unwrap();
            let q = g.max_pool2d(x, [sh, sw], [sh, sw]).unwrap();
            out(&mut g, q);
            let dxq = g.add(Op::MaxPool2dGrad { window: [sh, sw], stride: [sh, sw] }, &[x, dq]).unwrap();
            out(&mut g, dxq);
        }
        // dx sums at most ceil(wh/sh)*ceil(ww/sw) terms
        check(&g, seed, &any_dom, 9);
    }

    #[test]
    fn softmax_family(s in prop::collection::vec(1usize..=9, 1..=3), axis in 0usize..3, seed in any::<u64>()) {
        let axis = axis % s.len();
        let mut g = Graph::new("softmax");
        let x = g.input("x", TensorType::f32(s.clone())).unwrap();
        let y = g.softmax(x, axis).unwrap();
        out(&mut g, y);
        let l = g.log_softmax(x, axis).unwrap();
        out(&mut g, l);
        check(&g, seed, &|_| Dom::Range(-5.0, 5.0), s[axis]);
    }

    #[test]
    fn cross_entropies(n in 1usize..=9, c in 1usize..=12, seed in any::<u64>()) {
        let mut g = Graph::new("xent");
        let z = g.input("z", TensorType::f32([n, c])).unwrap();
        let p = g.input("p", TensorType::f32([n, c])).unwrap();
        let probs = g.softmax(p, 1).unwrap();
        let l = g.softmax_cross_entropy(z, probs).unwrap();
        out(&mut g, l);
        let y = g.input("y", TensorType::i32([n])).unwrap();
        let s = g.sparse_softmax_cross_entropy(z, y).unwrap();
        out(&mut g, s);
        // labels include out-of-range ones (NaN loss)
        let c2 = c as i64;
        check(&g, seed, &move |name| if name == "y" { Dom::Ints(-1, c2 + 1) } else { Dom::Range(-4.0, 4.0) }, c);
    }

    #[test]
    fn one_hot_and_consts(s in shape(), depth in 1usize..=9, seed in any::<u64>()) {
        let mut g = Graph::new("onehot");
        let x = g.input("x", TensorType::i32(s.clone())).unwrap();
        let y = g.one_hot(x, depth).unwrap();
        out(&mut g, y);
        let n: usize = s.iter().product();
        let dense = g.constant(TensorType::f32(s.clone()), Literal::Dense((0..n).map(|i| i as f64 * 0.5 - 1.0).collect())).unwrap();
        let splat = g.scalar(0.25);
        let f = g.cast(x, DType::F32).unwrap();
        let a = g.add2(f, dense).unwrap();
        let a = g.mul(a, splat).unwrap();
        out(&mut g, a);
        let d = depth as i64;
        check(&g, seed, &move |_| Dom::Ints(-1, d + 1), 1);
    }

    /// Gather along any axis and scatter_add into the same table shape, with indices of
    /// rank 0 to 2 that repeat and fall up to two past either end of the axis (clamped).
    #[test]
    fn gather_and_scatter_add(
        table in prop::collection::vec(1usize..=7, 1..=3),
        idx in prop::collection::vec(1usize..=5, 0..=2),
        axis_pick in 0usize..3,
        seed in any::<u64>(),
    ) {
        let axis = axis_pick % table.len();
        let mut g = Graph::new("gather");
        let t = g.input("table", TensorType::f32(table.clone())).unwrap();
        let i = g.input("idx", TensorType::i32(idx.clone())).unwrap();
        let y = g.gather(t, i, axis).unwrap();
        out(&mut g, y);
        let us = g[y].ty.shape.clone();
        let u = g.input("u", TensorType::f32(us)).unwrap();
        let s = g.scatter_add(u, i, axis, table.clone()).unwrap();
        out(&mut g, s);
        let n = table[axis] as i64;
        let terms = idx.iter().product::<usize>();
        check(&g, seed, &move |name| match name {
            "idx" => Dom::Ints(-2, n + 2),
            _ => Dom::Range(-2.0, 2.0),
        }, terms);
    }
}

/// `all_reduce` in a single process (a world of one rank): the sum and the mean are the
/// operand, in the JIT as in the interpreter, alone and between other ops (after the default
/// pipeline too: never fused, never folded).
#[test]
fn all_reduce_over_one_rank() {
    for (seed, dims) in [vec![], vec![1], vec![7], vec![3, 5], vec![2, 3, 1100]]
        .into_iter()
        .enumerate()
    {
        for mean in [false, true] {
            let mut g = Graph::new("all_reduce");
            let x = g.input("x", TensorType::f32(dims.clone())).unwrap();
            let y = g.add(Op::AllReduce { mean }, &[x]).unwrap();
            out(&mut g, y);
            let e = g.exp(y).unwrap();
            let z = g.add(Op::AllReduce { mean: !mean }, &[e]).unwrap();
            let z = g.add2(z, y).unwrap();
            out(&mut g, z);
            check(&g, seed as u64, &|_| Dom::Range(-3.0, 3.0), 1);
            let mut opt = g.clone();
            gradlift::passes::Pipeline::default().run(&mut opt).unwrap();
            check(&opt, seed as u64, &|_| Dom::Range(-3.0, 3.0), 1);
        }
    }
}

/// NaN, infinities, signed zeros and denormals give the interpreter's results in every
/// elementwise op, comparison, select, reduction, argmax and max-pool (and its gradient), plain
/// and after the default pipeline (fused kernels), in vector lanes and scalar tails: e.g.
/// `relu(NaN)`, `max(NaN, 1)`, `max(1, NaN)` and `reduce_max` of a row with a NaN are NaN, and
/// `argmax` and max-pool pick a NaN as the maximum.
#[test]
fn special_values_match_the_interpreter() {
    let special = |_: &str| Dom::Special;
    let run = |g: &Graph, seed: u64, terms: usize| {
        check(g, seed, &special, terms);
        let mut fused = g.clone();
        gradlift::passes::Pipeline::default()
            .run(&mut fused)
            .unwrap();
        check(&fused, seed, &special, terms);
    };
    for (seed, dims) in [[1usize, 5], [3, 7], [2, 9], [4, 8]]
        .into_iter()
        .enumerate()
    {
        let seed = seed as u64;
        let ty = TensorType::f32(dims);
        // elementwise: every unary and binary op, comparisons and select, also chained so
        // that the pipeline fuses them
        let mut g = Graph::new("special_elementwise");
        let x = g.input("x", ty.clone()).unwrap();
        let y = g.input("y", ty.clone()).unwrap();
        for u in UnaryOp::ALL {
            let v = g.add(Op::Unary(u), &[x]).unwrap();
            out(&mut g, v);
        }
        for b in BinaryOp::ALL {
            let v = g.add(Op::Binary(b), &[x, y]).unwrap();
            out(&mut g, v);
        }
        for c in CmpOp::ALL {
            let v = g.add(Op::Compare(c), &[x, y]).unwrap();
            out(&mut g, v);
        }
        let s = g.select(x, y, x).unwrap();
        out(&mut g, s);
        let r = g.relu(y).unwrap();
        let m = g.add(Op::Binary(BinaryOp::Max), &[r, x]).unwrap();
        let n = g.add(Op::Binary(BinaryOp::Min), &[m, y]).unwrap();
        let t = g.tanh(n).unwrap();
        out(&mut g, t);
        run(&g, seed, 1);
        // reductions over each axis and all axes, argmax over each axis
        let mut g = Graph::new("special_reductions");
        let x = g.input("x", ty.clone()).unwrap();
        for axes in [vec![0], vec![1], vec![0, 1]] {
            for kind in ReduceOp::ALL {
                let v = g.reduce(kind, x, &axes, false).unwrap();
                out(&mut g, v);
            }
        }
        for axis in [0, 1] {
            let v = g.add(Op::Argmax { axis }, &[x]).unwrap();
            out(&mut g, v);
        }
        let e = g.relu(x).unwrap();
        let f = g.reduce(ReduceOp::Max, e, &[1], false).unwrap();
        out(&mut g, f);
        run(&g, seed, dims[0].max(dims[1]) * 4);
    }
    // max-pool and its gradient over windows holding NaN and infinities
    for (seed, (window, stride)) in [([2, 2], [2, 2]), ([3, 3], [1, 1]), ([2, 3], [2, 1])]
        .into_iter()
        .enumerate()
    {
        let mut g = Graph::new("special_pool");
        let x = g.input("x", TensorType::f32([2, 6, 7, 21])).unwrap();
        let p = g.add(Op::MaxPool2d { window, stride }, &[x]).unwrap();
        out(&mut g, p);
        let dy = g.input("dy", g[p].ty.clone()).unwrap();
        let d = g
            .add(Op::MaxPool2dGrad { window, stride }, &[x, dy])
            .unwrap();
        out(&mut g, d);
        run(&g, seed as u64 + 10, 9);
    }
}

/// Convolutions whose patch rows cross the direct paths' limits (`kh*kw*c` of 81: forward by
/// im2col, filter gradient direct; 153: both by im2col), which the random shapes above reach
/// rarely, with SAME padding and stride 2.
#[test]
fn conv2d_paths_at_their_limits() {
    for (c, stride, padding) in [
        (9, [1, 1], Padding::Same),
        (9, [2, 1], Padding::Valid),
        (17, [1, 2], Padding::Same),
    ] {
        let (n, h, w, o, k) = (2, 7, 6, 19, 3);
        let (Some((oh, _)), Some((ow, _))) = (
            padding.out_and_pad(h, k, stride[0]),
            padding.out_and_pad(w, k, stride[1]),
        ) else {
            panic!("the kernel fits");
        };
        let mut g = Graph::new("conv_limits");
        let x = g.input("x", TensorType::f32([n, h, w, c])).unwrap();
        let f = g.input("f", TensorType::f32([k, k, c, o])).unwrap();
        let dy = g.input("dy", TensorType::f32([n, oh, ow, o])).unwrap();
        let y = g.conv2d(x, f, stride, padding).unwrap();
        out(&mut g, y);
        let dx = g
            .add(
                Op::Conv2dInputGrad {
                    stride,
                    padding,
                    shape: Shape(vec![n, h, w, c]),
                },
                &[dy, f],
            )
            .unwrap();
        out(&mut g, dx);
        let df = g
            .add(
                Op::Conv2dFilterGrad {
                    stride,
                    padding,
                    kernel: [k, k],
                },
                &[x, dy],
            )
            .unwrap();
        out(&mut g, df);
        check(
            &g,
            c as u64,
            &any_dom,
            (k * k * c).max(n * oh * ow).max(o * k * k),
        );
    }
}

/// A long sum stays accurate in the JIT: the mean of 2^28 copies of 0.883 (a broadcast fused
/// into `reduce_mean`, so no memory is read) is 0.883 within 1e-5 (the rounding of blocks
/// of 1024 additions per register), and the plain
/// reduction of a long row is too. Four f32x4 registers each summing 2^24 terms drifted far
/// off (0.168 for 0.883 over 1.6e9 terms); blocks of 16 Ki elements with an f64 running total
/// do not.
#[test]
fn long_sums_stay_accurate() {
    use gradlift::passes::Pipeline;
    let n = 1usize << 28;
    let mut g = Graph::new("long_mean");
    let x = g.input("x", TensorType::f32([])).unwrap();
    let b = g.broadcast(x, [n]).unwrap();
    let m = g.reduce(ReduceOp::Mean, b, &[0], false).unwrap();
    out(&mut g, m);
    Pipeline::default().run(&mut g).unwrap();
    let mut exe = runtime::compile(&g, &CompileOptions::default()).unwrap();
    let v = 0.883f32;
    let got = exe.run(&[("x", HostTensor::f32([], vec![v]))]).unwrap()[0]
        .1
        .as_f32()
        .unwrap()[0];
    assert!((got - v).abs() <= 1e-5, "mean {got}, want {v}");
    // a plain row of 3 * 2^20 + 5 values 0.1 (blocked, then the remainder groups and tail)
    let n = 3 * (1usize << 20) + 5;
    let mut g = Graph::new("long_sum");
    let x = g.input("x", TensorType::f32([n])).unwrap();
    let s = g.reduce(ReduceOp::Sum, x, &[0], false).unwrap();
    out(&mut g, s);
    let mut exe = runtime::compile(&g, &CompileOptions::default()).unwrap();
    let got = exe
        .run(&[("x", HostTensor::f32([n], vec![0.1; n]))])
        .unwrap()[0]
        .1
        .as_f32()
        .unwrap()[0];
    let want = 0.1f32 as f64 * n as f64;
    assert!(
        ((got as f64 - want) / want).abs() <= 1e-5,
        "sum {got}, want {want}"
    );
}

/// Sums over outer axes stay accurate too: a reduced axis that is not innermost adds one
/// term per row into the output in f32, which alone rounds like a naive f32 sum (a column
/// of 2^25 ones stops at 2^24; 2^25 values 0.1 sum to 2^25 * 0.1 with a relative error of
/// 4e-2). The JIT adds blocks of at most 1024 rows in f32 and the block sums in f64, so the
/// error is that of a 1024-term f32 sum: up to 1.01e-5 of the result for a constant column
/// (-1.4), as for a row summed in registers (`long_sums_stay_accurate`); the bound here is
/// twice that, relative to the sum of the terms' magnitudes. Each case broadcasts small inputs over the reduced axes
/// inside a fused loop, so no large buffer is read, and the exact answer is known: columns
/// of constants (`[N, 3]` over axis 0, and with a kept outer axis, `[2, N, 3]` over axis 1),
/// a mean, a plain reduction of a 16 MB input (columns of 2^20 + 3 constants), mixed signs as the product of two sign-changing factors
/// (`sum_ab p_a q_b = sum p * sum q`, each product exact in f32), and the same over
/// rows summed in registers (axes 0 and 2 of `[A, 3, M]`).
#[test]
fn outer_axis_sums_stay_accurate() {
    use gradlift::passes::Pipeline;
    // (graph, inputs, the exact result in f64, the sum of the terms' magnitudes)
    type Case = (Graph, Vec<(&'static str, HostTensor)>, Vec<f64>, Vec<f64>);
    let compile_and_run = |(mut g, inputs, want, scale): Case| {
        Pipeline::default().run(&mut g).unwrap();
        // broadcasts and products are fused into the sum: no value of the reduced extent
        let large = |id: NodeId| !g[id].op.is_leaf() && g[id].ty.shape.numel() >= 1 << 20;
        assert!(!g.node_ids().into_iter().any(large), "{}", g.name);
        let mut exe = runtime::compile(&g, &CompileOptions::default()).unwrap();
        let got = exe.run(&inputs).unwrap()[0].1.to_f64();
        assert_eq!(got.len(), want.len(), "{}", g.name);
        for (i, ((&x, &w), &s)) in got.iter().zip(&want).zip(&scale).enumerate() {
            let err = (x - w).abs() / s;
            assert!(
                err <= 2e-5,
                "{} [{i}]: {x}, want {w} (error {err:e} of sum |x|)",
                g.name
            );
        }
    };
    let n = (1usize << 25) + 7;
    let c = [1.0f32, 0.1, -0.7];
    let col = |g: &mut Graph, shape: &[usize], c_shape: &[usize]| {
        let x = g.input("c", TensorType::f32(c_shape.to_vec())).unwrap();
        let two = g.scalar(2.0);
        let x2 = g.mul(x, two).unwrap();
        g.broadcast(x2, shape.to_vec()).unwrap()
    };
    // sum over axis 0 of [N, 3]: 2 c_j broadcast down the rows
    let mut g = Graph::new("columns");
    let b = col(&mut g, &[n, 3], &[3]);
    let s = g.reduce(ReduceOp::Sum, b, &[0], false).unwrap();
    out(&mut g, s);
    let want: Vec<f64> = c.iter().map(|&v| 2.0 * v as f64 * n as f64).collect();
    let scale = want.iter().map(|w| w.abs()).collect();
    compile_and_run((
        g,
        vec![("c", HostTensor::f32([3], c.to_vec()))],
        want,
        scale,
    ));
    // the mean over axis 1 of [2, N, 3]: a kept axis outside the reduced one
    let mut g = Graph::new("mean_inside");
    let b = col(&mut g, &[2, n, 3], &[2, 1, 3]);
    let m = g.reduce(ReduceOp::Mean, b, &[1], false).unwrap();
    out(&mut g, m);
    let c6: Vec<f32> = c.iter().chain(&[-3.0, 0.25, 5e-3]).copied().collect();
    let want: Vec<f64> = c6.iter().map(|&v| 2.0 * v as f64).collect();
    let scale = want.iter().map(|w| w.abs()).collect();
    let inputs = vec![("c", HostTensor::f32([2, 1, 3], c6))];
    compile_and_run((g, inputs, want, scale));
    // a plain reduce_sum over axis 0 of an input [M, 4] (16 MB): 1e-2 off before
    let m = (1usize << 20) + 3;
    let c4 = [0.1f32, 1.0, -0.7, 3.3];
    let mut g = Graph::new("plain_columns");
    let x = g.input("x", TensorType::f32([m, 4])).unwrap();
    let s = g.reduce(ReduceOp::Sum, x, &[0], false).unwrap();
    out(&mut g, s);
    let want: Vec<f64> = c4.iter().map(|&v| v as f64 * m as f64).collect();
    let scale = want.iter().map(|w| w.abs()).collect();
    let x = HostTensor::f32([m, 4], c4.repeat(m));
    compile_and_run((g, vec![("x", x)], want, scale));
    // mixed signs: sum over axes 0 and 1 of p[A,1,1] * q[1,B,3], then over axes 0 and 2 of
    // p[A,1,1] * q[1,3,M] (rows of M in registers, A rows per output element)
    let (a, bq) = (1usize << 13, (1usize << 12) + 3);
    let p: Vec<f32> = (0..a).map(|i| (i % 5) as f32 - 1.0).collect();
    let mut rng = Rng::new(5);
    let q: Vec<f32> = (0..bq * 3)
        .map(|_| (rng.uniform() * 2.0 - 0.8) as f32)
        .collect();
    for (name, q_shape, domain, axes) in [
        ("mixed_signs", [1, bq, 3], [a, bq, 3], [0, 1]),
        ("mixed_signs_in_registers", [1, 3, bq], [a, 3, bq], [0, 2]),
    ] {
        let mut g = Graph::new(name);
        let pi = g.input("p", TensorType::f32([a, 1, 1])).unwrap();
        let qi = g.input("q", TensorType::f32(q_shape)).unwrap();
        let pq = g.mul(pi, qi).unwrap();
        assert_eq!(g[pq].ty.shape.dims(), domain);
        let s = g.reduce(ReduceOp::Sum, pq, &axes, false).unwrap();
        out(&mut g, s);
        let sum = |v: &[f32], f: &dyn Fn(f32) -> f64| v.iter().map(|&x| f(x)).sum::<f64>();
        let (sp, sp_abs) = (sum(&p, &|x| x as f64), sum(&p, &|x| x.abs() as f64));
        // q's column j: q[0, b, j] (first case) or q[0, j, b] (second)
        let column = |j: usize| -> Vec<f32> {
            (0..bq)
                .map(|k| {
                    if axes[1] == 1 {
                        q[k * 3 + j]
                    } else {
                        q[j * bq + k]
                    }
                })
                .collect()
        };
        let want: Vec<f64> = (0..3)
            .map(|j| sp * sum(&column(j), &|x| x as f64))
            .collect();
        let scale = (0..3)
            .map(|j| sp_abs * sum(&column(j), &|x| x.abs() as f64))
            .collect();
        let inputs = vec![
            ("p", HostTensor::f32([a, 1, 1], p.clone())),
            ("q", HostTensor::f32(q_shape, q.clone())),
        ];
        compile_and_run((g, inputs, want, scale));
    }
}

/// Plain reductions long enough over outer axes to add in blocks (more than 1024 rows per
/// output element: a remainder block, kept axes outside and inside the split axis, rows
/// summed in registers with blocks of outer rows) match the interpreter, for every kind.
#[test]
fn blocked_outer_reductions_match_the_interpreter() {
    for (shape, axes) in [
        (vec![1500, 5], vec![0]),
        (vec![2, 1100, 3], vec![1]),
        (vec![40, 3, 30, 5], vec![0, 2]),
        (vec![1100, 2, 7], vec![0, 2]),
        (vec![3, 1100, 2, 7], vec![1, 3]),
        (vec![2, 33, 3, 40, 5], vec![1, 3]),
        (vec![3, 2100], vec![0, 1]),
    ] {
        let terms: usize = axes.iter().map(|&a| shape[a]).product();
        for kind in ReduceOp::ALL {
            let mut g = Graph::new("reduce");
            let x = g.input("x", TensorType::f32(shape.clone())).unwrap();
            let y = g.reduce(kind, x, &axes, false).unwrap();
            out(&mut g, y);
            check(&g, 7, &any_dom, terms);
        }
    }
}

/// The differential test of each op kind (the test that compiles it), or `None` for the kinds
/// the JIT does not compute on their own. An exhaustive match: a new op does not compile here
/// until it names its test.
fn jit_test_of(k: OpKind) -> Option<&'static str> {
    use OpKind as K;
    match k {
        K::Neg
        | K::Exp
        | K::Log
        | K::Sqrt
        | K::Abs
        | K::Sign
        | K::Tanh
        | K::Sigmoid
        | K::Relu
        | K::Log1p
        | K::Expm1
        | K::Erf
        | K::Sin
        | K::Cos => Some("unary (every UnaryOp)"),
        K::Add | K::Sub | K::Mul | K::Div | K::Max | K::Min | K::Pow => {
            Some("binary_with_broadcasting (every BinaryOp)")
        }
        K::Eq | K::Ne | K::Lt | K::Le | K::Gt | K::Ge | K::Select => {
            Some("compare_and_select (every CmpOp)")
        }
        K::Cast => Some("cast"),
        K::ReduceSum | K::ReduceMean | K::ReduceMax => Some("reductions (every ReduceOp)"),
        K::Argmax => Some("argmax"),
        K::Reshape | K::Broadcast | K::Transpose | K::Slice | K::Concat => Some("data_movement"),
        K::Matmul => Some("matmul"),
        K::Conv2d | K::Conv2dInputGrad | K::Conv2dFilterGrad => Some("conv2d_and_gradients"),
        K::MaxPool2d | K::MaxPool2dGrad => Some("max_pool_and_gradient"),
        K::Softmax | K::LogSoftmax => Some("softmax_family"),
        K::SoftmaxCrossEntropy | K::SparseSoftmaxCrossEntropy => Some("cross_entropies"),
        K::OneHot | K::Const => Some("one_hot_and_consts"),
        K::Gather | K::ScatterAdd => Some("gather_and_scatter_add"),
        K::Scan => Some("scan.rs: jit_matches_the_interpreter, the_op_file_round_trips_and_runs"),
        K::AllReduce => Some("all_reduce_over_one_rank"),
        // fed or owned by the executable; fused nodes are made by the pipeline (`fusion.rs`);
        // a scan's results are written by its loop
        K::Input | K::Param | K::State | K::Fused | K::FusedResult | K::ScanResult => None,
    }
}

/// Every op that is not a leaf or a fused node has a differential test of its own.
#[test]
fn every_op_has_a_differential_test() {
    for &k in OpKind::ALL {
        let computed = !matches!(k.class(), OpClass::Leaf | OpClass::Fused) || k == OpKind::Const;
        assert_eq!(jit_test_of(k).is_some(), computed, "{}", k.name());
    }
}
