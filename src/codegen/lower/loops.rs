//! Loop infrastructure of the lowering: counted loops, elementwise maps over strided views
//! (a vector body and a scalar tail), fills, copies, and reductions (in registers when the
//! reduced dimension is innermost, else in place in the output row; a long f32 sum adds
//! blocks of its terms to f64 running totals either way).

use super::*;
use cranelift_codegen::ir::{Block, Function, Inst, ValueDef};

/// Independent `f32x4` accumulators per row of a reduction computed in registers: enough to
/// hide the latency of `addps` (3 cycles at 2 per cycle on Zen 3) behind the loads.
pub(super) const REDUCE_ACCS: usize = 4;

/// Groups of [`REDUCE_ACCS`] vectors (16 Ki elements) a long sum adds in its registers before
/// it adds the block's total to an f64 running total: a row's error then grows with the
/// block, not with the row.
pub(super) const SUM_BLOCK_GROUPS: usize = 1024;

/// Vectors per iteration of a contiguous elementwise row ([`Lowerer::map_row_vector`]):
/// [`UNROLL_HEAVY`] interleaved copies ([`Lowerer::interleaved`]) where one vector's code is
/// at least [`HEAVY_INSTS`] instructions (an inline `exp`, `tanh`, `log` or `sigmoid`:
/// latency-bound chains that overlap only when interleaved) and the function's
/// [`HEAVY_BUDGET`] allows, else [`UNROLL_LIGHT`] copies one after the other (loads, a few
/// arithmetic ops and stores, bound by memory or by the divider).
pub(super) const UNROLL_HEAVY: usize = 4;
/// See [`UNROLL_HEAVY`].
pub(super) const UNROLL_LIGHT: usize = 2;
/// See [`UNROLL_HEAVY`].
pub(super) const HEAVY_INSTS: usize = 48;
/// CLIF instructions a function spends at most on rows unrolled [`UNROLL_HEAVY`] times
/// (counted as copies times one copy's length): four interleaved copies of a long body cost
/// Cranelift about three times the compile time of two (register allocation over four live
/// chains), so a graph of thousands of `tanh` layers would compile 3.5x slower for it
/// (measured on `benches/scaling.rs`). The budget covers every such row of the RNN of
/// `ir/rnn.ir` (28 `tanh` rows of ~370 instructions) and bounds what a larger graph spends.
pub(super) const HEAVY_BUDGET: usize = 16 * 1024;

/// Terms an output element of an f32 sum adds in f32, in place in the output buffer, before
/// that partial sum is added to the element's f64 running total (when the reduced axes are
/// not only the innermost: [`Lowerer::for_each_sum_row`]). Each lane of the register
/// accumulators adds as many terms in a block of [`SUM_BLOCK_GROUPS`], so outer-axis sums
/// round like inner-axis ones: the error grows with the block, not with the reduced extent
/// (a constant summed 1024 times in f32 is off by up to 1e-5 of the sum).
pub(super) const OUTER_SUM_BLOCK: usize = 1024;

/// Bytes of planned scratch that a reduction of `kind` over `axes` of a `dtype` value of
/// shape `domain` (a plain reduction's operand, a fused body's domain) uses for the f64
/// running totals of its output elements ([`Lowerer::for_each_sum_row`]): 8 per output
/// element for an f32 sum or mean that adds more than [`OUTER_SUM_BLOCK`] terms into each
/// element, else 0. Both the planner, which sizes the node's scratch, and the lowering, which
/// uses it, ask this, so the code never needs totals the plan did not place. (Whether the
/// lowering blocks also depends on the operands' strides, which this rule over-approximates:
/// a sum over the innermost axis alone, summed in registers, gets totals it does not use.)
pub(crate) fn sum_totals_bytes(
    dtype: DType,
    domain: &Shape,
    axes: &[usize],
    kind: ReduceOp,
) -> usize {
    let terms = axes
        .iter()
        .filter_map(|&a| domain.0.get(a))
        .fold(1usize, |t, &n| t.saturating_mul(n));
    let sum = matches!(kind, ReduceOp::Sum | ReduceOp::Mean) && dtype == DType::F32;
    if sum && terms > OUTER_SUM_BLOCK {
        (domain.numel() / terms).saturating_mul(8)
    } else {
        0
    }
}

/// An update of an output element and its f64 running total ([`Lowerer::update_totals`]):
/// `(total, element)` in, the values to store (if any) out.
type TotalsFn<'f, 'a> =
    &'f dyn Fn(&mut Lowerer<'a>, Value, Value) -> (Option<Value>, Option<Value>);

/// A strided view of a buffer: element offset and per-dimension element strides over the
/// iteration space of a loop nest.
#[derive(Clone, Debug)]
pub(super) struct View {
    pub(super) loc: Loc,
    pub(super) dtype: DType,
    pub(super) offset: i64,
    pub(super) strides: Vec<i64>,
}

impl View {
    /// The whole buffer at `loc` iterated in row-major order over `shape`.
    pub(super) fn dense(loc: Loc, dtype: DType, shape: &Shape) -> View {
        View {
            loc,
            dtype,
            offset: 0,
            strides: shape.strides().iter().map(|&s| s as i64).collect(),
        }
    }
}

/// Strides of `operand` (of shape `from`) broadcast over `to` (numpy rules): 0 where the
/// operand's dimension is 1 or missing.
pub(super) fn broadcast_strides(from: &Shape, to: &Shape) -> Vec<i64> {
    let fs = from.strides();
    let skip = to.rank() - from.rank();
    (0..to.rank())
        .map(|d| {
            if d < skip || from.0[d - skip] == 1 {
                0
            } else {
                fs[d - skip] as i64
            }
        })
        .collect()
}

