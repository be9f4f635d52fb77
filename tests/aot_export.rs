//! Ahead-of-time export (`gradlift compile --emit obj`): the object file, its header and
//! initial values, a C program linked against them and the runtime kernels' static library
//! (`runtime-c/`) training the MLP bit for bit as the JIT does, and the command's errors.

mod common;

use common::cli::{fails, ok, run, scratch};
use gradlift::codegen::kernels::Kernel;
use gradlift::codegen::CompileOptions;
use gradlift::init::Rng;
use gradlift::optim::Optimizer;
use gradlift::passes::Pipeline;
use gradlift::runtime::{self, HostTensor, TensorData};
use gradlift::shape::DType;
use object::{Object, ObjectSymbol};
use std::path::{Path, PathBuf};
use std::process::Command;

/// `ir/NAME.ir`, as a path string.
fn ir(name: &str) -> String {
    common::ir_dir()
        .join(format!("{name}.ir"))
        .display()
        .to_string()
}

/// `gradlift compile ir/mlp.ir --train --optimizer sgd -o DIR/step.o`: the object, header
/// and initial-values paths.
fn compile_mlp_step(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let obj = dir.join("step.o");
    let out = ok(&[
        "compile",
        &ir("mlp"),
        "--train",
        "--optimizer",
        "sgd",
        "--emit",
        "obj",
        "-o",
        obj.to_str().unwrap(),
    ]);
    assert!(out.contains("function gradlift_mlp"), "{out}");
    (obj, dir.join("step.h"), dir.join("step.init"))
}

#[test]
fn the_object_file_exports_the_step_and_imports_the_kernels() {
    let dir = scratch("aot_object");
    let (obj, header, init) = compile_mlp_step(&dir);
    let bytes = std::fs::read(&obj).unwrap();
    let file = object::File::parse(&*bytes).expect("a valid object file");
    assert_eq!(file.kind(), object::ObjectKind::Relocatable);
    if cfg!(target_os = "linux") {
        assert_eq!(file.format(), object::BinaryFormat::Elf);
    }
    let step = file
        .symbols()
        .find(|s| s.name() == Ok("gradlift_mlp"))
        .expect("the entry point's symbol");
    assert!(step.is_definition() && step.is_global(), "{step:?}");
    assert!(step.size() > 0, "the entry point has code");
    // every kernel is imported by the name the static library exports
    for k in Kernel::ALL {
        let s = file
            .symbols()
            .find(|s| s.name() == Ok(k.symbol()))
            .unwrap_or_else(|| panic!("{} is not in the object", k.symbol()));
        assert!(s.is_undefined(), "{} is imported", k.symbol());
    }

    // the header: the function, the table in slot order, the arena
    let h = std::fs::read_to_string(&header).unwrap();
    assert!(h.contains("void gradlift_mlp(void *const *table);"), "{h}");
    assert!(h.contains("#define GRADLIFT_MLP_SLOT_COUNT 12"), "{h}");
    assert!(h.contains("#define GRADLIFT_MLP_ARENA_ALIGN 64"), "{h}");
    assert!(h.contains("_mm_setcsr(_mm_getcsr() | 0x8040)"), "{h}");
    let first = h.find("\"x\"").expect("slot x");
    let kernel = h.find("\"dense.kernel\"").expect("slot dense.kernel");
    let loss = h.find("\"loss\"").expect("slot loss");
    assert!(
        first < kernel && kernel < loss,
        "table order: inputs, params, outputs"
    );
    assert!(
        h.contains(
            "{GRADLIFT_PARAM, \"dense.kernel\", GRADLIFT_F32, 2, {784, 128}, 401408, 0, 1},"
        ),
        "{h}"
    );
    // the initial values: every param, then the consts, at the header's offsets
    let init = std::fs::read(&init).unwrap();
    let g = training_step("mlp", &Optimizer::sgd());
    let params: usize = g.params().iter().map(|&p| g[p].ty.shape.numel() * 4).sum();
    assert!(
        init.len() > params,
        "params and consts: {} bytes",
        init.len()
    );
    assert!(h.contains(&format!("#define GRADLIFT_MLP_INIT_BYTES {}", init.len())));
    let exe = runtime::compile(&g, &CompileOptions::default()).unwrap();
    let kernel0 = exe.param("dense.kernel").unwrap();
    let want: Vec<u8> = kernel0
        .as_f32()
        .unwrap()
        .iter()
        .flat_map(|x| x.to_le_bytes())
        .collect();
    assert_eq!(&init[..want.len()], &want[..], "dense.kernel's initializer");
}

