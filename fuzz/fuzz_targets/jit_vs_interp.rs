//! Differential fuzzing of the compiler: the input bytes drive a small grammar that builds a
//! random *well-typed* graph with the builder API (elementwise unary and binary ops with numpy
//! broadcasting, comparisons and selects, casts, reductions, argmax, matmul with transposed
//! operands, conv2d, max-pool, softmax and the cross-entropies, one-hot, gather and
//! scatter_add (indices past the end: clamped), reshape, transpose,
//! broadcast, slice, concat, hand-made fused blocks with dead instructions, trailing
//! reductions and extra results, params and state with updates, duplicated and constant
//! subexpressions and identities for the rewrite rules), optionally its gradient (autodiff).
//! The graph is compiled by the JIT and run on deterministic inputs; its outputs and updated
//! params and state must equal the reference interpreter's (f64) within the tolerance the
//! tests use (`gradlift::interp::agrees`, with the graph's `interp::longest_sum`). Optionally
//! the default pass pipeline runs first (fusion, folding, the rewrites), compared against the same reference.
//!
//! Inputs where the comparison says nothing about the compiler are skipped: a value beyond
//! the f32 range in the f64 reference (overflow), or outputs on which the interpreter itself
//! disagrees between f64 and f32 beyond the tolerance (an ill-conditioned point, where f32
//! rounding alone changes the result, such as a cancellation before a division). The grammar
//! also keeps most ops well conditioned: discontinuous ops (comparisons, sign, casts to i32,
//! argmax) only read exact values (leaves and data movement of them), and log, sqrt, div and
//! pow of computed values get arguments away from their singularities.
#![no_main]

use gradlift::codegen::{CompileOptions, MatmulKernel};
use gradlift::runtime;
use gradlift::fused::{FusedBody, FusedInst};
use gradlift::init::Rng;
use gradlift::interp::{self, Array, Values};
use gradlift::passes::Pipeline;
use gradlift::runtime::HostTensor;
use gradlift::{
    autodiff, text, BinaryOp, CmpOp, DType, Graph, Init, Literal, NodeId, Op, Padding, ReduceOp,
    TensorType, UnaryOp,
};
use libfuzzer_sys::arbitrary::Unstructured;
use libfuzzer_sys::fuzz_target;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};

/// The most elements of a node the grammar makes (keeps the interpreter fast).
const MAX_NUMEL: usize = 512;
/// The most body steps of one graph.
const MAX_STEPS: usize = 24;


/// Constant values the grammar uses.
const CONSTS: [f64; 8] = [0.0, 1.0, -1.0, 0.5, 2.0, -0.25, 3.0, 1e-3];

struct Gen<'a> {
    u: Unstructured<'a>,
    g: Graph,
    /// f32 values later steps may read.
    pool: Vec<NodeId>,
    /// Nodes whose values are exactly their leaves' (leaves, data movement of exact values):
    /// only these feed discontinuous ops.
    exact: HashSet<NodeId>,
    /// i32 label inputs and the class count their values stay below.
    labels: Vec<(NodeId, usize)>,
    /// i32 results that may become outputs.
    ints: Vec<NodeId>,
    names: usize,
    rng: Rng,
}

fn numel(s: &[usize]) -> usize {
    s.iter().product()
}

/// numpy broadcasting of `a` and `b` (either way).
fn broadcasts(a: &[usize], b: &[usize]) -> bool {
    a.iter()
        .rev()
        .zip(b.iter().rev())
        .all(|(&x, &y)| x == y || x == 1 || y == 1)
}

impl<'a> Gen<'a> {
    /// `0..n` from the input (0 when the bytes run out).
    fn pick(&mut self, n: usize) -> usize {
        if n <= 1 {
            return 0;
        }
        self.u.int_in_range(0..=n - 1).unwrap_or(0)
    }

    fn flag(&mut self) -> bool {
        self.pick(2) == 1
    }

    fn dims(&self, id: NodeId) -> Vec<usize> {
        self.g[id].ty.shape.dims().to_vec()
    }

    fn name(&mut self, prefix: &str) -> String {
        self.names += 1;
        format!("{prefix}{}", self.names)
    }

    /// A random shape of `rank` axes, each of extent 1 to 7, sometimes 0, the innermost
    /// sometimes up to 40 (past the unrolled vector loops' and GEMM tiles' widths), at most
    /// [`MAX_NUMEL`] elements.
    fn shape(&mut self, rank: usize) -> Vec<usize> {
        let mut s: Vec<usize> = (0..rank)
            .map(|_| match self.pick(16) {
                0 => 0,
                _ => 1 + self.pick(7),
            })
            .collect();
        if rank > 0 && self.pick(4) == 0 {
            s[rank - 1] = 1 + self.pick(40);
        }
        while numel(&s) > MAX_NUMEL {
            let i = s.iter().position(|&d| d > 1).unwrap_or(0);
            s[i] = 1;
        }
        s
    }