/// Merges dimensions that are contiguous for every stride list and drops size-1 dimensions.
/// Always returns at least one dimension.
pub(super) fn collapse(dims: &[usize], strides: &mut [Vec<i64>]) -> Vec<usize> {
    let mut out_dims: Vec<usize> = Vec::new();
    let mut out_strides: Vec<Vec<i64>> = vec![Vec::new(); strides.len()];
    for (d, &n) in dims.iter().enumerate() {
        if n == 1 {
            continue;
        }
        let mergeable = !out_dims.is_empty()
            && strides
                .iter()
                .zip(&out_strides)
                .all(|(s, os)| *os.last().unwrap_or(&0) == s[d] * n as i64);
        if mergeable {
            *out_dims.last_mut().unwrap_or(&mut 0) *= n;
            for (s, os) in strides.iter().zip(out_strides.iter_mut()) {
                if let Some(l) = os.last_mut() {
                    *l = s[d];
                }
            }
        } else {
            out_dims.push(n);
            for (s, os) in strides.iter().zip(out_strides.iter_mut()) {
                os.push(s[d]);
            }
        }
    }
    if out_dims.is_empty() || dims.contains(&0) {
        let n = if dims.contains(&0) { 0 } else { 1 };
        out_dims = vec![n];
        out_strides = vec![vec![0]; strides.len()];
    }
    for (s, os) in strides.iter_mut().zip(out_strides) {
        *s = os;
    }
    out_dims
}

/// Scratch bytes of node `id` for the f64 running totals of a long f32 sum
/// ([`sum_totals_bytes`]): a plain `reduce_sum`/`reduce_mean`, or a fused body
/// with such a trailing reduction (over the body's domain). `None` for a node that is no
/// reduction.
pub(crate) fn sum_scratch_bytes(g: &crate::graph::Graph, id: NodeId) -> Option<usize> {
    match &g[id].op {
        Op::Reduce { kind, axes, .. } => {
            let x = &g[*g.operands(id).first()?].ty;
            Some(sum_totals_bytes(x.dtype, &x.shape, axes, *kind))
        }
        Op::Fused(body) => {
            let r = body.reduction()?;
            let Op::Reduce { kind, axes, .. } = &r.op else {
                return None;
            };
            let domain = body.domain();
            Some(sum_totals_bytes(DType::F32, &domain, axes, *kind))
        }
        _ => None,
    }
}

impl<'a> Lowerer<'a> {
    /// `for i in 0..n { carried = body(i, carried) }` as a do-while loop; returns the final
    /// carried values. No loop is emitted for `n <= 1`.
    pub(super) fn for_range(
        &mut self,
        n: usize,
        carried: Vec<Value>,
        body: LoopBody<'_, 'a>,
    ) -> Vec<Value> {
        match n {
            0 => return carried,
            1 => {
                let z = self.iconst(0);
                return body(self, z, &carried);
            }
            _ => {}
        }
        let header = self.b.create_block();
        let exit = self.b.create_block();
        let i = self.b.append_block_param(header, types::I64);
        let mut params = Vec::new();
        let mut results = Vec::new();
        for &v in &carried {
            let t = self.b.func.dfg.value_type(v);
            params.push(self.b.append_block_param(header, t));
            results.push(self.b.append_block_param(exit, t));
        }
        let zero = self.iconst(0);
        let args: Vec<BlockArg> = std::iter::once(zero)
            .chain(carried)
            .map(BlockArg::Value)
            .collect();
        self.b.ins().jump(header, &args);
        self.b.switch_to_block(header);
        let out = body(self, i, &params);
        let next = self.b.ins().iadd_imm_s(i, 1);
        let more = self
            .b
            .ins()
            .icmp_imm_s(IntCC::SignedLessThan, next, n as i64);
        let back: Vec<BlockArg> = std::iter::once(next)
            .chain(out.iter().copied())
            .map(BlockArg::Value)
            .collect();
        let done: Vec<BlockArg> = out.into_iter().map(BlockArg::Value).collect();
        self.b.ins().brif(more, header, &back, exit, &done);
        self.b.switch_to_block(exit);
        results
    }

    /// Loops over `dims` (all but the innermost of an iteration space), calling `inner` with
    /// the byte offset of every view at the start of each innermost row.
    pub(super) fn nest(
        &mut self,
        dims: &[usize],
        strides: &[Vec<i64>],
        offs: Vec<Value>,
        inner: &mut dyn FnMut(&mut Self, &[Value]),
    ) {
        let Some(&d0) = dims.first() else {
            inner(self, &offs);
            return;
        };
        let rest: Vec<Vec<i64>> = strides.iter().map(|s| s[1..].to_vec()).collect();
        self.for_range(d0, vec![], &mut |lw, i, _| {
            let o2 = offs
                .iter()
                .zip(strides)
                .map(|(&o, s)| {
                    if s[0] == 0 {
                        o
                    } else {
                        let step = lw.b.ins().imul_imm_s(i, s[0] * 4);
                        lw.b.ins().iadd(o, step)
                    }
                })
                .collect();
            lw.nest(&dims[1..], &rest, o2, inner);
            vec![]
        });
    }

    // ---- the elementwise loop ---------------------------------------------------------

    /// `out[idx] = f(ins[0][idx], ..)` over the iteration space `dims`.
    pub(super) fn map(
        &mut self,
        out: &View,
        dims: &[usize],
        ins: &[View],
        vectorizable: bool,
        f: ElemFn<'_, 'a>,
    ) {
        self.map_n(
            std::slice::from_ref(out),
            dims,
            ins,
            vectorizable,
            &|lw, v, vector| vec![f(lw, v, vector)],
        );
    }

