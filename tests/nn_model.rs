//! Sequential models: Keras' layer names, output shapes and parameter counts for the reference
//! models (the CNN of the overview: conv 320, dense 692352, dense 1290), the summary table,
//! the graph that `build_graph` makes (names, types, outputs, fused loss) and layer errors.

use gradlift::nn::{
    param_seed, Activation, Conv2D, Dense, Dropout, Flatten, GraphOptions, Initializer, Loss,
    MaxPool2D, Metric, Sequential, SimpleRNN,
};
use gradlift::optim::Regularizer;
use gradlift::{DType, Init, Op, Padding, TensorType};

fn reference_cnn() -> Sequential {
    Sequential::new([28, 28, 1])
        .layer(Conv2D::new(32, [3, 3]).activation(Activation::Relu))
        .layer(MaxPool2D::new([2, 2]))
        .layer(Flatten::new())
        .layer(Dense::new(128).activation(Activation::Relu))
        .layer(Dense::new(10).activation(Activation::Softmax))
}

#[test]
fn reference_cnn_matches_keras() {
    let infos = reference_cnn().layer_infos().unwrap();
    let got: Vec<(&str, &str, Vec<usize>, usize)> = infos
        .iter()
        .map(|l| (l.name.as_str(), l.kind, l.output_shape.clone(), l.params))
        .collect();
    assert_eq!(
        got,
        vec![
            ("conv2d", "Conv2D", vec![26, 26, 32], 320),
            ("max_pooling2d", "MaxPooling2D", vec![13, 13, 32], 0),
            ("flatten", "Flatten", vec![5408], 0),
            ("dense", "Dense", vec![128], 692352),
            ("dense_1", "Dense", vec![10], 1290),
        ]
    );
    assert_eq!(reference_cnn().param_count().unwrap(), 320 + 692352 + 1290);
}

#[test]
fn summary_is_a_keras_table() {
    insta::assert_snapshot!(reference_cnn().summary().unwrap());
}

#[test]
fn linear_regression_and_rnn_param_counts() {
    let lin = Sequential::new([1]).layer(Dense::new(1));
    assert_eq!(lin.param_count().unwrap(), 2);
    assert_eq!(lin.output_shape().unwrap(), vec![1]);
    // Keras: SimpleRNN(64) over (28, 28) has 28*64 + 64*64 + 64 = 5952 params.
    let rnn = Sequential::new([28, 28])
        .layer(SimpleRNN::new(64))
        .layer(Dense::new(10).activation(Activation::Softmax));
    let infos = rnn.layer_infos().unwrap();
    assert_eq!(infos[0].params, 5952);
    assert_eq!(infos[0].output_shape, vec![64]);
    assert_eq!(infos[1].params, 650);
}

#[test]
fn same_padding_and_strides_shapes() {
    let m = Sequential::new([28, 28, 3])
        .layer(Conv2D::new(8, [3, 3]).padding(Padding::Same))
        .layer(
            Conv2D::new(4, [3, 3])
                .strides([2, 2])
                .padding(Padding::Same),
        )
        .layer(Conv2D::new(4, [3, 3]).strides([2, 2]))
        .layer(MaxPool2D::new([2, 2]).strides([1, 1]));
    let shapes: Vec<Vec<usize>> = m
        .layer_infos()
        .unwrap()
        .into_iter()
        .map(|l| l.output_shape)
        .collect();
    assert_eq!(
        shapes,
        vec![
            vec![28, 28, 8],
            vec![14, 14, 4],
            vec![6, 6, 4],
            vec![5, 5, 4]
        ]
    );
    // Dense over a non-flat input acts on the last axis, as in Keras.
    let d = Sequential::new([5, 7]).layer(Dense::new(3));
    assert_eq!(d.output_shape().unwrap(), vec![5, 3]);
    assert_eq!(d.param_count().unwrap(), 7 * 3 + 3);
}

