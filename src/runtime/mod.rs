//! The safe entry point to compiled graphs: [`Executable`] owns the native code, the params
//! and state (kept across calls), constants, output buffers and the arena of intermediates.
//! [`Executable::run`] takes host tensors by input name, checks every one (name, dtype, shape,
//! buffer length) before any native code runs, calls the one native function and returns the
//! outputs by name. [`HostTensor`] is the plain data type going in and out.
//!
//! For loops that call a step many times, an executable also owns one buffer per input:
//! fill it in place ([`Executable::input_f32_mut`], [`Executable::input_i32_mut`]) and call
//! [`Executable::run_bound`], which checks nothing per call (the buffers cannot change
//! type) and allocates nothing; the outputs are read in place ([`Executable::outputs`]).
//!
//! Native code runs with flush-to-zero and denormals-are-zero ([`fpenv`]); a training step
//! split along its batch over threads is a [`sharded::ShardedStep`] on a [`pool::Pool`].

pub mod fpenv;
pub mod pool;
pub mod sharded;

use crate::codegen::plan::{Layout, Slot, ALIGN};
use crate::codegen::{compile_native, CompileError, CompileOptions, CompileReport, NativeCode};
use crate::graph::Graph;
use crate::op::{Literal, Op};
use crate::shape::{DType, Shape, TensorType};
use std::alloc::{alloc_zeroed, dealloc, handle_alloc_error};
use std::fmt;

/// Elements of a host tensor.
#[derive(Clone, Debug, PartialEq)]
pub enum TensorData {
    /// `f32` elements.
    F32(Vec<f32>),
    /// `i32` elements.
    I32(Vec<i32>),
}

/// Tensors by name, in declaration order (params, state, outputs).
pub type NamedTensors = [(String, HostTensor)];

/// A tensor in host memory: a shape and row-major elements. The constructors do not check
/// that the length matches the shape; [`Executable::run`] does.
#[derive(Clone, Debug, PartialEq)]
pub struct HostTensor {
    /// The shape.
    pub shape: Shape,
    /// The elements, row-major.
    pub data: TensorData,
}

impl HostTensor {
    /// An f32 tensor.
    pub fn f32(shape: impl Into<Shape>, data: Vec<f32>) -> HostTensor {
        HostTensor {
            shape: shape.into(),
            data: TensorData::F32(data),
        }
    }

    /// An i32 tensor.
    pub fn i32(shape: impl Into<Shape>, data: Vec<i32>) -> HostTensor {
        HostTensor {
            shape: shape.into(),
            data: TensorData::I32(data),
        }
    }

    /// A zero tensor of type `ty`.
    pub fn zeros(ty: &TensorType) -> HostTensor {
        let n = ty.shape.numel();
        match ty.dtype {
            DType::F32 => HostTensor::f32(ty.shape.clone(), vec![0.0; n]),
            DType::I32 => HostTensor::i32(ty.shape.clone(), vec![0; n]),
        }
    }

    /// A tensor of type `ty` from f64 values (rounded to f32, or truncated to i32).
    pub fn from_f64(ty: &TensorType, v: &[f64]) -> HostTensor {
        match ty.dtype {
            DType::F32 => HostTensor::f32(ty.shape.clone(), v.iter().map(|&x| x as f32).collect()),
            DType::I32 => HostTensor::i32(ty.shape.clone(), v.iter().map(|&x| x as i32).collect()),
        }
    }

    /// The element type.
    pub fn dtype(&self) -> DType {
        match self.data {
            TensorData::F32(_) => DType::F32,
            TensorData::I32(_) => DType::I32,
        }
    }

    /// The dtype and shape.
    pub fn ty(&self) -> TensorType {
        TensorType::new(self.dtype(), self.shape.clone())
    }

    /// Number of elements held (which may differ from the shape's element count).
    pub fn len(&self) -> usize {
        match &self.data {
            TensorData::F32(v) => v.len(),
            TensorData::I32(v) => v.len(),
        }
    }

    /// Whether no elements are held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The f32 elements, if f32.
    pub fn as_f32(&self) -> Option<&[f32]> {
        match &self.data {
            TensorData::F32(v) => Some(v),
            TensorData::I32(_) => None,
        }
    }

