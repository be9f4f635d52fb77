//! The dataflow graph: [`Graph`] wraps a petgraph `StableDiGraph<Node, u32>` whose edges go
//! from an operand to its user and carry the operand's index. Nodes are created through the
//! builder methods, which infer and check types ([`Op::infer`]) and record the caller's source
//! location (`#[track_caller]`), so an error or a dump points at the user's line.
//!
//! A graph also lists its named `outputs` and its in-place `updates` (a param or state that
//! takes the value of another node after each call: how a training step writes back).

use crate::op::{BinaryOp, CmpOp, InferError, Init, Literal, Op, Padding, ReduceOp, UnaryOp};
use crate::shape::{DType, Shape, TensorType};
use petgraph::stable_graph::{NodeIndex, StableDiGraph};
use petgraph::visit::EdgeRef;
use petgraph::Direction;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::panic::Location;

/// Identifies a node of a [`Graph`]; stays valid when other nodes are removed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct NodeId(pub NodeIndex<u32>);

impl NodeId {
    /// The raw index (stable, but not the printed number: see [`Graph::topo_order`]).
    pub fn index(self) -> usize {
        self.0.index()
    }
}

/// Where a node was made: a Rust builder call or a line of an `.ir` file.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct SourceLoc {
    /// File path as the compiler or the parser saw it.
    pub file: String,
    /// 1-based line.
    pub line: u32,
    /// 1-based column.
    pub column: u32,
}

impl SourceLoc {
    /// The location of a `#[track_caller]` caller.
    pub fn from_caller(l: &Location<'_>) -> SourceLoc {
        SourceLoc {
            file: l.file().to_string(),
            line: l.line(),
            column: l.column(),
        }
    }
}

impl fmt::Display for SourceLoc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.file, self.line, self.column)
    }
}

/// One node: an op, its static type, an optional unique name, where it was made, and for
/// gradient nodes the forward node they differentiate.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Node {
    /// The operation.
    pub op: Op,
    /// Static dtype and shape of the value.
    pub ty: TensorType,
    /// Unique name (inputs, params and state always have one).
    pub name: Option<String>,
    /// Source location of the call that made the node.
    pub loc: Option<SourceLoc>,
    /// For a gradient node: the forward node whose gradient computation it belongs to.
    pub grad_of: Option<NodeId>,
}

/// A named graph output.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Output {
    /// Name the caller gets the value under.
    pub name: String,
    /// The node whose value is returned.
    pub node: NodeId,
}

/// An in-place update: after a call, `target` (a param or state) holds the value of `value`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Update {
    /// The param or state node that is overwritten.
    pub target: NodeId,
    /// The node whose value it takes.
    pub value: NodeId,
}

/// Error of a builder call: the op, what is wrong (shapes found and expected) and where.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{}{message}", loc.as_ref().map(|l| format!("{l}: ")).unwrap_or_default())]
pub struct BuildError {
    /// What went wrong, naming the op and the types involved.
    pub message: String,
    /// The caller's location.
    pub loc: Option<SourceLoc>,
}

/// A static dataflow graph of tensor operations.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Graph {
    /// Name printed in the header (`graph NAME`).
    pub name: String,
    graph: StableDiGraph<Node, u32>,
    outputs: Vec<Output>,
    updates: Vec<Update>,
}

impl std::ops::Index<NodeId> for Graph {
    type Output = Node;
    /// The node `id`. Panics if `id` is not in the graph: ids come from the graph itself.
    fn index(&self, id: NodeId) -> &Node {
        &self.graph[id.0]
    }
}

/// Whether `s` is a valid node or output name: a letter or `_`, then letters, digits, `_`, `.`.
pub fn is_valid_name(s: &str) -> bool {
    let mut c = s.chars();
    matches!(c.next(), Some(ch) if ch.is_ascii_alphabetic() || ch == '_')
        && c.all(|ch| ch.is_ascii_alphanumeric() || ch == '_' || ch == '.')
}

impl Graph {
    /// An empty graph called `name`.
    pub fn new(name: impl Into<String>) -> Graph {
        Graph {
            name: name.into(),
            ..Graph::default()
        }
    }

