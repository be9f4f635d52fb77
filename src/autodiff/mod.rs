//! Symbolic reverse-mode automatic differentiation.
//!
//! In: a [`Graph`], a scalar `loss` node and the nodes to differentiate with respect to (`wrt`,
//! params or f32 inputs). Out: one gradient node per `wrt` entry, of the same type as that
//! entry. The gradient computation is appended to the *same* graph as ordinary nodes, so it can
//! be printed, verified, interpreted, optimized, compiled and differentiated again (second
//! order). Every node this module adds has [`Node::grad_of`] set to the forward node whose
//! derivative it belongs to, and that node's source location, so dumps and errors point at the
//! user's line.
//!
//! ```
//! use gradlift::{autodiff, text, Graph, Init, TensorType};
//!
//! let mut g = Graph::new("tiny");
//! let x = g.input("x", TensorType::f32([4, 3])).unwrap();
//! let w = g.param("w", [3, 1], Init::Ones).unwrap();
//! let y = g.matmul(x, w).unwrap();
//! let t = g.tanh(y).unwrap();
//! let loss = g.mean_all(t).unwrap();
//! g.set_name(loss, "loss").unwrap();
//! let dw = autodiff::grad(&mut g, loss, &[w]).unwrap()[0];
//! assert_eq!(g[dw].ty, g[w].ty);
//! assert_eq!(g[dw].grad_of, Some(y)); // made by the matmul's rule: x^T times dy
//! assert!(text::print(&g).contains("grad(%loss)"));
//! ```
//!
//! # How it works
//! A generic driver ([`gradients`]) and a table of per-op rules (`rules.rs`, one small function
//! per op, in the style of JAX's transpose rules or tinygrad's gradient table):
//! 1. *Activity*: a node is active if it is a `wrt` node or one of its gradient-carrying
//!    operands is active. *Reach*: a node is reached if it is the loss or a gradient-carrying
//!    operand of a reached node. Only nodes both active and reached get a cotangent.
//! 2. Before adding anything, every such node is checked to have a rule; a non-differentiable
//!    op (argmax, comparisons, cast, one_hot) on the path is an error naming the op, the node and
//!    its source line, and the graph is left unchanged.
//! 3. Walking the canonical order backwards from the loss (seeded with the constant `1.0`), the
//!    contributions a node receives from its users are summed (fan-out), then its op's rule
//!    turns that cotangent into contributions for its active operands. Rules reduce broadcast
//!    gradients back to each operand's shape with one helper (`unbroadcast`: sum over the
//!    broadcast axes, then reshape).
//!
//! # Conventions at non-differentiable points (documented, and avoided by the gradient tests)
//! - `relu'(0) = 0` (the gradient flows where `x > 0`); `abs'(0) = sign(0) = 0`.
//! - Elementwise `max(a, b)` gives the whole gradient to `a` where `a >= b`, `min(a, b)` to `a`
//!   where `a <= b` (ties go to the first operand).
//! - `reduce_max` splits the gradient equally among tied maxima.
//! - `max_pool2d` routes each window's gradient to its first maximum in row-major order
//!   (see [`Op::MaxPool2dGrad`]); `max_pool2d_grad` itself is differentiable with respect to
//!   its `dy` (a gather at those maxima, so second order works through max pooling), and its
//!   gradient with respect to `x` (which only chooses the routing) is zero.
//! - `sign` has gradient zero; the mask of `select` and the integer labels of
//!   `sparse_softmax_cross_entropy` carry no gradient.
//! - `sqrt` at 0 and `log` at 0 give infinite gradients, like the functions themselves.
//!
//! # Stable forms
//! softmax cross-entropy: `d logits = g * (softmax(logits) * rowsum(labels) - labels)`, which is
//! `softmax - labels` for probability labels (and `softmax - one_hot` for the sparse form);
//! log_softmax: `g - softmax(x) * sum(g)`; sigmoid: `g * y * (1 - y)`; tanh: `g * (1 - y^2)`,
//! all from the forward output `y` or a stable softmax, never `exp` of an unbounded value.
//!
//! # Zero gradients
//! A `wrt` node the loss does not depend on (through gradient-carrying operands) gets an
//! explicit zero constant of its type as its gradient; [`Gradients::independent`] lists those.

