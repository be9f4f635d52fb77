//! Shared helpers of the `passes_*` tests: a seeded random graph generator whose graphs
//! contain the patterns the passes look for (identities, layout chains, duplicates, constant
//! subexpressions, dead nodes, softmax and cross-entropy chains).
#![allow(dead_code)]

use gradlift::init::Rng;
use gradlift::{DType, Graph, Init, Literal, NodeId, Op, Shape, TensorType};

/// A random, type-correct graph of about `steps` body nodes made from `seed`. Every input is
/// f32 in `[-2, 2]` when fed by [`random_feeds_f64`]-style helpers, except `labels: i32[2]`
/// whose valid range is `0..3`.
pub fn random_graph(seed: u64, steps: usize) -> Graph {
    let mut r = Gen {
        rng: Rng::new(seed),
        g: Graph::new(format!("random_{seed}")),
        pool: Vec::new(),
    };
    r.build(steps);
    r.g
}

struct Gen {
    rng: Rng,
    g: Graph,
    /// f32 nodes that later steps may use.
    pool: Vec<NodeId>,
}

const S23: [usize; 2] = [2, 3];

impl Gen {
    fn below(&mut self, n: usize) -> usize {
        self.rng.below(n as u64) as usize
    }

    fn shape(&self, id: NodeId) -> &Shape {
        &self.g[id].ty.shape
    }

    /// A random pool node of shape `s`, if any.
    fn pick_shape(&mut self, s: &[usize]) -> Option<NodeId> {
        let c: Vec<NodeId> = self
            .pool
            .iter()
            .copied()
            .filter(|&id| self.g[id].ty.shape.dims() == s)
            .collect();
        if c.is_empty() {
            None
        } else {
            Some(c[self.below(c.len())])
        }
    }

    fn pick(&mut self) -> NodeId {
        let i = self.below(self.pool.len());
        self.pool[i]
    }

    fn splat(&mut self, shape: &[usize], v: f64) -> NodeId {
        self.g
            .constant(TensorType::f32(shape.to_vec()), Literal::Splat(v))
            .unwrap()
    }

    fn dense(&mut self, shape: &[usize]) -> NodeId {
        let n: usize = shape.iter().product();
        let v: Vec<f64> = (0..n)
            .map(|_| (self.rng.uniform() * 4.0 - 2.0) * 0.5)
            .collect();
        self.g
            .constant(TensorType::f32(shape.to_vec()), Literal::Dense(v))
            .unwrap()
    }

    fn push(&mut self, id: NodeId) -> NodeId {
        self.pool.push(id);
        id
    }

    fn build(&mut self, steps: usize) {
        let x0 = self.g.input("x0", TensorType::f32(S23)).unwrap();
        let x1 = self.g.input("x1", TensorType::f32(S23)).unwrap();
        let v = self.g.input("v", TensorType::f32([3])).unwrap();
        let s = self.g.input("s", TensorType::f32([])).unwrap();
        let labels = self.g.input("labels", TensorType::i32([2])).unwrap();
        let w = self
            .g
            .param(
                "w",
                [3, 2],
                Init::Uniform {
                    low: -1.0,
                    high: 1.0,
                    seed: 7,
                },
            )
            .unwrap();
        let m = self.g.state("m", S23, Init::Zeros).unwrap();
        for id in [x0, x1, v, s, w, m] {
            self.push(id);
        }
        for _ in 0..steps {
            self.step(labels);
        }
        // Outputs: the last node and one or two random ones; an update of the state.
        let last = *self.pool.last().unwrap();
        self.g.add_output("out0", last).unwrap();
        for k in 1..=self.below(2) + 1 {
            let id = self.pick();
            self.g.add_output(&format!("out{k}"), id).unwrap();
        }
        if let Some(val) = self.pick_shape(&S23) {
            if val != m {
                self.g.add_update(m, val).unwrap();
            }
        }
    }

