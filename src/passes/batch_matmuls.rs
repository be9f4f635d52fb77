//! Batching of independent matmuls: many small GEMMs become one large one.
//!
//! In: any graph (typically a training step after autodiff and the optimizer). Out: the same
//! graph where two patterns are rewritten, in this order:
//!
//! 1. **Matmuls by one weight.** Matmuls `y_i = a_i x W` with the same right operand `W` that do
//!    not depend on one another become one matmul `Y = A x W`, `A` being the `a_i` stacked by
//!    rows (any row counts), and each `y_i` is its rows of `Y` (a `slice`). An unrolled RNN's
//!    input projections `x_t W` (`T` GEMMs of `[B,F] x [F,H]`) become one `[T*B, F] x [F, H]`
//!    GEMM; its recurrent products `h_(t-1) U`, each depending on the one before, stay apart.
//!    `W` must be a weight: a value that depends on no input (a param, or its transpose, as in
//!    the input gradients `dz_t W^T`). A right operand computed from the data is typically a
//!    cotangent shared by the products of several weight gradients (`h_(t-1)^T dz_t` and
//!    `x_t^T dz_t`), which pattern 2 merges across time steps instead.
//!    The matmuls of one `W` are grouped by *level*, the number of matmuls of that `W` on the
//!    longest path that reaches one; two of one level never depend on each other, so each
//!    level of two or more becomes one matmul (the result is acyclic, and a second run finds
//!    one matmul per level: nothing to do).
//! 2. **Sums of products.** A sum (a tree of `add`s of one shape, no broadcasting, whose inner
//!    adds have no other use) with two or more terms `P_i x Q_i` (matmuls used only by the
//!    sum, `P_i: [K, m_i]`, `Q_i: [m_i, N]`) gets one term `[P_1 .. P_n] x [Q_1; ..; Q_n]`
//!    (columns and rows stacked in the same order) in place of the first one. The gradient of
//!    a weight used at every step is such a sum: `dW = sum_t x_t^T dz_t` becomes `X^T DZ`, one
//!    GEMM whose inner dimension is `sum m_i`. Terms whose left or right operands repeat are
//!    left alone (stacking would copy one operand several times).
//!
//! Pattern 1 runs first: an RNN step's `x_t W + h_(t-1) U` is a sum of products too, but one
//! GEMM for every `x_t W` leaves a `[B,H] x [H,H]` GEMM per step, where merging each step's
//! two products would leave a `[B,F+H] x [F+H,H]` GEMM per step and copy `x_t` and `h_(t-1)`.
//!
//! **Stacking copies nothing when it can.** When the operands to stack are slices that tile one
//! tensor `X` along one axis `j` (full along every other axis, in any order; possibly reshaped
//! to 2-D), such as the RNN's `x_t = reshape(x[:, t, :])`, the stack is `reshape(X, [p * X[j],
//! k])` (`p` the product of the dims before `j`, `k` of those after), a view of `X`'s buffer.
//! Its rows are in `X`'s order, so slice `t`'s rows are interleaved with the others'; the
//! operands on the other side of the same products are stacked in the same row order
//! (`concat` along axis 1 of their `[p, m_i / p, k]` reshapes) and the results are read back
//! the same way (a slice of the `[p, X[j], n]` reshape). Otherwise the stack is a `concat`;
//! when every operand to stack is a transpose (or a splat constant, such as an RNN's zero
//! initial state, whose transpose is a splat constant too), it is the transpose of the
//! `concat` of their operands, which the JIT reads in place through strides when a matmul
//! uses it.
//!
//! **Results.** Pattern 1 is exact: every element of a product is the same dot product,
//! computed in the same order whatever the row count (the interpreter's results and the
//! JIT's, with either matmul kernel, are the same bits). Pattern 2 reassociates the sum (one
//! dot product over `sum m_i` terms instead of `n` rounded products added in turn), so results
//! differ by rounding, as with any change of summation order.
//!
//! Counts: `shared_rhs` (matmuls merged by pattern 1), `sum_terms` (products merged by
//! pattern 2). Remarks name the weights whose matmuls depend on one another. New nodes take
//! the source location (and `grad_of`) of the first matmul or of the sum they replace, views
//! of a tiled tensor those of the tensor; replaced nodes are removed, operands left unused
//! are left for `dce` (so are duplicate stacks, for `cse`).