    /// Adds `op`; `None` when its types do not fit or the result is too large (then the node
    /// is removed again).
    fn add(&mut self, op: Op, operands: &[NodeId]) -> Option<NodeId> {
        let id = self.g.add(op, operands).ok()?;
        if self.g[id].ty.shape.numel() > 4 * MAX_NUMEL {
            self.g.remove(id);
            return None;
        }
        Some(id)
    }

    fn push(&mut self, id: NodeId, exact: bool) -> NodeId {
        if self.g[id].ty.dtype == DType::F32 {
            self.pool.push(id);
        } else {
            self.ints.push(id);
        }
        if exact {
            self.exact.insert(id);
        }
        id
    }

    /// A new leaf of shape `s`: an input, a constant (splat or dense) or a param.
    fn leaf(&mut self, s: &[usize]) -> NodeId {
        let ty = TensorType::f32(s.to_vec());
        let id = match self.pick(5) {
            0 | 1 => {
                let name = self.name("x");
                self.g.input(&name, ty).ok()
            }
            2 => {
                let v = CONSTS[self.pick(CONSTS.len())];
                self.g.constant(ty, Literal::Splat(v)).ok()
            }
            3 => {
                let v = (0..numel(s))
                    .map(|_| ((self.rng.uniform() * 4.0 - 2.0) * 8.0).round() / 8.0)
                    .collect();
                self.g.constant(ty, Literal::Dense(v)).ok()
            }
            _ => {
                let name = self.name("p");
                let seed = self.pick(1000) as u64;
                let init = Init::Uniform {
                    low: -1.0,
                    high: 1.0,
                    seed,
                };
                self.g.param(&name, s.to_vec(), init).ok()
            }
        };
        let id = id.expect("a leaf of a valid shape");
        self.push(id, true)
    }

    /// A pool node, or a new leaf of a random shape when the pool is empty.
    fn any(&mut self) -> NodeId {
        if self.pool.is_empty() || self.pick(8) == 0 {
            let r = self.pick(4);
            let s = self.shape(r);
            return self.leaf(&s);
        }
        let i = self.pick(self.pool.len());
        self.pool[i]
    }

    /// A pool node whose shape satisfies `ok`, if any (the choice among them from the input).
    fn find(&mut self, ok: impl Fn(&[usize]) -> bool) -> Option<NodeId> {
        let c: Vec<NodeId> = self
            .pool
            .iter()
            .copied()
            .filter(|&id| ok(self.g[id].ty.shape.dims()))
            .collect();
        if c.is_empty() {
            None
        } else {
            Some(c[self.pick(c.len())])
        }
    }

    /// A value that broadcasts with `s` (either way): a pool node, or a new leaf of a shape
    /// made from `s` (a suffix of it, some axes 1, sometimes a new leading axis).
    fn partner(&mut self, s: &[usize]) -> NodeId {
        if self.flag() {
            let s = s.to_vec();
            if let Some(id) = self.find(|t| broadcasts(&s, t)) {
                return id;
            }
        }
        let keep = self.pick(s.len() + 1);
        let mut t: Vec<usize> = s[s.len() - keep..].to_vec();
        for d in t.iter_mut() {
            if self.pick(3) == 0 {
                *d = 1;
            }
        }
        if self.pick(4) == 0 && t.len() < 4 {
            t.insert(0, 1 + self.pick(3));
        }
        self.leaf(&t)
    }

    /// An exact value (for discontinuous ops): an exact pool node or a new leaf.
    fn exact_value(&mut self) -> NodeId {
        let c: Vec<NodeId> = self
            .pool
            .iter()
            .copied()
            .filter(|id| self.exact.contains(id))
            .collect();
        if c.is_empty() || self.pick(4) == 0 {
            let r = self.pick(4);
            let s = self.shape(r);
            self.leaf(&s)
        } else {
            c[self.pick(c.len())]
        }
    }

    fn scalar(&mut self, v: f64) -> NodeId {
        let id = self.g.scalar(v);
        self.exact.insert(id);
        id
    }

    /// `|x| + 1`: at least 1 (log, sqrt and division of computed values stay well
    /// conditioned).
    fn away_from_zero(&mut self, x: NodeId) -> Option<NodeId> {
        let a = self.add(Op::Unary(UnaryOp::Abs), &[x])?;
        let one = self.scalar(1.0);
        self.add(Op::Binary(BinaryOp::Add), &[a, one])
    }

    fn is_exact(&self, id: NodeId) -> bool {
        self.exact.contains(&id)
    }

