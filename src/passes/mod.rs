//! Graph-to-graph passes and the [`Pipeline`] that runs them.
//!
//! In: a type-correct [`Graph`] (after autodiff and the optimizer have added their nodes).
//! Out: the same graph rewritten in place so that every output and update computes the same
//! values with fewer or cheaper nodes, plus one [`PassReport`] per pass saying what changed.
//!
//! Every pass has the same signature, `fn(&mut Graph) -> PassReport`, and obeys three rules:
//! - it preserves results: outputs and update values are the same (see each pass for the
//!   documented exceptions, e.g. the sign of zero in `x + 0 -> x`);
//! - it keeps the executable's interface: inputs, params and state are never removed or merged,
//!   outputs and updates keep their names and targets;
//! - it is idempotent: a second run reports no change ([`PassReport::changed`] is false) and
//!   leaves the graph printing identically.
//!
//! The passes ([`all`] lists them, [`by_name`] finds one):
//! - `simplify` ([`simplify`]): algebraic, reshape and softmax rewrite rules, to a fixpoint;
//! - `fold` ([`fold`]): constant folding of small results with the interpreter;
//! - `cse` ([`cse`]): common-subexpression elimination;
//! - `batch_matmuls` ([`batch_matmuls`]): independent matmuls by one weight become one GEMM of
//!   their stacked left operands, and a sum of products (a weight gradient over time steps)
//!   one GEMM of the stacked operands;
//! - `dce` ([`dce`]): dead-code elimination;
//! - `data_parallel` ([`data_parallel`]): an all-reduce over the ranks between every gradient
//!   input of an update graph and the optimizer (not in the default pipeline: the training
//!   step applies it when there are several ranks);
//! - `fuse` ([`fuse`]): elementwise chains, the reductions they feed and matmul epilogues
//!   become one fused node each, with remarks on what was not fused and why.
//!
//! [`plan::plan`] is an analysis, not a pass: it computes a schedule, where every value lives
//! (arena buffer, alias, output buffer, in-place update), buffer lifetimes and arena offsets
//! without changing the graph. It is the JIT's planner too (`codegen` passes it its folded
//! transposes and scratch space through [`plan::plan_with`]).
//!
//! A [`Pipeline`] runs a list of passes, checks the graph after each one (in debug builds and
//! tests) and can dump the graph text after any or all passes into a directory, one file per
//! step numbered in order (`00-input.ir`, `01-cse.ir`, `02-simplify.ir`, ...), like XLA's
//! `--xla_dump_to`.
//!
//! ```
//! use gradlift::passes::{plan::plan, Pipeline};
//! use gradlift::{Graph, TensorType};
//! let mut g = Graph::new("example");
//! let x = g.input("x", TensorType::f32([3])).unwrap();
//! let one = g.scalar(1.0);
//! let y = g.mul(x, one).unwrap(); // x * 1
//! let z = g.exp(y).unwrap();
//! g.add_output("z", z).unwrap();
//! let reports = Pipeline::default().run(&mut g).unwrap();
//! assert_eq!(g.operands(z), vec![x]); // exp(x)
//! assert_eq!(g.len(), 2); // the mul and the constant are gone
//! assert!(reports.iter().any(|r| r.counts.get("mul_by_one") == Some(&1)));
//! let p = plan(&g).unwrap();
//! assert_eq!(p.arena_bytes, 0); // exp is written straight into the output buffer
//! ```

pub mod batch_matmuls;
pub mod cse;
pub mod data_parallel;
pub mod dce;
pub mod fold;
pub mod fuse;
pub mod licm;
pub mod plan;
pub mod simplify;

mod rewrite;

use crate::graph::{Graph, NodeId};
use crate::op::Op;
use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

/// What one run of a pass did: its name, counts of what changed, and free-form remarks
/// (things it saw but left alone, and why).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PassReport {
    /// The pass name, as in [`by_name`].
    pub pass: String,
    /// Counts of changes by kind (`"removed"`, `"merged"`, a rule name, ...). Only changes are
    /// counted, so a pass changed the graph exactly when some count is non-zero.
    pub counts: BTreeMap<String, usize>,
    /// Notes for a human reader that are not changes (e.g. a constant not folded because its
    /// result would be too large).
    pub remarks: Vec<String>,
}

impl PassReport {
    /// An empty report for pass `pass`.
    pub fn new(pass: &str) -> PassReport {
        PassReport {
            pass: pass.to_string(),
            ..PassReport::default()
        }
    }

    /// Adds `n` to the count of `what`.
    pub fn count(&mut self, what: &str, n: usize) {
        if n > 0 {
            *self.counts.entry(what.to_string()).or_insert(0) += n;
        }
    }

