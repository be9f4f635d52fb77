//! Properties of the verifier on random graphs: whatever the checked builder makes verifies;
//! a corrupted type or a back edge is always reported, on the node at fault.

use gradlift::op::{Init, ReduceOp};
use gradlift::verify::verify;
use gradlift::{Graph, NodeId, Shape};
use proptest::prelude::*;

/// One step of a random chain: how to extend the current value `cur`.
#[derive(Clone, Debug)]
enum Step {
    Unary(usize),
    /// Binary op with a param broadcast along the rows.
    BinaryParam(usize),
    /// Binary op of the current value with itself.
    BinarySelf(usize),
    Transpose,
    Reshape,
    ReduceKeep(usize),
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        (0..gradlift::UnaryOp::ALL.len()).prop_map(Step::Unary),
        (0..gradlift::BinaryOp::ALL.len()).prop_map(Step::BinaryParam),
        (0..gradlift::BinaryOp::ALL.len()).prop_map(Step::BinarySelf),
        Just(Step::Transpose),
        Just(Step::Reshape),
        (0..ReduceOp::ALL.len()).prop_map(Step::ReduceKeep),
    ]
}

/// Builds `x: f32[r,c]` followed by `steps` with the checked builder (so it is valid).
fn build(r: usize, c: usize, steps: &[Step]) -> (Graph, Vec<NodeId>) {
    let mut g = Graph::new("random");
    let mut cur = g.input("x", gradlift::TensorType::f32([r, c])).unwrap();
    let mut made = vec![cur];
    for (i, s) in steps.iter().enumerate() {
        let shape: Shape = g[cur].ty.shape.clone();
        let dims = shape.dims().to_vec();
        cur = match s {
            Step::Unary(k) => g
                .add(gradlift::Op::Unary(gradlift::UnaryOp::ALL[*k]), &[cur])
                .unwrap(),
            Step::BinaryParam(k) => {
                let p = g
                    .param(
                        &format!("p{i}"),
                        [dims[1]],
                        Init::Uniform {
                            low: -1.0,
                            high: 1.0,
                            seed: i as u64,
                        },
                    )
                    .unwrap();
                g.add(gradlift::Op::Binary(gradlift::BinaryOp::ALL[*k]), &[cur, p])
                    .unwrap()
            }
            Step::BinarySelf(k) => g
                .add(
                    gradlift::Op::Binary(gradlift::BinaryOp::ALL[*k]),
                    &[cur, cur],
                )
                .unwrap(),
            Step::Transpose => g.transpose(cur, &[1, 0]).unwrap(),
            Step::Reshape => g.reshape(cur, [dims[1], dims[0]]).unwrap(),
            Step::ReduceKeep(k) => {
                let kind = ReduceOp::ALL[*k];
                g.reduce(kind, cur, &[1], true).unwrap()
            }
        };
        made.push(cur);
    }
    g.add_output("out", cur).unwrap();
    (g, made)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn builder_graphs_verify(r in 1..5usize, c in 1..5usize, steps in prop::collection::vec(step(), 0..12)) {
        let (g, _) = build(r, c, &steps);
        prop_assert_eq!(verify(&g), Ok(()));
    }

    #[test]
    fn corrupted_type_is_reported_on_its_node(
        r in 1..5usize,
        c in 1..5usize,
        steps in prop::collection::vec(step(), 1..12),
        pick in any::<prop::sample::Index>(),
    ) {
        let (mut g, made) = build(r, c, &steps);
        // Corrupt a non-input node: its declared shape gains a dimension.
        let victim = made[1 + pick.index(made.len() - 1)];
        g.get_mut(victim).unwrap().ty.shape.0.push(7);
        let errs = verify(&g).unwrap_err().errors;
        prop_assert_eq!(errs[0].node, Some(victim), "{:#?}", errs);
        prop_assert!(errs[0].message.contains("type mismatch"), "{:#?}", errs);
    }

    #[test]
    fn back_edge_is_reported_as_a_cycle(
        r in 1..5usize,
        c in 1..5usize,
        steps in prop::collection::vec(step(), 2..12),
        pick in any::<prop::sample::Index>(),
    ) {
        let (mut g, made) = build(r, c, &steps);
        // Make an op node take the last node (which depends on it) as its first operand.
        let victim = made[1 + pick.index(made.len() - 1)];
        let last = *made.last().unwrap();
        let mut ops = g.operands(victim);
        ops[0] = last;
        g.set_operands(victim, &ops);
        let errs = verify(&g).unwrap_err().errors;
        let cycle = errs.iter().find(|e| e.message.starts_with("cycle"));
        prop_assert!(cycle.is_some(), "{:#?}", errs);
        let label = gradlift::verify::node_label(&g, victim);
        let named = cycle
            .unwrap()
            .message
            .split([',', ' '])
            .any(|word| word == label);
        prop_assert!(named, "{} not in {:#?}", label, errs);
    }
}
