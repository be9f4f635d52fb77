//! Keras-like layers: their configuration (builder methods with Keras' defaults), their
//! parameters and how each one appends its forward computation to a graph.
//!
//! Shapes here are per example (no batch dimension), like Keras' `input_shape`; the graph adds
//! the batch dimension in front.

use super::Initializer;
use crate::graph::{BuildError, NodeId};
use crate::op::{CmpOp, Literal, Op, Padding, ReduceOp, UnaryOp};
use crate::optim::{At, Regularizer};
use crate::shape::{DType, Shape, TensorType};

/// Activation functions applied elementwise (softmax: along the last axis), with Keras'
/// names and defaults. Each is built from graph ops, so every stage (interpreter, autodiff,
/// passes, JIT) handles it as it handles those ops.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Activation {
    /// Identity (Keras `linear`, the default).
    #[default]
    Linear,
    /// Logistic sigmoid.
    Sigmoid,
    /// Hyperbolic tangent.
    Tanh,
    /// `max(x, 0)`.
    Relu,
    /// Softmax over the last axis.
    Softmax,
    /// `x` where `x >= 0`, else `0.2 x` (Keras' `leaky_relu`, `negative_slope=0.2`).
    LeakyRelu,
    /// `x` where `x > 0`, else `e^x - 1` (Keras' `elu`, `alpha=1`).
    Elu,
    /// `x Phi(x) = x (1 + erf(x / sqrt 2)) / 2`, the exact GELU (Keras' `gelu`, whose default
    /// is `approximate=False`).
    Gelu,
    /// The tanh approximation of GELU, `x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))) / 2`
    /// (Keras' `gelu(x, approximate=True)`, PyTorch's `approximate="tanh"`).
    GeluTanh,
    /// `ln(1 + e^x)`, computed as `x + log1p(e^-x)` for `x > 0`, else `log1p(e^x)` (no
    /// overflow, accurate for large negative `x`).
    Softplus,
    /// `x sigmoid(x)` (Keras' `silu`, also called `swish`).
    Silu,
}

impl Activation {
    /// Every activation, in declaration order.
    pub const ALL: [Activation; 11] = [
        Activation::Linear,
        Activation::Sigmoid,
        Activation::Tanh,
        Activation::Relu,
        Activation::Softmax,
        Activation::LeakyRelu,
        Activation::Elu,
        Activation::Gelu,
        Activation::GeluTanh,
        Activation::Softplus,
        Activation::Silu,
    ];

    /// Keras' name (`linear`, `sigmoid`, `tanh`, `relu`, `softmax`, `leaky_relu`, `elu`,
    /// `gelu`, `softplus`, `silu`), and `gelu_tanh` for the approximate GELU.
    pub fn name(self) -> &'static str {
        match self {
            Activation::Linear => "linear",
            Activation::Sigmoid => "sigmoid",
            Activation::Tanh => "tanh",
            Activation::Relu => "relu",
            Activation::Softmax => "softmax",
            Activation::LeakyRelu => "leaky_relu",
            Activation::Elu => "elu",
            Activation::Gelu => "gelu",
            Activation::GeluTanh => "gelu_tanh",
            Activation::Softplus => "softplus",
            Activation::Silu => "silu",
        }
    }

    /// Parses a Keras activation name ([`Activation::name`], and `swish` for `silu`).
    pub fn from_name(s: &str) -> Option<Activation> {
        if s == "swish" {
            return Some(Activation::Silu);
        }
        Activation::ALL.into_iter().find(|a| a.name() == s)
    }

    /// Appends the activation of `x` (returns `x` itself for `Linear`).
    pub(crate) fn apply(self, at: &mut At<'_>, x: NodeId) -> Result<NodeId, BuildError> {
        match self {
            Activation::Linear => Ok(x),
            Activation::Sigmoid => at.unary(UnaryOp::Sigmoid, x),
            Activation::Tanh => at.unary(UnaryOp::Tanh, x),
            Activation::Relu => at.unary(UnaryOp::Relu, x),
            Activation::Softmax => {
                let rank = at.ty(x)?.shape.rank();
                at.op(
                    Op::Softmax {
                        axis: rank.saturating_sub(1),
                    },
                    &[x],
                )
            }
            Activation::LeakyRelu => {
                let zero = at.scalar(0.0)?;
                let keep = at.op(Op::Compare(CmpOp::Ge), &[x, zero])?;
                let scaled = at.scale(x, 0.2)?;
                at.op(Op::Select, &[keep, x, scaled])
            }
            Activation::Elu => {
                // expm1 of min(x, 0), so that a large x gives no inf whose zero gradient
                // share would be 0 * inf = NaN (as jax.nn.elu does)
                let zero = at.scalar(0.0)?;
                let keep = at.op(Op::Compare(CmpOp::Gt), &[x, zero])?;
                let neg = at.op(Op::Select, &[keep, zero, x])?;
                let e = at.unary(UnaryOp::Expm1, neg)?;
                at.op(Op::Select, &[keep, x, e])
            }
            Activation::Gelu => {
                let s = at.scale(x, std::f64::consts::FRAC_1_SQRT_2)?;
                let e = at.unary(UnaryOp::Erf, s)?;
                half_x_one_plus(at, x, e)
            }
            Activation::GeluTanh => {
                let x2 = at.mul(x, x)?;
                let x3 = at.mul(x2, x)?;
                let c = at.scale(x3, 0.044715)?;
                let inner = at.add(x, c)?;
                let k = (2.0 / std::f64::consts::PI).sqrt();
                let u = at.scale(inner, k)?;
                let t = at.unary(UnaryOp::Tanh, u)?;
                half_x_one_plus(at, x, t)
            }
            Activation::Softplus => {
                // t = -|x| by a select, so the derivative at 0 is 1/2 (|x| would give 0)
                let zero = at.scalar(0.0)?;
                let pos = at.op(Op::Compare(CmpOp::Gt), &[x, zero])?;
                let nx = at.unary(UnaryOp::Neg, x)?;
                let t = at.op(Op::Select, &[pos, nx, x])?;
                let e = at.unary(UnaryOp::Exp, t)?;
                let l = at.unary(UnaryOp::Log1p, e)?;
                let xl = at.add(x, l)?;
                at.op(Op::Select, &[pos, xl, l])
            }
            Activation::Silu => {
                let s = at.unary(UnaryOp::Sigmoid, x)?;
                at.mul(x, s)
            }
        }
    }
}

/// `x (1 + v) / 2`, the shape shared by both GELUs.
fn half_x_one_plus(at: &mut At<'_>, x: NodeId, v: NodeId) -> Result<NodeId, BuildError> {
    let one = at.scalar(1.0)?;
    let opv = at.add(one, v)?;
    let p = at.mul(x, opv)?;
    at.scale(p, 0.5)
}

/// A fully connected layer: `activation(x @ kernel + bias)` over the last axis.
#[derive(Clone, Debug, PartialEq)]
pub struct Dense {
    /// Output size.
    pub units: usize,
    /// Activation (default linear).
    pub activation: Activation,
    /// Whether there is a bias (default true).
    pub use_bias: bool,
    /// Kernel initializer (default glorot_uniform).
    pub kernel_initializer: Initializer,
    /// Bias initializer (default zeros).
    pub bias_initializer: Initializer,
    /// Penalty on the kernel (default none).
    pub kernel_regularizer: Option<Regularizer>,
    /// Penalty on the bias (default none).
    pub bias_regularizer: Option<Regularizer>,
    /// Layer name (default `dense`, `dense_1`, ...).
    pub name: Option<String>,
}