use super::dce::live_nodes;
use super::rewrite::{is_root, move_uses, redirect_grad_of_all};
use super::PassReport;
use crate::graph::{Graph, Node, NodeId, SourceLoc};
use crate::op::{BinaryOp, Literal, Op};
use crate::shape::{Shape, TensorType};
use std::collections::{BTreeMap, HashMap, HashSet};

/// Batches matmuls (see the module documentation). Counts `sum_terms` and `shared_rhs`.
pub fn run(g: &mut Graph) -> PassReport {
    let mut report = PassReport::new("batch_matmuls");
    if g.topo_order().is_err() {
        report.remark("graph has a cycle: nothing done");
        return report;
    }
    // pattern 1 first (see the module documentation)
    shared_rhs(g, &mut report);
    sums_of_products(g, &mut report);
    report
}

// ---- pattern 1: matmuls with the same right operand ------------------------------------

/// Pattern 1 on every right operand with two or more live matmuls, in id order.
fn shared_rhs(g: &mut Graph, report: &mut PassReport) {
    let Ok(order) = g.topo_order() else { return };
    let live = live_nodes(g);
    // values computed from inputs (data): a weight is none of them
    let mut data: HashSet<NodeId> = HashSet::new();
    let mut by_rhs: BTreeMap<NodeId, Vec<NodeId>> = BTreeMap::new();
    for &id in &order {
        if matches!(g[id].op, Op::Input) || g.operands(id).iter().any(|o| data.contains(o)) {
            data.insert(id);
        }
        if let Some((_, w)) = matmul_operands(g, id) {
            if live.contains(&id) && !data.contains(&w) {
                by_rhs.entry(w).or_default().push(id);
            }
        }
    }
    for (w, members) in by_rhs {
        if members.len() < 2 {
            continue;
        }
        let Some(levels) = levels(g, &members) else {
            return;
        };
        let mut alone = 0;
        for level in levels.values() {
            if level.len() < 2 {
                alone += level.len();
            } else if batch_level(g, level, report) {
                report.count("shared_rhs", level.len());
            }
        }
        if alone > 0 {
            report.remark(format!(
                "not batched: {alone} of {} matmuls by {}: they depend on one another ({} levels)",
                members.len(),
                crate::verify::node_label(g, w),
                levels.len()
            ));
        }
    }
}

/// `members` grouped by level: the number of members on the longest path that reaches a
/// member, the member excluded. Members of one level come in canonical order.
fn levels(g: &Graph, members: &[NodeId]) -> Option<BTreeMap<usize, Vec<NodeId>>> {
    let order = g.topo_order().ok()?;
    let is_member: HashSet<NodeId> = members.iter().copied().collect();
    // members on the longest path that ends at a node, the node included
    let mut count: HashMap<NodeId, usize> = HashMap::with_capacity(order.len());
    let mut out: BTreeMap<usize, Vec<NodeId>> = BTreeMap::new();
    for id in order {
        let before = g
            .operands(id)
            .iter()
            .filter_map(|o| count.get(o).copied())
            .max()
            .unwrap_or(0);
        let member = is_member.contains(&id);
        if member {
            out.entry(before).or_default().push(id);
        }
        count.insert(id, before + usize::from(member));
    }
    Some(out)
}

/// Replaces the matmuls `members` (same right operand, independent) by slices of one matmul
/// of their stacked left operands. Returns whether it did.
fn batch_level(g: &mut Graph, members: &[NodeId], report: &mut PassReport) -> bool {
    let Some(operands) = members
        .iter()
        .map(|&m| matmul_operands(g, m))
        .collect::<Option<Vec<_>>>()
    else {
        return false;
    };
    let lhs: Vec<NodeId> = operands.iter().map(|&(a, _)| a).collect();
    let w = operands[0].1;
    let rows: Vec<usize> = lhs.iter().map(|&a| g[a].ty.shape.dims()[0]).collect();
    let layout = tiling(g, &lhs).map_or_else(|| Layout::rows(&rows), |(_, l)| l);
    let mut b = Builder::new(g, members[0]);
    let built = (|| {
        let a = b.stack_rows(g, &lhs, &layout)?;
        let y = b.op(g, Op::Matmul, &[a, w])?;
        b.unstack(g, y, &layout)
    })();
    let Some(parts) = built else {
        b.discard(g);
        report.remark(format!(
            "not batched: the matmuls by {} (a stacked shape was refused)",
            crate::verify::node_label(g, w)
        ));
        return false;
    };
    let map: HashMap<NodeId, NodeId> = members.iter().copied().zip(parts.clone()).collect();
    redirect_grad_of_all(g, &map);
    for (&m, &y) in members.iter().zip(&parts) {
        move_uses(g, m, y);
    }
    true
}

