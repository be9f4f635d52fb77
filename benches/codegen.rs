//! Code generation benchmarks: compile time of the corpus MLP and CNN training steps
//! (`ir/mlp.ir`, `ir/cnn.ir` + autodiff gradients + SGD updates, one graph each), their step
//! time in the JIT (both matmul kernels) and in the interpreter, and matmul GFLOP/s of both
//! matmul kernels (criterion's "elements" are FLOPs), fused reductions over either axis, and
//! the allocation-free GEMM kernel against the `gemm` crate.
//! Run with `cargo bench --bench codegen`.

mod common;

use common::{feeds, opts};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use gradlift::codegen::{self, CompileOptions, MatmulKernel};
use gradlift::interp::{self, Array};
use gradlift::optim::{self, Optimizer};
use gradlift::passes::Pipeline;
use gradlift::runtime::{self, HostTensor};
use gradlift::{text, Graph, Init, NodeId, ReduceOp, TensorType};
use std::collections::HashMap;
use std::time::Duration;

/// A training step from the corpus: `ir/NAME.ir` at batch `b` (the files use 64), the
/// gradient of `loss` w.r.t. every param (autodiff) and SGD updates `p <- p - lr * dp`
/// (`optim::training_step`; the learning rate is the input `lr`, which [`feeds`] sets).
fn train_step(name: &str, b: usize) -> Graph {
    let path = format!("{}/ir/{name}.ir", env!("CARGO_MANIFEST_DIR"));
    let src = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let src = src
        .replace("[64,", &format!("[{b},"))
        .replace("[64]", &format!("[{b}]"));
    let mut g = text::parse(&src, &path).unwrap_or_else(|e| panic!("{e}"));
    optim::training_step(&mut g, "loss", &Optimizer::sgd()).unwrap();
    g
}

fn compile_time(c: &mut Criterion) {
    let mut grp = c.benchmark_group("compile");
    for (name, g) in [
        ("mlp_b64", train_step("mlp", 64)),
        ("cnn_b64", train_step("cnn", 64)),
    ] {
        let r = runtime::compile(&g, &opts()).unwrap().report().clone();
        eprintln!("{name}: {r}");
        grp.bench_function(name, |b| b.iter(|| runtime::compile(&g, &opts()).unwrap()));
    }
    grp.finish();
}

fn step_time(c: &mut Criterion) {
    let mut grp = c.benchmark_group("step");
    for (name, g) in [
        ("mlp_b64", train_step("mlp", 64)),
        ("mlp_b8", train_step("mlp", 8)),
        ("cnn_b64", train_step("cnn", 64)),
    ] {
        let inputs = feeds(&g);
        for (kernel, threads) in [
            (MatmulKernel::Gemm, 1),
            (MatmulKernel::Gemm, 2),
            (MatmulKernel::Cranelift, 1),
        ] {
            let o = CompileOptions {
                matmul: kernel,
                threads,
                ..opts()
            };
            let mut exe = runtime::compile(&g, &o).unwrap();
            let id = BenchmarkId::new(format!("{name}/jit"), format!("{kernel:?}/{threads}t"));
            grp.bench_function(id, |b| b.iter(|| exe.run(&inputs).unwrap()));
        }
        // the reference interpreter (f32) on the same graph and inputs
        let feeds: HashMap<NodeId, Array<f32>> = inputs
            .iter()
            .map(|(n, t)| {
                let a = Array::from_f64(t.shape.clone(), &t.to_f64()).unwrap();
                (g.find(n).unwrap(), a)
            })
            .collect();
        grp.bench_function(format!("{name}/interp"), |b| {
            b.iter(|| interp::eval::<f32>(&g, &feeds).unwrap())
        });
    }
    grp.finish();
}