impl Dense {
    /// A dense layer of `units` outputs with Keras' defaults.
    pub fn new(units: usize) -> Dense {
        Dense {
            units,
            activation: Activation::Linear,
            use_bias: true,
            kernel_initializer: Initializer::GlorotUniform,
            bias_initializer: Initializer::Zeros,
            kernel_regularizer: None,
            bias_regularizer: None,
            name: None,
        }
    }
}

/// A 2-D convolution over NHWC input with an HWIO kernel.
#[derive(Clone, Debug, PartialEq)]
pub struct Conv2D {
    /// Number of output channels.
    pub filters: usize,
    /// Kernel height and width.
    pub kernel_size: [usize; 2],
    /// Strides (default `[1, 1]`).
    pub strides: [usize; 2],
    /// Padding (default valid).
    pub padding: Padding,
    /// Activation (default linear).
    pub activation: Activation,
    /// Whether there is a bias (default true).
    pub use_bias: bool,
    /// Kernel initializer (default glorot_uniform).
    pub kernel_initializer: Initializer,
    /// Bias initializer (default zeros).
    pub bias_initializer: Initializer,
    /// Penalty on the kernel.
    pub kernel_regularizer: Option<Regularizer>,
    /// Penalty on the bias.
    pub bias_regularizer: Option<Regularizer>,
    /// Layer name (default `conv2d`, `conv2d_1`, ...).
    pub name: Option<String>,
}

impl Conv2D {
    /// `filters` output channels with a `kernel_size` kernel and Keras' defaults.
    pub fn new(filters: usize, kernel_size: [usize; 2]) -> Conv2D {
        Conv2D {
            filters,
            kernel_size,
            strides: [1, 1],
            padding: Padding::Valid,
            activation: Activation::Linear,
            use_bias: true,
            kernel_initializer: Initializer::GlorotUniform,
            bias_initializer: Initializer::Zeros,
            kernel_regularizer: None,
            bias_regularizer: None,
            name: None,
        }
    }

    /// Sets the strides.
    pub fn strides(mut self, strides: [usize; 2]) -> Conv2D {
        self.strides = strides;
        self
    }

    /// Sets the padding.
    pub fn padding(mut self, padding: Padding) -> Conv2D {
        self.padding = padding;
        self
    }
}

/// Max pooling over NHWC windows without padding (Keras `MaxPooling2D`, padding valid).
#[derive(Clone, Debug, PartialEq)]
pub struct MaxPool2D {
    /// Window height and width.
    pub pool_size: [usize; 2],
    /// Strides (default: the pool size).
    pub strides: Option<[usize; 2]>,
    /// Layer name (default `max_pooling2d`, ...).
    pub name: Option<String>,
}

impl MaxPool2D {
    /// Pooling with a `pool_size` window and stride.
    pub fn new(pool_size: [usize; 2]) -> MaxPool2D {
        MaxPool2D {
            pool_size,
            strides: None,
            name: None,
        }
    }

    /// Sets the strides.
    pub fn strides(mut self, strides: [usize; 2]) -> MaxPool2D {
        self.strides = Some(strides);
        self
    }
}

/// Flattens each example to one dimension.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Flatten {
    /// Layer name (default `flatten`, ...).
    pub name: Option<String>,
}

impl Flatten {
    /// A flatten layer.
    pub fn new() -> Flatten {
        Flatten::default()
    }
}

/// Average pooling over NHWC windows (Keras `AveragePooling2D`): the mean of each window;
/// with `same` padding, the mean of the window's elements inside the input, as Keras takes
/// it.
#[derive(Clone, Debug, PartialEq)]
pub struct AvgPool2D {
    /// Window height and width.
    pub pool_size: [usize; 2],
    /// Strides (default: the pool size).
    pub strides: Option<[usize; 2]>,
    /// Padding (default valid).
    pub padding: Padding,
    /// Layer name (default `average_pooling2d`, ...).
    pub name: Option<String>,
}

impl AvgPool2D {
    /// Pooling with a `pool_size` window and stride, padding valid.
    pub fn new(pool_size: [usize; 2]) -> AvgPool2D {
        AvgPool2D {
            pool_size,
            strides: None,
            padding: Padding::Valid,
            name: None,
        }
    }

    /// Sets the strides.
    pub fn strides(mut self, strides: [usize; 2]) -> AvgPool2D {
        self.strides = Some(strides);
        self
    }

    /// Sets the padding.
    pub fn padding(mut self, padding: Padding) -> AvgPool2D {
        self.padding = padding;
        self
    }
}

/// The mean over the spatial axes of NHWC input: `[height, width, channels]` to
/// `[channels]` (Keras `GlobalAveragePooling2D`).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct GlobalAvgPool2D {
    /// Layer name (default `global_average_pooling2d`, ...).
    pub name: Option<String>,
}

impl GlobalAvgPool2D {
    /// A global average pooling layer.
    pub fn new() -> GlobalAvgPool2D {
        GlobalAvgPool2D::default()
    }
}

/// Normalization of each example over its last axis (Keras `LayerNormalization`, `axis=-1`):
/// `(x - mean) / sqrt(var + epsilon) * gamma + beta`, with the mean and the (biased) variance
/// over the last axis; `gamma` starts at ones, `beta` at zeros.
#[derive(Clone, Debug, PartialEq)]
pub struct LayerNorm {
    /// Added to the variance (default 1e-3, Keras').
    pub epsilon: f64,
    /// Layer name (default `layer_normalization`, ...).
    pub name: Option<String>,
}

impl Default for LayerNorm {
    fn default() -> Self {
        LayerNorm {
            epsilon: 1e-3,
            name: None,
        }
    }
}

impl LayerNorm {
    /// A layer normalization with Keras' defaults.
    pub fn new() -> LayerNorm {
        LayerNorm::default()
    }

    /// Sets epsilon.
    pub fn epsilon(mut self, epsilon: f64) -> LayerNorm {
        self.epsilon = epsilon;
        self
    }
}

/// A lookup of one trainable vector per token id (Keras `Embedding(input_dim, output_dim)`):
/// input ids of any per-example shape, output that shape plus `[output_dim]`. As the first
/// layer it takes the model's input as i32 token ids (`%x: i32[..]`; [`super::Model`]
/// converts the f32 values it is given as `as i32` does, exactly below 2^24); after another
/// layer its f32 input is cast to i32 in the graph, as Keras casts non-integer inputs. The
/// lookup is a `gather` of the rows of
/// `embeddings`, whose gradient is a `scatter_add`. An id outside `0..input_dim` reads the
/// nearest row, `0` or `input_dim - 1` (`gather` clamps, as JAX does; TensorFlow raises an
/// error).
#[derive(Clone, Debug, PartialEq)]
pub struct Embedding {
    /// Number of distinct ids (the vocabulary size).
    pub input_dim: usize,
    /// Size of each vector.
    pub output_dim: usize,
    /// Initializer of the table (default uniform in `[-0.05, 0.05)`, Keras').
    pub embeddings_initializer: Initializer,
    /// Penalty on the table (default none).
    pub embeddings_regularizer: Option<Regularizer>,
    /// Layer name (default `embedding`, ...).
    pub name: Option<String>,
}

impl Embedding {
    /// An embedding of `input_dim` ids into vectors of `output_dim`, with Keras' defaults.
    pub fn new(input_dim: usize, output_dim: usize) -> Embedding {
        Embedding {
            input_dim,
            output_dim,
            embeddings_initializer: Initializer::RandomUniform {
                low: -0.05,
                high: 0.05,
            },
            embeddings_regularizer: None,
            name: None,
        }
    }

    /// Sets the initializer of the table.
    pub fn embeddings_initializer(mut self, i: Initializer) -> Embedding {
        self.embeddings_initializer = i;
        self
    }