    /// `outs[j][idx] = f(ins[0][idx], ..)[j]` over the iteration space `dims`: one loop nest
    /// that writes several results (a multi-result fused node). Every element's operands are
    /// loaded before any of its results is stored, so a result may be written in place over an
    /// operand read at the same index.
    pub(super) fn map_n(
        &mut self,
        outs: &[View],
        dims: &[usize],
        ins: &[View],
        vectorizable: bool,
        f: MultiElemFn<'_, 'a>,
    ) {
        let n_out = outs.len();
        let views: Vec<&View> = outs.iter().chain(ins).collect();
        let mut strides: Vec<Vec<i64>> = views.iter().map(|v| v.strides.clone()).collect();
        let cd = collapse(dims, &mut strides);
        let rank = cd.len();
        let len = cd[rank - 1];
        if len == 0 {
            return;
        }
        let inner: Vec<i64> = strides.iter().map(|s| s[rank - 1]).collect();
        let all_f32 = views.iter().all(|v| v.dtype == DType::F32);
        let vector = vectorizable
            && all_f32
            && len >= LANES
            && inner[..n_out].iter().all(|&s| s == 1)
            && inner[n_out..].iter().all(|&s| s == 0 || s == 1);
        let dtypes: Vec<DType> = views.iter().map(|v| v.dtype).collect();
        self.for_each_row(&views, &cd, &strides, &mut |lw, ptrs| {
            if vector {
                lw.map_row_vector(n_out, ptrs, &inner, len, f);
            } else {
                lw.map_row_scalar(n_out, ptrs, &inner, &dtypes, len, f);
            }
        });
    }

    /// Runs `row` once per row of the collapsed iteration space `cd` (every dimension but the
    /// last; `strides[i]` are view `i`'s element strides over `cd`), with a pointer to the
    /// row's first element in every view.
    pub(super) fn for_each_row(
        &mut self,
        views: &[&View],
        cd: &[usize],
        strides: &[Vec<i64>],
        row: &mut dyn FnMut(&mut Self, &[Value]),
    ) {
        let rank = cd.len();
        let outer: Vec<Vec<i64>> = strides.iter().map(|s| s[..rank - 1].to_vec()).collect();
        let offs: Vec<Value> = views
            .iter()
            .map(|v| self.iconst(v.loc.offset as i64 + v.offset * 4))
            .collect();
        let slots: Vec<usize> = views.iter().map(|v| v.loc.slot).collect();
        self.nest(&cd[..rank - 1], &outer, offs, &mut |lw, offs| {
            let ptrs: Vec<Value> = offs
                .iter()
                .zip(&slots)
                .map(|(&o, &s)| lw.b.ins().iadd(lw.bases[s], o))
                .collect();
            row(lw, &ptrs);
        });
    }

    /// The operands of a row that are broadcast along it (element stride 0): their one value,
    /// loaded once per row as a scalar and splat to `f32x4` (`None` for the others).
    pub(super) fn row_broadcasts(
        &mut self,
        ptrs: &[Value],
        inner: &[i64],
    ) -> (Vec<Option<Value>>, Vec<Option<Value>>) {
        let scalars: Vec<Option<Value>> = ptrs
            .iter()
            .zip(inner)
            .map(|(&p, &s)| (s == 0).then(|| self.load(types::F32, p, 0)))
            .collect();
        let splats = scalars
            .iter()
            .map(|s| s.map(|v| self.b.ins().splat(types::F32X4, v)))
            .collect();
        (scalars, splats)
    }

    /// One contiguous row with `f32x4` vectors and a scalar tail. `ptrs[..n_out]` are the
    /// outputs.
    pub(super) fn map_row_vector(
        &mut self,
        n_out: usize,
        ptrs: &[Value],
        inner: &[i64],
        len: usize,
        f: MultiElemFn<'_, 'a>,
    ) {
        let (scalars, splats) = self.row_broadcasts(&ptrs[n_out..], &inner[n_out..]);
        // one vector at byte offset `base + off` of every operand
        let emit = |lw: &mut Self, base: Value, off: i64| {
            let vals: Vec<Value> = ptrs[n_out..]
                .iter()
                .zip(&splats)
                .map(|(&p, s)| match s {
                    Some(v) => *v,
                    None => {
                        let a = lw.b.ins().iadd(p, base);
                        lw.load(types::F32X4, a, off)
                    }
                })
                .collect();
            let rs = f(lw, &vals, true);
            for (&p, r) in ptrs[..n_out].iter().zip(rs) {
                let a = lw.b.ins().iadd(p, base);
                lw.store(r, a, off);
            }
        };
        // unrolled: independent vectors per iteration (interleaved when heavy, see
        // UNROLL_HEAVY); a loop of whole groups (at least one whatever the unroll), then the
        // rest
        let nv = len / LANES;
        let vbytes = (LANES * 4) as i64;
        let budget = std::cell::Cell::new(self.heavy_budget);
        let heavy = std::cell::Cell::new(None);
        // the unroll of this row, decided once from copy 0's length
        let decide = |insts: usize, copies: usize| -> (usize, bool) {
            let h = heavy.get().unwrap_or_else(|| {
                let cost = UNROLL_HEAVY * insts;
                let h = insts >= HEAVY_INSTS && cost <= budget.get();
                if h {
                    budget.set(budget.get() - cost);
                }
                heavy.set(Some(h));
                h
            });
            let n = copies.min(if h { UNROLL_HEAVY } else { UNROLL_LIGHT });
            (n, h)
        };
        let mut done = 0;
        if nv >= UNROLL_HEAVY {
            let header = self.b.create_block();
            let exit = self.b.create_block();
            let byte = self.b.append_block_param(header, types::I64);
            let zero = self.iconst(0);
            self.b.ins().jump(header, &[BlockArg::Value(zero)]);
            self.b.switch_to_block(header);
            let unroll = self.interleaved(&|insts| decide(insts, UNROLL_HEAVY), &mut |lw, u| {
                emit(lw, byte, u as i64 * vbytes)
            });
            done = nv / unroll * unroll;
            let next = self.b.ins().iadd_imm_s(byte, unroll as i64 * vbytes);
            let more = self
                .b
                .ins()
                .icmp_imm_s(IntCC::SignedLessThan, next, done as i64 * vbytes);
            self.b
                .ins()
                .brif(more, header, &[BlockArg::Value(next)], exit, &[]);
            self.b.switch_to_block(exit);
        }
        // the rest: at most UNROLL_LIGHT copies per group, or all of them when heavy
        while done < nv {
            let byte = self.iconst(done as i64 * vbytes);
            let left = nv - done;
            let n = self.interleaved(
                &|insts| {
                    let (n, h) = decide(insts, left);
                    (if h { left } else { n }, h)
                },
                &mut |lw, u| emit(lw, byte, u as i64 * vbytes),
            );
            done += n;
        }
        self.heavy_budget = budget.get();
        for t in nv * LANES..len {
            let off = (t * 4) as i64;
            let vals: Vec<Value> = ptrs[n_out..]
                .iter()
                .zip(&scalars)
                .map(|(&p, s)| match s {
                    Some(v) => *v,
                    None => self.load(types::F32, p, off),
                })
                .collect();
            let rs = f(self, &vals, false);
            for (&p, r) in ptrs[..n_out].iter().zip(rs) {
                self.store(r, p, off);
            }
        }
    }

