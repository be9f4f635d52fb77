//! ONNX import (`gradlift::onnx`, `gradlift import`): the models of `tests/onnx/` (written by
//! `tests/onnx/make_models.py` with onnxruntime's outputs on a fixed input) imported, run by
//! the interpreter and the JIT, compared with onnxruntime under the tests' one tolerance
//! (`interp::agrees`); differentiated and trained; and every error the importer reports on
//! an unsupported or malformed file.

mod common;

use common::cli;
use gradlift::checkpoint::{self, NamedTensor, TensorData};
use gradlift::codegen::CompileOptions;
use gradlift::interp;
use gradlift::onnx::proto::{
    AttributeProto, Dimension, DimensionValue, GraphProto, ModelProto, NodeProto,
    OperatorSetIdProto, TensorProto, TensorShapeProto, TypeProto, TypeProtoTensor, ValueInfoProto,
};
use gradlift::onnx::{self, ImportError, ImportOptions, Imported};
use gradlift::runtime::{self, HostTensor};
use gradlift::{tensor_io, text, DType, Graph};
use prost::Message as _;
use std::path::{Path, PathBuf};

fn onnx_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/onnx")
}

fn batch2() -> ImportOptions {
    ImportOptions { batch: Some(2) }
}

/// The model `tests/onnx/NAME.onnx` imported, its inputs and onnxruntime's outputs.
fn model(name: &str) -> (Imported, Vec<NamedTensor>, checkpoint::Checkpoint) {
    let dir = onnx_dir();
    let im = onnx::import_file(dir.join(format!("{name}.onnx")), &batch2())
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    gradlift::verify::verify(&im.graph).unwrap_or_else(|e| panic!("{name}: {e}"));
    let inputs = tensor_io::read_inputs(dir.join(format!("{name}.inputs.safetensors")), &im.graph)
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    let expected = checkpoint::load_tensors(dir.join(format!("{name}.expected.safetensors")))
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    (im, inputs, expected)
}

fn f64s(t: &NamedTensor) -> Vec<f64> {
    match &t.data {
        TensorData::F32(v) => v.iter().map(|&x| f64::from(x)).collect(),
        TensorData::I32(v) => v.iter().map(|&x| f64::from(x)).collect(),
    }
}

/// `got` (output `name` of `what`) agrees with onnxruntime's value.
fn agrees(what: &str, g: &Graph, name: &str, got: &[f64], expected: &checkpoint::Checkpoint) {
    let want = expected
        .get(name)
        .unwrap_or_else(|| panic!("{what}: no expected value for output {name}"));
    let node = g.output(name).expect("the output");
    assert_eq!(
        g[node].ty.shape, want.shape,
        "{what}: shape of output {name}"
    );
    if let Err(e) = interp::agrees(got, &f64s(want), DType::F32, interp::longest_sum(g)) {
        panic!("{what}: output {name} against onnxruntime: {e}");
    }
}

/// The model's outputs from the interpreter (f32 and f64) and the JIT all agree with
/// onnxruntime's.
fn matches_onnxruntime(name: &str) {
    let (im, inputs, expected) = model(name);
    let g = &im.graph;
    assert_eq!(
        g.outputs().len(),
        expected.tensors.len(),
        "{name}: every onnxruntime output is an output"
    );
    let all: Vec<NamedTensor> = inputs.iter().chain(&im.weights).cloned().collect();
    // the interpreter, in f32 and in f64
    let v32 = interp::eval::<f32>(g, &tensor_io::feeds(g, &all)).expect("interpreter (f32)");
    let v64 = interp::eval::<f64>(g, &tensor_io::feeds(g, &all)).expect("interpreter (f64)");
    for o in g.outputs() {
        let got: Vec<f64> = v32
            .get(o.node)
            .expect("a value")
            .data
            .iter()
            .map(|&x| f64::from(x))
            .collect();
        agrees(
            &format!("{name} interpreter f32"),
            g,
            &o.name,
            &got,
            &expected,
        );
        let got = &v64.get(o.node).expect("a value").data;
        agrees(
            &format!("{name} interpreter f64"),
            g,
            &o.name,
            got,
            &expected,
        );
    }
    // the JIT, before and after the default pass pipeline
    let mut optimized = g.clone();
    gradlift::passes::Pipeline::default()
        .run(&mut optimized)
        .expect("passes");
    for (what, graph) in [("jit", g), ("jit after the pipeline", &optimized)] {
        let mut exe = runtime::compile(graph, &common::jit_options(Default::default()))
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        for w in &im.weights {
            let (n, t) = w.clone().into_host();
            exe.set_param(&n, t).expect("a param");
        }
        let feeds: Vec<(&str, HostTensor)> = inputs
            .iter()
            .map(|t| (t.name.as_str(), t.clone().into_host().1))
            .collect();
        for (n, t) in exe.run(&feeds).expect("a run") {
            agrees(&format!("{name} {what}"), g, &n, &t.to_f64(), &expected);
        }
    }
}

#[test]
fn mlp_matches_onnxruntime() {
    matches_onnxruntime("mlp");
}

#[test]
fn cnn_matches_onnxruntime() {
    matches_onnxruntime("cnn");
}

#[test]
fn ops_match_onnxruntime() {
    matches_onnxruntime("ops");
}

#[test]
fn spatial_ops_match_onnxruntime() {
    matches_onnxruntime("spatial");
}

#[test]
fn opset18_matches_onnxruntime() {
    matches_onnxruntime("opset18");
}

#[test]
fn opset20_matches_onnxruntime() {
    matches_onnxruntime("opset20");
}

#[test]
fn batched_matmul_matches_onnxruntime() {
    matches_onnxruntime("batched_matmul");
}

#[test]
fn conv_transpose_matches_onnxruntime() {
    matches_onnxruntime("conv_transpose");
}

#[test]
fn logic_matches_onnxruntime() {
    matches_onnxruntime("logic");
}

#[test]
fn resnet_block_matches_onnxruntime() {
    matches_onnxruntime("resnet_block");
}

#[test]
fn grouped_conv_matches_onnxruntime() {
    matches_onnxruntime("grouped_conv");
}

#[test]
fn dilated_conv_matches_onnxruntime() {
    matches_onnxruntime("dilated_conv");
}

