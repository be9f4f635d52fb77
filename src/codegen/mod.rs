//! Code generation: a graph in, one native function out.
//!
//! [`compile_native`] checks the graph (canonical order, every node's type re-inferred from its
//! operands, outputs and updates well-formed: the generated code trusts these shapes for
//! every memory access), plans its memory ([`crate::passes::plan`], given the transposes it
//! folds into matmuls and the kernels' scratch space; [`plan`] maps the result to table
//! slots), lowers every node into ONE Cranelift
//! function ([`lower`]) and compiles it with `cranelift-jit` for the host ISA
//! (`cranelift-native`: SSE4/AVX/FMA as cpuid reports). One lowering, two back ends: the same
//! function goes into an object file with [`compile_object`] (`cranelift-object`), through
//! the same `lower_into`. The result of [`compile_native`] is [`NativeCode`]: the
//! code and the [`plan::Layout`] of the pointer table it reads. Codegen does not know the
//! runtime: [`crate::runtime::compile`] wraps the code into an
//! [`crate::runtime::Executable`], the safe entry point, which fills tables from the layout.
//!
//! The native function is `extern "C" fn(table: *const *mut u8)`: a table of base pointers
//! `[inputs.., params.., states.., consts.., outputs.., arena]`. The body computes every node
//! in canonical order, then copies output values into the output buffers, then writes the
//! updates (`param <- value`) into their param or state buffers. Since every update is
//! written after all nodes ran, each node reads the old values.
//!
//! [`clif`] returns the Cranelift IR text of the same function (`gradlift dump --format clif`),
//! [`listing`] also the IR after Cranelift's own passes and the machine code it emits
//! (`--format clif-opt`, `--format asm`).

pub mod gemm;
pub mod kernels;
pub mod lower;
pub mod plan;

use crate::graph::{Graph, NodeId};
use crate::op::Op;
use crate::passes::plan::{MemoryPlan, PlanOptions};
use crate::shape::DType;
use cranelift_codegen::ir::{AbiParam, UserFuncName};
use cranelift_codegen::settings::{self, Configurable};
use cranelift_codegen::{CodegenError, Context};
use cranelift_frontend::{FunctionBuilder, FunctionBuilderContext};
use cranelift_jit::{JITBuilder, JITModule};
use cranelift_module::{default_libcall_names, FuncId, Linkage, Module, ModuleError};
use cranelift_object::{ObjectBuilder, ObjectModule};
use plan::Slot;
use std::collections::{HashMap, HashSet};
use std::time::Instant;

/// How matmul is compiled.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum MatmulKernel {
    /// Call our GEMM ([`gemm`]: AVX-512 or AVX2 micro-kernels chosen at run time, packing
    /// into planned scratch) from the compiled code. Default: 104-116 GFLOP/s on one Zen 4
    /// core where the Cranelift kernel reaches 25-38 (see ARCHITECTURE.md).
    #[default]
    Gemm,
    /// A register-blocked `f32x4` Cranelift kernel (1 x 16 tiles, FMA).
    Cranelift,
}

/// Options of [`compile_native`].
#[derive(Clone, Debug)]
pub struct CompileOptions {
    /// The matmul implementation.
    pub matmul: MatmulKernel,
    /// Run the Cranelift IR verifier (costs 1.1-1.8x compile time; on in debug builds).
    pub verify: bool,
    /// Threads a large matmul may use (products of at least
    /// [`kernels::PARALLEL_FLOPS`] FLOPs are split; smaller ones stay on the calling thread).
    pub threads: usize,
    /// Testing aid: fill the arena and the output buffers with NaN bits before every call, so
    /// an element a kernel forgets to write shows up as NaN instead of a stale value.
    pub poison: bool,
    /// Run the code with flush-to-zero and denormals-are-zero (default true, as XLA:CPU
    /// does: denormal arithmetic is up to 100x slower on x86); false keeps IEEE denormals.
    /// See [`crate::runtime::fpenv`].
    pub flush_denormals: bool,
    /// Compute the fused bodies the lowering recognizes by runtime kernels (default true):
    /// Adam's (or AdamW's) update of one param by [`kernels::gl_adam_update`] at the widest
    /// vector width, up to 2x faster than the JIT's `f32x4` loop, whose divide and square
    /// root are bound by the divider (the kernel then by memory); a convolution layer's `relu(conv2d(x, w) + bias)` by
    /// [`kernels::gl_conv2d_bias_relu`], which adds the bias and applies relu to each image's
    /// output while it is in cache. The results are the same bits either way; false keeps
    /// the loops (to compare them).
    pub body_kernels: bool,
}

impl Default for CompileOptions {
    fn default() -> Self {
        CompileOptions {
            matmul: MatmulKernel::default(),
            verify: cfg!(debug_assertions),
            threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
            poison: false,
            flush_denormals: true,
            body_kernels: true,
        }
    }
}

