//! Parser errors: one malformed input per error category, each message snapshotted with the
//! offending line and a caret at the reported column; and the parser never panics, on random
//! bytes, on mutations of a valid file, or on any truncation of it.

use gradlift::text;
use proptest::prelude::*;

/// A valid file using most of the syntax: every section, initializer arguments, constants,
/// attributes, a gradient mark and location comments.
const VALID: &str = "\
# a small classifier
graph t {
inputs:
  %x: f32[2,3] = input
  %labels: i32[2] = input
params:
  %w: f32[3,4] = param glorot_uniform(seed=1)
  %b: f32[4] = param uniform(high=0.05, low=-0.05, seed=3)
state:
  %m: f32[3,4] = state zeros
body:
  %h: f32[2,4] = matmul %x, %w  # at model.rs:10:5
  %logits: f32[2,4] = add %h, %b
  %xent: f32[2] = sparse_softmax_cross_entropy %logits, %labels
  %loss: f32[] = reduce_mean %xent, axes=[0], keepdims=false
  %lr: f32[] = const 0.5
  %c: f32[2,2] = const [1.0, -2.0, 1e-7, NaN]
  %g: f32[3,4] = mul %lr, %w  grad(%h)
  %w2: f32[3,4] = sub %w, %g
outputs:
  loss = %loss
updates:
  %w <- %w2
}
";

/// `VALID` with the first occurrence of `from` replaced by `to` (which must occur).
fn edit(from: &str, to: &str) -> String {
    assert!(VALID.contains(from), "test bug: {from:?} is not in VALID");
    VALID.replacen(from, to, 1)
}

/// The error for `src`, with the line it points at and a caret under the column.
fn error_report(src: &str) -> String {
    let e = match text::parse(src, "t.ir") {
        Ok(_) => panic!("expected a parse error for:\n{src}"),
        Err(e) => e,
    };
    let line = src.lines().nth(e.line as usize - 1).unwrap_or("");
    let caret = " ".repeat(e.column as usize - 1) + "^";
    format!("{e}\n{line}\n{caret}")
}

macro_rules! error_case {
    ($name:ident, $src:expr) => {
        #[test]
        fn $name() {
            insta::assert_snapshot!(error_report(&$src));
        }
    };
}

#[test]
fn the_valid_file_parses() {
    let g = text::parse(VALID, "t.ir").unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(g.len(), 13);
}

// Syntax.
error_case!(unexpected_character, edit("%h, %b", "%h @ %b"));
error_case!(missing_header, edit("graph t {", "grahp t {"));
error_case!(unknown_op_with_suggestion, edit("= matmul", "= matmull"));
error_case!(unknown_op, edit("= matmul", "= frobnicate"));
error_case!(unknown_dtype, edit("%x: f32[2,3]", "%x: f64[2,3]"));
error_case!(bad_shape_syntax, edit("%x: f32[2,3]", "%x: f32[2,,3]"));
error_case!(negative_dimension, edit("%x: f32[2,3]", "%x: f32[-2,3]"));
error_case!(
    huge_dimension,
    edit("%x: f32[2,3]", "%x: f32[2,99999999999]")
);
error_case!(type_without_brackets, edit("%x: f32[2,3]", "%x: f32 2,3"));
error_case!(bad_value_name, edit("%logits: f32", "%4logits: f32"));
error_case!(
    operand_after_attribute,
    edit(
        "axes=[0], keepdims=false",
        "axes=[0], %xent, keepdims=false"
    )
);
error_case!(trailing_comma, edit("matmul %x, %w", "matmul %x, %w,"));
error_case!(bad_number, edit("const 0.5", "const 0.5.5"));
error_case!(const_without_value, edit("const 0.5", "const"));

// Sections.
error_case!(unknown_section, edit("state:", "weights:"));
error_case!(
    section_out_of_order,
    edit(
        "updates:",
        "state:\n  %m2: f32[3,4] = state zeros\nupdates:"
    )
);
error_case!(duplicate_section, edit("state:", "params:"));
error_case!(node_outside_section, edit("inputs:\n", ""));
error_case!(
    param_in_body,
    edit("  %lr: f32[] = const 0.5", "  %p: f32[2] = param zeros")
);
error_case!(
    op_in_inputs,
    edit("%labels: i32[2] = input", "%labels: i32[2] = relu %x")
);