    // ---- inspection -------------------------------------------------------------------

    /// The node `id`, or `None` if it is not in the graph.
    pub fn get(&self, id: NodeId) -> Option<&Node> {
        self.graph.node_weight(id.0)
    }

    /// Mutable access to node `id` (used by passes and the parser).
    pub fn get_mut(&mut self, id: NodeId) -> Option<&mut Node> {
        self.graph.node_weight_mut(id.0)
    }

    /// Whether `id` is a node of this graph.
    pub fn contains(&self, id: NodeId) -> bool {
        self.graph.contains_node(id.0)
    }

    /// Number of nodes.
    pub fn len(&self) -> usize {
        self.graph.node_count()
    }

    /// Whether the graph has no nodes.
    pub fn is_empty(&self) -> bool {
        self.graph.node_count() == 0
    }

    /// All node ids in index (creation) order.
    pub fn node_ids(&self) -> Vec<NodeId> {
        let mut v: Vec<NodeId> = self.graph.node_indices().map(NodeId).collect();
        v.sort();
        v
    }

    /// The operands of `id`, in operand order.
    pub fn operands(&self, id: NodeId) -> Vec<NodeId> {
        let mut e: Vec<(u32, NodeId)> = self
            .graph
            .edges_directed(id.0, Direction::Incoming)
            .map(|e| (*e.weight(), NodeId(e.source())))
            .collect();
        e.sort();
        e.into_iter().map(|(_, n)| n).collect()
    }

    /// The first edge, as raw `(source, target, missing)` indices, whose source or target
    /// (`missing`) is not a node of the graph. Only a deserialized graph can have one (an
    /// edge from a vacant slot).
    pub fn dangling_edge(&self) -> Option<(usize, usize, usize)> {
        use petgraph::visit::IntoEdgeReferences;
        (&self.graph)
            .edge_references()
            .find(|e| {
                !self.graph.contains_node(e.source()) || !self.graph.contains_node(e.target())
            })
            .map(|e| {
                let (a, b) = (e.source(), e.target());
                let missing = if self.graph.contains_node(a) { b } else { a };
                (a.index(), b.index(), missing.index())
            })
    }

    /// The nodes that use `id` as an operand (each once, sorted).
    pub fn users(&self, id: NodeId) -> Vec<NodeId> {
        let s: BTreeSet<NodeId> = self
            .graph
            .neighbors_directed(id.0, Direction::Outgoing)
            .map(NodeId)
            .collect();
        s.into_iter().collect()
    }

    /// The node called `name`.
    pub fn find(&self, name: &str) -> Option<NodeId> {
        self.node_ids()
            .into_iter()
            .find(|&id| self[id].name.as_deref() == Some(name))
    }

    /// Input nodes in creation order.
    pub fn inputs(&self) -> Vec<NodeId> {
        self.of_kind(|op| matches!(op, Op::Input))
    }

    /// Param nodes in creation order.
    pub fn params(&self) -> Vec<NodeId> {
        self.of_kind(|op| matches!(op, Op::Param { .. }))
    }

    /// State nodes in creation order.
    pub fn states(&self) -> Vec<NodeId> {
        self.of_kind(|op| matches!(op, Op::State { .. }))
    }

    fn of_kind(&self, f: impl Fn(&Op) -> bool) -> Vec<NodeId> {
        self.node_ids()
            .into_iter()
            .filter(|&id| f(&self[id].op))
            .collect()
    }

    /// The named outputs.
    pub fn outputs(&self) -> &[Output] {
        &self.outputs
    }

    /// The in-place updates.
    pub fn updates(&self) -> &[Update] {
        &self.updates
    }

    /// The output called `name`.
    pub fn output(&self, name: &str) -> Option<NodeId> {
        self.outputs.iter().find(|o| o.name == name).map(|o| o.node)
    }