/// Where compile time went, per graph.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct CompileReport {
    /// Checking, planning and building the Cranelift IR, in milliseconds.
    pub lower_ms: f64,
    /// Cranelift code generation (register allocation, emission, linking), in milliseconds.
    pub cranelift_ms: f64,
    /// Setting up the host ISA and the JIT module, in milliseconds.
    pub setup_ms: f64,
    /// Allocating and initializing the executable's buffers (params from their
    /// initializers, constants, arena), in milliseconds.
    pub init_ms: f64,
    /// Size of the intermediate-value arena in bytes.
    pub arena_bytes: usize,
    /// Updates computed directly into their param or state buffer (no copy at the end).
    pub in_place_updates: usize,
    /// Number of graph nodes.
    pub nodes: usize,
    /// Number of Cranelift IR instructions in the function.
    pub clif_insts: usize,
    /// Size of the machine code in bytes.
    pub code_bytes: usize,
}

impl CompileReport {
    /// The report of one function lowered with `plan` from `nodes` nodes and compiled by
    /// either back end: `[lower_ms, setup_ms, cranelift_ms]`, its CLIF instruction count and
    /// machine-code size (`init_ms` is the runtime's to fill).
    fn of_function(
        plan: &plan::Plan,
        nodes: usize,
        [lower_ms, setup_ms, cranelift_ms]: [f64; 3],
        clif_insts: usize,
        code_bytes: usize,
    ) -> CompileReport {
        CompileReport {
            lower_ms,
            cranelift_ms,
            setup_ms,
            init_ms: 0.0,
            arena_bytes: plan.memory.arena_bytes,
            in_place_updates: plan.memory.in_place_updates(),
            nodes,
            clif_insts,
            code_bytes,
        }
    }
}

impl std::fmt::Display for CompileReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "compiled {} nodes in {:.2} ms (lowering {:.2} ms, Cranelift {:.2} ms, JIT setup \
             {:.2} ms, buffers {:.2} ms): {} IR instructions, {} bytes of code, {} bytes of arena",
            self.nodes,
            self.lower_ms + self.cranelift_ms + self.setup_ms + self.init_ms,
            self.lower_ms,
            self.cranelift_ms,
            self.setup_ms,
            self.init_ms,
            self.clif_insts,
            self.code_bytes,
            self.arena_bytes
        )
    }
}

/// Why a graph could not be compiled.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CompileError {
    /// The graph breaks an invariant of [`crate::verify`] (a cycle, a wrong type, a missing
    /// name, ...): every violation.
    #[error("{0}")]
    Verify(#[from] crate::verify::VerifyErrors),
    /// A node the code generator cannot take (a tensor too large), or a function of a split
    /// training step that does not fit the step.
    #[error("{node}: {message}")]
    Invalid {
        /// The node, as `%name (op) at FILE:LINE:COL`.
        node: String,
        /// What is wrong.
        message: String,
    },
    /// The lowering of a node failed.
    #[error("{node}: cannot lower: {message}")]
    Lowering {
        /// The node.
        node: String,
        /// What failed.
        message: String,
    },
    /// Cranelift rejected the function (verifier or code generation).
    #[error("Cranelift error{}: {message}", node.as_ref().map(|n| format!(" in {n}")).unwrap_or_default())]
    Cranelift {
        /// The node the failing instruction belongs to, when known.
        node: Option<String>,
        /// Cranelift's message.
        message: String,
    },
    /// The host ISA is not supported or the JIT could not be set up.
    #[error("cannot set up the JIT for this host: {0}")]
    Host(String),
    /// The executable would need more memory than the machine has ([`memory_limit`]);
    /// nothing was allocated.
    #[error(
        "the graph needs {needed} bytes of memory (arena and buffers), more than the limit of \
         {limit} bytes (this machine's memory); the largest value is {largest}"
    )]
    TooLarge {
        /// Bytes the executable would allocate.
        needed: u128,
        /// [`memory_limit`].
        limit: u128,
        /// The node with the largest buffer or scratch, and its size.
        largest: String,
    },
}

/// The most memory one executable may plan (arena, scratch and buffers), in bytes: the
/// machine's physical memory (`MemTotal` in `/proc/meminfo`), or 1 TiB where that cannot be
/// read. [`compile_native`] refuses a graph that needs more before allocating anything.
pub fn memory_limit() -> u128 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            let line = m.lines().find(|l| l.starts_with("MemTotal:"))?;
            let kib: u128 = line.split_whitespace().nth(1)?.parse().ok()?;
            Some(kib * 1024)
        })
        .unwrap_or(1 << 40)
}

/// Checks that the executable of `g` with memory plan `memory` fits in [`memory_limit`]:
/// the arena (values and kernel scratch) plus a buffer per leaf and output.
fn check_memory(
    g: &Graph,
    order: &[NodeId],
    memory: &MemoryPlan,
    opts: &CompileOptions,
) -> Result<(), CompileError> {
    let bytes = |id: NodeId| g[id].ty.shape.numel() as u128 * 4;
    let outputs: Vec<NodeId> = g.outputs().iter().map(|o| o.node).collect();
    let owned = order
        .iter()
        .copied()
        .filter(|&id| g[id].op.is_leaf())
        .chain(outputs);
    let needed = owned.map(bytes).sum::<u128>() + memory.arena_bytes as u128;
    let limit = memory_limit();
    if needed <= limit {
        return Ok(());
    }
    // the node whose value and kernel scratch are largest
    let largest = order
        .iter()
        .map(|&id| {
            (
                bytes(id) + scratch_bytes(g, id, opts, &HashMap::new()) as u128,
                id,
            )
        })
        .max()
        .map(|(b, id)| format!("{} ({b} bytes with its scratch)", describe(g, id)))
        .unwrap_or_default();
    Err(CompileError::TooLarge {
        needed,
        limit,
        largest,
    })
}

