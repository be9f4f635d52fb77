//! A training step split along its batch and run on a [`Pool`] of threads: the native form
//! of [`crate::optim::ShardedTrainingStep`].
//!
//! One call ([`ShardedStep::run_bound`]) runs the shard function once per shard, the shards
//! spread over the pool's threads (shard `s` on participant `s mod threads`), each shard
//! reading its rows of the batch in place (no copy: axis 0 is outermost) and writing its
//! own gradient buffers and arena; then the update function, on the calling thread, reads
//! every shard's gradients, averages them in shard order and updates the params and the
//! optimizer state in place; the step's outputs (batch means) are the shards' means.
//! What a shard computes depends only on the shard, never on the thread that runs it, so
//! results are bit-identical for every thread count. A call allocates nothing.

use super::pool::Pool;
use super::{Arena, Executable, HostTensor, RunError, Table, TensorData};
use crate::codegen::{compile, CompileError, CompileOptions, CompileReport};
use crate::optim::{grad_input, grad_output, ShardedTrainingStep, LR_NAME};
use crate::shape::{DType, TensorType};
use std::sync::Arc;

/// Where an input of the update function comes from.
#[derive(Clone, Copy, Debug)]
enum UpdateInput {
    /// The step input with this index (the learning rate).
    Step(usize),
    /// Shard `s`'s output with this index (a gradient).
    Grad(usize, usize),
}

/// A compiled sharded training step; see the module documentation.
pub struct ShardedStep {
    shard: Executable,
    update: Executable,
    pool: Arc<Pool>,
    /// Participants used (at most the pool's threads, at most the shards).
    threads: usize,
    /// The step's inputs at full batch size: the shard inputs, then the update's own.
    inputs: Vec<(String, HostTensor)>,
    /// For each shard input: the step input it reads and the bytes a shard advances in it
    /// (0 for inputs every shard reads whole).
    shard_inputs: Vec<(usize, usize)>,
    /// For each shard param (in table order): the update's param index.
    shard_params: Vec<usize>,
    update_inputs: Vec<UpdateInput>,
    /// Per shard: its output buffers and its arena.
    shard_outputs: Vec<Vec<HostTensor>>,
    arenas: Vec<Arena>,
    tables: Vec<Table>,
    /// The step's outputs (the shard function's outputs that are not gradients), with the
    /// shard output index each averages.
    outputs: Vec<(String, HostTensor)>,
    output_index: Vec<usize>,
}

impl std::fmt::Debug for ShardedStep {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShardedStep")
            .field("shards", &self.shards())
            .field("threads", &self.threads)
            .field("shard", &self.shard)
            .field("update", &self.update)
            .finish()
    }
}

/// A pointer table shared read-only by the participants of one call.
struct Tables<'a> {
    entry: unsafe extern "C" fn(*const *mut u8),
    tables: &'a [Table],
    threads: usize,
    flush: bool,
}
// SAFETY: each table is used by exactly one participant per call (shard `s` by participant
// `s mod threads`); the buffers a table points to are disjoint between shards except the
// inputs and params, which every shard only reads.
unsafe impl Sync for Tables<'_> {}

impl Tables<'_> {
    fn run(&self, w: usize) {
        let _fp = self.flush.then(super::fpenv::FlushDenormals::enter);
        for t in self.tables.iter().skip(w).step_by(self.threads) {
            // SAFETY: the table was built by `ShardedStep::fill_tables` for this call.
            unsafe { (self.entry)(t.0.as_ptr()) };
        }
    }
}

