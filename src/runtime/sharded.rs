//! A training step split along its batch and run on a [`Pool`] of threads: the native form
//! of [`crate::optim::ShardedTrainingStep`].
//!
//! The step owns the params and the optimizer state; its compiled functions are code that
//! reads and writes them through pointer tables. One call ([`ShardedStep::run_bound`]):
//!
//! 1. the shard function once per shard, the shards spread over the pool's threads (each
//!    participant takes the next shard not yet taken), each shard reading its rows of the batch in place
//!    (no copy: axis 0 is outermost) and writing its own gradient buffers and arena;
//! 2. the update parts, likewise spread: part `k` reads its rows of every shard's gradients,
//!    averages them in shard order and updates its rows of the params and their state in
//!    place;
//! 3. the update tail (the optimizer's shared state, e.g. Adam's step count, which every
//!    part read before it changes);
//!
//! and the step's outputs (batch means) are the shards' means. 1, 2 and 3 are one pool job
//! ([`Pool::run_phases`]): a participant out of items of one phase waits for the phase
//! before in an item of the next instead of going to sleep. What a shard or a part
//! computes depends only on the shard or part, never on the thread that runs it, so results
//! are bit-identical for every thread count. A call allocates nothing.

use super::compile_with;
use super::pool::Pool;
use super::{
    check_inputs, f32_mut, find_named, i32_mut, initial, names, set_named, Arena, Executable,
    HostTensor, RunError, Table, TensorData,
};
use crate::codegen::plan::Slot;
use crate::codegen::{CompileError, CompileOptions, CompileReport};
use crate::graph::Graph;
use crate::op::Op;
use crate::optim::{grad_input, grad_output, ShardedTrainingStep, LR_NAME};
use crate::shape::TensorType;
use std::sync::Arc;

/// Where a pointer-table slot of one of the step's functions points: a buffer of the step
/// plus an offset in elements.
#[derive(Clone, Copy, Debug)]
enum Src {
    /// The step input with this index.
    Input(usize, usize),
    /// The param with this index.
    Param(usize, usize),
    /// The optimizer state with this index.
    State(usize, usize),
    /// Output `o` of shard `s` (a gradient).
    ShardOut(usize, usize, usize),
    /// Shard `s`'s rows of the step input with this index (`offset` elements per shard).
    Rows(usize, usize),
}

/// A compiled function and where its inputs, params and state come from (its consts,
/// outputs and arena are its own).
struct Bound {
    exe: Executable,
    inputs: Vec<Src>,
    params: Vec<Src>,
    states: Vec<Src>,
}

/// A compiled sharded training step; see the module documentation.
pub struct ShardedStep {
    shard: Bound,
    parts: Vec<Bound>,
    tail: Bound,
    pool: Arc<Pool>,
    /// Participants used (at most the pool's threads).
    threads: usize,
    /// The step's inputs at full batch size: the shard inputs, then the learning rate.
    inputs: Vec<(String, HostTensor)>,
    params: Vec<(String, HostTensor)>,
    states: Vec<(String, HostTensor)>,
    /// Per shard: its output buffers and its arena.
    shard_outputs: Vec<Vec<HostTensor>>,
    shard_arenas: Vec<Arena>,
    shard_tables: Vec<Table>,
    part_tables: Vec<Table>,
    /// The update parts' entry points, in part order.
    part_entries: Vec<unsafe extern "C" fn(*const *mut u8)>,
    /// The step's outputs (the shard function's outputs that are not gradients), with the
    /// shard output index each averages.
    outputs: Vec<(String, HostTensor)>,
    /// Ranks the step is shared by ([`ShardedStep::set_ranks`]; 1: a single process).
    ranks: usize,
    output_index: Vec<usize>,
}

impl std::fmt::Debug for ShardedStep {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShardedStep")
            .field("shards", &self.shards())
            .field("update_parts", &self.parts.len())
            .field("threads", &self.threads)
            .field("shard", &self.shard.exe)
            .finish()
    }
}