    /// Canonical order: inputs, params, state (each in creation order), then every other node
    /// in topological order, taking the smallest id among the ready ones (Kahn). Deterministic,
    /// and the identity on a graph parsed from printed text, which is what makes printing
    /// canonical. Returns the nodes on a cycle as the error.
    pub fn topo_order(&self) -> Result<Vec<NodeId>, Vec<NodeId>> {
        let mut order = Vec::with_capacity(self.len());
        let mut indeg: HashMap<NodeId, usize> = HashMap::new();
        let mut ready = BTreeSet::new();
        for id in self.node_ids() {
            let n = self.graph.edges_directed(id.0, Direction::Incoming).count();
            if matches!(self[id].op, Op::Input | Op::Param { .. } | Op::State { .. }) && n == 0 {
                continue;
            }
            if n == 0 {
                ready.insert(id);
            } else {
                indeg.insert(id, n);
            }
        }
        let mut leaves = Vec::new();
        for kind in 0..3 {
            for id in self.node_ids() {
                let k = match self[id].op {
                    Op::Input => 0,
                    Op::Param { .. } => 1,
                    Op::State { .. } => 2,
                    _ => continue,
                };
                if k == kind && !indeg.contains_key(&id) {
                    leaves.push(id);
                }
            }
        }
        let release =
            |id: NodeId, indeg: &mut HashMap<NodeId, usize>, ready: &mut BTreeSet<NodeId>| {
                for e in self.graph.edges_directed(id.0, Direction::Outgoing) {
                    let u = NodeId(e.target());
                    if let Some(d) = indeg.get_mut(&u) {
                        *d -= 1;
                        if *d == 0 {
                            indeg.remove(&u);
                            ready.insert(u);
                        }
                    }
                }
            };
        for &id in &leaves {
            order.push(id);
            release(id, &mut indeg, &mut ready);
        }
        while let Some(id) = ready.pop_first() {
            order.push(id);
            release(id, &mut indeg, &mut ready);
        }
        if indeg.is_empty() {
            Ok(order)
        } else {
            let mut cyc: Vec<NodeId> = indeg.keys().copied().collect();
            cyc.sort();
            Err(cyc)
        }
    }

    // ---- low-level mutation (parser, autodiff, passes) ---------------------------------

    /// Adds `node` with `operands` without any check. The verifier catches what is wrong.
    pub fn add_raw(&mut self, node: Node, operands: &[NodeId]) -> NodeId {
        let id = NodeId(self.graph.add_node(node));
        for (i, &o) in operands.iter().enumerate() {
            self.graph.add_edge(o.0, id.0, i as u32);
        }
        id
    }

    /// Replaces the operands of `id`.
    pub fn set_operands(&mut self, id: NodeId, operands: &[NodeId]) {
        let old: Vec<_> = self
            .graph
            .edges_directed(id.0, Direction::Incoming)
            .map(|e| e.id())
            .collect();
        for e in old {
            self.graph.remove_edge(e);
        }
        for (i, &o) in operands.iter().enumerate() {
            self.graph.add_edge(o.0, id.0, i as u32);
        }
    }

    /// Makes every user, output and update value that refers to `old` refer to `new`.
    /// Only the edges from `old` are replaced (each keeps its operand index): removing an
    /// edge walks the edge lists of both its ends, and a user's other operands may have
    /// long ones (a weight used by every layer of a model has one edge per use), so
    /// rebuilding every operand of each user made fusing a deep model quadratic.
    pub fn replace_all_uses(&mut self, old: NodeId, new: NodeId) {
        let uses: Vec<_> = self
            .graph
            .edges_directed(old.0, Direction::Outgoing)
            .map(|e| (e.id(), e.target(), *e.weight()))
            .collect();
        for (edge, user, index) in uses {
            self.graph.remove_edge(edge);
            self.graph.add_edge(new.0, user, index);
        }
        for o in &mut self.outputs {
            if o.node == old {
                o.node = new;
            }
        }
        for u in &mut self.updates {
            if u.value == old {
                u.value = new;
            }
        }
    }

    /// Removes node `id` and its edges; returns it.
    pub fn remove(&mut self, id: NodeId) -> Option<Node> {
        self.graph.remove_node(id.0)
    }

