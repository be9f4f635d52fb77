//! The loop of a `scan` node ([`crate::scan`]): the body is a function of its own (compiled
//! first, with its own plan), and the scan's code calls it once per step with a pointer table
//! kept in the scan's scratch.
//!
//! Scratch layout: the body's arena, the body's table (one pointer per slot), two buffers
//! per carry (step `t` reads one and writes the other; they swap every step) and one step's
//! buffer for every per-step output no node reads (the body writes it somewhere). The table
//! entries of the invariants and the arena are written once; per step, the carries' two
//! pointers, each sequence's slice `t` (a pointer into the operand, no copy) and each
//! stacked output's slot `t` (a pointer into the result, no copy). After the loop the final
//! carries are copied into their results (which buffer holds them follows from the trip
//! count's parity).

use super::{LowerError, Lowerer};
use crate::codegen::plan::{Layout, Loc, Plan, Slot, ALIGN};
use crate::graph::{Graph, NodeId};
use crate::op::Op;
use crate::shape::TensorType;
use cranelift_codegen::ir::{self, InstBuilder, MemFlagsData, Value};

/// A compiled scan body and what the scan's loop needs to call it.
#[derive(Clone, Debug)]
pub struct ScanCode {
    /// The body function's index in the module.
    func: u32,
    /// Its signature (`fn(table)`).
    sig: ir::Signature,
    /// The body's table layout.
    layout: Layout,
    /// For each input slot of the body's table, the scan operand (body parameter) it is.
    input_params: Vec<usize>,
    /// The body's parameter types, in parameter order.
    params: Vec<TensorType>,
    /// The body's output types (one step), in yield order.
    outputs: Vec<TensorType>,
    carries: usize,
    sequences: usize,
    reverse: bool,
}

fn aligned(n: usize) -> usize {
    n.div_ceil(ALIGN) * ALIGN
}