#[test]
fn upsample_matches_onnxruntime() {
    matches_onnxruntime("upsample");
}

#[test]
fn strided_slice_matches_onnxruntime() {
    matches_onnxruntime("strided_slice");
}

#[test]
fn opset11_matches_onnxruntime() {
    matches_onnxruntime("opset11");
}

#[test]
fn pytorch_style_export_matches_onnxruntime() {
    matches_onnxruntime("pytorch_style");
    let (im, _, _) = model("pytorch_style");
    let names: Vec<&str> = im.weights.iter().map(|w| w.name.as_str()).collect();
    // ONNX names that are not gradlift names have each other character replaced
    assert_eq!(
        names,
        [
            "onnx__Conv_7",
            "onnx__Conv_8",
            "bn1.weight",
            "bn1.bias",
            "fc.weight",
            "fc.bias"
        ]
    );
    assert!(im.graph.find("input.1").is_some());
}

#[test]
fn keras_style_export_matches_onnxruntime() {
    matches_onnxruntime("keras_style");
}

/// Identity and Dropout of an initializer read the same param: the weights stay tied.
#[test]
fn aliases_of_an_initializer_share_its_param() {
    let (im, _, _) = model("opset18");
    let names: Vec<&str> = im.weights.iter().map(|w| w.name.as_str()).collect();
    assert_eq!(names, ["w", "v"]);
    assert_eq!(im.graph.params().len(), 2);
}

#[test]
fn imported_mlp_prints() {
    let (im, _, _) = model("mlp");
    insta::assert_snapshot!(text::print(&im.graph));
    // the printed graph parses back to itself
    let back = text::parse(&text::print(&im.graph), "mlp.ir").expect("the printed graph parses");
    assert_eq!(text::print(&back), text::print(&im.graph));
    let names: Vec<&str> = im.weights.iter().map(|w| w.name.as_str()).collect();
    assert_eq!(names, ["fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"]);
}

#[test]
fn cnn_keeps_nchw_inputs_and_stores_hwio_filters() {
    let (im, _, _) = model("cnn");
    let g = &im.graph;
    let x = g.find("x").expect("input x");
    assert_eq!(
        g[x].ty.shape.dims(),
        [2, 1, 10, 10],
        "NCHW input, batch fixed"
    );
    let w = im
        .weights
        .iter()
        .find(|w| w.name == "conv2.weight")
        .expect("conv2.weight");
    assert_eq!(w.shape.dims(), [3, 3, 4, 6], "HWIO");
    // without a batch size the symbolic batch is an error that says what to do
    let e = onnx::import_file(onnx_dir().join("cnn.onnx"), &ImportOptions::default())
        .expect_err("a symbolic batch");
    let msg = e.to_string();
    assert!(
        msg.contains("graph input x") && msg.contains("symbolic (N)") && msg.contains("--batch"),
        "{msg}"
    );
}

/// A scalar loss on the imported CNN's output is differentiated with respect to every
/// imported param, and SGD steps on it lower the loss.
#[test]
fn imported_cnn_differentiates_and_trains() {
    let (im, inputs, _) = model("cnn");
    let mut g = im.graph.clone();
    let out = g.output("log_probs").expect("log_probs");
    // loss: the mean negative log-probability of class 0
    let first = g.slice(out, &[0, 0], &[2, 1]).expect("slice");
    let mean = g.mean_all(first).expect("mean");
    let loss = g.neg(mean).expect("neg");
    g.add_output("loss", loss).expect("output");
    let params = g.params();
    assert_eq!(params.len(), im.weights.len());
    let grads = gradlift::autodiff::grad(&mut g.clone(), loss, &params).expect("autodiff");
    assert_eq!(grads.len(), params.len());
    let step = common::sgd_step(g, 0.002);
    let mut exe = runtime::compile(&step, &CompileOptions::default()).expect("compile");
    for w in &im.weights {
        let (n, t) = w.clone().into_host();
        exe.set_param(&n, t).expect("a param");
    }
    let feeds: Vec<(&str, HostTensor)> = inputs
        .iter()
        .map(|t| (t.name.as_str(), t.clone().into_host().1))
        .collect();
    let mut losses = Vec::new();
    for _ in 0..3 {
        let outs = exe.run(&feeds).expect("a step");
        let l = outs
            .iter()
            .find(|(n, _)| n == "loss")
            .expect("loss")
            .1
            .to_f64()[0];
        losses.push(l);
    }
    assert!(losses.windows(2).all(|w| w[1] < w[0]), "{losses:?}");
}

// ---- the CLI -----------------------------------------------------------------------------------

#[test]
fn cli_import_then_run_matches_onnxruntime() {
    let dir = cli::scratch("onnx_import_cli");
    let ir = dir.join("cnn.ir");
    let ir_s = ir.to_str().unwrap();
    let src = onnx_dir().join("cnn.onnx");
    let out = cli::ok(&["import", src.to_str().unwrap(), "-o", ir_s, "--batch", "2"]);
    assert!(
        out.contains("cnn.ir") && out.contains("cnn.safetensors"),
        "{out}"
    );
    let text = std::fs::read_to_string(&ir).unwrap();
    assert!(text.starts_with("# imported from"), "{text}");
    cli::ok(&["check", ir_s]);
    let outputs = dir.join("out.safetensors");
    let inputs = onnx_dir().join("cnn.inputs.safetensors");
    let params = dir.join("cnn.safetensors");
    cli::ok(&[
        "run",
        ir_s,
        "--inputs",
        inputs.to_str().unwrap(),
        "--params",
        params.to_str().unwrap(),
        "--outputs",
        outputs.to_str().unwrap(),
    ]);
    let expected = checkpoint::load_tensors(onnx_dir().join("cnn.expected.safetensors")).unwrap();
    let g = text::parse(&text, "cnn.ir").unwrap();
    let got = checkpoint::load_tensors(&outputs).unwrap();
    let t = got.get("log_probs").expect("log_probs");
    agrees("gradlift run", &g, "log_probs", &f64s(t), &expected);
    // the interpreter of `gradlift eval`, on the same files
    cli::ok(&[
        "eval",
        ir_s,
        "--inputs",
        inputs.to_str().unwrap(),
        "--params",
        params.to_str().unwrap(),
        "--outputs",
        outputs.to_str().unwrap(),
    ]);
    let got = checkpoint::load_tensors(&outputs).unwrap();
    let t = got.get("log_probs").expect("log_probs");
    agrees("gradlift eval", &g, "log_probs", &f64s(t), &expected);
    cli::ok(&["summary", ir_s]);
    // --params names another weights file
    let other = dir.join("weights.safetensors");
    cli::ok(&[
        "import",
        src.to_str().unwrap(),
        "-o",
        dir.join("b.ir").to_str().unwrap(),
        "--batch",
        "2",
        "--params",
        other.to_str().unwrap(),
    ]);
    assert!(other.exists());
}