    /// Adds a remark.
    pub fn remark(&mut self, text: impl Into<String>) {
        self.remarks.push(text.into());
    }

    /// Whether the pass changed the graph.
    pub fn changed(&self) -> bool {
        self.counts.values().any(|&n| n > 0)
    }

    /// Total number of changes of every kind.
    pub fn total(&self) -> usize {
        self.counts.values().sum()
    }
}

impl fmt::Display for PassReport {
    /// `pass: no change` or `pass: kind=3, other=1`, then one indented line per remark.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: ", self.pass)?;
        if self.changed() {
            let parts: Vec<String> = self
                .counts
                .iter()
                .filter(|(_, &n)| n > 0)
                .map(|(k, n)| format!("{k}={n}"))
                .collect();
            f.write_str(&parts.join(", "))?;
        } else {
            f.write_str("no change")?;
        }
        for r in &self.remarks {
            write!(f, "\n  {r}")?;
        }
        Ok(())
    }
}

/// The signature every pass has.
pub type PassFn = fn(&mut Graph) -> PassReport;

/// A named pass.
#[derive(Clone, Copy)]
pub struct Pass {
    /// Name used by [`by_name`], in reports and in dump file names.
    pub name: &'static str,
    /// One line saying what the pass does.
    pub summary: &'static str,
    /// The pass itself.
    pub run: PassFn,
}

impl fmt::Debug for Pass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Pass({})", self.name)
    }
}

/// Every pass (the default pipeline is [`DEFAULT_PIPELINE`]).
pub fn all() -> &'static [Pass] {
    &[
        Pass {
            name: "simplify",
            summary: "algebraic, reshape and softmax rewrite rules (see passes::simplify)",
            run: simplify::run,
        },
        Pass {
            name: "fold",
            summary: "fold operations on constants into constants (small results only)",
            run: fold::run,
        },
        Pass {
            name: "cse",
            summary: "merge nodes with the same op, attributes and operands",
            run: cse::run,
        },
        Pass {
            name: "batch_matmuls",
            summary: "one GEMM for independent matmuls that share their right operand, and for \
                      sums of products (see passes::batch_matmuls)",
            run: batch_matmuls::run,
        },
        Pass {
            name: "licm",
            summary: "move the instructions of a scan body that read only its invariants out of                       the loop (see passes::licm)",
            run: licm::run,
        },
        Pass {
            name: "dce",
            summary: "remove nodes that no output or update needs",
            run: dce::run,
        },
        Pass {
            name: "data_parallel",
            summary: "all-reduce (mean over the ranks) every gradient before its update, small \
                      gradients bucketed into one buffer (see passes::data_parallel)",
            run: data_parallel::run,
        },
        Pass {
            name: "fuse",
            summary: "fuse elementwise chains, reductions they feed and matmul epilogues into \
                      one kernel each (see passes::fuse)",
            run: fuse::run,
        },
    ]
}

/// The pass called `name`, or `None` (see [`all`] for the names).
pub fn by_name(name: &str) -> Option<Pass> {
    all().iter().find(|p| p.name == name).copied()
}

/// The names of the default pipeline, in order. `cse` runs first so that duplicated chains are
/// one chain (the softmax rules fire only on chains without other users, and `batch_matmuls`
/// finds the matmuls of one weight through one transpose node); then `simplify` and `fold`;
/// `batch_matmuls` on the simplified graph; `licm` then moves what only reads a loop's
/// invariants (such as the concatenated weights of a batched recurrent product) out of scan
/// bodies; `cse` again because rewriting, folding, batching and hoisting make equal nodes and
/// constants; `dce` removes everything the others left unused;
/// `fuse` runs last, on the final graph (its fused nodes are opaque to the other passes). On
/// the test graphs one run of this list reaches a fixpoint: a second run changes nothing.
pub const DEFAULT_PIPELINE: &[&str] = &[
    "cse",
    "simplify",
    "fold",
    "batch_matmuls",
    "licm",
    "cse",
    "dce",
    "fuse",
];