    /// The i32 elements, if i32.
    pub fn as_i32(&self) -> Option<&[i32]> {
        match &self.data {
            TensorData::I32(v) => Some(v),
            TensorData::F32(_) => None,
        }
    }

    /// The elements as f64 (i32 converted exactly).
    pub fn to_f64(&self) -> Vec<f64> {
        match &self.data {
            TensorData::F32(v) => v.iter().map(|&x| x as f64).collect(),
            TensorData::I32(v) => v.iter().map(|&x| x as f64).collect(),
        }
    }

    fn as_ptr(&self) -> *mut u8 {
        match &self.data {
            TensorData::F32(v) => v.as_ptr() as *mut u8,
            TensorData::I32(v) => v.as_ptr() as *mut u8,
        }
    }

    fn as_mut_ptr(&mut self) -> *mut u8 {
        match &mut self.data {
            TensorData::F32(v) => v.as_mut_ptr() as *mut u8,
            TensorData::I32(v) => v.as_mut_ptr() as *mut u8,
        }
    }

    /// Checks that this tensor can stand for a value of type `ty` called `name`.
    fn check(&self, name: &str, ty: &TensorType) -> Result<(), RunError> {
        if self.dtype() != ty.dtype {
            return Err(RunError::WrongDType {
                name: name.into(),
                expected: ty.clone(),
                found: self.dtype(),
            });
        }
        if self.shape != ty.shape {
            return Err(RunError::WrongShape {
                name: name.into(),
                expected: ty.clone(),
                found: self.shape.clone(),
            });
        }
        if self.len() != ty.shape.numel() {
            return Err(RunError::WrongLength {
                name: name.into(),
                shape: ty.shape.clone(),
                expected: ty.shape.numel(),
                found: self.len(),
            });
        }
        Ok(())
    }
}

/// Why a call was refused (no native code ran).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RunError {
    /// An input the graph declares was not given.
    #[error("missing input {name:?} of type {expected}")]
    MissingInput {
        /// The input's name.
        name: String,
        /// Its type.
        expected: TensorType,
    },
    /// A tensor was given under a name that is not an input (or param) of the graph.
    #[error("unknown {kind} {name:?}; the graph's {kind}s are: {known}")]
    Unknown {
        /// `input`, `param` or `state`.
        kind: &'static str,
        /// The name given.
        name: String,
        /// The names the graph has, comma-separated.
        known: String,
    },
    /// The same input was given twice.
    #[error("input {name:?} is given more than once")]
    Duplicate {
        /// The input's name.
        name: String,
    },
    /// Wrong element type.
    #[error("{name:?}: expected {expected}, found a tensor of dtype {found}")]
    WrongDType {
        /// The tensor's name.
        name: String,
        /// The expected type.
        expected: TensorType,
        /// The dtype given.
        found: DType,
    },
    /// Wrong shape.
    #[error("{name:?}: expected {expected}, found shape {found}")]
    WrongShape {
        /// The tensor's name.
        name: String,
        /// The expected type.
        expected: TensorType,
        /// The shape given.
        found: Shape,
    },
    /// The buffer does not hold as many elements as the shape says.
    #[error("{name:?}: shape {shape} needs {expected} elements, the buffer holds {found}")]
    WrongLength {
        /// The tensor's name.
        name: String,
        /// The shape.
        shape: Shape,
        /// Elements the shape needs.
        expected: usize,
        /// Elements held.
        found: usize,
    },
}

/// The arena: zeroed, cache-line-aligned memory (allocated zeroed, so untouched pages cost
/// nothing until the first call writes them).
struct Arena {
    ptr: *mut u8,
    layout: Option<std::alloc::Layout>,
}

// SAFETY: the arena is plain memory owned by one executable; `&mut` access is required to
// hand its pointer to native code.
unsafe impl Send for Arena {}

