//! gradlift compiles deep-learning models into native training-step functions.

pub mod autodiff;
pub mod codegen;
pub mod data;
pub mod graph;
pub mod init;
pub mod interp;
pub mod nn;
pub mod op;
pub mod optim;
pub mod passes;
pub mod runtime;
pub mod shape;
pub mod text;
pub mod verify;

pub use graph::{BuildError, Graph, Node, NodeId, SourceLoc};
pub use op::{BinaryOp, CmpOp, Init, Literal, Op, Padding, ReduceOp, UnaryOp};
pub use shape::{DType, Shape, TensorType};