    /// Sets the penalty on the table.
    pub fn embeddings_regularizer(mut self, r: Regularizer) -> Embedding {
        self.embeddings_regularizer = Some(r);
        self
    }
}

/// Batch normalization over the last axis (Keras `BatchNormalization`, `axis=-1`). In
/// training, each feature is normalized by the mean and (biased) variance of the batch over
/// every other axis, `(x - mean) / sqrt(var + epsilon) * gamma + beta`, and the moving
/// statistics are updated in the graph, `moving = moving * momentum + batch * (1 -
/// momentum)` (graph state `<name>.moving_mean`, starting at zeros, and
/// `<name>.moving_variance`, at ones, updated like an optimizer's moments); in inference
/// (`predict`, `evaluate`) the moving statistics take the batch's place. `gamma` (ones) and
/// `beta` (zeros) are trainable when `scale` and `center` are set. A training step that
/// reads batch statistics is not split into shards (each shard would see other statistics).
#[derive(Clone, Debug, PartialEq)]
pub struct BatchNorm {
    /// Weight of the old value in the moving statistics (default 0.99, Keras').
    pub momentum: f64,
    /// Added to the variance (default 1e-3, Keras').
    pub epsilon: f64,
    /// Whether there is a trainable offset `beta` (default true).
    pub center: bool,
    /// Whether there is a trainable scale `gamma` (default true).
    pub scale: bool,
    /// Layer name (default `batch_normalization`, ...).
    pub name: Option<String>,
}

impl Default for BatchNorm {
    fn default() -> Self {
        BatchNorm {
            momentum: 0.99,
            epsilon: 1e-3,
            center: true,
            scale: true,
            name: None,
        }
    }
}

impl BatchNorm {
    /// A batch normalization with Keras' defaults.
    pub fn new() -> BatchNorm {
        BatchNorm::default()
    }

    /// Sets the momentum of the moving statistics.
    pub fn momentum(mut self, momentum: f64) -> BatchNorm {
        self.momentum = momentum;
        self
    }

    /// Sets epsilon.
    pub fn epsilon(mut self, epsilon: f64) -> BatchNorm {
        self.epsilon = epsilon;
        self
    }

    /// Sets whether there is an offset `beta`.
    pub fn center(mut self, center: bool) -> BatchNorm {
        self.center = center;
        self
    }

    /// Sets whether there is a scale `gamma`.
    pub fn scale(mut self, scale: bool) -> BatchNorm {
        self.scale = scale;
        self
    }
}

/// A fully connected recurrent layer (Keras' `SimpleRNN`) over input `[timesteps,
/// features]`: `h_t = activation(x_t @ kernel + h_{t-1} @ recurrent_kernel + bias)`, `h_0 =
/// 0`; returns the last state `[units]`, or every state `[timesteps, units]` with
/// `return_sequences`. A `scan` over the steps (see [`crate::scan`]): the graph and the
/// compile time do not grow with the number of steps.
#[derive(Clone, Debug, PartialEq)]
pub struct SimpleRNN {
    /// State size.
    pub units: usize,
    /// Activation (default tanh).
    pub activation: Activation,
    /// Whether there is a bias (default true).
    pub use_bias: bool,
    /// Input kernel initializer (default glorot_uniform).
    pub kernel_initializer: Initializer,
    /// Recurrent kernel initializer (default orthogonal, as Keras).
    pub recurrent_initializer: Initializer,
    /// Bias initializer (default zeros).
    pub bias_initializer: Initializer,
    /// Penalty on the input kernel.
    pub kernel_regularizer: Option<Regularizer>,
    /// Penalty on the recurrent kernel.
    pub recurrent_regularizer: Option<Regularizer>,
    /// Penalty on the bias.
    pub bias_regularizer: Option<Regularizer>,
    /// Whether the output is every step's state (`[timesteps, units]`) rather than the last.
    pub return_sequences: bool,
    /// Layer name (default `simple_rnn`, ...).
    pub name: Option<String>,
}

impl SimpleRNN {
    /// A recurrent layer of `units` with tanh and Keras' other defaults.
    pub fn new(units: usize) -> SimpleRNN {
        SimpleRNN {
            units,
            activation: Activation::Tanh,
            use_bias: true,
            kernel_initializer: Initializer::GlorotUniform,
            recurrent_initializer: Initializer::Orthogonal,
            bias_initializer: Initializer::Zeros,
            kernel_regularizer: None,
            recurrent_regularizer: None,
            bias_regularizer: None,
            return_sequences: false,
            name: None,
        }
    }
}

