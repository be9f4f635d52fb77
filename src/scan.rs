//! The body of a structured loop ([`Op::Scan`]), as `jax.lax.scan`: a region graph run once
//! per step over the leading axis of the loop's sequence operands, threading a carry.
//!
//! In: the builder ([`Graph::scan`]), the text parser, autodiff (the reverse loop of a
//! gradient) and the pass pipeline (a body optimized by the same passes) build a
//! [`ScanBody`]. Out: its type rule ([`ScanBody::result_types`]); [`ScanBody::to_graph`] gives
//! the body as an ordinary [`Graph`], which is how the interpreter runs it, autodiff
//! differentiates it, the passes optimize it and the code generator compiles it (one native
//! function called once per step).
//!
//! The operands of a `scan` node are, in order, `carries` initial carries, `sequences`
//! sequences (each with the trip count `T` as its leading axis; step `t` sees slice `t`), and
//! any number of invariants (weights, read by every step). Body values are numbered as in a
//! fused body: `0..params` are the body's parameters (each carry, each sequence's slice
//! `[t]`, each invariant), then one value per instruction. The body yields `carries` new
//! carries (each of its carry's type) and then any number of per-step outputs. The results
//! of the node: the final carries, then every per-step output stacked along a new leading
//! axis of length `T` (`ys[t]` the output of step `t`). With `axis=1` the sequences are
//! sliced along axis 1 instead (batch-major `[batch, time, ...]`, as Keras' recurrent
//! layers take them) and the outputs stacked at axis 1. With `reverse=true` the steps run
//! `t = T-1, ..., 0` (stacked outputs still indexed by `t`). Result 0 is the node's own value;
//! result `k >= 1` is read through a `scan_result %s, index=k` node ([`Op::ScanResult`]).
//!
//! ```text
//!   %hs: f32[28,32,64] = scan %h0, %xs, %u, axis=0, carries=1, reverse=false, sequences=1 {
//!     %3: f32[32,64] = matmul %0, %2
//!     %4: f32[32,64] = add %3, %1
//!     %5: f32[32,64] = tanh %4
//!     yield %5, %5
//!   }
//! ```
//!
//! A body holds no leaves: constants are invariant operands (the builder and
//! [`ScanBody::from_graph`] hoist them), so the body's code needs no buffers of its own
//! beyond its scratch.

use crate::fused::FusedInst;
use crate::graph::{Graph, Node, NodeId};
use crate::op::{InferError, Literal, Op};
use crate::shape::{Shape, TensorType};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

/// A scan node's body: its parameters, instructions and yielded values (see the module
/// documentation for the numbering).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ScanBody {
    /// Number of operands of the scan node (carries, sequences, invariants).
    pub params: usize,
    /// How many of them are carries (the first ones).
    pub carries: usize,
    /// How many sequences follow the carries.
    pub sequences: usize,
    /// Whether the steps run from the last slice to the first.
    pub reverse: bool,
    /// The axis of the sequences the steps run along, which is also where the stacked
    /// outputs take their step axis: 0 as in `jax.lax.scan` (time-major), 1 for batch-major
    /// sequences `[batch, time, ...]` as Keras' recurrent layers take them.
    #[serde(default)]
    pub axis: usize,
    /// The instructions, in evaluation order (value `params + i` is instruction `i`).
    pub insts: Vec<FusedInst>,
    /// The yielded values: the new carries, then the per-step outputs.
    pub yields: Vec<usize>,
}

/// How a loop runs: how many operands are carries and sequences, its direction and the
/// sequences' step axis (the header of a [`ScanBody`], for [`Graph::scan`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Loop {
    /// Number of carries (the first operands).
    pub carries: usize,
    /// Number of sequences (after the carries).
    pub sequences: usize,
    /// Steps from the last to the first.
    pub reverse: bool,
    /// The sequences' step axis.
    pub axis: usize,
}