    fn step(&mut self) -> Option<()> {
        match self.pick(21) {
            0 | 1 => {
                use UnaryOp::*;
                let u = [
                    Neg, Exp, Log, Sqrt, Abs, Sign, Tanh, Sigmoid, Relu, Log1p, Expm1, Erf, Sin,
                    Cos,
                ][self.pick(14)];
                let x = if u == Sign {
                    self.exact_value()
                } else {
                    self.any()
                };
                let arg = match u {
                    Log | Sqrt if !self.is_exact(x) => self.away_from_zero(x)?,
                    // bounded arguments: no overflow, and sin/cos away from huge arguments
                    Exp | Expm1 | Sin | Cos if !self.is_exact(x) => {
                        self.add(Op::Unary(Tanh), &[x])?
                    }
                    // log1p over (0, 1): well inside its domain
                    Log1p if !self.is_exact(x) => self.add(Op::Unary(Sigmoid), &[x])?,
                    _ => x,
                };
                let exact = self.is_exact(x) && matches!(u, Neg | Abs | Relu);
                let y = self.add(Op::Unary(u), &[arg])?;
                self.push(y, exact);
            }
            2..=4 => {
                use BinaryOp::*;
                let b = [Add, Sub, Mul, Div, Max, Min, Pow][self.pick(7)];
                let a = self.any();
                let s = self.dims(a);
                let c = self.partner(&s);
                let (mut l, mut r) = if self.flag() { (a, c) } else { (c, a) };
                match b {
                    Div if !self.is_exact(r) => r = self.away_from_zero(r)?,
                    Pow if !(self.is_exact(l) && self.is_exact(r)) => {
                        // base in (0.5, 1.5), exponent in (-2, 2)
                        let sg = self.add(Op::Unary(UnaryOp::Sigmoid), &[l])?;
                        let half = self.scalar(0.5);
                        l = self.add(Op::Binary(Add), &[sg, half])?;
                        let t = self.add(Op::Unary(UnaryOp::Tanh), &[r])?;
                        let two = self.scalar(2.0);
                        r = self.add(Op::Binary(Mul), &[t, two])?;
                    }
                    _ => {}
                }
                let exact = self.is_exact(l) && self.is_exact(r) && matches!(b, Max | Min);
                let y = self.add(Op::Binary(b), &[l, r])?;
                self.push(y, exact);
            }
            5 => {
                // A comparison of exact values, as a mask or through select.
                use CmpOp::*;
                let c = [Eq, Ne, Lt, Le, Gt, Ge][self.pick(6)];
                let a = self.exact_value();
                let s = self.dims(a);
                let b = if self.flag() {
                    let e = self.exact_value();
                    if broadcasts(&s, &self.dims(e)) {
                        e
                    } else {
                        self.partner(&s)
                    }
                } else {
                    self.partner(&s)
                };
                let m = self.add(Op::Compare(c), &[a, b])?;
                let ms = self.dims(m);
                if self.flag() {
                    self.push(m, true);
                } else {
                    let x = self.partner(&ms);
                    let y = self.partner(&ms);
                    let exact = self.is_exact(x) && self.is_exact(y);
                    let z = self.add(Op::Select, &[m, x, y])?;
                    self.push(z, exact);
                }
            }
            6 | 7 => {
                let kind = [ReduceOp::Sum, ReduceOp::Mean, ReduceOp::Max][self.pick(3)];
                let x = self.any();
                let r = self.g[x].ty.shape.rank();
                let bits = self.pick(1 << r);
                let axes: Vec<usize> = (0..r).filter(|i| bits & (1 << i) != 0).collect();
                let keepdims = self.flag();
                let exact = self.is_exact(x) && kind == ReduceOp::Max;
                let y = self.add(
                    Op::Reduce {
                        kind,
                        axes,
                        keepdims,
                    },
                    &[x],
                )?;
                self.push(y, exact);
            }
            8 => {
                // argmax (i32) or a cast to i32, of an exact value; back to f32 or an output
                let x = self.exact_value();
                let r = self.g[x].ty.shape.rank();
                let i = if r > 0 && self.flag() {
                    let axis = self.pick(r);
                    self.add(Op::Argmax { axis }, &[x])?
                } else {
                    self.add(Op::Cast { to: DType::I32 }, &[x])?
                };
                self.push(i, false);
                if self.flag() {
                    let f = self.add(Op::Cast { to: DType::F32 }, &[i])?;
                    self.push(f, true);
                }
            }
            9 => {
                // reshape to a random factorization of the element count
                let x = self.any();
                let n = self.g[x].ty.shape.numel();
                let mut factors = Vec::new();
                let mut m = n;
                let mut p = 2;
                while m > 1 {
                    while m % p == 0 {
                        factors.push(p);
                        m /= p;
                    }
                    p += 1;
                }
                let rank = 1 + self.pick(4);
                let mut s = vec![1usize; rank];
                for f in factors {
                    let i = self.pick(rank);
                    s[i] *= f;
                }
                if rank == 1 && n == 1 && self.flag() {
                    s.clear();
                }
                let exact = self.is_exact(x);
                let y = self.add(Op::Reshape { shape: s.into() }, &[x])?;
                self.push(y, exact);
            }
            10 => {
                let x = self.any();
                let r = self.g[x].ty.shape.rank();
                let mut perm: Vec<usize> = (0..r).collect();
                for i in (1..r).rev() {
                    let j = self.pick(i + 1);
                    perm.swap(i, j);
                }
                let exact = self.is_exact(x);
                let y = self.add(Op::Transpose { perm }, &[x])?;
                self.push(y, exact);
            }
            11 => {
                // broadcast: axes of extent 1 expanded, maybe a new leading axis
                let x = self.any();
                let mut s = self.dims(x);
                for d in s.iter_mut() {
                    if *d == 1 {
                        *d = 1 + self.pick(4);
                    }
                }
                if self.flag() && s.len() < 4 {
                    s.insert(0, 1 + self.pick(3));
                }
                let exact = self.is_exact(x);
                let y = self.add(Op::Broadcast { shape: s.into() }, &[x])?;
                self.push(y, exact);
            }
            12 | 13 => {
                // matmul [m,k] x [k,n], each operand maybe read through a transpose
                let a = match self.find(|s| s.len() == 2) {
                    Some(a) if self.pick(4) != 0 => a,
                    _ => {
                        let s = self.shape(2);
                        self.leaf(&s)
                    }
                };
                let a = if self.flag() {
                    self.add(Op::Transpose { perm: vec![1, 0] }, &[a])?
                } else {
                    a
                };
                let k = self.dims(a)[1];
                let b = if self.flag() {
                    let t = self.find(|s| s.len() == 2 && s[1] == k);
                    match t {
                        Some(t) => self.add(Op::Transpose { perm: vec![1, 0] }, &[t])?,
                        None => {
                            let n = 1 + self.pick(7);
                            self.leaf(&[k, n])
                        }
                    }
                } else {
                    match self.find(|s| s.len() == 2 && s[0] == k) {
                        Some(b) => b,
                        None => {
                            let n = 1 + self.pick(7);
                            self.leaf(&[k, n])
                        }
                    }
                };
                let y = self.add(Op::Matmul, &[a, b])?;
                self.push(y, false);
            }
            14 => {
                // conv2d or max-pool of an NHWC value
                let x = match self.find(|s| s.len() == 4 && s[1] >= 2 && s[2] >= 2) {
                    Some(x) if self.flag() => x,
                    _ => {
                        let s = [
                            1 + self.pick(2),
                            2 + self.pick(5),
                            2 + self.pick(5),
                            1 + self.pick(3),
                        ];
                        self.leaf(&s)
                    }
                };
                let s = self.dims(x);
                let stride = [1 + self.pick(2), 1 + self.pick(2)];
                let (kh, kw) = (1 + self.pick(s[1].min(3)), 1 + self.pick(s[2].min(3)));
                let y = if self.flag() {
                    let o = 1 + self.pick(4);
                    let w = self.leaf(&[kh, kw, s[3], o]);
                    let padding = if self.flag() {
                        Padding::Same
                    } else {
                        Padding::Valid
                    };
                    self.add(Op::Conv2d { stride, padding }, &[x, w])?
                } else {
                    self.add(
                        Op::MaxPool2d {
                            window: [kh, kw],
                            stride,
                        },
                        &[x],
                    )?
                };
                self.push(y, false);
            }
            15 => {
                // softmax, log-softmax, the cross-entropies, one-hot
                let x = match self.find(|s| s.len() == 2) {
                    Some(x) if self.flag() => x,
                    _ => {
                        let s = self.shape(2);
                        self.leaf(&s)
                    }
                };
                let s = self.dims(x);
                let y = match self.pick(5) {
                    0 => {
                        let axis = self.pick(2);
                        self.add(Op::Softmax { axis }, &[x])?
                    }
                    1 => {
                        let axis = self.pick(2);
                        self.add(Op::LogSoftmax { axis }, &[x])?
                    }
                    2 => {
                        let l = self.partner(&s);
                        let l = self.add(Op::Broadcast { shape: s.into() }, &[l])?;
                        self.add(Op::SoftmaxCrossEntropy, &[x, l])?
                    }
                    k => {
                        let labels = self.labels_input(s[0], s[1]);
                        if k == 3 {
                            self.add(Op::SparseSoftmaxCrossEntropy, &[x, labels])?
                        } else {
                            let oh = self.add(Op::OneHot { depth: s[1] }, &[labels])?;
                            self.push(oh, true);
                            return Some(());
                        }
                    }
                };
                self.push(y, false);
            }
            16 => {
                // slice or concat
                let x = self.any();
                let s = self.dims(x);
                if s.is_empty() {
                    return None;
                }
                let exact = self.is_exact(x);
                if self.flag() {
                    let mut begin = Vec::new();
                    let mut end = Vec::new();
                    for &d in &s {
                        let b = self.pick(d);
                        begin.push(b);
                        end.push(b + 1 + self.pick(d - b));
                    }
                    let y = self.add(Op::Slice { begin, end }, &[x])?;
                    self.push(y, exact);
                } else {
                    let axis = self.pick(s.len());
                    let mut t = s.clone();
                    t[axis] = 1 + self.pick(4);
                    let other = match self.find(|u| {
                        u.len() == t.len()
                            && u.iter()
                                .zip(&t)
                                .enumerate()
                                .all(|(i, (a, b))| i == axis || a == b)
                    }) {
                        Some(o) => o,
                        None => self.leaf(&t),
                    };
                    let exact = exact && self.is_exact(other);
                    let ops = if self.flag() { [x, other] } else { [other, x] };
                    let y = self.add(Op::Concat { axis }, &ops)?;
                    self.push(y, exact);
                }
            }
            17 => self.fused()?,
            19 => {
                // gather along any axis (indices up to two past its end: clamped), maybe
                // scattered back into the table's shape
                let x = self.any();
                let s = self.dims(x);
                if s.is_empty() {
                    return None;
                }
                let axis = self.pick(s.len());
                let n = 1 + self.pick(4);
                let idx = self.labels_input(n, s[axis] + 2);
                let exact = self.is_exact(x);
                let y = self.add(Op::Gather { axis }, &[x, idx])?;
                self.push(y, exact);
                if self.flag() {
                    let z = self.add(
                        Op::ScatterAdd {
                            axis,
                            shape: s.into(),
                        },
                        &[y, idx],
                    )?;
                    self.push(z, false);
                }
            }
            18 => {
                // a duplicate of an existing computation (CSE), binary ops maybe swapped
                let body: Vec<NodeId> = self
                    .pool
                    .iter()
                    .copied()
                    .filter(|&id| !self.g[id].op.is_leaf())
                    .collect();
                if body.is_empty() {
                    return None;
                }
                let x = body[self.pick(body.len())];
                let op = self.g[x].op.clone();
                let mut ops = self.g.operands(x);
                if matches!(op, Op::Binary(_)) && self.flag() {
                    ops.reverse();
                }
                let exact = self.is_exact(x);
                let y = self.add(op, &ops)?;
                self.push(y, exact);
            }
            _ => {
                // an identity for the rewrite rules, or constants for folding
                let x = self.any();
                let s = self.dims(x);
                let cs: Vec<usize> = if self.flag() { vec![] } else { s.clone() };
                let ty = TensorType::f32(cs);
                let (v, op) = match self.pick(5) {
                    0 => (1.0, BinaryOp::Mul),
                    1 => (0.0, BinaryOp::Add),
                    2 => (0.0, BinaryOp::Sub),
                    3 => (1.0, BinaryOp::Div),
                    _ => (CONSTS[self.pick(CONSTS.len())], BinaryOp::Mul),
                };
                let c = self.g.constant(ty, Literal::Splat(v)).ok()?;
                self.exact.insert(c);
                let ops = if op == BinaryOp::Mul && self.flag() {
                    [c, x]
                } else {
                    [x, c]
                };
                let identity = match op {
                    BinaryOp::Mul | BinaryOp::Div => v == 1.0,
                    _ => v == 0.0,
                };
                let exact = identity && self.is_exact(x);
                let y = self.add(Op::Binary(op), &ops)?;
                self.push(y, exact);
            }
        }
        Some(())
    }