    /// Emits `copy(self, u)` for `u` in `0..n`, where `(n, interleave) = count(length of copy
    /// 0 in instructions)`; returns `n`. The copies must be independent computations (no copy
    /// reads a value another defines, none stores where another loads or stores). With
    /// `interleave`, their instructions are then interleaved round-robin within the block:
    /// Cranelift emits instructions in the order they are built and does not schedule them,
    /// so one copy after the other puts a long dependency chain (an inline `tanh` is ~60
    /// dependent instructions) into the out-of-order window, which holds too few of them to
    /// overlap the copies; interleaved, each step of every copy issues together. When a copy
    /// does not stay in one block (it emitted control flow), the order is left as built.
    pub(super) fn interleaved(
        &mut self,
        count: &dyn Fn(usize) -> (usize, bool),
        copy: &mut dyn FnMut(&mut Self, usize),
    ) -> usize {
        let block = self.b.current_block();
        let mut copies: Vec<Vec<Inst>> = Vec::new();
        let mut one_block = block.is_some();
        let (mut n, mut interleave) = (1, false);
        let mut u = 0;
        while u < n {
            let before = block.and_then(|b| self.b.func.layout.last_inst(b));
            copy(self, u);
            one_block &= self.b.current_block() == block;
            if let (true, Some(b)) = (one_block, block) {
                let layout = &self.b.func.layout;
                let mut next = match before {
                    Some(i) => layout.next_inst(i),
                    None => layout.first_inst(b),
                };
                let mut insts = Vec::new();
                while let Some(i) = next {
                    insts.push(i);
                    next = layout.next_inst(i);
                }
                copies.push(insts);
            }
            if u == 0 {
                (n, interleave) = count(copies.first().map_or(0, Vec::len));
                n = n.max(1);
            }
            u += 1;
        }
        if let (true, true, Some(b)) = (interleave, one_block && copies.len() > 1, block) {
            interleave_insts(self.b.func, b, &copies);
        }
        n
    }

    /// One row element by element with arbitrary strides. `ptrs[..n_out]` are the outputs.
    pub(super) fn map_row_scalar(
        &mut self,
        n_out: usize,
        ptrs: &[Value],
        inner: &[i64],
        dtypes: &[DType],
        len: usize,
        f: MultiElemFn<'_, 'a>,
    ) {
        self.for_range(len, vec![], &mut |lw, j, _| {
            let addrs: Vec<Value> = ptrs
                .iter()
                .zip(inner)
                .map(|(&p, &s)| {
                    if s == 0 {
                        p
                    } else {
                        let o = lw.b.ins().imul_imm_s(j, s * 4);
                        lw.b.ins().iadd(p, o)
                    }
                })
                .collect();
            let vals: Vec<Value> = addrs[n_out..]
                .iter()
                .zip(&dtypes[n_out..])
                .map(|(&a, &d)| lw.load(elem_type(d, false), a, 0))
                .collect();
            let rs = f(lw, &vals, false);
            for (&a, r) in addrs[..n_out].iter().zip(rs) {
                lw.store(r, a, 0);
            }
            vec![]
        });
    }

    /// Fills a dense buffer of `shape` with `v` (f32 bits or i32).
    pub(super) fn fill(&mut self, loc: Loc, dtype: DType, shape: &Shape, v: f64) {
        let out = View::dense(loc, dtype, shape);
        self.map(
            &out,
            shape.dims(),
            &[],
            true,
            &|lw, _, vector| match dtype {
                DType::F32 => lw.fconst(v as f32, vector),
                DType::I32 => lw.b.ins().iconst(types::I32, v as i64),
            },
        );
    }

    /// Copies a dense buffer of `shape` from `src` to `dst`.
    pub fn copy(&mut self, dst: Loc, src: Loc, dtype: DType, shape: &Shape) {
        if dst == src {
            return;
        }
        let out = View::dense(dst, dtype, shape);
        let inp = View::dense(src, dtype, shape);
        self.map(&out, shape.dims(), &[inp], true, &|_, v, _| v[0]);
    }

    // ---- reductions -------------------------------------------------------------------

    /// The mask `x > y`, where a NaN counts as greater than any number (the interpreter's
    /// order for reduce_max, argmax and max-pool: a NaN in a window wins, so it propagates).
    pub(super) fn nan_greater(&mut self, x: Value, y: Value) -> Value {
        let gt = self.b.ins().fcmp(FloatCC::GreaterThan, x, y);
        let x_nan = self.b.ins().fcmp(FloatCC::Unordered, x, x);
        let y_num = self.b.ins().fcmp(FloatCC::Ordered, y, y);
        let nan_wins = self.b.ins().band(x_nan, y_num);
        self.b.ins().bor(gt, nan_wins)
    }