impl Arena {
    fn new(bytes: usize) -> Arena {
        match std::alloc::Layout::from_size_align(bytes, ALIGN) {
            Ok(layout) if bytes > 0 => {
                // SAFETY: the layout has a non-zero size.
                let ptr = unsafe { alloc_zeroed(layout) };
                if ptr.is_null() {
                    handle_alloc_error(layout);
                }
                Arena {
                    ptr,
                    layout: Some(layout),
                }
            }
            _ => Arena {
                ptr: std::ptr::NonNull::<u64>::dangling().as_ptr() as *mut u8,
                layout: None,
            },
        }
    }
}

impl Drop for Arena {
    fn drop(&mut self) {
        if let Some(l) = self.layout {
            // SAFETY: allocated in `Arena::new` with this layout.
            unsafe { dealloc(self.ptr, l) };
        }
    }
}

/// The pointer table handed to native code, kept between calls so a call allocates nothing.
struct Table(Vec<*mut u8>);

impl Table {
    /// Refills the table in `layout`'s slot order, slot `s` pointing at `at(s)`.
    #[inline]
    fn fill(&mut self, layout: &Layout, mut at: impl FnMut(Slot) -> *mut u8) {
        let t = &mut self.0;
        t.clear();
        layout.for_each_slot(|s| t.push(at(s)));
    }
}

// SAFETY: the table only holds addresses of buffers owned by the same executable or
// borrowed for the duration of one call; it is rebuilt before every call.
unsafe impl Send for Table {}

/// A compiled graph: call [`Executable::run`] as often as needed. Params and state persist
/// across calls and change only through the graph's declared updates or [`Executable::set_param`].
pub struct Executable {
    code: NativeCode,
    inputs: Vec<(String, TensorType)>,
    /// One owned buffer per input, for [`Executable::run_bound`].
    bound: Vec<HostTensor>,
    table: Table,
    /// The table holds the bound inputs and the current buffers (no buffer was replaced
    /// since it was filled), so [`Executable::run_bound`] can call without filling it.
    table_is_bound: bool,
    params: Vec<(String, HostTensor)>,
    states: Vec<(String, HostTensor)>,
    consts: Vec<HostTensor>,
    outputs: Vec<(String, HostTensor)>,
    arena: Arena,
    poison: bool,
    flush_denormals: bool,
}

impl fmt::Debug for Executable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Executable")
            .field("inputs", &self.inputs)
            .field(
                "params",
                &self
                    .params
                    .iter()
                    .map(|(n, t)| (n, t.ty()))
                    .collect::<Vec<_>>(),
            )
            .field(
                "outputs",
                &self
                    .outputs
                    .iter()
                    .map(|(n, t)| (n, t.ty()))
                    .collect::<Vec<_>>(),
            )
            .field("report", &self.code.report)
            .finish()
    }
}

/// The value leaf `id` starts with: a param's or state's initializer, a constant's value, zeros for
/// anything else (also what [`crate::aot`] writes as the initial values of an exported step).
pub(crate) fn initial(g: &Graph, id: crate::graph::NodeId) -> HostTensor {
    let n = &g[id];
    let v = match &n.op {
        Op::Param { init } | Op::State { init } => crate::init::values(init, &n.ty.shape),
        Op::Const {
            value: Literal::Splat(x),
        } => vec![*x; n.ty.shape.numel()],
        Op::Const {
            value: Literal::Dense(v),
        } => v.clone(),
        _ => vec![0.0; n.ty.shape.numel()],
    };
    HostTensor::from_f64(&n.ty, &v)
}

/// Compiles `g` ([`crate::codegen::compile_native`]) into an [`Executable`] that owns its
/// buffers: params and state from their initializers, consts, outputs and the arena.
pub fn compile(g: &Graph, opts: &CompileOptions) -> Result<Executable, CompileError> {
    compile_with(g, opts, true)
}

/// [`compile`]; with `own_leaves` false the executable allocates no buffers for its inputs,
/// params and state (a caller that binds them to its own buffers, as
/// [`sharded::ShardedStep`] does, never reads them).
pub(crate) fn compile_with(
    g: &Graph,
    opts: &CompileOptions,
    own_leaves: bool,
) -> Result<Executable, CompileError> {
    let code = compile_native(g, opts)?;
    let t = std::time::Instant::now();
    let mut exe = Executable::new(g, code, opts, own_leaves);
    exe.code.report.init_ms = t.elapsed().as_secs_f64() * 1e3;
    Ok(exe)
}

