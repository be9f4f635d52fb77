//! Lowering: every node of a type-checked graph becomes Cranelift IR inside ONE function
//! `fn(table: *const *mut u8)`, where `table` holds one base pointer per buffer (see
//! [`super::plan`]). This file holds the [`Lowerer`], its small helpers and the per-node
//! dispatch ([`Lowerer::node`]); the building blocks live in submodules:
//! - `loops`: loop nests over statically known bounds. `Lowerer::map` is an elementwise
//!   loop over an output view and operand views given by per-dimension strides
//!   (0 = broadcast). Adjacent dimensions that are contiguous for every view are merged
//!   first; when the innermost dimension is contiguous (or broadcast) for all views the loop
//!   runs on `f32x4` vectors and a straight-line scalar tail handles the last `len % 4`
//!   elements. Elementwise ops, broadcast, transpose, slice, concat, cast, copies and fills
//!   are all `map`s. `Lowerer::reduce` and `Lowerer::map_reduce` (plain and fused
//!   reductions): a reduced innermost dimension accumulates in registers (four `f32x4`
//!   accumulators, then a horizontal combine and a scalar tail), otherwise the output row is
//!   updated in place; a long f32 sum adds blocks of its terms to f64 totals (in registers
//!   for a row, in the node's planned scratch for the output elements).
//! - `matmul`: a register-blocked `f32x4` kernel (1 row x 16 columns of accumulators, `fma`
//!   when the host has it) or a call to the GEMM kernel (see [`super::MatmulKernel`]).
//! - `math`: `exp`, `sigmoid`, `tanh` and `log` as inline polynomial code (Cephes `expf`/
//!   `tanhf`/`logf`), so they run on `f32x4` vectors inside the elementwise loops like any
//!   other op, and the other unary and binary ops.
//! - `fused`: the loop of a fused block (see [`crate::fused`]).
//!
//! `pow` (one call per element), convolution (im2col + GEMM, or direct), pooling, the
//! softmax family, `gather` and `scatter_add` call the Rust kernels of [`super::kernels`] through registered symbols,
//! with sizes passed as constants.
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

mod fused;
mod loops;
mod math;
mod matmul;
mod scan;
mod update;

pub(crate) use fused::{fused_conv_geometry, fused_matmul_dims, fused_reads_only_in_matmul};
pub(crate) use loops::sum_scratch_bytes;
use loops::{broadcast_strides, View};
pub use scan::ScanCode;

/// A lowering failure for one node (the caller adds the node's description).
pub type LowerError = String;