#[test]
fn layer_errors_name_the_layer_and_the_caller() {
    let m = Sequential::new([28, 28]).layer(Conv2D::new(8, [3, 3]));
    let e = m.param_count().unwrap_err();
    assert!(e.message.contains("layer conv2d (Conv2D)"), "{e}");
    assert!(e.message.contains("(None, 28, 28)"), "{e}");
    assert!(e.loc.unwrap().file.ends_with("nn_model.rs"));
    let m = Sequential::new([4, 4, 1])
        .layer(Dense::new(2))
        .layer(Conv2D::new(1, [5, 5]));
    let e = m.summary().unwrap_err();
    assert!(e.message.contains("conv2d (Conv2D)"), "{e}");
    assert!(e.message.contains("does not fit"), "{e}");
    let e = Sequential::new([3])
        .layer(Dropout::new(1.5))
        .param_count()
        .unwrap_err();
    assert!(e.message.contains("rate must be in [0, 1)"), "{e}");
    let e = Sequential::new([3])
        .layer(SimpleRNN::new(4))
        .param_count()
        .unwrap_err();
    assert!(e.message.contains("(timesteps, features)"), "{e}");
}

#[test]
fn graph_has_keras_names_types_and_outputs() {
    let m = reference_cnn().seed(7);
    let mg = m
        .build_graph(&GraphOptions::train(
            64,
            Loss::SparseCategoricalCrossentropy { from_logits: false },
            &[Metric::Accuracy],
        ))
        .unwrap();
    let g = &mg.graph;
    assert_eq!(g[mg.x].ty, TensorType::f32([64, 28, 28, 1]));
    assert_eq!(g[mg.y.unwrap()].ty, TensorType::i32([64]));
    let names: Vec<String> = mg
        .params
        .iter()
        .map(|&p| g[p].name.clone().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "conv2d.kernel",
            "conv2d.bias",
            "dense.kernel",
            "dense.bias",
            "dense_1.kernel",
            "dense_1.bias"
        ]
    );
    assert_eq!(
        g[g.find("conv2d.kernel").unwrap()].ty,
        TensorType::f32([3, 3, 1, 32])
    );
    assert_eq!(
        g[g.find("dense.kernel").unwrap()].ty,
        TensorType::f32([5408, 128])
    );
    // Seeds derive from the model seed, the layer and the slot; biases are zeros.
    assert_eq!(
        g[g.find("dense_1.kernel").unwrap()].op,
        Op::Param {
            init: Init::GlorotUniform {
                seed: param_seed(7, 4, 0)
            }
        }
    );
    assert_eq!(
        g[g.find("dense.bias").unwrap()].op,
        Op::Param { init: Init::Zeros }
    );
    // Layer outputs are named after their layer.
    assert_eq!(
        g[g.find("max_pooling2d").unwrap()].ty,
        TensorType::f32([64, 13, 13, 32])
    );
    // Outputs: loss and accuracy, scalars; no predictions in a training graph.
    let outs: Vec<&str> = g.outputs().iter().map(|o| o.name.as_str()).collect();
    assert_eq!(outs, ["loss", "accuracy"]);
    assert_eq!(g[mg.loss.unwrap()].ty, TensorType::f32([]));
    // The loss is the fused sparse softmax cross-entropy on the logits of dense_1.
    let ce = g
        .node_ids()
        .into_iter()
        .find(|&n| g[n].op == Op::SparseSoftmaxCrossEntropy)
        .expect("fused loss");
    let logits = g.operands(ce)[0];
    assert_eq!(g[logits].ty, TensorType::f32([64, 10]));
    assert!(
        matches!(g[logits].op, Op::Binary(_)),
        "bias add, not softmax"
    );
    // Every node built for a layer points at the line that added it (this file).
    assert!(g.node_ids().into_iter().all(|n| g[n]
        .loc
        .as_ref()
        .unwrap()
        .file
        .ends_with("nn_model.rs")));
}

#[test]
fn predict_graph_has_only_predictions() {
    let mg = reference_cnn()
        .build_graph(&GraphOptions::predict(8))
        .unwrap();
    let g = &mg.graph;
    assert!(mg.y.is_none() && mg.loss.is_none());
    assert_eq!(g.outputs().len(), 1);
    assert_eq!(g.outputs()[0].name, "predictions");
    assert_eq!(g[mg.predictions].ty, TensorType::f32([8, 10]));
    assert!(matches!(g[mg.predictions].op, Op::Softmax { axis: 1 }));
}

