//! Real data in and out of `gradlift run` (the JIT) and `gradlift eval` (the interpreter):
//! `--inputs` and `--params` read safetensors files and `--outputs` writes one
//! (`gradlift::tensor_io`). The two commands agree on the same files; every bad file is an
//! error naming the tensor, what the graph expects and what the file holds.

mod common;

use common::cli::{fails, ok, scratch};
use gradlift::checkpoint::{self, NamedTensor, TensorData};
use gradlift::TensorType;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Saves `tensors` as a gradlift file (what `--outputs` and checkpoints are).
fn save(path: &Path, tensors: &[NamedTensor]) {
    checkpoint::save(path, tensors, &BTreeMap::new()).unwrap();
}

/// Saves `tensors` as a plain safetensors file, without gradlift's metadata (what Python's
/// `safetensors` writes).
fn save_foreign(path: &Path, tensors: &[NamedTensor]) {
    let bytes: Vec<(String, Vec<u8>, safetensors::Dtype, Vec<usize>)> = tensors
        .iter()
        .map(|t| match &t.data {
            TensorData::F32(v) => (
                t.name.clone(),
                v.iter().flat_map(|x| x.to_le_bytes()).collect(),
                safetensors::Dtype::F32,
                t.shape.dims().to_vec(),
            ),
            TensorData::I32(v) => (
                t.name.clone(),
                v.iter().flat_map(|x| x.to_le_bytes()).collect(),
                safetensors::Dtype::I32,
                t.shape.dims().to_vec(),
            ),
        })
        .collect();
    let views: Vec<(String, safetensors::tensor::TensorView)> = bytes
        .iter()
        .map(|(n, b, d, s)| {
            (
                n.clone(),
                safetensors::tensor::TensorView::new(*d, s.clone(), b).unwrap(),
            )
        })
        .collect();
    safetensors::serialize_to_file(views, &None, path).unwrap();
}

/// The tensors of a file written by `--outputs`, by name.
fn read(path: &Path) -> BTreeMap<String, NamedTensor> {
    checkpoint::load(path)
        .unwrap()
        .tensors
        .into_iter()
        .map(|t| (t.name.clone(), t))
        .collect()
}

fn values(t: &NamedTensor) -> Vec<f64> {
    match &t.data {
        TensorData::F32(v) => v.iter().map(|&x| x as f64).collect(),
        TensorData::I32(v) => v.iter().map(|&x| x as f64).collect(),
    }
}

/// Asserts the JIT's outputs file equals the interpreter's, tensor by tensor, within the
/// tests' tolerance (`terms`: the graph's longest sum).
fn files_agree(jit: &Path, interp: &Path, terms: usize) {
    let (j, i) = (read(jit), read(interp));
    assert_eq!(
        j.keys().collect::<Vec<_>>(),
        i.keys().collect::<Vec<_>>(),
        "the two files hold the same tensors"
    );
    for (name, t) in &j {
        let r = &i[name];
        assert_eq!(t.ty(), r.ty(), "{name}");
        common::close(name, &values(t), &values(r), t.dtype(), terms);
    }
}

/// Inputs of `ir/ops/sgd_step.ir` (x f32[4,3], y f32[4,1], lr f32[]) made from `k`.
fn sgd_inputs(k: f32) -> Vec<NamedTensor> {
    vec![
        NamedTensor::f32(
            "x",
            [4, 3],
            (0..12).map(|i| k * (i as f32 - 5.0) / 7.0).collect(),
        ),
        NamedTensor::f32("y", [4, 1], vec![1.0, -2.0, 0.5, 3.0]),
        NamedTensor::f32("lr", Vec::<usize>::new(), vec![0.1]),
    ]
}

/// Inputs of `ir/mlp.ir` (x f32[64,784], labels i32[64]), deterministic.
fn mlp_inputs() -> Vec<NamedTensor> {
    vec![
        NamedTensor::f32(
            "x",
            [64, 784],
            (0..64 * 784)
                .map(|i| ((i * 37) % 256) as f32 / 255.0)
                .collect(),
        ),
        NamedTensor::i32("labels", [64], (0..64).map(|i| (i * 7) % 10).collect()),
    ]
}

fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