#[test]
fn cli_import_errors() {
    let dir = cli::scratch("onnx_import_cli_errors");
    let src = onnx_dir().join("cnn.onnx");
    let ir = dir.join("cnn.ir");
    let err = cli::fails(&["import", src.to_str().unwrap(), "-o", ir.to_str().unwrap()]);
    assert!(err.contains("--batch"), "{err}");
    assert!(!ir.exists(), "nothing written on error");
    let garbage = dir.join("garbage.onnx");
    std::fs::write(&garbage, b"\xff\xff\xff\xff not protobuf").unwrap();
    let err = cli::fails(&[
        "import",
        garbage.to_str().unwrap(),
        "-o",
        ir.to_str().unwrap(),
    ]);
    assert!(err.contains("not an ONNX model"), "{err}");
    // the source is never overwritten, nor the graph by its weights
    let copy = dir.join("m.onnx");
    std::fs::copy(&src, &copy).unwrap();
    let copy_s = copy.to_str().unwrap();
    let ir_s = ir.to_str().unwrap();
    let err = cli::fails(&["import", copy_s, "-o", copy_s, "--batch", "2"]);
    assert!(err.contains("would overwrite the model it reads"), "{err}");
    let err = cli::fails(&[
        "import", copy_s, "-o", ir_s, "--params", copy_s, "--batch", "2",
    ]);
    assert!(err.contains("would overwrite the model it reads"), "{err}");
    let err = cli::fails(&[
        "import", copy_s, "-o", ir_s, "--params", ir_s, "--batch", "2",
    ]);
    assert!(err.contains("written to the same file"), "{err}");
    assert_eq!(std::fs::read(&copy).unwrap(), std::fs::read(&src).unwrap());
    let err = cli::fails(&[
        "import",
        dir.join("missing.onnx").to_str().unwrap(),
        "-o",
        ir.to_str().unwrap(),
    ]);
    assert!(err.contains("cannot read"), "{err}");
}

// ---- errors ------------------------------------------------------------------------------------

fn value_info(name: &str, dims: &[i64]) -> ValueInfoProto {
    ValueInfoProto {
        name: name.into(),
        r#type: Some(TypeProto {
            tensor_type: Some(TypeProtoTensor {
                elem_type: 1,
                shape: Some(TensorShapeProto {
                    dim: dims
                        .iter()
                        .map(|&d| Dimension {
                            value: Some(DimensionValue::DimValue(d)),
                        })
                        .collect(),
                }),
            }),
        }),
    }
}

fn node(
    name: &str,
    op: &str,
    inputs: &[&str],
    outputs: &[&str],
    attrs: Vec<AttributeProto>,
) -> NodeProto {
    NodeProto {
        input: inputs.iter().map(|s| s.to_string()).collect(),
        output: outputs.iter().map(|s| s.to_string()).collect(),
        name: name.into(),
        op_type: op.into(),
        domain: String::new(),
        attribute: attrs,
    }
}

fn ints_attr(name: &str, v: &[i64]) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        r#type: 7,
        ints: v.to_vec(),
        ..Default::default()
    }
}

fn int_attr(name: &str, v: i64) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        r#type: 2,
        i: v,
        ..Default::default()
    }
}

fn weights(name: &str, dims: &[i64]) -> TensorProto {
    let n: i64 = dims.iter().product();
    TensorProto {
        name: name.into(),
        dims: dims.to_vec(),
        data_type: 1,
        float_data: (0..n).map(|i| i as f32 * 0.01).collect(),
        ..Default::default()
    }
}

/// A model of `nodes` on input `x` of `dims`, output `y`, with `init` initializers.
fn model_of(dims: &[i64], nodes: Vec<NodeProto>, init: Vec<TensorProto>) -> ModelProto {
    ModelProto {
        ir_version: 8,
        opset_import: vec![OperatorSetIdProto {
            domain: String::new(),
            version: 13,
        }],
        producer_name: "test".into(),
        graph: Some(GraphProto {
            node: nodes,
            name: "t".into(),
            initializer: init,
            sparse_initializer: vec![],
            input: vec![value_info("x", dims)],
            output: vec![ValueInfoProto {
                name: "y".into(),
                r#type: None,
            }],
        }),
    }
}

fn import_err(m: &ModelProto) -> String {
    match onnx::import(&m.encode_to_vec(), &batch2()) {
        Ok(im) => panic!("imported:\n{}", text::print(&im.graph)),
        Err(e) => e.to_string(),
    }
}

fn conv_model(attrs: Vec<AttributeProto>) -> ModelProto {
    model_of(
        &[1, 2, 6, 6],
        vec![node("conv0", "Conv", &["x", "w"], &["y"], attrs)],
        vec![weights("w", &[4, 2, 3, 3])],
    )
}

#[test]
fn a_small_model_built_here_imports() {
    let im = onnx::import(&conv_model(vec![]).encode_to_vec(), &batch2()).expect("a plain conv");
    let y = im.graph.output("y").expect("y");
    assert_eq!(im.graph[y].ty.shape.dims(), [1, 4, 4, 4], "NCHW output");
}

/// Files of IR version 3 and earlier list the initializers among the graph inputs too: they
/// stay params, not inputs.
#[test]
fn initializers_listed_as_inputs_are_not_inputs() {
    let mut m = conv_model(vec![]);
    m.graph
        .as_mut()
        .unwrap()
        .input
        .push(value_info("w", &[4, 2, 3, 3]));
    let im = onnx::import(&m.encode_to_vec(), &batch2()).expect("imports");
    assert_eq!(im.graph.inputs().len(), 1);
    assert_eq!(im.graph.params().len(), 1);
}