mod rules;
mod scan;

use crate::graph::{BuildError, Graph, Node, NodeId, SourceLoc};
use crate::op::{BinaryOp, Literal, Op};
use crate::shape::{DType, Shape, TensorType};
use std::collections::{HashMap, HashSet};
use std::fmt;

/// Why gradients could not be built. Every variant says which node and where.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum GradError {
    /// The loss is not an f32 scalar (`f32[]`).
    #[error("{}loss {node} must be a scalar f32[], found {ty}", at(.loc))]
    NonScalarLoss {
        /// The loss node, as printed (`%name` or `%N`).
        node: String,
        /// Its type.
        ty: TensorType,
        /// Its source location.
        loc: Option<SourceLoc>,
    },
    /// A `wrt` node is not a param or an input.
    #[error(
        "{}cannot differentiate with respect to {node}: it is a {op}, expected a param or an input",
        at(.loc)
    )]
    NotParamOrInput {
        /// The node, as printed.
        node: String,
        /// Its op name.
        op: &'static str,
        /// Its source location.
        loc: Option<SourceLoc>,
    },
    /// A `wrt` node is not f32 (an i32 input has no gradient).
    #[error(
        "{}cannot differentiate with respect to {node}: it is {ty}, expected an f32 tensor",
        at(.loc)
    )]
    IntegerWrt {
        /// The node, as printed.
        node: String,
        /// Its type.
        ty: TensorType,
        /// Its source location.
        loc: Option<SourceLoc>,
    },
    /// An op with no gradient lies on the path from a `wrt` node to the loss.
    #[error("{}{op} {reason}: node {node} ({op}) lies on the path {path}", at(.loc))]
    NotDifferentiable {
        /// The op name.
        op: &'static str,
        /// The node, as printed.
        node: String,
        /// Why there is no gradient.
        reason: &'static str,
        /// Which path: `from %w to the loss %loss`, naming the `wrt` nodes it depends on.
        path: String,
        /// The node's source location.
        loc: Option<SourceLoc>,
    },
    /// A node id given by the caller is not in the graph, or a name is unknown.
    #[error("{0}")]
    Unknown(String),
    /// The graph has a cycle (through the listed nodes).
    #[error("the graph has a cycle through {0}")]
    Cycle(String),
    /// A gradient rule built an ill-typed node: a bug in a rule, reported rather than panicking.
    #[error("internal error in the gradient rule of {op} (node {node}): {source}")]
    Rule {
        /// The forward op whose rule failed.
        op: &'static str,
        /// The forward node, as printed.
        node: String,
        /// The builder's error.
        source: BuildError,
    },
    /// A scan could not be differentiated: what its body or carries do not allow.
    #[error("{}cannot differentiate scan {node}: {message}", at(.loc))]
    Scan {
        /// The scan node, as printed.
        node: String,
        /// What went wrong (an error in its body names the body's node).
        message: String,
        /// Its source location.
        loc: Option<SourceLoc>,
    },
    /// Adding a gradient output failed (for example its name is taken).
    #[error(transparent)]
    Build(#[from] BuildError),
}

impl GradError {
    /// The source location the message starts with, if any (a command-line tool prefixes the
    /// file name to the other errors).
    pub fn loc(&self) -> Option<&SourceLoc> {
        match self {
            GradError::NonScalarLoss { loc, .. }
            | GradError::NotParamOrInput { loc, .. }
            | GradError::IntegerWrt { loc, .. }
            | GradError::NotDifferentiable { loc, .. }
            | GradError::Scan { loc, .. } => loc.as_ref(),
            GradError::Build(b) => b.loc.as_ref(),
            GradError::Unknown(_) | GradError::Cycle(_) | GradError::Rule { .. } => None,
        }
    }
}

fn at(loc: &Option<SourceLoc>) -> String {
    loc.as_ref().map(|l| format!("{l}: ")).unwrap_or_default()
}

