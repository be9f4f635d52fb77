//! Keras-like models: a [`Sequential`] stack of layers ([`Dense`], [`Conv2D`], [`MaxPool2D`],
//! [`AvgPool2D`], [`GlobalAvgPool2D`], [`LayerNorm`], [`Flatten`], [`SimpleRNN`], [`LSTM`],
//! [`GRU`], [`Dropout`], [`Embedding`], [`BatchNorm`])
//! turned into a [`Graph`] by
//! [`Sequential::build_graph`]: the forward pass, the loss (with the layers' penalties) and the
//! metrics, as named outputs. What `text::print` shows of that graph is exactly what is
//! differentiated, optimized and compiled.
//!
//! In: a model description (layers, per-example input shape, a seed). Out: a graph with input
//! `%x: f32[batch, ..input_shape]` (`i32`, token ids, when the first layer is an
//! [`Embedding`]; [`Model`] converts its f32 inputs as `as i32` does), targets `%y`, params named `<layer>.<param>` (`dense.kernel`,
//! `conv2d.bias`, `dense_1.kernel`, ...; layer names follow Keras: `dense`, `dense_1`, ...),
//! and outputs `loss`, the metrics (`accuracy`, ...) and `predictions`.
//!
//! ```
//! use gradlift::nn::{Activation, Conv2D, Dense, Flatten, MaxPool2D, Sequential};
//! let model = Sequential::new([28, 28, 1])
//!     .layer(Conv2D::new(32, [3, 3]).activation(Activation::Relu))
//!     .layer(MaxPool2D::new([2, 2]))
//!     .layer(Flatten::new())
//!     .layer(Dense::new(128).activation(Activation::Relu))
//!     .layer(Dense::new(10).activation(Activation::Softmax));
//! assert_eq!(model.param_count().unwrap(), 693_962);
//! ```
//!
//! [`Sequential::compile`] gives a [`Model`] with Keras' `fit`, `evaluate`, `predict` and
//! weight save/load; each step (forward, [`crate::autodiff::grad`], [`crate::optim`] updates)
//! is compiled by Cranelift once per batch size:
//!
//! ```
//! use gradlift::nn::{CompileOptions, Dense, FitOptions, Loss, Sequential, Targets};
//! use gradlift::optim::Optimizer;
//! let x: Vec<f32> = (0..64).map(|i| i as f32 / 64.0).collect();
//! let y: Vec<f32> = x.iter().map(|v| 3.0 * v + 2.0).collect();
//! let mut model = Sequential::new([1])
//!     .layer(Dense::new(1))
//!     .compile(CompileOptions::new(Optimizer::sgd(), Loss::MeanSquaredError, &[]).learning_rate(0.5))
//!     .unwrap();
//! let opts = FitOptions { epochs: 200, batch_size: 64, verbose: false, ..FitOptions::default() };
//! model.fit(&x, Targets::Values(&y), &opts).unwrap();
//! let p = model.predict(&[0.0, 1.0], 2).unwrap();
//! assert!((p[0] - 2.0).abs() < 0.01 && (p[1] - 5.0).abs() < 0.01);
//! ```
//!
//! Parameter values are seeded: the seed of each param is derived from the model seed, the
//! layer index and the param's index in the layer ([`param_seed`]), so a model is
//! reproducible and independent of the order in which graphs are built.

mod layers;
mod loss;
mod model;
mod plot;

pub use model::{
    Backend, CompileOptions, Evaluation, FitOptions, History, Model, Targets, TrainError, Weights,
};

pub use crate::train::{EarlyStopping, ModelCheckpoint};
pub use layers::{
    dropout_mask, shape_str, Activation, AvgPool2D, BatchNorm, Conv2D, Dense, Dropout, Embedding,
    Flatten, GlobalAvgPool2D, Layer, LayerNorm, MaxPool2D, ParamSpec, SimpleRNN, GRU, LSTM,
};
pub use loss::{Loss, Metric, EPSILON};