impl Executable {
    /// Wraps compiled code for `g` with its buffers (see [`compile_with`]).
    fn new(g: &Graph, code: NativeCode, opts: &CompileOptions, own_leaves: bool) -> Executable {
        let name = |id| g[id].name.clone().unwrap_or_default();
        // a leaf the caller binds to its own buffer: its shape, no elements
        let leaf = |id: crate::graph::NodeId,
                    value: fn(&Graph, crate::graph::NodeId) -> HostTensor| {
            if own_leaves {
                value(g, id)
            } else {
                let ty = &g[id].ty;
                match ty.dtype {
                    DType::F32 => HostTensor::f32(ty.shape.clone(), Vec::new()),
                    DType::I32 => HostTensor::i32(ty.shape.clone(), Vec::new()),
                }
            }
        };
        let lay = &code.layout;
        Executable {
            inputs: lay
                .inputs
                .iter()
                .map(|&id| (name(id), g[id].ty.clone()))
                .collect(),
            bound: lay
                .inputs
                .iter()
                .map(|&id| leaf(id, |g, id| HostTensor::zeros(&g[id].ty)))
                .collect(),
            table: Table(Vec::with_capacity(lay.slot_count())),
            table_is_bound: false,
            params: lay
                .params
                .iter()
                .map(|&id| (name(id), leaf(id, initial)))
                .collect(),
            states: lay
                .states
                .iter()
                .map(|&id| (name(id), leaf(id, initial)))
                .collect(),
            consts: lay.consts.iter().map(|&id| initial(g, id)).collect(),
            outputs: g
                .outputs()
                .iter()
                .map(|o| (o.name.clone(), HostTensor::zeros(&g[o.node].ty)))
                .collect(),
            arena: Arena::new(lay.arena_bytes),
            poison: opts.poison,
            flush_denormals: opts.flush_denormals,
            code,
        }
    }

    /// Runs the graph once on `inputs` (every input of the graph, by name, exactly once) and
    /// returns the outputs by name, in declaration order. Params and state updated by the
    /// graph keep their new values. Nothing runs when an input is missing, unknown, given
    /// twice, or has the wrong dtype, shape or buffer length.
    pub fn run(
        &mut self,
        inputs: &[(&str, HostTensor)],
    ) -> Result<Vec<(String, HostTensor)>, RunError> {
        check_inputs(self.inputs.iter().map(|(n, t)| (n.as_str(), t)), inputs)?;
        let ptrs: Vec<*mut u8> = (self.inputs.iter())
            .map(|(name, _)| {
                inputs
                    .iter()
                    .find(|(n, _)| n == name)
                    .map_or(std::ptr::null_mut(), |(_, t)| t.as_ptr())
            })
            .collect();
        // SAFETY: every input was checked to have the dtype, shape and length the code was
        // compiled for (so `find` found each), and stays borrowed (only read) until the call
        // returns.
        self.table_is_bound = false;
        // SAFETY: as above.
        unsafe { self.fill(|i| ptrs[i]) };
        // SAFETY: the table was just filled with the checked inputs.
        unsafe { self.call() };
        Ok(self.outputs.clone())
    }

    /// Runs the graph once on the bound input buffers (see [`Executable::input_f32_mut`]);
    /// allocates nothing. The outputs are read with [`Executable::outputs`] or
    /// [`Executable::output`].
    pub fn run_bound(&mut self) {
        if !self.table_is_bound {
            let mut bound = std::mem::take(&mut self.bound);
            // SAFETY: bound buffers were made with the input types and can only be written
            // element for element (their length, dtype and address cannot change).
            unsafe { self.fill(|i| bound[i].as_mut_ptr()) };
            self.bound = bound;
            self.table_is_bound = true;
        }
        // SAFETY: the table holds the bound inputs and every buffer of this executable (a
        // buffer replaced since, by `set_param` or `set_state`, cleared `table_is_bound`).
        unsafe { self.call() };
    }