// Truncation.
error_case!(
    missing_closing_brace,
    VALID.trim_end().trim_end_matches('}')
);
error_case!(
    truncated_mid_line,
    VALID.split("%x, %w").next().unwrap_or("").to_string() + "%x,"
);
error_case!(text_after_graph, format!("{VALID}graph u {{\n}}\n"));

// Names.
error_case!(undefined_value, edit("matmul %x, %w", "matmul %x, %v"));
error_case!(
    duplicate_definition,
    edit("%logits: f32[2,4] = add", "%h: f32[2,4] = add")
);
error_case!(undefined_grad, edit("grad(%h)", "grad(%nothing)"));
error_case!(
    cycle,
    edit(
        "%h: f32[2,4] = matmul %x, %w",
        "%h: f32[2,4] = add %logits, %b"
    )
);
error_case!(self_cycle, edit("add %h, %b", "add %logits, %b"));

// Operands and types.
error_case!(wrong_operand_count, edit("matmul %x, %w", "matmul %x"));
error_case!(
    input_with_operand,
    edit("%x: f32[2,3] = input", "%x: f32[2,3] = input %w")
);
error_case!(
    type_mismatch,
    edit("%h: f32[2,4] = matmul", "%h: f32[2,5] = matmul")
);
error_case!(
    dtype_mismatch,
    edit("%xent: f32[2] = sparse", "%xent: i32[2] = sparse")
);
error_case!(inference_error, edit("matmul %x, %w", "matmul %w, %x"));
error_case!(
    param_must_be_f32,
    edit("%b: f32[4] = param", "%b: i32[4] = param")
);
error_case!(
    const_value_count,
    edit("[1.0, -2.0, 1e-7, NaN]", "[1.0, -2.0, 1e-7]")
);

// Attributes.
error_case!(unknown_attribute, edit("axes=[0]", "axis=[0]"));
error_case!(
    attribute_on_op_without_attributes,
    edit("add %h, %b", "add %h, %b, axis=1")
);
error_case!(
    missing_attribute,
    edit("axes=[0], keepdims=false", "axes=[0]")
);
error_case!(
    bad_attribute_value,
    edit("keepdims=false", "keepdims=maybe")
);
error_case!(bad_attribute_list, edit("axes=[0]", "axes=[0.5]"));
error_case!(
    duplicate_attribute,
    edit("keepdims=false", "keepdims=false, axes=[0]")
);

// Initializers.
error_case!(
    unknown_initializer,
    edit("glorot_uniform(seed=1)", "glorot(seed=1)")
);
error_case!(
    initializer_missing_argument,
    edit(
        "uniform(high=0.05, low=-0.05, seed=3)",
        "uniform(high=0.05, low=-0.05)"
    )
);
error_case!(
    initializer_unknown_argument,
    edit("state zeros", "state zeros(value=1)")
);
error_case!(
    initializer_bad_argument,
    edit("glorot_uniform(seed=1)", "glorot_uniform(seed=-1)")
);
error_case!(
    initializer_unclosed,
    edit("glorot_uniform(seed=1)", "glorot_uniform(seed=1")
);

// Outputs and updates.
error_case!(output_undefined, edit("loss = %loss", "loss = %los"));
error_case!(
    duplicate_output,
    edit("loss = %loss", "loss = %loss\n  loss = %h")
);
error_case!(update_target_not_param, edit("%w <- %w2", "%x <- %x"));
error_case!(update_type_mismatch, edit("%w <- %w2", "%w <- %h"));
error_case!(update_missing_arrow, edit("%w <- %w2", "%w = %w2"));
error_case!(update_twice, edit("%w <- %w2", "%w <- %w2\n  %w <- %w"));

