//! Lowering: every node of a type-checked graph becomes Cranelift IR inside ONE function
//! `fn(table: *const *mut u8)`, where `table` holds one base pointer per buffer (see
//! [`super::plan`]).
//!
//! The building blocks are loop nests over statically known bounds:
//! - `Lowerer::map`: an elementwise loop over an output view and operand views given by
//!   per-dimension strides (0 = broadcast). Adjacent dimensions that are contiguous for every
//!   view are merged first; when the innermost dimension is contiguous (or broadcast) for all
//!   views the loop runs on `f32x4` vectors and a straight-line scalar tail handles the last
//!   `len % 4` elements. Elementwise ops, broadcast, transpose, slice, concat, cast, copies
//!   and fills are all `map`s.
//! - `Lowerer::reduce` and `Lowerer::map_reduce` (plain and fused reductions): a reduced
//!   innermost dimension accumulates in registers (four `f32x4` accumulators, then a
//!   horizontal combine and a scalar tail), otherwise the output row is updated in place.
//! - Matmul: a register-blocked `f32x4` kernel (1 row x 16 columns of accumulators, `fma`
//!   when the host has it) or a call to the `gemm` crate (see [`super::MatmulKernel`]).
//! - `exp`, `sigmoid`, `tanh` and `log` are inline polynomial code (Cephes `expf`/`tanhf`/
//!   `logf`), so they run on `f32x4` vectors inside the elementwise loops like any other op.
//! - `pow` (one call per element), convolution (im2col + GEMM), pooling and the softmax family
//!   call the Rust kernels of [`super::kernels`] through registered symbols, with sizes passed
//!   as constants.
//!
//! Every instruction carries the index of the node it belongs to as its source location, so a
//! Cranelift error can name the node.

use super::kernels::{self, Kernel, KernelSignature};
use super::plan::{Loc, Plan};
use super::MatmulKernel;
use crate::graph::{Graph, NodeId};
use crate::op::{BinaryOp, CmpOp, ConvGeometry, Op, Padding, PoolGeometry, ReduceOp, UnaryOp};
use crate::shape::{DType, Shape};
use cranelift_codegen::ir::condcodes::{FloatCC, IntCC};
use cranelift_codegen::ir::{
    self, types, BlockArg, Endianness, FuncRef, InstBuilder, MemFlagsData, StackSlotData,
    StackSlotKind, Type, Value,
};
use cranelift_frontend::FunctionBuilder;
use std::collections::HashMap;

/// Lanes of a vector register (`f32x4`).
const LANES: usize = 4;

/// Independent `f32x4` accumulators per row of a reduction computed in registers: enough to
/// hide the latency of `addps` (3 cycles at 2 per cycle on Zen 3) behind the loads.
const REDUCE_ACCS: usize = 4;

/// Groups of [`REDUCE_ACCS`] vectors (16 Ki elements) a long sum adds in its registers before
/// it adds the block's total to an f64 running total: a row's error then grows with the
/// block, not with the row.
const SUM_BLOCK_GROUPS: usize = 1024;

mod fused;
pub(crate) use fused::{fused_conv_geometry, fused_matmul_dims, fused_reads_only_in_matmul};

/// A lowering failure for one node (the caller adds the node's description).
pub type LowerError = String;

/// Cranelift parameter and result types of runtime kernel `k`.
pub fn kernel_signature(k: Kernel) -> (Vec<Type>, Vec<Type>) {
    match k.signature() {
        KernelSignature::FloatBinary => (vec![types::F32; 2], vec![types::F32]),
        KernelSignature::Words(n) => (vec![types::I64; n], vec![]),
    }
}

/// A strided view of a buffer: element offset and per-dimension element strides over the
/// iteration space of a loop nest.
#[derive(Clone, Debug)]
struct View {
    loc: Loc,
    dtype: DType,
    offset: i64,
    strides: Vec<i64>,
}

impl View {
    /// The whole buffer at `loc` iterated in row-major order over `shape`.
    fn dense(loc: Loc, dtype: DType, shape: &Shape) -> View {
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
fn broadcast_strides(from: &Shape, to: &Shape) -> Vec<i64> {
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
fn collapse(dims: &[usize], strides: &mut [Vec<i64>]) -> Vec<usize> {
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

/// Cranelift type of one element of `dtype`, as a scalar or a vector.
fn elem_type(dtype: DType, vector: bool) -> Type {
    match (dtype, vector) {
        (DType::F32, false) => types::F32,
        (DType::F32, true) => types::F32X4,
        (DType::I32, false) => types::I32,
        (DType::I32, true) => types::I32X4,
    }
}

/// An elementwise function: operand values in, result out; `true` when the values are vectors.
type ElemFn<'f, 'a> = &'f dyn Fn(&mut Lowerer<'a>, &[Value], bool) -> Value;

/// An elementwise function with several results (one per output of [`Lowerer::map_n`]).
type MultiElemFn<'f, 'a> = &'f dyn Fn(&mut Lowerer<'a>, &[Value], bool) -> Vec<Value>;

/// A loop body: index and carried values in, next carried values out.
type LoopBody<'f, 'a> = &'f mut dyn FnMut(&mut Lowerer<'a>, Value, &[Value]) -> Vec<Value>;

/// The shape of one register tile of the Cranelift matmul kernel.
#[derive(Clone, Copy)]
struct Tile {
    /// Inner dimension.
    k: usize,
    /// Columns of `b` and `c` (row stride in elements).
    n: usize,
    /// Rows of the tile.
    rows: usize,
    /// `f32x4` column groups.
    nvec: usize,
    /// Single columns after the vectors.
    nscalar: usize,
}

/// Emits the body of the one native function.
pub struct Lowerer<'a> {
    /// The Cranelift function builder.
    pub b: FunctionBuilder<'a>,
    bases: Vec<Value>,
    /// Kernels declared in the module: name -> (function index, signature).
    kernels: HashMap<Kernel, (u32, ir::Signature)>,
    /// Kernels imported into this function so far (on first use, so the IR lists only those).
    funcs: HashMap<Kernel, FuncRef>,
    has_fma: bool,
    matmul: MatmulKernel,
    threads: usize,
}