/// `%label (op: type) at FILE:LINE:COL`, for messages; the label is the one dumps print
/// (`%name`, or `%N` with `N` the position in the canonical order).
pub fn describe(g: &Graph, id: NodeId) -> String {
    let n = &g[id];
    let at = n
        .loc
        .as_ref()
        .map(|l| format!(" at {l}"))
        .unwrap_or_default();
    format!(
        "{} ({}: {}){at}",
        crate::verify::node_label(g, id),
        n.op.name(),
        n.ty
    )
}

/// The largest tensor compiled code handles, in bytes: offsets inside one tensor are 32-bit
/// immediates in the generated loads and stores.
pub const MAX_TENSOR_BYTES: usize = i32::MAX as usize;

/// Checks that node `id`'s value fits in one tensor of compiled code ([`MAX_TENSOR_BYTES`]);
/// `compile_native` checks every node, `gradlift run` its inputs before drawing their values.
pub fn check_tensor_size(g: &Graph, id: NodeId) -> Result<(), CompileError> {
    let ty = &g[id].ty;
    if ty
        .shape
        .checked_numel()
        .is_none_or(|e| e > MAX_TENSOR_BYTES / 4)
    {
        return Err(CompileError::Invalid {
            node: describe(g, id),
            message: format!(
                "{ty} is too large for compiled code (at most {MAX_TENSOR_BYTES} bytes per tensor)"
            ),
        });
    }
    Ok(())
}

/// Checks what the generated code relies on and returns the canonical order.
fn check(g: &Graph) -> Result<Vec<NodeId>, CompileError> {
    crate::verify::verify(g)?;
    // a verified graph has no cycle
    let order = g.topo_order().map_err(|_| CompileError::Invalid {
        node: g.name.clone(),
        message: "the graph has a cycle".into(),
    })?;
    for &id in &order {
        check_tensor_size(g, id)?;
    }
    Ok(order)
}

/// Scratch bytes the code of node `id` needs: for a reduction, the f64 running totals of a
/// long f32 sum (`lower::sum_scratch_bytes`); else by the rule of the kernel it calls
/// ([`kernels::Kernel::scratch`]): a GEMM's packing workspace (matmuls, with the Rust GEMM),
/// one image's patch matrix and the GEMM workspace (convolutions on the im2col path),
/// nothing for the other kernels and for ops that call none.
fn scratch_bytes(
    g: &Graph,
    id: NodeId,
    opts: &CompileOptions,
    scans: &HashMap<NodeId, lower::ScanCode>,
) -> usize {
    use kernels::{Kernel, Scratch};
    if let Some(bytes) = lower::sum_scratch_bytes(g, id) {
        return bytes;
    }
    if let Some(code) = scans.get(&id) {
        return code.scratch_bytes();
    }
    let n = &g[id];
    let ops = g.operands(id);
    let shape = |i: usize| &g[ops[i]].ty.shape;
    // the scratch-planning kernel the node's code calls, if any
    let kernel = match &n.op {
        Op::Matmul => Some(Kernel::Gemm),
        Op::Conv2d { .. } => Some(Kernel::Conv2d),
        Op::Conv2dInputGrad { .. } => Some(Kernel::Conv2dInputGrad),
        Op::Conv2dFilterGrad { .. } => Some(Kernel::Conv2dFilterGrad),
        Op::MaxPool2d { .. } => Some(Kernel::MaxPool2d),
        Op::MaxPool2dGrad { .. } => Some(Kernel::MaxPool2dGrad),
        Op::Softmax { .. } | Op::LogSoftmax { .. } => Some(Kernel::Softmax),
        Op::SoftmaxCrossEntropy => Some(Kernel::SoftmaxXent),
        Op::SparseSoftmaxCrossEntropy => Some(Kernel::SparseSoftmaxXent),
        Op::Fused(_) if lower::fused_matmul_dims(g, id).is_some() => Some(Kernel::Gemm),
        Op::Fused(_) if lower::fused_conv_geometry(g, id).is_some() => Some(Kernel::Conv2d),
        _ => None,
    };
    let Some(kernel) = kernel else {
        return 0;
    };
    match kernel.scratch() {
        Scratch::None => 0,
        Scratch::GemmPacking => {
            let mkn = match &n.op {
                Op::Fused(_) => lower::fused_matmul_dims(g, id),
                _ => {
                    let (a, b) = (shape(0).dims(), shape(1).dims());
                    Some((a[0], a[1], b[1]))
                }
            };
            match (opts.matmul, mkn) {
                (MatmulKernel::Gemm, Some((m, k, n))) => {
                    kernels::gemm_scratch_len(m, k, n, opts.threads) * 4
                }
                _ => 0,
            }
        }
        Scratch::Convolution => {
            let geom = match &n.op {
                Op::Conv2d { stride, padding } => {
                    lower::conv_geometry(shape(0), shape(1), *stride, *padding)
                }
                Op::Conv2dInputGrad {
                    stride,
                    padding,
                    shape: x,
                } => lower::conv_geometry(x, shape(1), *stride, *padding),
                Op::Conv2dFilterGrad {
                    stride, padding, ..
                } => lower::conv_geometry(shape(0), &n.ty.shape, *stride, *padding),
                _ => lower::fused_conv_geometry(g, id).ok_or_else(String::new),
            };
            geom.map_or(0, |g| kernels::conv_scratch_len(kernel, &g) * 4)
        }
    }
}