/// Pointer tables shared read-only by the participants of one phase of a call.
struct Tables<'a> {
    entries: &'a [unsafe extern "C" fn(*const *mut u8)],
    tables: &'a [Table],
    flush: bool,
}
// SAFETY: each table is used by exactly one participant per call (the one that claimed
// item `i` from the pool); the buffers a table writes are disjoint from every other table's
// (a shard's outputs and arena, a part's rows and arena), and shared buffers are only read.
unsafe impl Sync for Tables<'_> {}

impl Tables<'_> {
    /// Runs table `i` (with entry `i`, or the last entry when all tables share one).
    fn run(&self, i: usize) {
        let _fp = self.flush.then(super::fpenv::FlushDenormals::enter);
        let entry = self.entries[i.min(self.entries.len() - 1)];
        if let Some(t) = self.tables.get(i) {
            // SAFETY: the table was built by `ShardedStep::fill` for this call.
            unsafe { entry(t.0.as_ptr()) };
        }
    }
}

fn invalid(node: &str, message: &str) -> CompileError {
    CompileError::Invalid {
        node: node.to_string(),
        message: message.to_string(),
    }
}

impl ShardedStep {
    /// Compiles every function of `step` (run the pass pipeline on its graphs first, as
    /// for [`super::compile`]) to run on `pool`, using at most `threads` of its participants.
    pub fn compile(
        step: &ShardedTrainingStep,
        opts: &CompileOptions,
        pool: Arc<Pool>,
        threads: usize,
    ) -> Result<ShardedStep, CompileError> {
        let fn_opts = CompileOptions {
            threads: 1,
            poison: false,
            ..opts.clone()
        };
        let shards = step.shards.max(1);
        let u = &step.update;
        let named = |g: &Graph, ids: Vec<crate::graph::NodeId>| -> Vec<(String, HostTensor)> {
            ids.into_iter()
                .map(|id| (g[id].name.clone().unwrap_or_default(), initial(g, id)))
                .collect()
        };
        let params = named(u, u.params());
        let states = named(u, u.states());
        let find =
            |list: &[(String, HostTensor)], name: &str| list.iter().position(|(n, _)| n == name);

        // the step's inputs: the forward graph's, then the learning rate (none when a
        // schedule computes it in the update)
        let mut inputs: Vec<(String, HostTensor)> = step
            .inputs
            .iter()
            .map(|(n, ty, _)| (n.clone(), HostTensor::zeros(ty)))
            .collect();
        let lr = inputs.len();
        if u.find(LR_NAME).is_some_and(|id| u[id].op == Op::Input) {
            inputs.push((LR_NAME.into(), HostTensor::zeros(&TensorType::f32([]))));
        }

        let shard_exe = compile_with(&step.shard, &fn_opts, false)?;
        if !shard_exe.states.is_empty() {
            return Err(invalid(
                &step.shard.name,
                "a shard function cannot have state",
            ));
        }
        let mut shard_inputs = Vec::new();
        for (name, ty) in &shard_exe.inputs {
            let i = step
                .inputs
                .iter()
                .position(|(n, _, _)| n == name)
                .ok_or_else(|| invalid(name, "not an input of the step"))?;
            shard_inputs.push(if step.inputs[i].2 {
                Src::Rows(i, ty.shape.numel())
            } else {
                Src::Input(i, 0)
            });
        }
        let shard_params = shard_exe
            .params
            .iter()
            .map(|(n, _)| find(&params, n).map(|j| Src::Param(j, 0)))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| invalid(&step.shard.name, "a shard param the update lacks"))?;
        let shard_out_names: Vec<String> =
            shard_exe.outputs.iter().map(|(n, _)| n.clone()).collect();