/// The operands of `id` when it is a matmul of two 2-D operands.
fn matmul_operands(g: &Graph, id: NodeId) -> Option<(NodeId, NodeId)> {
    if !matches!(g[id].op, Op::Matmul) {
        return None;
    }
    match g.operands(id)[..] {
        [a, b] if g[a].ty.shape.rank() == 2 && g[b].ty.shape.rank() == 2 => Some((a, b)),
        _ => None,
    }
}

// ---- pattern 2: sums of products --------------------------------------------------------

/// Whether `id` is an `add` without broadcasting (both operands have its type).
fn is_plain_add(g: &Graph, id: NodeId) -> bool {
    matches!(g[id].op, Op::Binary(BinaryOp::Add))
        && g.operands(id).iter().all(|&o| g[o].ty == g[id].ty)
}

/// Pattern 2 on every maximal sum, from the last one in canonical order.
fn sums_of_products(g: &mut Graph, report: &mut PassReport) {
    let Ok(order) = g.topo_order() else { return };
    let live = live_nodes(g);
    let live_users = |g: &Graph, id: NodeId| -> Vec<NodeId> {
        g.users(id)
            .into_iter()
            .filter(|u| live.contains(u))
            .collect()
    };
    let mut claimed: HashSet<NodeId> = HashSet::new();
    for &root in order.iter().rev() {
        if !g.contains(root)
            || !live.contains(&root)
            || claimed.contains(&root)
            || !is_plain_add(g, root)
        {
            continue;
        }
        // inner adds (each before its operands) and terms (left to right)
        let mut inner = Vec::new();
        let mut terms = Vec::new();
        let mut stack = vec![(root, root)];
        while let Some((n, parent)) = stack.pop() {
            let expand = n == root
                || (is_plain_add(g, n)
                    && !is_root(g, n)
                    && live_users(g, n) == [parent]
                    && g.operands(parent).iter().filter(|&&o| o == n).count() == 1);
            if expand {
                inner.push(n);
                for o in g.operands(n).into_iter().rev() {
                    stack.push((o, n));
                }
            } else {
                terms.push(n);
            }
        }
        claimed.extend(inner.iter().copied());
        let mut times: HashMap<NodeId, usize> = HashMap::new();
        for &t in &terms {
            *times.entry(t).or_default() += 1;
        }
        let products: Vec<NodeId> = terms
            .iter()
            .copied()
            .filter(|&t| {
                matmul_operands(g, t).is_some()
                    && times[&t] == 1
                    && !is_root(g, t)
                    && live_users(g, t).len() == 1
            })
            .collect();
        if products.len() < 2 {
            continue;
        }
        let (ps, qs): (Vec<NodeId>, Vec<NodeId>) = products
            .iter()
            .filter_map(|&m| matmul_operands(g, m))
            .unzip();
        if has_repeats(&ps) || has_repeats(&qs) {
            report.remark(format!(
                "not batched: the products summed by {} repeat an operand",
                crate::verify::node_label(g, root)
            ));
            continue;
        }
        let sum = Sum {
            root,
            inner: &inner,
            terms: &terms,
            products: &products,
        };
        if let Some(made) = batch_sum(g, &sum, &ps, &qs) {
            report.count("sum_terms", products.len());
            // new nodes may reuse the ids of removed ones that come later in `order`
            claimed.extend(made);
        } else {
            report.remark(format!(
                "not batched: the products summed by {} (a stacked shape was refused)",
                crate::verify::node_label(g, root)
            ));
        }
    }
}

fn has_repeats(ids: &[NodeId]) -> bool {
    let set: HashSet<NodeId> = ids.iter().copied().collect();
    set.len() != ids.len()
}