    /// Fills the table from the layout: input `i` at `input(i)`, every other slot at this
    /// executable's own buffer.
    ///
    /// # Safety
    /// `input(i)` points to a buffer of input `i`'s type, valid for every call made with this
    /// table.
    unsafe fn fill(&mut self, mut input: impl FnMut(usize) -> *mut u8) {
        let mut table = std::mem::replace(&mut self.table, Table(Vec::new()));
        table.fill(&self.code.layout, |s| match s {
            Slot::Input(i) => input(i),
            Slot::Param(i) => self.params[i].1.as_mut_ptr(),
            Slot::State(i) => self.states[i].1.as_mut_ptr(),
            Slot::Const(i) => self.consts[i].as_mut_ptr(),
            Slot::Output(i) => self.outputs[i].1.as_mut_ptr(),
            Slot::Arena => self.arena.ptr,
        });
        self.table = table;
    }

    /// Calls the native function on the table (with flush-to-zero and denormals-are-zero
    /// set, unless compiled with `flush_denormals: false`).
    ///
    /// # Safety
    /// The table was filled ([`Executable::fill`]) with inputs still valid, and no buffer of
    /// this executable was replaced since.
    unsafe fn call(&mut self) {
        if self.poison {
            self.fill_with_nan();
        }
        let _fp = self.flush_denormals.then(fpenv::FlushDenormals::enter);
        // SAFETY: params, state, consts, outputs and the arena are owned buffers of the
        // planned sizes, `&mut self` gives the call exclusive access to them, and the caller
        // vouches for the table.
        unsafe { (self.code.entry())(self.table.0.as_ptr()) };
    }

    /// The bound buffer of f32 input `name`: write a call's data here, then call
    /// [`Executable::run_bound`].
    pub fn input_f32_mut(&mut self, name: &str) -> Result<&mut [f32], RunError> {
        let i = self.input_index(name)?;
        f32_mut(name, &mut self.bound[i])
    }

    /// The bound buffer of i32 input `name` (see [`Executable::input_f32_mut`]).
    pub fn input_i32_mut(&mut self, name: &str) -> Result<&mut [i32], RunError> {
        let i = self.input_index(name)?;
        i32_mut(name, &mut self.bound[i])
    }

    fn input_index(&self, name: &str) -> Result<usize, RunError> {
        self.inputs
            .iter()
            .position(|(n, _)| n == name)
            .ok_or_else(|| RunError::Unknown {
                kind: "input",
                name: name.to_string(),
                known: names(self.inputs.iter().map(|(n, _)| n.as_str())),
            })
    }

    /// The bound buffer of input `name` as last written (see [`Executable::input_f32_mut`]).
    pub fn bound_input(&self, name: &str) -> Option<&HostTensor> {
        let i = self.inputs.iter().position(|(n, _)| n == name)?;
        self.bound.get(i)
    }

    /// The params and the state with their current values, borrowed, each in declaration
    /// order (nothing is copied).
    pub fn leaves(&self) -> (&NamedTensors, &NamedTensors) {
        (&self.params, &self.states)
    }

    /// The outputs of the last call, by name, in declaration order.
    pub fn outputs(&self) -> &[(String, HostTensor)] {
        &self.outputs
    }

    /// Output `name` of the last call.
    pub fn output(&self, name: &str) -> Option<&HostTensor> {
        self.outputs.iter().find(|(n, _)| n == name).map(|(_, t)| t)
    }

    /// All-ones bits (NaN as f32, -1 as i32) in the arena and every output buffer.
    fn fill_with_nan(&mut self) {
        let bytes = self.code.layout.arena_bytes;
        if bytes > 0 {
            // SAFETY: the arena holds the layout's `arena_bytes` bytes.
            unsafe { std::ptr::write_bytes(self.arena.ptr, 0xFF, bytes) };
        }
        for (_, t) in self.outputs.iter_mut() {
            match &mut t.data {
                TensorData::F32(v) => v.fill(f32::from_bits(u32::MAX)),
                TensorData::I32(v) => v.fill(-1),
            }
        }
    }

    /// The inputs the graph expects, by name, with their types.
    pub fn inputs(&self) -> &[(String, TensorType)] {
        &self.inputs
    }

    /// The current value of param `name`.
    pub fn param(&self, name: &str) -> Option<HostTensor> {
        find_named(&self.params, name).cloned()
    }