impl ShardedStep {
    /// Compiles both functions of `step` (run the pass pipeline on its graphs first, as
    /// for [`compile`]) to run on `pool`, using at most `threads` of its participants.
    pub fn compile(
        step: &ShardedTrainingStep,
        opts: &CompileOptions,
        pool: Arc<Pool>,
        threads: usize,
    ) -> Result<ShardedStep, CompileError> {
        let invalid = |node: String, message: String| CompileError::Invalid { node, message };
        let shard_opts = CompileOptions {
            threads: 1,
            poison: false,
            ..opts.clone()
        };
        let shard = compile(&step.shard, &shard_opts)?;
        let update = compile(&step.update, &shard_opts)?;
        if !shard.states.is_empty() {
            return Err(invalid(
                step.shard.name.clone(),
                "a shard function cannot have state".into(),
            ));
        }
        let shards = step.shards.max(1);
        let mut inputs: Vec<(String, HostTensor)> = Vec::new();
        let mut shard_inputs = Vec::new();
        for (name, ty) in &shard.inputs {
            let full = step
                .inputs
                .iter()
                .find(|(n, _, _)| n == name)
                .ok_or_else(|| invalid(name.clone(), "not an input of the step".into()))?;
            let stride = if full.2 { ty.shape.numel() * 4 } else { 0 };
            shard_inputs.push((inputs.len(), stride));
            inputs.push((name.clone(), HostTensor::zeros(&full.1)));
        }
        let shard_out_names: Vec<&str> = shard.outputs.iter().map(|(n, _)| n.as_str()).collect();
        let mut update_inputs = Vec::new();
        for (name, ty) in &update.inputs {
            if name == LR_NAME {
                update_inputs.push(UpdateInput::Step(inputs.len()));
                inputs.push((name.clone(), HostTensor::zeros(ty)));
                continue;
            }
            let found = (0..shards).find_map(|s| {
                update
                    .params
                    .iter()
                    .find(|(p, _)| grad_input(s, p) == *name)
                    .and_then(|(p, _)| {
                        let o = shard_out_names.iter().position(|&n| n == grad_output(p))?;
                        Some(UpdateInput::Grad(s, o))
                    })
            });
            update_inputs.push(found.ok_or_else(|| {
                invalid(
                    name.clone(),
                    "an update input that is neither the learning rate nor a shard's gradient"
                        .into(),
                )
            })?);
        }
        let mut shard_params = Vec::new();
        for (name, t) in &shard.params {
            let j = update
                .params
                .iter()
                .position(|(n, u)| n == name && u.ty() == t.ty())
                .ok_or_else(|| invalid(name.clone(), "a shard param the update lacks".into()))?;
            shard_params.push(j);
        }
        let grads: Vec<String> = shard.params.iter().map(|(p, _)| grad_output(p)).collect();
        let outputs: Vec<(String, HostTensor)> = shard
            .outputs
            .iter()
            .filter(|(n, _)| !grads.contains(n))
            .cloned()
            .collect();
        let output_index = outputs
            .iter()
            .filter_map(|(n, _)| shard_out_names.iter().position(|m| m == n))
            .collect();
        let slots = shard.slots();
        let arena_bytes = shard.arena_bytes;
        let shard_outputs = (0..shards)
            .map(|_| shard.outputs.iter().map(|(_, t)| t.clone()).collect())
            .collect();
        let threads = threads.clamp(1, pool.threads()).min(shards);
        Ok(ShardedStep {
            shard,
            update,
            pool,
            threads,
            inputs,
            shard_inputs,
            shard_params,
            update_inputs,
            shard_outputs,
            arenas: (0..shards).map(|_| Arena::new(arena_bytes)).collect(),
            tables: (0..shards)
                .map(|_| Table(Vec::with_capacity(slots)))
                .collect(),
            outputs,
            output_index,
        })
    }

    /// Number of shards the batch is split into.
    pub fn shards(&self) -> usize {
        self.shard_outputs.len()
    }

    /// Threads a call uses.
    pub fn threads(&self) -> usize {
        self.threads
    }

    /// Rebuilds every shard's pointer table (buffers never move, but this keeps the tables
    /// right by construction).
    fn fill_tables(&mut self) {
        for (s, table) in self.tables.iter_mut().enumerate() {
            let t = &mut table.0;
            t.clear();
            for &(i, stride) in &self.shard_inputs {
                // SAFETY: shard `s` reads rows `s*b..(s+1)*b` of a batched input, inside
                // the full-batch buffer (`stride * shards` bytes).
                t.push(unsafe { self.inputs[i].1.as_ptr().add(s * stride) });
            }
            for &j in &self.shard_params {
                t.push(self.update.params[j].1.as_ptr());
            }
            for c in &self.shard.consts {
                t.push(c.as_ptr());
            }
            for o in self.shard_outputs[s].iter_mut() {
                t.push(o.as_mut_ptr());
            }
            t.push(self.arenas[s].ptr);
        }
    }