#[test]
fn inputs_and_outputs_round_trip_and_the_jit_agrees_with_the_interpreter() {
    let d = scratch("cli-data-round-trip");
    let inputs = d.join("in.safetensors");
    save(&inputs, &sgd_inputs(1.0));
    let (jit, interp) = (d.join("jit.safetensors"), d.join("interp.safetensors"));
    let g = "ir/ops/sgd_step.ir";
    let out = ok(&["run", g, "--inputs", p(&inputs), "--outputs", p(&jit)]);
    ok(&["eval", g, "--inputs", p(&inputs), "--outputs", p(&interp)]);

    // every output, then every update target under `update.NAME`
    let written = read(&jit);
    let names: Vec<&str> = written.keys().map(|k| k.as_str()).collect();
    assert_eq!(names, ["loss", "update.b", "update.step", "update.w"]);
    assert_eq!(written["loss"].ty(), TensorType::f32(Vec::<usize>::new()));
    assert_eq!(written["update.w"].ty(), TensorType::f32([3, 1]));
    assert_eq!(
        values(&written["update.step"]),
        [1.0],
        "the step counter 0 + 1"
    );
    // the file holds what the command printed
    let loss = values(&written["loss"])[0] as f32;
    assert!(out.contains(&format!("loss: f32[] = {loss:?}\n")), "{out}");
    files_agree(&jit, &interp, 4);

    // the inputs are the file's (checked value by value with known params in
    // `params_files_set_the_params_and_bad_ones_are_errors`): other inputs give another loss, and
    // the same values in a plain safetensors file (no gradlift metadata) give the same bits
    let other = d.join("other.safetensors");
    save(&other, &sgd_inputs(3.0));
    let other_out = d.join("other-out.safetensors");
    ok(&["run", g, "--inputs", p(&other), "--outputs", p(&other_out)]);
    assert_ne!(values(&read(&other_out)["loss"]), values(&written["loss"]));
    let foreign = d.join("foreign.safetensors");
    save_foreign(&foreign, &sgd_inputs(1.0));
    let foreign_out = d.join("foreign-out.safetensors");
    ok(&[
        "run",
        g,
        "--inputs",
        p(&foreign),
        "--outputs",
        p(&foreign_out),
    ]);
    assert_eq!(read(&foreign_out), written);

    // without --inputs, the seeded random inputs as before
    let seeded = d.join("seeded.safetensors");
    let a = ok(&["run", g, "--outputs", p(&seeded)]);
    let b = ok(&["run", g, "--seed", "0"]);
    let strip = |s: &str| {
        s.lines()
            .filter(|l| !l.starts_with("compiled"))
            .collect::<Vec<_>>()
            .join("\n")
    };
    assert_eq!(strip(&a), strip(&b));
    assert_eq!(values(&read(&seeded)["update.step"]), [1.0]);
}

#[test]
fn trained_params_from_a_checkpoint_on_the_jit_and_the_interpreter() {
    let d = scratch("cli-data-params");
    let ckpt = d.join("mlp.safetensors");
    let out = ok(&[
        "train",
        "ir/mlp.ir",
        "--limit",
        "320",
        "--steps",
        "3",
        "--save",
        p(&ckpt),
    ]);
    assert!(out.contains("saved"), "{out}");
    let inputs = d.join("in.safetensors");
    save(&inputs, &mlp_inputs());
    let run = |cmd: &str, params: bool, name: &str| -> PathBuf {
        let path = d.join(name);
        let mut args = vec![
            cmd,
            "ir/mlp.ir",
            "--inputs",
            p(&inputs),
            "--outputs",
            p(&path),
        ];
        if params {
            args.extend(["--params", p(&ckpt)]);
        }
        ok(&args);
        path
    };
    let jit = run("run", true, "jit.safetensors");
    let interp = run("eval", true, "interp.safetensors");
    files_agree(&jit, &interp, 784);
    let (trained, initial) = (read(&jit), read(&run("run", false, "init.safetensors")));
    assert_eq!(
        trained.keys().collect::<Vec<_>>(),
        ["accuracy", "loss"],
        "a forward graph: outputs only"
    );
    assert_ne!(
        values(&trained["loss"]),
        values(&initial["loss"]),
        "the trained params are used"
    );

    // the training checkpoint holds Adam's state besides the 4 params: skipped
    let c = checkpoint::load(&ckpt).unwrap();
    assert!(
        c.tensors.len() > 4,
        "{:?}",
        c.tensors.iter().map(|t| &t.name).collect::<Vec<_>>()
    );
}