/// A model without initializers writes no weights file.
#[test]
fn cli_import_without_params() {
    let dir = cli::scratch("onnx_import_no_params");
    let src = dir.join("relu.onnx");
    let m = model_of(
        &[2, 3],
        vec![node("r", "Relu", &["x"], &["y"], vec![])],
        vec![],
    );
    std::fs::write(&src, m.encode_to_vec()).unwrap();
    let ir = dir.join("relu.ir");
    let out = cli::ok(&["import", src.to_str().unwrap(), "-o", ir.to_str().unwrap()]);
    assert!(
        out.contains("0 params") && !out.contains("safetensors"),
        "{out}"
    );
    assert!(!dir.join("relu.safetensors").exists());
    cli::ok(&["run", ir.to_str().unwrap()]);
}

#[test]
fn unsupported_op_names_node_and_op_type() {
    let m = model_of(
        &[2, 3],
        vec![node("my_lstm", "LSTM", &["x"], &["y"], vec![])],
        vec![],
    );
    let e = import_err(&m);
    assert!(
        e.starts_with("node my_lstm (LSTM): operator LSTM is not supported; supported: Abs, Add"),
        "{e}"
    );
    // an unnamed node is named by its position, a custom domain is said
    let mut n = node("", "Relu", &["x"], &["y"], vec![]);
    n.domain = "com.example".into();
    let m = model_of(
        &[2, 3],
        vec![node("", "Relu", &["x"], &["h"], vec![]), {
            n.input = vec!["h".into()];
            n
        }],
        vec![],
    );
    let e = import_err(&m);
    assert!(
        e.starts_with("node #1 (Relu): operator Relu of domain com.example is not supported"),
        "{e}"
    );
}

#[test]
fn malformed_bytes_are_errors() {
    let good = conv_model(vec![]).encode_to_vec();
    for cut in [1, 7, good.len() / 2, good.len() - 1] {
        match onnx::import(&good[..cut], &batch2()) {
            Ok(_) => {}
            Err(e) => {
                let msg = e.to_string();
                assert!(!msg.is_empty());
            }
        }
    }
    // a file cut in the middle of the weights does not decode
    let e = onnx::import(&good[..good.len() - 5], &batch2()).expect_err("truncated");
    assert!(matches!(e, ImportError::Decode(_)), "{e}");
    assert!(
        e.to_string()
            .starts_with("not an ONNX model: the protobuf message does not decode"),
        "{e}"
    );
    let e = onnx::import(b"\x08\x96\x01\xff\xff\xff\xff\xff", &batch2()).expect_err("garbage");
    assert!(matches!(e, ImportError::Decode(_)), "{e}");
    // every prefix and a few corruptions: an error or a model, never a panic
    for cut in 0..good.len() {
        let _ = onnx::import(&good[..cut], &batch2());
    }
    for i in 0..good.len() {
        let mut b = good.clone();
        b[i] ^= 0x55;
        let _ = onnx::import(&b, &batch2());
    }
    // empty bytes decode to an empty model: no graph
    let e = onnx::import(&[], &batch2()).expect_err("empty");
    assert_eq!(
        e.to_string(),
        "the model has no graph (ModelProto.graph is missing)"
    );
}

#[test]
fn model_level_errors() {
    let mut m = conv_model(vec![]);
    m.opset_import.clear();
    assert!(import_err(&m).contains("does not import the default ONNX operator set"));
    let mut m = conv_model(vec![]);
    m.opset_import[0].version = 6;
    assert!(import_err(&m).contains("operator set 6"));
    let mut m = conv_model(vec![]);
    m.graph.as_mut().unwrap().output.clear();
    assert_eq!(import_err(&m), "the graph has no outputs");
}

#[test]
fn initializer_errors() {
    let mut short = weights("w", &[4, 2, 3, 3]);
    short.float_data.pop();
    let m = model_of(
        &[1, 2, 6, 6],
        vec![node("c", "Conv", &["x", "w"], &["y"], vec![])],
        vec![short],
    );
    assert_eq!(
        import_err(&m),
        "initializer w: float_data holds 71 elements, expected 72 for shape [4, 2, 3, 3]"
    );
    let mut raw = weights("w", &[4, 2, 3, 3]);
    raw.float_data.clear();
    raw.raw_data = vec![0; 10];
    let m = model_of(
        &[1, 2, 6, 6],
        vec![node("c", "Conv", &["x", "w"], &["y"], vec![])],
        vec![raw],
    );
    assert_eq!(
        import_err(&m),
        "initializer w: raw_data holds 10 bytes, expected 288 (72 FLOAT elements of 4 bytes for shape [4, 2, 3, 3])"
    );
    let mut bad = weights("w", &[4, 2, 3, 3]);
    bad.data_type = 10;
    let m = model_of(
        &[1, 2, 6, 6],
        vec![node("c", "Conv", &["x", "w"], &["y"], vec![])],
        vec![bad],
    );
    assert!(import_err(&m)
        .starts_with("initializer w: element type FLOAT16 (data_type 10) is not supported"));
    let mut neg = weights("w", &[4, 2, 3, 3]);
    neg.dims[0] = -4;
    let m = model_of(
        &[1, 2, 6, 6],
        vec![node("c", "Conv", &["x", "w"], &["y"], vec![])],
        vec![neg],
    );
    assert!(import_err(&m).contains("dimension -4"));
    let mut ext = weights("w", &[4, 2, 3, 3]);
    ext.data_location = 1;
    let m = model_of(
        &[1, 2, 6, 6],
        vec![node("c", "Conv", &["x", "w"], &["y"], vec![])],
        vec![ext],
    );
    assert!(import_err(&m).contains("external file"));
}

#[test]
fn missing_initializer_or_operand_is_named() {
    let m = model_of(
        &[1, 2, 6, 6],
        vec![node("conv0", "Conv", &["x", "w"], &["y"], vec![])],
        vec![],
    );
    assert_eq!(
        import_err(&m),
        "node conv0 (Conv): operand w is not defined by an earlier node, an initializer or a graph input"
    );
    let m = model_of(
        &[1, 2, 6, 6],
        vec![node("conv0", "Conv", &["x"], &["y"], vec![])],
        vec![],
    );
    assert_eq!(
        import_err(&m),
        "node conv0 (Conv): operand 1 is missing (1 operand given)"
    );
    // an output nobody computes
    let m = model_of(
        &[2, 3],
        vec![node("r", "Relu", &["x"], &["h"], vec![])],
        vec![],
    );
    assert_eq!(
        import_err(&m),
        "graph output y: operand y is not defined by an earlier node, an initializer or a graph input"
    );
}