impl ScanCode {
    /// The code of body graph `bg` (its parameters `inputs`, in parameter order), compiled
    /// as function `func` with signature `sig` and table `layout`.
    pub fn new(
        bg: &Graph,
        inputs: &[NodeId],
        body: &crate::scan::ScanBody,
        func: u32,
        sig: ir::Signature,
        layout: Layout,
    ) -> Result<ScanCode, String> {
        if !layout.params.is_empty() || !layout.states.is_empty() || !layout.consts.is_empty() {
            return Err("a scan body has no params, state or constants of its own".into());
        }
        let input_params = layout
            .inputs
            .iter()
            .map(|id| {
                inputs
                    .iter()
                    .position(|p| p == id)
                    .ok_or_else(|| "an input of the body is not one of its parameters".to_string())
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(ScanCode {
            func,
            sig,
            input_params,
            params: inputs.iter().map(|&p| bg[p].ty.clone()).collect(),
            outputs: bg.outputs().iter().map(|o| bg[o.node].ty.clone()).collect(),
            carries: body.carries,
            sequences: body.sequences,
            reverse: body.reverse,
            layout,
        })
    }

    fn table_offset(&self) -> usize {
        aligned(self.layout.arena_bytes)
    }

    fn carry_offset(&self, i: usize, second: bool) -> usize {
        let mut off = self.table_offset() + aligned(self.layout.slot_count() * 8);
        for (j, t) in self.params[..self.carries].iter().enumerate() {
            if j == i && !second {
                return off;
            }
            off += aligned(t.shape.numel() * 4);
            if j == i {
                return off;
            }
            off += aligned(t.shape.numel() * 4);
        }
        off
    }

    fn sink_offset(&self, l: usize) -> usize {
        let mut off = self.carry_offset(self.carries, false);
        for t in &self.outputs[self.carries..self.carries + l] {
            off += aligned(t.shape.numel() * 4);
        }
        off
    }

    /// Bytes of scratch the scan node needs (see the module documentation).
    pub fn scratch_bytes(&self) -> usize {
        self.sink_offset(self.outputs.len() - self.carries)
    }
}

impl Lowerer<'_> {
    /// Lowers scan node `id`, whose code `self.scans` holds; `ins` are its operands'
    /// locations, `out` its own (result 0).
    pub(super) fn scan(
        &mut self,
        g: &Graph,
        plan: &Plan,
        id: NodeId,
        ins: &[Loc],
        out: Loc,
    ) -> Result<(), LowerError> {
        let code = self
            .scans
            .get(&id)
            .cloned()
            .ok_or("the scan's body was not compiled")?;
        let Op::Scan(body) = &g[id].op else {
            return Err("not a scan node".into());
        };
        // the code generator runs every scan time-major (`scan::time_major`)
        let types: Vec<_> = g.operands(id).iter().map(|&o| &g[o].ty).collect();
        let steps = body.length(&types).map_err(|e| e.0)?;
        let scratch = Loc {
            slot: plan.layout.index(Slot::Arena),
            offset: *plan
                .scratch
                .get(&id)
                .ok_or("no scratch planned for the scan")?,
        };
        let at = |off: usize| Loc {
            slot: scratch.slot,
            offset: scratch.offset + off,
        };
        // where each result goes: result 0 is the node's own buffer, the others their
        // scan_result nodes' (a result nobody reads has none)
        let mut results: Vec<Option<Loc>> = vec![None; code.outputs.len()];
        results[0] = Some(out);
        for u in g.users(id) {
            if let Op::ScanResult { index } = g[u].op {
                if let (Some(slot), Some(&l)) = (results.get_mut(index), plan.locs.get(&u)) {
                    *slot = Some(l);
                }
            }
        }
        let lay = &code.layout;
        let table = self.addr(at(code.table_offset()), None);
        let trusted = MemFlagsData::trusted();
        let slot_off = |s: Slot| (lay.index(s) * 8) as i32;
        // invariants and the arena: the same every step
        for (i, &p) in code.input_params.iter().enumerate() {
            if p >= code.carries + code.sequences {
                let v = self.addr(ins[p], None);
                self.b
                    .ins()
                    .store(trusted, v, table, slot_off(Slot::Input(i)));
            }
        }
        let arena = self.addr(at(0), None);
        self.b
            .ins()
            .store(trusted, arena, table, slot_off(Slot::Arena));
        // the carries start in their first buffers
        let mut carried = Vec::with_capacity(2 * code.carries);
        for (i, (t, &src)) in code.params.iter().zip(ins).take(code.carries).enumerate() {
            self.copy(at(code.carry_offset(i, false)), src, t.dtype, &t.shape);
        }
        for i in 0..code.carries {
            carried.push(self.addr(at(code.carry_offset(i, false)), None));
        }
        for i in 0..code.carries {
            carried.push(self.addr(at(code.carry_offset(i, true)), None));
        }
        // the stacked outputs' bases (a sink with no stride when nobody reads one)
        let mut stacked: Vec<(Value, i64)> = Vec::new();
        let outputs = code.outputs.iter().zip(&results).enumerate();
        for (j, (t, result)) in outputs.skip(code.carries) {
            let bytes = t.shape.numel() as i64 * 4;
            stacked.push(match *result {
                Some(l) => (self.addr(l, None), bytes),
                None => (self.addr(at(code.sink_offset(j - code.carries)), None), 0),
            });
        }
        let seq_bases: Vec<(usize, Value, i64)> = (0..code.input_params.len())
            .filter_map(|i| {
                let p = code.input_params[i];
                (p >= code.carries && p < code.carries + code.sequences).then_some((i, p))
            })
            .map(|(i, p)| {
                let bytes = code.params[p].shape.numel() as i64 * 4;
                (i, self.addr(ins[p], None), bytes)
            })
            .collect();
        let callee = self.body_function(code.func, code.sig.clone());
        let k = code.carries;
        let reverse = code.reverse;
        let carry_slots: Vec<(usize, usize)> = code
            .input_params
            .iter()
            .enumerate()
            .filter(|&(_, &p)| p < k)
            .map(|(i, &p)| (i, p))
            .collect();
        let mut step = |lw: &mut Lowerer<'_>, t: Value, cur: &[Value]| -> Vec<Value> {
            let tt = match reverse {
                true => {
                    let last = lw.iconst(steps as i64 - 1);
                    lw.b.ins().isub(last, t)
                }
                false => t,
            };
            for &(i, p) in &carry_slots {
                lw.b.ins()
                    .store(trusted, cur[p], table, slot_off(Slot::Input(i)));
            }
            for j in 0..k {
                lw.b.ins()
                    .store(trusted, cur[k + j], table, slot_off(Slot::Output(j)));
            }
            for &(i, base, bytes) in &seq_bases {
                let off = lw.b.ins().imul_imm_s(tt, bytes);
                let p = lw.b.ins().iadd(base, off);
                lw.b.ins()
                    .store(trusted, p, table, slot_off(Slot::Input(i)));
            }
            for (l, &(base, bytes)) in stacked.iter().enumerate() {
                let p = match bytes {
                    0 => base,
                    _ => {
                        let off = lw.b.ins().imul_imm_s(tt, bytes);
                        lw.b.ins().iadd(base, off)
                    }
                };
                lw.b.ins()
                    .store(trusted, p, table, slot_off(Slot::Output(k + l)));
            }
            lw.b.ins().call(callee, &[table]);
            // the buffers just written hold the next step's carries
            cur[k..].iter().chain(&cur[..k]).copied().collect()
        };
        self.for_range(steps, carried, &mut step);
        // after an odd number of steps the final carries are in the second buffers
        for (i, result) in results.iter().enumerate().take(k) {
            if let Some(dst) = *result {
                let t = &code.params[i];
                let src = at(code.carry_offset(i, steps % 2 == 1));
                self.copy(dst, src, t.dtype, &t.shape);
            }
        }
        Ok(())
    }

    /// The function reference of a body function of this module (index `func`).
    fn body_function(&mut self, func: u32, sig: ir::Signature) -> ir::FuncRef {
        let signature = self.b.import_signature(sig);
        let user = self
            .b
            .func
            .declare_imported_user_function(ir::UserExternalName {
                namespace: 0,
                index: func,
            });
        self.b.import_function(ir::ExtFuncData {
            name: ir::ExternalName::user(user),
            signature,
            colocated: false,
            patchable: false,
        })
    }
}