    /// An i32 input of `n` labels below `classes`.
    fn labels_input(&mut self, n: usize, classes: usize) -> NodeId {
        if let Some(&(id, _)) = self
            .labels
            .iter()
            .find(|&&(id, c)| c == classes && self.g[id].ty.shape.dims() == [n])
        {
            return id;
        }
        let name = self.name("labels");
        let id = self
            .g
            .input(&name, TensorType::i32([n]))
            .expect("a labels input");
        self.labels.push((id, classes));
        id
    }

    /// A hand-made fused block over 1-3 operands: random elementwise instructions (some of
    /// them dead), the last one over the whole domain, then a trailing reduction or extra
    /// results read through `fused_result`.
    fn fused(&mut self) -> Option<()> {
        // the domain: the shape of the first operand, or of a leading matmul (an epilogue)
        let producer = self.pick(3) == 0;
        let (domain, mut operands) = if producer {
            let a = match self.find(|s| s.len() == 2) {
                Some(a) => a,
                None => {
                    let s = self.shape(2);
                    self.leaf(&s)
                }
            };
            let [m, k] = self.dims(a)[..] else {
                return None;
            };
            let b = match self.find(|s| s.len() == 2 && s[0] == k) {
                Some(b) if self.flag() => b,
                _ => {
                    let n = 1 + self.pick(7);
                    self.leaf(&[k, n])
                }
            };
            (vec![m, self.dims(b)[1]], vec![a, b])
        } else {
            let first = self.any();
            (self.dims(first), vec![first])
        };
        for _ in 0..self.pick(3) {
            let d = domain.clone();
            let o = match self.find(|t| {
                t.len() <= d.len() && broadcasts(t, &d) && {
                    // t broadcasts *to* the domain
                    t.iter()
                        .rev()
                        .zip(d.iter().rev())
                        .all(|(&a, &b)| a == b || a == 1)
                }
            }) {
                Some(o) => o,
                None => {
                    let keep = self.pick(d.len() + 1);
                    let t: Vec<usize> = d[d.len() - keep..]
                        .iter()
                        .map(|&x| if self.pick(3) == 0 { 1 } else { x })
                        .collect();
                    self.leaf(&t)
                }
            };
            operands.push(o);
        }
        let n = operands.len();
        let mut tys: Vec<TensorType> = operands.iter().map(|&o| self.g[o].ty.clone()).collect();
        let mut insts: Vec<FusedInst> = Vec::new();
        if producer {
            let op = Op::Matmul;
            let ty = op.infer(&[&tys[0], &tys[1]], None).ok()?;
            tys.push(ty.clone());
            insts.push(FusedInst {
                op,
                args: vec![0, 1],
                ty,
            });
        }
        // the last elementwise instruction reads a value of the domain's shape
        let whole = if producer { n } else { 0 };
        let count = 1 + self.pick(5);
        for k in 0..count {
            let last = k + 1 == count;
            use BinaryOp::*;
            use UnaryOp::*;
            let a = if last { whole } else { self.pick(tys.len()) };
            let (op, args) = if last || self.flag() {
                let b = [Add, Sub, Mul, Max, Min][self.pick(5)];
                let c = self.pick(tys.len());
                let args = if self.flag() { vec![a, c] } else { vec![c, a] };
                (Op::Binary(b), args)
            } else {
                let u = [Neg, Abs, Tanh, Sigmoid, Relu, Erf][self.pick(6)];
                (Op::Unary(u), vec![a])
            };
            let arg_tys: Vec<&TensorType> = args.iter().map(|&i| &tys[i]).collect();
            let ty = op.infer(&arg_tys, None).ok()?;
            tys.push(ty.clone());
            insts.push(FusedInst { op, args, ty });
        }
        let main = n + insts.len() - 1;
        let mut extra = Vec::new();
        let reduce = !producer && self.flag() && !domain.is_empty();
        if reduce {
            let kind = [ReduceOp::Sum, ReduceOp::Mean, ReduceOp::Max][self.pick(3)];
            let r = domain.len();
            let bits = 1 + self.pick((1 << r) - 1);
            let axes: Vec<usize> = (0..r).filter(|i| bits & (1 << i) != 0).collect();
            let op = Op::Reduce {
                kind,
                axes,
                keepdims: self.flag(),
            };
            let ty = op.infer(&[&tys[main]], None).ok()?;
            insts.push(FusedInst {
                op,
                args: vec![main],
                ty,
            });
        } else {
            for v in n..main {
                if tys[v] == tys[main] && self.pick(3) == 0 {
                    extra.push(v - n + 1);
                }
            }
        }
        let body = FusedBody {
            n_params: n,
            insts,
            extra: extra.clone(),
        };
        let f = self.add(Op::Fused(body), &operands)?;
        self.push(f, false);
        for index in 1..=extra.len() {
            let r = self.add(Op::FusedResult { index }, &[f])?;
            self.push(r, false);
        }
        Some(())
    }
}