/// The result of [`gradients`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Gradients {
    /// One gradient node per `wrt` entry, in the same order, each of the entry's type.
    pub grads: Vec<NodeId>,
    /// The `wrt` nodes the loss does not depend on: their gradient is an explicit zero constant.
    pub independent: Vec<NodeId>,
}

/// Gradients of the scalar `loss` with respect to each node of `wrt` (params or f32 inputs),
/// appended to `g`. Returns one gradient node per `wrt` entry, in order. On error the graph is
/// unchanged. See the module doc for conventions and [`gradients`] for which `wrt` nodes got an
/// explicit zero.
pub fn grad(g: &mut Graph, loss: NodeId, wrt: &[NodeId]) -> Result<Vec<NodeId>, GradError> {
    Ok(gradients(g, loss, wrt)?.grads)
}

/// A named gradient made by [`grad_all_params`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NamedGrad {
    /// The param or input differentiated against.
    pub wrt: NodeId,
    /// Its name.
    pub name: String,
    /// The gradient node.
    pub grad: NodeId,
    /// Output name under which the gradient was exposed (`grad_<name>`).
    pub output: String,
    /// Whether the loss does not depend on `wrt` (the gradient is an explicit zero).
    pub independent: bool,
}

/// The command-line entry point: differentiates the node or output called `loss_name` with
/// respect to the nodes named in `wrt_names` (all params when `None`), and exposes each
/// gradient as an output called `grad_<name>` so it is kept and printed.
pub fn grad_all_params(
    g: &mut Graph,
    loss_name: &str,
    wrt_names: Option<&[&str]>,
) -> Result<Vec<NamedGrad>, GradError> {
    let loss = g
        .output(loss_name)
        .or_else(|| g.find(loss_name))
        .ok_or_else(|| {
            GradError::Unknown(format!(
                "no output or node called {loss_name:?} to use as the loss"
            ))
        })?;
    let wrt: Vec<NodeId> = match wrt_names {
        None => g.params(),
        Some(names) => names
            .iter()
            .map(|n| {
                g.find(n)
                    .ok_or_else(|| GradError::Unknown(format!("--wrt: no node called {n:?}")))
            })
            .collect::<Result<_, _>>()?,
    };
    for &w in &wrt {
        let out = format!("grad_{}", g[w].name.as_deref().unwrap_or("?"));
        if g.output(&out).is_some() {
            return Err(GradError::Unknown(format!(
                "cannot expose the gradient as output {out:?}: an output has that name"
            )));
        }
    }
    let r = gradients(g, loss, &wrt)?;
    let mut named = Vec::with_capacity(wrt.len());
    for (&w, &d) in wrt.iter().zip(&r.grads) {
        let name = g[w].name.clone().unwrap_or_default();
        let output = format!("grad_{name}");
        if g.output(&output).is_none() {
            g.push_output(output.clone(), d);
        }
        named.push(NamedGrad {
            wrt: w,
            name,
            grad: d,
            output,
            independent: r.independent.contains(&w),
        });
    }
    Ok(named)
}