use crate::graph::{BuildError, Graph, NodeId, SourceLoc};
use crate::init::Rng;
use crate::op::{Init, Op};
use crate::optim::{add_penalties_at, At, Regularizer};
use crate::shape::TensorType;
use std::collections::HashMap;
use std::panic::Location;

/// How a parameter is initialized (Keras' names); seeds come from the model.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Initializer {
    /// `glorot_uniform` (Keras' default for kernels).
    GlorotUniform,
    /// `he_normal`.
    HeNormal,
    /// `orthogonal` (Keras' default for recurrent kernels).
    Orthogonal,
    /// An LSTM bias of `units` per gate with Keras' `unit_forget_bias`: ones for the forget
    /// gate, zeros elsewhere.
    UnitForgetBias {
        /// The LSTM's units.
        units: usize,
    },
    /// `zeros` (Keras' default for biases).
    Zeros,
    /// `ones`.
    Ones,
    /// Every element equal to the value.
    Constant(f64),
    /// `RandomUniform(low, high)`.
    RandomUniform {
        /// Lower bound.
        low: f64,
        /// Upper bound (exclusive).
        high: f64,
    },
    /// `RandomNormal(mean, stddev)`.
    RandomNormal {
        /// Mean.
        mean: f64,
        /// Standard deviation.
        stddev: f64,
    },
}

impl Initializer {
    /// The graph initializer with `seed` for the random ones.
    pub fn to_init(self, seed: u64) -> Init {
        match self {
            Initializer::GlorotUniform => Init::GlorotUniform { seed },
            Initializer::HeNormal => Init::HeNormal { seed },
            Initializer::Orthogonal => Init::Orthogonal { seed },
            Initializer::UnitForgetBias { units } => Init::UnitForgetBias { units },
            Initializer::Zeros => Init::Zeros,
            Initializer::Ones => Init::Ones,
            Initializer::Constant(value) => Init::Constant { value },
            Initializer::RandomUniform { low, high } => Init::Uniform { low, high, seed },
            Initializer::RandomNormal { mean, stddev } => Init::Normal { mean, stddev, seed },
        }
    }
}

/// The seed of param number `slot` of layer number `layer` in a model seeded `model_seed`.
pub fn param_seed(model_seed: u64, layer: usize, slot: usize) -> u64 {
    let a = Rng::new(model_seed).next_u64();
    let b = Rng::new(a ^ layer as u64).next_u64();
    Rng::new(b ^ slot as u64).next_u64()
}

/// A linear stack of layers over examples of a fixed shape.
#[derive(Clone, Debug, PartialEq)]
pub struct Sequential {
    /// Model name (`sequential` by default), the name of the built graphs.
    pub name: String,
    /// Shape of one example, without the batch dimension (Keras' `input_shape`).
    pub input_shape: Vec<usize>,
    /// The layers, first to last.
    pub layers: Vec<Layer>,
    /// Where each layer was added (its nodes point there).
    locs: Vec<SourceLoc>,
    /// Seed of the parameter initializers.
    pub seed: u64,
}

/// Information on one layer, as [`Sequential::summary`] prints it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LayerInfo {
    /// Layer name (`dense_1`).
    pub name: String,
    /// Keras class name (`Dense`).
    pub kind: &'static str,
    /// Per-example output shape.
    pub output_shape: Vec<usize>,
    /// Number of trainable parameters (elements).
    pub params: usize,
    /// Number of non-trainable state elements (batch normalization's moving statistics).
    pub non_trainable: usize,
}

/// Which graph to build: training (loss, metrics, dropout masks) or inference.
#[derive(Clone, Debug, PartialEq)]
pub struct GraphOptions {
    /// Examples per call (the leading dimension of every batch tensor).
    pub batch: usize,
    /// The loss; `None` builds a prediction-only graph without targets.
    pub loss: Option<Loss>,
    /// Metrics, built only when there is a loss.
    pub metrics: Vec<Metric>,
    /// Training mode: dropout is active (with a mask input per dropout layer).
    pub training: bool,
    /// Whether `predictions` is an output (training graphs usually leave it out).
    pub output_predictions: bool,
}