    /// Adds an output without checks (the verifier checks it).
    pub fn push_output(&mut self, name: impl Into<String>, node: NodeId) {
        self.outputs.push(Output {
            name: name.into(),
            node,
        });
    }

    /// Adds an update without checks (the verifier checks it).
    pub fn push_update(&mut self, target: NodeId, value: NodeId) {
        self.updates.push(Update { target, value });
    }

    /// The operand edges of `id` as `(operand index, operand)`, sorted by index; unlike
    /// [`Graph::operands`] this keeps the indices, duplicates and gaps included, so the
    /// verifier can check that they are exactly `0..n` (a graph read from JSON may break this).
    pub fn operand_slots(&self, id: NodeId) -> Vec<(u32, NodeId)> {
        let mut e: Vec<(u32, NodeId)> = self
            .graph
            .edges_directed(id.0, Direction::Incoming)
            .map(|e| (*e.weight(), NodeId(e.source())))
            .collect();
        e.sort();
        e
    }

    /// Mutable access to the outputs (passes rewrite them).
    pub fn outputs_mut(&mut self) -> &mut Vec<Output> {
        &mut self.outputs
    }

    /// Mutable access to the updates.
    pub fn updates_mut(&mut self) -> &mut Vec<Update> {
        &mut self.updates
    }

    // ---- checked builder ----------------------------------------------------------------

    fn err(&self, loc: &SourceLoc, message: String) -> BuildError {
        BuildError {
            message,
            loc: Some(loc.clone()),
        }
    }

    fn check_new_name(&self, name: &str, loc: &SourceLoc) -> Result<(), BuildError> {
        if !is_valid_name(name) {
            return Err(self.err(
                loc,
                format!("invalid name {name:?}: expected a letter or '_' then letters, digits, '_' or '.'"),
            ));
        }
        if self.find(name).is_some() {
            return Err(self.err(
                loc,
                format!("duplicate name {name:?}: a node already has it"),
            ));
        }
        Ok(())
    }

    /// Adds `op` applied to `operands` at source location `loc`, inferring its type.
    /// `declared` is the type of leaf ops (ignored by other ops).
    pub fn add_at(
        &mut self,
        op: Op,
        operands: &[NodeId],
        declared: Option<TensorType>,
        loc: SourceLoc,
    ) -> Result<NodeId, BuildError> {
        let mut types = Vec::with_capacity(operands.len());
        for (i, &o) in operands.iter().enumerate() {
            match self.get(o) {
                Some(n) => types.push(&n.ty),
                None => {
                    return Err(self.err(
                        &loc,
                        format!("{}: operand {i} is unknown node {}", op.name(), o.index()),
                    ))
                }
            }
        }
        let ty = op
            .infer(&types, declared.as_ref())
            .map_err(|InferError(m)| self.err(&loc, m))?;
        Ok(self.add_raw(
            Node {
                op,
                ty,
                name: None,
                loc: Some(loc),
                grad_of: None,
            },
            operands,
        ))
    }

    /// Adds `op` applied to `operands`, inferring its type; the location is the caller's.
    #[track_caller]
    pub fn add(&mut self, op: Op, operands: &[NodeId]) -> Result<NodeId, BuildError> {
        let loc = SourceLoc::from_caller(Location::caller());
        self.add_at(op, operands, None, loc)
    }

    #[track_caller]
    fn leaf(&mut self, name: &str, op: Op, ty: TensorType) -> Result<NodeId, BuildError> {
        let loc = SourceLoc::from_caller(Location::caller());
        self.check_new_name(name, &loc)?;
        let id = self.add_at(op, &[], Some(ty), loc)?;
        self.graph[id.0].name = Some(name.to_string());
        Ok(id)
    }

    /// A named input of type `ty`, fed on every call.
    #[track_caller]
    pub fn input(&mut self, name: &str, ty: TensorType) -> Result<NodeId, BuildError> {
        self.leaf(name, Op::Input, ty)
    }