fn bail<T>(m: String) -> Result<T, InferError> {
    Err(InferError(format!("scan: {m}")))
}

impl ScanBody {
    /// Number of results of the node: final carries, then stacked outputs.
    pub fn n_results(&self) -> usize {
        self.yields.len()
    }

    /// The trip count: the leading extent of the sequences.
    pub fn length(&self, operands: &[&TensorType]) -> Result<usize, InferError> {
        if self.sequences == 0 {
            return bail("a scan needs at least one sequence (its trip count)".into());
        }
        let a = self.axis;
        let first = operands[self.carries];
        let t = match first.shape.dims().get(a) {
            Some(&t) if t > 0 => t,
            _ => {
                return bail(format!(
                    "sequence 0 is {first}: a sequence needs an axis {a} of at least one step"
                ))
            }
        };
        for i in 1..self.sequences {
            let s = operands[self.carries + i];
            if s.shape.dims().get(a) != Some(&t) {
                return bail(format!(
                    "sequence {i} is {s}, expected an axis {a} of {t} steps as sequence 0 ({first})"
                ));
            }
        }
        Ok(t)
    }

    /// The types of the body's parameters: each carry's, each sequence's slice, each
    /// invariant's.
    pub fn param_types(&self, operands: &[&TensorType]) -> Result<Vec<TensorType>, InferError> {
        if operands.len() != self.params {
            return bail(format!(
                "the body takes {} operand(s), found {}",
                self.params,
                operands.len()
            ));
        }
        if self.carries + self.sequences > self.params {
            return bail(format!(
                "carries={} and sequences={} need at least {} operands, found {}",
                self.carries,
                self.sequences,
                self.carries + self.sequences,
                self.params
            ));
        }
        self.length(operands)?;
        Ok(operands
            .iter()
            .enumerate()
            .map(|(i, t)| {
                if (self.carries..self.carries + self.sequences).contains(&i) {
                    TensorType::new(t.dtype, step_shape(&t.shape, self.axis))
                } else {
                    (*t).clone()
                }
            })
            .collect())
    }

    /// Every value's type (parameters, then instructions), checking each instruction's
    /// declared type against its op's rule.
    fn value_types(&self, params: Vec<TensorType>) -> Result<Vec<TensorType>, InferError> {
        let mut types = params;
        for (i, inst) in self.insts.iter().enumerate() {
            let k = self.params + i;
            if inst.op.is_leaf() {
                return bail(format!(
                    "%{k}: a body holds no {} (constants and weights are operands of the scan)",
                    inst.op.name()
                ));
            }
            if let Some(&a) = inst.args.iter().find(|&&a| a >= k) {
                return bail(format!("%{k}: argument %{a} is not defined before it"));
            }
            let arg_tys: Vec<&TensorType> = inst.args.iter().map(|&a| &types[a]).collect();
            let ty = match &inst.op {
                // a result of a multi-result instruction: the type its producer gives it
                Op::ScanResult { index } | Op::FusedResult { index } => {
                    result_type(&self.insts, self.params, &types, &inst.args, *index)
                        .map_err(|e| InferError(format!("scan: %{k}: {}", e.0)))?
                }
                op => op
                    .infer(&arg_tys, None)
                    .map_err(|e| InferError(format!("scan: %{k}: {}", e.0)))?,
            };
            if ty != inst.ty {
                return bail(format!(
                    "%{k} is declared {} but {} computes {ty}",
                    inst.ty,
                    inst.op.name()
                ));
            }
            types.push(ty);
        }
        Ok(types)
    }

