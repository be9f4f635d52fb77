//! The IDX reader and the MNIST loaders: the shipped subset loads with the expected content,
//! plain, gzipped and multi-member gzipped files read the same, and malformed files
//! (truncated, wrong magic, wrong dimensions, corrupt gzip, bytes after the gzip stream, a
//! declared size above the limit, garbage) give errors naming the file, never panics.

use gradlift::data::{
    load_default, load_mnist, DataError, Dataset, Idx, IMAGES_MAGIC, LABELS_MAGIC, MAX_IDX_BYTES,
    MNIST_FILES,
};
use proptest::prelude::*;
use std::io::Read;
use std::path::{Path, PathBuf};

/// A fresh empty directory under the system temp dir, unique to this test and process.
fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("gradlift-data-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A tiny valid images file: `n` images of 2x3 with pixel `k` equal to `k % 256`.
fn tiny_images(n: usize) -> Idx {
    Idx {
        dims: vec![n, 2, 3],
        data: (0..n * 6).map(|k| (k % 256) as u8).collect(),
    }
}

fn tiny_labels(n: usize) -> Idx {
    Idx {
        dims: vec![n],
        data: (0..n).map(|k| (k % 10) as u8).collect(),
    }
}

fn format_message(e: DataError) -> (PathBuf, String) {
    match e {
        DataError::Format { path, message } => (path, message),
        other => panic!("expected a format error, found {other:?}"),
    }
}

#[test]
fn shipped_subset_loads() {
    let (train, test) = load_default().unwrap();
    assert_eq!((train.n, train.rows, train.cols), (6000, 28, 28));
    assert_eq!((test.n, test.rows, test.cols), (1000, 28, 28));
    assert_eq!(train.images().len(), 6000 * 784);
    assert_eq!(test.labels.len(), 1000);
    // The first labels of the original files.
    assert_eq!(&train.labels[..8], &[5, 0, 4, 1, 9, 2, 1, 3]);
    assert_eq!(&test.labels[..8], &[7, 2, 1, 0, 4, 1, 4, 9]);
    assert!(train.images().iter().all(|&p| (0.0..=1.0).contains(&p)));
    assert!(train.images().contains(&1.0), "255 must map to 1.0");
    // Every class is represented well enough (at least 5% of the examples each).
    for (ds, n) in [(&train, 6000), (&test, 1000)] {
        let counts = ds.class_counts();
        assert_eq!(counts.len(), 10);
        assert!(counts.iter().all(|&c| c * 20 >= n), "{counts:?}");
        assert_eq!(counts.iter().sum::<usize>(), n);
    }
}

#[test]
fn plain_and_gzipped_files_read_the_same() {
    let dir = temp_dir("plain-gz");
    let img = tiny_images(4);
    std::fs::write(dir.join("a"), img.to_bytes()).unwrap();
    img.write_gz(&dir.join("a.gz")).unwrap();
    let plain = Idx::read(&dir.join("a"), IMAGES_MAGIC).unwrap();
    let gz = Idx::read(&dir.join("a.gz"), IMAGES_MAGIC).unwrap();
    assert_eq!(plain, img);
    assert_eq!(gz, img);
}

#[test]
fn load_mnist_reads_plain_files_and_scales_pixels() {
    let dir = temp_dir("load-plain");
    for (i, name) in MNIST_FILES.iter().enumerate() {
        let n = if i < 2 { 5 } else { 3 };
        let idx = if i % 2 == 0 {
            tiny_images(n)
        } else {
            tiny_labels(n)
        };
        std::fs::write(dir.join(name), idx.to_bytes()).unwrap();
    }
    let (train, test) = load_mnist(&dir).unwrap();
    assert_eq!((train.n, train.rows, train.cols), (5, 2, 3));
    assert_eq!(test.n, 3);
    assert_eq!(train.labels, vec![0, 1, 2, 3, 4]);
    assert_eq!(train.images()[7], 7.0 / 255.0);
}

#[test]
fn missing_file_names_both_candidates() {
    let dir = temp_dir("missing");
    let e = load_mnist(&dir).unwrap_err();
    let msg = e.to_string();
    assert!(matches!(e, DataError::Missing { .. }), "{e:?}");
    assert!(msg.contains("train-images-idx3-ubyte"), "{msg}");
    assert!(msg.contains("train-images-idx3-ubyte.gz"), "{msg}");
}

#[test]
fn truncated_data_is_an_error_with_expected_and_found() {
    let dir = temp_dir("truncated");
    let p = dir.join("imgs");
    let mut bytes = tiny_images(4).to_bytes();
    bytes.truncate(bytes.len() - 5);
    std::fs::write(&p, &bytes).unwrap();
    let (path, msg) = format_message(Idx::read(&p, IMAGES_MAGIC).unwrap_err());
    assert_eq!(path, p);
    assert!(msg.contains("truncated"), "{msg}");
    assert!(msg.contains("need 24 data bytes"), "{msg}");
    assert!(msg.contains("found 19"), "{msg}");
}

#[test]
fn truncated_header_is_an_error() {
    let dir = temp_dir("header");
    let p = dir.join("imgs");
    std::fs::write(&p, &tiny_images(1).to_bytes()[..9]).unwrap();
    let (_, msg) = format_message(Idx::read(&p, IMAGES_MAGIC).unwrap_err());
    assert!(
        msg.contains("truncated IDX header: expected 16 bytes"),
        "{msg}"
    );
    std::fs::write(&p, [0u8, 0]).unwrap();
    let (_, msg) = format_message(Idx::read(&p, IMAGES_MAGIC).unwrap_err());
    assert!(msg.contains("expected at least 4 bytes"), "{msg}");
    std::fs::write(&p, []).unwrap();
    assert!(Idx::read(&p, IMAGES_MAGIC).is_err());
}

#[test]
fn trailing_bytes_are_an_error() {
    let dir = temp_dir("trailing");
    let p = dir.join("labels");
    let mut bytes = tiny_labels(3).to_bytes();
    bytes.push(0);
    std::fs::write(&p, &bytes).unwrap();
    let (_, msg) = format_message(Idx::read(&p, LABELS_MAGIC).unwrap_err());
    assert!(msg.contains("trailing bytes"), "{msg}");
}

#[test]
fn wrong_magic_names_expected_and_found() {
    let dir = temp_dir("magic");
    let p = dir.join("labels.gz");
    tiny_labels(3).write_gz(&p).unwrap();
    let (path, msg) = format_message(Idx::read(&p, IMAGES_MAGIC).unwrap_err());
    assert_eq!(path, p);
    assert!(msg.contains("expected 0x00000803"), "{msg}");
    assert!(msg.contains("found 0x00000801"), "{msg}");
    // A float IDX file (type byte 0x0d) is not accepted either.
    let mut bytes = tiny_images(1).to_bytes();
    bytes[2] = 0x0d;
    std::fs::write(dir.join("f"), &bytes).unwrap();
    let (_, msg) = format_message(Idx::read(&dir.join("f"), IMAGES_MAGIC).unwrap_err());
    assert!(msg.contains("found 0x00000d03"), "{msg}");
}

#[test]
fn image_and_label_counts_must_agree() {
    let dir = temp_dir("counts");
    let (pi, pl) = (dir.join("i"), dir.join("l"));
    std::fs::write(&pi, tiny_images(4).to_bytes()).unwrap();
    std::fs::write(&pl, tiny_labels(3).to_bytes()).unwrap();
    let (path, msg) = format_message(Dataset::read(&pi, &pl).unwrap_err());
    assert_eq!(path, pl);
    assert!(msg.contains("expected 4 labels"), "{msg}");
    assert!(msg.contains("[3]"), "{msg}");
}

#[test]
fn wrong_dimensions_are_an_error() {
    let dir = temp_dir("dims");
    let pl = dir.join("l");
    std::fs::write(&pl, tiny_labels(2).to_bytes()).unwrap();
    let flat = Idx {
        dims: vec![2, 6],
        data: vec![0; 12],
    };
    let e = Dataset::from_idx(&flat, &tiny_labels(2), Path::new("x"), &pl).unwrap_err();
    let (path, msg) = format_message(e);
    assert_eq!(path, Path::new("x"));
    assert!(msg.contains("expected 3 dimensions"), "{msg}");
    // A header whose dimensions overflow is an error, not an allocation or a panic.
    let mut huge = vec![0, 0, 8, 3];
    for _ in 0..3 {
        huge.extend_from_slice(&u32::MAX.to_be_bytes());
    }
    std::fs::write(dir.join("huge"), &huge).unwrap();
    assert!(Idx::read(&dir.join("huge"), IMAGES_MAGIC).is_err());
}

/// Found by the `idx_read` fuzz target: an images file of 3 images of 0x5 pixels (the
/// 16-byte header `00 00 08 03`, 3, 0, 5) was a dataset whose batches panicked (a chunk size
/// of zero in `fill_images`); images without pixels are refused when the dataset is built.
#[test]
fn images_without_pixels_are_an_error() {
    let dir = temp_dir("no-pixels");
    let (pi, pl) = (dir.join("i"), dir.join("l"));
    let mut bytes = vec![0, 0, 8, 3];
    for d in [3u32, 0, 5] {
        bytes.extend_from_slice(&d.to_be_bytes());
    }
    std::fs::write(&pi, &bytes).unwrap();
    std::fs::write(&pl, tiny_labels(3).to_bytes()).unwrap();
    let images = Idx::read(&pi, IMAGES_MAGIC).unwrap();
    assert_eq!(images.dims, [3, 0, 5]);
    for e in [
        Dataset::read(&pi, &pl).unwrap_err(),
        Dataset::from_idx(&images, &tiny_labels(3), &pi, &pl).unwrap_err(),
    ] {
        let (path, msg) = format_message(e);
        assert_eq!(path, pi);
        assert!(msg.contains("at least 1x1 pixels"), "{msg}");
        assert!(msg.contains("[3, 0, 5] (0x5 pixels)"), "{msg}");
    }
    let wide = Idx {
        dims: vec![2, 4, 0],
        data: vec![],
    };
    let e = Dataset::from_idx(&wide, &tiny_labels(2), &pi, &pl).unwrap_err();
    assert!(format_message(e).1.contains("(4x0 pixels)"));
}

#[test]
fn corrupt_gzip_is_an_error() {
    let dir = temp_dir("gzip");
    let p = dir.join("imgs.gz");
    tiny_images(50).write_gz(&p).unwrap();
    let full = std::fs::read(&p).unwrap();
    std::fs::write(&p, &full[..full.len() / 2]).unwrap();
    let (_, msg) = format_message(Idx::read(&p, IMAGES_MAGIC).unwrap_err());
    assert!(msg.contains("gzip"), "{msg}");
    let mut flipped = full.clone();
    flipped[12] ^= 0xff;
    std::fs::write(&p, &flipped).unwrap();
    assert!(Idx::read(&p, IMAGES_MAGIC).is_err());
}

/// The gzip encoding of `bytes` (one member, no timestamp).
fn gzip(bytes: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut enc = flate2::GzBuilder::new()
        .mtime(0)
        .write(Vec::new(), flate2::Compression::default());
    enc.write_all(bytes).unwrap();
    enc.finish().unwrap()
}

/// Two gzip members one after the other (`cat a.gz b.gz`) read as one stream, as gunzip
/// reads them; so do three, one of them empty.
#[test]
fn multi_member_gzip_reads_as_one_stream() {
    let dir = temp_dir("multi-member");
    let img = tiny_images(5);
    let bytes = img.to_bytes();
    for cut in [1, 10, 16, bytes.len() - 1] {
        let mut cat = gzip(&bytes[..cut]);
        cat.extend(gzip(&[]));
        cat.extend(gzip(&bytes[cut..]));
        let p = dir.join(format!("cat-{cut}.gz"));
        std::fs::write(&p, &cat).unwrap();
        assert_eq!(Idx::read(&p, IMAGES_MAGIC).unwrap(), img, "cut at {cut}");
    }
}

/// Bytes after the end of the gzip stream that do not start another member are an error
/// naming where they are and what was found (they used to be ignored).
#[test]
fn bytes_after_the_gzip_stream_are_an_error() {
    let dir = temp_dir("gz-trailing");
    let p = dir.join("labels.gz");
    let mut bytes = gzip(&tiny_labels(3).to_bytes());
    let end = bytes.len();
    bytes.extend_from_slice(b"garbage");
    std::fs::write(&p, &bytes).unwrap();
    let (path, msg) = format_message(Idx::read(&p, LABELS_MAGIC).unwrap_err());
    assert_eq!(path, p);
    assert!(
        msg.contains(&format!(
            "unexpected bytes after the end of the gzip stream, at byte {end}: expected another gzip member (1f 8b) or the end of the file, found 67 61 72 62"
        )),
        "{msg}"
    );
    // a damaged second member is reported with its offset
    let mut bytes = gzip(&tiny_labels(3).to_bytes());
    bytes.extend_from_slice(&[0x1f, 0x8b, 0, 0]);
    std::fs::write(&p, &bytes).unwrap();
    let (_, msg) = format_message(Idx::read(&p, LABELS_MAGIC).unwrap_err());
    assert!(
        msg.contains(&format!("the member starting at byte {end}")),
        "{msg}"
    );
}

/// A header declaring more data than the limit is refused before any data is read.
#[test]
fn declared_size_above_the_limit_is_refused() {
    let dir = temp_dir("limit");
    let p = dir.join("imgs");
    let mut header = vec![0, 0, 8, 3];
    for d in [100_000u32, 1_000, 1_000] {
        header.extend_from_slice(&d.to_be_bytes());
    }
    std::fs::write(&p, &header).unwrap();
    let (_, msg) = format_message(Idx::read(&p, IMAGES_MAGIC).unwrap_err());
    assert!(
        msg.contains(&format!(
            "dimensions [100000, 1000, 1000] declare 100000000000 data bytes, more than the limit of {MAX_IDX_BYTES} bytes"
        )),
        "{msg}"
    );
    // the limit is the caller's to choose
    std::fs::write(&p, tiny_images(4).to_bytes()).unwrap();
    assert!(Idx::read_limited(&p, IMAGES_MAGIC, 24).is_ok());
    let (_, msg) = format_message(Idx::read_limited(&p, IMAGES_MAGIC, 23).unwrap_err());
    assert!(msg.contains("more than the limit of 23 bytes"), "{msg}");
}

/// The reader stops one byte after the declared data: an endless input behind a valid header
/// is reported as trailing bytes (reading it whole would never end).
#[test]
fn reading_stops_after_the_declared_bytes() {
    let header = Idx {
        dims: vec![2],
        data: vec![7, 7],
    }
    .to_bytes();
    let endless = (&header[..]).chain(std::io::repeat(1));
    let e = Idx::from_reader(endless, Path::new("endless"), LABELS_MAGIC, MAX_IDX_BYTES);
    let (_, msg) = format_message(e.unwrap_err());
    assert!(
        msg.contains(
            "trailing bytes: dimensions [2] need 2 data bytes after the 8-byte header, found more"
        ),
        "{msg}"
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Arbitrary bytes, and every truncation of a valid file, give a result and never panic.
    #[test]
    fn reader_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..64), cut in 0usize..40) {
        let _ = Idx::from_bytes(&bytes, Path::new("fuzz"), IMAGES_MAGIC);
        let _ = Idx::from_bytes(&bytes, Path::new("fuzz"), LABELS_MAGIC);
        let valid = tiny_images(1).to_bytes();
        let cut = cut.min(valid.len());
        let r = Idx::from_bytes(&valid[..cut], Path::new("fuzz"), IMAGES_MAGIC);
        prop_assert_eq!(r.is_ok(), cut == valid.len());
    }
}
