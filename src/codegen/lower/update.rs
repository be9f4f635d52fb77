//! Kernel selection for Adam's update: a fused body that computes exactly what
//! [`crate::optim::Optimizer::Adam`] (or `AdamW`) builds for one param is lowered as a call of
//! [`crate::codegen::kernels::gl_adam_update`] instead of a JIT loop (why: that module's
//! documentation). The match is structural and exact: every instruction of the body must be
//! one of the update's, with its operands in the update's order (up to swapping the operands
//! of an `add` or a `mul`, which IEEE arithmetic does not distinguish), so the kernel's
//! results are the loop's to the bit. Any other body, however close, keeps its loop.

use super::{LowerError, Lowerer};
use crate::codegen::kernels::{Kernel, ADAM_WORDS};
use crate::codegen::plan::Loc;
use crate::fused::FusedBody;
use crate::op::{BinaryOp, Op, UnaryOp};
use crate::shape::Shape;
use cranelift_codegen::ir::Value;

/// The operands (indices of the fused node's operands) of a recognized Adam update body, and
/// which of the body's results is the new param, first and second moment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct AdamBody {
    /// The shards' gradients, summed left to right.
    pub grads: Vec<usize>,
    /// The scalar the gradient sum is multiplied by (`1 / shards`, or a clipping factor).
    pub scale: Option<usize>,
    /// The param, its first and second moment.
    pub w: usize,
    pub m: usize,
    pub v: usize,
    /// Scalars `1 - beta1`, `1 - beta2`, the step size `alpha` and `epsilon`.
    pub c1: usize,
    pub c2: usize,
    pub alpha: usize,
    pub eps: usize,
    /// AdamW's decay `w - (w * weight_decay) * lr`: the scalars `(weight_decay, lr)`.
    pub decay: Option<(usize, usize)>,
    /// The body's result index (0 = the node itself, `k` = `fused_result index=k`) of the new
    /// param, first moment and second moment.
    pub results: [usize; 3],
}

/// Walks a body from its results, marking each instruction it matches.
struct Matcher<'b> {
    body: &'b FusedBody,
    /// Operands that are whole arrays of the domain's shape (not broadcast).
    full: Vec<bool>,
    /// Operands that are one element (broadcast scalars).
    one: Vec<bool>,
    matched: Vec<bool>,
}