    fn step(&mut self, labels: NodeId) {
        match self.below(16) {
            0 => {
                use gradlift::UnaryOp::*;
                let u = [Neg, Tanh, Sigmoid, Relu, Abs][self.below(5)];
                let x = self.pick();
                let y = self.g.add(Op::Unary(u), &[x]).unwrap();
                self.push(y);
            }
            1 => {
                // exp of a bounded value, so chains cannot overflow.
                let x = self.pick();
                let t = self.g.tanh(x).unwrap();
                let y = self.g.exp(t).unwrap();
                self.push(y);
            }
            2 | 3 => {
                use gradlift::BinaryOp::*;
                let b = [Add, Sub, Mul, Max, Min][self.below(5)];
                let a = self.pick();
                let sa = self.shape(a).clone();
                // Same shape, or a broadcastable one ([3] or [] against [2,3]).
                let other = match self.below(3) {
                    0 => self.pick_shape(&[]),
                    1 if sa.dims() == S23 => self.pick_shape(&[3]),
                    _ => self.pick_shape(sa.dims()),
                };
                let bb = other.unwrap_or(a);
                let (l, r) = if self.below(2) == 0 { (a, bb) } else { (bb, a) };
                let y = self.g.add(Op::Binary(b), &[l, r]).unwrap();
                self.push(y);
            }
            4 => {
                // An identity: x*1, 1*x, x+0, 0+x, x-0, x/1, neg(neg x).
                let x = self.pick();
                let sx = self.shape(x).clone();
                let cshape: Vec<usize> = if self.below(2) == 0 {
                    vec![]
                } else {
                    sx.0.clone()
                };
                let y = match self.below(7) {
                    0 => {
                        let c = self.splat(&cshape, 1.0);
                        self.g.mul(x, c).unwrap()
                    }
                    1 => {
                        let c = self.splat(&cshape, 1.0);
                        self.g.mul(c, x).unwrap()
                    }
                    2 => {
                        let c = self.splat(&cshape, 0.0);
                        self.g.add2(x, c).unwrap()
                    }
                    3 => {
                        let c = self.splat(&cshape, 0.0);
                        self.g.add2(c, x).unwrap()
                    }
                    4 => {
                        let c = self.splat(&cshape, 0.0);
                        self.g.sub(x, c).unwrap()
                    }
                    5 => {
                        let c = self.splat(&cshape, 1.0);
                        self.g.div(x, c).unwrap()
                    }
                    _ => {
                        let n = self.g.neg(x).unwrap();
                        self.g.neg(n).unwrap()
                    }
                };
                self.push(y);
            }
            5 => {
                // Constant subexpressions, sometimes multiplied by zero.
                let a = self.dense(&S23);
                let b = if self.below(2) == 0 {
                    self.splat(&[], 0.0)
                } else {
                    self.dense(&[3])
                };
                let c = self.g.mul(a, b).unwrap();
                let x = self.pick_shape(&S23).unwrap_or(c);
                let y = self.g.add2(x, c).unwrap();
                self.push(y);
            }
            6 => {
                // Transposes, sometimes doubled.
                let Some(x) = self.pick_shape(&S23) else {
                    return;
                };
                let t = self.g.transpose(x, &[1, 0]).unwrap();
                let y = if self.below(2) == 0 {
                    self.g.transpose(t, &[1, 0]).unwrap()
                } else {
                    t
                };
                self.push(y);
            }
            7 => {
                // Reshape chains through [6] and [3,2], ending at [2,3] or [3,2].
                let Some(x) = self.pick_shape(&S23) else {
                    return;
                };
                let a = self.g.reshape(x, [6]).unwrap();
                let b = self.g.reshape(a, [3, 2]).unwrap();
                let y = if self.below(2) == 0 {
                    self.g.reshape(b, S23).unwrap()
                } else {
                    b
                };
                self.push(y);
            }
            8 => {
                // Broadcasts: [] -> [3] -> [2,3], or to the same shape.
                let y = match self.below(2) {
                    0 => {
                        let Some(x) = self.pick_shape(&[]) else {
                            return;
                        };
                        let a = self.g.broadcast(x, [3]).unwrap();
                        self.g.broadcast(a, S23).unwrap()
                    }
                    _ => {
                        let x = self.pick();
                        let s = self.shape(x).clone();
                        self.g.broadcast(x, s).unwrap()
                    }
                };
                self.push(y);
            }
            9 => {
                // Softmax, log of softmax.
                let Some(x) = self.pick_shape(&S23) else {
                    return;
                };
                let axis = self.below(2);
                let sm = self.g.softmax(x, axis).unwrap();
                let y = if self.below(2) == 0 {
                    self.g.log(sm).unwrap()
                } else {
                    sm
                };
                self.push(y);
            }
            10 => {
                // Sparse cross-entropy pattern (labels in 0..3).
                let Some(logits) = self.pick_shape(&S23) else {
                    return;
                };
                let oh = self.g.one_hot(labels, 3).unwrap();
                let ls = self.log_softmax1(logits);
                let m = if self.below(2) == 0 {
                    self.g.mul(oh, ls).unwrap()
                } else {
                    self.g.mul(ls, oh).unwrap()
                };
                let s = self.g.sum(m, &[1], false).unwrap();
                let y = self.g.neg(s).unwrap();
                self.push(y);
            }
            11 => {
                // Dense cross-entropy pattern against probabilities.
                let Some(logits) = self.pick_shape(&S23) else {
                    return;
                };
                let Some(p) = self.pick_shape(&S23) else {
                    return;
                };
                let y = self.g.softmax(p, 1).unwrap();
                let ls = self.log_softmax1(logits);
                let m = self.g.mul(y, ls).unwrap();
                let s = self.g.sum(m, &[1], false).unwrap();
                let out = self.g.neg(s).unwrap();
                self.push(out);
            }
            12 => {
                // Reductions.
                let Some(x) = self.pick_shape(&S23) else {
                    return;
                };
                let axes: &[usize] = [&[0usize][..], &[1], &[0, 1]][self.below(3)];
                let y = if self.below(2) == 0 {
                    self.g.sum(x, axes, false).unwrap()
                } else {
                    self.g.mean(x, axes, false).unwrap()
                };
                self.push(y);
            }
            13 => {
                // Matmul [2,3] x [3,2].
                let Some(a) = self.pick_shape(&S23) else {
                    return;
                };
                let Some(b) = self.pick_shape(&[3, 2]) else {
                    return;
                };
                let y = self.g.matmul(a, b).unwrap();
                self.push(y);
            }
            14 => {
                // A duplicate of an existing computation (for CSE).
                let body: Vec<NodeId> = self
                    .pool
                    .iter()
                    .copied()
                    .filter(|&id| !self.g[id].op.is_leaf())
                    .collect();
                if body.is_empty() {
                    return;
                }
                let x = body[self.below(body.len())];
                let op = self.g[x].op.clone();
                let ops = self.g.operands(x);
                let y = self.g.add(op, &ops).unwrap();
                self.push(y);
            }
            _ => {
                // Casts and comparisons (non-float paths): a mask times a value.
                let Some(x) = self.pick_shape(&S23) else {
                    return;
                };
                let z = self.splat(&[], 0.0);
                let mask = self.g.compare(gradlift::CmpOp::Gt, x, z).unwrap();
                let i = self.g.cast(mask, DType::I32).unwrap();
                let f = self.g.cast(i, DType::F32).unwrap();
                let y = self.g.mul(f, x).unwrap();
                self.push(y);
            }
        }
    }

    fn log_softmax1(&mut self, logits: NodeId) -> NodeId {
        if self.below(2) == 0 {
            self.g.log_softmax(logits, 1).unwrap()
        } else {
            let s = self.g.softmax(logits, 1).unwrap();
            self.g.log(s).unwrap()
        }
    }
}

/// The graph as text, for comparing two graphs.
pub fn print(g: &Graph) -> String {
    // TODO(text): gradlift::text::print once the printer is merged.
    format!("{g:#?}")
}