/// The two gated recurrent layers have the same fields; `$bias` is the default bias
/// initializer (a function of `units`).
macro_rules! gated_layer {
    ($(#[$doc:meta])* $t:ident, $default_name:literal, $bias:expr) => {
        $(#[$doc])*
        #[derive(Clone, Debug, PartialEq)]
        pub struct $t {
            /// State size.
            pub units: usize,
            /// Activation of the candidate (and, for an LSTM, of the cell state); default tanh.
            pub activation: Activation,
            /// Activation of the gates (default sigmoid).
            pub recurrent_activation: Activation,
            /// Whether there are biases (default true).
            pub use_bias: bool,
            /// Input kernel initializer (default glorot_uniform).
            pub kernel_initializer: Initializer,
            /// Recurrent kernel initializer (default orthogonal).
            pub recurrent_initializer: Initializer,
            /// Bias initializer.
            pub bias_initializer: Initializer,
            /// Penalty on the input kernel.
            pub kernel_regularizer: Option<Regularizer>,
            /// Penalty on the recurrent kernel.
            pub recurrent_regularizer: Option<Regularizer>,
            /// Penalty on the biases.
            pub bias_regularizer: Option<Regularizer>,
            /// Whether the output is every step's state rather than the last.
            pub return_sequences: bool,
            #[doc = concat!("Layer name (default `", $default_name, "`, ...).")]
            pub name: Option<String>,
        }

        impl $t {
            /// A layer of `units` with Keras' defaults.
            pub fn new(units: usize) -> $t {
                let bias: fn(usize) -> Initializer = $bias;
                $t {
                    units,
                    activation: Activation::Tanh,
                    recurrent_activation: Activation::Sigmoid,
                    use_bias: true,
                    kernel_initializer: Initializer::GlorotUniform,
                    recurrent_initializer: Initializer::Orthogonal,
                    bias_initializer: bias(units),
                    kernel_regularizer: None,
                    recurrent_regularizer: None,
                    bias_regularizer: None,
                    return_sequences: false,
                    name: None,
                }
            }
        }
    };
}

gated_layer!(
    /// Long short-term memory (Keras' `LSTM`) over input `[timesteps, features]`. With `z =
    /// x_t @ kernel + h @ recurrent_kernel + bias` split into four gates in Keras' order `i, f,
    /// c, o`: `c' = f c + i activation(z_c)`, `h' = o activation(c')`, where `i`, `f`, `o` are
    /// `recurrent_activation` (sigmoid) of theirs; `h_0 = c_0 = 0`. Returns the last `h` or,
    /// with `return_sequences`, every step's. A `scan` over the steps. The default bias is
    /// zeros with ones for the forget gate (Keras' `unit_forget_bias`).
    LSTM,
    "lstm",
    |units| Initializer::UnitForgetBias { units }
);

gated_layer!(
    /// Gated recurrent unit (Keras 3's `GRU`, `reset_after=True`) over input `[timesteps,
    /// features]`. With `x_t @ kernel + input_bias` and `h @ recurrent_kernel +
    /// recurrent_bias` each split into Keras' gate order `z, r, h`: `z =
    /// recurrent_activation(x_z + r_z)`, `r = recurrent_activation(x_r + r_r)`, `hh =
    /// activation(x_h + r * r_h)` (the reset gate applied after the recurrent product), `h' =
    /// z h + (1 - z) hh`; `h_0 = 0`. The bias is `[2, 3 units]`: the input bias, then the
    /// recurrent bias (default zeros). A `scan` over the steps.
    GRU,
    "gru",
    |_| Initializer::Zeros
);

/// Dropout: in training, each element is zeroed with probability `rate` and the others are
/// scaled by `1 / (1 - rate)`; in inference it is the identity.
///
/// The graph has no random-number op, so the training graph gets one more input per dropout
/// layer, `<name>.mask`, shaped like the layer's input (with the batch), which the training
/// loop fills with a fresh seeded mask on every step ([`dropout_mask`]).
#[derive(Clone, Debug, PartialEq)]
pub struct Dropout {
    /// Fraction of the inputs to drop, in `[0, 1)`.
    pub rate: f64,
    /// Layer name (default `dropout`, ...).
    pub name: Option<String>,
}

impl Dropout {
    /// Dropout with `rate`.
    pub fn new(rate: f64) -> Dropout {
        Dropout { rate, name: None }
    }
}

/// The values of a dropout mask: `n` elements, each 0 with probability `rate`, else
/// `1 / (1 - rate)`, drawn from `rng`.
pub fn dropout_mask(rng: &mut crate::init::Rng, n: usize, rate: f64) -> Vec<f32> {
    let mut m = vec![0.0; n];
    fill_dropout_mask(rng, &mut m, rate);
    m
}

/// [`dropout_mask`] written into `out` (the same values for the same generator state).
pub fn fill_dropout_mask(rng: &mut crate::init::Rng, out: &mut [f32], rate: f64) {
    let keep = (1.0 / (1.0 - rate)) as f32;
    for m in out {
        *m = if rng.uniform() < rate { 0.0 } else { keep };
    }
}

/// Sets an activation, an initializer or a regularizer on layers that have them.
macro_rules! common_setters {
    ($($t:ty),*) => {$(
        impl $t {
            /// Sets the activation.
            pub fn activation(mut self, a: Activation) -> Self {
                self.activation = a;
                self
            }

            /// Sets whether the layer has a bias.
            pub fn use_bias(mut self, b: bool) -> Self {
                self.use_bias = b;
                self
            }

            /// Sets the kernel initializer.
            pub fn kernel_initializer(mut self, i: Initializer) -> Self {
                self.kernel_initializer = i;
                self
            }

            /// Sets the bias initializer.
            pub fn bias_initializer(mut self, i: Initializer) -> Self {
                self.bias_initializer = i;
                self
            }

            /// Sets the kernel penalty.
            pub fn kernel_regularizer(mut self, r: Regularizer) -> Self {
                self.kernel_regularizer = Some(r);
                self
            }

            /// Sets the bias penalty.
            pub fn bias_regularizer(mut self, r: Regularizer) -> Self {
                self.bias_regularizer = Some(r);
                self
            }
        }
    )*};
}

common_setters!(Dense, Conv2D, SimpleRNN, LSTM, GRU);

/// The setters of the recurrent layers.
macro_rules! recurrent_setters {
    ($($t:ty),*) => {$(
        impl $t {
            /// Sets the recurrent kernel initializer.
            pub fn recurrent_initializer(mut self, i: Initializer) -> Self {
                self.recurrent_initializer = i;
                self
            }

            /// Sets the recurrent kernel penalty.
            pub fn recurrent_regularizer(mut self, r: Regularizer) -> Self {
                self.recurrent_regularizer = Some(r);
                self
            }

            /// Sets whether the output is every step's state (`[timesteps, units]`).
            pub fn return_sequences(mut self, r: bool) -> Self {
                self.return_sequences = r;
                self
            }
        }
    )*};
}

recurrent_setters!(SimpleRNN, LSTM, GRU);

macro_rules! gate_setters {
    ($($t:ty),*) => {$(
        impl $t {
            /// Sets the activation of the gates (`recurrent_activation`).
            pub fn recurrent_activation(mut self, a: Activation) -> Self {
                self.recurrent_activation = a;
                self
            }
        }
    )*};
}

gate_setters!(LSTM, GRU);

macro_rules! name_setter {
    ($($t:ty),*) => {$(
        impl $t {
            /// Sets the layer name (which prefixes its node names).
            pub fn name(mut self, name: &str) -> Self {
                self.name = Some(name.to_string());
                self
            }
        }
    )*};
}

name_setter!(
    Dense,
    Conv2D,
    MaxPool2D,
    AvgPool2D,
    GlobalAvgPool2D,
    LayerNorm,
    Flatten,
    SimpleRNN,
    LSTM,
    GRU,
    Dropout,
    Embedding,
    BatchNorm
);

/// One layer of a [`super::Sequential`] model.
#[derive(Clone, Debug, PartialEq)]
pub enum Layer {
    /// Fully connected.
    Dense(Dense),
    /// 2-D convolution.
    Conv2D(Conv2D),
    /// 2-D max pooling.
    MaxPool2D(MaxPool2D),
    /// Flatten.
    Flatten(Flatten),
    /// Simple recurrent layer.
    SimpleRNN(SimpleRNN),
    /// Long short-term memory.
    LSTM(LSTM),
    /// Gated recurrent unit.
    GRU(GRU),
    /// Dropout.
    Dropout(Dropout),
    /// 2-D average pooling.
    AvgPool2D(AvgPool2D),
    /// Global 2-D average pooling.
    GlobalAvgPool2D(GlobalAvgPool2D),
    /// Layer normalization.
    LayerNorm(LayerNorm),
    /// Embedding lookup.
    Embedding(Embedding),
    /// Batch normalization.
    BatchNorm(BatchNorm),
}

macro_rules! layer_from {
    ($($v:ident),*) => {$(
        impl From<$v> for Layer {
            fn from(l: $v) -> Layer {
                Layer::$v(l)
            }
        }
    )*};
}

layer_from!(
    Dense,
    Conv2D,
    MaxPool2D,
    Flatten,
    SimpleRNN,
    LSTM,
    GRU,
    Dropout,
    AvgPool2D,
    GlobalAvgPool2D,
    LayerNorm,
    Embedding,
    BatchNorm
);

/// One parameter of a layer: its suffix (`kernel`, `bias`, ...), shape, initializer and penalty.
#[derive(Clone, Debug, PartialEq)]
pub struct ParamSpec {
    /// Suffix of the node name: `<layer>.<suffix>`.
    pub suffix: &'static str,
    /// Shape.
    pub shape: Vec<usize>,
    /// Initializer.
    pub init: Initializer,
    /// Penalty added to the loss.
    pub regularizer: Option<Regularizer>,
}

/// What a layer appended: its output and, when it ends in a softmax or sigmoid, the values
/// before the activation (the logits, for the fused stable losses).
pub(crate) struct LayerOut {
    pub(crate) y: NodeId,
    pub(crate) logits: Option<NodeId>,
}

impl Layer {
    /// Keras' class name (`Dense`, `Conv2D`, `MaxPooling2D`, ...).
    pub fn kind(&self) -> &'static str {
        match self {
            Layer::Dense(_) => "Dense",
            Layer::Conv2D(_) => "Conv2D",
            Layer::MaxPool2D(_) => "MaxPooling2D",
            Layer::Flatten(_) => "Flatten",
            Layer::SimpleRNN(_) => "SimpleRNN",
            Layer::LSTM(_) => "LSTM",
            Layer::GRU(_) => "GRU",
            Layer::Dropout(_) => "Dropout",
            Layer::AvgPool2D(_) => "AveragePooling2D",
            Layer::GlobalAvgPool2D(_) => "GlobalAveragePooling2D",
            Layer::LayerNorm(_) => "LayerNormalization",
            Layer::Embedding(_) => "Embedding",
            Layer::BatchNorm(_) => "BatchNormalization",
        }
    }

    /// Keras' default name stem (`dense`, `conv2d`, `max_pooling2d`, ...).
    pub fn base_name(&self) -> &'static str {
        match self {
            Layer::Dense(_) => "dense",
            Layer::Conv2D(_) => "conv2d",
            Layer::MaxPool2D(_) => "max_pooling2d",
            Layer::Flatten(_) => "flatten",
            Layer::SimpleRNN(_) => "simple_rnn",
            Layer::LSTM(_) => "lstm",
            Layer::GRU(_) => "gru",
            Layer::Dropout(_) => "dropout",
            Layer::AvgPool2D(_) => "average_pooling2d",
            Layer::GlobalAvgPool2D(_) => "global_average_pooling2d",
            Layer::LayerNorm(_) => "layer_normalization",
            Layer::Embedding(_) => "embedding",
            Layer::BatchNorm(_) => "batch_normalization",
        }
    }

    /// The name given by the user, if any.
    pub fn explicit_name(&self) -> Option<&str> {
        match self {
            Layer::Dense(l) => l.name.as_deref(),
            Layer::Conv2D(l) => l.name.as_deref(),
            Layer::MaxPool2D(l) => l.name.as_deref(),
            Layer::Flatten(l) => l.name.as_deref(),
            Layer::SimpleRNN(l) => l.name.as_deref(),
            Layer::LSTM(l) => l.name.as_deref(),
            Layer::GRU(l) => l.name.as_deref(),
            Layer::Dropout(l) => l.name.as_deref(),
            Layer::AvgPool2D(l) => l.name.as_deref(),
            Layer::GlobalAvgPool2D(l) => l.name.as_deref(),
            Layer::LayerNorm(l) => l.name.as_deref(),
            Layer::Embedding(l) => l.name.as_deref(),
            Layer::BatchNorm(l) => l.name.as_deref(),
        }
    }

    /// The final activation, for layers that have one.
    pub fn activation(&self) -> Option<Activation> {
        match self {
            Layer::Dense(l) => Some(l.activation),
            Layer::Conv2D(l) => Some(l.activation),
            Layer::SimpleRNN(l) if !l.return_sequences => Some(l.activation),
            _ => None,
        }
    }

    /// The parameters of this layer for a per-example input shape `input` (which must have
    /// been validated by [`Layer::output_shape`]).
    pub fn params(&self, input: &[usize]) -> Vec<ParamSpec> {
        let last = input.last().copied().unwrap_or(0);
        let p = |suffix, shape: Vec<usize>, init, regularizer| ParamSpec {
            suffix,
            shape,
            init,
            regularizer,
        };
        let mut v = Vec::new();
        match self {
            Layer::Dense(l) => {
                v.push(p(
                    "kernel",
                    vec![last, l.units],
                    l.kernel_initializer,
                    l.kernel_regularizer,
                ));
                if l.use_bias {
                    v.push(p(
                        "bias",
                        vec![l.units],
                        l.bias_initializer,
                        l.bias_regularizer,
                    ));
                }
            }
            Layer::Conv2D(l) => {
                let [kh, kw] = l.kernel_size;
                v.push(p(
                    "kernel",
                    vec![kh, kw, last, l.filters],
                    l.kernel_initializer,
                    l.kernel_regularizer,
                ));
                if l.use_bias {
                    v.push(p(
                        "bias",
                        vec![l.filters],
                        l.bias_initializer,
                        l.bias_regularizer,
                    ));
                }
            }
            Layer::SimpleRNN(l) => {
                let r = Recurrent::of_simple(l);
                v.extend(r.params(last, p));
            }
            Layer::LSTM(l) => {
                let r = Recurrent::of_lstm(l);
                v.extend(r.params(last, p));
            }
            Layer::GRU(l) => {
                let r = Recurrent::of_gru(l);
                v.extend(r.params(last, p));
            }
            Layer::LayerNorm(_) => {
                v.push(p("gamma", vec![last], Initializer::Ones, None));
                v.push(p("beta", vec![last], Initializer::Zeros, None));
            }
            Layer::Embedding(l) => {
                v.push(p(
                    "embeddings",
                    vec![l.input_dim, l.output_dim],
                    l.embeddings_initializer,
                    l.embeddings_regularizer,
                ));
            }
            Layer::BatchNorm(l) => {
                if l.scale {
                    v.push(p("gamma", vec![last], Initializer::Ones, None));
                }
                if l.center {
                    v.push(p("beta", vec![last], Initializer::Zeros, None));
                }
            }
            Layer::MaxPool2D(_)
            | Layer::AvgPool2D(_)
            | Layer::GlobalAvgPool2D(_)
            | Layer::Flatten(_)
            | Layer::Dropout(_) => {}
        }
        v
    }

    /// The non-trainable state of this layer for a per-example input shape `input` (validated
    /// by [`Layer::output_shape`]): its suffix, shape and initializer. Batch normalization's
    /// moving statistics; no other layer has any.
    pub fn states(&self, input: &[usize]) -> Vec<(&'static str, Vec<usize>, Initializer)> {
        let last = input.last().copied().unwrap_or(0);
        match self {
            Layer::BatchNorm(_) => vec![
                ("moving_mean", vec![last], Initializer::Zeros),
                ("moving_variance", vec![last], Initializer::Ones),
            ],
            _ => Vec::new(),
        }
    }

    /// The per-example output shape for a per-example input shape, or a message saying what
    /// input the layer expected.
    pub fn output_shape(&self, input: &[usize]) -> Result<Vec<usize>, String> {
        match self {
            Layer::Dense(l) => {
                nonzero("units", l.units)?;
                match input.split_last() {
                    Some((&f, rest)) if f > 0 => {
                        let mut out = rest.to_vec();
                        out.push(l.units);
                        Ok(out)
                    }
                    _ => Err(format!(
                        "expected an input with features on the last axis, found {}",
                        shape_str(input)
                    )),
                }
            }
            Layer::Conv2D(l) => {
                nonzero("filters", l.filters)?;
                let [h, w, _] = image(input)?;
                let (oh, ow) = conv_hw(l, h, w)?;
                Ok(vec![oh, ow, l.filters])
            }
            Layer::MaxPool2D(l) => {
                let [h, w, c] = image(input)?;
                let s = l.strides.unwrap_or(l.pool_size);
                let out = |n: usize, k: usize, s: usize| -> Result<usize, String> {
                    if k == 0 || s == 0 || k > n {
                        return Err(format!(
                            "pool size {:?} with strides {s:?} does not fit input {}",
                            l.pool_size,
                            shape_str(input)
                        ));
                    }
                    Ok((n - k) / s + 1)
                };
                Ok(vec![
                    out(h, l.pool_size[0], s[0])?,
                    out(w, l.pool_size[1], s[1])?,
                    c,
                ])
            }
            Layer::Flatten(_) => Ok(vec![input.iter().product()]),
            Layer::SimpleRNN(l) => Recurrent::of_simple(l).output_shape(input),
            Layer::LSTM(l) => Recurrent::of_lstm(l).output_shape(input),
            Layer::GRU(l) => Recurrent::of_gru(l).output_shape(input),
            Layer::Dropout(l) => {
                if !(0.0..1.0).contains(&l.rate) {
                    return Err(format!("rate must be in [0, 1), found {}", l.rate));
                }
                Ok(input.to_vec())
            }
            Layer::AvgPool2D(l) => {
                let [h, w, c] = image(input)?;
                let s = l.strides.unwrap_or(l.pool_size);
                let fit = |n: usize, k: usize, s: usize| {
                    (k > 0)
                        .then(|| l.padding.out_and_pad(n, k, s).map(|(o, _)| o))
                        .flatten()
                };
                match (fit(h, l.pool_size[0], s[0]), fit(w, l.pool_size[1], s[1])) {
                    (Some(oh), Some(ow)) if oh > 0 && ow > 0 => Ok(vec![oh, ow, c]),
                    _ => Err(format!(
                        "pool size {:?} with strides {s:?} and padding {} does not fit input {}",
                        l.pool_size,
                        l.padding.name(),
                        shape_str(input)
                    )),
                }
            }
            Layer::GlobalAvgPool2D(_) => {
                let [_, _, c] = image(input)?;
                Ok(vec![c])
            }
            Layer::Embedding(l) => {
                nonzero("input_dim", l.input_dim)?;
                nonzero("output_dim", l.output_dim)?;
                let mut out = input.to_vec();
                out.push(l.output_dim);
                Ok(out)
            }
            Layer::BatchNorm(l) => {
                if !(l.epsilon.is_finite() && l.epsilon > 0.0) {
                    return Err(format!("epsilon must be positive, found {}", l.epsilon));
                }
                if !(0.0..=1.0).contains(&l.momentum) {
                    return Err(format!("momentum must be in [0, 1], found {}", l.momentum));
                }
                match input.last() {
                    Some(&f) if f > 0 => Ok(input.to_vec()),
                    _ => Err(format!(
                        "expected an input with features on the last axis, found {}",
                        shape_str(input)
                    )),
                }
            }
            Layer::LayerNorm(l) => {
                if !(l.epsilon.is_finite() && l.epsilon > 0.0) {
                    return Err(format!("epsilon must be positive, found {}", l.epsilon));
                }
                match input.last() {
                    Some(&f) if f > 0 => Ok(input.to_vec()),
                    _ => Err(format!(
                        "expected an input with features on the last axis, found {}",
                        shape_str(input)
                    )),
                }
            }
        }
    }

    /// Appends the layer's forward computation on `x` (`[batch, ..input]`) with its params
    /// (in [`Layer::params`] order) and state (in [`Layer::states`] order). `mask` is the
    /// dropout mask input in training graphs; `training` says which graph this is (batch
    /// normalization then uses the batch's statistics and updates its state).
    pub(crate) fn build(
        &self,
        at: &mut At<'_>,
        x: NodeId,
        params: &[NodeId],
        states: &[NodeId],
        mask: Option<NodeId>,
        training: bool,
    ) -> Result<LayerOut, BuildError> {
        match self {
            Layer::BatchNorm(l) => {
                let y = batch_norm(at, l, x, params, states, training)?;
                Ok(LayerOut { y, logits: None })
            }
            Layer::Dense(l) => {
                let xs = at.ty(x)?.shape;
                let dims = xs.dims();
                let f = dims[dims.len() - 1];
                let rows: usize = dims[..dims.len() - 1].iter().product();
                let flat = dims.len() != 2;
                let x2 = if flat {
                    reshape(at, x, vec![rows, f])?
                } else {
                    x
                };
                let mut z = at.op(Op::Matmul, &[x2, params[0]])?;
                if l.use_bias {
                    z = at.add(z, params[1])?;
                }
                if flat {
                    let mut out = dims[..dims.len() - 1].to_vec();
                    out.push(l.units);
                    z = reshape(at, z, out)?;
                }
                activate(at, l.activation, z)
            }
            Layer::Conv2D(l) => {
                let mut z = at.op(
                    Op::Conv2d {
                        stride: l.strides,
                        padding: l.padding,
                    },
                    &[x, params[0]],
                )?;
                if l.use_bias {
                    z = at.add(z, params[1])?;
                }
                activate(at, l.activation, z)
            }
            Layer::MaxPool2D(l) => {
                let y = at.op(
                    Op::MaxPool2d {
                        window: l.pool_size,
                        stride: l.strides.unwrap_or(l.pool_size),
                    },
                    &[x],
                )?;
                Ok(LayerOut { y, logits: None })
            }
            Layer::Flatten(_) => {
                let s = at.ty(x)?.shape;
                let n = s.dims()[0];
                let y = reshape(at, x, vec![n, s.numel() / n.max(1)])?;
                Ok(LayerOut { y, logits: None })
            }
            Layer::SimpleRNN(l) => Recurrent::of_simple(l).build(at, x, params),
            Layer::LSTM(l) => Recurrent::of_lstm(l).build(at, x, params),
            Layer::GRU(l) => Recurrent::of_gru(l).build(at, x, params),
            Layer::Dropout(_) => {
                let y = match mask {
                    Some(m) => at.mul(x, m)?,
                    None => x,
                };
                Ok(LayerOut { y, logits: None })
            }
            Layer::AvgPool2D(l) => {
                let y = avg_pool(at, l, x)?;
                Ok(LayerOut { y, logits: None })
            }
            Layer::GlobalAvgPool2D(_) => {
                let y = mean(at, x, vec![1, 2], false)?;
                Ok(LayerOut { y, logits: None })
            }
            Layer::Embedding(_) => {
                let ids = if at.ty(x)?.dtype == DType::I32 {
                    x
                } else {
                    at.op(Op::Cast { to: DType::I32 }, &[x])?
                };
                let y = at.op(Op::Gather { axis: 0 }, &[params[0], ids])?;
                Ok(LayerOut { y, logits: None })
            }
            Layer::LayerNorm(l) => {
                let last = at.ty(x)?.shape.rank() - 1;
                let m = mean(at, x, vec![last], true)?;
                let d = at.sub(x, m)?;
                let d2 = at.mul(d, d)?;
                let var = mean(at, d2, vec![last], true)?;
                let eps = at.scalar(l.epsilon)?;
                let ve = at.add(var, eps)?;
                let sd = at.unary(UnaryOp::Sqrt, ve)?;
                let n = at.div(d, sd)?;
                let scaled = at.mul(n, params[0])?;
                let y = at.add(scaled, params[1])?;
                Ok(LayerOut { y, logits: None })
            }
        }
    }
}