impl Matcher<'_> {
    /// `(a, b)` of instruction value `v` when it is binary op `op` (marking it matched).
    fn bin(&mut self, v: usize, op: BinaryOp) -> Option<(usize, usize)> {
        let i = v.checked_sub(self.body.n_params)?;
        let inst = self.body.insts.get(i)?;
        if inst.op != Op::Binary(op) || inst.args.len() != 2 {
            return None;
        }
        self.matched[i] = true;
        Some((inst.args[0], inst.args[1]))
    }

    /// The operand of instruction value `v` when it is unary op `op` (marking it matched).
    fn unary(&mut self, v: usize, op: UnaryOp) -> Option<usize> {
        let i = v.checked_sub(self.body.n_params)?;
        let inst = self.body.insts.get(i)?;
        if inst.op != Op::Unary(op) || inst.args.len() != 1 {
            return None;
        }
        self.matched[i] = true;
        Some(inst.args[0])
    }

    fn full(&self, v: usize) -> Option<usize> {
        self.full.get(v).copied().unwrap_or(false).then_some(v)
    }

    fn scalar(&self, v: usize) -> Option<usize> {
        self.one.get(v).copied().unwrap_or(false).then_some(v)
    }

    /// `(x, s)` of a commutative `x op s` whose one side is a scalar operand.
    fn with_scalar(&mut self, v: usize, op: BinaryOp) -> Option<(usize, usize)> {
        let (a, b) = self.bin(v, op)?;
        match (self.scalar(a), self.scalar(b)) {
            (_, Some(s)) => Some((a, s)),
            (Some(s), None) => Some((b, s)),
            (None, None) => None,
        }
    }

    /// `(x, s)` where `v = add(x, s)` or `add(s, x)` and `s` is a full operand.
    fn add_full(&mut self, v: usize) -> Option<(usize, usize)> {
        let (a, b) = self.bin(v, BinaryOp::Add)?;
        match (self.full(a), self.full(b)) {
            (Some(f), _) => Some((b, f)),
            (None, Some(f)) => Some((a, f)),
            (None, None) => None,
        }
    }

    /// The gradients of a left-to-right sum of full operands.
    fn sum(&mut self, v: usize) -> Option<Vec<usize>> {
        if let Some(g) = self.full(v) {
            return Some(vec![g]);
        }
        let (rest, g) = self.add_full(v)?;
        let mut grads = self.sum(rest)?;
        grads.push(g);
        Some(grads)
    }

    /// The gradient: a full operand, or a sum of them times a scalar.
    fn grad(&mut self, v: usize) -> Option<(Vec<usize>, Option<usize>)> {
        if let Some(g) = self.full(v) {
            return Some((vec![g], None));
        }
        let (sum, s) = self.with_scalar(v, BinaryOp::Mul)?;
        Some((self.sum(sum)?, Some(s)))
    }

    /// `(x_new, x, c, inner)` of a moment's update `x + inner(...) * c` (operands of the add in
    /// either order), where `inner` is `sub(t, x)`: returns `(x, c, t)`.
    fn moment(&mut self, v: usize) -> Option<(usize, usize, usize)> {
        let (a, b) = self.bin(v, BinaryOp::Add)?;
        for (x, rest) in [(a, b), (b, a)] {
            let Some(x) = self.full(x) else { continue };
            let (diff, c) = self.with_scalar(rest, BinaryOp::Mul)?;
            let (t, x2) = self.bin(diff, BinaryOp::Sub)?;
            return (x2 == x).then_some((x, c, t));
        }
        None
    }

    /// The param before Adam's step: a full operand `w`, or AdamW's `w - (w * wd) * lr`.
    fn decayed(&mut self, v: usize) -> Option<(usize, Option<(usize, usize)>)> {
        if let Some(w) = self.full(v) {
            return Some((w, None));
        }
        let (w, dec) = self.bin(v, BinaryOp::Sub)?;
        let w = self.full(w)?;
        let (wwd, lr) = self.with_scalar(dec, BinaryOp::Mul)?;
        let (w2, wd) = self.with_scalar(wwd, BinaryOp::Mul)?;
        (w2 == w).then_some((w, Some((wd, lr))))
    }
}

impl AdamBody {
    /// The Adam update that `body` computes, if it is exactly one: operands of shapes
    /// `in_shapes`, every array operand of the domain's shape, no producer or reduction, and
    /// three results (new param, first moment, second moment) in any order.
    pub(crate) fn of(body: &FusedBody, in_shapes: &[Shape]) -> Option<AdamBody> {
        let domain = body.domain();
        let results = body.results();
        if body.producer().is_some() || body.reduction().is_some() || results.len() != 3 {
            return None;
        }
        let mut mt = Matcher {
            body,
            full: in_shapes.iter().map(|s| *s == domain).collect(),
            one: in_shapes.iter().map(|s| s.numel() == 1).collect(),
            matched: vec![false; body.insts.len()],
        };
        // the new param: w0 - (m' * alpha) / (sqrt(v') + eps); try each result as it
        for (k, &r) in results.iter().enumerate() {
            mt.matched.fill(false);
            let Some((w0, step)) = mt.bin(r, BinaryOp::Sub) else {
                continue;
            };
            let found = (|| {
                let (am, den) = mt.bin(step, BinaryOp::Div)?;
                let (m_new, alpha) = mt.with_scalar(am, BinaryOp::Mul)?;
                let (root, eps) = mt.with_scalar(den, BinaryOp::Add)?;
                let v_new = mt.unary(root, UnaryOp::Sqrt)?;
                let (w, decay) = mt.decayed(w0)?;
                let (m, c1, g) = mt.moment(m_new)?;
                let (v, c2, g2) = mt.moment(v_new)?;
                let (ga, gb) = mt.bin(g2, BinaryOp::Mul)?;
                if ga != g || gb != g {
                    return None;
                }
                let (grads, scale) = mt.grad(g)?;
                let km = results.iter().position(|&x| x == m_new)?;
                let kv = results.iter().position(|&x| x == v_new)?;
                let distinct =
                    [w, m, v].iter().all(|x| !grads.contains(x)) && w != m && w != v && m != v;
                distinct.then_some(AdamBody {
                    grads,
                    scale,
                    w,
                    m,
                    v,
                    c1,
                    c2,
                    alpha,
                    eps,
                    decay,
                    results: [k, km, kv],
                })
            })();
            if let Some(a) = found {
                // every instruction is the update's, and nothing else is computed
                return mt.matched.iter().all(|&m| m).then_some(a);
            }
        }
        None
    }
}