/// Error of a pipeline: an unknown pass name, a pass that broke the graph (the verifier's
/// errors), or a dump that could not be written.
#[derive(Debug, thiserror::Error)]
pub enum PassError {
    /// A pass name that [`by_name`] does not know.
    #[error("unknown pass {name:?}; known passes: {known}")]
    UnknownPass {
        /// The name asked for.
        name: String,
        /// The known names, comma-separated.
        known: String,
    },
    /// The graph given to the pipeline is invalid (nothing was run).
    #[error("the input graph is invalid:\n{}", errors.join("\n"))]
    InvalidInput {
        /// Every problem found.
        errors: Vec<String>,
    },
    /// The graph check failed after a pass (a bug in that pass).
    #[error("graph is invalid after pass {pass}:\n{}", errors.join("\n"))]
    Invalid {
        /// The pass after which the check failed.
        pass: String,
        /// Every problem found.
        errors: Vec<String>,
    },
    /// A dump file could not be written.
    #[error("cannot write dump {}: {source}", path.display())]
    Dump {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
}

/// After which passes a pipeline writes the graph text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DumpAfter {
    /// After every pass (`--dump-after=all`).
    All,
    /// After the passes with these names (`--dump-after=cse`).
    Passes(Vec<String>),
}

impl DumpAfter {
    /// Parses a `--dump-after` value: `all` or a comma-separated list of pass names, each
    /// checked with [`by_name`].
    pub fn parse(s: &str) -> Result<DumpAfter, PassError> {
        if s == "all" {
            return Ok(DumpAfter::All);
        }
        let mut names = Vec::new();
        for n in s.split(',').map(str::trim) {
            by_name(n).ok_or_else(|| unknown(n))?;
            names.push(n.to_string());
        }
        Ok(DumpAfter::Passes(names))
    }

    fn wants(&self, pass: &str) -> bool {
        match self {
            DumpAfter::All => true,
            DumpAfter::Passes(v) => v.iter().any(|p| p == pass),
        }
    }
}

fn unknown(name: &str) -> PassError {
    let known: Vec<&str> = all().iter().map(|p| p.name).collect();
    PassError::UnknownPass {
        name: name.to_string(),
        known: known.join(", "),
    }
}

/// Runs a list of passes in order; checks the graph after each one when `verify` is on (the
/// default in debug builds and tests) and optionally dumps the graph text into a directory.
#[derive(Clone, Debug)]
pub struct Pipeline {
    passes: Vec<Pass>,
    /// Check the graph before the first pass and after every pass.
    pub verify: bool,
    dump: Option<(PathBuf, DumpAfter)>,
}

impl Default for Pipeline {
    /// The default pipeline ([`DEFAULT_PIPELINE`]).
    fn default() -> Pipeline {
        Pipeline::with_passes(DEFAULT_PIPELINE.iter().filter_map(|n| by_name(n)).collect())
    }
}

impl Pipeline {
    /// A pipeline of the passes called `names`, in order (a name may repeat).
    pub fn new(names: &[&str]) -> Result<Pipeline, PassError> {
        let passes = names
            .iter()
            .map(|n| by_name(n).ok_or_else(|| unknown(n)))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Pipeline::with_passes(passes))
    }

    /// A pipeline of the given passes, which need not be registered in [`all`] (a pass under
    /// development, or one made for a test).
    pub fn with_passes(passes: Vec<Pass>) -> Pipeline {
        Pipeline {
            passes,
            verify: cfg!(debug_assertions),
            dump: None,
        }
    }

    /// The passes, in order.
    pub fn passes(&self) -> &[Pass] {
        &self.passes
    }

    /// Writes the graph text into `dir` (created if missing): `00-input.ir`, then
    /// `NN-PASS.ir` after each pass that `after` selects, `NN` being the pass's 1-based
    /// position in the pipeline.
    pub fn dump_to(mut self, dir: impl Into<PathBuf>, after: DumpAfter) -> Pipeline {
        self.dump = Some((dir.into(), after));
        self
    }

    /// Runs every pass on `g`, returning one report per pass. Stops at the first failed
    /// check or dump.
    ///
    /// Each dump file is the canonical graph text ([`crate::text::print`], so it parses back)
    /// preceded by comment lines: `# input` or the pass's report.
    pub fn run(&self, g: &mut Graph) -> Result<Vec<PassReport>, PassError> {
        if self.verify {
            let errors = check_graph(g);
            if !errors.is_empty() {
                return Err(PassError::InvalidInput { errors });
            }
        }
        if let Some((dir, _)) = &self.dump {
            std::fs::create_dir_all(dir).map_err(|source| PassError::Dump {
                path: dir.clone(),
                source,
            })?;
            write_dump(dir, "00-input.ir", "input", g)?;
        }
        let mut reports = Vec::with_capacity(self.passes.len());
        for (i, p) in self.passes.iter().enumerate() {
            let report = p.apply(g);
            if self.verify {
                let errors = check_graph(g);
                if !errors.is_empty() {
                    return Err(PassError::Invalid {
                        pass: p.name.to_string(),
                        errors,
                    });
                }
            }
            if let Some((dir, after)) = &self.dump {
                if after.wants(p.name) {
                    let file = format!("{:02}-{}.ir", i + 1, p.name);
                    write_dump(dir, &file, &report.to_string(), g)?;
                }
            }
            reports.push(report);
        }
        Ok(reports)
    }
}