/// 2-D transposes read only by matmuls (not outputs or update sources): the GEMM call reads
/// their operand with swapped strides instead of a transposed copy.
fn foldable_transposes(g: &Graph, order: &[NodeId]) -> HashSet<NodeId> {
    let kept: HashSet<NodeId> = g
        .outputs()
        .iter()
        .map(|o| o.node)
        .chain(g.updates().iter().map(|u| u.value))
        .collect();
    order
        .iter()
        .copied()
        .filter(|&id| {
            matches!(&g[id].op, Op::Transpose { perm } if perm == &[1, 0])
                && !kept.contains(&id)
                && g.users(id).iter().all(|&u| {
                    matches!(g[u].op, Op::Matmul) || lower::fused_reads_only_in_matmul(g, u, id)
                })
        })
        .collect()
}

/// The memory plan of `g` compiled with `opts` ([`crate::passes::plan::plan_with`] given the
/// transposes this compilation folds into matmuls and every kernel's scratch space), and
/// those folded transposes. `order` is the canonical order.
fn plan_memory(
    g: &Graph,
    order: &[NodeId],
    opts: &CompileOptions,
    scans: &HashMap<NodeId, lower::ScanCode>,
) -> Result<(MemoryPlan, HashSet<NodeId>), CompileError> {
    let folded = if opts.matmul == MatmulKernel::Gemm {
        foldable_transposes(g, order)
    } else {
        Default::default()
    };
    let scratch_bytes = order
        .iter()
        .map(|&id| (id, scratch_bytes(g, id, opts, scans)))
        .filter(|&(_, b)| b > 0)
        .collect();
    let options = PlanOptions {
        folded_transposes: folded,
        scratch_bytes,
    };
    let memory =
        crate::passes::plan::plan_with(g, &options).map_err(|e| CompileError::Invalid {
            node: g.name.clone(),
            message: format!("the graph has a cycle through nodes {:?}", e.cycle),
        })?;
    debug_assert_eq!(memory.schedule, order, "one canonical order");
    Ok((memory, options.folded_transposes))
}

/// The memory plan [`compile_native`] uses for `g` with `opts`: its `arena_bytes` is the size of the
/// executable's arena ([`CompileReport::arena_bytes`]). It plans the graph as compiled: with
/// a batch-major scan, [`crate::scan::time_major`] of `g` (transposes added). Fails as [`compile_native`] does on a graph
/// it cannot check.
pub fn memory_plan(g: &Graph, opts: &CompileOptions) -> Result<MemoryPlan, CompileError> {
    let order = check(g)?;
    let time_major = crate::scan::time_major(g);
    let (g, order) = match &time_major {
        Some(tm) => (tm, check(tm)?),
        None => (g, order),
    };
    // the scans' scratch needs their bodies' plans: lowered into a module that is dropped
    let mut module = jit_module(opts)?;
    let scans = lower_scan_bodies(g, opts, &mut module, "plan", &order)?;
    // SAFETY: nothing of this module was finalized or called.
    unsafe { module.free_memory() };
    Ok(plan_memory(g, &order, opts, &scans)?.0)
}

/// A function built but not yet compiled: its body lowered into `module` (a JIT or an
/// object module, [`Backend`]), not yet defined there.
pub(crate) struct Built<M: Module> {
    pub module: M,
    pub ctx: Context,
    pub func: FuncId,
    pub plan: plan::Plan,
    pub order: Vec<NodeId>,
    pub lower_ms: f64,
    pub setup_ms: f64,
}

fn host_error(e: impl std::fmt::Display) -> CompileError {
    CompileError::Host(e.to_string())
}

/// Whether the host ISA has FMA (as `cranelift-native` detected it).
fn has_fma(module: &impl Module) -> bool {
    module
        .isa()
        .isa_flags()
        .iter()
        .any(|f| f.name == "has_fma" && f.as_bool() == Some(true))
}

/// The module one lowering goes into: "one lowering, two back ends". The function body is
/// built once, by [`build`], into either back end's `cranelift_module::Module`; only the
/// module's construction, the entry point's linkage and what happens after the definition
/// differ.
pub(crate) enum Backend<'a> {
    /// `cranelift-jit`: code in this process's memory, the kernels linked by address.
    Jit,
    /// `cranelift-object`: a relocatable object file exporting the entry point as `symbol`,
    /// the kernels left as undefined symbols (their names, [`kernels::Kernel::symbol`]).
    Object {
        /// The exported name of the entry point.
        symbol: &'a str,
    },
}

/// The host ISA with the flags every back end uses; `pic` asks for position-independent
/// code (object files: calls to the kernels through the GOT, linkable into a PIE).
fn host_isa(
    opts: &CompileOptions,
    pic: bool,
) -> Result<cranelift_codegen::isa::OwnedTargetIsa, CompileError> {
    let mut flags = settings::builder();
    let set = |f: &mut settings::Builder, k: &str, v: &str| f.set(k, v).map_err(host_error);
    set(&mut flags, "use_colocated_libcalls", "false")?;
    set(&mut flags, "is_pic", if pic { "true" } else { "false" })?;
    set(&mut flags, "opt_level", "none")?;
    set(
        &mut flags,
        "enable_verifier",
        if opts.verify { "true" } else { "false" },
    )?;
    cranelift_native::builder()
        .map_err(host_error)?
        .finish(settings::Flags::new(flags))
        .map_err(host_error)
}