    /// Every param with its current value, in declaration order (for export).
    pub fn params(&self) -> Vec<(String, HostTensor)> {
        self.params.clone()
    }

    /// Overwrites param `name` (same dtype, shape and length required).
    pub fn set_param(&mut self, name: &str, value: HostTensor) -> Result<(), RunError> {
        self.table_is_bound = false;
        set_named(&mut self.params, "param", name, value)
    }

    /// The current value of state tensor `name`.
    pub fn state(&self, name: &str) -> Option<HostTensor> {
        find_named(&self.states, name).cloned()
    }

    /// Overwrites state tensor `name` (same dtype, shape and length required).
    pub fn set_state(&mut self, name: &str, value: HostTensor) -> Result<(), RunError> {
        self.table_is_bound = false;
        set_named(&mut self.states, "state", name, value)
    }

    /// Where compile time went.
    pub fn report(&self) -> &CompileReport {
        &self.code.report
    }
}

// ---- helpers shared by `Executable` and `sharded::ShardedStep` ------------------------------

/// The names of `list`, comma-separated (for errors).
fn names<'a>(list: impl Iterator<Item = &'a str>) -> String {
    list.collect::<Vec<_>>().join(", ")
}

/// Checks `given` against the `declared` inputs: every one given exactly once, nothing else,
/// each of its declared dtype, shape and length.
fn check_inputs<'a>(
    declared: impl Iterator<Item = (&'a str, &'a TensorType)> + Clone,
    given: &[(&str, HostTensor)],
) -> Result<(), RunError> {
    for (i, (name, _)) in given.iter().enumerate() {
        if !declared.clone().any(|(n, _)| n == *name) {
            return Err(RunError::Unknown {
                kind: "input",
                name: name.to_string(),
                known: names(declared.clone().map(|(n, _)| n)),
            });
        }
        if given[..i].iter().any(|(n, _)| n == name) {
            return Err(RunError::Duplicate {
                name: name.to_string(),
            });
        }
    }
    for (name, ty) in declared {
        let Some((_, t)) = given.iter().find(|(n, _)| *n == name) else {
            return Err(RunError::MissingInput {
                name: name.to_string(),
                expected: ty.clone(),
            });
        };
        t.check(name, ty)?;
    }
    Ok(())
}

/// The tensor called `name` in `list`.
fn find_named<'a>(list: &'a [(String, HostTensor)], name: &str) -> Option<&'a HostTensor> {
    list.iter().find(|(n, _)| n == name).map(|(_, t)| t)
}

/// Overwrites `name` in `list` in place (compiled functions' tables point at the buffers);
/// `kind` (`param`, `state`) names the list in errors.
fn set_named(
    list: &mut [(String, HostTensor)],
    kind: &'static str,
    name: &str,
    value: HostTensor,
) -> Result<(), RunError> {
    let Some(i) = list.iter().position(|(n, _)| n == name) else {
        return Err(RunError::Unknown {
            kind,
            name: name.into(),
            known: names(list.iter().map(|(n, _)| n.as_str())),
        });
    };
    let t = &mut list[i].1;
    value.check(name, &t.ty())?;
    t.data.clone_from(&value.data);
    Ok(())
}

/// The f32 elements of bound input `t` called `name`.
fn f32_mut<'a>(name: &str, t: &'a mut HostTensor) -> Result<&'a mut [f32], RunError> {
    match &mut t.data {
        TensorData::F32(v) => Ok(v),
        TensorData::I32(_) => Err(RunError::WrongDType {
            name: name.into(),
            expected: TensorType::new(DType::I32, t.shape.clone()),
            found: DType::F32,
        }),
    }
}

/// The i32 elements of bound input `t` called `name`.
fn i32_mut<'a>(name: &str, t: &'a mut HostTensor) -> Result<&'a mut [i32], RunError> {
    match &mut t.data {
        TensorData::I32(v) => Ok(v),
        TensorData::F32(_) => Err(RunError::WrongDType {
            name: name.into(),
            expected: TensorType::new(DType::F32, t.shape.clone()),
            found: DType::I32,
        }),
    }
}