fn matmul(c: &mut Criterion) {
    let mut grp = c.benchmark_group("matmul");
    for (m, k, n) in [
        (64, 784, 128),
        (8, 784, 128),
        (64, 5408, 128),
        (512, 512, 512),
    ] {
        let mut g = Graph::new("mm");
        let a = g.input("a", TensorType::f32([m, k])).unwrap();
        let b = g.input("b", TensorType::f32([k, n])).unwrap();
        let p = g.matmul(a, b).unwrap();
        g.add_output("c", p).unwrap();
        let inputs = [
            (
                "a",
                HostTensor::f32([m, k], (0..m * k).map(|i| (i % 7) as f32 * 0.1).collect()),
            ),
            (
                "b",
                HostTensor::f32([k, n], (0..k * n).map(|i| (i % 5) as f32 * 0.1).collect()),
            ),
        ];
        grp.throughput(Throughput::Elements((2 * m * k * n) as u64));
        let parallel = 2 * m * k * n >= codegen::kernels::PARALLEL_FLOPS;
        for (kernel, threads) in [
            (MatmulKernel::Gemm, 1),
            (MatmulKernel::Gemm, 2),
            (MatmulKernel::Cranelift, 1),
        ] {
            if threads > 1 && !parallel {
                continue; // below the threshold: the same code as one thread
            }
            let o = CompileOptions {
                matmul: kernel,
                threads,
                ..opts()
            };
            let mut exe = runtime::compile(&g, &o).unwrap();
            let name = format!("{kernel:?}/{threads}t");
            let id = BenchmarkId::new(name, format!("{m}x{k}x{n}"));
            grp.bench_function(id, |b| b.iter(|| exe.run(&inputs).unwrap()));
        }
    }
    grp.finish();
}

/// Fused reductions of a product, `reduce(mul(x, y), axes)` over `f32[64,1024]` (after the
/// default pipeline: one fused node), over the innermost axis (accumulated in `f32x4`
/// registers per row) and over the leading axis (accumulated in the output row), and the sum
/// over the leading axis of `f32[43264,32]`, the shape of the reference CNN's conv bias
/// gradient at batch 64 (`64*26*26` pixels, 32 channels). `x` and `y` are params, so a call
/// copies no input; criterion's "elements" are the products.
/// Measured (medians, before and after runs a minute apart, load average 2.5-2.9 on the
/// shared 2-core host): sum over axis 1 212 us with the old per-element read-modify-write of
/// the output, 5.4 us in registers; max over axis 1 160 us -> 5.8 us; over axis 0
/// (unchanged code) 7.3-7.6 us.
fn fused_reduce(c: &mut Criterion) {
    let mut grp = c.benchmark_group("fused_reduce");
    for (kind, axis, (m, n)) in [
        (ReduceOp::Sum, 1, (64, 1024)),
        (ReduceOp::Sum, 0, (64, 1024)),
        (ReduceOp::Max, 1, (64, 1024)),
        (ReduceOp::Max, 0, (64, 1024)),
        (ReduceOp::Sum, 0, (64 * 26 * 26, 32)),
    ] {
        grp.throughput(Throughput::Elements((m * n) as u64));
        let mut g = Graph::new("fused_reduce");
        let init = |seed| Init::Uniform {
            low: -1.0,
            high: 1.0,
            seed,
        };
        let x = g.param("x", [m, n], init(1)).unwrap();
        let y = g.param("y", [m, n], init(2)).unwrap();
        let p = g.mul(x, y).unwrap();
        let r = g.reduce(kind, p, &[axis], false).unwrap();
        g.add_output("r", r).unwrap();
        Pipeline::default().run(&mut g).unwrap();
        let mut exe = runtime::compile(&g, &opts()).unwrap();
        let id = BenchmarkId::new(kind.name(), format!("axis{axis}/{m}x{n}"));
        grp.bench_function(id, |b| b.iter(|| exe.run(&[]).unwrap()));
    }
    grp.finish();
}

/// Plain (unfused) `reduce_sum(x, axes)` of a param `x`: `f32[64,1024]` over either axis,
/// and over the leading axis the shapes of the reference models' bias gradients at batch 64:
/// `f32[43264,32]` (the CNN's convolution, `64*26*26` pixels) and `f32[64,128]` (the MLP's
/// hidden layer).
/// Measured (medians, load average 1.8-2.8): over axis 1 12.3 us with one `f32x4`
/// accumulator per row, 3.4 us with four; over axis 0 (unchanged code) 5.1-5.7 us.
/// Summing `[43264,32]` over axis 0 in blocks of 1024 rows with f64 totals (so it no longer
/// rounds like a naive f32 sum) measured the same as the unblocked loop: median of eight
/// alternating runs 218 us against 221 us (ranges 167-274 and 147-225 us, load average
/// 3.5-5 on the shared 2-core host); `[64,128]` (under 1024 rows: the same loop) 0.78-1.10
/// us against 0.86-1.22 us.
fn plain_reduce(c: &mut Criterion) {
    let mut grp = c.benchmark_group("reduce");
    for (axis, (m, n)) in [
        (1, (64, 1024)),
        (0, (64, 1024)),
        (0, (64 * 26 * 26, 32)),
        (0, (64, 128)),
    ] {
        grp.throughput(Throughput::Elements((m * n) as u64));
        let mut g = Graph::new("reduce");
        let init = Init::Uniform {
            low: -1.0,
            high: 1.0,
            seed: 1,
        };
        let x = g.param("x", [m, n], init).unwrap();
        let r = g.sum(x, &[axis], false).unwrap();
        g.add_output("r", r).unwrap();
        let mut exe = runtime::compile(&g, &opts()).unwrap();
        let id = BenchmarkId::new("reduce_sum", format!("axis{axis}/{m}x{n}"));
        grp.bench_function(id, |b| b.iter(|| exe.run(&[]).unwrap()));
    }
    grp.finish();
}