/// Batch normalization of `x` over every axis but the last (see [`BatchNorm`]); in training
/// it also adds the updates of the moving statistics `states = [moving_mean,
/// moving_variance]` to the graph.
fn batch_norm(
    at: &mut At<'_>,
    l: &BatchNorm,
    x: NodeId,
    params: &[NodeId],
    states: &[NodeId],
    training: bool,
) -> Result<NodeId, BuildError> {
    let &[moving_mean, moving_var] = states else {
        return Err(at.err(format!(
            "batch normalization needs its two moving statistics, found {} state nodes",
            states.len()
        )));
    };
    let rank = at.ty(x)?.shape.rank();
    let axes: Vec<usize> = (0..rank.saturating_sub(1)).collect();
    let (d, var) = if training {
        let m = mean(at, x, axes.clone(), true)?;
        let d = at.sub(x, m)?;
        let d2 = at.mul(d, d)?;
        let v = mean(at, d2, axes.clone(), true)?;
        // moving = moving * momentum + batch * (1 - momentum), Keras' update
        for (state, batch) in [(moving_mean, m), (moving_var, v)] {
            let shape = at.ty(state)?.shape;
            let flat = at.op(Op::Reshape { shape }, &[batch])?;
            let old = at.scale(state, l.momentum)?;
            let new = at.scale(flat, 1.0 - l.momentum)?;
            let next = at.add(old, new)?;
            at.g.add_update(state, next)?;
        }
        (d, v)
    } else {
        (at.sub(x, moving_mean)?, moving_var)
    };
    let eps = at.scalar(l.epsilon)?;
    let ve = at.add(var, eps)?;
    let sd = at.unary(UnaryOp::Sqrt, ve)?;
    let mut y = at.div(d, sd)?;
    let mut next = params.iter();
    if l.scale {
        if let Some(&gamma) = next.next() {
            y = at.mul(y, gamma)?;
        }
    }
    if l.center {
        if let Some(&beta) = next.next() {
            y = at.add(y, beta)?;
        }
    }
    Ok(y)
}