/// A JIT module for the host with every kernel registered by address.
fn jit_module(opts: &CompileOptions) -> Result<JITModule, CompileError> {
    let mut jb = JITBuilder::with_isa(host_isa(opts, false)?, default_libcall_names());
    for k in kernels::Kernel::ALL {
        jb.symbol(k.symbol(), k.address());
    }
    Ok(JITModule::new(jb))
}

/// An object module for the host named after the graph (`name.o`).
fn object_module(opts: &CompileOptions, name: &str) -> Result<ObjectModule, CompileError> {
    let builder = ObjectBuilder::new(host_isa(opts, true)?, name, default_libcall_names())
        .map_err(host_error)?;
    Ok(ObjectModule::new(builder))
}

/// Builds the JIT back end's function (see [`lower_into`]).
fn build(g: &Graph, opts: &CompileOptions) -> Result<Built<JITModule>, CompileError> {
    let t0 = Instant::now();
    let order = check(g)?;
    let t_setup = Instant::now();
    let module = jit_module(opts)?;
    let setup_ms = t_setup.elapsed().as_secs_f64() * 1e3;
    let mut built = lower_into(g, opts, module, Backend::Jit, order)?;
    built.setup_ms = setup_ms;
    built.lower_ms = t0.elapsed().as_secs_f64() * 1e3 - setup_ms;
    Ok(built)
}

/// Plans `g` (`order`: its checked canonical order) and lowers it into ONE function of
/// `module`, declared with the backend's linkage; the kernels are declared as imports. The
/// caller defines the function (compiles it). Both back ends go through here, so a JIT
/// executable and an exported object file run the same code.
pub(crate) fn lower_into<M: Module>(
    g: &Graph,
    opts: &CompileOptions,
    mut module: M,
    backend: Backend<'_>,
    order: Vec<NodeId>,
) -> Result<Built<M>, CompileError> {
    let (name, linkage) = match backend {
        Backend::Jit => (format!("graph_{}", g.name), Linkage::Local),
        Backend::Object { symbol } => (symbol.to_string(), Linkage::Export),
    };
    let (ctx, func, plan) = lower_function(g, opts, &mut module, &name, linkage, &order)?;
    Ok(Built {
        module,
        ctx,
        func,
        plan,
        order,
        lower_ms: 0.0,
        setup_ms: 0.0,
    })
}

/// Compiles the body of every scan node of `g` (in `order`) into a function of `module`
/// of its own (`{name}_scan{N}`, local), defined at once: what the scan's loop calls once
/// per step, with the body's pointer table in the scan's scratch.
fn lower_scan_bodies<M: Module>(
    g: &Graph,
    opts: &CompileOptions,
    module: &mut M,
    name: &str,
    order: &[NodeId],
) -> Result<HashMap<NodeId, lower::ScanCode>, CompileError> {
    let mut scans = HashMap::new();
    for &id in order {
        let Op::Scan(body) = &g[id].op else {
            continue;
        };
        let invalid = |message: String| CompileError::Invalid {
            node: describe(g, id),
            message,
        };
        let operands = g.operands(id);
        let types: Vec<&crate::shape::TensorType> = operands.iter().map(|&o| &g[o].ty).collect();
        let params = body.param_types(&types).map_err(|e| invalid(e.0))?;
        let (bg, inputs) = body.to_graph(&params, &[]).map_err(invalid)?;
        let border = check(&bg)?;
        let bname = format!("{name}_scan{}", id.index());
        let (mut ctx, func, plan) =
            lower_function(&bg, opts, module, &bname, Linkage::Local, &border)?;
        if let Err(e) = module.define_function(func, &mut ctx) {
            return Err(cranelift_error(&bg, &ctx, e));
        }
        let sig = ctx.func.signature.clone();
        let code = lower::ScanCode::new(&bg, &inputs, body, func.as_u32(), sig, plan.layout)
            .map_err(invalid)?;
        module.clear_context(&mut ctx);
        scans.insert(id, code);
    }
    Ok(scans)
}