    /// The types of the node's results for operands of types `operands`, checking every rule
    /// of the module documentation.
    pub fn result_types(&self, operands: &[&TensorType]) -> Result<Vec<TensorType>, InferError> {
        let params = self.param_types(operands)?;
        let t = self.length(operands)?;
        let n_values = self.params + self.insts.len();
        if self.yields.len() < self.carries || self.yields.is_empty() {
            return bail(format!(
                "the body yields {} value(s), expected the {} new carries and then the per-step \
                 outputs (at least one value in all)",
                self.yields.len(),
                self.carries
            ));
        }
        if let Some(&v) = self.yields.iter().find(|&&v| v >= n_values) {
            return bail(format!(
                "yield %{v} is not a value of the body (`%0`..`%{}`)",
                n_values.saturating_sub(1)
            ));
        }
        let types = self.value_types(params)?;
        let mut out = Vec::with_capacity(self.yields.len());
        for (j, &v) in self.yields.iter().enumerate() {
            if j < self.carries {
                if types[v] != types[j] {
                    return bail(format!(
                        "new carry {j} (%{v}) is {}, expected the carry's type {}",
                        types[v], types[j]
                    ));
                }
                out.push(types[j].clone());
            } else {
                let step = types[v].shape.dims();
                if self.axis > step.len() {
                    return bail(format!(
                        "per-step output {} (%{v}) is {}: it has no axis {} to stack the steps at",
                        j - self.carries,
                        types[v],
                        self.axis
                    ));
                }
                out.push(TensorType::new(
                    types[v].dtype,
                    stacked_shape(&types[v].shape, self.axis, t),
                ));
            }
        }
        Ok(out)
    }

    /// The type of result 0, the node's own value.
    pub fn infer(&self, operands: &[&TensorType]) -> Result<TensorType, InferError> {
        let mut r = self.result_types(operands)?;
        Ok(r.swap_remove(0))
    }

    /// The parameter nodes of a graph made by [`ScanBody::to_graph`], found by their names
    /// (`None` where a pass removed one).
    pub fn param_nodes(&self, g: &Graph) -> Vec<Option<NodeId>> {
        (0..self.params)
            .map(|i| g.find(&self.param_name(i)))
            .collect()
    }

    fn param_name(&self, i: usize) -> String {
        if i < self.carries {
            format!("carry{i}")
        } else if i < self.carries + self.sequences {
            format!("seq{}", i - self.carries)
        } else {
            format!("inv{}", i - self.carries - self.sequences)
        }
    }

    /// The body as an ordinary graph: an `input` node per parameter (`carry0..`, `seq0..`,
    /// `inv0..`; returned in parameter order), or a `const` node where `consts[i]` gives the
    /// parameter's value, one node per instruction, and one output per yielded value (`y0..`).
    pub fn to_graph(
        &self,
        param_types: &[TensorType],
        consts: &[Option<Literal>],
    ) -> Result<(Graph, Vec<NodeId>), String> {
        if param_types.len() != self.params {
            return Err(format!(
                "the body takes {} parameters, found {} types",
                self.params,
                param_types.len()
            ));
        }
        let mut g = Graph::new("scan_body");
        let mut inputs = Vec::with_capacity(self.params);
        for (i, ty) in param_types.iter().enumerate() {
            let name = self.param_name(i);
            let op = match consts.get(i) {
                Some(Some(value)) => Op::Const {
                    value: value.clone(),
                },
                _ => Op::Input,
            };
            let id = g.add_raw(
                Node {
                    op,
                    ty: ty.clone(),
                    name: Some(name),
                    loc: None,
                    grad_of: None,
                },
                &[],
            );
            inputs.push(id);
        }
        let yields = self.inline_into(&mut g, &inputs)?;
        for (j, node) in yields.into_iter().enumerate() {
            g.push_output(format!("y{j}"), node);
        }
        Ok((g, inputs))
    }

    /// Adds the body's instructions to `g`, reading `params` (one node of `g` per parameter),
    /// and returns the yielded nodes.
    pub fn inline_into(&self, g: &mut Graph, params: &[NodeId]) -> Result<Vec<NodeId>, String> {
        let vals = self.inline_values(g, params)?;
        self.yields
            .iter()
            .map(|&v| {
                vals.get(v)
                    .copied()
                    .ok_or_else(|| format!("yield %{v} is not a value of the body"))
            })
            .collect()
    }