/// `reduce_mean` of `x` over `axes`.
fn mean(
    at: &mut At<'_>,
    x: NodeId,
    axes: Vec<usize>,
    keepdims: bool,
) -> Result<NodeId, BuildError> {
    at.op(
        Op::Reduce {
            kind: ReduceOp::Mean,
            axes,
            keepdims,
        },
        &[x],
    )
}

/// Average pooling of NHWC `x`. Windows that tile the input (valid padding, stride = pool
/// size) are a crop, a reshape that splits each spatial axis into (window, offset), and a
/// mean over the offsets: no arithmetic beyond the mean. Other windows are sums by a
/// convolution with a per-channel ones kernel (`kernel[i, j, c, c] = 1`), divided by the
/// number of input elements in each window (a convolution of ones: a constant, which the
/// pipeline's `fold` replaces by its values when it has at most 1,024), which is what `same`
/// padding needs.
fn avg_pool(at: &mut At<'_>, l: &AvgPool2D, x: NodeId) -> Result<NodeId, BuildError> {
    let dims = at.ty(x)?.shape.dims().to_vec();
    let &[b, h, w, c] = dims.as_slice() else {
        return Err(at.err(format!(
            "average pooling expects NHWC input, found {}",
            at.ty(x)?
        )));
    };
    let [ph, pw] = l.pool_size;
    let s = l.strides.unwrap_or(l.pool_size);
    if l.padding == Padding::Valid && s == l.pool_size {
        let (oh, ow) = (h / ph, w / pw);
        let xc = if oh * ph == h && ow * pw == w {
            x
        } else {
            at.op(
                Op::Slice {
                    begin: vec![0, 0, 0, 0],
                    end: vec![b, oh * ph, ow * pw, c],
                },
                &[x],
            )?
        };
        let split = reshape(at, xc, vec![b, oh, ph, ow, pw, c])?;
        return mean(at, split, vec![2, 4], false);
    }
    let conv = Op::Conv2d {
        stride: s,
        padding: l.padding,
    };
    let mut k = vec![0.0; ph * pw * c * c];
    for tap in 0..ph * pw {
        for ch in 0..c {
            k[(tap * c + ch) * c + ch] = 1.0;
        }
    }
    let kernel = at.constant(TensorType::f32([ph, pw, c, c]), Literal::Dense(k))?;
    let sums = at.op(conv.clone(), &[x, kernel])?;
    let ones = at.constant(TensorType::f32([1, h, w, 1]), Literal::Splat(1.0))?;
    let window = at.constant(TensorType::f32([ph, pw, 1, 1]), Literal::Splat(1.0))?;
    let counts = at.op(conv, &[ones, window])?;
    at.div(sums, counts)
}