/// The max-pool kernels the JIT code calls (`kernels::gl_max_pool2d`, `gl_max_pool2d_grad`),
/// called directly, on the reference CNN's activation `f32[64,26,26,32]` (5.5 MB, beyond L2)
/// and on 4 of its images (346 KB, in L2), 2x2 windows, stride 2, beside a copy of the same
/// bytes. Measured on Zen 4 (medians): forward 139 us at 64 images (copy 154 us) and 6.1 us at
/// 4 (copy 7.5 us); gradient 448 us and 19.4 us. The general window loops took 207 / 11.8 us
/// and 639 / 27.5 us: the 2x2 loops (window unrolled) are what made the difference.
fn pool(c: &mut Criterion) {
    use gradlift::codegen::kernels::{gl_max_pool2d, gl_max_pool2d_grad};
    let mut grp = c.benchmark_group("pool");
    for n in [64usize, 4] {
        let (h, w, ch) = (26usize, 26usize, 32usize);
        let (oh, ow) = (h / 2, w / 2);
        grp.throughput(Throughput::Elements((n * h * w * ch) as u64));
        // n, h, w, c, window h/w, stride h/w, out h/w
        let geo: [i64; 10] = [n, h, w, ch, 2, 2, 2, 2, oh, ow].map(|v| v as i64);
        let x: Vec<f32> = (0..n * h * w * ch)
            .map(|i| ((i * 7919) % 1000) as f32 / 500.0 - 1.0)
            .collect();
        let dy: Vec<f32> = (0..n * oh * ow * ch).map(|i| (i % 13) as f32).collect();
        let mut y = vec![0.0f32; n * oh * ow * ch];
        let mut dx = vec![0.0f32; x.len()];
        // the memory limit beside them: one copy of the activation (read 5.5 MB, write 5.5 MB)
        grp.bench_function(format!("copy/{n}x26x26x32"), |b| {
            b.iter(|| dx.copy_from_slice(&x))
        });
        grp.bench_function(format!("max_pool2d/{n}x26x26x32"), |b| {
            b.iter(|| {
                // SAFETY: `x` and `y` have the sizes the geometry `geo` describes.
                unsafe { gl_max_pool2d(x.as_ptr(), y.as_mut_ptr(), geo.as_ptr()) }
            })
        });
        grp.bench_function(format!("max_pool2d_grad/{n}x26x26x32"), |b| {
            b.iter(|| {
                // SAFETY: `x`, `dy` and `dx` have the sizes the geometry `geo` describes.
                unsafe {
                    gl_max_pool2d_grad(x.as_ptr(), dy.as_ptr(), dx.as_mut_ptr(), geo.as_ptr())
                }
            })
        });
    }
    grp.finish();
}