/// A sum found by [`sums_of_products`].
struct Sum<'a> {
    root: NodeId,
    /// The inner adds, each before its operands (`root` first).
    inner: &'a [NodeId],
    /// The terms, left to right.
    terms: &'a [NodeId],
    /// The terms to merge.
    products: &'a [NodeId],
}

/// Replaces `sum` by the same sum with its products (operands `ps`, `qs`) as one product.
/// Returns the nodes it made.
fn batch_sum(g: &mut Graph, sum: &Sum<'_>, ps: &[NodeId], qs: &[NodeId]) -> Option<Vec<NodeId>> {
    let Sum {
        root,
        inner,
        terms,
        products,
    } = *sum;
    let cols: Vec<usize> = qs.iter().map(|&q| g[q].ty.shape.dims()[0]).collect();
    // the stacking order: that of slices tiling a tensor on either side, else the sum's
    let p_rows: Option<Vec<NodeId>> = ps.iter().map(|&p| transposed(g, p)).collect();
    let layout = p_rows
        .and_then(|r| tiling(g, &r))
        .or_else(|| tiling(g, qs))
        .map_or_else(|| Layout::rows(&cols), |(_, l)| l);
    let mut b = Builder::new(g, root);
    let built = (|| {
        let lhs = b.stack_cols(g, ps, &layout)?;
        let rhs = b.stack_rows(g, qs, &layout)?;
        let product = b.op(g, Op::Matmul, &[lhs, rhs])?;
        // the other terms in their order, the product in place of the first one it replaces
        let merged: HashSet<NodeId> = products.iter().copied().collect();
        let mut total: Option<NodeId> = None;
        let mut placed = false;
        for &t in terms {
            let v = if merged.contains(&t) {
                if placed {
                    continue;
                }
                placed = true;
                product
            } else {
                t
            };
            total = Some(match total {
                None => v,
                Some(s) => b.op(g, Op::Binary(BinaryOp::Add), &[s, v])?,
            });
        }
        total
    })();
    let Some(new_root) = built else {
        b.discard(g);
        return None;
    };
    redirect_grad_of_all(g, &HashMap::from([(root, new_root)]));
    move_uses(g, root, new_root);
    // the replaced adds and products, now unused (a dead user keeps its operand for dce)
    let mut gone: HashSet<NodeId> = HashSet::from([root]);
    let mut removed = Vec::new();
    for &n in inner.iter().skip(1).chain(products) {
        if !is_root(g, n) && g.users(n).iter().all(|u| gone.contains(u)) {
            gone.insert(n);
            removed.push(n);
        }
    }
    for id in g.node_ids() {
        if let Some(n) = g.get_mut(id) {
            if n.grad_of.is_some_and(|f| gone.contains(&f)) {
                n.grad_of = None;
            }
        }
    }
    // in a fixed order: freed ids are reused by later nodes and break ties in canonical order
    for n in removed {
        g.remove(n);
    }
    Some(b.made)
}

// ---- stacking ---------------------------------------------------------------------------

/// The row order of a stack: the stacked operands in `order` (indices into them); each gives
/// `lens[i]` consecutive rows (for the `i`-th in `order`) in each of `outer` blocks. `outer =
/// 1` is a plain `concat` along axis 0.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Layout {
    order: Vec<usize>,
    outer: usize,
    lens: Vec<usize>,
}

impl Layout {
    /// Operands of `rows` rows one after another, in their order.
    fn rows(rows: &[usize]) -> Layout {
        Layout {
            order: (0..rows.len()).collect(),
            outer: 1,
            lens: rows.to_vec(),
        }
    }

    /// Rows per block.
    fn block(&self) -> usize {
        self.lens.iter().sum()
    }
}

/// The operand `x` of `transpose(x, perm=[1,0])`.
fn transposed(g: &Graph, id: NodeId) -> Option<NodeId> {
    match &g[id].op {
        Op::Transpose { perm } if perm[..] == [1, 0] => g.operands(id).first().copied(),
        _ => None,
    }
}