#[test]
fn bad_inputs_files_are_errors_naming_the_tensor() {
    let d = scratch("cli-data-errors");
    let g = "ir/ops/sgd_step.ir";
    let file = |name: &str, tensors: Vec<NamedTensor>| -> PathBuf {
        let path = d.join(name);
        save(&path, &tensors);
        path
    };
    let mut missing = sgd_inputs(1.0);
    missing.retain(|t| t.name != "lr");
    let mut extra = sgd_inputs(1.0);
    extra.push(NamedTensor::f32("z", [2], vec![0.0, 1.0]));
    let mut dtype = sgd_inputs(1.0);
    dtype[1] = NamedTensor::i32("y", [4, 1], vec![1, 2, 3, 4]);
    let mut shape = sgd_inputs(1.0);
    shape[0] = NamedTensor::f32("x", [3, 4], vec![0.0; 12]);
    let cases = [
        (
            file("missing.st", missing),
            vec!["missing tensor lr", "f32[]"],
        ),
        (
            file("extra.st", extra),
            vec!["unexpected tensor z", "f32[2]"],
        ),
        (
            file("dtype.st", dtype),
            vec![
                "tensor y: dtype mismatch",
                "expects f32[4,1]",
                "has i32[4,1]",
            ],
        ),
        (
            file("shape.st", shape),
            vec![
                "tensor x: shape mismatch",
                "expects f32[4,3]",
                "has f32[3,4]",
            ],
        ),
    ];
    for cmd in ["run", "eval"] {
        for (path, wanted) in &cases {
            let err = fails(&[cmd, g, "--inputs", p(path)]);
            assert!(err.contains(p(path)), "{err}");
            assert!(err.contains("does not hold the model's inputs"), "{err}");
            for w in wanted {
                assert!(err.contains(w), "{cmd} {}: {w:?} in\n{err}", path.display());
            }
        }
        // every problem at once
        let mut all = sgd_inputs(1.0);
        all.retain(|t| t.name != "lr");
        all.push(NamedTensor::f32("z", [1], vec![0.0]));
        let err = fails(&[cmd, g, "--inputs", p(&file("all.st", all))]);
        assert!(
            err.contains("(2 problems)") && err.contains("lr") && err.contains("z"),
            "{err}"
        );

        let text = d.join("not.safetensors");
        std::fs::write(&text, "graph g { }\n this is text, not tensors\n").unwrap();
        let err = fails(&[cmd, g, "--inputs", p(&text)]);
        assert!(err.contains("not a safetensors file"), "{err}");
        let empty = d.join("empty.safetensors");
        std::fs::write(&empty, "").unwrap();
        let err = fails(&[cmd, g, "--inputs", p(&empty)]);
        assert!(
            err.contains("not a safetensors file") && err.contains("empty"),
            "{err}"
        );
        let absent = d.join("absent.safetensors");
        let err = fails(&[cmd, g, "--inputs", p(&absent)]);
        assert!(
            err.contains(p(&absent)) && err.contains("cannot read"),
            "{err}"
        );
        // a truncated file
        let good = file("good.st", sgd_inputs(1.0));
        let bytes = std::fs::read(&good).unwrap();
        let cut = d.join("cut.safetensors");
        std::fs::write(&cut, &bytes[..bytes.len() - 5]).unwrap();
        let err = fails(&[cmd, g, "--inputs", p(&cut)]);
        assert!(err.contains("truncated"), "{err}");
        // an outputs file that cannot be written
        let nowhere = d.join("no-such-dir").join("out.safetensors");
        let err = fails(&[cmd, g, "--outputs", p(&nowhere)]);
        assert!(
            err.contains("no-such-dir") && err.contains("cannot"),
            "{err}"
        );
        // a dtype gradlift has no tensors of (f64), in another writer's file
        let f64_file = d.join("f64.safetensors");
        let bytes: Vec<u8> = 0.1f64.to_le_bytes().to_vec();
        let view =
            safetensors::tensor::TensorView::new(safetensors::Dtype::F64, vec![], &bytes).unwrap();
        safetensors::serialize_to_file(vec![("lr", view)], &None, &f64_file).unwrap();
        let err = fails(&[cmd, g, "--inputs", p(&f64_file)]);
        assert!(
            err.contains("unusable safetensors file: tensor lr") && err.contains("F64"),
            "{err}"
        );
    }
}