impl GraphOptions {
    /// A prediction graph: inference mode, `predictions` only.
    pub fn predict(batch: usize) -> GraphOptions {
        GraphOptions {
            batch,
            loss: None,
            metrics: Vec::new(),
            training: false,
            output_predictions: true,
        }
    }

    /// An evaluation graph: inference mode, loss and metrics.
    pub fn evaluate(batch: usize, loss: Loss, metrics: &[Metric]) -> GraphOptions {
        GraphOptions {
            batch,
            loss: Some(loss),
            metrics: metrics.to_vec(),
            training: false,
            output_predictions: false,
        }
    }

    /// A training graph (before gradients): training mode, loss and metrics.
    pub fn train(batch: usize, loss: Loss, metrics: &[Metric]) -> GraphOptions {
        GraphOptions {
            training: true,
            ..GraphOptions::evaluate(batch, loss, metrics)
        }
    }
}

/// A model as a graph, with handles on its interesting nodes.
#[derive(Clone, Debug)]
pub struct ModelGraph {
    /// The graph.
    pub graph: Graph,
    /// The examples input `%x`.
    pub x: NodeId,
    /// The targets input `%y` (when there is a loss).
    pub y: Option<NodeId>,
    /// The model's output (after the last activation).
    pub predictions: NodeId,
    /// The scalar loss, penalties included (when there is a loss).
    pub loss: Option<NodeId>,
    /// Every param, in layer order.
    pub params: Vec<NodeId>,
    /// Metric outputs, in the order asked.
    pub metrics: Vec<(String, NodeId)>,
    /// Dropout mask inputs of a training graph, with their rates.
    pub dropout_masks: Vec<(NodeId, f64)>,
}

impl Sequential {
    /// An empty model over examples of shape `input_shape` (seed 0).
    pub fn new(input_shape: impl Into<Vec<usize>>) -> Sequential {
        Sequential {
            name: "sequential".to_string(),
            input_shape: input_shape.into(),
            layers: Vec::new(),
            locs: Vec::new(),
            seed: 0,
        }
    }

    /// Appends a layer (builder style); its nodes will carry the location of this call.
    #[track_caller]
    pub fn layer(mut self, layer: impl Into<Layer>) -> Sequential {
        self.add(layer);
        self
    }

    /// Appends a layer (Keras' `model.add`); its nodes will carry the location of this call.
    #[track_caller]
    pub fn add(&mut self, layer: impl Into<Layer>) {
        self.layers.push(layer.into());
        self.locs.push(SourceLoc::from_caller(Location::caller()));
    }

    /// Sets the seed of the parameter initializers.
    pub fn seed(mut self, seed: u64) -> Sequential {
        self.seed = seed;
        self
    }

    /// Sets the model name.
    pub fn name(mut self, name: &str) -> Sequential {
        self.name = name.to_string();
        self
    }

    /// Layer names as Keras gives them: the explicit name, else the stem (`dense`) for the
    /// first layer of a kind and `dense_1`, `dense_2`, ... for the next ones.
    pub fn layer_names(&self) -> Vec<String> {
        let mut seen: HashMap<&str, usize> = HashMap::new();
        self.layers
            .iter()
            .map(|l| {
                if let Some(n) = l.explicit_name() {
                    return n.to_string();
                }
                let stem = l.base_name();
                let k = seen.entry(stem).or_insert(0);
                let name = if *k == 0 {
                    stem.to_string()
                } else {
                    format!("{stem}_{k}")
                };
                *k += 1;
                name
            })
            .collect()
    }

    /// Name, kind, per-example output shape and parameter count of every layer; errors name
    /// the first layer whose input does not fit.
    pub fn layer_infos(&self) -> Result<Vec<LayerInfo>, BuildError> {
        let names = self.layer_names();
        let mut shape = self.input_shape.clone();
        let mut out = Vec::new();
        for (i, l) in self.layers.iter().enumerate() {
            let next = self.layer_shape(i, &names[i], &shape)?;
            let params = l
                .params(&shape)
                .iter()
                .map(|p| p.shape.iter().product::<usize>())
                .sum();
            let non_trainable = l
                .states(&shape)
                .iter()
                .map(|(_, d, _)| d.iter().product::<usize>())
                .sum();
            out.push(LayerInfo {
                name: names[i].clone(),
                kind: l.kind(),
                output_shape: next.clone(),
                params,
                non_trainable,
            });
            shape = next;
        }
        Ok(out)
    }