/// Whether the transpose of the 2-D `id` costs no copy: `id` is a transpose, or a splat
/// constant (an RNN's zero initial state), whose transpose is another splat constant.
fn transposes_freely(g: &Graph, id: NodeId) -> bool {
    transposed(g, id).is_some()
        || matches!(
            g[id].op,
            Op::Const {
                value: Literal::Splat(_)
            }
        ) && g[id].ty.shape.rank() == 2
}

/// When the 2-D `values` are slices (each possibly reshaped) that tile one tensor `X` along one
/// axis `j`, full along the others, with each value's rows the slice's dims up to `j`: `X`
/// and the layout in which `reshape(X, [rows, k])` stacks them (see the module documentation).
fn tiling(g: &Graph, values: &[NodeId]) -> Option<(NodeId, Layout)> {
    let mut source = None;
    let mut boxes = Vec::with_capacity(values.len());
    for &v in values {
        let s = match g[v].op {
            Op::Reshape { .. } => *g.operands(v).first()?,
            _ => v,
        };
        let Op::Slice { begin, end } = &g[s].op else {
            return None;
        };
        let x = *g.operands(s).first()?;
        if *source.get_or_insert(x) != x {
            return None;
        }
        boxes.push((begin, end));
    }
    let x = source?;
    let dims = g[x].ty.shape.dims();
    if boxes
        .iter()
        .any(|(b, e)| b.len() != dims.len() || e.len() != dims.len())
    {
        return None;
    }
    let mut axis = None;
    for (d, &n) in dims.iter().enumerate() {
        if boxes.iter().any(|(b, e)| b[d] != 0 || e[d] != n) && axis.replace(d).is_some() {
            return None;
        }
    }
    let j = axis?;
    let mut order: Vec<usize> = (0..values.len()).collect();
    order.sort_by_key(|&i| boxes[i].0[j]);
    let mut at = 0;
    for &i in &order {
        if boxes[i].0[j] != at {
            return None;
        }
        at = boxes[i].1[j];
    }
    if at != dims[j] {
        return None;
    }
    let outer: usize = dims[..j].iter().product();
    let k: usize = dims[j + 1..].iter().product();
    let lens: Vec<usize> = order
        .iter()
        .map(|&i| boxes[i].1[j] - boxes[i].0[j])
        .collect();
    for (&i, &len) in order.iter().zip(&lens) {
        if g[values[i]].ty.shape.dims() != [outer * len, k] {
            return None;
        }
    }
    Some((x, Layout { order, outer, lens }))
}

/// Makes the nodes of one rewrite, with the location and `grad_of` of the node they replace;
/// [`Builder::discard`] removes them all again when one cannot be made.
struct Builder {
    loc: Option<SourceLoc>,
    grad_of: Option<NodeId>,
    made: Vec<NodeId>,
}

impl Builder {
    fn new(g: &Graph, like: NodeId) -> Builder {
        Builder {
            loc: g[like].loc.clone(),
            grad_of: g[like].grad_of,
            made: Vec::new(),
        }
    }

    /// Removes every node made so far (none has a user outside them).
    fn discard(self, g: &mut Graph) {
        for id in self.made.into_iter().rev() {
            g.remove(id);
        }
    }

    /// `op` applied to `operands`, with its inferred type; `None` if inference refuses it.
    fn op(&mut self, g: &mut Graph, op: Op, operands: &[NodeId]) -> Option<NodeId> {
        let types: Vec<&TensorType> = operands
            .iter()
            .map(|&o| g.get(o).map(|n| &n.ty))
            .collect::<Option<_>>()?;
        let ty = op.infer(&types, None).ok()?;
        let node = Node {
            op,
            ty,
            name: None,
            loc: self.loc.clone(),
            grad_of: self.grad_of,
        };
        let id = g.add_raw(node, operands);
        self.made.push(id);
        Some(id)
    }

    /// `x` with shape `dims`: `x` itself, the operand of a reshape `x`, or a new reshape (of
    /// that operand: never a reshape of a reshape).
    fn reshape(&mut self, g: &mut Graph, x: NodeId, dims: Vec<usize>) -> Option<NodeId> {
        let src = match g[x].op {
            Op::Reshape { .. } => *g.operands(x).first()?,
            _ => x,
        };
        for v in [x, src] {
            if g[v].ty.shape.dims() == dims {
                return Some(v);
            }
        }
        self.op(g, Op::Reshape { shape: Shape(dims) }, &[src])
    }