/// Plans `g` and lowers it into one function `name` of `module` (its scan bodies first, as
/// functions of their own): the context holding the function, its id and its plan.
fn lower_function<M: Module>(
    g: &Graph,
    opts: &CompileOptions,
    module: &mut M,
    name: &str,
    linkage: Linkage,
    order: &[NodeId],
) -> Result<(Context, FuncId, plan::Plan), CompileError> {
    // scans over a non-leading axis run time-major, between transposes
    let time_major = crate::scan::time_major(g);
    let (g, order) = match &time_major {
        Some(tm) => (tm, check(tm)?),
        None => (g, order.to_vec()),
    };
    let order = &order[..];
    let scans = lower_scan_bodies(g, opts, module, name, order)?;
    let (memory, folded) = plan_memory(g, order, opts, &scans)?;
    check_memory(g, order, &memory, opts)?;
    let plan = plan::locate(g, memory, folded);
    let ptr = module.target_config().pointer_type();
    let mut ctx = module.make_context();
    ctx.func.signature.params.push(AbiParam::new(ptr));
    let func = module
        .declare_function(name, linkage, &ctx.func.signature)
        .map_err(host_error)?;
    ctx.func.name = UserFuncName::user(0, func.as_u32());
    let mut kernel_decls = HashMap::new();
    for k in kernels::Kernel::ALL {
        let (params, returns) = lower::kernel_signature(k);
        let mut sig = module.make_signature();
        sig.params.extend(params.into_iter().map(AbiParam::new));
        sig.returns.extend(returns.into_iter().map(AbiParam::new));
        let id = module
            .declare_function(k.symbol(), Linkage::Import, &sig)
            .map_err(host_error)?;
        kernel_decls.insert(k, (id.as_u32(), sig));
    }

    let fma = has_fma(&*module);
    let mut fctx = FunctionBuilderContext::new();
    {
        let fb = FunctionBuilder::new(&mut ctx.func, &mut fctx);
        let slots = plan.layout.slot_count();
        let mut lw = lower::Lowerer::new(fb, slots, kernel_decls, fma, opts.matmul, opts.threads);
        lw.scans = scans;
        lw.body_kernels = opts.body_kernels;
        for &id in order {
            lw.node(g, &plan, id)
                .map_err(|message| CompileError::Lowering {
                    node: describe(g, id),
                    message,
                })?;
        }
        lw.b.set_srcloc(cranelift_codegen::ir::SourceLoc::default());
        // outputs first (they see this call's values), then updates
        for (i, o) in g.outputs().iter().enumerate() {
            let ty = &g[o.node].ty;
            let dst = plan::Loc {
                slot: plan.layout.index(Slot::Output(i)),
                offset: 0,
            };
            lw.copy(dst, plan.locs[&o.node], ty.dtype, &ty.shape);
        }
        for (u, staged) in g.updates().iter().zip(&plan.staged) {
            if let Some(s) = staged {
                let ty = &g[u.value].ty;
                lw.copy(*s, plan.locs[&u.value], ty.dtype, &ty.shape);
            }
        }
        for (u, staged) in g.updates().iter().zip(&plan.staged) {
            let ty = &g[u.value].ty;
            let src = staged.unwrap_or(plan.locs[&u.value]);
            lw.copy(plan.locs[&u.target], src, DType::F32, &ty.shape);
        }
        lw.finish(module.target_config());
    }
    Ok((ctx, func, plan))
}

/// Maps a Cranelift error to a [`CompileError`], naming the node of the failing instruction.
fn cranelift_error(g: &Graph, ctx: &Context, e: ModuleError) -> CompileError {
    let node_of = |loc: cranelift_codegen::ir::SourceLoc| {
        if loc.is_default() {
            return None;
        }
        g.node_ids()
            .into_iter()
            .find(|id| id.index() as u32 == loc.bits())
            .map(|id| describe(g, id))
    };
    match e {
        ModuleError::Compilation(CodegenError::Verifier(errs)) => {
            let node = errs.0.iter().find_map(|err| match err.location {
                cranelift_codegen::ir::entities::AnyEntity::Inst(inst) => {
                    node_of(ctx.func.srcloc(inst))
                }
                _ => None,
            });
            CompileError::Cranelift {
                node,
                message: format!("verifier: {errs}"),
            }
        }
        other => CompileError::Cranelift {
            node: None,
            message: other.to_string(),
        },
    }
}

/// A compiled function: native code, the layout of the pointer table it reads and where
/// compile time went. Owns the JIT memory holding the code (freed on drop);
/// [`crate::runtime::Executable`] wraps it with the buffers its table points at.
pub struct NativeCode {
    module: Option<JITModule>,
    entry: unsafe extern "C" fn(*const *mut u8),
    /// What each slot of the table the entry point reads holds.
    pub layout: plan::Layout,
    /// Where compile time went (`init_ms` is the caller's to fill).
    pub report: CompileReport,
}

// SAFETY: the module only keeps the finalized, immutable code alive and frees it on drop; it
// holds no thread-local state, and the code only touches the buffers passed to each call.
unsafe impl Send for NativeCode {}

impl NativeCode {
    /// The entry point: `fn(table)`, `table` laid out as [`NativeCode::layout`] says.
    pub fn entry(&self) -> unsafe extern "C" fn(*const *mut u8) {
        self.entry
    }
}

impl Drop for NativeCode {
    fn drop(&mut self) {
        if let Some(m) = self.module.take() {
            // SAFETY: the entry point is only reachable through `self` (or copies the owner
            // keeps no longer than `self`), so no call of this code can start after the drop.
            unsafe { m.free_memory() };
        }
    }
}

