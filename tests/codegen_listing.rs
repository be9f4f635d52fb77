//! What Cranelift made of a graph: `--format clif` (the IR as lowered), `--format clif-opt`
//! (the IR after Cranelift's own passes) and `--format asm` (the machine code, as Cranelift
//! disassembles it), from `gradlift dump`, `gradlift grad` and `gradlift run --emit`, and
//! the library's `codegen::listing`.

mod common;

use common::cli::{fails, ok};
use gradlift::codegen::{self, CompileOptions, Listing};

/// The CLIF function of a listing: its lines from `function` on.
fn function(text: &str) -> &str {
    &text[text.find("\nfunction u0:").expect("a CLIF function") + 1..]
}

/// How many block references of `text` have parameters or arguments (`block4(...)`).
fn with_args(text: &str) -> usize {
    text.match_indices("block")
        .filter(|(i, _)| {
            let rest = &text[i + 5..];
            let digits = rest.len() - rest.trim_start_matches(|c: char| c.is_ascii_digit()).len();
            digits > 0 && rest[digits..].starts_with('(')
        })
        .count()
}

#[test]
fn optimized_clif_is_clif_after_cranelifts_passes() {
    // argmax's loops pass the running maximum to an exit block whose parameters always get
    // the same values: Cranelift's constant-phi removal drops them
    let clif = ok(&["dump", "ir/ops/argmax.ir", "--format", "clif"]);
    let opt = ok(&["dump", "ir/ops/argmax.ir", "--format", "clif-opt"]);
    for text in [&clif, &opt] {
        assert!(text.contains("; graph argmax: "), "{text}");
        assert!(function(text).starts_with("function u0:0(i64) "), "{text}");
        assert!(text.contains("ireduce.i32"), "{text}");
    }
    assert!(opt.contains("after Cranelift's IR passes"), "{opt}");
    assert_ne!(function(&clif), function(&opt));
    assert!(
        with_args(function(&opt)) < with_args(function(&clif)),
        "fewer block parameters after the passes:\n{clif}\n{opt}"
    );
    // it parses back as what Cranelift printed: the same blocks, in order
    let blocks = |t: &str| {
        t.lines()
            .filter_map(|l| l.trim().split(['(', ':']).next())
            .filter(|w| w.starts_with("block") && !w.contains(' '))
            .map(str::to_string)
            .collect::<Vec<_>>()
    };
    assert_eq!(blocks(function(&clif)), blocks(function(&opt)));
}

#[test]
fn asm_is_the_machine_code_of_the_function() {
    let asm = ok(&["dump", "ir/ops/sgd_step.ir", "--format", "asm"]);
    assert!(asm.starts_with("# graph sgd_step: "), "{asm}");
    assert!(asm.contains("#   table[0] = input x"), "{asm}");
    let header = asm
        .lines()
        .find(|l| l.contains("machine code, "))
        .expect("a header line with the code size");
    let bytes: usize = header
        .split("machine code, ")
        .nth(1)
        .and_then(|r| r.split(' ').next())
        .and_then(|n| n.parse().ok())
        .expect("the code size");
    assert!(bytes > 100, "{header}");
    assert!(asm.contains("block0:"), "{asm}");
    assert!(
        !asm.contains("\nfunction u0:0"),
        "machine code, not CLIF: {asm}"
    );
    let mnemonics: Vec<&str> = asm
        .lines()
        .filter(|l| l.starts_with("  ") && !l.trim_start().starts_with("unwind"))
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert!(mnemonics.len() > 50, "{asm}");
    assert!(mnemonics.iter().any(|m| m.starts_with("ret")), "{asm}");
    #[cfg(target_arch = "x86_64")]
    {
        assert!(header.contains("x86_64"), "{header}");
        for m in ["pushq", "movq", "retq"] {
            assert!(mnemonics.contains(&m), "{m} in {asm}");
        }
        // the matmul x w and the loss's f32 arithmetic: SSE scalar or vector instructions
        assert!(
            mnemonics
                .iter()
                .any(|m| m.starts_with("mulss") || m.starts_with("mulps") || m.starts_with("vmul")),
            "{asm}"
        );
        assert!(
            asm.contains("%rdi"),
            "the table pointer, first argument: {asm}"
        );
    }
    #[cfg(target_arch = "aarch64")]
    assert!(header.contains("aarch64"), "{header}");
}

#[test]
fn every_command_that_compiles_prints_the_listings() {
    // grad: the function of the graph with its gradient
    let grad = ok(&[
        "grad",
        "ir/linear_regression.ir",
        "--loss",
        "loss",
        "--format",
        "asm",
    ]);
    assert!(
        grad.contains("machine code, ") && grad.contains("block0:"),
        "{grad}"
    );
    let grad_opt = ok(&[
        "grad",
        "ir/linear_regression.ir",
        "--loss",
        "loss",
        "--format",
        "clif-opt",
    ]);
    assert!(
        function(&grad_opt).starts_with("function u0:0"),
        "{grad_opt}"
    );
    // run --emit: the listing, then the outputs of the same compile's run
    for (kind, marker) in [
        ("asm", "machine code, "),
        ("clif", "function u0:0"),
        ("clif-opt", "after Cranelift's IR passes"),
    ] {
        let out = ok(&["run", "ir/ops/sgd_step.ir", "--emit", kind]);
        let listing_at = out.find(marker).unwrap_or_else(|| panic!("{kind}: {out}"));
        let loss_at = out.find("\nloss: f32[] = ").expect("the output");
        assert!(listing_at < loss_at, "{kind}: listing first\n{out}");
        assert!(out.contains("update %step: f32[] = 1.0"), "{out}");
    }
    // a usage error (clap's exit code 2) listing the choices
    let (code, _, err) = common::cli::run(&["run", "ir/ops/sgd_step.ir", "--emit", "wasm"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("clif-opt") && err.contains("asm"), "{err}");
    let err = fails(&["dump", "ir/no-such-file.ir", "--format", "asm"]);
    assert!(err.contains("no-such-file.ir"), "{err}");
}

#[test]
fn the_library_listing_matches_the_cli() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("ir/ops/argmax.ir");
    let (_, g) = common::load(&path);
    let opts = CompileOptions::default();
    let clif = codegen::listing(&g, &opts, Listing::Clif).unwrap();
    assert_eq!(clif, codegen::clif(&g, &opts).unwrap());
    let asm = codegen::listing(&g, &opts, Listing::Asm).unwrap();
    assert_eq!(
        asm,
        codegen::listing(&g, &opts, Listing::Asm).unwrap(),
        "deterministic"
    );
    let cli = ok(&["dump", "ir/ops/argmax.ir", "--format", "asm"]);
    assert_eq!(cli.trim_end(), asm.trim_end());
}