    /// The 2-D transpose of `x`: the operand of a transpose `x`, a splat constant of the
    /// transposed shape for a splat constant `x`, else a new transpose.
    fn transpose(&mut self, g: &mut Graph, x: NodeId) -> Option<NodeId> {
        if let Some(t) = transposed(g, x) {
            return Some(t);
        }
        match (&g[x].op, g[x].ty.shape.dims()) {
            (
                Op::Const {
                    value: Literal::Splat(v),
                },
                &[m, n],
            ) => {
                let node = Node {
                    op: Op::Const {
                        value: Literal::Splat(*v),
                    },
                    ty: TensorType::new(g[x].ty.dtype, [n, m]),
                    name: None,
                    loc: self.loc.clone(),
                    grad_of: self.grad_of,
                };
                let id = g.add_raw(node, &[]);
                self.made.push(id);
                Some(id)
            }
            _ => self.op(g, Op::Transpose { perm: vec![1, 0] }, &[x]),
        }
    }

    fn concat(&mut self, g: &mut Graph, xs: &[NodeId], axis: usize) -> Option<NodeId> {
        match xs {
            [x] => Some(*x),
            _ => self.op(g, Op::Concat { axis }, xs),
        }
    }

    /// The 2-D `values` (`[m_i, k]`) stacked by rows as `layout` says.
    fn stack_rows(&mut self, g: &mut Graph, values: &[NodeId], layout: &Layout) -> Option<NodeId> {
        let k = *g[*values.first()?].ty.shape.dims().get(1)?;
        let rows = layout.outer * layout.block();
        if let Some((x, l)) = tiling(g, values) {
            if &l == layout {
                // a view of `x`: it belongs with `x` (a forward value, usually)
                let grad_of = std::mem::replace(&mut self.grad_of, g[x].grad_of);
                let view = self.reshape(g, x, vec![rows, k]);
                self.grad_of = grad_of;
                return view;
            }
        }
        let ordered: Vec<NodeId> = layout.order.iter().map(|&i| values[i]).collect();
        if layout.outer == 1 {
            if ordered.iter().all(|&v| transposes_freely(g, v)) {
                let mut inner = Vec::with_capacity(ordered.len());
                for &v in &ordered {
                    inner.push(self.transpose(g, v)?);
                }
                let c = self.concat(g, &inner, 1)?;
                return self.transpose(g, c);
            }
            return self.concat(g, &ordered, 0);
        }
        let mut parts = Vec::with_capacity(ordered.len());
        for (&v, &len) in ordered.iter().zip(&layout.lens) {
            parts.push(self.reshape(g, v, vec![layout.outer, len, k])?);
        }
        let c = self.concat(g, &parts, 1)?;
        self.reshape(g, c, vec![rows, k])
    }

    /// The 2-D `values` (`[k, m_i]`) side by side, columns in the row order of `layout`.
    fn stack_cols(&mut self, g: &mut Graph, values: &[NodeId], layout: &Layout) -> Option<NodeId> {
        if layout.outer == 1 && !values.iter().all(|&v| transposes_freely(g, v)) {
            let ordered: Vec<NodeId> = layout.order.iter().map(|&i| values[i]).collect();
            return self.concat(g, &ordered, 1);
        }
        let mut rows = Vec::with_capacity(values.len());
        for &v in values {
            rows.push(self.transpose(g, v)?);
        }
        let s = self.stack_rows(g, &rows, layout)?;
        self.transpose(g, s)
    }