    fn layer_shape(&self, i: usize, name: &str, input: &[usize]) -> Result<Vec<usize>, BuildError> {
        let l = &self.layers[i];
        l.output_shape(input).map_err(|m| BuildError {
            message: format!("layer {name} ({}): {m}", l.kind()),
            loc: Some(self.locs[i].clone()),
        })
    }

    /// Per-example output shape of the model.
    pub fn output_shape(&self) -> Result<Vec<usize>, BuildError> {
        Ok(self
            .layer_infos()?
            .last()
            .map(|l| l.output_shape.clone())
            .unwrap_or_else(|| self.input_shape.clone()))
    }

    /// Total number of trainable parameters (without the non-trainable state).
    pub fn param_count(&self) -> Result<usize, BuildError> {
        Ok(self.layer_infos()?.iter().map(|l| l.params).sum())
    }

    /// A Keras-style table of the layers, output shapes and parameter counts.
    pub fn summary(&self) -> Result<String, BuildError> {
        let infos = self.layer_infos()?;
        let trainable: usize = infos.iter().map(|l| l.params).sum();
        let fixed: usize = infos.iter().map(|l| l.non_trainable).sum();
        let names: Vec<String> = infos
            .iter()
            .map(|l| format!("{} ({})", l.name, l.kind))
            .collect();
        let shapes: Vec<String> = infos.iter().map(|l| shape_str(&l.output_shape)).collect();
        let w1 = names.iter().map(|n| n.len() + 2).max().unwrap_or(0).max(28);
        let w2 = shapes
            .iter()
            .map(|n| n.len() + 2)
            .max()
            .unwrap_or(0)
            .max(26);
        let width = 1 + w1 + w2 + 10;
        let rule = |c: char| c.to_string().repeat(width);
        let mut s = format!("Model: \"{}\"\n{}\n", self.name, rule('_'));
        s += &format!(
            " {:<w1$}{:<w2$}{}\n{}\n",
            "Layer (type)",
            "Output Shape",
            "Param #",
            rule('=')
        );
        for (i, l) in infos.iter().enumerate() {
            s += &format!(
                " {:<w1$}{:<w2$}{}\n",
                names[i],
                shapes[i],
                thousands(l.params + l.non_trainable)
            );
            if i + 1 < infos.len() {
                s += "\n";
            }
        }
        s += &format!(
            "{}\nTotal params: {}\nTrainable params: {}\nNon-trainable params: {}\n{}\n",
            rule('='),
            thousands(trainable + fixed),
            thousands(trainable),
            thousands(fixed),
            rule('_')
        );
        Ok(s)
    }