#[test]
fn unsupported_attributes_are_errors() {
    let cases: Vec<(Vec<AttributeProto>, &str)> = vec![
        (
            vec![int_attr("group", 2)],
            "filter w of shape [4, 2, 3, 3] expects 4 input channels in 2 groups, the input has 2",
        ),
        (vec![int_attr("group", 3)], "attribute group: 3 is not supported (it must divide"),
        (vec![int_attr("group", 0)], "attribute group: 0 is not supported"),
        (vec![ints_attr("dilations", &[2, 0])], "attribute dilations: expected two positive integers"),
        (
            vec![AttributeProto {
                name: "auto_pad".into(),
                r#type: 3,
                s: b"SAME_SIDEWAYS".to_vec(),
                ..Default::default()
            }],
            "attribute auto_pad: \"SAME_SIDEWAYS\" is not one of NOTSET, VALID, SAME_UPPER, SAME_LOWER",
        ),
        (vec![ints_attr("pads", &[1, 1])], "attribute pads: expected four non-negative integers"),
        (vec![ints_attr("kernel_shape", &[5, 5])], "attribute kernel_shape [5, 5] differs from the filter's [3, 3]"),
        (vec![int_attr("strides", 2)], "attribute strides: expected INTS, found INT"),
        (vec![int_attr("frobnicate", 1)], "attribute frobnicate is not supported (known: auto_pad, dilations"),
        (vec![int_attr("group", 1), int_attr("group", 1)], "attribute group is given twice"),
    ];
    for (attrs, want) in cases {
        let e = import_err(&conv_model(attrs));
        assert!(e.starts_with("node conv0 (Conv): "), "{e}");
        assert!(e.contains(want), "{e}\nexpected: {want}");
    }
    // ops of other kinds
    let m = model_of(
        &[1, 2, 6, 6],
        vec![node(
            "pool",
            "AveragePool",
            &["x"],
            &["y"],
            vec![ints_attr("kernel_shape", &[2, 2]), int_attr("ceil_mode", 1)],
        )],
        vec![],
    );
    assert!(import_err(&m).contains("ceil_mode: 1 is not supported"));
    let m = model_of(
        &[1, 2, 6, 6],
        vec![node(
            "pool",
            "MaxPool",
            &["x"],
            &["y"],
            vec![
                ints_attr("kernel_shape", &[2, 2]),
                ints_attr("dilations", &[2, 2]),
            ],
        )],
        vec![],
    );
    assert!(import_err(&m).contains("attribute dilations: [2, 2] is not supported"));
    let m = model_of(
        &[1, 2, 6, 6],
        vec![node("pool", "MaxPool", &["x"], &["y"], vec![])],
        vec![],
    );
    assert_eq!(
        import_err(&m),
        "node pool (MaxPool): attribute kernel_shape is missing"
    );
    let m = model_of(
        &[2, 3],
        vec![node(
            "relu",
            "Relu",
            &["x"],
            &["y"],
            vec![int_attr("alpha", 1)],
        )],
        vec![],
    );
    assert_eq!(
        import_err(&m),
        "node relu (Relu): attribute alpha is not supported (Relu takes no attributes)"
    );
    let m = model_of(
        &[1, 2, 6, 6],
        vec![node(
            "pool",
            "MaxPool",
            &["x"],
            &["y", "idx"],
            vec![ints_attr("kernel_shape", &[2, 2])],
        )],
        vec![],
    );
    assert!(import_err(&m).contains("result 1 (idx) is not supported"));
    let m = model_of(
        &[300, 3, 4],
        vec![node("mm", "MatMul", &["x", "b"], &["y"], vec![])],
        vec![weights("b", &[300, 4, 5])],
    );
    assert!(import_err(&m).contains("at most 256 products are unrolled"));
    let m = model_of(
        &[2, 3, 4],
        vec![node("mm", "MatMul", &["x", "b"], &["y"], vec![])],
        vec![weights("b", &[3, 4, 5])],
    );
    assert!(
        import_err(&m).contains("the batch axes of A [2, 3, 4] and B [3, 4, 5] do not broadcast")
    );
    let m = model_of(
        &[2, 6],
        vec![node(
            "s",
            "Slice",
            &["x", "st", "en", "ax", "step"],
            &["y"],
            vec![],
        )],
        vec![
            ints_t("st", &[0]),
            ints_t("en", &[4]),
            ints_t("ax", &[1]),
            ints_t("step", &[0]),
        ],
    );
    assert!(import_err(&m).contains("steps [0]: expected 1 non-zero steps"));
    let m = model_of(
        &[2, 6],
        vec![node("r", "Reshape", &["x", "x"], &["y"], vec![])],
        vec![],
    );
    assert!(import_err(&m).contains("must be known at import time"));
    let m = model_of(
        &[2, 6],
        vec![node("r", "Reshape", &["x", "shape"], &["y"], vec![])],
        vec![ints_t("shape", &[5, -1])],
    );
    assert_eq!(
        import_err(&m),
        "node r (Reshape): cannot reshape [2, 6] (12 elements) to [5, -1]"
    );
    // two nodes defining one value
    let m = model_of(
        &[2, 3],
        vec![
            node("a", "Relu", &["x"], &["y"], vec![]),
            node("b", "Relu", &["x"], &["y"], vec![]),
        ],
        vec![],
    );
    assert!(import_err(&m).starts_with("node b (Relu): its result y is already defined"));
}

fn ints_t(name: &str, v: &[i64]) -> TensorProto {
    TensorProto {
        name: name.into(),
        dims: vec![v.len() as i64],
        data_type: 7,
        int64_data: v.to_vec(),
        ..Default::default()
    }
}