    /// Runs one training step on the bound inputs (see [`ShardedStep::input_f32_mut`]);
    /// allocates nothing.
    pub fn run_bound(&mut self) {
        self.fill_tables();
        let job = Tables {
            entry: self.shard.entry,
            tables: &self.tables,
            threads: self.threads,
            flush: self.shard.flush_denormals,
        };
        if self.threads == 1 {
            job.run(0);
        } else {
            self.pool.run(&|w| job.run(w));
        }
        let u = &mut self.update;
        u.table.0.clear();
        for src in &self.update_inputs {
            u.table.0.push(match *src {
                UpdateInput::Step(i) => self.inputs[i].1.as_ptr(),
                UpdateInput::Grad(s, o) => self.shard_outputs[s][o].as_ptr(),
            });
        }
        // SAFETY: every update input points at a buffer of its type: the bound learning
        // rate or a shard's gradient output, which nothing writes during the call.
        unsafe { u.call() };
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
                    let n = shards as f32;
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

    /// Runs one step on `inputs` (every input, by name, with its full-batch type: checked,
    /// then copied into the bound buffers) and returns the outputs.
    pub fn run(
        &mut self,
        inputs: &[(&str, HostTensor)],
    ) -> Result<Vec<(String, HostTensor)>, RunError> {
        let known = || {
            self.inputs
                .iter()
                .map(|(n, _)| n.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        };
        for (i, (name, _)) in inputs.iter().enumerate() {
            if !self.inputs.iter().any(|(n, _)| n == name) {
                return Err(RunError::Unknown {
                    kind: "input",
                    name: name.to_string(),
                    known: known(),
                });
            }
            if inputs[..i].iter().any(|(n, _)| n == name) {
                return Err(RunError::Duplicate {
                    name: name.to_string(),
                });
            }
        }
        for (name, t) in &self.inputs {
            let Some((_, given)) = inputs.iter().find(|(n, _)| n == name) else {
                return Err(RunError::MissingInput {
                    name: name.clone(),
                    expected: t.ty(),
                });
            };
            given.check(name, &t.ty())?;
        }
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
                known: self
                    .inputs
                    .iter()
                    .map(|(n, _)| n.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            });
        };
        Ok(&mut self.inputs[i].1)
    }

    /// The bound full-batch buffer of f32 input `name` (the learning rate `lr` included).
    pub fn input_f32_mut(&mut self, name: &str) -> Result<&mut [f32], RunError> {
        let t = self.input(name)?;
        match &mut t.data {
            TensorData::F32(v) => Ok(v),
            TensorData::I32(_) => Err(RunError::WrongDType {
                name: name.into(),
                expected: TensorType::new(DType::I32, t.shape.clone()),
                found: DType::F32,
            }),
        }
    }

    /// The bound full-batch buffer of i32 input `name`.
    pub fn input_i32_mut(&mut self, name: &str) -> Result<&mut [i32], RunError> {
        let t = self.input(name)?;
        match &mut t.data {
            TensorData::I32(v) => Ok(v),
            TensorData::F32(_) => Err(RunError::WrongDType {
                name: name.into(),
                expected: TensorType::new(DType::F32, t.shape.clone()),
                found: DType::I32,
            }),
        }
    }

    /// The step's inputs with their full-batch types.
    pub fn inputs(&self) -> Vec<(String, TensorType)> {
        self.inputs
            .iter()
            .map(|(n, t)| (n.clone(), t.ty()))
            .collect()
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
        self.update.param(name)
    }

    /// Every param with its current value, in declaration order.
    pub fn params(&self) -> Vec<(String, HostTensor)> {
        self.update.params()
    }

    /// Overwrites param `name` (same dtype, shape and length required).
    pub fn set_param(&mut self, name: &str, value: HostTensor) -> Result<(), RunError> {
        self.update.set_param(name, value)
    }

    /// The current value of optimizer state `name`.
    pub fn state(&self, name: &str) -> Option<HostTensor> {
        self.update.state(name)
    }

    /// Overwrites optimizer state `name` (same dtype, shape and length required).
    pub fn set_state(&mut self, name: &str, value: HostTensor) -> Result<(), RunError> {
        self.update.set_state(name, value)
    }

    /// The compile reports of the shard function and of the update function.
    pub fn reports(&self) -> [&CompileReport; 2] {
        [self.shard.report(), self.update.report()]
    }
}