/// Like [`grad`], and also says which `wrt` nodes the loss does not depend on.
pub fn gradients(g: &mut Graph, loss: NodeId, wrt: &[NodeId]) -> Result<Gradients, GradError> {
    let names = Names::new(g);
    let order = g.topo_order().map_err(|cyc| {
        let ids: Vec<String> = cyc.iter().map(|&n| names.get(n)).collect();
        GradError::Cycle(ids.join(", "))
    })?;
    check_args(g, &names, loss, wrt)?;

    let wrt_set: HashSet<NodeId> = wrt.iter().copied().collect();
    let carrying = |g: &Graph, n: NodeId| -> Vec<(NodeId, bool)> {
        let op = &g[n].op;
        g.operands(n)
            .into_iter()
            .enumerate()
            .map(|(i, o)| (o, rules::carries(op, i)))
            .collect()
    };

    // 1. Activity (forward) and reach (backward); cotangents go to nodes that are both.
    let mut active = HashSet::new();
    for &n in &order {
        if wrt_set.contains(&n)
            || carrying(g, n)
                .iter()
                .any(|&(o, c)| c && active.contains(&o))
        {
            active.insert(n);
        }
    }
    let mut reached = HashSet::from([loss]);
    for &n in order.iter().rev() {
        if reached.contains(&n) {
            for (o, c) in carrying(g, n) {
                if c {
                    reached.insert(o);
                }
            }
        }
    }
    let needs = |n: NodeId| active.contains(&n) && reached.contains(&n);

    // 2. Every node on the path must have a rule; fail before changing the graph.
    for &n in order.iter().rev() {
        if needs(n) && !g[n].op.is_leaf() {
            if let Some(reason) = g[n].op.not_differentiable() {
                let upstream: Vec<String> = wrt
                    .iter()
                    .filter(|&&w| depends_on(g, n, w))
                    .map(|&w| names.get(w))
                    .collect();
                return Err(GradError::NotDifferentiable {
                    op: g[n].op.name(),
                    node: names.get(n),
                    reason,
                    path: format!(
                        "from {} to the loss {}",
                        upstream.join(", "),
                        names.get(loss)
                    ),
                    loc: g[n].loc.clone(),
                });
            }
        }
    }

    // 3. Build, on a copy so that a failing rule leaves the caller's graph unchanged.
    let mut work = g.clone();
    let mut contribs: HashMap<NodeId, Vec<NodeId>> = HashMap::new();
    let mut totals: HashMap<NodeId, NodeId> = HashMap::new();
    // cotangents of the results `k >= 1` of scan nodes, keyed by (scan node, k)
    let mut result_cots: HashMap<(NodeId, usize), NodeId> = HashMap::new();
    if needs(loss) {
        let seed = Cx::new(&mut work, loss, &names).scalar(1.0)?;
        contribs.insert(loss, vec![seed]);
    }
    for &n in order.iter().rev() {
        if !needs(n) {
            continue;
        }
        let parts = contribs.remove(&n).unwrap_or_default();
        let scan_results = match &work[n].op {
            Op::Scan(body) => body.n_results(),
            _ => 0,
        };
        let has_result_cots = (1..scan_results).any(|k| result_cots.contains_key(&(n, k)));
        if parts.is_empty() && !has_result_cots {
            continue; // every contribution was structurally zero
        }
        let gy = match parts.is_empty() {
            true => None,
            false => Some(Cx::new(&mut work, n, &names).sum_all(&parts)?),
        };
        if let (Op::ScanResult { index }, Some(gy)) = (&work[n].op, gy) {
            // handed to the scan node's rule with the cotangents of its other results
            if let Some(&s) = work.operands(n).first() {
                result_cots.insert((s, *index), gy);
            }
            continue;
        }
        if work[n].op.is_leaf() {
            if let Some(gy) = gy {
                totals.insert(n, gy);
            }
            continue;
        }
        let operands = work.operands(n);
        let wants: Vec<bool> = carrying(&work, n)
            .iter()
            .map(|&(o, c)| c && active.contains(&o))
            .collect();
        let outs = match gy {
            // a scan's rule takes the cotangent of every result at once
            _ if scan_results > 0 => {
                let cots: Vec<Option<NodeId>> = std::iter::once(gy)
                    .chain((1..scan_results).map(|k| result_cots.get(&(n, k)).copied()))
                    .collect();
                scan::vjp(&mut Cx::new(&mut work, n, &names), &cots, &wants)?
            }
            Some(gy) => rules::vjp(&mut Cx::new(&mut work, n, &names), gy, &wants)?,
            None => continue,
        };
        for (i, d) in outs.into_iter().enumerate() {
            if let (true, Some(d)) = (wants.get(i).copied().unwrap_or(false), d) {
                contribs.entry(operands[i]).or_default().push(d);
            }
        }
    }

    let mut grads = Vec::with_capacity(wrt.len());
    let mut independent = Vec::new();
    for &w in wrt {
        match totals.get(&w) {
            Some(&d) => grads.push(d),
            None => {
                let ty = work[w].ty.clone();
                let z = Cx::new(&mut work, w, &names).zeros(&ty.shape)?;
                totals.insert(w, z);
                grads.push(z);
                if !independent.contains(&w) {
                    independent.push(w);
                }
            }
        }
    }
    *g = work;
    Ok(Gradients { grads, independent })
}