/// The training step of `ir/MODEL.ir` as `gradlift compile --train --optimizer OPT` builds it.
fn training_step(model: &str, opt: &Optimizer) -> gradlift::Graph {
    let (_, mut g) = common::load(&common::ir_dir().join(format!("{model}.ir")));
    gradlift::optim::training_step(&mut g, "loss", opt).unwrap();
    Pipeline::default().run(&mut g).unwrap();
    g
}

/// A C program for any exported step: allocates every slot as `step.h` describes it, loads
/// the initial values and the inputs (the input slots' bytes in table order), runs `steps`
/// calls with flush-to-zero and denormals-are-zero (as the JIT does), then writes every
/// param, state and output slot's bytes, in table order.
const C_MAIN: &str = r#"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <xmmintrin.h>
#include "step.h"

static void *read_file(const char *path, size_t want) {
  FILE *f = fopen(path, "rb");
  if (!f) { perror(path); exit(2); }
  void *buf = malloc(want ? want : 1);
  if (fread(buf, 1, want, f) != want) { fprintf(stderr, "%s: short file\n", path); exit(2); }
  fclose(f);
  return buf;
}

int main(int argc, char **argv) {
  if (argc != 6) { fprintf(stderr, "usage: main INIT INPUTS INPUT_BYTES STEPS OUT\n"); return 2; }
  unsigned char *init = read_file(argv[1], STEP_INIT_BYTES);
  unsigned char *inputs = read_file(argv[2], (size_t)atol(argv[3]));
  int steps = atoi(argv[4]);
  void *table[STEP_SLOT_COUNT];
  size_t in_at = 0;
  for (int i = 0; i < STEP_SLOT_COUNT; i++) {
    const step_slot *s = &step_slots[i];
    size_t align = s->kind == GRADLIFT_ARENA ? STEP_ARENA_ALIGN : 64;
    size_t size = (s->bytes + align - 1) / align * align;
    table[i] = aligned_alloc(align, size ? size : align);
    memset(table[i], 0, size);
    if (s->init_offset >= 0) memcpy(table[i], init + s->init_offset, s->bytes);
    if (s->kind == GRADLIFT_INPUT) { memcpy(table[i], inputs + in_at, s->bytes); in_at += s->bytes; }
  }
  unsigned int csr = _mm_getcsr();
  _mm_setcsr(csr | 0x8040);
  for (int t = 0; t < steps; t++) step(table);
  _mm_setcsr(csr);
  FILE *out = fopen(argv[5], "wb");
  if (!out) { perror(argv[5]); return 2; }
  for (int i = 0; i < STEP_SLOT_COUNT; i++) {
    int k = step_slots[i].kind;
    if (k == GRADLIFT_PARAM || k == GRADLIFT_STATE || k == GRADLIFT_OUTPUT)
      fwrite(table[i], 1, step_slots[i].bytes, out);
  }
  fclose(out);
  return 0;
}
"#;

/// Builds `runtime-c/` (the kernels' static library) with the cargo running the tests, in
/// the target directory of this test binary; returns the archive's path.
fn runtime_library() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    // target/PROFILE_DIR/deps/aot_export-HASH
    let profile_dir = exe.parent().and_then(Path::parent).unwrap().to_path_buf();
    let target_dir = profile_dir.parent().unwrap();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    // the profile whose directory this test binary is in (`cargo test` or `--release`)
    let profile = if profile_dir.ends_with("release") {
        "release"
    } else {
        "test"
    };
    let out = Command::new(cargo)
        .args(["build", "-p", "gradlift-runtime", "--profile", profile])
        .arg("--target-dir")
        .arg(target_dir)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("cargo runs");
    assert!(
        out.status.success(),
        "building runtime-c failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lib = profile_dir.join("libgradlift_runtime.a");
    assert!(lib.exists(), "{} was built", lib.display());
    lib
}