#[test]
fn loss_forms_follow_the_last_activation() {
    let count = |m: &Sequential, loss: Loss, pred: fn(&Op) -> bool| {
        let mg = m
            .build_graph(&GraphOptions::evaluate(4, loss, &[]))
            .unwrap();
        let g = &mg.graph;
        g.node_ids().into_iter().filter(|&n| pred(&g[n].op)).count()
    };
    let softmax = Sequential::new([3]).layer(Dense::new(2).activation(Activation::Softmax));
    let linear = Sequential::new([3]).layer(Dense::new(2));
    let sigmoid = Sequential::new([3]).layer(Dense::new(1).activation(Activation::Sigmoid));
    let is_log = |o: &Op| matches!(o, Op::Unary(gradlift::UnaryOp::Log));
    let is_sce = |o: &Op| matches!(o, Op::SoftmaxCrossEntropy);
    let cce = Loss::CategoricalCrossentropy { from_logits: false };
    // softmax + categorical: fused, no log of probabilities.
    assert_eq!(count(&softmax, cce, is_sce), 1);
    assert_eq!(count(&softmax, cce, is_log), 0);
    // linear + from_logits: fused as well.
    assert_eq!(
        count(
            &linear,
            Loss::CategoricalCrossentropy { from_logits: true },
            is_sce
        ),
        1
    );
    // linear outputs taken as probabilities: clipped log, no fused op.
    assert_eq!(count(&linear, cce, is_sce), 0);
    assert_eq!(count(&linear, cce, is_log), 1);
    // sigmoid + binary: the stable logits form has one log1p (of e^-|z|) and no log.
    let bce = Loss::BinaryCrossentropy { from_logits: false };
    let is_log1p = |o: &Op| matches!(o, Op::Unary(gradlift::UnaryOp::Log1p));
    assert_eq!(count(&sigmoid, bce, is_log1p), 1);
    assert_eq!(count(&sigmoid, bce, is_log), 0);
    let mg = sigmoid
        .build_graph(&GraphOptions::evaluate(4, bce, &[Metric::Accuracy]))
        .unwrap();
    assert_eq!(mg.graph[mg.y.unwrap()].ty, TensorType::f32([4, 1]));
    // Probabilities without a fused form: two clipped logs.
    assert_eq!(count(&linear, bce, is_log), 2);
}

#[test]
fn metric_errors_are_clear() {
    let lin = Sequential::new([1]).layer(Dense::new(1));
    let e = lin
        .build_graph(&GraphOptions::evaluate(
            4,
            Loss::MeanSquaredError,
            &[Metric::Accuracy],
        ))
        .unwrap_err();
    assert!(e.message.contains("accuracy is not defined"), "{e}");
    let ok = lin
        .build_graph(&GraphOptions::evaluate(
            4,
            Loss::MeanSquaredError,
            &[Metric::MeanAbsoluteError],
        ))
        .unwrap();
    assert_eq!(ok.graph.outputs()[1].name, "mae");
}

#[test]
fn regularizers_add_penalties_to_the_loss() {
    let plain = Sequential::new([3]).layer(Dense::new(2));
    let reg = Sequential::new([3]).layer(
        Dense::new(2)
            .kernel_regularizer(Regularizer::l2(0.01))
            .bias_regularizer(Regularizer::l1(0.1)),
    );
    let opts = GraphOptions::evaluate(4, Loss::MeanSquaredError, &[]);
    let a = plain.build_graph(&opts).unwrap().graph;
    let b = reg.build_graph(&opts).unwrap().graph;
    let abs = |g: &gradlift::Graph| {
        g.node_ids()
            .into_iter()
            .filter(|&n| g[n].op == Op::Unary(gradlift::UnaryOp::Abs))
            .count()
    };
    assert_eq!(abs(&a), 0);
    assert_eq!(abs(&b), 1);
    assert!(b.len() > a.len());
}