    /// Builds the model as a graph for batches of `opts.batch` examples: input `%x`, the
    /// params, the forward pass, and with a loss the targets `%y`, output `loss` (mean over the
    /// batch plus the layers' penalties) and one output per metric; `predictions` when asked.
    pub fn build_graph(&self, opts: &GraphOptions) -> Result<ModelGraph, BuildError> {
        let infos = self.layer_infos()?;
        let names = self.layer_names();
        let model_loc = self.locs.first().cloned();
        let err = |message: String| BuildError {
            message,
            loc: model_loc.clone(),
        };
        if opts.batch == 0 {
            return Err(err("batch size must be at least 1".to_string()));
        }
        if self.layers.is_empty() {
            return Err(err(format!("model {} has no layers", self.name)));
        }
        let mut g = Graph::new(self.name.clone());
        let mut at = At {
            g: &mut g,
            loc: self.locs[0].clone(),
        };
        // token ids for a first Embedding layer, as i32 (the model's f32 inputs are
        // converted when fed); values otherwise
        let mut x_ty = layers::batched(opts.batch, &self.input_shape);
        if matches!(self.layers.first(), Some(Layer::Embedding(_))) {
            x_ty.dtype = crate::shape::DType::I32;
        }
        let x = at.leaf("x", Op::Input, x_ty)?;
        // Params first, so that they print in layer order.
        let mut layer_params = Vec::new();
        let mut all_params = Vec::new();
        let mut regs: Vec<(NodeId, Regularizer)> = Vec::new();
        let mut shape = self.input_shape.clone();
        for (i, l) in self.layers.iter().enumerate() {
            at.loc = self.locs[i].clone();
            let mut ids = Vec::new();
            for (slot, p) in l.params(&shape).into_iter().enumerate() {
                let init = p.init.to_init(param_seed(self.seed, i, slot));
                let id = at.leaf(
                    &format!("{}.{}", names[i], p.suffix),
                    Op::Param { init },
                    TensorType::f32(p.shape.clone()),
                )?;
                if let Some(r) = p.regularizer.filter(|r| !r.is_zero()) {
                    regs.push((id, r));
                }
                ids.push(id);
                all_params.push(id);
            }
            layer_params.push(ids);
            shape = infos[i].output_shape.clone();
        }
        // Then the layers' state (batch normalization's moving statistics).
        let mut layer_states = Vec::new();
        let mut shape = self.input_shape.clone();
        for (i, l) in self.layers.iter().enumerate() {
            at.loc = self.locs[i].clone();
            let mut ids = Vec::new();
            for (suffix, dims, init) in l.states(&shape) {
                let id = at.leaf(
                    &format!("{}.{suffix}", names[i]),
                    Op::State {
                        init: init.to_init(0),
                    },
                    TensorType::f32(dims),
                )?;
                ids.push(id);
            }
            layer_states.push(ids);
            shape = infos[i].output_shape.clone();
        }
        // Forward.
        let mut h = x;
        let mut logits = None;
        let mut masks = Vec::new();
        let mut shape = self.input_shape.clone();
        for (i, l) in self.layers.iter().enumerate() {
            at.loc = self.locs[i].clone();
            let mask = match l {
                Layer::Dropout(d) if opts.training && d.rate > 0.0 => {
                    let m = at.leaf(
                        &format!("{}.mask", names[i]),
                        Op::Input,
                        layers::batched(opts.batch, &shape),
                    )?;
                    masks.push((m, d.rate));
                    Some(m)
                }
                _ => None,
            };
            let out = l.build(
                &mut at,
                h,
                &layer_params[i],
                &layer_states[i],
                mask,
                opts.training,
            )?;
            if out.y != h && at.g[out.y].name.is_none() {
                at.g.set_name(out.y, &names[i])?;
            }
            h = out.y;
            logits = out.logits;
            shape = infos[i].output_shape.clone();
        }
        let predictions = h;
        let last = self.layers.last().and_then(|l| l.activation());
        let mut mg = ModelGraph {
            graph: Graph::default(),
            x,
            y: None,
            predictions,
            loss: None,
            params: all_params,
            metrics: Vec::new(),
            dropout_masks: masks,
        };
        if let Some(loss) = &opts.loss {
            at.loc = self.locs[self.locs.len() - 1].clone();
            let pred_ty = at.ty(predictions)?;
            let y = at.leaf("y", Op::Input, loss.target_type(&pred_ty))?;
            let data_loss = loss.build(&mut at, predictions, logits, last, y)?;
            let total = add_penalties_at(&mut at, data_loss, &regs)?;
            at.g.add_output("loss", total)?;
            for m in &opts.metrics {
                let id = m.build(&mut at, loss, predictions, logits, last, y)?;
                at.g.add_output(m.name(), id)?;
                mg.metrics.push((m.name().to_string(), id));
            }
            mg.y = Some(y);
            mg.loss = Some(total);
        }
        if opts.output_predictions {
            at.g.add_output("predictions", predictions)?;
        }
        mg.graph = g;
        Ok(mg)
    }
}

/// `1234567` as `1,234,567`.
fn thousands(n: usize) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}