/// The bits of a tensor's elements.
fn bits(t: &HostTensor) -> Vec<u32> {
    match &t.data {
        TensorData::F32(v) => v.iter().map(|x| x.to_bits()).collect(),
        TensorData::I32(v) => v.iter().map(|&x| x as u32).collect(),
    }
}

#[test]
fn a_c_program_trains_the_mlp_with_sgd_bit_for_bit_as_the_jit() {
    c_program_matches_the_jit("mlp", "sgd", 0.05, 3);
}

#[test]
fn a_c_program_trains_the_cnn_with_adam_bit_for_bit_as_the_jit() {
    c_program_matches_the_jit("cnn", "adam", 0.001, 2);
}

/// The RNN's step has two loops (the scan and its gradient's reverse scan), each calling a
/// body function of the same object file.
#[test]
fn a_c_program_trains_the_rnn_with_adam_bit_for_bit_as_the_jit() {
    c_program_matches_the_jit("rnn", "adam", 0.001, 2);
}

/// Exports the training step of `ir/MODEL.ir` with `optimizer` as the symbol `step`, links
/// [`C_MAIN`] against it and the static library, runs `steps` steps on fixed inputs (seeded
/// images, labels in 0..10, learning rate `lr`) and compares every param, state and output
/// with the JIT's after the same steps, bit for bit.
fn c_program_matches_the_jit(model: &str, optimizer: &str, lr: f32, steps: usize) {
    if Command::new("cc").arg("--version").output().is_err() {
        eprintln!("SKIPPED: no C compiler `cc` on this machine: the C program cannot be built");
        return;
    }
    let dir = scratch(&format!("aot_c_program_{model}"));
    let obj = dir.join("step.o");
    ok(&[
        "compile",
        &ir(model),
        "--train",
        "--optimizer",
        optimizer,
        "--symbol",
        "step",
        "-o",
        obj.to_str().unwrap(),
    ]);
    let init = dir.join("step.init");
    let lib = runtime_library();

    let opt = match optimizer {
        "sgd" => Optimizer::sgd(),
        _ => Optimizer::adam(),
    };
    let g = training_step(model, &opt);
    let mut exe = runtime::compile(&g, &CompileOptions::default()).unwrap();
    let mut rng = Rng::new(7);
    let mut inputs: Vec<(String, HostTensor)> = Vec::new();
    for (name, ty) in exe.inputs() {
        let n = ty.shape.numel();
        let t = match (name.as_str(), ty.dtype) {
            ("lr", _) => HostTensor::f32(ty.shape.clone(), vec![lr]),
            (_, DType::F32) => HostTensor::f32(
                ty.shape.clone(),
                (0..n).map(|_| rng.uniform() as f32).collect(),
            ),
            (_, DType::I32) => HostTensor::i32(
                ty.shape.clone(),
                (0..n).map(|_| rng.below(10) as i32).collect(),
            ),
        };
        inputs.push((name.clone(), t));
    }
    let input_bytes: Vec<u8> = inputs
        .iter()
        .flat_map(|(_, t)| bits(t).into_iter().flat_map(|b| b.to_le_bytes()))
        .collect();
    let inputs_path = dir.join("inputs.bin");
    std::fs::write(&inputs_path, &input_bytes).unwrap();

    // the JIT's steps
    let initial: Vec<Vec<u32>> = exe.leaves().0.iter().map(|(_, t)| bits(t)).collect();
    let feed: Vec<(&str, HostTensor)> = inputs
        .iter()
        .map(|(n, t)| (n.as_str(), t.clone()))
        .collect();
    let mut outputs = Vec::new();
    for _ in 0..steps {
        outputs = exe.run(&feed).unwrap();
    }
    let (params, states) = exe.leaves();
    let mut want: Vec<(String, Vec<u32>)> = params
        .iter()
        .chain(states.iter())
        .chain(outputs.iter())
        .map(|(n, t)| (n.clone(), bits(t)))
        .collect();
    for ((name, after), before) in want.iter().zip(&initial) {
        assert_ne!(after, before, "{name} changed in {steps} steps");
    }

    // the C program's
    std::fs::write(dir.join("main.c"), C_MAIN).unwrap();
    let bin = dir.join("main");
    let cc = Command::new("cc")
        .args(["-std=c11", "-O1", "-Wall", "-Wextra", "-Werror", "-o"])
        .arg(&bin)
        .arg(dir.join("main.c"))
        .arg(&obj)
        .arg(&lib)
        .args(["-lm", "-lpthread", "-ldl"])
        .current_dir(&dir)
        .output()
        .unwrap();
    assert!(
        cc.status.success(),
        "cc failed:\n{}",
        String::from_utf8_lossy(&cc.stderr)
    );
    let out_path = dir.join("out.bin");
    let ran = Command::new(&bin)
        .arg(&init)
        .arg(&inputs_path)
        .arg(input_bytes.len().to_string())
        .arg(steps.to_string())
        .arg(&out_path)
        .output()
        .unwrap();
    assert!(
        ran.status.success(),
        "the C program failed:\n{}",
        String::from_utf8_lossy(&ran.stderr)
    );
    let got = std::fs::read(&out_path).unwrap();
    let want_len: usize = want.iter().map(|(_, b)| b.len() * 4).sum();
    assert_eq!(got.len(), want_len, "params, state and outputs");
    let mut at = 0;
    for (name, w) in want.drain(..) {
        let g: Vec<u32> = got[at..at + w.len() * 4]
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        at += w.len() * 4;
        let diff = g.iter().zip(&w).filter(|(a, b)| a != b).count();
        assert_eq!(
            diff,
            0,
            "{name}: {diff} of {} values differ from the JIT's",
            w.len()
        );
    }
}