    /// Combines two partial results of a reduction.
    pub(super) fn combine(&mut self, kind: ReduceOp, dtype: DType, acc: Value, x: Value) -> Value {
        match (kind, dtype) {
            (ReduceOp::Max, DType::I32) => {
                let gt = self.b.ins().icmp(IntCC::SignedGreaterThan, x, acc);
                self.b.ins().select(gt, x, acc)
            }
            (ReduceOp::Max, DType::F32) => {
                let gt = self.nan_greater(x, acc);
                self.pick(gt, x, acc)
            }
            _ => self.b.ins().fadd(acc, x),
        }
    }

    pub(super) fn identity(kind: ReduceOp, dtype: DType) -> f64 {
        match (kind, dtype) {
            (ReduceOp::Max, DType::F32) => f64::NEG_INFINITY,
            (ReduceOp::Max, DType::I32) => i32::MIN as f64,
            _ => 0.0,
        }
    }

    /// `out = reduce(x)` over `axes` of `x_shape` (`out` dense with the kept dimensions).
    /// `totals` is the node's planned scratch for a long f32 sum ([`sum_totals_bytes`]).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn reduce(
        &mut self,
        out: Loc,
        x: Loc,
        dtype: DType,
        x_shape: &Shape,
        axes: &[usize],
        kind: ReduceOp,
        totals: Option<Loc>,
    ) {
        let kept: Vec<usize> = (0..x_shape.rank()).filter(|d| !axes.contains(d)).collect();
        let out_shape = Shape(kept.iter().map(|&d| x_shape.0[d]).collect());
        let id = Self::identity(kind, dtype);
        self.fill(out, dtype, &out_shape, id);
        let os = out_shape.strides();
        let mut out_strides = vec![0i64; x_shape.rank()];
        for (k, &d) in kept.iter().enumerate() {
            out_strides[d] = os[k] as i64;
        }
        let ov = View {
            loc: out,
            dtype,
            offset: 0,
            strides: out_strides,
        };
        let xv = View::dense(x, dtype, x_shape);
        if dtype == DType::F32 {
            self.map_reduce(&[ov, xv], x_shape.dims(), kind, totals, &|_, v, _| v[1]);
            self.scale_mean(out, &out_shape, axes, x_shape, kind);
            return;
        }
        let mut strides = vec![ov.strides.clone(), xv.strides.clone()];
        let cd = collapse(x_shape.dims(), &mut strides);
        let rank = cd.len();
        let len = cd[rank - 1];
        if strides[0][rank - 1] == 0 && strides[1][rank - 1] == 1 && len > 1 {
            // innermost dimension reduced: accumulate in a register
            let outer: Vec<Vec<i64>> = strides.iter().map(|s| s[..rank - 1].to_vec()).collect();
            let offs = vec![self.iconst(out.offset as i64), self.iconst(x.offset as i64)];
            self.nest(&cd[..rank - 1], &outer, offs, &mut |lw, offs| {
                let po = lw.b.ins().iadd(lw.bases[out.slot], offs[0]);
                let px = lw.b.ins().iadd(lw.bases[x.slot], offs[1]);
                let r = lw.reduce_row_i32(px, len, kind, id);
                let o = lw.load(elem_type(dtype, false), po, 0);
                let c = lw.combine(kind, dtype, o, r);
                lw.store(c, po, 0);
            });
        } else {
            self.map(&ov.clone(), x_shape.dims(), &[ov, xv], true, &|lw, v, _| {
                lw.combine(kind, dtype, v[0], v[1])
            });
        }
        self.scale_mean(out, &out_shape, axes, x_shape, kind);
    }

    /// For `reduce_mean`, divides the sums at `out` (f32, dense `out_shape`) by the number of
    /// reduced elements of `x_shape` over `axes`.
    pub(super) fn scale_mean(
        &mut self,
        out: Loc,
        out_shape: &Shape,
        axes: &[usize],
        x_shape: &Shape,
        kind: ReduceOp,
    ) {
        if kind != ReduceOp::Mean {
            return;
        }
        let count: usize = axes.iter().map(|&a| x_shape.0[a]).product();
        // an empty reduction: 0 * inf = NaN, as numpy's mean of nothing
        let scale = 1.0 / count as f32;
        let ov = View::dense(out, DType::F32, out_shape);
        self.map(
            &ov.clone(),
            out_shape.dims(),
            &[ov],
            true,
            &|lw, v, vector| {
                let s = lw.fconst(scale, vector);
                lw.b.ins().fmul(v[0], s)
            },
        );
    }

    /// `acc[i] = combine(acc[i], f(views[1..][i]))` over `dims` for a reduction of `kind` into
    /// `views[0]`, the accumulator: a view of the (f32) output with stride 0 on the reduced
    /// axes, dense over the kept ones, filled with the identity beforehand. `f` receives the
    /// values of every view, `vals[0]` being the running accumulator (fused bodies ignore it).
    /// `totals` is the node's planned scratch for the f64 running totals of a long sum
    /// ([`sum_totals_bytes`]; `None` when it has none).
    ///
    /// When the innermost (collapsed) dimension is reduced and every operand is contiguous or
    /// broadcast along it, each row accumulates in registers ([`Self::reduce_row_map`]) and
    /// the output element is read and written once per row. Otherwise each row is an
    /// elementwise update of the output row in place (as [`Self::map`] does, vectorized when
    /// the innermost dimension is kept). Either way the rows run through
    /// [`Self::for_each_sum_row`], which keeps the f32 partial sums in the output short.
    pub(super) fn map_reduce(
        &mut self,
        views: &[View],
        dims: &[usize],
        kind: ReduceOp,
        totals: Option<Loc>,
        f: ElemFn<'_, 'a>,
    ) {
        let mut strides: Vec<Vec<i64>> = views.iter().map(|v| v.strides.clone()).collect();
        let cd = collapse(dims, &mut strides);
        let rank = cd.len();
        let len = cd[rank - 1];
        if len == 0 {
            return;
        }
        let inner: Vec<i64> = strides.iter().map(|s| s[rank - 1]).collect();
        let all_f32 = views.iter().all(|v| v.dtype == DType::F32);
        let contiguous = inner[1..].iter().all(|&s| s == 0 || s == 1);
        let refs: Vec<&View> = views.iter().collect();
        let totals = totals.filter(|_| matches!(kind, ReduceOp::Sum | ReduceOp::Mean));
        if len > 1 && inner[0] == 0 && contiguous && all_f32 {
            self.for_each_sum_row(&refs, &cd, &strides, totals, &mut |lw, ptrs| {
                let r = lw.reduce_row_map(&ptrs[1..], &inner[1..], len, kind, f);
                let o = lw.load(types::F32, ptrs[0], 0);
                let c = lw.combine(kind, DType::F32, o, r);
                lw.store(c, ptrs[0], 0);
            });
            return;
        }
        // the accumulator row is the output and the first operand of each row's map
        let vector = all_f32 && len >= LANES && inner[0] == 1 && contiguous;
        let row_inner: Vec<i64> = std::iter::once(inner[0]).chain(inner).collect();
        let dtypes: Vec<DType> = std::iter::once(DType::F32)
            .chain(views.iter().map(|v| v.dtype))
            .collect();
        let update = |lw: &mut Self, vals: &[Value], vector: bool| {
            let x = f(lw, vals, vector);
            vec![lw.combine(kind, DType::F32, vals[0], x)]
        };
        self.for_each_sum_row(&refs, &cd, &strides, totals, &mut |lw, ptrs| {
            let row_ptrs: Vec<Value> = std::iter::once(ptrs[0])
                .chain(ptrs.iter().copied())
                .collect();
            if vector {
                lw.map_row_vector(1, &row_ptrs, &row_inner, len, &update);
            } else {
                lw.map_row_scalar(1, &row_ptrs, &row_inner, &dtypes, len, &update);
            }
        });
    }

    /// Runs `row` once per row of the collapsed iteration space `cd` of a reduction into
    /// `views[0]` (the accumulator of [`Self::map_reduce`]), as [`Self::for_each_row`] does,
    /// in row-major order. Each call adds one term (a row's register sum, or one element of
    /// the row) to output elements in f32, so an element that receives many rows would round
    /// like a naive f32 sum (stuck at 2^24 for a sum of ones). With `totals` (f64 per output
    /// element, planned scratch) and more than [`OUTER_SUM_BLOCK`] rows per output element,
    /// the rows run in blocks instead: the outermost reduced dimension that the block
    /// reaches, `s`, is split into runs of `b` indices such that a run of the dimensions from
    /// `s` inwards adds at most [`OUTER_SUM_BLOCK`] rows to each element; after each run,
    /// the output elements it touched (a contiguous range: the dimensions kept inside `s`
    /// are the output's innermost) are added to their totals and reset to 0. At the end the
    /// output is its totals rounded to f32. So each output element is the f64 sum of f32
    /// partial sums of at most [`OUTER_SUM_BLOCK`] rows each, added in order.
    fn for_each_sum_row(
        &mut self,
        views: &[&View],
        cd: &[usize],
        strides: &[Vec<i64>],
        totals: Option<Loc>,
        row: &mut dyn FnMut(&mut Self, &[Value]),
    ) {
        let rank = cd.len();
        let acc = &strides[0];
        let reduced = |d: usize| acc[d] == 0;
        let rows_per_elem: usize = (0..rank - 1)
            .filter(|&d| reduced(d))
            .map(|d| cd[d])
            .product();
        let Some(totals) = totals.filter(|_| rows_per_elem > OUTER_SUM_BLOCK) else {
            self.for_each_row(views, cd, strides, row);
            return;
        };
        // the split dimension `s` and the rows `inside` one index of it adds to an element
        let mut inside = 1;
        let mut s = 0;
        for d in (0..rank - 1).rev() {
            if reduced(d) {
                if inside * cd[d] > OUTER_SUM_BLOCK {
                    s = d;
                    break;
                }
                inside *= cd[d];
            }
        }
        let b = OUTER_SUM_BLOCK / inside;
        let (runs, rest) = (cd[s] / b, cd[s] % b);
        // output elements one run touches, and all of them
        let touched: usize = (s + 1..rank)
            .filter(|&d| !reduced(d))
            .map(|d| cd[d])
            .product();
        let outputs: usize = (0..rank).filter(|&d| !reduced(d)).map(|d| cd[d]).product();
        let out_start = views[0].loc.offset as i64 + views[0].offset * 4;
        let out_slot = views[0].loc.slot;
        let out_off = self.iconst(out_start);
        let zero64 = self.b.ins().f64const(0.0);
        self.update_totals(out_slot, out_off, out_start, totals, outputs, &|_, _, _| {
            (Some(zero64), None)
        });
        let offs: Vec<Value> = views
            .iter()
            .map(|v| self.iconst(v.loc.offset as i64 + v.offset * 4))
            .collect();
        let slots: Vec<usize> = views.iter().map(|v| v.loc.slot).collect();
        let outer: Vec<Vec<i64>> = strides.iter().map(|st| st[..s].to_vec()).collect();
        let within: Vec<Vec<i64>> = strides.iter().map(|st| st[s..rank - 1].to_vec()).collect();
        // one run: `n` indices of dimension `s` from byte offsets `offs`, then the flush
        let mut run = |lw: &mut Self, n: usize, offs: Vec<Value>| {
            let acc_off = offs[0];
            let dims: Vec<usize> = std::iter::once(n)
                .chain(cd[s + 1..rank - 1].iter().copied())
                .collect();
            lw.nest(&dims, &within, offs, &mut |lw, offs| {
                let ptrs: Vec<Value> = offs
                    .iter()
                    .zip(&slots)
                    .map(|(&o, &sl)| lw.b.ins().iadd(lw.bases[sl], o))
                    .collect();
                row(lw, &ptrs);
            });
            let zero = lw.fconst(0.0, false);
            lw.update_totals(
                out_slot,
                acc_off,
                out_start,
                totals,
                touched,
                &|lw, t, x| {
                    let x = lw.b.ins().fpromote(types::F64, x);
                    (Some(lw.b.ins().fadd(t, x)), Some(zero))
                },
            );
        };
        self.nest(&cd[..s], &outer, offs, &mut |lw, offs| {
            let step: Vec<i64> = strides.iter().map(|st| st[s] * 4 * b as i64).collect();
            lw.for_range(runs, vec![], &mut |lw, i, _| {
                let o: Vec<Value> = offs
                    .iter()
                    .zip(&step)
                    .map(|(&o, &st)| {
                        let d = lw.b.ins().imul_imm_s(i, st);
                        lw.b.ins().iadd(o, d)
                    })
                    .collect();
                run(lw, b, o);
                vec![]
            });
            if rest > 0 {
                let o: Vec<Value> = offs
                    .iter()
                    .zip(&step)
                    .map(|(&o, &st)| lw.b.ins().iadd_imm_s(o, st * runs as i64))
                    .collect();
                run(lw, rest, o);
            }
        });
        let out_off = self.iconst(out_start);
        self.update_totals(
            out_slot,
            out_off,
            out_start,
            totals,
            outputs,
            &|lw, t, _| (None, Some(lw.b.ins().fdemote(types::F32, t))),
        );
    }

    /// For `n` consecutive f32 output elements from byte offset `acc_off` of slot `out_slot`
    /// (the output's first element being at `out_start`) and their f64 running totals in
    /// `totals` (one per output element, in the output's order): `(t, x) = f(total, element)`,
    /// then each `Some` is stored back.
    fn update_totals(
        &mut self,
        out_slot: usize,
        acc_off: Value,
        out_start: i64,
        totals: Loc,
        n: usize,
        f: TotalsFn<'_, 'a>,
    ) {
        let out = self.b.ins().iadd(self.bases[out_slot], acc_off);
        let index_bytes = self.b.ins().iadd_imm_s(acc_off, -out_start);
        let total_bytes = self.b.ins().ishl_imm_u(index_bytes, 1);
        let tot = self.addr(totals, Some(total_bytes));
        self.for_range(n, vec![], &mut |lw, j, _| {
            let o = lw.b.ins().imul_imm_s(j, 4);
            let po = lw.b.ins().iadd(out, o);
            let o = lw.b.ins().imul_imm_s(j, 8);
            let pt = lw.b.ins().iadd(tot, o);
            let x = lw.load(types::F32, po, 0);
            let t = lw.load(types::F64, pt, 0);
            let (t, x) = f(lw, t, x);
            if let Some(t) = t {
                lw.store(t, pt, 0);
            }
            if let Some(x) = x {
                lw.store(x, po, 0);
            }
            vec![]
        });
    }

    /// The reduction of `f` over one row of `len` elements of the f32 operands at `ptrs`
    /// (element strides `inner`, each 1 or 0 = broadcast), as a scalar: [`REDUCE_ACCS`]
    /// independent `f32x4` accumulators over the vectors of the row (so consecutive `fadd`s
    /// or `max`es do not wait for each other), combined pairwise, then across lanes, then the
    /// scalar tail. A sum of more than [`SUM_BLOCK_GROUPS`] groups runs in blocks of that
    /// many, each block's total added to an f64 running total. Sums therefore add in a
    /// different order than the interpreter's pairwise sum: lane-wise partial sums of at most
    /// 4 Ki terms each.
    pub(super) fn reduce_row_map(
        &mut self,
        ptrs: &[Value],
        inner: &[i64],
        len: usize,
        kind: ReduceOp,
        f: ElemFn<'_, 'a>,
    ) -> Value {
        let id = Self::identity(kind, DType::F32) as f32;
        let (scalars, splats) = self.row_broadcasts(ptrs, inner);
        // `f` on the vector at byte offset `base + off` of every operand, combined into `acc`
        let step = |lw: &mut Self, acc: Value, base: Value, off: i64| -> Value {
            let mut vals = vec![acc];
            for (&p, s) in ptrs.iter().zip(&splats) {
                vals.push(match s {
                    Some(v) => *v,
                    None => {
                        let a = lw.b.ins().iadd(p, base);
                        lw.load(types::F32X4, a, off)
                    }
                });
            }
            let x = f(lw, &vals, true);
            lw.combine(kind, DType::F32, acc, x)
        };
        let mut total = self.fconst(id, false);
        let nv = len / LANES;
        if nv > 0 {
            let init = self.fconst(id, true);
            let groups = nv / REDUCE_ACCS;
            let group_bytes = (REDUCE_ACCS * LANES * 4) as i64;
            // a long sum: blocks of SUM_BLOCK_GROUPS groups in the registers, each block's
            // total added to an f64 running total (a row of 1.6e9 terms summed to 0.168 for
            // 0.883 when each register summed 1e8 terms in f32)
            let blocked =
                matches!(kind, ReduceOp::Sum | ReduceOp::Mean) && groups > SUM_BLOCK_GROUPS;
            let blocks = if blocked {
                groups / SUM_BLOCK_GROUPS
            } else {
                0
            };
            let mut total64 = None;
            if blocked {
                let zero = self.b.ins().f64const(0.0);
                let block_bytes = SUM_BLOCK_GROUPS as i64 * group_bytes;
                let t = self.for_range(blocks, vec![zero], &mut |lw, bi, carried| {
                    let base = lw.b.ins().imul_imm_s(bi, block_bytes);
                    let accs = lw.for_range(
                        SUM_BLOCK_GROUPS,
                        vec![init; REDUCE_ACCS],
                        &mut |lw, j, acc| {
                            let byte = lw.b.ins().imul_imm_s(j, group_bytes);
                            let byte = lw.b.ins().iadd(base, byte);
                            (0..acc.len())
                                .map(|q| step(lw, acc[q], byte, (q * LANES * 4) as i64))
                                .collect()
                        },
                    );
                    let zero = lw.fconst(0.0, false);
                    let s = lw.fold_accumulators(kind, accs, zero);
                    let s = lw.b.ins().fpromote(types::F64, s);
                    vec![lw.b.ins().fadd(carried[0], s)]
                });
                total64 = Some(t[0]);
            }
            let first = blocks * SUM_BLOCK_GROUPS;
            let start = first as i64 * group_bytes;
            let mut accs = vec![init; REDUCE_ACCS.min(nv)];
            accs = self.for_range(groups - first, accs, &mut |lw, j, acc| {
                let byte = lw.b.ins().imul_imm_s(j, group_bytes);
                let byte = lw.b.ins().iadd_imm_s(byte, start);
                (0..acc.len())
                    .map(|q| step(lw, acc[q], byte, (q * LANES * 4) as i64))
                    .collect()
            });
            let byte = self.iconst(groups as i64 * group_bytes);
            for (q, acc) in accs.iter_mut().enumerate().take(nv % REDUCE_ACCS) {
                *acc = step(self, *acc, byte, (q * LANES * 4) as i64);
            }
            total = self.fold_accumulators(kind, accs, total);
            if let Some(t64) = total64 {
                let rest = self.b.ins().fpromote(types::F64, total);
                let sum = self.b.ins().fadd(t64, rest);
                total = self.b.ins().fdemote(types::F32, sum);
            }
        }
        for t in nv * LANES..len {
            let off = (t * 4) as i64;
            let mut vals = vec![total];
            for (&p, s) in ptrs.iter().zip(&scalars) {
                vals.push(match s {
                    Some(v) => *v,
                    None => self.load(types::F32, p, off),
                });
            }
            let x = f(self, &vals, false);
            total = self.combine(kind, DType::F32, total, x);
        }
        total
    }

    /// Combines `f32x4` accumulators pairwise, then their lanes, into scalar `total`.
    pub(super) fn fold_accumulators(
        &mut self,
        kind: ReduceOp,
        mut accs: Vec<Value>,
        mut total: Value,
    ) -> Value {
        while accs.len() > 1 {
            let half = accs.len().div_ceil(2);
            for i in 0..accs.len() / 2 {
                accs[i] = self.combine(kind, DType::F32, accs[i], accs[i + half]);
            }
            accs.truncate(half);
        }
        for l in 0..LANES as u8 {
            let e = self.b.ins().extractlane(accs[0], l);
            total = self.combine(kind, DType::F32, total, e);
        }
        total
    }

    /// The reduction of `len` contiguous i32 elements at `p`, in a register (f32 rows go
    /// through [`Self::reduce_row_map`]).
    pub(super) fn reduce_row_i32(
        &mut self,
        p: Value,
        len: usize,
        kind: ReduceOp,
        id: f64,
    ) -> Value {
        let acc = self.b.ins().iconst(types::I32, id as i64);
        let r = self.for_range(len, vec![acc], &mut |lw, j, acc| {
            let o = lw.b.ins().imul_imm_s(j, 4);
            let a = lw.b.ins().iadd(p, o);
            let x = lw.load(types::I32, a, 0);
            vec![lw.combine(kind, DType::I32, acc[0], x)]
        });
        r[0]
    }
}