#[test]
fn every_truncation_fails_cleanly() {
    let full = VALID.trim_end();
    for (i, _) in VALID.char_indices() {
        let prefix = &VALID[..i];
        let r = text::parse(prefix, "t.ir");
        // Everything shorter than the closing `}` lacks it and must be an error.
        assert_eq!(r.is_ok(), prefix.trim_end() == full, "prefix of {i} bytes");
    }
}

#[test]
fn every_single_line_deletion_is_handled() {
    let lines: Vec<&str> = VALID.lines().collect();
    for skip in 0..lines.len() {
        let src: Vec<&str> = lines
            .iter()
            .enumerate()
            .filter(|&(i, _)| i != skip)
            .map(|(_, l)| *l)
            .collect();
        // Must not panic; the result itself depends on the line.
        let _ = text::parse(&src.join("\n"), "t.ir");
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn random_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
        let src = String::from_utf8_lossy(&bytes);
        let _ = text::parse(&src, "random.ir");
        let _ = text::parse(&format!("graph g {{\nbody:\n{src}\n}}\n"), "random.ir");
    }

    #[test]
    fn mutations_of_a_valid_file_never_panic(
        edits in prop::collection::vec((any::<prop::sample::Index>(), prop::sample::select(
            vec!["", "%", ":", "=", ",", "[", "]", "(", ")", "{", "}", "<-", "\n", "#", "-", "0",
                 "99999999999999999999999", "1e999", "NaN", "f32", "i32", "x", "grad", "%x",
                 "const", "param", "body:", "[]", "f32[]", "f32[0,0]", "same", "conv2d"]
        )), 1..6)
    ) {
        let mut src = VALID.to_string();
        for (at, insert) in edits {
            let cut = at.index(src.len() + 1);
            let cut = (0..=cut).rev().find(|&c| src.is_char_boundary(c)).unwrap_or(0);
            src.insert_str(cut, insert);
        }
        let _ = text::parse(&src, "mutated.ir");
    }
}
error_case!(
    too_many_elements,
    edit("%x: f32[2,3]", "%x: f32[65536,65536]")
);
error_case!(
    attribute_shape_too_large,
    edit(
        "%lr: f32[] = const 0.5",
        "%lr: f32[] = reshape %loss, shape=[65536,65536]"
    )
);
error_case!(
    value_without_percent,
    edit("%x: f32[2,3] = input", "x: f32[2,3] = input")
);

/// Every statement line with a syntax error is reported in one run, in file order, each
/// with its own line and column; an error inside a fused block does not make the block's
/// other lines errors of their own; at most `MAX_PARSE_ERRORS` are reported.
#[test]
fn independent_errors_are_all_reported() {
    let src = "graph bad {
inputs:
  %x: f32[2,3] = input
  %y: f32[2,3] = inptu
body:
  %a: f32[2,3] = add %x, %x,
  %f: f32[2,3] = fused %x, %x {
    %2: f32[2,3] = sub %0 %1
    yield %2
  }
  %b: f32[2,3] = relu %a
  %c: f32[2,3] = = relu %b
outputs:
  out = %b
}
";
    let e = text::parse(src, "bad.ir").unwrap_err();
    let at: Vec<(u32, u32)> = std::iter::once(&e)
        .chain(&e.also)
        .map(|e| (e.line, e.column))
        .collect();
    assert_eq!(at, vec![(4, 18), (6, 29), (8, 20), (12, 18)], "{e}");
    assert_eq!(e.to_string().lines().count(), 4, "{e}");
    assert!(
        e.to_string().lines().all(|l| l.starts_with("bad.ir:")),
        "{e}"
    );

    let mut many = String::from("graph many {\ninputs:\n");
    for i in 0..30 {
        many.push_str(&format!("  %x{i}: f32[2] = inptu\n"));
    }
    many.push_str("outputs:\n  y = %x0\n}\n");
    let e = text::parse(&many, "many.ir").unwrap_err();
    assert_eq!(1 + e.also.len(), text::MAX_PARSE_ERRORS);
}