fn check_args(g: &Graph, names: &Names, loss: NodeId, wrt: &[NodeId]) -> Result<(), GradError> {
    let Some(l) = g.get(loss) else {
        return Err(GradError::Unknown(format!(
            "the loss is node {}, which is not in the graph",
            loss.index()
        )));
    };
    if l.ty != TensorType::f32(Shape::scalar()) {
        return Err(GradError::NonScalarLoss {
            node: names.get(loss),
            ty: l.ty.clone(),
            loc: l.loc.clone(),
        });
    }
    for &w in wrt {
        let Some(n) = g.get(w) else {
            return Err(GradError::Unknown(format!(
                "wrt node {} is not in the graph",
                w.index()
            )));
        };
        if !matches!(n.op, Op::Param { .. } | Op::Input) {
            return Err(GradError::NotParamOrInput {
                node: names.get(w),
                op: n.op.name(),
                loc: n.loc.clone(),
            });
        }
        if n.ty.dtype != DType::F32 {
            return Err(GradError::IntegerWrt {
                node: names.get(w),
                ty: n.ty.clone(),
                loc: n.loc.clone(),
            });
        }
    }
    Ok(())
}

/// Whether `n` depends on `w` through any operand.
fn depends_on(g: &Graph, n: NodeId, w: NodeId) -> bool {
    let mut stack = vec![n];
    let mut seen = HashSet::new();
    while let Some(x) = stack.pop() {
        if x == w {
            return true;
        }
        if seen.insert(x) {
            stack.extend(g.operands(x));
        }
    }
    false
}

/// How nodes are named in messages: exactly as the text format prints the graph before
/// differentiation (`%name`, or `%N` with N the position in the canonical order).
struct Names(HashMap<NodeId, String>);

impl Names {
    fn new(g: &Graph) -> Names {
        Names(crate::text::node_labels(g))
    }

    fn get(&self, n: NodeId) -> String {
        self.0
            .get(&n)
            .cloned()
            .unwrap_or_else(|| format!("node {}", n.index()))
    }
}

impl fmt::Debug for Names {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Names({} nodes)", self.0.len())
    }
}

/// The context of one rule application: the graph, the forward node being differentiated, and
/// small builders that tag every new node with `grad_of` and the forward node's location.
pub(crate) struct Cx<'a> {
    g: &'a mut Graph,
    node: NodeId,
    loc: Option<SourceLoc>,
    names: &'a Names,
}