impl<'a> Lowerer<'a> {
    /// Lowers a recognized Adam body as one [`Kernel::AdamUpdate`] call: `ins` are the fused
    /// node's operand buffers, `outs[k]` the buffer of result `k` (`None`: not stored).
    pub(crate) fn adam_update(
        &mut self,
        a: &AdamBody,
        n: usize,
        ins: &[Loc],
        outs: &[Option<Loc>],
    ) -> Result<(), LowerError> {
        let mut words: Vec<Value> = Vec::with_capacity(ADAM_WORDS + a.grads.len());
        let null = self.iconst(0);
        words.push(self.iconst(n as i64));
        for k in a.results {
            let w = match outs.get(k).copied().flatten() {
                Some(loc) => self.addr(loc, None),
                None => null,
            };
            words.push(w);
        }
        for i in [a.w, a.m, a.v, a.c1, a.c2, a.alpha, a.eps] {
            words.push(self.addr(ins[i], None));
        }
        let opt = |lw: &mut Lowerer<'a>, i: Option<usize>| match i {
            Some(i) => lw.addr(ins[i], None),
            None => null,
        };
        words.push(opt(self, a.scale));
        words.push(opt(self, a.decay.map(|d| d.0)));
        words.push(opt(self, a.decay.map(|d| d.1)));
        words.push(self.iconst(a.grads.len() as i64));
        words.push(null);
        for &g in &a.grads {
            words.push(self.addr(ins[g], None));
        }
        let table = self.word_array(&words);
        self.call(Kernel::AdamUpdate, &[table])?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::AdamBody;
    use crate::fused::FusedBody;
    use crate::graph::Graph;
    use crate::op::{BinaryOp, Op};
    use crate::optim::{sharded_training_step, Optimizer};
    use crate::passes::Pipeline;
    use crate::shape::Shape;

    fn parse(file: &str) -> Graph {
        let path = format!("{}/ir/{file}", env!("CARGO_MANIFEST_DIR"));
        let src = std::fs::read_to_string(&path).expect("the corpus file");
        crate::text::parse(&src, &path).expect("a valid corpus file")
    }

    /// The fused bodies of `g` after the default pipeline, with their operands' shapes and
    /// names.
    fn bodies(mut g: Graph) -> Vec<(FusedBody, Vec<Shape>, Vec<String>)> {
        Pipeline::default().run(&mut g).expect("the pipeline runs");
        g.node_ids()
            .into_iter()
            .filter_map(|id| match &g[id].op {
                Op::Fused(body) => {
                    let operands = g.operands(id);
                    let shapes = operands.iter().map(|&o| g[o].ty.shape.clone());
                    let names = operands
                        .iter()
                        .map(|&o| g[o].name.clone().unwrap_or_default());
                    Some((body.clone(), shapes.collect(), names.collect()))
                }
                _ => None,
            })
            .collect()
    }

    fn recognized(bodies: &[(FusedBody, Vec<Shape>, Vec<String>)]) -> Vec<AdamBody> {
        bodies
            .iter()
            .filter_map(|(b, s, _)| AdamBody::of(b, s))
            .collect()
    }

    /// One param `w: f32[3,10]`, its gradient input `g` and `opt`'s update.
    fn one_param(opt: &Optimizer) -> Graph {
        let mut g = Graph::new("one_param");
        let w = g.param("w", [3, 10], crate::Init::Zeros).expect("a param");
        let grad = g
            .input("g", crate::TensorType::f32([3, 10]))
            .expect("an input");
        let lr = crate::optim::lr_input(&mut g).expect("the learning rate");
        opt.apply(&mut g, lr, &[(w, grad)]).expect("the update");
        g
    }

    /// The fused body of [`one_param`]'s update of `w` (the other computes the step size).
    fn update_of_w(opt: &Optimizer) -> (FusedBody, Vec<Shape>, Vec<String>) {
        let all = bodies(one_param(opt));
        let n = all.len();
        let mut of_w = all
            .into_iter()
            .filter(|b| b.0.domain() == Shape(vec![3, 10]));
        match (of_w.next(), of_w.next()) {
            (Some(b), None) => b,
            _ => panic!("one fused body over w's shape among {n}"),
        }
    }