/// Both convolution paths (`kernels::ConvPath`: im2col + GEMM, and the direct loop) for
/// the forward and filter-gradient kernels, called directly on 64 images of 28x28 with a 3x3
/// kernel, 32 outputs and `c` input channels (the reference CNN's first layer is `c = 1`), so
/// that `kernels::DIRECT_MAX_PATCH` and `DIRECT_MAX_PATCH_FILTER_GRAD` (the patch widths
/// `9c` up to which the direct paths are taken) rest on a measurement (figures in their doc
/// comments). Criterion's "elements" are
/// FLOPs (`2 * pixels * 9c * 32`), so its throughput is FLOP/s.
fn conv(c: &mut Criterion) {
    use gradlift::codegen::kernels::{conv2d, conv2d_filter_grad, ConvPath};
    use gradlift::op::ConvGeometry;
    use gradlift::{Padding, Shape};
    let mut grp = c.benchmark_group("conv");
    for ch in [1usize, 3, 8, 16] {
        let (n, h, o) = (64usize, 28usize, 32usize);
        let x_shape = Shape(vec![n, h, h, ch]);
        let w_shape = Shape(vec![3, 3, ch, o]);
        let g = ConvGeometry::new(&x_shape, &w_shape, [1, 1], Padding::Valid).unwrap();
        let flops = 2 * n * g.oh * g.ow * 9 * ch * o;
        grp.throughput(Throughput::Elements(flops as u64));
        let x: Vec<f32> = (0..n * h * h * ch)
            .map(|i| (i % 17) as f32 / 8.0 - 1.0)
            .collect();
        let w: Vec<f32> = (0..9 * ch * o)
            .map(|i| (i % 7) as f32 / 4.0 - 0.8)
            .collect();
        let dy: Vec<f32> = (0..n * g.oh * g.ow * o)
            .map(|i| (i % 13) as f32 / 6.0 - 1.0)
            .collect();
        let mut y = vec![0.0f32; dy.len()];
        let mut dw = vec![0.0f32; w.len()];
        for (path, name) in [(ConvPath::Im2col, "im2col"), (ConvPath::Direct, "direct")] {
            let mut scratch = vec![0.0f32; path.scratch_len(&g)];
            let s = scratch.as_mut_ptr();
            grp.bench_function(BenchmarkId::new(format!("forward/{name}"), ch), |b| {
                b.iter(|| {
                    // SAFETY: the buffers have the sizes the geometry describes, the scratch
                    // the path's length.
                    unsafe { conv2d(path, x.as_ptr(), w.as_ptr(), y.as_mut_ptr(), s, &g, None) }
                })
            });
            grp.bench_function(BenchmarkId::new(format!("filter_grad/{name}"), ch), |b| {
                b.iter(|| {
                    // SAFETY: as for the forward.
                    unsafe {
                        conv2d_filter_grad(path, x.as_ptr(), dy.as_ptr(), dw.as_mut_ptr(), s, &g)
                    }
                })
            });
        }
    }
    grp.finish();
}

/// Our allocation-free GEMM (`codegen::gemm::sgemm`, workspace passed in) against the `gemm`
/// crate (`gemm::gemm`, `Parallelism::None`, AVX-512 enabled by its `x86-v4` feature, as
/// `kernels::gemm_strided` calls it), single thread, at the workload shapes and layouts
/// (`aT`: `a` given transposed, `a_rs = 1`; `bT`: `b` transposed). Criterion's "elements" are
/// FLOPs, so its throughput is FLOP/s.
fn gemm_kernel(c: &mut Criterion) {
    use gradlift::codegen::gemm::{sgemm, workspace_len};
    let mut grp = c.benchmark_group("gemm_kernel");
    // (m, k, n, a transposed, b transposed, acc)
    for (m, k, n, at, bt, acc) in [
        (64, 784, 128, false, false, false),
        (8, 784, 128, false, false, false),
        (16, 784, 128, false, false, false),
        (64, 5408, 128, false, false, false),
        (16, 5408, 128, false, false, false),
        (32, 5408, 128, false, false, false),
        (5408, 32, 128, true, false, false),
        (32, 128, 5408, false, true, false),
        (5408, 64, 128, true, false, false),
        (64, 128, 5408, false, true, false),
        (784, 64, 128, true, false, false),
        (676, 9, 32, false, false, false),
        (9, 676, 32, true, false, true),
        (64, 128, 10, false, false, false),
        (10, 64, 128, true, false, false),
        (128, 64, 10, true, false, false),
        (512, 512, 512, false, false, false),
    ] {
        let a: Vec<f32> = (0..m * k).map(|i| (i % 7) as f32 * 0.1).collect();
        let b: Vec<f32> = (0..k * n).map(|i| (i % 5) as f32 * 0.1).collect();
        let mut out = vec![0.0f32; m * n];
        let mut ws = vec![0.0f32; workspace_len(m, k, n)];
        let (a_rs, a_cs) = if at { (1, m as isize) } else { (k as isize, 1) };
        let (b_rs, b_cs) = if bt { (1, k as isize) } else { (n as isize, 1) };
        let shape = format!(
            "{m}x{k}x{n}{}{}{}",
            if at { "_aT" } else { "" },
            if bt { "_bT" } else { "" },
            if acc { "_acc" } else { "" }
        );
        grp.throughput(Throughput::Elements((2 * m * k * n) as u64));
        grp.bench_function(BenchmarkId::new("ours", &shape), |bch| {
            // SAFETY: the buffers cover the matrices the strides describe.
            bch.iter(|| unsafe {
                sgemm(
                    m,
                    k,
                    n,
                    a.as_ptr(),
                    a_rs,
                    a_cs,
                    b.as_ptr(),
                    b_rs,
                    b_cs,
                    out.as_mut_ptr(),
                    n as isize,
                    acc,
                    ws.as_mut_ptr(),
                )
            })
        });
        grp.bench_function(BenchmarkId::new("gemm_crate", &shape), |bch| {
            // SAFETY: as above (`gemm::gemm` takes column stride first).
            bch.iter(|| unsafe {
                gemm::gemm(
                    m,
                    n,
                    k,
                    out.as_mut_ptr(),
                    1,
                    n as isize,
                    acc,
                    a.as_ptr(),
                    a_cs,
                    a_rs,
                    b.as_ptr(),
                    b_cs,
                    b_rs,
                    1.0f32,
                    1.0f32,
                    false,
                    false,
                    false,
                    gemm::Parallelism::None,
                )
            })
        });
    }
    grp.finish();
}