#[test]
fn input_errors() {
    let mut m = conv_model(vec![]);
    m.graph.as_mut().unwrap().input[0] = ValueInfoProto {
        name: "x".into(),
        r#type: Some(TypeProto {
            tensor_type: Some(TypeProtoTensor {
                elem_type: 7,
                shape: None,
            }),
        }),
    };
    assert!(import_err(&m).starts_with("graph input x: element type INT64 is not supported"));
    let mut m = conv_model(vec![]);
    if let Some(t) = m.graph.as_mut().unwrap().input[0].r#type.as_mut() {
        if let Some(s) = t.tensor_type.as_mut().and_then(|t| t.shape.as_mut()) {
            s.dim[2].value = Some(DimensionValue::DimParam("height".into()));
        }
    }
    assert!(import_err(&m).contains("dimension 2 is symbolic (height)"));
    // a declared output shape that differs from the computed one
    let mut m = conv_model(vec![]);
    m.graph.as_mut().unwrap().output[0] = value_info("y", &[1, 4, 5, 5]);
    assert_eq!(
        import_err(&m),
        "graph output y: the model declares shape [1, 4, 5, 5], the imported graph computes [1, 4, 4, 4]"
    );
}

fn float_attr(name: &str, v: f32) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        r#type: 1,
        f: v,
        ..Default::default()
    }
}

/// One line per malformed or unsupported model: the message the importer gives (snapshot).
#[test]
fn error_messages() {
    let mut cases: Vec<(&str, ModelProto)> = Vec::new();
    let two_d = |nodes: Vec<NodeProto>, init: Vec<TensorProto>| model_of(&[2, 3], nodes, init);
    let mut m = conv_model(vec![]);
    m.graph
        .as_mut()
        .unwrap()
        .sparse_initializer
        .push(Default::default());
    cases.push(("sparse initializer", m));
    let mut m = conv_model(vec![]);
    m.graph
        .as_mut()
        .unwrap()
        .initializer
        .push(weights("w", &[1]));
    cases.push(("duplicate initializer", m));
    let mut m = conv_model(vec![]);
    m.graph.as_mut().unwrap().input[0].r#type = Some(TypeProto { tensor_type: None });
    cases.push(("input of a non-tensor type", m));
    let mut m = conv_model(vec![]);
    if let Some(t) = m.graph.as_mut().unwrap().input[0].r#type.as_mut() {
        t.tensor_type.as_mut().unwrap().shape = None;
    }
    cases.push(("input without a shape", m));
    let mut m = conv_model(vec![]);
    if let Some(t) = m.graph.as_mut().unwrap().input[0].r#type.as_mut() {
        t.tensor_type.as_mut().unwrap().shape.as_mut().unwrap().dim[1].value =
            Some(DimensionValue::DimValue(0));
    }
    cases.push(("input with a zero dimension", m));
    cases.push((
        "conv on a 3-D input",
        model_of(
            &[1, 2, 6],
            vec![node("c", "Conv", &["x", "w"], &["y"], vec![])],
            vec![weights("w", &[4, 2, 3])],
        ),
    ));
    cases.push((
        "conv channel mismatch",
        model_of(
            &[1, 3, 6, 6],
            vec![node("c", "Conv", &["x", "w"], &["y"], vec![])],
            vec![weights("w", &[4, 2, 3, 3])],
        ),
    ));
    cases.push((
        "conv bias of the wrong shape",
        model_of(
            &[1, 2, 6, 6],
            vec![node("c", "Conv", &["x", "w", "b"], &["y"], vec![])],
            vec![weights("w", &[4, 2, 3, 3]), weights("b", &[3])],
        ),
    ));
    cases.push((
        "kernel larger than the input",
        model_of(
            &[1, 2, 2, 2],
            vec![node("c", "Conv", &["x", "w"], &["y"], vec![])],
            vec![weights("w", &[4, 2, 3, 3])],
        ),
    ));
    cases.push((
        "pool pads not smaller than the kernel",
        model_of(
            &[1, 2, 6, 6],
            vec![node(
                "p",
                "MaxPool",
                &["x"],
                &["y"],
                vec![
                    ints_attr("kernel_shape", &[2, 2]),
                    ints_attr("pads", &[2, 0, 0, 0]),
                ],
            )],
            vec![],
        ),
    ));
    cases.push((
        "gemm on a 3-D operand",
        model_of(
            &[2, 3, 4],
            vec![node("g", "Gemm", &["x", "w"], &["y"], vec![])],
            vec![weights("w", &[4, 5])],
        ),
    ));
    cases.push((
        "gemm inner dimensions differ",
        two_d(
            vec![node("g", "Gemm", &["x", "w"], &["y"], vec![])],
            vec![weights("w", &[4, 5])],
        ),
    ));
    cases.push((
        "softmax axis out of range",
        two_d(
            vec![node(
                "s",
                "Softmax",
                &["x"],
                &["y"],
                vec![int_attr("axis", 2)],
            )],
            vec![],
        ),
    ));
    cases.push((
        "attribute of the wrong type",
        two_d(
            vec![node(
                "l",
                "LeakyRelu",
                &["x"],
                &["y"],
                vec![int_attr("alpha", 1)],
            )],
            vec![],
        ),
    ));
    cases.push((
        "constant with two values",
        two_d(
            vec![
                node(
                    "k",
                    "Constant",
                    &[],
                    &["c"],
                    vec![
                        float_attr("value_float", 1.0),
                        ints_attr("value_ints", &[1]),
                    ],
                ),
                node("a", "Add", &["x", "c"], &["y"], vec![]),
            ],
            vec![],
        ),
    ));
    cases.push((
        "dropout in training mode",
        two_d(
            vec![
                node("k", "Constant", &[], &["t"], vec![int_attr("value_int", 1)]),
                node("d", "Dropout", &["x", "", "t"], &["y"], vec![]),
            ],
            vec![],
        ),
    ));
    cases.push((
        "squeeze of an axis that is not 1",
        two_d(
            vec![node("s", "Squeeze", &["x", "ax"], &["y"], vec![])],
            vec![ints_t("ax", &[1])],
        ),
    ));
    cases.push((
        "gather index out of range",
        two_d(
            vec![node(
                "g",
                "Gather",
                &["x", "i"],
                &["y"],
                vec![int_attr("axis", 1)],
            )],
            vec![ints_t("i", &[3])],
        ),
    ));
    cases.push((
        "slice to nothing",
        two_d(
            vec![node("s", "Slice", &["x", "a", "b"], &["y"], vec![])],
            vec![ints_t("a", &[1]), ints_t("b", &[1])],
        ),
    ));
    cases.push((
        "transpose perm not a permutation",
        two_d(
            vec![node(
                "t",
                "Transpose",
                &["x"],
                &["y"],
                vec![ints_attr("perm", &[0, 0])],
            )],
            vec![],
        ),
    ));
    cases.push((
        "concat of mismatched shapes",
        two_d(
            vec![node(
                "c",
                "Concat",
                &["x", "w"],
                &["y"],
                vec![int_attr("axis", 0)],
            )],
            vec![weights("w", &[2, 4])],
        ),
    ));
    cases.push((
        "cast of a computed value to an integer",
        two_d(
            vec![node("c", "Cast", &["x"], &["y"], vec![int_attr("to", 7)])],
            vec![],
        ),
    ));
    cases.push((
        "add of an int64 initializer too large for i32",
        two_d(
            vec![node("a", "Add", &["x", "big"], &["y"], vec![])],
            vec![ints_t("big", &[1 << 40])],
        ),
    ));
    cases.push((
        "node without results",
        two_d(vec![node("r", "Relu", &["x"], &[], vec![])], vec![]),
    ));
    let mut report = String::new();
    for (what, m) in &cases {
        report.push_str(&format!("{what}:\n  {}\n", import_err(m)));
    }
    insta::assert_snapshot!(report);
}