impl Pass {
    /// Runs the pass on `g` and inside the body of every scan node, innermost first (to the
    /// pass a body is an ordinary graph, [`crate::scan::ScanBody::to_graph`], with the scan's
    /// constant invariants as constants of the body so that folding and simplification see
    /// them); the optimized body is stored back: constants the pass made become further
    /// invariant operands, invariants the body no longer reads are dropped. One report: the
    /// counts of the bodies and the graph added, a body's remarks prefixed with its scan.
    pub fn apply(&self, g: &mut Graph) -> PassReport {
        let mut report = PassReport::new(self.name);
        for id in g.node_ids() {
            if !matches!(g[id].op, Op::Scan(_)) {
                continue;
            }
            let label = crate::verify::node_label(g, id);
            match self.apply_to_body(g, id) {
                Ok(inner) => {
                    for (k, n) in inner.counts {
                        report.count(&k, n);
                    }
                    for r in inner.remarks {
                        report.remark(format!("in the body of scan {label}: {r}"));
                    }
                }
                Err(e) => report.remark(format!("the body of scan {label} was left alone: {e}")),
            }
        }
        let main = (self.run)(g);
        for (k, n) in main.counts {
            report.count(&k, n);
        }
        report.remarks.extend(main.remarks);
        report
    }

    fn apply_to_body(&self, g: &mut Graph, id: NodeId) -> Result<PassReport, String> {
        let Op::Scan(body) = &g[id].op else {
            return Ok(PassReport::new(self.name));
        };
        let body = body.clone();
        let operands = g.operands(id);
        let types: Vec<&crate::shape::TensorType> = operands.iter().map(|&o| &g[o].ty).collect();
        let params = body.param_types(&types).map_err(|e| e.0)?;
        let fixed = body.carries + body.sequences;
        let consts: Vec<Option<crate::op::Literal>> = operands
            .iter()
            .enumerate()
            .map(|(i, &o)| match &g[o].op {
                Op::Const { value } if i >= fixed => Some(value.clone()),
                _ => None,
            })
            .collect();
        let (mut bg, _) = body.to_graph(&params, &consts)?;
        let report = self.apply(&mut bg);
        if !report.changed() {
            return Ok(report);
        }
        let (optimized, hoisted) = crate::scan::ScanBody::from_graph(
            &bg,
            &body.param_nodes(&bg),
            body.carries,
            body.sequences,
            body.reverse,
            body.axis,
        )?;
        let mut all = operands.clone();
        for (ty, value) in hoisted {
            let node = crate::graph::Node {
                op: Op::Const { value },
                ty,
                name: None,
                loc: g[id].loc.clone(),
                grad_of: g[id].grad_of,
            };
            all.push(g.add_raw(node, &[]));
        }
        let (pruned, kept) = optimized.prune_invariants();
        let kept_operands: Vec<NodeId> = kept.iter().map(|&i| all[i]).collect();
        if let Some(n) = g.get_mut(id) {
            n.op = Op::Scan(pruned);
        }
        g.set_operands(id, &kept_operands);
        // constants no longer read by anything
        let outputs: Vec<NodeId> = g.outputs().iter().map(|o| o.node).collect();
        for o in all {
            if g.contains(o)
                && matches!(g[o].op, Op::Const { .. })
                && g.users(o).is_empty()
                && !outputs.contains(&o)
            {
                g.remove(o);
            }
        }
        Ok(report)
    }
}

/// Writes `header` (each line as a `#` comment) and the graph text to `dir/file`.
fn write_dump(dir: &Path, file: &str, header: &str, g: &Graph) -> Result<(), PassError> {
    let path = dir.join(file);
    let mut text = String::new();
    for line in header.lines() {
        text.push_str("# ");
        text.push_str(line.trim_start());
        text.push('\n');
    }
    text.push_str(&crate::text::print(g));
    std::fs::write(&path, text).map_err(|source| PassError::Dump { path, source })
}

/// Runs the verifier ([`crate::verify::verify`]) and returns every violation as text (empty
/// when the graph is well formed). The pipeline calls it before the first pass and after each
/// one when [`Pipeline::verify`] is on.
pub fn check_graph(g: &Graph) -> Vec<String> {
    match crate::verify::verify(g) {
        Ok(()) => Vec::new(),
        Err(e) => e.errors.iter().map(|e| e.to_string()).collect(),
    }
}