/// What Cranelift's 128-bit vectors cost in the JIT's elementwise loops: two fused loops,
/// `relu(a * b + c)` (light: a load-store loop) and `a / (sqrt(b) + c)` (the divide and square
/// root of Adam's update), as the JIT compiles them (f32x4, FMA, 4x unrolled) against the same
/// loops compiled by rustc for AVX2 + FMA (256-bit) and AVX-512 (512-bit), at n = 16 Ki (the
/// operands in L2) and 4 Mi (memory-bound).
fn simd_width(c: &mut Criterion) {
    let mut grp = c.benchmark_group("simd_width");
    for n in [16 * 1024, 4 * 1024 * 1024] {
        grp.throughput(Throughput::Elements(n as u64));
        for expr in ["relu_fma", "div_sqrt"] {
            let mut g = Graph::new(expr);
            let init = |seed| Init::Uniform {
                low: 0.0,
                high: 1.0,
                seed,
            };
            let a = g.param("a", [n], init(1)).unwrap();
            let b = g.param("b", [n], init(2)).unwrap();
            let cc = g.param("c", [n], init(3)).unwrap();
            let y = if expr == "relu_fma" {
                let p = g.mul(a, b).unwrap();
                let q = g.add2(p, cc).unwrap();
                g.relu(q).unwrap()
            } else {
                let r = g.sqrt(b).unwrap();
                let d = g.add2(r, cc).unwrap();
                g.div(a, d).unwrap()
            };
            g.add_output("y", y).unwrap();
            Pipeline::default().run(&mut g).unwrap();
            let mut exe = runtime::compile(&g, &opts()).unwrap();
            grp.bench_function(
                BenchmarkId::new(format!("{expr}/cranelift_f32x4"), n),
                |bn| bn.iter(|| exe.run_bound()),
            );
            let xs = |s: u64| -> Vec<f32> {
                let mut r = gradlift::init::Rng::new(s);
                (0..n).map(|_| r.uniform() as f32).collect()
            };
            let (av, bv, cv) = (xs(1), xs(2), xs(3));
            let mut yv = vec![0.0f32; n];
            let light = expr == "relu_fma";
            if std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
            {
                grp.bench_function(BenchmarkId::new(format!("{expr}/rustc_avx2"), n), |bn| {
                    // SAFETY: the CPU has AVX2 and FMA (checked above).
                    bn.iter(|| unsafe { loop_avx2(light, &av, &bv, &cv, &mut yv) })
                });
            }
            if std::arch::is_x86_feature_detected!("avx512f") {
                grp.bench_function(BenchmarkId::new(format!("{expr}/rustc_avx512"), n), |bn| {
                    // SAFETY: the CPU has AVX-512F (checked above).
                    bn.iter(|| unsafe { loop_avx512(light, &av, &bv, &cv, &mut yv) })
                });
            }
        }
    }
    grp.finish();
}

/// `relu(a*b + c)` (`light`) or `a / (sqrt(b) + c)`, elementwise.
#[inline(always)]
fn elementwise(light: bool, a: &[f32], b: &[f32], c: &[f32], y: &mut [f32]) {
    if light {
        for (((y, a), b), c) in y.iter_mut().zip(a).zip(b).zip(c) {
            let v = a.mul_add(*b, *c);
            *y = if v > 0.0 { v } else { 0.0 };
        }
    } else {
        for (((y, a), b), c) in y.iter_mut().zip(a).zip(b).zip(c) {
            *y = a / (b.sqrt() + c);
        }
    }
}