/// Compiles `g` into native code: one function for the whole graph
/// ([`crate::runtime::compile`] wraps it into an executable).
pub fn compile_native(g: &Graph, opts: &CompileOptions) -> Result<NativeCode, CompileError> {
    let Built {
        mut module,
        mut ctx,
        func,
        plan,
        order,
        lower_ms,
        setup_ms,
    } = build(g, opts)?;
    let clif_insts = ctx.func.dfg.num_insts();
    let t1 = Instant::now();
    if let Err(e) = module.define_function(func, &mut ctx) {
        let err = cranelift_error(g, &ctx, e);
        // SAFETY: no function of this module was finalized or called.
        unsafe { module.free_memory() };
        return Err(err);
    }
    let code_bytes = ctx
        .compiled_code()
        .map(|c| c.code_buffer().len())
        .unwrap_or(0);
    module.clear_context(&mut ctx);
    if let Err(e) = module.finalize_definitions() {
        // SAFETY: as above.
        unsafe { module.free_memory() };
        return Err(CompileError::Cranelift {
            node: None,
            message: e.to_string(),
        });
    }
    let code = module.get_finalized_function(func);
    // SAFETY: `code` is the finalized function built with signature `fn(*const *mut u8)`.
    let entry =
        unsafe { std::mem::transmute::<*const u8, unsafe extern "C" fn(*const *mut u8)>(code) };
    let report = CompileReport::of_function(
        &plan,
        order.len(),
        [lower_ms, setup_ms, t1.elapsed().as_secs_f64() * 1e3],
        clif_insts,
        code_bytes,
    );
    Ok(NativeCode {
        module: Some(module),
        entry,
        layout: plan.layout,
        report,
    })
}

/// A graph compiled ahead of time: a relocatable object file ([`compile_object`]) holding
/// the same function [`compile_native`] compiles, exported under a symbol.
pub struct ObjectCode {
    /// The object file (ELF on Linux, Mach-O on macOS, COFF on Windows: the host's format),
    /// for the host ISA (the features `cranelift-native` detected on this machine).
    pub bytes: Vec<u8>,
    /// The exported entry point: `void symbol(void *const *table)`.
    pub symbol: String,
    /// What each slot of the table the entry point reads holds.
    pub layout: plan::Layout,
    /// Where compile time went (`setup_ms` covers the object module; `init_ms` is 0).
    pub report: CompileReport,
}

/// Whether `s` is a C identifier (what an exported symbol must be to be declared in C).
pub fn is_c_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Compiles `g` into a relocatable object file exporting the entry point as `symbol` (a C
/// identifier other than a kernel's symbol): the function [`compile_native`] builds, lowered by the same code into a
/// `cranelift-object` module instead of the JIT's ("one lowering, two back ends"). The
/// object imports the runtime kernels by their symbols ([`kernels::Kernel::symbol`]), which
/// the caller links (the kernels are `#[no_mangle]` C functions of this crate).
pub fn compile_object(
    g: &Graph,
    opts: &CompileOptions,
    symbol: &str,
) -> Result<ObjectCode, CompileError> {
    if !is_c_identifier(symbol) {
        return Err(CompileError::Invalid {
            node: g.name.clone(),
            message: format!(
                "the symbol {symbol:?} is not a C identifier (letters, digits and `_`, not \
                 starting with a digit)"
            ),
        });
    }
    if let Some(k) = kernels::Kernel::ALL.iter().find(|k| k.symbol() == symbol) {
        return Err(CompileError::Invalid {
            node: g.name.clone(),
            message: format!(
                "the symbol {symbol:?} is the name of a runtime kernel ({k:?}) the code calls; \
                 choose another"
            ),
        });
    }
    let t0 = Instant::now();
    let order = check(g)?;
    let t_setup = Instant::now();
    let module = object_module(opts, &g.name)?;
    let setup_ms = t_setup.elapsed().as_secs_f64() * 1e3;
    let Built {
        mut module,
        mut ctx,
        func,
        plan,
        order,
        ..
    } = lower_into(g, opts, module, Backend::Object { symbol }, order)?;
    let lower_ms = t0.elapsed().as_secs_f64() * 1e3 - setup_ms;
    let clif_insts = ctx.func.dfg.num_insts();
    let t1 = Instant::now();
    module
        .define_function(func, &mut ctx)
        .map_err(|e| cranelift_error(g, &ctx, e))?;
    let code_bytes = ctx
        .compiled_code()
        .map(|c| c.code_buffer().len())
        .unwrap_or(0);
    module.clear_context(&mut ctx);
    let bytes = module
        .finish()
        .emit()
        .map_err(|e| CompileError::Cranelift {
            node: None,
            message: format!("cannot write the object file: {e}"),
        })?;
    let report = CompileReport::of_function(
        &plan,
        order.len(),
        [lower_ms, setup_ms, t1.elapsed().as_secs_f64() * 1e3],
        clif_insts,
        code_bytes,
    );
    Ok(ObjectCode {
        bytes,
        symbol: symbol.to_string(),
        layout: plan.layout,
        report,
    })
}

/// What [`listing`] prints of the function [`compile_native`] builds for a graph.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Listing {
    /// The Cranelift IR as lowered from the graph, before Cranelift compiles it.
    Clif,
    /// The Cranelift IR Cranelift compiles: after its own IR passes at the JIT's settings
    /// (`opt_level = none`: unreachable blocks removed, constant block parameters removed,
    /// value aliases resolved), before instruction selection.
    OptimizedClif,
    /// The machine code Cranelift emitted, as its disassembly (the host ISA's instructions
    /// after instruction selection and register allocation, printed by Cranelift itself: no
    /// external disassembler), one instruction a line, with block labels.
    Asm,
}