/// A value that is often at an edge: 0, 1, -1, the operand count's neighbourhood, huge.
fn edgy(rng: &mut gradlift::init::Rng) -> i64 {
    const EDGES: [i64; 10] = [0, 1, -1, 2, 3, -2, 7, i64::MAX, i64::MIN, 1 << 33];
    if rng.below(2) == 0 {
        EDGES[rng.below(EDGES.len() as u64) as usize]
    } else {
        rng.below(9) as i64 - 4
    }
}

/// Structured mutations of the committed models (attribute values, dims, operand names,
/// op types, initializer data): every result is an error or a graph that verifies and prints
/// to text that parses back; never a panic (overflow checks are on in tests).
#[test]
fn mutated_models_never_panic() {
    let mut rng = gradlift::init::Rng::new(15);
    let ops = [
        "Conv",
        "MaxPool",
        "AveragePool",
        "Gemm",
        "MatMul",
        "Reshape",
        "Slice",
        "Concat",
        "Softmax",
        "Flatten",
        "Transpose",
        "Squeeze",
        "Unsqueeze",
        "ReduceSum",
        "Gather",
        "Add",
        "BatchNormalization",
        "Clip",
        "Shape",
        "Pad",
        "Split",
        "Expand",
        "LayerNormalization",
        "Gelu",
        "Sum",
        "ConvTranspose",
        "Where",
        "Equal",
    ];
    let mut imported = 0;
    for name in [
        "mlp",
        "cnn",
        "ops",
        "spatial",
        "opset18",
        "opset11",
        "pytorch_style",
        "keras_style",
        "opset20",
        "batched_matmul",
        "conv_transpose",
        "logic",
        "resnet_block",
        "grouped_conv",
        "dilated_conv",
        "upsample",
        "strided_slice",
    ] {
        let bytes = std::fs::read(onnx_dir().join(format!("{name}.onnx"))).unwrap();
        let base = ModelProto::decode(bytes.as_slice()).unwrap();
        for _ in 0..1000 {
            let mut m = base.clone();
            let g = m.graph.as_mut().unwrap();
            for _ in 0..1 + rng.below(3) {
                match rng.below(7) {
                    0 if !g.node.is_empty() => {
                        let n = rng.below(g.node.len() as u64) as usize;
                        let node = &mut g.node[n];
                        if !node.attribute.is_empty() {
                            let a = rng.below(node.attribute.len() as u64) as usize;
                            let v = edgy(&mut rng);
                            let at = &mut node.attribute[a];
                            at.i = v;
                            at.f = v as f32;
                            for x in at.ints.iter_mut() {
                                if rng.below(2) == 0 {
                                    *x = edgy(&mut rng);
                                }
                            }
                            if rng.below(4) == 0 {
                                at.ints.push(edgy(&mut rng));
                            }
                        }
                    }
                    1 if !g.node.is_empty() => {
                        let n = rng.below(g.node.len() as u64) as usize;
                        g.node[n].op_type = ops[rng.below(ops.len() as u64) as usize].into();
                    }
                    2 if !g.node.is_empty() => {
                        let n = rng.below(g.node.len() as u64) as usize;
                        let node = &mut g.node[n];
                        if !node.input.is_empty() && rng.below(2) == 0 {
                            let i = rng.below(node.input.len() as u64) as usize;
                            node.input.remove(i);
                        } else {
                            let any = g
                                .initializer
                                .first()
                                .map(|t| t.name.clone())
                                .unwrap_or_default();
                            g.node[n].input.push(any);
                        }
                    }
                    3 if !g.initializer.is_empty() => {
                        let t = rng.below(g.initializer.len() as u64) as usize;
                        let init = &mut g.initializer[t];
                        if !init.dims.is_empty() {
                            let d = rng.below(init.dims.len() as u64) as usize;
                            init.dims[d] = edgy(&mut rng);
                        } else {
                            init.dims.push(edgy(&mut rng));
                        }
                    }
                    4 if !g.initializer.is_empty() => {
                        let t = rng.below(g.initializer.len() as u64) as usize;
                        let init = &mut g.initializer[t];
                        init.int64_data = init.raw_data.chunks(8).map(|_| edgy(&mut rng)).collect();
                        if init.data_type == 7 {
                            init.raw_data.clear();
                        }
                    }
                    5 => {
                        if let Some(t) = g.input[0].r#type.as_mut() {
                            if let Some(s) = t.tensor_type.as_mut().and_then(|t| t.shape.as_mut()) {
                                let d = rng.below(s.dim.len() as u64) as usize;
                                s.dim[d].value = Some(DimensionValue::DimValue(edgy(&mut rng)));
                            }
                        }
                    }
                    _ => {
                        if g.node.len() > 1 {
                            let n = rng.below(g.node.len() as u64) as usize;
                            g.node.remove(n);
                        }
                    }
                }
            }
            let bytes = m.encode_to_vec();
            match onnx::import(&bytes, &batch2()) {
                Ok(im) => {
                    imported += 1;
                    gradlift::verify::verify(&im.graph)
                        .unwrap_or_else(|e| panic!("{name}: an imported graph verifies: {e}"));
                    let printed = text::print(&im.graph);
                    let back =
                        text::parse(&printed, "m.ir").unwrap_or_else(|e| panic!("{e}\n{printed}"));
                    assert_eq!(text::print(&back), printed);
                }
                Err(e) => assert!(!e.to_string().is_empty()),
            }
        }
    }
    assert!(imported > 50, "mutations that still import: {imported}");
}