    /// The rows of `y` (`[rows, n]`, stacked as `layout` says) that belong to each stacked
    /// operand, in the operands' original order.
    fn unstack(&mut self, g: &mut Graph, y: NodeId, layout: &Layout) -> Option<Vec<NodeId>> {
        let n = *g[y].ty.shape.dims().get(1)?;
        let (outer, block) = (layout.outer, layout.block());
        let mut out = vec![y; layout.order.len()];
        let mut at = 0;
        let y3 = if outer == 1 {
            y
        } else {
            self.reshape(g, y, vec![outer, block, n])?
        };
        for (&i, &len) in layout.order.iter().zip(&layout.lens) {
            out[i] = if outer == 1 {
                let s = Op::Slice {
                    begin: vec![at, 0],
                    end: vec![at + len, n],
                };
                self.op(g, s, &[y])?
            } else {
                let s = Op::Slice {
                    begin: vec![0, at, 0],
                    end: vec![outer, at + len, n],
                };
                let s = self.op(g, s, &[y3])?;
                self.reshape(g, s, vec![outer * len, n])?
            };
            at += len;
        }
        Some(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `x: [2,6,3]` and 2-D views of the slices `begin..end` of axis `axis` (full elsewhere).
    fn slices(ranges: &[(usize, usize)], axis: usize) -> (Graph, NodeId, Vec<NodeId>) {
        let mut g = Graph::new("t");
        let x = g.input("x", TensorType::f32([2, 6, 3])).unwrap();
        let full = [2, 6, 3];
        let views = ranges
            .iter()
            .map(|&(b, e)| {
                let mut begin = vec![0; 3];
                let mut end = full.to_vec();
                begin[axis] = b;
                end[axis] = e;
                let s = g.slice(x, &begin, &end).unwrap();
                let k: usize = full[axis + 1..].iter().product();
                let rows = g[s].ty.shape.numel() / k;
                g.reshape(s, [rows, k]).unwrap()
            })
            .collect();
        (g, x, views)
    }

    #[test]
    fn slices_that_tile_an_axis_in_any_order_are_a_view() {
        let (g, x, v) = slices(&[(2, 3), (0, 2), (3, 6)], 1);
        let (src, layout) = tiling(&g, &v).unwrap();
        assert_eq!(src, x);
        assert_eq!(
            layout,
            Layout {
                order: vec![1, 0, 2],
                outer: 2,
                lens: vec![2, 1, 3],
            }
        );
        // along axis 0, the pieces are consecutive rows: one block
        let (g, _, v) = slices(&[(1, 2), (0, 1)], 0);
        let (_, layout) = tiling(&g, &v).unwrap();
        assert_eq!((layout.order, layout.outer), (vec![1, 0], 1));
    }

    /// The pass may run on a graph nobody verified: wrong matmuls and adds are left alone.
    #[test]
    fn malformed_matmuls_and_adds_are_left_alone() {
        let mut g = Graph::new("bad");
        let x = g.input("x", TensorType::f32([2, 3, 4])).unwrap();
        let w = g.param("w", [4, 5], crate::op::Init::Zeros).unwrap();
        let node = |op: Op| Node {
            op,
            ty: TensorType::f32([2, 5]),
            name: None,
            loc: None,
            grad_of: None,
        };
        let a = g.add_raw(node(Op::Matmul), &[x, w]); // a 3-D left operand
        let b = g.add_raw(node(Op::Matmul), &[x, w]);
        let c = g.add_raw(node(Op::Matmul), &[w]); // one operand
        let s = g.add_raw(node(Op::Binary(BinaryOp::Add)), &[a, b]);
        let t = g.add_raw(node(Op::Binary(BinaryOp::Add)), &[s]);
        g.push_output("t", t);
        g.push_output("c", c);
        let before = crate::text::print(&g);
        assert!(!run(&mut g).changed());
        assert_eq!(crate::text::print(&g), before);
    }

    #[test]
    fn gaps_overlaps_and_other_axes_are_not_a_view() {
        for ranges in [
            &[(0, 2), (3, 6)][..],     // a gap
            &[(0, 3), (2, 6)],         // an overlap
            &[(0, 2), (2, 5)],         // the end is missing
            &[(0, 3), (0, 3), (3, 6)], // a piece twice
        ] {
            let (g, _, v) = slices(ranges, 1);
            assert!(tiling(&g, &v).is_none(), "{ranges:?}");
        }
        // slices along axis 2 reshaped to [rows, 1]: rows are every element, still a tiling
        let (g, _, v) = slices(&[(0, 1), (1, 3)], 2);
        assert!(tiling(&g, &v).is_some());
        // cut along two axes
        let mut g = Graph::new("t");
        let x = g.input("x", TensorType::f32([2, 4])).unwrap();
        let a = g.slice(x, &[0, 0], &[1, 4]).unwrap();
        let b = g.slice(x, &[1, 0], &[2, 2]).unwrap();
        assert!(tiling(&g, &[a, b]).is_none());
    }
}