impl<'a> Cx<'a> {
    fn new(g: &'a mut Graph, node: NodeId, names: &'a Names) -> Cx<'a> {
        let loc = g[node].loc.clone();
        Cx {
            g,
            node,
            loc,
            names,
        }
    }

    /// The forward node.
    fn node(&self) -> &Node {
        &self.g[self.node]
    }

    /// The forward node's operands.
    fn xs(&self) -> Vec<NodeId> {
        self.g.operands(self.node)
    }

    /// The forward node's output (the node itself).
    fn y(&self) -> NodeId {
        self.node
    }

    /// The shape of `id`.
    fn shape(&self, id: NodeId) -> Shape {
        self.g[id].ty.shape.clone()
    }

    /// Adds a gradient node `op(operands)`.
    fn op(&mut self, op: Op, operands: &[NodeId]) -> Result<NodeId, GradError> {
        self.leafy(op, operands, None)
    }

    fn leafy(
        &mut self,
        op: Op,
        operands: &[NodeId],
        declared: Option<TensorType>,
    ) -> Result<NodeId, GradError> {
        let placeholder = SourceLoc {
            file: String::new(),
            line: 0,
            column: 0,
        };
        let loc = self.loc.clone().unwrap_or(placeholder);
        let id = self
            .g
            .add_at(op, operands, declared, loc)
            .map_err(|source| GradError::Rule {
                op: self.g[self.node].op.name(),
                node: self.names.get(self.node),
                source,
            })?;
        if let Some(n) = self.g.get_mut(id) {
            n.loc = self.loc.clone();
            n.grad_of = Some(self.node);
        }
        Ok(id)
    }

    /// An f32 scalar constant.
    fn scalar(&mut self, v: f64) -> Result<NodeId, GradError> {
        self.leafy(
            Op::Const {
                value: Literal::Splat(v),
            },
            &[],
            Some(TensorType::f32(Shape::scalar())),
        )
    }

    /// An f32 zero tensor of `shape`.
    fn zeros(&mut self, shape: &Shape) -> Result<NodeId, GradError> {
        self.leafy(
            Op::Const {
                value: Literal::Splat(0.0),
            },
            &[],
            Some(TensorType::f32(shape.clone())),
        )
    }

    fn bin(&mut self, b: BinaryOp, x: NodeId, y: NodeId) -> Result<NodeId, GradError> {
        self.op(Op::Binary(b), &[x, y])
    }

    fn add(&mut self, x: NodeId, y: NodeId) -> Result<NodeId, GradError> {
        self.bin(BinaryOp::Add, x, y)
    }

    fn sub(&mut self, x: NodeId, y: NodeId) -> Result<NodeId, GradError> {
        self.bin(BinaryOp::Sub, x, y)
    }

    fn mul(&mut self, x: NodeId, y: NodeId) -> Result<NodeId, GradError> {
        self.bin(BinaryOp::Mul, x, y)
    }

    fn div(&mut self, x: NodeId, y: NodeId) -> Result<NodeId, GradError> {
        self.bin(BinaryOp::Div, x, y)
    }

    fn neg(&mut self, x: NodeId) -> Result<NodeId, GradError> {
        self.op(Op::Unary(crate::op::UnaryOp::Neg), &[x])
    }

    /// `x` reshaped to `shape` (no node when it already has it).
    fn reshape(&mut self, x: NodeId, shape: &Shape) -> Result<NodeId, GradError> {
        if &self.shape(x) == shape {
            return Ok(x);
        }
        self.op(
            Op::Reshape {
                shape: shape.clone(),
            },
            &[x],
        )
    }

    /// `x` broadcast to `shape` (no node when it already has it).
    fn broadcast(&mut self, x: NodeId, shape: &Shape) -> Result<NodeId, GradError> {
        if &self.shape(x) == shape {
            return Ok(x);
        }
        self.op(
            Op::Broadcast {
                shape: shape.clone(),
            },
            &[x],
        )
    }

    /// Sum over `axes` (no node when `axes` is empty).
    fn sum(&mut self, x: NodeId, axes: &[usize], keepdims: bool) -> Result<NodeId, GradError> {
        if axes.is_empty() {
            return Ok(x);
        }
        self.op(
            Op::Reduce {
                kind: crate::op::ReduceOp::Sum,
                axes: axes.to_vec(),
                keepdims,
            },
            &[x],
        )
    }

    /// The sum of `parts` (fan-out), as a left-to-right chain of adds.
    fn sum_all(&mut self, parts: &[NodeId]) -> Result<NodeId, GradError> {
        let mut acc = parts[0];
        for &p in &parts[1..] {
            acc = self.add(acc, p)?;
        }
        Ok(acc)
    }

    /// Reduces a gradient `d` of a broadcast result back to an operand of shape `target`: sums
    /// over the leading axes `target` lacks and the axes where `target` has size 1, then
    /// reshapes. The only place broadcasting is undone.
    fn unbroadcast(&mut self, d: NodeId, target: &Shape) -> Result<NodeId, GradError> {
        let s = self.shape(d);
        if &s == target {
            return Ok(d);
        }
        let lead = s.rank().saturating_sub(target.rank());
        let axes: Vec<usize> = (0..s.rank())
            .filter(|&i| i < lead || (target.0[i - lead] == 1 && s.0[i] != 1))
            .collect();
        let r = self.sum(d, &axes, false)?;
        self.reshape(r, target)
    }
}