/// Moves the instructions of `copies` (each in build order, together the end of `block`) to
/// the end of `block` round-robin, one from each copy in turn. An instruction waits while
/// an operand is defined by a not yet placed instruction of the group; then the waiting
/// instruction built first goes next, which is always ready (its operands were built before
/// it, and every copy has placed all it built before its next instruction).
fn interleave_insts(func: &mut Function, block: Block, copies: &[Vec<Inst>]) {
    let order: HashMap<Inst, usize> = copies
        .iter()
        .flatten()
        .enumerate()
        .map(|(k, &i)| (i, k))
        .collect();
    let mut placed: Vec<bool> = vec![false; order.len()];
    let ready = |func: &Function, placed: &[bool], inst: Inst| {
        func.dfg
            .inst_values(inst)
            .all(|v| match func.dfg.value_def(v) {
                ValueDef::Result(d, _) => order.get(&d).is_none_or(|&k| placed[k]),
                _ => true,
            })
    };
    let mut cursor = vec![0usize; copies.len()];
    let mut sequence = Vec::with_capacity(order.len());
    while sequence.len() < order.len() {
        let mut progressed = false;
        for (c, insts) in copies.iter().enumerate() {
            if let Some(&inst) = insts.get(cursor[c]) {
                if ready(func, &placed, inst) {
                    placed[order[&inst]] = true;
                    sequence.push(inst);
                    cursor[c] += 1;
                    progressed = true;
                }
            }
        }
        if !progressed {
            // the head built first is ready (see above)
            let Some((c, inst)) = copies
                .iter()
                .enumerate()
                .filter_map(|(c, insts)| insts.get(cursor[c]).map(|&i| (c, i)))
                .min_by_key(|&(_, i)| order[&i])
            else {
                break;
            };
            placed[order[&inst]] = true;
            sequence.push(inst);
            cursor[c] += 1;
        }
    }
    for &inst in &sequence {
        func.layout.remove_inst(inst);
    }
    for &inst in &sequence {
        func.layout.append_inst(inst, block);
    }
}