    #[test]
    fn every_param_update_of_adam_and_adamw_is_recognized() {
        let mlp = parse("mlp.ir");
        let optimizers = [
            Optimizer::adam(),
            Optimizer::adamw(),
            Optimizer::adamw().exclude_from_weight_decay(&["bias"]),
        ];
        for (o, opt) in optimizers.iter().enumerate() {
            for shards in 1..=3 {
                let step = sharded_training_step(&mlp, "loss", opt, None, 60, shards, 1)
                    .expect("the MLP splits");
                let found = recognized(&bodies(step.update_parts[0].graph.clone()));
                assert_eq!(
                    found.len(),
                    4,
                    "optimizer {o}, {shards} shard(s): one per param"
                );
                for a in &found {
                    assert_eq!(a.grads.len(), shards, "optimizer {o}");
                    assert_eq!(a.scale.is_some(), shards > 1, "optimizer {o}");
                    let mut r = a.results;
                    r.sort_unstable();
                    assert_eq!(r, [0, 1, 2], "optimizer {o}: three distinct results");
                }
                let decayed = found.iter().filter(|a| a.decay.is_some()).count();
                assert_eq!(decayed, [0, 4, 2][o], "optimizer {o}: decayed params");
            }
        }
    }

    #[test]
    fn the_roles_are_the_operands_the_update_reads() {
        let (body, shapes, names) = update_of_w(&Optimizer::adam());
        let a = AdamBody::of(&body, &shapes).expect("Adam's update");
        let name = |i: usize| names[i].as_str();
        assert_eq!((name(a.w), name(a.m), name(a.v)), ("w", "w.m", "w.v"));
        assert_eq!(a.grads.iter().map(|&i| name(i)).collect::<Vec<_>>(), ["g"]);
        for s in [a.c1, a.c2, a.alpha, a.eps] {
            assert_eq!(shapes[s].numel(), 1, "{}", name(s));
        }
        assert_eq!((a.scale, a.decay), (None, None));
        let (body, shapes, names) = update_of_w(&Optimizer::adamw());
        let a = AdamBody::of(&body, &shapes).expect("AdamW's update");
        let (wd, lr) = a.decay.expect("AdamW decays");
        assert_eq!((names[lr].as_str(), shapes[wd].numel()), ("lr", 1));
    }

    #[test]
    fn the_rule_files_textbook_adam_is_not_the_optimizers_and_keeps_its_loop() {
        // `ir/passes/fuse_adam.ir` writes `m * beta1 + g * (1 - beta1)`, where the optimizer
        // builds Keras' `m + (g - m) * (1 - beta1)`: other f32 roundings, so not the kernel's
        assert!(recognized(&bodies(parse("passes/fuse_adam.ir"))).is_empty());
    }

    #[test]
    fn bodies_that_differ_in_any_way_keep_their_loop() {
        let (body, shapes, _) = update_of_w(&Optimizer::adam());
        assert!(AdamBody::of(&body, &shapes).is_some());
        let np = body.n_params;
        let position = |op: Op| body.insts.iter().position(|i| i.op == op).expect("the op");
        // the division becomes a multiplication
        let mut b = body.clone();
        b.insts[position(Op::Binary(BinaryOp::Div))].op = Op::Binary(BinaryOp::Mul);
        assert!(AdamBody::of(&b, &shapes).is_none(), "mul for div");
        // the param update subtracts the other way round
        let mut b = body.clone();
        let last = b.insts.len() - 1;
        b.insts[last].args.reverse();
        assert!(AdamBody::of(&b, &shapes).is_none(), "step - w");
        // epsilon is an array, not a scalar
        let a = AdamBody::of(&body, &shapes).expect("Adam's update");
        let mut s = shapes.clone();
        s[a.eps] = s[a.w].clone();
        assert!(AdamBody::of(&body, &s).is_none(), "an array epsilon");
        // one more result
        let mut b = body.clone();
        b.extra.push(np);
        assert!(AdamBody::of(&b, &shapes).is_none(), "a fourth result");
        // RMSprop's and SGD's updates are not Adam's
        let mlp = parse("mlp.ir");
        for opt in [
            Optimizer::rmsprop(),
            Optimizer::momentum(0.9),
            Optimizer::adagrad(),
        ] {
            let step =
                sharded_training_step(&mlp, "loss", &opt, None, 60, 2, 1).expect("the MLP splits");
            assert!(recognized(&bodies(step.update_parts[0].graph.clone())).is_empty());
        }
    }
}