/// The Cranelift IR of the function [`compile_native`] would build for `g`, as text, after a comment
/// header naming the pointer-table slots and the runtime kernels (`u0:N`) it calls
/// ([`listing`] with [`Listing::Clif`]).
pub fn clif(g: &Graph, opts: &CompileOptions) -> Result<String, CompileError> {
    listing(g, opts, Listing::Clif)
}

/// The function [`compile_native`] builds for `g` with `opts`, as `what` says (its IR before
/// or after Cranelift's IR passes, or its machine code), after a comment header naming the
/// pointer-table slots and the runtime kernels (`u0:N`) it calls. The code is compiled as
/// [`compile_native`] compiles it (same ISA and flags; compilation is deterministic), then
/// freed without being run.
pub fn listing(g: &Graph, opts: &CompileOptions, what: Listing) -> Result<String, CompileError> {
    let Built {
        mut module,
        mut ctx,
        func,
        plan: p,
        order,
        ..
    } = build(g, opts)?;
    let comment = if what == Listing::Asm { "#" } else { ";" };
    let name = |id: NodeId| {
        g[id]
            .name
            .clone()
            .unwrap_or_else(|| format!("#{}", id.index()))
    };
    let lay = &p.layout;
    let mut slots: Vec<String> = Vec::with_capacity(lay.slot_count());
    lay.for_each_slot(|s| {
        slots.push(match s {
            Slot::Input(i) => format!("input {}", name(lay.inputs[i])),
            Slot::Param(i) => format!("param {}", name(lay.params[i])),
            Slot::State(i) => format!("state {}", name(lay.states[i])),
            Slot::Const(i) => format!("const {}", g[lay.consts[i]].ty),
            Slot::Output(i) => format!("output {}", g.outputs()[i].name),
            Slot::Arena => format!("arena {} bytes", lay.arena_bytes),
        })
    });
    let mut text = format!(
        "{comment} graph {}: {} nodes in one function fn(table), table[i] at offset 8*i:\n",
        g.name,
        order.len()
    );
    for (i, s) in slots.iter().enumerate() {
        text.push_str(&format!("{comment}   table[{i}] = {s}\n"));
    }
    let kernels: Vec<String> = kernels::Kernel::ALL
        .iter()
        .enumerate()
        .map(|(i, k)| format!("u0:{} = {}", i + 1, k.symbol()))
        .collect();
    text.push_str(&format!(
        "{comment} runtime kernels: {}\n",
        kernels.join(", ")
    ));
    let body = match what {
        Listing::Clif => {
            text.push_str("; @NNNN before an instruction: the raw index (hexadecimal) of the graph node it belongs to\n");
            Ok(ctx.func.display().to_string())
        }
        Listing::OptimizedClif | Listing::Asm => {
            ctx.set_disasm(what == Listing::Asm);
            match module.define_function(func, &mut ctx) {
                Err(e) => Err(cranelift_error(g, &ctx, e)),
                Ok(()) if what == Listing::OptimizedClif => {
                    text.push_str("; after Cranelift's IR passes (opt_level none); @NNNN before an instruction: the raw index (hexadecimal) of the graph node it belongs to\n");
                    Ok(ctx.func.display().to_string())
                }
                Ok(()) => {
                    let code = ctx.compiled_code();
                    let bytes = code.map_or(0, |c| c.code_buffer().len());
                    text.push_str(&format!(
                        "# {} machine code, {bytes} bytes, as Cranelift disassembles it\n",
                        module.isa().triple().architecture
                    ));
                    code.and_then(|c| c.vcode.clone())
                        .ok_or_else(|| CompileError::Cranelift {
                            node: None,
                            message: "Cranelift returned no disassembly".into(),
                        })
                }
            }
        }
    };
    // SAFETY: no function of this module was finalized or called.
    unsafe { module.free_memory() };
    text.push_str(&body?);
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shape::TensorType;
    use cranelift_codegen::ir::entities::AnyEntity;
    use cranelift_codegen::verifier::{VerifierError, VerifierErrors};

    /// A verifier error on an instruction is reported with the node the instruction lowers.
    #[test]
    fn cranelift_errors_name_the_node_of_the_instruction() {
        let mut g = Graph::new("named");
        let x = g.input("x", TensorType::f32([3])).unwrap();
        let y = g.relu(x).unwrap();
        g.set_name(y, "activation").unwrap();
        g.add_output("y", y).unwrap();
        let built = build(&g, &CompileOptions::default()).unwrap();
        let func = &built.ctx.func;
        let inst = func
            .layout
            .blocks()
            .flat_map(|b| func.layout.block_insts(b))
            .find(|&i| func.srcloc(i).bits() == y.index() as u32)
            .expect("an instruction of the relu");
        let errs = VerifierErrors(vec![VerifierError {
            location: AnyEntity::Inst(inst),
            context: None,
            message: "made-up problem".into(),
        }]);
        let err = cranelift_error(
            &g,
            &built.ctx,
            ModuleError::Compilation(CodegenError::Verifier(errs)),
        );
        let msg = err.to_string();
        assert!(msg.contains("in %activation (relu: f32[3])"), "{msg}");
        assert!(msg.contains("made-up problem"), "{msg}");
        // SAFETY: nothing was defined or called.
        unsafe { built.module.free_memory() };
    }
}
