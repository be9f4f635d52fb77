//! A damaged, truncated or foreign file is an error whose message says what is wrong (naming
//! the tensor when one is involved), never a panic and never a silently wrong checkpoint.

use gradlift::checkpoint::{load, to_bytes, Checkpoint, CheckpointError, NamedTensor};
use proptest::prelude::*;
use std::collections::BTreeMap;
use std::fs;
use std::path::PathBuf;

const NAME: &str = "model.safetensors";

/// A `__metadata__` entry that passes the format checks (its checksums list no tensor).
const OURS: &str =
    r#""__metadata__":{"checksums":"{}","format":"gradlift-checkpoint","version":"1"}"#;

fn meta(entries: &[(&str, &str)]) -> BTreeMap<String, String> {
    entries
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// A small valid checkpoint: three tensors of both dtypes and some metadata.
fn good() -> Vec<u8> {
    to_bytes(
        &[
            NamedTensor::f32("w", [2, 3], vec![0.5, -1.0, 2.0, f32::NAN, -0.0, 1e-40]),
            NamedTensor::f32("b", [3], vec![0.1, 0.2, 0.3]),
            NamedTensor::i32("count", [2], vec![7, -7]),
        ],
        &meta(&[("graph", "mlp"), ("step", "10")]),
    )
    .expect("encode")
}

fn decode(bytes: &[u8]) -> Result<Checkpoint, CheckpointError> {
    Checkpoint::from_bytes(bytes, NAME)
}

fn error(bytes: &[u8]) -> CheckpointError {
    match decode(bytes) {
        Ok(c) => panic!("decoded a bad file: {c:?}"),
        Err(e) => e,
    }
}

/// Length of the 8-byte prefix plus the JSON header: where the data starts.
fn data_start(bytes: &[u8]) -> usize {
    let mut n = [0u8; 8];
    n.copy_from_slice(&bytes[..8]);
    8 + u64::from_le_bytes(n) as usize
}

/// Byte ranges of each tensor's data, relative to the data section.
fn tensor_ranges(bytes: &[u8]) -> Vec<(String, usize, usize)> {
    let (_, m) = safetensors::SafeTensors::read_metadata(bytes).expect("header");
    let mut v: Vec<_> = m
        .tensors()
        .into_iter()
        .map(|(name, info)| (name, info.data_offsets.0, info.data_offsets.1))
        .collect();
    v.sort_by_key(|t| t.1);
    v
}

/// A safetensors file from a header (padded to 8 bytes) and a data section.
fn craft(header: &str, data: &[u8]) -> Vec<u8> {
    let mut h = header.as_bytes().to_vec();
    h.resize(h.len().div_ceil(8) * 8, b' ');
    let mut out = (h.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(&h);
    out.extend_from_slice(data);
    out
}

/// The header of `bytes` as text, and its data section.
fn split(bytes: &[u8]) -> (String, Vec<u8>) {
    let s = data_start(bytes);
    let header = std::str::from_utf8(&bytes[8..s])
        .expect("utf-8")
        .trim_end()
        .to_string();
    (header, bytes[s..].to_vec())
}

/// `bytes` with the first `from` of its header replaced by `to` (the data kept).
fn with_replaced(bytes: &[u8], from: &str, to: &str) -> Vec<u8> {
    let (header, data) = split(bytes);
    assert!(header.contains(from), "{from} not in {header}");
    craft(&header.replacen(from, to, 1), &data)
}

#[test]
fn corrupt_file_messages() {
    let g = good();
    let ds = data_start(&g);
    let (header, data) = split(&g);
    let mut cases: Vec<(&str, Vec<u8>)> = vec![
        ("empty file", vec![]),
        ("5 bytes", g[..5].to_vec()),
        ("truncated inside the header", g[..ds / 2].to_vec()),
        ("truncated inside the data", g[..g.len() - 3].to_vec()),
        (
            "data of the last tensor missing",
            g[..g.len() - 24].to_vec(),
        ),
        (
            "extra bytes after the data",
            [g.clone(), vec![0; 4]].concat(),
        ),
        (
            "text file",
            b"hello, this is not a checkpoint at all\n".to_vec(),
        ),
        ("small prefix, not JSON", craft("not json!", &[])),
        ("header not valid JSON", craft("{\"a\": [1, 2", &[])),
        (
            "header not UTF-8",
            craft("{\"\u{e9}\"}", &[])
                .iter()
                .map(|&b| if b == 0xc3 { 0xff } else { b })
                .collect(),
        ),
        (
            "header length prefix huge",
            [u64::MAX.to_le_bytes().to_vec(), g[8..].to_vec()].concat(),
        ),
    ];
    // A plain safetensors file (another tool's) is not ours.
    let view =
        safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![1], &[0, 0, 128, 63])
            .expect("view");
    cases.push((
        "safetensors without metadata",
        safetensors::serialize([("x", view.clone())], &None).expect("serialize"),
    ));
    let other: std::collections::HashMap<String, String> =
        [("format".to_string(), "pt".to_string())]
            .into_iter()
            .collect();
    cases.push((
        "another tool's metadata",
        safetensors::serialize([("x", view)], &Some(other)).expect("serialize"),
    ));
    cases.push((
        "newer version",
        with_replaced(&g, "\"version\":\"1\"", "\"version\":\"2\""),
    ));
    cases.push((
        "no version",
        with_replaced(&g, "\"version\":\"1\"", "\"versiom\":\"1\""),
    ));
    cases.push((
        "no checksums",
        with_replaced(&g, "\"checksums\"", "\"checksumz\""),
    ));
    cases.push((
        "metadata not strings",
        with_replaced(&g, "\"step\":\"10\"", "\"step\":10"),
    ));
    cases.push((
        "unsupported dtype",
        with_replaced(&g, "\"dtype\":\"I32\"", "\"dtype\":\"F64\""),
    ));
    cases.push((
        "shape disagrees with offsets",
        with_replaced(&g, "\"shape\":[2,3]", "\"shape\":[2,4]"),
    ));
    cases.push((
        "negative dimension",
        with_replaced(&g, "\"shape\":[2,3]", "\"shape\":[-2,3]"),
    ));
    cases.push((
        "three offsets",
        with_replaced(
            &g,
            "\"shape\":[2,3],\"data_offsets\":[",
            "\"shape\":[2,3],\"data_offsets\":[0,",
        ),
    ));
    cases.push((
        "tensor entry not an object",
        craft(&format!("{{{OURS},\"x\":[1]}}"), &[]),
    ));
    cases.push((
        "tensor renamed",
        with_replaced(&g, "\"count\":{", "\"cuont\":{"),
    ));
    cases.push((
        "metadata value changed",
        with_replaced(&g, "\"step\":\"10\"", "\"step\":\"11\""),
    ));
    // A header that claims more data than the file has.
    cases.push((
        "header claims more data",
        craft(
            &format!(
                "{{{OURS},\"x\":{{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,16]}}}}"
            ),
            &[0; 8],
        ),
    ));
    // A gap: the first tensor does not start at 0.
    let mut shifted = header.clone();
    for (name, s, e) in tensor_ranges(&g) {
        let from = format!("\"{name}\":{{\"dtype\"");
        assert!(shifted.contains(&from));
        let old = format!("\"data_offsets\":[{s},{e}]");
        let new = format!("\"data_offsets\":[{},{}]", s + 4, e + 4);
        shifted = shifted.replacen(&old, &new, 1);
    }
    cases.push((
        "gap before the first tensor",
        craft(&shifted, &[vec![0; 4], data.clone()].concat()),
    ));
    // One flipped bit in a tensor's data.
    let mut flipped = g.clone();
    let (name_b, start_b, _) = tensor_ranges(&g)
        .into_iter()
        .find(|t| t.0 == "b")
        .expect("b");
    assert_eq!(name_b, "b");
    flipped[ds + start_b + 1] ^= 0x10;
    cases.push(("flipped data bit", flipped));

    let mut table = String::new();
    for (what, bytes) in &cases {
        let e = error(bytes);
        table.push_str(&format!("{what}:\n  {e}\n"));
    }
    insta::assert_snapshot!("corrupt_file_messages", table);
}

#[test]
fn every_truncation_is_an_error_that_says_so() {
    let g = good();
    let ds = data_start(&g);
    let ranges = tensor_ranges(&g);
    for len in 0..g.len() {
        let e = error(&g[..len]);
        let msg = e.to_string();
        assert!(msg.starts_with(NAME), "{len}: {msg}");
        if len == 0 {
            assert!(matches!(e, CheckpointError::NotACheckpoint { .. }), "{msg}");
            assert!(msg.contains("empty"), "{msg}");
            continue;
        }
        assert!(msg.contains("truncated"), "{len}: {msg}");
        if len >= ds {
            // The first tensor whose data does not fit is named.
            let data_len = len - ds;
            let (want, _, _) = ranges
                .iter()
                .find(|(_, _, e)| *e > data_len)
                .expect("some tensor is cut");
            match &e {
                CheckpointError::Corrupt {
                    tensor: Some(t), ..
                } => assert_eq!(t, want, "{len}"),
                other => panic!("{len}: expected a corrupt-tensor error, got {other:?}"),
            }
        }
    }
}

#[test]
fn every_flipped_bit_is_an_error() {
    let g = good();
    let ds = data_start(&g);
    let ranges = tensor_ranges(&g);
    for pos in 0..g.len() {
        for bit in 0..8 {
            let mut b = g.clone();
            b[pos] ^= 1 << bit;
            let e = error(&b);
            if pos >= ds {
                let (want, _, _) = ranges
                    .iter()
                    .find(|(_, s, e)| (*s..*e).contains(&(pos - ds)))
                    .expect("data byte belongs to a tensor");
                let msg = e.to_string();
                assert!(
                    msg.contains(&format!("tensor {want}: checksum mismatch")),
                    "{pos}: {msg}"
                );
            }
        }
        // Whole-byte flips too (the brief's "flipped header bytes").
        let mut b = g.clone();
        b[pos] ^= 0xff;
        error(&b);
    }
}

#[test]
fn load_reports_the_path_of_missing_and_empty_files() {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("checkpoint_corrupt-files");
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).expect("dir");
    let clean = |e: CheckpointError| {
        e.to_string()
            .replace(dir.to_str().expect("utf-8 dir"), "[DIR]")
    };
    let missing = load(dir.join("nope.safetensors")).expect_err("missing");
    assert!(matches!(missing, CheckpointError::Io { .. }));
    let empty = dir.join("empty.safetensors");
    fs::write(&empty, b"").expect("write");
    let text = dir.join("notes.txt");
    fs::write(&text, "# notes\nnot a checkpoint\n").expect("write");
    let msgs = format!(
        "{}\n{}\n{}",
        clean(missing),
        clean(load(&empty).expect_err("empty")),
        clean(load(&text).expect_err("text"))
    );
    insta::assert_snapshot!("load_file_errors", msgs);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Arbitrary bytes never panic the loader, and are never a checkpoint.
    #[test]
    fn arbitrary_bytes_are_rejected(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
        prop_assert!(decode(&bytes).is_err());
    }

    /// Overwriting any stretch of a good file with arbitrary bytes is detected.
    #[test]
    fn overwritten_stretches_are_rejected(
        start in 0usize..400,
        patch in proptest::collection::vec(any::<u8>(), 1..16),
    ) {
        let mut g = good();
        let start = start % g.len();
        let mut changed = false;
        for (i, p) in patch.iter().enumerate() {
            if let Some(b) = g.get_mut(start + i) {
                changed |= *b != *p;
                *b = *p;
            }
        }
        prop_assume!(changed);
        prop_assert!(decode(&g).is_err());
    }
}