        // binds an update function (a part at `offsets`, or the tail at offset 0)
        let bind = |exe: Executable, offsets: &[(String, usize)]| -> Result<Bound, CompileError> {
            // a param's offset also holds for its state `<param>.<suffix>` (longest match)
            let off = |name: &str| {
                offsets
                    .iter()
                    .filter(|(p, _)| p == name || name.starts_with(&format!("{p}.")))
                    .max_by_key(|(p, _)| p.len())
                    .map_or(0, |(_, o)| *o)
            };
            let mut ins = Vec::new();
            for (name, _) in &exe.inputs {
                if name == LR_NAME {
                    ins.push(Src::Input(lr, 0));
                    continue;
                }
                let src = (0..shards).find_map(|s| {
                    params.iter().find_map(|(p, _)| {
                        if grad_input(s, p) != *name {
                            return None;
                        }
                        let o = shard_out_names.iter().position(|n| *n == grad_output(p))?;
                        Some(Src::ShardOut(s, o, off(p)))
                    })
                });
                ins.push(src.ok_or_else(|| {
                    invalid(
                        name,
                        "an update input that is neither the learning rate nor a shard's gradient",
                    )
                })?);
            }
            let ps = exe
                .params
                .iter()
                .map(|(n, _)| find(&params, n).map(|j| Src::Param(j, off(n))))
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| invalid("update", "a param the step lacks"))?;
            let ss = exe
                .states
                .iter()
                .map(|(n, _)| find(&states, n).map(|j| Src::State(j, off(n))))
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| invalid("update", "a state the step lacks"))?;
            Ok(Bound {
                exe,
                inputs: ins,
                params: ps,
                states: ss,
            })
        };
        let parts = step
            .update_parts
            .iter()
            .map(|p| bind(compile_with(&p.graph, &fn_opts, false)?, &p.offsets))
            .collect::<Result<Vec<_>, _>>()?;
        let tail = bind(compile_with(&step.update_tail, &fn_opts, false)?, &[])?;

        let grads: Vec<String> = params.iter().map(|(p, _)| grad_output(p)).collect();
        let outputs: Vec<(String, HostTensor)> = shard_exe
            .outputs
            .iter()
            .filter(|(n, _)| !grads.contains(n))
            .cloned()
            .collect();
        let output_index = outputs
            .iter()
            .filter_map(|(n, _)| shard_out_names.iter().position(|m| m == n))
            .collect();
        let slots = shard_exe.code.layout.slot_count();
        let arena_bytes = shard_exe.code.layout.arena_bytes;
        let shard_outputs = (0..shards)
            .map(|_| shard_exe.outputs.iter().map(|(_, t)| t.clone()).collect())
            .collect();
        let part_entries = parts.iter().map(|p| p.exe.code.entry()).collect();
        let part_tables = parts
            .iter()
            .map(|p| Table(Vec::with_capacity(p.exe.code.layout.slot_count())))
            .collect();
        // no more threads than items of the widest phase (shards or update parts)
        let threads = threads
            .clamp(1, pool.threads())
            .min(shards.max(parts.len()).max(1));
        Ok(ShardedStep {
            shard: Bound {
                exe: shard_exe,
                inputs: shard_inputs,
                params: shard_params,
                states: Vec::new(),
            },
            parts,
            tail,
            pool,
            threads,
            inputs,
            params,
            states,
            shard_outputs,
            shard_arenas: (0..shards).map(|_| Arena::new(arena_bytes)).collect(),
            shard_tables: (0..shards)
                .map(|_| Table(Vec::with_capacity(slots)))
                .collect(),
            part_tables,
            part_entries,
            outputs,
            output_index,
            ranks: 1,
        })
    }

    /// Number of shards the batch is split into.
    pub fn shards(&self) -> usize {
        self.shard_outputs.len()
    }

    /// Number of parts the update is split into.
    pub fn update_parts(&self) -> usize {
        self.parts.len()
    }

    /// Threads a call uses.
    pub fn threads(&self) -> usize {
        self.threads
    }

    /// The address `src` names for shard `s` (f32 and i32 elements are 4 bytes).
    fn address(&self, src: Src, s: usize) -> *mut u8 {
        let at = |t: &HostTensor, off: usize| {
            // SAFETY: offsets were computed from the shapes: a shard's rows of a batched
            // input, a part's rows of a param, its state or a gradient, all inside the buffer.
            unsafe { t.as_ptr().add(off * 4) }
        };
        match src {
            Src::Input(i, off) => at(&self.inputs[i].1, off),
            Src::Rows(i, per_shard) => at(&self.inputs[i].1, s * per_shard),
            Src::Param(j, off) => at(&self.params[j].1, off),
            Src::State(j, off) => at(&self.states[j].1, off),
            Src::ShardOut(s, o, off) => at(&self.shard_outputs[s][o], off),
        }
    }

    /// Builds the table of function `b` for shard `s` into `t`, with `arena` (or its own).
    fn fill(
        &self,
        b: &Bound,
        s: usize,
        outputs: Option<&[HostTensor]>,
        arena: Option<&Arena>,
        t: &mut Table,
    ) {
        t.fill(&b.exe.code.layout, |slot| match slot {
            Slot::Input(i) => self.address(b.inputs[i], s),
            Slot::Param(i) => self.address(b.params[i], s),
            Slot::State(i) => self.address(b.states[i], s),
            Slot::Const(i) => b.exe.consts[i].as_ptr(),
            Slot::Output(i) => match outputs {
                Some(outs) => outs[i].as_ptr(),
                None => b.exe.outputs[i].1.as_ptr(),
            },
            Slot::Arena => arena.unwrap_or(&b.exe.arena).ptr,
        });
    }

    /// Runs `phases` in order, every table of a phase once, on the pool as one job
    /// ([`Pool::run_phases`]), or in order on this thread when the step uses one thread.
    fn run_phases(&self, phases: &[&Tables<'_>]) {
        if self.threads == 1 {
            for p in phases {
                (0..p.tables.len()).for_each(|i| p.run(i));
            }
            return;
        }
        let mut counts = [0usize; 3];
        for (c, p) in counts.iter_mut().zip(phases) {
            *c = p.tables.len();
        }
        let n = phases.len().min(counts.len());
        self.pool.run_phases(&counts[..n], &|p, i| phases[p].run(i));
    }

    /// Runs one training step on the bound inputs (see [`ShardedStep::input_f32_mut`]);
    /// allocates nothing.
    pub fn run_bound(&mut self) {
        let mut tables = std::mem::take(&mut self.shard_tables);
        for (s, t) in tables.iter_mut().enumerate() {
            self.fill(
                &self.shard,
                s,
                Some(&self.shard_outputs[s]),
                Some(&self.shard_arenas[s]),
                t,
            );
        }
        let mut part_tables = std::mem::take(&mut self.part_tables);
        for (k, t) in part_tables.iter_mut().enumerate() {
            self.fill(&self.parts[k], 0, None, None, t);
        }
        let mut tail_table = std::mem::replace(&mut self.tail.exe.table, Table(Vec::new()));
        self.fill(&self.tail, 0, None, None, &mut tail_table);
        // the shards, then the update parts (which read every shard's gradients), then the
        // tail (after every part has read the shared state it updates), as one job
        let flush = self.shard.exe.flush_denormals;
        let shards = Tables {
            entries: &[self.shard.exe.code.entry()],
            tables: &tables,
            flush,
        };
        let parts = Tables {
            entries: &self.part_entries,
            tables: &part_tables,
            flush,
        };
        let tail = Tables {
            entries: &[self.tail.exe.code.entry()],
            tables: std::slice::from_ref(&tail_table),
            flush,
        };
        self.run_phases(&[&shards, &parts, &tail]);
        self.shard_tables = tables;
        self.part_tables = part_tables;
        self.tail.exe.table = tail_table;

        let shards = self.shard_outputs.len();
        for ((_, out), &k) in self.outputs.iter_mut().zip(&self.output_index) {
            match &mut out.data {
                TensorData::F32(v) => {
                    v.fill(0.0);
                    for s in &self.shard_outputs {
                        if let Some(x) = s[k].as_f32() {
                            for (a, b) in v.iter_mut().zip(x) {
                                *a += b;
                            }
                        }
                    }
                    // every rank's shard sums, added in rank order: the mean over all
                    // `ranks * shards` shards, as one process with that many computes it
                    if self.ranks > 1 {
                        crate::dist::all_reduce_in_place(v, false);
                    }
                    let n = (shards * self.ranks) as f32;
                    v.iter_mut().for_each(|a| *a /= n);
                }
                TensorData::I32(v) => {
                    if let Some(x) = self.shard_outputs[0][k].as_i32() {
                        v.copy_from_slice(x);
                    }
                }
            }
        }
    }

    /// Makes the step's outputs means over `ranks` ranks (each running this step on its own
    /// examples, its update all-reducing the gradients): after the shards, the outputs'
    /// shard sums are all-reduced (a collective every rank must reach). 1 (the default) keeps
    /// them this process's.
    pub fn set_ranks(&mut self, ranks: usize) {
        self.ranks = ranks.max(1);
    }

    /// Runs one step on `inputs` (every input, by name, with its full-batch type: checked,
    /// then copied into the bound buffers) and returns the outputs.
    pub fn run(
        &mut self,
        inputs: &[(&str, HostTensor)],
    ) -> Result<Vec<(String, HostTensor)>, RunError> {
        let declared: Vec<(String, TensorType)> = self.inputs();
        check_inputs(declared.iter().map(|(n, t)| (n.as_str(), t)), inputs)?;
        for (name, t) in self.inputs.iter_mut() {
            if let Some((_, given)) = inputs.iter().find(|(n, _)| n == name) {
                t.data.clone_from(&given.data);
            }
        }
        self.run_bound();
        Ok(self.outputs.clone())
    }

    fn input(&mut self, name: &str) -> Result<&mut HostTensor, RunError> {
        let Some(i) = self.inputs.iter().position(|(n, _)| n == name) else {
            return Err(RunError::Unknown {
                kind: "input",
                name: name.into(),
                known: names(self.inputs.iter().map(|(n, _)| n.as_str())),
            });
        };
        Ok(&mut self.inputs[i].1)
    }

    /// The bound full-batch buffer of f32 input `name` (the learning rate `lr` included).
    pub fn input_f32_mut(&mut self, name: &str) -> Result<&mut [f32], RunError> {
        f32_mut(name, self.input(name)?)
    }

    /// The bound full-batch buffer of i32 input `name`.
    pub fn input_i32_mut(&mut self, name: &str) -> Result<&mut [i32], RunError> {
        i32_mut(name, self.input(name)?)
    }

    /// The step's inputs with their full-batch types.
    pub fn inputs(&self) -> Vec<(String, TensorType)> {
        self.inputs
            .iter()
            .map(|(n, t)| (n.clone(), t.ty()))
            .collect()
    }

    /// The bound full-batch buffer of input `name` as last written.
    pub fn bound_input(&self, name: &str) -> Option<&HostTensor> {
        find_named(&self.inputs, name)
    }

    /// The params and the optimizer state with their current values, borrowed, each in
    /// declaration order (nothing is copied).
    pub fn leaves(&self) -> (&super::NamedTensors, &super::NamedTensors) {
        (&self.params, &self.states)
    }

    /// The outputs of the last call (the shards' means), by name.
    pub fn outputs(&self) -> &[(String, HostTensor)] {
        &self.outputs
    }

    /// Output `name` of the last call.
    pub fn output(&self, name: &str) -> Option<&HostTensor> {
        self.outputs.iter().find(|(n, _)| n == name).map(|(_, t)| t)
    }

    /// The current value of param `name`.
    pub fn param(&self, name: &str) -> Option<HostTensor> {
        find_named(&self.params, name).cloned()
    }

    /// Every param with its current value, in declaration order.
    pub fn params(&self) -> Vec<(String, HostTensor)> {
        self.params.clone()
    }

    /// Overwrites param `name` in place (same dtype, shape and length required).
    pub fn set_param(&mut self, name: &str, value: HostTensor) -> Result<(), RunError> {
        set_named(&mut self.params, "param", name, value)
    }

    /// The current value of optimizer state `name`.
    pub fn state(&self, name: &str) -> Option<HostTensor> {
        find_named(&self.states, name).cloned()
    }

    /// Overwrites optimizer state `name` in place (same dtype, shape and length required).
    pub fn set_state(&mut self, name: &str, value: HostTensor) -> Result<(), RunError> {
        set_named(&mut self.states, "state", name, value)
    }

    /// The compile reports of the shard function, the update parts and the tail.
    pub fn reports(&self) -> Vec<&CompileReport> {
        std::iter::once(&self.shard)
            .chain(&self.parts)
            .chain(std::iter::once(&self.tail))
            .map(|b| b.exe.report())
            .collect()
    }
}