#[test]
fn params_files_set_the_params_and_bad_ones_are_errors() {
    let d = scratch("cli-data-param-errors");
    let g = "ir/ops/sgd_step.ir";
    let good = vec![
        NamedTensor::f32("w", [3, 1], vec![0.5, -0.5, 1.0]),
        NamedTensor::f32("b", [1], vec![0.25]),
        NamedTensor::f32("step", Vec::<usize>::new(), vec![7.0]),
    ];
    let path = d.join("good.st");
    save(&path, &good);
    let out_path = d.join("out.st");
    ok(&["run", g, "--params", p(&path), "--outputs", p(&out_path)]);
    assert_eq!(
        values(&read(&out_path)["update.step"]),
        [8.0],
        "state from the file"
    );
    let interp = d.join("interp.st");
    ok(&["eval", g, "--params", p(&path), "--outputs", p(&interp)]);
    files_agree(&out_path, &interp, 4);

    // with both files every value is known: one SGD step by hand, in f64
    let inputs = d.join("in.st");
    save(&inputs, &sgd_inputs(1.0));
    let both = d.join("both.st");
    let args = [
        "--inputs",
        p(&inputs),
        "--params",
        p(&path),
        "--outputs",
        p(&both),
    ];
    ok(&[&["run", g][..], &args].concat());
    let got = read(&both);
    let x: Vec<f64> = (0..12).map(|i| (i as f32 - 5.0) as f64 / 7.0).collect();
    let (y, w, b, lr) = ([1.0, -2.0, 0.5, 3.0], [0.5, -0.5, 1.0], 0.25, 0.1f32 as f64);
    let err: Vec<f64> = (0..4)
        .map(|r| (0..3).map(|c| x[r * 3 + c] * w[c]).sum::<f64>() + b - y[r])
        .collect();
    let loss = err.iter().map(|e| e * e).sum::<f64>() / 4.0;
    let dw: Vec<f64> = (0..3)
        .map(|c| (0..4).map(|r| x[r * 3 + c] * err[r] * 0.5).sum())
        .collect();
    let db: f64 = err.iter().map(|e| e * 0.5).sum();
    let want_w: Vec<f64> = (0..3).map(|c| w[c] - lr * dw[c]).collect();
    common::close(
        "loss",
        &values(&got["loss"]),
        &[loss],
        gradlift::DType::F32,
        4,
    );
    common::close(
        "w",
        &values(&got["update.w"]),
        &want_w,
        gradlift::DType::F32,
        4,
    );
    common::close(
        "b",
        &values(&got["update.b"]),
        &[b - lr * db],
        gradlift::DType::F32,
        4,
    );
    assert_eq!(values(&got["update.step"]), [8.0]);

    let mut shape = good.clone();
    shape[0] = NamedTensor::f32("w", [1, 3], vec![0.5, -0.5, 1.0]);
    let bad = d.join("shape.st");
    save(&bad, &shape);
    for cmd in ["run", "eval"] {
        let err = fails(&[cmd, g, "--params", p(&bad)]);
        assert!(err.contains("does not hold the model's params"), "{err}");
        assert!(
            err.contains("tensor w: shape mismatch")
                && err.contains("expects f32[3,1]")
                && err.contains("has f32[1,3]"),
            "{err}"
        );
    }
    let mut missing = good.clone();
    missing.remove(1);
    let bad = d.join("missing.st");
    save(&bad, &missing);
    let err = fails(&["run", g, "--params", p(&bad)]);
    assert!(
        err.contains("missing tensor b (the model expects f32[1])"),
        "{err}"
    );
    let mut nan = good;
    nan[1] = NamedTensor::f32("b", [1], vec![f32::NAN]);
    let bad = d.join("nan.st");
    save(&bad, &nan);
    let err = fails(&["eval", g, "--params", p(&bad)]);
    assert!(err.contains("tensor b") && err.contains("NaN"), "{err}");
}