/// Cranelift parameter and result types of runtime kernel `k`.
pub fn kernel_signature(k: Kernel) -> (Vec<Type>, Vec<Type>) {
    match k.signature() {
        KernelSignature::FloatBinary => (vec![types::F32; 2], vec![types::F32]),
        KernelSignature::FloatUnary => (vec![types::F32], vec![types::F32]),
        KernelSignature::Words(n) => (vec![types::I64; n], vec![]),
    }
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
    /// CLIF instructions the function may still spend on rows unrolled four times
    /// ([`loops::HEAVY_BUDGET`]).
    heavy_budget: usize,
    /// The compiled bodies of the function's scan nodes.
    pub scans: HashMap<NodeId, ScanCode>,
    /// Whether recognized fused bodies call their runtime kernels
    /// ([`crate::codegen::CompileOptions::body_kernels`]).
    pub body_kernels: bool,
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
            heavy_budget: loops::HEAVY_BUDGET,
            scans: HashMap::new(),
            body_kernels: true,
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
        let words: Vec<Value> = vals.iter().map(|&v| self.iconst(v)).collect();
        self.word_array(&words)
    }

    /// Stores the `i64` values `words` (sizes, pointers) into a fresh stack slot and returns
    /// its address (a kernel's table of operands).
    fn word_array(&mut self, words: &[Value]) -> Value {
        let slot = self.b.create_sized_stack_slot(StackSlotData::new(
            StackSlotKind::ExplicitSlot,
            (words.len() * 8) as u32,
            3,
        ));
        let p = self.b.ins().stack_addr(types::I64, slot, 0);
        for (i, &w) in words.iter().enumerate() {
            self.b
                .ins()
                .store(MemFlagsData::trusted(), w, p, (i * 8) as i32);
        }
        p
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
            Op::Unary(u @ (UnaryOp::Sin | UnaryOp::Cos)) => {
                // one call of the Rust `sinf`/`cosf` per element (scalar loop)
                let f = self.kernel(match u {
                    UnaryOp::Sin => Kernel::Sinf,
                    _ => Kernel::Cosf,
                })?;
                self.map(&dense_out, shape.dims(), &[bview(0)], false, &|lw, v, _| {
                    let inst = lw.b.ins().call(f, &[v[0]]);
                    lw.b.inst_results(inst)[0]
                });
            }
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
                let totals = self.planned_scratch(plan, id);
                let x_shape = &in_ty(0).shape;
                self.reduce(out, ins[0], dtype, x_shape, axes, *kind, totals);
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
                self.conv_call(Kernel::Conv2d, ins[0], ins[1], None, out, plan, id, &g)?;
            }
            Op::Conv2dInputGrad {
                stride,
                padding,
                shape: xs,
            } => {
                let g = conv_geometry(xs, &in_ty(1).shape, *stride, *padding)?;
                self.conv_call(
                    Kernel::Conv2dInputGrad,
                    ins[0],
                    ins[1],
                    None,
                    out,
                    plan,
                    id,
                    &g,
                )?;
            }
            Op::Conv2dFilterGrad {
                stride, padding, ..
            } => {
                let g = conv_geometry(&in_ty(0).shape, shape, *stride, *padding)?;
                self.conv_call(
                    Kernel::Conv2dFilterGrad,
                    ins[0],
                    ins[1],
                    None,
                    out,
                    plan,
                    id,
                    &g,
                )?;
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
            Op::Gather { axis } | Op::ScatterAdd { axis, .. } => {
                let (kernel, table) = match &node.op {
                    Op::Gather { .. } => (Kernel::Gather, &in_ty(0).shape),
                    _ => (Kernel::ScatterAdd, shape),
                };
                let (outer, n, inner) = crate::op::gather_dims(table, *axis);
                let args = [
                    self.addr(ins[0], None),
                    self.addr(ins[1], None),
                    self.addr(out, None),
                    self.iconst(outer as i64),
                    self.iconst(n as i64),
                    self.iconst(in_ty(1).shape.numel() as i64),
                    self.iconst(inner as i64),
                ];
                self.call(kernel, &args)?;
            }
            Op::AllReduce { mean } => {
                let args = [
                    self.addr(ins[0], None),
                    self.addr(out, None),
                    self.iconst(shape.numel() as i64),
                    self.iconst(i64::from(*mean)),
                ];
                self.call(Kernel::AllReduce, &args)?;
            }
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
            Op::Scan(_) => self.scan(g, plan, id, &ins, out)?,
            // written by its scan operand's loop
            Op::ScanResult { .. } => {}
        }
        Ok(())
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

    /// Calls convolution kernel `kernel` on `a` and `b` into `out` with the node's scratch
    /// and geometry `g`; `bias` is the per-channel bias of [`Kernel::Conv2dBiasRelu`]
    /// (passed after `b`), `None` for the others.
    #[allow(clippy::too_many_arguments)]
    fn conv_call(
        &mut self,
        kernel: Kernel,
        a: Loc,
        b: Loc,
        bias: Option<Loc>,
        out: Loc,
        plan: &Plan,
        id: NodeId,
        g: &[i64; kernels::CONV_GEOMETRY_LEN],
    ) -> Result<(), LowerError> {
        let scratch = self.scratch(plan, id);
        let gp = self.i64_array(g);
        let mut args = vec![self.addr(a, None), self.addr(b, None)];
        if let Some(bias) = bias {
            args.push(self.addr(bias, None));
        }
        args.push(self.addr(out, None));
        args.push(self.addr(scratch, None));
        args.push(gp);
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