#[test]
fn compile_errors_are_clear() {
    let dir = scratch("aot_errors");
    let obj = dir.join("step.o");
    let obj = obj.to_str().unwrap();
    // a file that does not exist
    let missing = dir.join("missing.ir");
    let err = fails(&["compile", missing.to_str().unwrap(), "-o", obj]);
    assert!(err.contains("missing.ir: cannot read the file"), "{err}");
    // a file that does not parse
    let bad = dir.join("bad.ir");
    std::fs::write(&bad, "graph g {\ninputs:\n  %x: f32[2] = inptu\n}\n").unwrap();
    let err = fails(&["compile", bad.to_str().unwrap(), "-o", obj]);
    assert!(err.contains("bad.ir:3:"), "{err}");
    // an emit kind that does not exist (clap's usage error, exit code 2)
    let (code, _, err) = run(&["compile", &ir("mlp"), "--emit", "exe", "-o", obj]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("invalid value 'exe'") && err.contains("possible values: obj"),
        "{err}"
    );
    // an output in a directory that does not exist
    let nowhere = dir.join("no/such/dir/step.o");
    let err = fails(&["compile", &ir("mlp"), "-o", nowhere.to_str().unwrap()]);
    assert!(
        err.contains("no/such/dir/step.o: cannot write the object file"),
        "{err}"
    );
    // a symbol C cannot declare
    let err = fails(&["compile", &ir("mlp"), "--symbol", "9step", "-o", obj]);
    assert!(err.contains("\"9step\" is not a C identifier"), "{err}");
    // a symbol the object imports
    let err = fails(&["compile", &ir("mlp"), "--symbol", "gl_gemm", "-o", obj]);
    assert!(
        err.contains("\"gl_gemm\" is the name of a runtime kernel"),
        "{err}"
    );
    // outputs that would overwrite each other
    let h = dir.join("step.h");
    let err = fails(&["compile", &ir("mlp"), "-o", h.to_str().unwrap()]);
    assert!(
        err.contains("--header") && err.contains("the same file as the object file"),
        "{err}"
    );
    let err = fails(&[
        "compile",
        &ir("mlp"),
        "--init",
        "x.h",
        "--header",
        "x.h",
        "-o",
        obj,
    ]);
    assert!(
        err.contains("--header and --init are the same file x.h"),
        "{err}"
    );
    // a training step of a graph without a loss
    let err = fails(&["compile", &ir("ops/unary"), "--train", "-o", obj]);
    assert!(err.contains("loss"), "{err}");
    assert!(!Path::new(obj).exists(), "nothing was written");
    let err = fails(&["compile", &ir("mlp"), "--threads", "0", "-o", obj]);
    assert!(err.contains("--threads: at least one thread"), "{err}");
}