/// Name errors (step 2) are all reported in one run, in file order: every undefined value,
/// every second definition, every duplicate output name.
#[test]
fn every_name_error_is_reported() {
    let src = "graph names {
inputs:
  %x: f32[2] = input
body:
  %a: f32[2] = add %x, %nope
  %a: f32[2] = relu %x
  %b: f32[2] = mul %a, %missing
outputs:
  y = %b
  y = %a
}
";
    let e = text::parse(src, "names.ir").unwrap_err();
    let all: Vec<(u32, u32, String)> = std::iter::once(&e)
        .chain(&e.also)
        .map(|e| (e.line, e.column, e.message.clone()))
        .collect();
    let at: Vec<(u32, u32)> = all.iter().map(|(l, c, _)| (*l, *c)).collect();
    assert_eq!(at, vec![(5, 24), (6, 3), (7, 24), (10, 3)], "{e}");
    assert!(all[0].2.contains("undefined value `%nope`"), "{e}");
    assert!(all[1].2.contains("`%a` is defined twice"), "{e}");
    assert!(all[2].2.contains("undefined value `%missing`"), "{e}");
    assert!(all[3].2.contains("duplicate output name `y`"), "{e}");
}

/// Graph errors (step 3, the verifier) are all reported in one run, each at the token it is
/// about: an inference error at the op, a declared-type mismatch at the type, an update
/// error at its target; a node whose type is wrong does not make its users errors too.
#[test]
fn every_graph_error_is_reported_where_it_is() {
    let src = "graph types {
inputs:
  %x: f32[2,3] = input
params:
  %w: f32[3,4] = param zeros
body:
  %h: f32[2,5] = matmul %x, %w
  %r: f32[2,5] = relu %h
  %bad: f32[2,3] = matmul %w, %x
  %n: f32[2,3] = neg %x, %x
outputs:
  y = %r
updates:
  %w <- %x
}
";
    let e = text::parse(src, "types.ir").unwrap_err();
    let all: Vec<(u32, u32, String)> = std::iter::once(&e)
        .chain(&e.also)
        .map(|e| (e.line, e.column, e.message.clone()))
        .collect();
    let at: Vec<(u32, u32)> = all.iter().map(|(l, c, _)| (*l, *c)).collect();
    assert_eq!(at, vec![(7, 7), (9, 20), (10, 18), (14, 3)], "{e}");
    assert!(
        all[0]
            .2
            .contains("%h is declared f32[2,5] but matmul computes f32[2,4]"),
        "{e}"
    );
    assert!(all[1].2.starts_with("%bad: "), "{e}");
    assert!(all[2].2.contains("neg takes 1, found 2"), "{e}");
    assert!(all[3].2.contains("update of %w"), "{e}");
}

/// A gather with float indices and a scatter_add whose updates do not fit its shape are
/// verifier errors at their ops, each naming the types found and expected.
#[test]
fn gather_and_scatter_add_errors_are_reported_at_their_ops() {
    let src = "graph lookups {
inputs:
  %ids: i32[2] = input
  %x: f32[2] = input
params:
  %table: f32[5,4] = param zeros
body:
  %a: f32[2,4] = gather %table, %x, axis=0
  %b: f32[5,4] = scatter_add %table, %ids, axis=0, shape=[5,4]
outputs:
  a = %a
  b = %b
}
";
    let e = text::parse(src, "lookups.ir").unwrap_err();
    let all: Vec<(u32, u32, String)> = std::iter::once(&e)
        .chain(&e.also)
        .map(|e| (e.line, e.column, e.message.clone()))
        .collect();
    let at: Vec<(u32, u32)> = all.iter().map(|(l, c, _)| (*l, *c)).collect();
    assert_eq!(at, vec![(8, 18), (9, 18)], "{e}");
    assert!(
        all[0]
            .2
            .contains("expected an f32 table and i32 indices, found f32[5,4] and f32[2]"),
        "{e}"
    );
    assert!(
        all[1].2.contains("updates are f32[5,4], expected f32[2,4]"),
        "{e}"
    );
}