    /// Which body values read only the invariants (and other such values): the same at
    /// every step.
    pub fn invariant_values(&self) -> Vec<bool> {
        let fixed = self.carries + self.sequences;
        let mut inv: Vec<bool> = (0..self.params).map(|p| p >= fixed).collect();
        for inst in &self.insts {
            let v = !inst.args.is_empty() && inst.args.iter().all(|&a| inv.get(a) == Some(&true));
            inv.push(v);
        }
        inv
    }

    /// [`ScanBody::inline_into`], returning the node of every body value (the parameters,
    /// then each instruction's).
    pub fn inline_values(&self, g: &mut Graph, params: &[NodeId]) -> Result<Vec<NodeId>, String> {
        if params.len() != self.params {
            return Err(format!(
                "the body takes {} parameters, found {}",
                self.params,
                params.len()
            ));
        }
        let mut vals = params.to_vec();
        for (i, inst) in self.insts.iter().enumerate() {
            let k = self.params + i;
            let mut args = Vec::with_capacity(inst.args.len());
            for &a in &inst.args {
                match vals.get(a) {
                    Some(&v) if a < k => args.push(v),
                    _ => return Err(format!("%{k}: argument %{a} is not defined before it")),
                }
            }
            let id = g.add_raw(
                Node {
                    op: inst.op.clone(),
                    ty: inst.ty.clone(),
                    name: None,
                    loc: None,
                    grad_of: None,
                },
                &args,
            );
            vals.push(id);
        }
        Ok(vals)
    }

    /// The types of the per-step outputs of one step (unstacked), given the parameters'.
    pub fn step_output_types(&self, params: &[TensorType]) -> Result<Vec<TensorType>, String> {
        let types = self.value_types(params.to_vec()).map_err(|e| e.0)?;
        self.yields[self.carries.min(self.yields.len())..]
            .iter()
            .map(|&v| {
                types
                    .get(v)
                    .cloned()
                    .ok_or_else(|| format!("yield %{v} is not a value of the body"))
            })
            .collect()
    }

    /// The body of graph `g` whose parameters are `params` (input or const nodes, in order;
    /// `None` for a parameter the graph no longer has, which is then unused) and whose yields
    /// are its outputs, in order. (After passes have run on `g`, find the parameters by
    /// name, as [`ScanBody::param_nodes`] does: a removed node's id may have been reused.) Every other leaf (a `const` the body computes with) is hoisted:
    /// it becomes a further invariant parameter, and its value is returned so that the
    /// caller passes it as a further operand of the scan node.
    pub fn from_graph(
        g: &Graph,
        params: &[Option<NodeId>],
        carries: usize,
        sequences: usize,
        reverse: bool,
        axis: usize,
    ) -> Result<(ScanBody, Vec<(TensorType, Literal)>), String> {
        let order = g
            .topo_order()
            .map_err(|_| "the body graph has a cycle".to_string())?;
        let mut num: HashMap<NodeId, usize> = HashMap::new();
        for (i, p) in params.iter().enumerate() {
            if let Some(p) = *p {
                num.insert(p, i);
            }
        }
        // leaves that are not parameters: constants to hoist
        let mut hoisted = Vec::new();
        for &id in &order {
            if num.contains_key(&id) || !g[id].op.is_leaf() {
                continue;
            }
            match &g[id].op {
                Op::Const { value } => {
                    num.insert(id, params.len() + hoisted.len());
                    hoisted.push((g[id].ty.clone(), value.clone()));
                }
                op => {
                    return Err(format!(
                        "a scan body holds no {} ({}): weights are invariant operands of the scan",
                        op.name(),
                        g[id].name.as_deref().unwrap_or("unnamed")
                    ))
                }
            }
        }
        let n_params = params.len() + hoisted.len();
        let mut insts = Vec::new();
        for &id in &order {
            if num.contains_key(&id) {
                continue;
            }
            let args = g
                .operands(id)
                .iter()
                .map(|o| num.get(o).copied().ok_or("an operand outside the body"))
                .collect::<Result<Vec<_>, _>>()?;
            num.insert(id, n_params + insts.len());
            insts.push(FusedInst {
                op: g[id].op.clone(),
                args,
                ty: g[id].ty.clone(),
            });
        }
        let yields = g.outputs().iter().map(|o| num[&o.node]).collect();
        Ok((
            ScanBody {
                params: n_params,
                carries,
                sequences,
                reverse,
                axis,
                insts,
                yields,
            },
            hoisted,
        ))
    }
}