/// The gradients of a weighted sum of every output of an imported model with respect to its
/// params (and its f32 inputs) agree with central differences through the interpreter.
#[test]
fn imported_gradients_match_finite_differences() {
    use common::fd;
    let mut rng = gradlift::init::Rng::new(21);
    for name in [
        "cnn",
        "spatial",
        "opset20",
        "pytorch_style",
        "ops",
        "batched_matmul",
        "conv_transpose",
        "resnet_block",
        "grouped_conv",
        "dilated_conv",
        "upsample",
        "strided_slice",
    ] {
        let (im, inputs, _) = model(name);
        let mut g = im.graph.clone();
        let all: Vec<NamedTensor> = inputs.iter().chain(&im.weights).cloned().collect();
        let feeds = tensor_io::feeds::<f64>(&g, &all);
        let outs: Vec<_> = g.outputs().iter().map(|o| o.node).collect();
        let mut loss = None;
        for y in outs {
            let part = fd::weighted_sum(&mut g, y, &mut rng);
            loss = Some(match loss {
                None => part,
                Some(l) => g.add2(l, part).expect("add"),
            });
        }
        let mut wrt = g.params();
        wrt.extend(
            g.inputs()
                .into_iter()
                .filter(|&i| g[i].ty.dtype == DType::F32),
        );
        let case = fd::Case {
            loss: loss.expect("a loss"),
            g,
            wrt,
            feeds,
        };
        let report = fd::fd_check(&case, 12, &mut rng).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(report.checked > 0 && report.max_ratio <= 1.0, "{name}");
    }
}

/// Fine-tuning from the command line: an imported linear classifier, given a loss by the
/// builder, trained by `gradlift train --params` from the imported weights (with a zero
/// learning rate the saved weights are the imported ones, bit for bit; with a positive one
/// the loss goes down from the imported weights' loss, not from zeros').
#[test]
fn cli_train_from_imported_weights() {
    let dir = cli::scratch("onnx_import_train");
    let mut w = weights("w", &[10, 784]);
    for (i, v) in w.float_data.iter_mut().enumerate() {
        *v = ((i * 7919 % 1000) as f32 / 1000.0 - 0.5) * 0.01;
    }
    let mut m = model_of(
        &[32, 784],
        vec![node(
            "dense",
            "Gemm",
            &["x", "w", "b"],
            &["y"],
            vec![int_attr("transB", 1)],
        )],
        vec![w, weights("b", &[10])],
    );
    if let Some(t) = m.graph.as_mut().unwrap().input[0].r#type.as_mut() {
        t.tensor_type.as_mut().unwrap().shape.as_mut().unwrap().dim[0].value =
            Some(DimensionValue::DimParam("batch".into()));
    }
    let src = dir.join("linear.onnx");
    std::fs::write(&src, m.encode_to_vec()).unwrap();
    let ir = dir.join("linear.ir");
    cli::ok(&[
        "import",
        src.to_str().unwrap(),
        "-o",
        ir.to_str().unwrap(),
        "--batch",
        "32",
    ]);
    // the loss: sparse cross-entropy of the imported logits against labels
    let mut g = text::parse(&std::fs::read_to_string(&ir).unwrap(), "linear.ir").unwrap();
    let logits = g.output("y").unwrap();
    let labels = g.input("labels", gradlift::TensorType::i32([32])).unwrap();
    let ce = g.sparse_softmax_cross_entropy(logits, labels).unwrap();
    let loss = g.mean_all(ce).unwrap();
    g.add_output("loss", loss).unwrap();
    let step_ir = dir.join("linear_train.ir");
    std::fs::write(&step_ir, text::print(&g)).unwrap();
    let weights_file = dir.join("linear.safetensors");
    let saved = dir.join("saved.safetensors");
    let train = |lr: &str| {
        cli::ok(&[
            "train",
            step_ir.to_str().unwrap(),
            "--params",
            weights_file.to_str().unwrap(),
            "--epochs",
            "1",
            "--limit",
            "64",
            "--optimizer",
            "sgd",
            "--lr",
            lr,
            "--save",
            saved.to_str().unwrap(),
        ])
    };
    // a negligible learning rate: the saved weights are the imported ones (not zeros)
    train("1e-30");
    let imported = checkpoint::load(&weights_file).unwrap();
    let after = checkpoint::load(&saved).unwrap();
    for t in &imported.tensors {
        let got = f64s(after.get(&t.name).expect("a saved param"));
        let want = f64s(t);
        assert!(want.iter().any(|&v| v != 0.0));
        for (g, w) in got.iter().zip(&want) {
            assert!(
                (g - w).abs() <= 1e-20,
                "{}: {g} against the imported {w}",
                t.name
            );
        }
    }
    // with a real rate, the first epoch starts from the imported weights' loss
    let from_weights = train("0.1");
    let from_zeros = cli::ok(&[
        "train",
        step_ir.to_str().unwrap(),
        "--epochs",
        "1",
        "--limit",
        "64",
        "--optimizer",
        "sgd",
        "--lr",
        "0.1",
    ]);
    assert!(from_weights.contains("params from"), "{from_weights}");
    let epoch = |out: &str| {
        out.lines()
            .find(|l| l.contains("loss"))
            .map(str::to_string)
            .unwrap_or_default()
    };
    assert_ne!(
        epoch(&from_weights),
        epoch(&from_zeros),
        "{from_weights}\n{from_zeros}"
    );
    let (code, _, err) = cli::run(&[
        "train",
        step_ir.to_str().unwrap(),
        "--params",
        weights_file.to_str().unwrap(),
        "--resume",
        saved.to_str().unwrap(),
    ]);
    assert_eq!(code, 2, "a usage error: {err}");
    assert!(err.contains("cannot be used with"), "{err}");
}