/// What the target saw, printed now and then (how many inputs compared, how many skipped).
static GRAPHS: AtomicU64 = AtomicU64::new(0);
static COMPARED: AtomicU64 = AtomicU64::new(0);
static OPTIMIZED: AtomicU64 = AtomicU64::new(0);
static OVERFLOW: AtomicU64 = AtomicU64::new(0);
static ILL_CONDITIONED: AtomicU64 = AtomicU64::new(0);
static WITH_GRAD: AtomicU64 = AtomicU64::new(0);

/// Every output and update value of `g` in `values`, by name (outputs) or target name.
fn results<T: interp::Float>(g: &Graph, values: &Values<T>) -> Vec<(String, DType, Vec<f64>)> {
    let mut out = Vec::new();
    for o in g.outputs() {
        let v = values.get(o.node).expect("a value of every output");
        out.push((o.name.clone(), g[o.node].ty.dtype, v.to_f64_vec()));
    }
    for u in g.updates() {
        let v = values.get(u.value).expect("a value of every update");
        let name = g[u.target].name.clone().expect("a named target");
        out.push((format!("update of {name}"), DType::F32, v.to_f64_vec()));
    }
    out
}

/// Compiles `g`, runs it (a first call on other values when it updates nothing, so that
/// stale buffers show) and returns its outputs and updated params/state as [`results`] does.
fn run_jit(
    g: &Graph,
    opts: &CompileOptions,
    inputs: &[(String, HostTensor)],
    params: &HashMap<String, HostTensor>,
) -> Vec<(String, DType, Vec<f64>)> {
    let mut exe = runtime::compile(g, opts)
        .unwrap_or_else(|e| panic!("compile error on a valid graph: {e}\n{}", text::print(g)));
    let names: Vec<String> = g
        .inputs()
        .iter()
        .map(|&id| g[id].name.clone().expect("a named input"))
        .collect();
    let feed: Vec<(&str, HostTensor)> = inputs
        .iter()
        .filter(|(n, _)| names.contains(n))
        .map(|(n, t)| (n.as_str(), t.clone()))
        .collect();
    // the params and state the reference started from
    for (name, t) in params {
        if exe.param(name).is_some() {
            exe.set_param(name, t.clone()).expect("set a param");
        } else if exe.state(name).is_some() {
            exe.set_state(name, t.clone()).expect("set a state");
        }
    }
    if g.updates().is_empty() {
        let dirty: Vec<(&str, HostTensor)> = feed
            .iter()
            .map(|(n, t)| {
                let v: Vec<f64> = t.to_f64().iter().map(|x| 1.5 - 2.0 * x).collect();
                (*n, HostTensor::from_f64(&t.ty(), &v))
            })
            .collect();
        exe.run(&dirty).expect("run on dirty inputs");
    }
    let got = exe.run(&feed).expect("run");
    let mut out: Vec<(String, DType, Vec<f64>)> = got
        .into_iter()
        .map(|(name, t)| (name, t.dtype(), t.to_f64()))
        .collect();
    for u in g.updates() {
        let name = g[u.target].name.clone().expect("a named target");
        let t = exe
            .param(&name)
            .or_else(|| exe.state(&name))
            .expect("an updated param or state");
        out.push((format!("update of {name}"), DType::F32, t.to_f64()));
    }
    out
}