    /// A named f32 parameter of `shape`, initialized by `init`.
    #[track_caller]
    pub fn param(
        &mut self,
        name: &str,
        shape: impl Into<Shape>,
        init: Init,
    ) -> Result<NodeId, BuildError> {
        self.leaf(name, Op::Param { init }, TensorType::f32(shape))
    }

    /// A named f32 state tensor of `shape`, initialized by `init`.
    #[track_caller]
    pub fn state(
        &mut self,
        name: &str,
        shape: impl Into<Shape>,
        init: Init,
    ) -> Result<NodeId, BuildError> {
        self.leaf(name, Op::State { init }, TensorType::f32(shape))
    }

    /// A constant of type `ty`.
    #[track_caller]
    pub fn constant(&mut self, ty: TensorType, value: Literal) -> Result<NodeId, BuildError> {
        let loc = SourceLoc::from_caller(Location::caller());
        self.add_at(Op::Const { value }, &[], Some(ty), loc)
    }

    /// An f32 scalar constant.
    #[track_caller]
    pub fn scalar(&mut self, v: f64) -> NodeId {
        let loc = SourceLoc::from_caller(Location::caller());
        self.add_raw(
            Node {
                op: Op::Const {
                    value: Literal::Splat(v),
                },
                ty: TensorType::f32(Shape::scalar()),
                name: None,
                loc: Some(loc),
                grad_of: None,
            },
            &[],
        )
    }

    /// Gives node `id` the unique name `name`.
    #[track_caller]
    pub fn set_name(&mut self, id: NodeId, name: &str) -> Result<(), BuildError> {
        let loc = SourceLoc::from_caller(Location::caller());
        if !self.contains(id) {
            return Err(self.err(&loc, format!("set_name: unknown node {}", id.index())));
        }
        if self[id].name.as_deref() == Some(name) {
            return Ok(());
        }
        self.check_new_name(name, &loc)?;
        self.graph[id.0].name = Some(name.to_string());
        Ok(())
    }

    /// Declares `node` an output called `name`.
    #[track_caller]
    pub fn add_output(&mut self, name: &str, node: NodeId) -> Result<(), BuildError> {
        let loc = SourceLoc::from_caller(Location::caller());
        if !is_valid_name(name) {
            return Err(self.err(&loc, format!("invalid output name {name:?}")));
        }
        if self.output(name).is_some() {
            return Err(self.err(&loc, format!("duplicate output name {name:?}")));
        }
        if !self.contains(node) {
            return Err(self.err(
                &loc,
                format!("output {name:?}: unknown node {}", node.index()),
            ));
        }
        self.push_output(name, node);
        Ok(())
    }

    /// Declares that after each call the param or state `target` takes the value of `value`.
    #[track_caller]
    pub fn add_update(&mut self, target: NodeId, value: NodeId) -> Result<(), BuildError> {
        let loc = SourceLoc::from_caller(Location::caller());
        let (Some(t), Some(v)) = (self.get(target), self.get(value)) else {
            return Err(self.err(&loc, "update: unknown node".to_string()));
        };
        if !matches!(t.op, Op::Param { .. } | Op::State { .. }) {
            return Err(self.err(
                &loc,
                format!(
                    "update target must be a param or state, found {}",
                    t.op.name()
                ),
            ));
        }
        if t.ty != v.ty {
            return Err(self.err(
                &loc,
                format!(
                    "update of {} : {} with a value of type {}",
                    t.name.as_deref().unwrap_or("?"),
                    t.ty,
                    v.ty
                ),
            ));
        }
        if self.updates.iter().any(|u| u.target == target) {
            return Err(self.err(&loc, "update: target is already updated".to_string()));
        }
        self.push_update(target, value);
        Ok(())
    }
}

