//! Compiled code runs with flush-to-zero and denormals-are-zero and gives the caller its
//! floating-point mode back; the interpreter stays IEEE.

use gradlift::codegen::CompileOptions;
use gradlift::interp::eval_named;
use gradlift::interp::Array;
use gradlift::runtime::compile;
use gradlift::runtime::fpenv::{mxcsr, MXCSR_DAZ, MXCSR_FTZ};
use gradlift::runtime::HostTensor;
use gradlift::text::parse;

const TWICE: &str = "graph twice {
inputs:
  %x: f32[4] = input
body:
  %c: f32[] = const 2.0
  %y: f32[4] = mul %x, %c
outputs:
  y = %y
}";

#[test]
fn denormals_are_flushed_in_compiled_code_only() {
    let g = parse(TWICE, "twice.ir").unwrap();
    let tiny = f32::from_bits(1); // the smallest denormal
    let x = vec![tiny, 1e-39, 1.0, -1e-40];
    let mut exe = compile(&g, &CompileOptions::default()).unwrap();
    let before = mxcsr();
    let out = exe.run(&[("x", HostTensor::f32([4], x.clone()))]).unwrap();
    assert_eq!(mxcsr(), before, "the caller's MXCSR is restored");
    let y = out[0].1.as_f32().unwrap();
    if cfg!(target_arch = "x86_64") {
        assert_eq!(y, &[0.0, 0.0, 2.0, -0.0], "denormal operands read as zero");
        assert_eq!(
            before & (MXCSR_FTZ | MXCSR_DAZ),
            0,
            "the test thread is IEEE"
        );
    }
    let want = eval_named::<f32>(
        &g,
        &[(
            "x",
            Array {
                shape: [4].into(),
                data: x,
            },
        )],
    )
    .unwrap();
    let yi = &want.get(g.output("y").unwrap()).unwrap().data;
    assert_eq!(yi[0], 2.0 * tiny, "the interpreter keeps denormals");
}

#[test]
fn the_bound_path_restores_the_mode_too() {
    let g = parse(TWICE, "twice.ir").unwrap();
    let mut exe = compile(&g, &CompileOptions::default()).unwrap();
    let before = mxcsr();
    exe.input_f32_mut("x").unwrap().fill(1e-39);
    exe.run_bound();
    assert_eq!(mxcsr(), before);
    assert_eq!(exe.output("y").unwrap().as_f32().unwrap(), &[0.0; 4]);
}

#[test]
fn ieee_mode_keeps_denormals() {
    let g = parse(TWICE, "twice.ir").unwrap();
    let opts = CompileOptions {
        flush_denormals: false,
        ..CompileOptions::default()
    };
    let mut exe = compile(&g, &opts).unwrap();
    let tiny = f32::from_bits(1);
    exe.input_f32_mut("x").unwrap().fill(tiny);
    exe.run_bound();
    assert_eq!(exe.output("y").unwrap().as_f32().unwrap(), &[2.0 * tiny; 4]);
}
