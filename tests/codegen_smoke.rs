//! Smoke tests of the JIT against hand-written references (independent of the interpreter).

use gradlift::codegen::{self, CompileOptions, MatmulKernel};
use gradlift::runtime::{self, HostTensor};
use gradlift::{Graph, Init, Padding, TensorType};

fn seq(n: usize, scale: f32) -> Vec<f32> {
    (0..n)
        .map(|i| ((i * 7 % 13) as f32 - 6.0) * scale)
        .collect()
}

fn close(a: &[f32], b: &[f32], tol: f32) {
    assert_eq!(a.len(), b.len());
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        assert!(
            (x - y).abs() <= tol * (1.0 + y.abs()),
            "element {i}: {x} vs {y}"
        );
    }
}

#[test]
fn matmul_both_kernels_match_naive_loops() {
    for &(m, k, n) in &[(1, 1, 1), (3, 5, 7), (8, 17, 33), (5, 4, 16), (2, 3, 20)] {
        let mut g = Graph::new("mm");
        let a = g.input("a", TensorType::f32([m, k])).unwrap();
        let b = g.input("b", TensorType::f32([k, n])).unwrap();
        let c = g.matmul(a, b).unwrap();
        g.add_output("c", c).unwrap();
        let av = seq(m * k, 0.1);
        let bv = seq(k * n, 0.2);
        let mut want = vec![0.0f32; m * n];
        for i in 0..m {
            for j in 0..n {
                for p in 0..k {
                    want[i * n + j] += av[i * k + p] * bv[p * n + j];
                }
            }
        }
        for kernel in [MatmulKernel::Gemm, MatmulKernel::Cranelift] {
            let opts = CompileOptions {
                matmul: kernel,
                ..Default::default()
            };
            let mut exe = runtime::compile(&g, &opts).unwrap();
            let out = exe
                .run(&[
                    ("a", HostTensor::f32([m, k], av.clone())),
                    ("b", HostTensor::f32([k, n], bv.clone())),
                ])
                .unwrap();
            close(out[0].1.as_f32().unwrap(), &want, 1e-5);
        }
    }
}

#[test]
fn mlp_step_runs() {
    let mut g = Graph::new("mlp");
    let x = g.input("x", TensorType::f32([6, 5])).unwrap();
    let y = g.input("y", TensorType::i32([6])).unwrap();
    let w = g
        .param("w", [5, 3], Init::GlorotUniform { seed: 1 })
        .unwrap();
    let b = g.param("b", [3], Init::Zeros).unwrap();
    let h = g.matmul(x, w).unwrap();
    let h = g.add2(h, b).unwrap();
    let h = g.relu(h).unwrap();
    let l = g.sparse_softmax_cross_entropy(h, y).unwrap();
    let l = g.mean_all(l).unwrap();
    g.add_output("loss", l).unwrap();
    let s = g.softmax(h, 1).unwrap();
    g.add_output("s", s).unwrap();
    let mut exe = runtime::compile(&g, &CompileOptions::default()).unwrap();
    let out = exe
        .run(&[
            ("x", HostTensor::f32([6, 5], seq(30, 0.3))),
            ("y", HostTensor::i32([6], vec![0, 1, 2, 0, 1, 2])),
        ])
        .unwrap();
    let s = out[1].1.as_f32().unwrap();
    for r in 0..6 {
        let sum: f32 = s[r * 3..r * 3 + 3].iter().sum();
        assert!((sum - 1.0).abs() < 1e-5);
    }
    assert!(out[0].1.as_f32().unwrap()[0].is_finite());
    let _ = Padding::Same;
    println!("{}", codegen::clif(&g, &CompileOptions::default()).unwrap());
    println!("{}", exe.report());
}

/// Products above `kernels::PARALLEL_FLOPS` are split over threads by rows (m >= n) or by
/// columns (n > m), also with a transposed (strided) operand: same result as one thread.
#[test]
fn large_matmuls_split_over_threads_match_one_thread() {
    use gradlift::codegen::kernels::PARALLEL_FLOPS;
    for &(m, k, n, transpose_b) in &[(401, 400, 403, false), (403, 400, 401, true)] {
        assert!(2 * m * k * n >= PARALLEL_FLOPS);
        let mut g = Graph::new("big");
        let a = g.input("a", TensorType::f32([m, k])).unwrap();
        let b = if transpose_b {
            let bt = g.input("b", TensorType::f32([n, k])).unwrap();
            g.transpose(bt, &[1, 0]).unwrap()
        } else {
            g.input("b", TensorType::f32([k, n])).unwrap()
        };
        let c = g.matmul(a, b).unwrap();
        g.add_output("c", c).unwrap();
        let av = seq(m * k, 0.01);
        let bv = seq(k * n, 0.02);
        let bshape = if transpose_b { [n, k] } else { [k, n] };
        let inputs = [
            ("a", HostTensor::f32([m, k], av.clone())),
            ("b", HostTensor::f32(bshape, bv.clone())),
        ];
        let mut want = vec![0.0f32; m * n];
        for i in 0..m {
            for p in 0..k {
                for j in 0..n {
                    let bij = if transpose_b {
                        bv[j * k + p]
                    } else {
                        bv[p * n + j]
                    };
                    want[i * n + j] += av[i * k + p] * bij;
                }
            }
        }
        for threads in [1, 2, 3] {
            let opts = CompileOptions {
                threads,
                ..Default::default()
            };
            let mut exe = runtime::compile(&g, &opts).unwrap();
            let out = exe.run(&inputs).unwrap();
            close(out[0].1.as_f32().unwrap(), &want, 1e-4);
        }
    }
}

/// The mean of no elements is NaN in compiled code as in the interpreter (numpy's mean of an
/// empty axis), plain and fused (compiled code used to give 0.0).
#[test]
fn the_mean_of_an_empty_axis_is_nan_like_the_interpreter() {
    let text = "graph empty {
inputs:
  %x: f32[0,7] = input
body:
  %m: f32[7] = reduce_mean %x, axes=[0], keepdims=false
  %y: f32[0,7] = mul %x, %x
  %f: f32[7] = reduce_mean %y, axes=[0], keepdims=false
outputs:
  m = %m
  f = %f
}";
    let g = gradlift::text::parse(text, "empty.ir").unwrap();
    for optimize in [false, true] {
        let mut g = g.clone();
        if optimize {
            gradlift::passes::Pipeline::default().run(&mut g).unwrap();
        }
        let want = gradlift::interp::eval_named::<f32>(
            &g,
            &[(
                "x",
                gradlift::interp::Array {
                    shape: [0, 7].into(),
                    data: vec![],
                },
            )],
        )
        .unwrap();
        let mut exe = runtime::compile(&g, &CompileOptions::default()).unwrap();
        let out = exe.run(&[("x", HostTensor::f32([0, 7], vec![]))]).unwrap();
        for (name, t) in out {
            let w = &want.get(g.output(&name).unwrap()).unwrap().data;
            assert!(w.iter().all(|v| v.is_nan()), "interpreter {name}: {w:?}");
            let v = t.as_f32().unwrap();
            assert!(
                v.len() == 7 && v.iter().all(|v| v.is_nan()),
                "jit {name} (optimized {optimize}): {v:?}"
            );
        }
    }
}