impl ScanBody {
    /// The same body without the invariant parameters it no longer reads, and the indices of
    /// the parameters (operands) it keeps, in order.
    pub fn prune_invariants(&self) -> (ScanBody, Vec<usize>) {
        let fixed = self.carries + self.sequences;
        let mut used = vec![false; self.params];
        for &v in self.insts.iter().flat_map(|i| &i.args).chain(&self.yields) {
            if let Some(u) = used.get_mut(v) {
                *u = true;
            }
        }
        let kept: Vec<usize> = (0..self.params).filter(|&i| i < fixed || used[i]).collect();
        let mut renum: Vec<usize> = vec![usize::MAX; self.params + self.insts.len()];
        for (new, &old) in kept.iter().enumerate() {
            renum[old] = new;
        }
        for i in 0..self.insts.len() {
            renum[self.params + i] = kept.len() + i;
        }
        let map = |v: usize| renum.get(v).copied().unwrap_or(v);
        let body = ScanBody {
            params: kept.len(),
            carries: self.carries,
            sequences: self.sequences,
            reverse: self.reverse,
            axis: self.axis,
            insts: self
                .insts
                .iter()
                .map(|i| FusedInst {
                    op: i.op.clone(),
                    args: i.args.iter().map(|&a| map(a)).collect(),
                    ty: i.ty.clone(),
                })
                .collect(),
            yields: self.yields.iter().map(|&v| map(v)).collect(),
        };
        (body, kept)
    }
}

/// The type of result `index` of the multi-result instruction `args[0]` names (a `scan` or
/// a multi-result `fused` instruction), given the types of the values before it.
fn result_type(
    insts: &[FusedInst],
    n_params: usize,
    types: &[TensorType],
    args: &[usize],
    index: usize,
) -> Result<TensorType, InferError> {
    let Some(&src) = args.first() else {
        return Err(InferError("a result needs its producer as operand".into()));
    };
    let producer = src.checked_sub(n_params).and_then(|i| insts.get(i));
    match producer.map(|p| (&p.op, p)) {
        Some((Op::Scan(body), p)) if index >= 1 && index < body.n_results() => {
            let operand_tys: Vec<&TensorType> = p.args.iter().map(|&a| &types[a]).collect();
            Ok(body.result_types(&operand_tys)?.swap_remove(index))
        }
        Some((Op::Fused(body), _)) if index >= 1 && index < body.n_results() => {
            Ok(types[src].clone())
        }
        _ => Err(InferError(format!(
            "%{src} is not a multi-result node with result {index}"
        ))),
    }
}

/// The shape of one step's slice of a sequence of shape `s` along `axis`.
pub fn step_shape(s: &Shape, axis: usize) -> Shape {
    let mut d = s.dims().to_vec();
    if axis < d.len() {
        d.remove(axis);
    }
    Shape(d)
}

/// The shape of `steps` per-step values of shape `s` stacked at `axis`.
pub fn stacked_shape(s: &Shape, axis: usize, steps: usize) -> Shape {
    let mut d = s.dims().to_vec();
    d.insert(axis.min(d.len()), steps);
    Shape(d)
}