fn report(what: &str, g: &Graph, detail: &str) -> ! {
    panic!(
        "JIT and interpreter disagree ({what}): {detail}\ngraph:\n{}",
        text::print(g)
    );
}

fuzz_target!(|data: &[u8]| {
    let mut u = Unstructured::new(data);
    let seed: u64 = u.arbitrary().unwrap_or(0);
    let config: u8 = u.arbitrary().unwrap_or(0);
    let mut gen = Gen {
        u,
        g: Graph::new("fuzz"),
        pool: Vec::new(),
        exact: HashSet::new(),
        labels: Vec::new(),
        ints: Vec::new(),
        names: 0,
        rng: Rng::new(seed),
    };
    let with_state = config & 1 != 0;
    let specials = config & 2 != 0;
    let optimize = config & 4 != 0;
    let with_grad = config & 8 != 0;
    let kernel = if config & 16 != 0 {
        MatmulKernel::Cranelift
    } else {
        MatmulKernel::Gemm
    };
    let state = if with_state {
        let r = gen.pick(3);
        let s = gen.shape(r);
        let st = gen.g.state("s", s, Init::Zeros).expect("a state");
        gen.push(st, true);
        Some(st)
    } else {
        None
    };
    let steps = 1 + gen.pick(MAX_STEPS);
    for _ in 0..steps {
        gen.step();
    }
    if gen.pool.is_empty() {
        return;
    }
    // outputs: the last value, some others, maybe an i32 one
    let last = *gen.pool.last().expect("a value");
    gen.g.add_output("out0", last).expect("an output");
    for k in 1..=gen.pick(3) {
        let i = gen.pick(gen.pool.len());
        let id = gen.pool[i];
        gen.g.add_output(&format!("out{k}"), id).expect("an output");
    }
    if !gen.ints.is_empty() && gen.flag() {
        let i = gen.pick(gen.ints.len());
        let id = gen.ints[i];
        gen.g.add_output("ints", id).expect("an output");
    }
    if let Some(st) = state {
        let s = gen.dims(st);
        if let Some(v) = gen.find(|t| t == s.as_slice()) {
            if v != st {
                gen.g.add_update(st, v).expect("an update");
            }
        }
    }
    // a param updated by a value of its shape (SGD-like), read by other nodes before
    let params = gen.g.params();
    if !params.is_empty() && gen.flag() {
        let p = params[gen.pick(params.len())];
        let s = gen.dims(p);
        if let Some(v) = gen.find(|t| t == s.as_slice()) {
            if v != p && !gen.g.updates().iter().any(|u| u.target == p) {
                gen.g.add_update(p, v).expect("an update");
            }
        }
    }
    let mut g = gen.g;
    // the gradient of a scalar of one value with respect to the f32 inputs and params
    if with_grad {
        let mut h = g.clone();
        let wrt: Vec<NodeId> = h
            .inputs()
            .into_iter()
            .chain(h.params())
            .filter(|&id| h[id].ty.dtype == DType::F32)
            .collect();
        let r = h[last].ty.shape.rank();
        let axes: Vec<usize> = (0..r).collect();
        if let Ok(loss) = h.sum(last, &axes, false) {
            if let Ok(grads) = autodiff::grad(&mut h, loss, &wrt) {
                for (k, d) in grads.into_iter().enumerate() {
                    h.add_output(&format!("grad{k}"), d).expect("an output");
                }
                g = h;
                WITH_GRAD.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
    if let Err(e) = gradlift::verify::verify(&g) {
        panic!(
            "the grammar built an invalid graph: {e}\n{}",
            text::print(&g)
        );
    }
    if std::env::var_os("GRADLIFT_FUZZ_PRINT").is_some() {
        // reproducing a crash: the graph and the options before anything runs
        eprintln!(
            "seed {seed}, config {config:#x} (optimize {optimize}, specials {specials}, {kernel:?})\n{}",
            text::print(&g)
        );
    }
    let n = GRAPHS.fetch_add(1, Ordering::Relaxed) + 1;
    if n.is_power_of_two() || n % 10_000 == 0 {
        eprintln!(
            "jit_vs_interp: {n} graphs, {} compared ({} optimized, {} with gradients), skipped: {} overflow, {} ill-conditioned",
            COMPARED.load(Ordering::Relaxed),
            OPTIMIZED.load(Ordering::Relaxed),
            WITH_GRAD.load(Ordering::Relaxed),
            OVERFLOW.load(Ordering::Relaxed),
            ILL_CONDITIONED.load(Ordering::Relaxed),
        );
    }

    // deterministic inputs: f32 uniform in [-2, 2) (some special values when asked), labels
    // below their class count; params and state from their initializers
    let mut rng = Rng::new(seed ^ 0x9e37_79b9_7f4a_7c15);
    let mut host = Vec::new();
    let mut feeds64: HashMap<NodeId, Array<f64>> = HashMap::new();
    for id in g.inputs() {
        let ty = g[id].ty.clone();
        let classes = gen
            .labels
            .iter()
            .find(|(l, _)| *l == id)
            .map_or(2, |&(_, c)| c);
        let v: Vec<f64> = (0..ty.shape.numel())
            .map(|_| match ty.dtype {
                DType::I32 => rng.below(classes as u64) as f64,
                DType::F32 if specials && rng.below(4) == 0 => {
                    interp::SPECIAL_VALUES[rng.below(interp::SPECIAL_VALUES.len() as u64) as usize]
                }
                DType::F32 => 4.0 * rng.uniform() - 2.0,
            })
            .collect();
        let t = HostTensor::from_f64(&ty, &v);
        feeds64.insert(
            id,
            Array {
                shape: ty.shape.clone(),
                data: t.to_f64(),
            },
        );
        host.push((g[id].name.clone().expect("a named input"), t));
    }
    let mut start = HashMap::new();
    for id in g.params().into_iter().chain(g.states()) {
        let ty = g[id].ty.clone();
        let init = match &g[id].op {
            Op::Param { init } | Op::State { init } => init.clone(),
            _ => unreachable!(),
        };
        let t = HostTensor::from_f64(&ty, &gradlift::init::values(&init, &ty.shape));
        feeds64.insert(
            id,
            Array {
                shape: ty.shape.clone(),
                data: t.to_f64(),
            },
        );
        start.insert(g[id].name.clone().expect("a named leaf"), t);
    }
    let feeds32: HashMap<NodeId, Array<f32>> =
        feeds64.iter().map(|(&id, a)| (id, a.convert())).collect();

    let want = interp::eval::<f64>(&g, &feeds64).unwrap_or_else(|e| {
        panic!(
            "the interpreter fails on a valid graph: {e}\n{}",
            text::print(&g)
        )
    });
    // overflow: a value beyond the f32 range that f64 still represents
    for id in g.node_ids() {
        if let Some(v) = want.get(id) {
            if v.data
                .iter()
                .any(|x| x.is_finite() && x.abs() > f32::MAX as f64 / 16.0)
            {
                OVERFLOW.fetch_add(1, Ordering::Relaxed);
                return;
            }
        }
    }
    let want = results(&g, &want);
    let terms0 = interp::longest_sum(&g);
    // ill-conditioned: f32 rounding alone moves the interpreter's results out of tolerance
    let want32 = interp::eval::<f32>(&g, &feeds32).unwrap_or_else(|e| {
        panic!(
            "the f32 interpreter fails on a valid graph: {e}\n{}",
            text::print(&g)
        )
    });
    for ((_, dtype, w), (_, _, w32)) in want.iter().zip(results(&g, &want32)) {
        if interp::agrees(&w32, w, *dtype, terms0).is_err() {
            ILL_CONDITIONED.fetch_add(1, Ordering::Relaxed);
            return;
        }
    }
    COMPARED.fetch_add(1, Ordering::Relaxed);

    let opts = CompileOptions {
        matmul: kernel,
        verify: true,
        threads: 1,
        poison: true,
        flush_denormals: false,
    };
    let compare = |what: &str, h: &Graph, got: Vec<(String, DType, Vec<f64>)>, terms: usize| {
        for (name, dtype, w) in &want {
            let Some((_, _, x)) = got.iter().find(|(n, _, _)| n == name) else {
                report(what, h, &format!("{name} is missing"));
            };
            if let Err(e) = interp::agrees(x, w, *dtype, terms) {
                report(what, h, &format!("{name} {e}"));
            }
        }
    };
    compare("unoptimized", &g, run_jit(&g, &opts, &host, &start), terms0);
    if optimize {
        let mut h = g.clone();
        Pipeline::default().run(&mut h).unwrap_or_else(|e| {
            panic!(
                "the default pipeline fails on a valid graph: {e}\n{}",
                text::print(&g)
            )
        });
        let terms = terms0.max(interp::longest_sum(&h));
        OPTIMIZED.fetch_add(1, Ordering::Relaxed);
        compare(
            "after the default pipeline",
            &h,
            run_jit(&h, &opts, &host, &start),
            terms,
        );
    }
});
