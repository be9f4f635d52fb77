//! gradlift compiles deep-learning models into native training-step functions.
//!
//! Build a graph with the builder API, differentiate it, add the optimizer's updates, and
//! compile forward + gradient + update into one native function (Cranelift), then call it:
//!
//! ```
//! use gradlift::codegen::CompileOptions;
//! use gradlift::runtime::{self, HostTensor};
//! use gradlift::{autodiff, Graph, Init, TensorType};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! // Linear regression: learn y = 3x + 2.
//! let mut g = Graph::new("linreg");
//! let x = g.input("x", TensorType::f32([8, 1]))?;
//! let y = g.input("y", TensorType::f32([8, 1]))?;
//! let w = g.param("w", [1, 1], Init::Zeros)?;
//! let b = g.param("b", [1], Init::Zeros)?;
//! let p = g.matmul(x, w)?;
//! let p = g.add2(p, b)?;
//! let e = g.sub(p, y)?;
//! let e2 = g.mul(e, e)?;
//! let loss = g.mean_all(e2)?;
//! g.add_output("loss", loss)?;
//!
//! // Gradient nodes are appended to the same graph; SGD writes the params back in place.
//! let grads = autodiff::grad(&mut g, loss, &[w, b])?;
//! let lr = g.scalar(0.3);
//! for (param, grad) in [w, b].into_iter().zip(grads) {
//!     let step = g.mul(grad, lr)?;
//!     let next = g.sub(param, step)?;
//!     g.add_update(param, next)?;
//! }
//!
//! let mut train_step = runtime::compile(&g, &CompileOptions::default())?;
//! let xs: Vec<f32> = (0..8).map(|i| i as f32 / 4.0).collect();
//! let ys: Vec<f32> = xs.iter().map(|x| 3.0 * x + 2.0).collect();
//! let inputs = [
//!     ("x", HostTensor::f32([8, 1], xs)),
//!     ("y", HostTensor::f32([8, 1], ys)),
//! ];
//! for _ in 0..500 {
//!     train_step.run(&inputs)?;
//! }
//! let w = train_step.param("w").unwrap();
//! let b = train_step.param("b").unwrap();
//! assert!((w.as_f32().unwrap()[0] - 3.0).abs() < 0.01);
//! assert!((b.as_f32().unwrap()[0] - 2.0).abs() < 0.01);
//! # Ok(())
//! # }
//! ```

pub mod aot;
pub mod autodiff;
pub mod batch;
pub mod checkpoint;
pub mod codegen;
pub mod data;
pub mod dist;
pub mod fused;
pub mod graph;
pub mod init;
pub mod interp;
pub mod nn;
pub mod numerics;
pub mod onnx;
pub mod op;
pub mod optim;
pub mod passes;
pub mod runtime;
pub mod scan;
pub mod shape;
pub mod step;
pub mod tensor_io;
pub mod text;
pub mod train;
pub mod verify;

pub use graph::{BuildError, Graph, Node, NodeId, SourceLoc};
pub use op::{BinaryOp, CmpOp, Init, Literal, Op, Padding, ReduceOp, UnaryOp};
pub use shape::{DType, Shape, TensorType};