#[target_feature(enable = "avx2,fma")]
fn loop_avx2(light: bool, a: &[f32], b: &[f32], c: &[f32], y: &mut [f32]) {
    elementwise(light, a, b, c, y)
}

#[target_feature(enable = "avx512f,fma")]
fn loop_avx512(light: bool, a: &[f32], b: &[f32], c: &[f32], y: &mut [f32]) {
    elementwise(light, a, b, c, y)
}

/// Adam's update of the MLP's 101,770 params (`ir/mlp.ir`) from 1 and 2 shards' gradients,
/// as the training step runs it (one update part: every param, on one thread), computed by
/// the runtime kernel (`body_kernels`, the default) and by the JIT's `f32x4` loop. Bytes:
/// every param, moment and gradient read once, every param and moment written once.
fn adam_update(c: &mut Criterion) {
    let mut grp = c.benchmark_group("adam_update");
    let path = format!("{}/ir/mlp.ir", env!("CARGO_MANIFEST_DIR"));
    let g = text::parse(&std::fs::read_to_string(&path).unwrap(), &path).unwrap();
    for shards in [1usize, 2] {
        let s = optim::sharded_training_step(&g, "loss", &Optimizer::adam(), None, 64, shards, 1)
            .unwrap();
        let mut u = s.update_parts[0].graph.clone();
        let n: usize = u.params().iter().map(|&p| u[p].ty.shape.numel()).sum();
        grp.throughput(Throughput::Bytes((4 * n * (6 + shards)) as u64));
        Pipeline::default().run(&mut u).unwrap();
        for (name, body_kernels) in [("kernel", true), ("jit_loop", false)] {
            let o = CompileOptions {
                body_kernels,
                ..opts()
            };
            let mut exe = runtime::compile(&u, &o).unwrap();
            for i in u.inputs() {
                let input = u[i].name.clone().unwrap();
                for (k, v) in exe.input_f32_mut(&input).unwrap().iter_mut().enumerate() {
                    *v = ((k * 37) % 101) as f32 / 1010.0 - 0.05;
                }
            }
            grp.bench_function(BenchmarkId::new(name, shards), |b| {
                b.iter(|| exe.run_bound())
            });
        }
    }
    grp.finish();
}

/// A convolution layer's forward, `relu(conv2d(x, w) + bias)` over 64 images of 28x28x1 with
/// 32 filters of 3x3 (the CNN's first layer), as one fused node: the kernel that adds the bias
/// and applies relu image by image (`body_kernels`, the default) against the convolution
/// followed by the fused JIT loop over the whole 5.5 MB activation. Elements: FLOPs.
fn conv_layer(c: &mut Criterion) {
    let mut grp = c.benchmark_group("conv_layer");
    let mut g = Graph::new("conv_layer");
    let x = g.param(
        "x",
        [64, 28, 28, 1],
        Init::Uniform {
            low: 0.0,
            high: 1.0,
            seed: 1,
        },
    );
    let w = g.param("w", [3, 3, 1, 32], Init::GlorotUniform { seed: 2 });
    let b = g.param(
        "b",
        [32],
        Init::Uniform {
            low: -0.1,
            high: 0.1,
            seed: 3,
        },
    );
    let (x, w, b) = (x.unwrap(), w.unwrap(), b.unwrap());
    let y = g.conv2d(x, w, [1, 1], gradlift::Padding::Valid).unwrap();
    let y = g.add2(y, b).unwrap();
    let y = g.relu(y).unwrap();
    g.add_output("y", y).unwrap();
    Pipeline::default().run(&mut g).unwrap();
    grp.throughput(Throughput::Elements((2 * 64 * 26 * 26 * 9 * 32) as u64));
    for (name, body_kernels) in [("kernel", true), ("conv_then_jit_loop", false)] {
        let o = CompileOptions {
            body_kernels,
            ..opts()
        };
        let mut exe = runtime::compile(&g, &o).unwrap();
        grp.bench_function(name, |bn| bn.iter(|| exe.run_bound()));
    }
    grp.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(2));
    targets = compile_time, step_time, matmul, fused_reduce, plain_reduce, pool, conv, conv_layer, gemm_kernel, simd_width, adam_update
}
criterion_main!(benches);