#[test]
fn grad_exports_the_gradients_as_outputs_and_updates_nothing() {
    let dir = scratch("aot_grad");
    let obj = dir.join("grad.o");
    let header = dir.join("include/grad.h");
    std::fs::create_dir_all(header.parent().unwrap()).unwrap();
    let out = ok(&[
        "compile",
        &ir("mlp"),
        "--grad",
        "--symbol",
        "mlp_grad",
        "--header",
        header.to_str().unwrap(),
        "-o",
        obj.to_str().unwrap(),
    ]);
    assert!(out.contains("function mlp_grad"), "{out}");
    let h = std::fs::read_to_string(&header).unwrap();
    assert!(h.contains("void mlp_grad(void *const *table);"), "{h}");
    for p in [
        "dense.kernel",
        "dense.bias",
        "dense_1.kernel",
        "dense_1.bias",
    ] {
        assert!(
            h.contains(&format!("output grad_{p}: f32[")),
            "grad_{p}:\n{h}"
        );
    }
    assert!(!h.contains(", updated"), "no update without --train:\n{h}");
    assert!(
        dir.join("grad.init").exists(),
        "the initial values next to the object"
    );
    // --train and --grad are two different graphs
    let (code, _, err) = run(&["compile", &ir("mlp"), "--grad", "--train", "-o", "x.o"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("cannot be used with"), "{err}");
}

#[test]
fn symbols_are_c_identifiers() {
    use gradlift::aot::default_symbol;
    use gradlift::codegen::is_c_identifier;
    for ok in ["step", "_step", "gradlift_mlp2", "A_1"] {
        assert!(is_c_identifier(ok), "{ok}");
    }
    for bad in ["", "9step", "my-step", "step.o", "st ep", "étape"] {
        assert!(!is_c_identifier(bad), "{bad}");
    }
    let mut g = gradlift::Graph::new("my-net.v2");
    let x = g.input("x", gradlift::TensorType::f32([2])).unwrap();
    g.add_output("y", x).unwrap();
    assert_eq!(default_symbol(&g), "gradlift_my_net_v2");
    assert!(is_c_identifier(&default_symbol(&g)));
}

#[test]
fn every_corpus_graph_exports_an_object_with_its_table() {
    let opts = CompileOptions::default();
    let corpus = common::corpus();
    assert!(corpus.len() > 20, "the corpus: {} graphs", corpus.len());
    for (name, g) in corpus {
        let e = gradlift::aot::export(&g, &opts, "step", "step.init")
            .unwrap_or_else(|err| panic!("{name}: {err}"));
        let file = object::File::parse(&*e.object).unwrap_or_else(|err| panic!("{name}: {err}"));
        assert!(
            file.symbols()
                .any(|s| s.name() == Ok("step") && s.is_definition()),
            "{name}: the entry point"
        );
        // the table the header describes is the JIT executable's
        let exe = runtime::compile(&g, &opts).unwrap_or_else(|err| panic!("{name}: {err}"));
        let kinds: Vec<(&str, &str)> = e.slots.iter().map(|s| (s.kind, s.name.as_str())).collect();
        let (params, states) = exe.leaves();
        let leaves = |kind: &'static str| {
            kinds
                .iter()
                .filter(move |(k, _)| *k == kind)
                .map(|(_, n)| n.to_string())
                .collect::<Vec<_>>()
        };
        let names =
            |l: &[(String, HostTensor)]| l.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>();
        assert_eq!(leaves("param"), names(params), "{name}: params");
        assert_eq!(leaves("state"), names(states), "{name}: state");
        assert_eq!(
            leaves("input"),
            exe.inputs()
                .iter()
                .map(|(n, _)| n.clone())
                .collect::<Vec<_>>(),
            "{name}: inputs"
        );
        assert_eq!(
            e.slots.last().map(|s| (s.kind, s.bytes)),
            Some(("arena", exe.report().arena_bytes)),
            "{name}: the arena"
        );
        let init: usize = e
            .slots
            .iter()
            .filter(|s| s.init_offset.is_some())
            .map(|s| s.bytes)
            .sum();
        assert_eq!(e.init.len(), init, "{name}: initial values");
        assert!(e
            .header
            .contains(&format!("#define STEP_SLOT_COUNT {}", e.slots.len())));
    }
}