/// The cell of a recurrent layer: how its gates make the next state.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Cell {
    /// `h' = act(z)`.
    Simple,
    /// Four gates `i, f, c, o` and a cell state.
    Lstm,
    /// Three gates `z, r, h`, the reset gate applied after the recurrent product.
    Gru,
}

/// What the three recurrent layers share: their sizes, activations and params, and one
/// builder (the input projection of every step as one GEMM before the loop, then a `scan`
/// over the steps, batch-major, whose body is the cell).
struct Recurrent<'l> {
    cell: Cell,
    units: usize,
    activation: Activation,
    recurrent_activation: Activation,
    use_bias: bool,
    return_sequences: bool,
    inits: [Initializer; 3],
    regs: [&'l Option<Regularizer>; 3],
}

impl<'l> Recurrent<'l> {
    fn of_simple(l: &'l SimpleRNN) -> Recurrent<'l> {
        Recurrent {
            cell: Cell::Simple,
            units: l.units,
            activation: l.activation,
            recurrent_activation: l.activation,
            use_bias: l.use_bias,
            return_sequences: l.return_sequences,
            inits: [
                l.kernel_initializer,
                l.recurrent_initializer,
                l.bias_initializer,
            ],
            regs: [
                &l.kernel_regularizer,
                &l.recurrent_regularizer,
                &l.bias_regularizer,
            ],
        }
    }

    fn of_lstm(l: &'l LSTM) -> Recurrent<'l> {
        Recurrent {
            cell: Cell::Lstm,
            units: l.units,
            activation: l.activation,
            recurrent_activation: l.recurrent_activation,
            use_bias: l.use_bias,
            return_sequences: l.return_sequences,
            inits: [
                l.kernel_initializer,
                l.recurrent_initializer,
                l.bias_initializer,
            ],
            regs: [
                &l.kernel_regularizer,
                &l.recurrent_regularizer,
                &l.bias_regularizer,
            ],
        }
    }

    fn of_gru(l: &'l GRU) -> Recurrent<'l> {
        Recurrent {
            cell: Cell::Gru,
            units: l.units,
            activation: l.activation,
            recurrent_activation: l.recurrent_activation,
            use_bias: l.use_bias,
            return_sequences: l.return_sequences,
            inits: [
                l.kernel_initializer,
                l.recurrent_initializer,
                l.bias_initializer,
            ],
            regs: [
                &l.kernel_regularizer,
                &l.recurrent_regularizer,
                &l.bias_regularizer,
            ],
        }
    }

    /// Number of gates: columns of the kernels are `gates * units`.
    fn gates(&self) -> usize {
        match self.cell {
            Cell::Simple => 1,
            Cell::Lstm => 4,
            Cell::Gru => 3,
        }
    }

    fn output_shape(&self, input: &[usize]) -> Result<Vec<usize>, String> {
        nonzero("units", self.units)?;
        match input {
            [t, f] if *t > 0 && *f > 0 && self.return_sequences => Ok(vec![*t, self.units]),
            [t, f] if *t > 0 && *f > 0 => Ok(vec![self.units]),
            _ => Err(format!(
                "expected an input of shape (timesteps, features), found {}",
                shape_str(input)
            )),
        }
    }

    /// `kernel [features, gates*units]`, `recurrent_kernel [units, gates*units]` and, with
    /// a bias, `bias [gates*units]` (a GRU's `[2, 3*units]`).
    fn params(
        &self,
        features: usize,
        p: impl Fn(&'static str, Vec<usize>, Initializer, Option<Regularizer>) -> ParamSpec,
    ) -> Vec<ParamSpec> {
        let g = self.gates() * self.units;
        let mut v = vec![
            p("kernel", vec![features, g], self.inits[0], *self.regs[0]),
            p(
                "recurrent_kernel",
                vec![self.units, g],
                self.inits[1],
                *self.regs[1],
            ),
        ];
        if self.use_bias {
            let shape = match self.cell {
                Cell::Gru => vec![2, g],
                _ => vec![g],
            };
            v.push(p("bias", shape, self.inits[2], *self.regs[2]));
        }
        v
    }

    /// Appends the layer to `x` (`[batch, timesteps, features]`).
    fn build(&self, at: &mut At<'_>, x: NodeId, params: &[NodeId]) -> Result<LayerOut, BuildError> {
        let s = at.ty(x)?.shape;
        let [n, t, f] = s.dims() else {
            return Err(at.err(format!(
                "a recurrent layer expects [batch, timesteps, features], found {s}"
            )));
        };
        let (n, t, f) = (*n, *t, *f);
        let (u, g) = (self.units, self.gates() * self.units);
        let (w, rk) = (params[0], params[1]);
        // every step's input projection at once: [n*t, f] x [f, g]
        let x2 = reshape(at, x, vec![n * t, f])?;
        let mut xw = at.op(Op::Matmul, &[x2, w])?;
        let mut recurrent_bias = None;
        if self.use_bias {
            let input_bias = match self.cell {
                Cell::Gru => {
                    let rows = |at: &mut At<'_>, r: usize| -> Result<NodeId, BuildError> {
                        let row = at.op(
                            Op::Slice {
                                begin: vec![r, 0],
                                end: vec![r + 1, g],
                            },
                            &[params[2]],
                        )?;
                        reshape(at, row, vec![g])
                    };
                    recurrent_bias = Some(rows(at, 1)?);
                    rows(at, 0)?
                }
                _ => params[2],
            };
            xw = at.add(xw, input_bias)?;
        }
        let xw = reshape(at, xw, vec![n, t, g])?;

        // the cell, as the scan's body
        let mut body = crate::graph::Graph::new("cell");
        let mut inner = At {
            g: &mut body,
            loc: at.loc.clone(),
        };
        let carries = if self.cell == Cell::Lstm { 2 } else { 1 };
        let input = |inner: &mut At<'_>, name: &str, shape: Vec<usize>| {
            inner.g.input(name, TensorType::f32(shape))
        };
        let h = input(&mut inner, "h", vec![n, u])?;
        let c = match self.cell {
            Cell::Lstm => Some(input(&mut inner, "c", vec![n, u])?),
            _ => None,
        };
        let xt = input(&mut inner, "xw", vec![n, g])?;
        let rk_in = input(&mut inner, "recurrent_kernel", vec![u, g])?;
        let rb_in = match recurrent_bias {
            Some(_) => Some(input(&mut inner, "recurrent_bias", vec![g])?),
            None => None,
        };
        let gate = |inner: &mut At<'_>, z: NodeId, k: usize| -> Result<NodeId, BuildError> {
            inner.op(
                Op::Slice {
                    begin: vec![0, k * u],
                    end: vec![n, (k + 1) * u],
                },
                &[z],
            )
        };
        let mut hu = inner.op(Op::Matmul, &[h, rk_in])?;
        let (h_next, c_next) = match self.cell {
            Cell::Simple => {
                let z = inner.add(xt, hu)?;
                (self.activation.apply(&mut inner, z)?, None)
            }
            Cell::Lstm => {
                let z = inner.add(xt, hu)?;
                let i = gate(&mut inner, z, 0)?;
                let i = self.recurrent_activation.apply(&mut inner, i)?;
                let fg = gate(&mut inner, z, 1)?;
                let fg = self.recurrent_activation.apply(&mut inner, fg)?;
                let cc = gate(&mut inner, z, 2)?;
                let cc = self.activation.apply(&mut inner, cc)?;
                let o = gate(&mut inner, z, 3)?;
                let o = self.recurrent_activation.apply(&mut inner, o)?;
                let c_prev = c.ok_or_else(|| inner.err("an LSTM carries a cell state".into()))?;
                let kept = inner.mul(fg, c_prev)?;
                let added = inner.mul(i, cc)?;
                let c2 = inner.add(kept, added)?;
                let ac = self.activation.apply(&mut inner, c2)?;
                (inner.mul(o, ac)?, Some(c2))
            }
            Cell::Gru => {
                if let Some(rb) = rb_in {
                    hu = inner.add(hu, rb)?;
                }
                let xz = gate(&mut inner, xt, 0)?;
                let xr = gate(&mut inner, xt, 1)?;
                let xh = gate(&mut inner, xt, 2)?;
                let rz = gate(&mut inner, hu, 0)?;
                let rr = gate(&mut inner, hu, 1)?;
                let rh = gate(&mut inner, hu, 2)?;
                let z = inner.add(xz, rz)?;
                let z = self.recurrent_activation.apply(&mut inner, z)?;
                let r = inner.add(xr, rr)?;
                let r = self.recurrent_activation.apply(&mut inner, r)?;
                let reset = inner.mul(r, rh)?;
                let hh = inner.add(xh, reset)?;
                let hh = self.activation.apply(&mut inner, hh)?;
                // h' = z h + (1 - z) hh = hh + z (h - hh)
                let d = inner.sub(h, hh)?;
                let zd = inner.mul(z, d)?;
                (inner.add(hh, zd)?, None)
            }
        };
        body.add_output("h", h_next)?;
        if let Some(c2) = c_next {
            body.add_output("c", c2)?;
        }
        if self.return_sequences {
            body.add_output("y", h_next)?;
        }
        let mut body_params = vec![h];
        body_params.extend(c);
        body_params.extend([xt, rk_in]);
        body_params.extend(rb_in);

        let zeros = |at: &mut At<'_>| at.constant(TensorType::f32([n, u]), Literal::Splat(0.0));
        let mut operands = vec![zeros(at)?];
        if c.is_some() {
            operands.push(zeros(at)?);
        }
        operands.extend([xw, rk]);
        operands.extend(recurrent_bias);
        let loop_ = crate::scan::Loop {
            carries,
            sequences: 1,
            reverse: false,
            axis: 1,
        };
        let results =
            at.g.scan(&body, &body_params, &operands, loop_)
                .map_err(|e| BuildError {
                    loc: Some(at.loc.clone()),
                    ..e
                })?;
        let y = match self.return_sequences {
            true => results[carries],
            false => results[0],
        };
        Ok(LayerOut { y, logits: None })
    }
}

fn activate(at: &mut At<'_>, a: Activation, z: NodeId) -> Result<LayerOut, BuildError> {
    let y = a.apply(at, z)?;
    let logits = matches!(a, Activation::Softmax | Activation::Sigmoid).then_some(z);
    Ok(LayerOut { y, logits })
}

fn reshape(at: &mut At<'_>, x: NodeId, shape: Vec<usize>) -> Result<NodeId, BuildError> {
    at.op(
        Op::Reshape {
            shape: Shape(shape),
        },
        &[x],
    )
}

fn nonzero(what: &str, v: usize) -> Result<(), String> {
    if v == 0 {
        Err(format!("{what} must be at least 1"))
    } else {
        Ok(())
    }
}

fn image(input: &[usize]) -> Result<[usize; 3], String> {
    match input {
        [h, w, c] if *h > 0 && *w > 0 && *c > 0 => Ok([*h, *w, *c]),
        _ => Err(format!(
            "expected an image input (height, width, channels), found {}",
            shape_str(input)
        )),
    }
}

fn conv_hw(l: &Conv2D, h: usize, w: usize) -> Result<(usize, usize), String> {
    let [kh, kw] = l.kernel_size;
    let fit = |n: usize, k: usize, s: usize| l.padding.out_and_pad(n, k, s).map(|(o, _)| o);
    match (fit(h, kh, l.strides[0]), fit(w, kw, l.strides[1])) {
        (Some(oh), Some(ow)) if kh > 0 && kw > 0 => Ok((oh, ow)),
        _ => Err(format!(
            "kernel {kh}x{kw} with strides {:?} and padding {} does not fit a {h}x{w} input",
            l.strides,
            l.padding.name()
        )),
    }
}

/// A per-example shape as Keras prints it with the batch: `(None, 26, 26, 32)`.
pub fn shape_str(dims: &[usize]) -> String {
    let mut s = String::from("(None");
    for d in dims {
        s.push_str(&format!(", {d}"));
    }
    s.push(')');
    s
}

/// The type of a batch of examples of per-example shape `dims`.
pub(crate) fn batched(batch: usize, dims: &[usize]) -> TensorType {
    let mut s = vec![batch];
    s.extend_from_slice(dims);
    TensorType::f32(s)
}