/// `(outer, steps, inner)`: the extents before `axis`, at it and after it, of shape `s`:
/// step `t` of a row-major tensor of shape `s` is the `outer` runs of `inner` elements
/// starting at `(o * steps + t) * inner`.
pub fn step_layout(s: &Shape, axis: usize) -> (usize, usize, usize) {
    let d = s.dims();
    let outer = d.iter().take(axis).product();
    let steps = d.get(axis).copied().unwrap_or(1);
    let inner = d.iter().skip(axis + 1).product();
    (outer, steps, inner)
}

/// `g` with every scan over a non-leading axis made time-major (`None` when there is none),
/// which is how the code generator runs them: each sequence transposed so that its step
/// axis leads, the scan with `axis=0`, each stacked result transposed back for its readers.
/// One transpose of each sequence and each stacked output per call, against a strided copy
/// per step; the nodes that inputs, outputs and updates name keep their ids.
pub fn time_major(g: &Graph) -> Option<Graph> {
    let scans: Vec<NodeId> = g
        .node_ids()
        .into_iter()
        .filter(|&id| matches!(&g[id].op, Op::Scan(b) if b.axis != 0))
        .collect();
    if scans.is_empty() {
        return None;
    }
    let mut g = g.clone();
    let transpose = |g: &mut Graph, x: NodeId, perm: Vec<usize>| -> Option<NodeId> {
        let op = Op::Transpose { perm };
        let ty = op.infer(&[&g[x].ty], None).ok()?;
        let node = Node {
            op,
            ty,
            name: None,
            loc: g[x].loc.clone(),
            grad_of: g[x].grad_of,
        };
        Some(g.add_raw(node, &[x]))
    };
    for id in scans {
        let Op::Scan(mut body) = g[id].op.clone() else {
            continue;
        };
        let a = body.axis;
        let mut operands = g.operands(id);
        for o in operands.iter_mut().skip(body.carries).take(body.sequences) {
            let rank = g[*o].ty.shape.rank();
            let perm: Vec<usize> = std::iter::once(a)
                .chain((0..rank).filter(|&d| d != a))
                .collect();
            *o = transpose(&mut g, *o, perm)?;
        }
        body.axis = 0;
        let n_carries = body.carries;
        if let Some(n) = g.get_mut(id) {
            n.op = Op::Scan(body);
        }
        g.set_operands(id, &operands);
        // the stacked results: time-major now, transposed back for their readers
        let mut stacked: Vec<NodeId> = g
            .users(id)
            .into_iter()
            .filter(|&u| matches!(g[u].op, Op::ScanResult { index } if index >= n_carries))
            .collect();
        stacked.sort();
        stacked.dedup();
        if n_carries == 0 {
            stacked.push(id);
        }
        for x in stacked {
            let ty = g[x].ty.clone();
            let rank = ty.shape.rank();
            let steps = ty.shape.dims().get(a).copied()?;
            let tm = stacked_shape(&step_shape(&ty.shape, a), 0, steps);
            if let Some(n) = g.get_mut(x) {
                n.ty = TensorType::new(ty.dtype, tm);
            }
            let back: Vec<usize> = (1..=a)
                .chain(std::iter::once(0))
                .chain(a + 1..rank)
                .collect();
            let readers: Vec<NodeId> = g
                .users(x)
                .into_iter()
                .filter(|&u| !matches!(g[u].op, Op::ScanResult { .. }))
                .collect();
            let tb = transpose(&mut g, x, back)?;
            for u in readers {
                let ops: Vec<NodeId> = g
                    .operands(u)
                    .into_iter()
                    .map(|o| if o == x { tb } else { o })
                    .collect();
                g.set_operands(u, &ops);
            }
            for o in g.outputs_mut() {
                if o.node == x {
                    o.node = tb;
                }
            }
            for u in g.updates_mut() {
                if u.value == x {
                    u.value = tb;
                }
            }
        }
    }
    Some(g)
}