impl<'a> Lowerer<'a> {
    /// Starts the function: entry block, loads of every table slot's base pointer.
    pub fn new(
        mut b: FunctionBuilder<'a>,
        slots: usize,
        kernels: HashMap<Kernel, (u32, ir::Signature)>,
        has_fma: bool,
        matmul: MatmulKernel,
        threads: usize,
    ) -> Lowerer<'a> {
        let entry = b.create_block();
        b.append_block_params_for_function_params(entry);
        b.switch_to_block(entry);
        let table = b.block_params(entry)[0];
        let bases = (0..slots)
            .map(|s| {
                b.ins()
                    .load(types::I64, MemFlagsData::trusted(), table, (s * 8) as i32)
            })
            .collect();
        Lowerer {
            b,
            bases,
            kernels,
            funcs: HashMap::new(),
            has_fma,
            matmul,
            threads,
        }
    }

    /// Ends the function and checks nothing is left open.
    pub fn finish(mut self, config: cranelift_codegen::isa::TargetFrontendConfig) {
        self.b.ins().return_(&[]);
        self.b.seal_all_blocks();
        self.b.finalize(config);
    }

    // ---- small helpers ----------------------------------------------------------------

    fn mem() -> MemFlagsData {
        MemFlagsData::new().with_notrap()
    }

    fn iconst(&mut self, v: i64) -> Value {
        self.b.ins().iconst(types::I64, v)
    }

    fn fconst(&mut self, v: f32, vector: bool) -> Value {
        let c = self.b.ins().f32const(v);
        if vector {
            self.b.ins().splat(types::F32X4, c)
        } else {
            c
        }
    }

    /// Address `base(loc.slot) + loc.offset + extra` where `extra` is a byte offset value.
    fn addr(&mut self, loc: Loc, extra: Option<Value>) -> Value {
        let base = self.bases[loc.slot];
        let p = self.b.ins().iadd_imm_s(base, loc.offset as i64);
        match extra {
            Some(e) => self.b.ins().iadd(p, e),
            None => p,
        }
    }

    fn load(&mut self, ty: Type, p: Value, off: i64) -> Value {
        self.b.ins().load(ty, Self::mem(), p, off as i32)
    }

    fn store(&mut self, v: Value, p: Value, off: i64) {
        self.b.ins().store(Self::mem(), v, p, off as i32);
    }

    /// `cond ? a : b` for scalars (`select`) or lanewise for vectors (`bitselect`, which
    /// lowers to a blend; with a zero operand, to `maxps`-like code).
    fn pick(&mut self, cond: Value, a: Value, b: Value) -> Value {
        let ta = self.b.func.dfg.value_type(a);
        if ta.is_vector() {
            let mut c = cond;
            if self.b.func.dfg.value_type(cond) != ta {
                let le = MemFlagsData::new().with_endianness(Endianness::Little);
                c = self.b.ins().bitcast(ta, le, cond);
            }
            self.b.ins().bitselect(c, a, b)
        } else {
            self.b.ins().select(cond, a, b)
        }
    }

    /// `a * b + c`, fused when the host has FMA.
    fn mul_add(&mut self, a: Value, b: Value, c: Value) -> Value {
        if self.has_fma {
            self.b.ins().fma(a, b, c)
        } else {
            let p = self.b.ins().fmul(a, b);
            self.b.ins().fadd(p, c)
        }
    }

    fn call(&mut self, k: Kernel, args: &[Value]) -> Result<Option<Value>, LowerError> {
        let f = self.kernel(k)?;
        let inst = self.b.ins().call(f, args);
        Ok(self.b.inst_results(inst).first().copied())
    }

    /// The function reference of runtime kernel `name`, imported on first use.
    fn kernel(&mut self, k: Kernel) -> Result<FuncRef, LowerError> {
        let f = match self.funcs.get(&k) {
            Some(&f) => f,
            None => {
                let (index, sig) = self
                    .kernels
                    .get(&k)
                    .cloned()
                    .ok_or_else(|| format!("runtime kernel {} is not declared", k.symbol()))?;
                let signature = self.b.import_signature(sig);
                let user = self
                    .b
                    .func
                    .declare_imported_user_function(ir::UserExternalName {
                        namespace: 0,
                        index,
                    });
                let f = self.b.import_function(ir::ExtFuncData {
                    name: ir::ExternalName::user(user),
                    signature,
                    colocated: false,
                    patchable: false,
                });
                self.funcs.insert(k, f);
                f
            }
        };
        Ok(f)
    }

    /// Stores `vals` into a fresh stack slot and returns its address (kernel geometry).
    fn i64_array(&mut self, vals: &[i64]) -> Value {
        let slot = self.b.create_sized_stack_slot(StackSlotData::new(
            StackSlotKind::ExplicitSlot,
            (vals.len() * 8) as u32,
            3,
        ));
        let p = self.b.ins().stack_addr(types::I64, slot, 0);
        for (i, &v) in vals.iter().enumerate() {
            let c = self.iconst(v);
            self.b
                .ins()
                .store(MemFlagsData::trusted(), c, p, (i * 8) as i32);
        }
        p
    }

    /// `for i in 0..n { carried = body(i, carried) }` as a do-while loop; returns the final
    /// carried values. No loop is emitted for `n <= 1`.
    fn for_range(&mut self, n: usize, carried: Vec<Value>, body: LoopBody<'_, 'a>) -> Vec<Value> {
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
    fn nest(
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
    fn map(
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
    fn map_n(
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
    fn for_each_row(
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
    fn row_broadcasts(
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
    fn map_row_vector(
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
        // unrolled twice: two independent vectors per iteration
        let nv = len / LANES;
        let step = (2 * LANES * 4) as i64;
        self.for_range(nv / 2, vec![], &mut |lw, j, _| {
            let byte = lw.b.ins().imul_imm_s(j, step);
            emit(lw, byte, 0);
            emit(lw, byte, (LANES * 4) as i64);
            vec![]
        });
        if nv % 2 == 1 {
            let byte = self.iconst((nv / 2) as i64 * step);
            emit(self, byte, 0);
        }
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

    /// One row element by element with arbitrary strides. `ptrs[..n_out]` are the outputs.
    fn map_row_scalar(
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
    fn fill(&mut self, loc: Loc, dtype: DType, shape: &Shape, v: f64) {
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
    fn nan_greater(&mut self, x: Value, y: Value) -> Value {
        let gt = self.b.ins().fcmp(FloatCC::GreaterThan, x, y);
        let x_nan = self.b.ins().fcmp(FloatCC::Unordered, x, x);
        let y_num = self.b.ins().fcmp(FloatCC::Ordered, y, y);
        let nan_wins = self.b.ins().band(x_nan, y_num);
        self.b.ins().bor(gt, nan_wins)
    }

    /// Combines two partial results of a reduction.
    fn combine(&mut self, kind: ReduceOp, dtype: DType, acc: Value, x: Value) -> Value {
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

    fn identity(kind: ReduceOp, dtype: DType) -> f64 {
        match (kind, dtype) {
            (ReduceOp::Max, DType::F32) => f64::NEG_INFINITY,
            (ReduceOp::Max, DType::I32) => i32::MIN as f64,
            _ => 0.0,
        }
    }

    /// `out = reduce(x)` over `axes` of `x_shape` (`out` dense with the kept dimensions).
    fn reduce(
        &mut self,
        out: Loc,
        x: Loc,
        dtype: DType,
        x_shape: &Shape,
        axes: &[usize],
        kind: ReduceOp,
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
            self.map_reduce(&[ov, xv], x_shape.dims(), kind, &|_, v, _| v[1]);
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
    fn scale_mean(
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
    /// axes, filled with the identity beforehand. `f` receives the values of every view,
    /// `vals[0]` being the running accumulator (fused bodies ignore it).
    ///
    /// When the innermost (collapsed) dimension is reduced and every operand is contiguous or
    /// broadcast along it, each row accumulates in registers ([`Self::reduce_row_map`]) and
    /// the output element is read and written once per row. Otherwise it is a [`Self::map`]
    /// over the accumulator view, vectorized when the innermost dimension is kept.
    fn map_reduce(&mut self, views: &[View], dims: &[usize], kind: ReduceOp, f: ElemFn<'_, 'a>) {
        let mut strides: Vec<Vec<i64>> = views.iter().map(|v| v.strides.clone()).collect();
        let cd = collapse(dims, &mut strides);
        let rank = cd.len();
        let len = cd[rank - 1];
        let inner: Vec<i64> = strides.iter().map(|s| s[rank - 1]).collect();
        let in_registers = len > 1
            && inner[0] == 0
            && inner[1..].iter().all(|&s| s == 0 || s == 1)
            && views.iter().all(|v| v.dtype == DType::F32);
        if !in_registers {
            let acc = &views[0];
            self.map(acc, dims, views, true, &|lw, vals, vector| {
                let x = f(lw, vals, vector);
                lw.combine(kind, DType::F32, vals[0], x)
            });
            return;
        }
        let refs: Vec<&View> = views.iter().collect();
        self.for_each_row(&refs, &cd, &strides, &mut |lw, ptrs| {
            let r = lw.reduce_row_map(&ptrs[1..], &inner[1..], len, kind, f);
            let o = lw.load(types::F32, ptrs[0], 0);
            let c = lw.combine(kind, DType::F32, o, r);
            lw.store(c, ptrs[0], 0);
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
    fn reduce_row_map(
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
    fn fold_accumulators(
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
    fn reduce_row_i32(&mut self, p: Value, len: usize, kind: ReduceOp, id: f64) -> Value {
        let acc = self.b.ins().iconst(types::I32, id as i64);
        let r = self.for_range(len, vec![acc], &mut |lw, j, acc| {
            let o = lw.b.ins().imul_imm_s(j, 4);
            let a = lw.b.ins().iadd(p, o);
            let x = lw.load(types::I32, a, 0);
            vec![lw.combine(kind, DType::I32, acc[0], x)]
        });
        r[0]
    }

    // ---- matmul -----------------------------------------------------------------------

    /// `c[m,n] = a[m,k] x b[k,n]`, `a` and `b` with (row, column) element strides `sa`, `sb`
    /// (row-major unless a transpose was folded, which only the GEMM path does); `ws` is the
    /// node's planned scratch, the GEMM's packing workspace.
    #[allow(clippy::too_many_arguments)]
    fn matmul(
        &mut self,
        a: Loc,
        sa: (usize, usize),
        b: Loc,
        sb: (usize, usize),
        c: Loc,
        (m, k, n): (usize, usize, usize),
        ws: Loc,
    ) -> Result<(), LowerError> {
        match self.matmul {
            MatmulKernel::Gemm => {
                let args = [
                    self.iconst(m as i64),
                    self.iconst(k as i64),
                    self.iconst(n as i64),
                    self.addr(a, None),
                    self.iconst(sa.0 as i64),
                    self.iconst(sa.1 as i64),
                    self.addr(b, None),
                    self.iconst(sb.0 as i64),
                    self.iconst(sb.1 as i64),
                    self.addr(c, None),
                    self.iconst(0),
                    self.iconst(self.threads as i64),
                    self.addr(ws, None),
                ];
                self.call(Kernel::Gemm, &args)?;
            }
            MatmulKernel::Cranelift => self.matmul_cranelift(a, b, c, m, k, n),
        }
        Ok(())
    }

    /// The planned scratch space of node `id` (in the arena).
    fn scratch(&self, plan: &Plan, id: NodeId) -> Loc {
        Loc {
            slot: self.bases.len() - 1,
            offset: plan.scratch.get(&id).copied().unwrap_or(0),
        }
    }

    /// Register-blocked kernel: tiles of 4 rows x 8 columns (8 `f32x4` accumulators) run
    /// over `k` in registers, loading 2 vectors of `b` and broadcasting 4 scalars of `a` per
    /// step; leftover columns (vectors, then single columns) and rows form smaller tiles.
    fn matmul_cranelift(&mut self, a: Loc, b: Loc, c: Loc, m: usize, k: usize, n: usize) {
        const ROWS: usize = 4;
        const VECS: usize = 2;
        let geo = Tile {
            k,
            n,
            rows: ROWS,
            nvec: VECS,
            nscalar: 0,
        };
        let pa = self.addr(a, None);
        let pb = self.addr(b, None);
        let pc = self.addr(c, None);
        let row_tiles = m / ROWS;
        let rows_block = |lw: &mut Self, i0: Value, rows: usize| {
            let ra = lw.b.ins().imul_imm_s(i0, (k * 4) as i64);
            let row_a = lw.b.ins().iadd(pa, ra);
            let rc = lw.b.ins().imul_imm_s(i0, (n * 4) as i64);
            let row_c = lw.b.ins().iadd(pc, rc);
            let col_tiles = n / (VECS * LANES);
            lw.for_range(col_tiles, vec![], &mut |lw, t, _| {
                let col = lw.b.ins().imul_imm_s(t, (VECS * LANES * 4) as i64);
                lw.matmul_tile(row_a, pb, row_c, col, Tile { rows, ..geo });
                vec![]
            });
            let done = col_tiles * VECS * LANES;
            let (nvec, nscalar) = ((n - done) / LANES, (n - done) % LANES);
            if nvec + nscalar > 0 {
                let col = lw.iconst((done * 4) as i64);
                lw.matmul_tile(
                    row_a,
                    pb,
                    row_c,
                    col,
                    Tile {
                        rows,
                        nvec,
                        nscalar,
                        ..geo
                    },
                );
            }
        };
        self.for_range(row_tiles, vec![], &mut |lw, t, _| {
            let i0 = lw.b.ins().imul_imm_s(t, ROWS as i64);
            rows_block(lw, i0, ROWS);
            vec![]
        });
        for i in row_tiles * ROWS..m {
            let i0 = self.iconst(i as i64);
            rows_block(self, i0, 1);
        }
    }

    /// One tile of `c`: `t.rows` rows from `row_a`/`row_c`, `t.nvec` vectors then
    /// `t.nscalar` single columns from byte column offset `col`, accumulated over `k`.
    fn matmul_tile(&mut self, row_a: Value, pb: Value, row_c: Value, col: Value, t: Tile) {
        let width = t.nvec + t.nscalar;
        let zv = self.fconst(0.0, true);
        let zs = self.fconst(0.0, false);
        let init: Vec<Value> = (0..t.rows)
            .flat_map(|_| (0..width).map(|q| if q < t.nvec { zv } else { zs }))
            .collect();
        let bcol = self.b.ins().iadd(pb, col);
        let col_off = |q: usize| {
            if q < t.nvec {
                q * LANES * 4
            } else {
                (t.nvec * LANES + q - t.nvec) * 4
            }
        };
        let acc = self.for_range(t.k, init, &mut |lw, kk, acc| {
            let oa = lw.b.ins().imul_imm_s(kk, 4);
            let pa = lw.b.ins().iadd(row_a, oa);
            let ob = lw.b.ins().imul_imm_s(kk, (t.n * 4) as i64);
            let rb = lw.b.ins().iadd(bcol, ob);
            let bv: Vec<Value> = (0..width)
                .map(|q| {
                    let ty = if q < t.nvec { types::F32X4 } else { types::F32 };
                    lw.load(ty, rb, col_off(q) as i64)
                })
                .collect();
            let mut out = Vec::with_capacity(acc.len());
            for r in 0..t.rows {
                let s = lw.load(types::F32, pa, (r * t.k * 4) as i64);
                let sv = if t.nvec > 0 {
                    lw.b.ins().splat(types::F32X4, s)
                } else {
                    s
                };
                for (q, &b) in bv.iter().enumerate() {
                    let x = if q < t.nvec { sv } else { s };
                    out.push(lw.mul_add(x, b, acc[r * width + q]));
                }
            }
            out
        });
        let pc = self.b.ins().iadd(row_c, col);
        for r in 0..t.rows {
            for q in 0..width {
                let off = r * t.n * 4 + col_off(q);
                self.store(acc[r * width + q], pc, off as i64);
            }
        }
    }

    // ---- per-node lowering -------------------------------------------------------------

    /// Lowers node `id` of `g`, whose value goes to `plan.locs[id]`.
    pub fn node(&mut self, g: &Graph, plan: &Plan, id: NodeId) -> Result<(), LowerError> {
        self.b.set_srcloc(ir::SourceLoc::new(id.index() as u32));
        let node = &g[id];
        let operands = g.operands(id);
        let loc_of = |n: NodeId| -> Result<Loc, LowerError> {
            plan.locs
                .get(&n)
                .copied()
                .ok_or_else(|| format!("no buffer planned for node {}", n.index()))
        };
        let out = loc_of(id)?;
        let ins: Vec<Loc> = operands
            .iter()
            .map(|&o| loc_of(o))
            .collect::<Result<_, _>>()?;
        let in_ty = |i: usize| &g[operands[i]].ty;
        let shape = &node.ty.shape;
        let dtype = node.ty.dtype;
        let dense_out = View::dense(out, dtype, shape);
        // operand i broadcast over the output shape
        let bview = |i: usize| View {
            loc: ins[i],
            dtype: in_ty(i).dtype,
            offset: 0,
            strides: broadcast_strides(&in_ty(i).shape, shape),
        };
        match &node.op {
            Op::Input | Op::Param { .. } | Op::State { .. } | Op::Const { .. } => {}
            Op::Unary(u) => {
                let u = *u;
                self.map(
                    &dense_out,
                    shape.dims(),
                    &[bview(0)],
                    true,
                    &|lw, v, vector| lw.unary_value(u, v[0], vector),
                );
            }
            Op::Binary(BinaryOp::Pow) => {
                // one call of the Rust `powf` per element (scalar loop)
                let f = self.kernel(Kernel::Powf)?;
                let (a, b) = (bview(0), bview(1));
                self.map(&dense_out, shape.dims(), &[a, b], false, &|lw, v, _| {
                    let inst = lw.b.ins().call(f, &[v[0], v[1]]);
                    lw.b.inst_results(inst)[0]
                });
            }
            Op::Binary(op) => {
                let op = *op;
                let (a, b) = (bview(0), bview(1));
                self.map(&dense_out, shape.dims(), &[a, b], true, &|lw, v, _| {
                    lw.binary(op, v[0], v[1])
                });
            }
            Op::Compare(c) => {
                let c = *c;
                let (a, b) = (bview(0), bview(1));
                let int = in_ty(0).dtype == DType::I32;
                self.map(&dense_out, shape.dims(), &[a, b], !int, &|lw, v, vector| {
                    let m = if int {
                        lw.b.ins().icmp(int_cc(c), v[0], v[1])
                    } else {
                        lw.b.ins().fcmp(float_cc(c), v[0], v[1])
                    };
                    let one = lw.fconst(1.0, vector);
                    let zero = lw.fconst(0.0, vector);
                    lw.pick(m, one, zero)
                });
            }
            Op::Select => {
                let views = [bview(0), bview(1), bview(2)];
                self.map(&dense_out, shape.dims(), &views, true, &|lw, v, vector| {
                    let zero = lw.fconst(0.0, vector);
                    let m = lw.b.ins().fcmp(FloatCC::NotEqual, v[0], zero);
                    lw.pick(m, v[1], v[2])
                });
            }
            Op::Cast { to } => {
                let (from, to) = (in_ty(0).dtype, *to);
                self.map(
                    &dense_out,
                    shape.dims(),
                    &[bview(0)],
                    false,
                    &|lw, v, _| match (from, to) {
                        (DType::F32, DType::I32) => lw.b.ins().fcvt_to_sint_sat(types::I32, v[0]),
                        (DType::I32, DType::F32) => lw.b.ins().fcvt_from_sint(types::F32, v[0]),
                        _ => v[0],
                    },
                );
            }
            Op::Reduce { kind, axes, .. } => {
                self.reduce(out, ins[0], dtype, &in_ty(0).shape, axes, *kind);
            }
            Op::Argmax { axis } => self.argmax(out, ins[0], in_ty(0).dtype, &in_ty(0).shape, *axis),
            Op::Reshape { .. } => self.copy(out, ins[0], dtype, shape),
            Op::Broadcast { .. } => {
                self.map(&dense_out, shape.dims(), &[bview(0)], true, &|_, v, _| v[0]);
            }
            Op::Transpose { .. } if plan.folded.contains(&id) => {}
            Op::Transpose { perm } => {
                let s = in_ty(0).shape.strides();
                let v = View {
                    loc: ins[0],
                    dtype,
                    offset: 0,
                    strides: perm.iter().map(|&p| s[p] as i64).collect(),
                };
                self.map(&dense_out, shape.dims(), &[v], true, &|_, v, _| v[0]);
            }
            Op::Slice { begin, .. } => {
                let s = in_ty(0).shape.strides();
                let v = View {
                    loc: ins[0],
                    dtype,
                    offset: begin.iter().zip(&s).map(|(&b, &s)| (b * s) as i64).sum(),
                    strides: s.iter().map(|&x| x as i64).collect(),
                };
                self.map(&dense_out, shape.dims(), &[v], true, &|_, v, _| v[0]);
            }
            Op::Concat { axis } => {
                let os: Vec<i64> = shape.strides().iter().map(|&x| x as i64).collect();
                let mut at = 0usize;
                for (i, &l) in ins.iter().enumerate() {
                    let s = &in_ty(i).shape;
                    let dst = View {
                        loc: out,
                        dtype,
                        offset: at as i64 * os[*axis],
                        strides: os.clone(),
                    };
                    let src = View::dense(l, dtype, s);
                    self.map(&dst, s.dims(), &[src], true, &|_, v, _| v[0]);
                    at += s.0[*axis];
                }
            }
            Op::Matmul => {
                let (a, b) = (&in_ty(0).shape, &in_ty(1).shape);
                let (m, k, n) = (a.0[0], a.0[1], b.0[1]);
                // (row, column) strides; a folded transpose is read through swapped strides
                let ta = plan.folded.contains(&operands[0]);
                let tb = plan.folded.contains(&operands[1]);
                let sa = if ta { (1, m) } else { (k, 1) };
                let sb = if tb { (1, k) } else { (n, 1) };
                let ws = self.scratch(plan, id);
                self.matmul(ins[0], sa, ins[1], sb, out, (m, k, n), ws)?;
            }
            Op::Conv2d { stride, padding } => {
                let g = conv_geometry(&in_ty(0).shape, &in_ty(1).shape, *stride, *padding)?;
                self.conv_call(Kernel::Conv2d, ins[0], ins[1], out, plan, id, &g)?;
            }
            Op::Conv2dInputGrad {
                stride,
                padding,
                shape: xs,
            } => {
                let g = conv_geometry(xs, &in_ty(1).shape, *stride, *padding)?;
                self.conv_call(Kernel::Conv2dInputGrad, ins[0], ins[1], out, plan, id, &g)?;
            }
            Op::Conv2dFilterGrad {
                stride, padding, ..
            } => {
                let g = conv_geometry(&in_ty(0).shape, shape, *stride, *padding)?;
                self.conv_call(Kernel::Conv2dFilterGrad, ins[0], ins[1], out, plan, id, &g)?;
            }
            Op::MaxPool2d { window, stride } => {
                let g = pool_geometry(&in_ty(0).shape, *window, *stride)?;
                let gp = self.i64_array(&g);
                let args = [self.addr(ins[0], None), self.addr(out, None), gp];
                self.call(Kernel::MaxPool2d, &args)?;
            }
            Op::MaxPool2dGrad { window, stride } => {
                let g = pool_geometry(&in_ty(0).shape, *window, *stride)?;
                let gp = self.i64_array(&g);
                let args = [
                    self.addr(ins[0], None),
                    self.addr(ins[1], None),
                    self.addr(out, None),
                    gp,
                ];
                self.call(Kernel::MaxPool2dGrad, &args)?;
            }
            Op::Softmax { axis } | Op::LogSoftmax { axis } => {
                let kind = if matches!(node.op, Op::Softmax { .. }) {
                    kernels::SOFTMAX
                } else {
                    kernels::LOG_SOFTMAX
                };
                let d = shape.dims();
                let outer: usize = d[..*axis].iter().product();
                let inner: usize = d[*axis + 1..].iter().product();
                let args = [
                    self.iconst(kind),
                    self.addr(ins[0], None),
                    self.addr(out, None),
                    self.iconst(outer as i64),
                    self.iconst(d[*axis] as i64),
                    self.iconst(inner as i64),
                ];
                self.call(Kernel::Softmax, &args)?;
            }
            Op::SoftmaxCrossEntropy | Op::SparseSoftmaxCrossEntropy => {
                let name = if matches!(node.op, Op::SoftmaxCrossEntropy) {
                    Kernel::SoftmaxXent
                } else {
                    Kernel::SparseSoftmaxXent
                };
                let l = &in_ty(0).shape;
                let args = [
                    self.addr(ins[0], None),
                    self.addr(ins[1], None),
                    self.addr(out, None),
                    self.iconst(l.0[0] as i64),
                    self.iconst(l.0[1] as i64),
                ];
                self.call(name, &args)?;
            }
            Op::OneHot { depth } => self.one_hot(out, ins[0], &in_ty(0).shape, *depth),
            Op::Fused(body) => {
                let shapes: Vec<Shape> = (0..ins.len()).map(|i| in_ty(i).shape.clone()).collect();
                // results 1.. go to the buffers of the fused_result nodes that read them
                let mut extra_outs = Vec::new();
                for u in g.users(id) {
                    if let Op::FusedResult { index } = g[u].op {
                        extra_outs.push((index, loc_of(u)?));
                    }
                }
                extra_outs.sort_by_key(|&(k, l)| (k, l.slot, l.offset));
                extra_outs.dedup();
                let outs = fused::FusedOuts {
                    main: out,
                    extra: &extra_outs,
                };
                self.fused(id, body, outs, &ins, &shapes, shape, plan, &operands)?;
            }
            // written by its fused operand's loop
            Op::FusedResult { .. } => {}
        }
        Ok(())
    }

    /// The inline code of an elementwise unary op on a register value (a scalar or `f32x4`),
    /// shared by the plain unary lowering and fused kernels.
    fn unary_value(&mut self, u: UnaryOp, x: Value, vector: bool) -> Value {
        match u {
            UnaryOp::Neg => self.b.ins().fneg(x),
            UnaryOp::Abs => self.b.ins().fabs(x),
            UnaryOp::Sqrt => self.b.ins().sqrt(x),
            // relu(NaN) = NaN, as in the interpreter
            UnaryOp::Relu => {
                let z = self.fconst(0.0, vector);
                let keep = self.b.ins().fcmp(FloatCC::UnorderedOrGreaterThan, x, z);
                self.pick(keep, x, z)
            }
            UnaryOp::Sign => {
                let z = self.fconst(0.0, vector);
                let one = self.fconst(1.0, vector);
                let minus = self.fconst(-1.0, vector);
                let neg = self.b.ins().fcmp(FloatCC::LessThan, x, z);
                let pos = self.b.ins().fcmp(FloatCC::GreaterThan, x, z);
                let r = self.pick(neg, minus, x);
                self.pick(pos, one, r)
            }
            UnaryOp::Exp => self.exp(x, vector),
            UnaryOp::Sigmoid => {
                // 1 / (1 + e^-x)
                let one = self.fconst(1.0, vector);
                let nx = self.b.ins().fneg(x);
                let e = self.exp(nx, vector);
                let d = self.b.ins().fadd(one, e);
                self.b.ins().fdiv(one, d)
            }
            UnaryOp::Tanh => self.tanh(x, vector),
            UnaryOp::Log => self.log(x, vector),
        }
    }

    /// Horner evaluation of `c[0] * x^(n-1) + .. + c[n-1]`.
    fn poly(&mut self, x: Value, c: &[f32], vector: bool) -> Value {
        let mut y = self.fconst(c[0], vector);
        for &k in &c[1..] {
            let k = self.fconst(k, vector);
            y = self.mul_add(y, x, k);
        }
        y
    }

    /// `e^x` inline (scalar or `f32x4`), Cephes `expf`: `x = n ln2 + r` with `|r| <= ln2/2`,
    /// a degree-6 polynomial for `e^r`, and `2^n` built in the exponent bits. About 1 ulp over
    /// the float range (denormal results included), 0 below -104, inf above `ln(f32::MAX)`,
    /// NaN stays NaN.
    fn exp(&mut self, x: Value, vector: bool) -> Value {
        let (fty, ity) = if vector {
            (types::F32X4, types::I32X4)
        } else {
            (types::F32, types::I32)
        };
        let hi = self.fconst(88.722_84, vector);
        let lo = self.fconst(-104.0, vector);
        let xc = self.b.ins().fmin(x, hi); // fmin/fmax keep NaN
        let xc = self.b.ins().fmax(xc, lo);
        let log2e = self.fconst(std::f32::consts::LOG2_E, vector);
        let half = self.fconst(0.5, vector);
        let fx = self.mul_add(xc, log2e, half);
        let n = self.b.ins().floor(fx);
        let c1 = self.fconst(-0.693_359_4, vector);
        let c2 = self.fconst(2.121_944_4e-4, vector);
        let r = self.mul_add(n, c1, xc);
        let r = self.mul_add(n, c2, r);
        let z = self.b.ins().fmul(r, r);
        let p = self.poly(
            r,
            &[
                1.987_569_1e-4,
                1.398_199_9e-3,
                8.333_452e-3,
                4.166_579_6e-2,
                0.166_666_65,
                0.5,
            ],
            vector,
        );
        let y = self.mul_add(p, z, r);
        let one = self.fconst(1.0, vector);
        let mut y = self.b.ins().fadd(y, one);
        // times 2^n in two factors 2^(n>>1) * 2^(n - n>>1), each a normal float for
        // n in [-150, 128], so results near the float range and denormals come out right
        let ni = self.b.ins().fcvt_to_sint_sat(ity, n);
        let n1 = self.b.ins().sshr_imm_s(ni, 1);
        let n2 = self.b.ins().isub(ni, n1);
        let bias = self.b.ins().iconst(types::I32, 127);
        let bias = if vector {
            self.b.ins().splat(ity, bias)
        } else {
            bias
        };
        let flags = if vector {
            MemFlagsData::new().with_endianness(Endianness::Little)
        } else {
            MemFlagsData::new()
        };
        for h in [n1, n2] {
            let e = self.b.ins().iadd(h, bias);
            let e = self.b.ins().ishl_imm_s(e, 23);
            let pow2 = self.b.ins().bitcast(fty, flags, e);
            y = self.b.ins().fmul(y, pow2);
        }
        // beyond the largest finite result
        let over = self.b.ins().fcmp(FloatCC::GreaterThan, x, hi);
        let inf = self.fconst(f32::INFINITY, vector);
        self.pick(over, inf, y)
    }

    /// `tanh(x)` inline, Cephes `tanhf`: an odd polynomial for `|x| < 0.625`, else
    /// `(1 - e^-2|x|) / (1 + e^-2|x|)` with the sign of `x`.
    fn tanh(&mut self, x: Value, vector: bool) -> Value {
        let ax = self.b.ins().fabs(x);
        let m2 = self.fconst(-2.0, vector);
        let t = self.b.ins().fmul(ax, m2);
        let e = self.exp(t, vector);
        let one = self.fconst(1.0, vector);
        let num = self.b.ins().fsub(one, e);
        let den = self.b.ins().fadd(one, e);
        let big = self.b.ins().fdiv(num, den);
        // the sign of x (fcopysign has no f32x4 lowering on x64)
        let zero = self.fconst(0.0, vector);
        let neg = self.b.ins().fcmp(FloatCC::LessThan, x, zero);
        let nbig = self.b.ins().fneg(big);
        let big = self.pick(neg, nbig, big);
        let z = self.b.ins().fmul(x, x);
        let p = self.poly(
            z,
            &[
                -5.704_988_7e-3,
                2.063_909e-2,
                -5.373_971_6e-2,
                0.133_314_42,
                -0.333_332_8,
            ],
            vector,
        );
        let xz = self.b.ins().fmul(x, z);
        let small = self.mul_add(xz, p, x);
        let lim = self.fconst(0.625, vector);
        let is_small = self.b.ins().fcmp(FloatCC::LessThan, ax, lim);
        self.pick(is_small, small, big)
    }

    /// An `i32` constant, as a scalar or splat over `i32x4`.
    fn iconst32(&mut self, v: i32, vector: bool) -> Value {
        let c = self.b.ins().iconst(types::I32, i64::from(v));
        if vector {
            self.b.ins().splat(types::I32X4, c)
        } else {
            c
        }
    }

    /// `ln(x)` inline (scalar or `f32x4`), Cephes `logf`: `x = 2^k m` with `m` in
    /// `[sqrt(1/2), sqrt(2))` read from the bits, `ln(m) = f - f^2/2 + f^3 P(f)` with `f = m - 1`
    /// (degree-8 minimax `P`), plus `k ln2` in two parts. Max relative error 8.2e-8 (1 ulp)
    /// against f64, measured over every positive f32 (`tests/codegen_math.rs`). Denormal inputs are scaled by
    /// 2^23 first; `ln(+-0) = -inf`, `ln(x < 0) = NaN`, `ln(NaN) = NaN`, `ln(inf) = inf`.
    fn log(&mut self, x: Value, vector: bool) -> Value {
        let (fty, ity) = if vector {
            (types::F32X4, types::I32X4)
        } else {
            (types::F32, types::I32)
        };
        let flags = if vector {
            MemFlagsData::new().with_endianness(Endianness::Little)
        } else {
            MemFlagsData::new()
        };
        // denormals (and zero, negatives, NaN: replaced at the end) times 2^23 are normal
        let min_normal = self.fconst(f32::MIN_POSITIVE, vector);
        let tiny = self.b.ins().fcmp(FloatCC::LessThan, x, min_normal);
        let two23 = self.fconst(8_388_608.0, vector);
        let scaled = self.b.ins().fmul(x, two23);
        let xs = self.pick(tiny, scaled, x);
        let m23 = self.fconst(-23.0, vector);
        let zero = self.fconst(0.0, vector);
        let kadj = self.pick(tiny, m23, zero);
        // exponent and mantissa: with the bits offset by 1.0 - sqrt(1/2), the exponent field
        // steps at sqrt(1/2) * 2^k instead of 2^k (musl's `logf` trick)
        const SQRT_HALF_BITS: i32 = 0x3f35_04f3;
        let bits = self.b.ins().bitcast(ity, flags, xs);
        let off = self.iconst32(0x3f80_0000 - SQRT_HALF_BITS, vector);
        let ix = self.b.ins().iadd(bits, off);
        let k = self.b.ins().sshr_imm_s(ix, 23);
        let bias = self.iconst32(127, vector);
        let k = self.b.ins().isub(k, bias);
        let frac = self.iconst32(0x007f_ffff, vector);
        let mbits = self.b.ins().band(ix, frac);
        let sqrt_half = self.iconst32(SQRT_HALF_BITS, vector);
        let mbits = self.b.ins().iadd(mbits, sqrt_half);
        let m = self.b.ins().bitcast(fty, flags, mbits);
        let one = self.fconst(1.0, vector);
        let f = self.b.ins().fsub(m, one);
        let kf = self.b.ins().fcvt_from_sint(fty, k);
        let kf = self.b.ins().fadd(kf, kadj);
        // ln(1 + f) = f - f^2/2 + f^3 P(f)
        let z = self.b.ins().fmul(f, f);
        let p = self.poly(
            f,
            &[
                7.037_683_6e-2,
                -1.151_461e-1,
                1.167_699_84e-1,
                -1.242_014_1e-1,
                1.424_932_3e-1,
                -1.666_805_7e-1,
                2.000_071_4e-1,
                -2.499_999_4e-1,
                3.333_333e-1,
            ],
            vector,
        );
        let fz = self.b.ins().fmul(f, z);
        let y = self.b.ins().fmul(p, fz);
        // + k ln2 as k (ln2_hi + ln2_lo), ln2_hi exact in 9 bits so k ln2_hi is exact
        let ln2_lo = self.fconst(-2.121_944_4e-4, vector);
        let y = self.mul_add(kf, ln2_lo, y);
        let mhalf = self.fconst(-0.5, vector);
        let y = self.mul_add(z, mhalf, y);
        let r = self.b.ins().fadd(f, y);
        let ln2_hi = self.fconst(0.693_359_4, vector);
        let r = self.mul_add(kf, ln2_hi, r);
        // special values
        let inf = self.fconst(f32::INFINITY, vector);
        let is_inf = self.b.ins().fcmp(FloatCC::Equal, x, inf);
        let r = self.pick(is_inf, inf, r);
        let ninf = self.fconst(f32::NEG_INFINITY, vector);
        let is_zero = self.b.ins().fcmp(FloatCC::Equal, x, zero);
        let r = self.pick(is_zero, ninf, r);
        let nan = self.fconst(f32::NAN, vector);
        let in_domain = self.b.ins().fcmp(FloatCC::GreaterThanOrEqual, x, zero);
        self.pick(in_domain, r, nan)
    }

    fn binary(&mut self, op: BinaryOp, a: Value, b: Value) -> Value {
        match op {
            BinaryOp::Add => self.b.ins().fadd(a, b),
            BinaryOp::Sub => self.b.ins().fsub(a, b),
            BinaryOp::Mul => self.b.ins().fmul(a, b),
            BinaryOp::Div => self.b.ins().fdiv(a, b),
            // numpy maximum/minimum: NaN if either operand is NaN, ties to the first operand
            BinaryOp::Max => {
                let ge = self.b.ins().fcmp(FloatCC::GreaterThanOrEqual, a, b);
                let m = self.pick(ge, a, b);
                let a_nan = self.b.ins().fcmp(FloatCC::Unordered, a, a);
                self.pick(a_nan, a, m)
            }
            BinaryOp::Min => {
                let le = self.b.ins().fcmp(FloatCC::LessThanOrEqual, a, b);
                let m = self.pick(le, a, b);
                let a_nan = self.b.ins().fcmp(FloatCC::Unordered, a, a);
                self.pick(a_nan, a, m)
            }
            // lowered as a kernel call per element (see `node`)
            BinaryOp::Pow => a,
        }
    }

    /// Index of the first maximum along `axis`, as i32.
    fn argmax(&mut self, out: Loc, x: Loc, dtype: DType, xs: &Shape, axis: usize) {
        let d = xs.dims();
        let outer: usize = d[..axis].iter().product();
        let len = d[axis];
        let inner: usize = d[axis + 1..].iter().product();
        let px = self.addr(x, None);
        let po = self.addr(out, None);
        let ty = elem_type(dtype, false);
        self.for_range(outer, vec![], &mut |lw, o, _| {
            lw.for_range(inner, vec![], &mut |lw, i, _| {
                let ob = lw.b.ins().imul_imm_s(o, (len * inner * 4) as i64);
                let ib = lw.b.ins().imul_imm_s(i, 4);
                let row = lw.b.ins().iadd(px, ob);
                let row = lw.b.ins().iadd(row, ib);
                let best = lw.load(ty, row, 0);
                let zero = lw.iconst(0);
                let r = lw.for_range(len, vec![best, zero], &mut |lw, j, acc| {
                    let oj = lw.b.ins().imul_imm_s(j, (inner * 4) as i64);
                    let a = lw.b.ins().iadd(row, oj);
                    let v = lw.load(ty, a, 0);
                    let gt = match dtype {
                        DType::F32 => lw.nan_greater(v, acc[0]),
                        DType::I32 => lw.b.ins().icmp(IntCC::SignedGreaterThan, v, acc[0]),
                    };
                    let nb = lw.b.ins().select(gt, v, acc[0]);
                    let ni = lw.b.ins().select(gt, j, acc[1]);
                    vec![nb, ni]
                });
                let idx = lw.b.ins().ireduce(types::I32, r[1]);
                let oo = lw.b.ins().imul_imm_s(o, (inner * 4) as i64);
                let a = lw.b.ins().iadd(po, oo);
                let a = lw.b.ins().iadd(a, ib);
                lw.store(idx, a, 0);
                vec![]
            });
            vec![]
        });
    }

    /// `out[.., v] = 1` for each index `v` in range, zeros elsewhere.
    fn one_hot(&mut self, out: Loc, x: Loc, xs: &Shape, depth: usize) {
        let mut os = xs.0.clone();
        os.push(depth);
        self.fill(out, DType::F32, &Shape(os), 0.0);
        let px = self.addr(x, None);
        let po = self.addr(out, None);
        self.for_range(xs.numel(), vec![], &mut |lw, i, _| {
            let oi = lw.b.ins().imul_imm_s(i, 4);
            let a = lw.b.ins().iadd(px, oi);
            let v = lw.load(types::I32, a, 0);
            let v = lw.b.ins().sextend(types::I64, v);
            let ok =
                lw.b.ins()
                    .icmp_imm_s(IntCC::UnsignedLessThan, v, depth as i64);
            let then = lw.b.create_block();
            let merge = lw.b.create_block();
            lw.b.ins().brif(ok, then, &[], merge, &[]);
            lw.b.switch_to_block(then);
            let row = lw.b.ins().imul_imm_s(i, depth as i64);
            let e = lw.b.ins().iadd(row, v);
            let e = lw.b.ins().imul_imm_s(e, 4);
            let a = lw.b.ins().iadd(po, e);
            let one = lw.fconst(1.0, false);
            lw.store(one, a, 0);
            lw.b.ins().jump(merge, &[]);
            lw.b.switch_to_block(merge);
            vec![]
        });
    }

    #[allow(clippy::too_many_arguments)]
    fn conv_call(
        &mut self,
        kernel: Kernel,
        a: Loc,
        b: Loc,
        out: Loc,
        plan: &Plan,
        id: NodeId,
        g: &[i64; kernels::CONV_GEOMETRY_LEN],
    ) -> Result<(), LowerError> {
        let scratch = self.scratch(plan, id);
        let gp = self.i64_array(g);
        let args = [
            self.addr(a, None),
            self.addr(b, None),
            self.addr(out, None),
            self.addr(scratch, None),
            gp,
        ];
        self.call(kernel, &args)?;
        Ok(())
    }
}

fn float_cc(c: CmpOp) -> FloatCC {
    match c {
        CmpOp::Eq => FloatCC::Equal,
        CmpOp::Ne => FloatCC::NotEqual,
        CmpOp::Lt => FloatCC::LessThan,
        CmpOp::Le => FloatCC::LessThanOrEqual,
        CmpOp::Gt => FloatCC::GreaterThan,
        CmpOp::Ge => FloatCC::GreaterThanOrEqual,
    }
}

fn int_cc(c: CmpOp) -> IntCC {
    match c {
        CmpOp::Eq => IntCC::Equal,
        CmpOp::Ne => IntCC::NotEqual,
        CmpOp::Lt => IntCC::SignedLessThan,
        CmpOp::Le => IntCC::SignedLessThanOrEqual,
        CmpOp::Gt => IntCC::SignedGreaterThan,
        CmpOp::Ge => IntCC::SignedGreaterThanOrEqual,
    }
}

/// Convolution geometry `[n,h,w,c,kh,kw,o,oh,ow,sh,sw,ph,pw]` for input `x` and filter `w`.
pub fn conv_geometry(
    x: &Shape,
    w: &Shape,
    stride: [usize; 2],
    padding: Padding,
) -> Result<[i64; kernels::CONV_GEOMETRY_LEN], LowerError> {
    ConvGeometry::new(x, w, stride, padding)
        .map(|g| g.to_array())
        .ok_or_else(|| format!("convolution of {x} with filter {w} does not fit"))
}

/// Pooling geometry `[n,h,w,c,wh,ww,sh,sw,oh,ow]` for input `x`.
fn pool_geometry(
    x: &Shape,
    window: [usize; 2],
    stride: [usize; 2],
) -> Result<[i64; kernels::POOL_GEOMETRY_LEN], LowerError> {
    PoolGeometry::new(x, window, stride)
        .map(|g| g.to_array())
        .ok_or_else(|| format!("pooling window {window:?} does not fit {x}"))
}