#[test]
fn dropout_is_a_mask_input_in_training_only() {
    let m = Sequential::new([6])
        .layer(Dense::new(4).activation(Activation::Relu))
        .layer(Dropout::new(0.5))
        .layer(Dense::new(2));
    let t = m
        .build_graph(&GraphOptions::train(3, Loss::MeanSquaredError, &[]))
        .unwrap();
    assert_eq!(t.dropout_masks.len(), 1);
    let (mask, rate) = t.dropout_masks[0];
    assert_eq!(rate, 0.5);
    assert_eq!(t.graph[mask].name.as_deref(), Some("dropout.mask"));
    assert_eq!(t.graph[mask].ty, TensorType::f32([3, 4]));
    let e = m
        .build_graph(&GraphOptions::evaluate(3, Loss::MeanSquaredError, &[]))
        .unwrap();
    assert!(e.dropout_masks.is_empty());
    assert_eq!(e.graph.inputs().len(), 2, "x and y only");
}

#[test]
fn rnn_is_one_scan_over_the_time_steps() {
    let m = Sequential::new([5, 3]).layer(SimpleRNN::new(4));
    let mg = m.build_graph(&GraphOptions::predict(2)).unwrap();
    let g = &mg.graph;
    let count = |f: fn(&Op) -> bool| g.node_ids().into_iter().filter(|&n| f(&g[n].op)).count();
    // the input projection of all 5 steps is one product before the loop
    assert_eq!(count(|o| matches!(o, Op::Matmul)), 1);
    assert_eq!(count(|o| matches!(o, Op::Scan(_))), 1);
    let scan = g
        .node_ids()
        .into_iter()
        .find(|&n| matches!(g[n].op, Op::Scan(_)))
        .unwrap();
    let Op::Scan(body) = &g[scan].op else {
        unreachable!()
    };
    // one step: the recurrent product, the sum and tanh
    let ops: Vec<&str> = body.insts.iter().map(|i| i.op.name()).collect();
    assert_eq!(ops, ["matmul", "add", "tanh"]);
    assert_eq!((body.axis, body.carries, body.sequences), (1, 1, 1));
    assert_eq!(g[mg.predictions].ty, TensorType::f32([2, 4]));
    assert_eq!(
        g[g.find("simple_rnn.recurrent_kernel").unwrap()].ty,
        TensorType::f32([4, 4])
    );
    // the graph does not grow with the number of steps
    let long = Sequential::new([500, 3]).layer(SimpleRNN::new(4));
    let lg = long.build_graph(&GraphOptions::predict(2)).unwrap().graph;
    assert_eq!(lg.len(), g.len());
}

#[test]
fn initializers_and_names_are_configurable() {
    let m = Sequential::new([2])
        .seed(3)
        .layer(
            Dense::new(2)
                .name("hidden")
                .kernel_initializer(Initializer::HeNormal)
                .bias_initializer(Initializer::Constant(0.1)),
        )
        .layer(Dense::new(1).use_bias(false));
    assert_eq!(m.layer_names(), ["hidden", "dense"]);
    let mg = m.build_graph(&GraphOptions::predict(1)).unwrap();
    let g = &mg.graph;
    assert_eq!(
        g[g.find("hidden.kernel").unwrap()].op,
        Op::Param {
            init: Init::HeNormal {
                seed: param_seed(3, 0, 0)
            }
        }
    );
    assert_eq!(
        g[g.find("hidden.bias").unwrap()].op,
        Op::Param {
            init: Init::Constant { value: 0.1 }
        }
    );
    assert!(g.find("dense.bias").is_none());
    assert_eq!(mg.params.len(), 3);
    assert_eq!(g[mg.x].ty.dtype, DType::F32);
    // Different layers and slots get different seeds.
    assert_ne!(param_seed(3, 0, 0), param_seed(3, 1, 0));
    assert_ne!(param_seed(3, 0, 0), param_seed(3, 0, 1));
    assert_ne!(param_seed(3, 0, 0), param_seed(4, 0, 0));
}

#[test]
fn cnn_training_forward_prints_and_round_trips() {
    let mg = reference_cnn()
        .seed(1)
        .build_graph(&GraphOptions::train(
            64,
            Loss::SparseCategoricalCrossentropy { from_logits: false },
            &[Metric::Accuracy],
        ))
        .unwrap();
    let text = gradlift::text::print(&mg.graph);
    insta::assert_snapshot!(text);
    let back = gradlift::text::parse(&text, "cnn.ir").unwrap();
    assert_eq!(gradlift::text::print(&back), text);
}