macro_rules! unary_builders {
    ($($(#[$doc:meta])* $fn:ident => $v:ident),* $(,)?) => {
        impl Graph {
            $(
                $(#[$doc])*
                #[track_caller]
                pub fn $fn(&mut self, x: NodeId) -> Result<NodeId, BuildError> {
                    self.add(Op::Unary(UnaryOp::$v), &[x])
                }
            )*
        }
    };
}

unary_builders! {
    /// `-x`
    neg => Neg,
    /// `e^x`
    exp => Exp,
    /// natural log
    log => Log,
    /// square root
    sqrt => Sqrt,
    /// `|x|`
    abs => Abs,
    /// sign of x
    sign => Sign,
    /// tanh
    tanh => Tanh,
    /// logistic sigmoid
    sigmoid => Sigmoid,
    /// `max(x, 0)`
    relu => Relu,
    /// `ln(1 + x)`
    log1p => Log1p,
    /// `e^x - 1`
    expm1 => Expm1,
    /// the error function
    erf => Erf,
    /// sine
    sin => Sin,
    /// cosine
    cos => Cos,
}

macro_rules! binary_builders {
    ($($(#[$doc:meta])* $fn:ident => $v:ident),* $(,)?) => {
        impl Graph {
            $(
                $(#[$doc])*
                #[track_caller]
                pub fn $fn(&mut self, a: NodeId, b: NodeId) -> Result<NodeId, BuildError> {
                    self.add(Op::Binary(BinaryOp::$v), &[a, b])
                }
            )*
        }
    };
}

binary_builders! {
    /// `a + b` (broadcasting)
    add2 => Add,
    /// `a - b` (broadcasting)
    sub => Sub,
    /// `a * b` (broadcasting)
    mul => Mul,
    /// `a / b` (broadcasting)
    div => Div,
    /// elementwise maximum (broadcasting)
    maximum => Max,
    /// elementwise minimum (broadcasting)
    minimum => Min,
    /// `a ^ b` (broadcasting)
    pow => Pow,
}

impl Graph {
    /// Comparison `a op b` as an f32 mask (broadcasting).
    #[track_caller]
    pub fn compare(&mut self, op: CmpOp, a: NodeId, b: NodeId) -> Result<NodeId, BuildError> {
        self.add(Op::Compare(op), &[a, b])
    }

    /// `mask != 0 ? a : b` (broadcasting).
    #[track_caller]
    pub fn select(&mut self, mask: NodeId, a: NodeId, b: NodeId) -> Result<NodeId, BuildError> {
        self.add(Op::Select, &[mask, a, b])
    }

    /// Conversion to `to`.
    #[track_caller]
    pub fn cast(&mut self, x: NodeId, to: DType) -> Result<NodeId, BuildError> {
        self.add(Op::Cast { to }, &[x])
    }

    /// Reduction `kind` over `axes`.
    #[track_caller]
    pub fn reduce(
        &mut self,
        kind: ReduceOp,
        x: NodeId,
        axes: &[usize],
        keepdims: bool,
    ) -> Result<NodeId, BuildError> {
        self.add(
            Op::Reduce {
                kind,
                axes: axes.to_vec(),
                keepdims,
            },
            &[x],
        )
    }

    /// Sum over `axes`.
    #[track_caller]
    pub fn sum(&mut self, x: NodeId, axes: &[usize], keepdims: bool) -> Result<NodeId, BuildError> {
        self.reduce(ReduceOp::Sum, x, axes, keepdims)
    }

    /// Mean over `axes`.
    #[track_caller]
    pub fn mean(
        &mut self,
        x: NodeId,
        axes: &[usize],
        keepdims: bool,
    ) -> Result<NodeId, BuildError> {
        self.reduce(ReduceOp::Mean, x, axes, keepdims)
    }

    /// Mean over all axes: a scalar.
    #[track_caller]
    pub fn mean_all(&mut self, x: NodeId) -> Result<NodeId, BuildError> {
        let r = self.get(x).map(|n| n.ty.shape.rank()).unwrap_or(0);
        let axes: Vec<usize> = (0..r).collect();
        self.reduce(ReduceOp::Mean, x, &axes, false)
    }

    /// Index of the maximum along `axis` (i32).
    #[track_caller]
    pub fn argmax(&mut self, x: NodeId, axis: usize) -> Result<NodeId, BuildError> {
        self.add(Op::Argmax { axis }, &[x])
    }

    /// Same elements in a new shape.
    #[track_caller]
    pub fn reshape(&mut self, x: NodeId, shape: impl Into<Shape>) -> Result<NodeId, BuildError> {
        self.add(
            Op::Reshape {
                shape: shape.into(),
            },
            &[x],
        )
    }

    /// numpy broadcast to `shape`.
    #[track_caller]
    pub fn broadcast(&mut self, x: NodeId, shape: impl Into<Shape>) -> Result<NodeId, BuildError> {
        self.add(
            Op::Broadcast {
                shape: shape.into(),
            },
            &[x],
        )
    }

    /// Permutes axes.
    #[track_caller]
    pub fn transpose(&mut self, x: NodeId, perm: &[usize]) -> Result<NodeId, BuildError> {
        self.add(
            Op::Transpose {
                perm: perm.to_vec(),
            },
            &[x],
        )
    }

    /// 2-D matrix product.
    #[track_caller]
    pub fn matmul(&mut self, a: NodeId, b: NodeId) -> Result<NodeId, BuildError> {
        self.add(Op::Matmul, &[a, b])
    }

    /// NHWC x HWIO convolution.
    #[track_caller]
    pub fn conv2d(
        &mut self,
        x: NodeId,
        w: NodeId,
        stride: [usize; 2],
        padding: Padding,
    ) -> Result<NodeId, BuildError> {
        self.add(Op::Conv2d { stride, padding }, &[x, w])
    }

    /// NHWC max pooling, no padding.
    #[track_caller]
    pub fn max_pool2d(
        &mut self,
        x: NodeId,
        window: [usize; 2],
        stride: [usize; 2],
    ) -> Result<NodeId, BuildError> {
        self.add(Op::MaxPool2d { window, stride }, &[x])
    }

    /// Softmax along `axis`.
    #[track_caller]
    pub fn softmax(&mut self, x: NodeId, axis: usize) -> Result<NodeId, BuildError> {
        self.add(Op::Softmax { axis }, &[x])
    }

    /// Log-softmax along `axis`.
    #[track_caller]
    pub fn log_softmax(&mut self, x: NodeId, axis: usize) -> Result<NodeId, BuildError> {
        self.add(Op::LogSoftmax { axis }, &[x])
    }

    /// Per-example softmax cross-entropy against probability labels.
    #[track_caller]
    pub fn softmax_cross_entropy(
        &mut self,
        logits: NodeId,
        labels: NodeId,
    ) -> Result<NodeId, BuildError> {
        self.add(Op::SoftmaxCrossEntropy, &[logits, labels])
    }

    /// Per-example softmax cross-entropy against integer labels.
    #[track_caller]
    pub fn sparse_softmax_cross_entropy(
        &mut self,
        logits: NodeId,
        labels: NodeId,
    ) -> Result<NodeId, BuildError> {
        self.add(Op::SparseSoftmaxCrossEntropy, &[logits, labels])
    }

    /// One-hot encoding of i32 indices.
    #[track_caller]
    pub fn one_hot(&mut self, x: NodeId, depth: usize) -> Result<NodeId, BuildError> {
        self.add(Op::OneHot { depth }, &[x])
    }

    /// The box `begin..end`.
    #[track_caller]
    pub fn slice(
        &mut self,
        x: NodeId,
        begin: &[usize],
        end: &[usize],
    ) -> Result<NodeId, BuildError> {
        self.add(
            Op::Slice {
                begin: begin.to_vec(),
                end: end.to_vec(),
            },
            &[x],
        )
    }

    /// Concatenation along `axis`.
    #[track_caller]
    pub fn concat(&mut self, xs: &[NodeId], axis: usize) -> Result<NodeId, BuildError> {
        self.add(Op::Concat { axis }, xs)
    }

    /// The sum (or with `mean`, the mean) of `x` over the ranks (see [`Op::AllReduce`]).
    #[track_caller]
    pub fn all_reduce(&mut self, x: NodeId, mean: bool) -> Result<NodeId, BuildError> {
        self.add(Op::AllReduce { mean }, &[x])
    }

    /// Slices of `table` along `axis` picked by i32 `indices` (see [`Op::Gather`]).
    #[track_caller]
    pub fn gather(
        &mut self,
        table: NodeId,
        indices: NodeId,
        axis: usize,
    ) -> Result<NodeId, BuildError> {
        self.add(Op::Gather { axis }, &[table, indices])
    }

    /// `updates` added at `indices` along `axis` into zeros of `shape` (see
    /// [`Op::ScatterAdd`]).
    #[track_caller]
    pub fn scatter_add(
        &mut self,
        updates: NodeId,
        indices: NodeId,
        axis: usize,
        shape: impl Into<Shape>,
    ) -> Result<NodeId, BuildError> {
        self.add(
            Op::ScatterAdd {
                axis,
                shape: shape.into(),
            },
            &[updates, indices],
        )
    }

    /// A structured loop (see [`crate::scan`] and [`Op::Scan`]): `body` is a graph whose
    /// `params` are its `input` nodes in the order carries, sequence slices, invariants, and
    /// whose outputs are the new carries followed by the per-step outputs. `operands` are the
    /// scan's: `lp.carries` initial carries, `lp.sequences` sequences (the steps along
    /// `lp.axis`), then the invariants. The body's constants become further invariant
    /// operands. Returns the result nodes: the final carries, then the stacked outputs.
    #[track_caller]
    pub fn scan(
        &mut self,
        body: &Graph,
        params: &[NodeId],
        operands: &[NodeId],
        lp: crate::scan::Loop,
    ) -> Result<Vec<NodeId>, BuildError> {
        let crate::scan::Loop {
            carries,
            sequences,
            reverse,
            axis,
        } = lp;
        let loc = SourceLoc::from_caller(Location::caller());
        if params.len() != operands.len() {
            return Err(self.err(
                &loc,
                format!(
                    "scan: the body has {} parameters but {} operands were given",
                    params.len(),
                    operands.len()
                ),
            ));
        }
        if let Some(p) = params
            .iter()
            .find(|&&p| body.get(p).is_none_or(|n| n.op != Op::Input))
        {
            return Err(self.err(
                &loc,
                format!(
                    "scan: body parameter {} is not an input node of the body",
                    p.index()
                ),
            ));
        }
        let param_nodes: Vec<Option<NodeId>> = params.iter().map(|&p| Some(p)).collect();
        let (sb, hoisted) = crate::scan::ScanBody::from_graph(
            body,
            &param_nodes,
            carries,
            sequences,
            reverse,
            axis,
        )
        .map_err(|m| self.err(&loc, format!("scan: {m}")))?;
        let mut all = operands.to_vec();
        for (ty, value) in hoisted {
            all.push(self.add_at(Op::Const { value }, &[], Some(ty), loc.clone())?);
        }
        let mut types = Vec::with_capacity(all.len());
        for (i, &o) in all.iter().enumerate() {
            match self.get(o) {
                Some(n) => types.push(&n.ty),
                None => {
                    return Err(self.err(
                        &loc,
                        format!("scan: operand {i} is unknown node {}", o.index()),
                    ))
                }
            }
        }
        let params_given: Vec<&TensorType> = params.iter().map(|&p| &body[p].ty).collect();
        let expect = sb.param_types(&types).map_err(|e| self.err(&loc, e.0))?;
        for (i, (want, got)) in expect.iter().zip(&params_given).enumerate() {
            if want != *got {
                return Err(self.err(
                    &loc,
                    format!("scan: body parameter {i} is {got}, but operand {i} gives it {want}"),
                ));
            }
        }
        let result_types = sb.result_types(&types).map_err(|e| self.err(&loc, e.0))?;
        let node = |op: Op, ty: TensorType| Node {
            op,
            ty,
            name: None,
            loc: Some(loc.clone()),
            grad_of: None,
        };
        let s = self.add_raw(node(Op::Scan(sb), result_types[0].clone()), &all);
        let mut results = vec![s];
        for (index, ty) in result_types.into_iter().enumerate().skip(1) {
            results.push(self.add_raw(node(Op::ScanResult { index }, ty), &[s]));
        }
        Ok(results)
    }
}
