//! Datasets for training: an IDX reader and writer (the MNIST file format, gzipped or plain),
//! the [`Dataset`] of images and integer labels, the loaders [`load_mnist`] and
//! [`load_default`] (the MNIST subset shipped in `data/mnist-subset/`), and seeded mini-batching
//! ([`Batches`]).
//!
//! In: IDX files (`train-images-idx3-ubyte[.gz]`, ...). Out: a [`Dataset`] that keeps the
//! pixels as the file's bytes (a quarter of the memory of f32) and converts them to `f32`
//! in `[0, 1]` a batch at a time, straight into a step's input buffer
//! ([`Dataset::fill_images`]), and `i32` labels. Every malformed or
//! truncated file is reported as a [`DataError`] naming the file and what was expected versus
//! found; nothing a file contains can make the reader panic. Files are read as streams: the
//! header's declared size is checked first (at most [`MAX_IDX_BYTES`]) and no more than that
//! is ever decompressed or held, so a gzip bomb costs no memory beyond its declared size. A
//! gzipped file may hold several gzip members (`cat a.gz b.gz`); anything after the last one
//! is an error.

use crate::init::Rng;
use flate2::bufread::GzDecoder;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};

/// Magic number of an IDX file of unsigned bytes with three dimensions (images).
pub const IMAGES_MAGIC: u32 = 0x0000_0803;
/// Magic number of an IDX file of unsigned bytes with one dimension (labels).
pub const LABELS_MAGIC: u32 = 0x0000_0801;

/// The standard MNIST file names (without `.gz`): train images, train labels, test images,
/// test labels.
pub const MNIST_FILES: [&str; 4] = [
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
];

/// An error while reading or writing a dataset: the file and what is wrong with it.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// The file could not be opened, read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The operating-system error.
        #[source]
        source: std::io::Error,
    },
    /// The file's content is not what was expected (magic, dimensions, length, gzip stream).
    #[error("{}: {message}", path.display())]
    Format {
        /// The file.
        path: PathBuf,
        /// What was expected and what was found.
        message: String,
    },
    /// Neither the plain nor the gzipped version of a required file exists.
    #[error("{}: not found (also tried {})", path.display(), gz.display())]
    Missing {
        /// The plain file name that was tried.
        path: PathBuf,
        /// The `.gz` file name that was tried.
        gz: PathBuf,
    },
    /// A batch size of zero or a dataset whose parts do not agree.
    #[error("{0}")]
    Invalid(String),
}

fn format_err(path: &Path, message: String) -> DataError {
    DataError::Format {
        path: path.to_path_buf(),
        message,
    }
}

/// The content of an IDX file of unsigned bytes: its dimensions and its bytes, row-major.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Idx {
    /// Extent of each dimension, outermost first.
    pub dims: Vec<usize>,
    /// `dims.iter().product()` bytes.
    pub data: Vec<u8>,
}

impl Idx {
    /// The magic number of this file: `0x0000_08NN` with `NN` the number of dimensions.
    pub fn magic(&self) -> u32 {
        0x0800 | self.dims.len() as u32
    }

    /// The IDX encoding: magic, big-endian `u32` dimensions, then the bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(4 + 4 * self.dims.len() + self.data.len());
        out.extend_from_slice(&self.magic().to_be_bytes());
        for &d in &self.dims {
            out.extend_from_slice(&(d as u32).to_be_bytes());
        }
        out.extend_from_slice(&self.data);
        out
    }

    /// Decodes IDX bytes (already decompressed). `path` only names the file in errors;
    /// `expected_magic` is [`IMAGES_MAGIC`], [`LABELS_MAGIC`] or any `0x0000_08NN`. The
    /// header may declare at most [`MAX_IDX_BYTES`] data bytes.
    pub fn from_bytes(bytes: &[u8], path: &Path, expected_magic: u32) -> Result<Idx, DataError> {
        Idx::from_reader(bytes, path, expected_magic, MAX_IDX_BYTES)
    }

    /// Decodes IDX bytes (already decompressed) read from `input`, as a stream: the header
    /// first, whose dimensions must declare at most `limit` data bytes, then exactly the
    /// declared bytes. At most one byte more than the header declares is read (to report
    /// trailing bytes), so memory never exceeds the declared size, whatever `input` holds.
    /// `path` only names the file in errors.
    pub fn from_reader(
        mut input: impl Read,
        path: &Path,
        expected_magic: u32,
        limit: usize,
    ) -> Result<Idx, DataError> {
        let read_err = |e: std::io::Error| match e.kind() {
            // the gzip decoder's complaints (see `GzMembers`): the file's content is wrong
            std::io::ErrorKind::InvalidData => format_err(path, e.to_string()),
            _ => DataError::Io {
                path: path.to_path_buf(),
                source: e,
            },
        };
        let mut magic = [0u8; 4];
        let got = read_up_to(&mut input, &mut magic).map_err(read_err)?;
        if got < 4 {
            return Err(format_err(
                path,
                format!(
                    "truncated IDX header: expected at least 4 bytes (the magic number), found {got}"
                ),
            ));
        }
        let magic = u32::from_be_bytes(magic);
        if magic != expected_magic {
            return Err(format_err(
                path,
                format!(
                    "bad magic number: expected 0x{expected_magic:08x} ({}), found 0x{magic:08x}",
                    describe_magic(expected_magic)
                ),
            ));
        }
        let rank = (magic & 0xff) as usize;
        let header = 4 + 4 * rank;
        let mut dims_bytes = vec![0u8; 4 * rank];
        let got = read_up_to(&mut input, &mut dims_bytes).map_err(read_err)?;
        if got < dims_bytes.len() {
            return Err(format_err(
                path,
                format!(
                    "truncated IDX header: expected {header} bytes for {rank} dimension(s), found {}",
                    4 + got
                ),
            ));
        }
        let dims: Vec<usize> = dims_bytes
            .chunks_exact(4)
            .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]) as usize)
            .collect();
        let count = dims
            .iter()
            .try_fold(1usize, |acc, &d| acc.checked_mul(d))
            .ok_or_else(|| format_err(path, format!("dimensions {dims:?} overflow")))?;
        if count > limit {
            return Err(format_err(
                path,
                format!(
                    "dimensions {dims:?} declare {count} data bytes, more than the limit of {limit} bytes"
                ),
            ));
        }
        let data = read_at_most(&mut input, count + 1).map_err(read_err)?;
        let found = data.len();
        if found != count {
            let (what, found) = if found < count {
                ("truncated", found.to_string())
            } else {
                ("trailing bytes", "more".to_string())
            };
            return Err(format_err(
                path,
                format!(
                    "{what}: dimensions {dims:?} need {count} data bytes after the {header}-byte header, found {found}"
                ),
            ));
        }
        Ok(Idx { dims, data })
    }

    /// Reads an IDX file, gunzipping it first when it starts with the gzip magic (`1f 8b`).
    /// The header may declare at most [`MAX_IDX_BYTES`] data bytes (see [`Idx::read_limited`]).
    pub fn read(path: &Path, expected_magic: u32) -> Result<Idx, DataError> {
        Idx::read_limited(path, expected_magic, MAX_IDX_BYTES)
    }

    /// [`Idx::read`] with the largest number of data bytes the header may declare.
    ///
    /// The file is read as a stream ([`Idx::from_reader`]): the header is checked before any
    /// data is read or decompressed, and no more than the declared data (plus one byte, to
    /// detect excess) is ever held, so a small gzip file that inflates to gigabytes costs no
    /// more memory than its header declares. A gzipped file may hold several gzip members
    /// one after another (`cat a.gz b.gz`), read as one stream; bytes after the last member
    /// that do not start another member are an error.
    pub fn read_limited(path: &Path, expected_magic: u32, limit: usize) -> Result<Idx, DataError> {
        let io = |source| DataError::Io {
            path: path.to_path_buf(),
            source,
        };
        let file = std::fs::File::open(path).map_err(io)?;
        let mut input = BufReader::new(Counting {
            inner: file,
            count: 0,
        });
        let gzipped = input.fill_buf().map_err(io)?.starts_with(&[0x1f, 0x8b]);
        if gzipped {
            Idx::from_reader(GzMembers::new(input), path, expected_magic, limit)
        } else {
            Idx::from_reader(input, path, expected_magic, limit)
        }
    }

    /// Writes the file gzipped (best compression, no timestamp, so the bytes are reproducible).
    pub fn write_gz(&self, path: &Path) -> Result<(), DataError> {
        let io = |source| DataError::Io {
            path: path.to_path_buf(),
            source,
        };
        let file = std::fs::File::create(path).map_err(io)?;
        let mut enc = flate2::GzBuilder::new()
            .mtime(0)
            .write(file, flate2::Compression::best());
        enc.write_all(&self.to_bytes()).map_err(io)?;
        enc.finish().map_err(io)?;
        Ok(())
    }
}

/// The most data bytes [`Idx::read`] and [`Idx::from_bytes`] accept from an IDX header:
/// 1 GiB (the full MNIST training images are 47 MB). A header declaring more is refused
/// before anything is read or decompressed; [`Idx::read_limited`] takes another limit.
pub const MAX_IDX_BYTES: usize = 1 << 30;

/// Fills `buf` from `input` as far as the input goes; returns how many bytes were read.
fn read_up_to(input: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match input.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

/// Reads until the end of `input` or until `max` bytes are read, whichever comes first. The
/// buffer grows with what arrives (at most doubling, never beyond `max`), so a header that
/// declares more than the input holds allocates no more than the input's size.
fn read_at_most(input: &mut impl Read, max: usize) -> std::io::Result<Vec<u8>> {
    let mut data: Vec<u8> = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    while data.len() < max {
        let want = (max - data.len()).min(chunk.len());
        let n = match input.read(&mut chunk[..want]) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if data.capacity() - data.len() < n {
            let grow = data.len().max(1 << 20).min(max - data.len()).max(n);
            data.reserve_exact(grow);
        }
        data.extend_from_slice(&chunk[..n]);
    }
    Ok(data)
}

/// A reader that counts the bytes read through it (the position in a compressed file).
struct Counting<R> {
    inner: R,
    count: u64,
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.count += n as u64;
        Ok(n)
    }
}

/// The decompressed bytes of a gzip file of one or more members (as `cat a.gz b.gz` makes
/// and `gunzip` reads), as a stream. Every error is an [`std::io::ErrorKind::InvalidData`]
/// naming the byte offset in the file: a corrupt or truncated member (including a checksum
/// mismatch), or bytes after the last member that do not start another one.
struct GzMembers<R: Read> {
    state: GzState<R>,
}

/// Where [`GzMembers`] is.
enum GzState<R: Read> {
    /// Inside the member starting at this byte offset.
    Member(GzDecoder<BufReader<Counting<R>>>, u64),
    /// At the end of a member (or at the start of the file).
    Between(BufReader<Counting<R>>),
    /// After an error.
    Failed,
}

impl<R: Read> GzMembers<R> {
    fn new(input: BufReader<Counting<R>>) -> GzMembers<R> {
        GzMembers {
            state: GzState::Between(input),
        }
    }
}

/// The offset in the file of the next byte `input` gives.
fn position<R>(input: &BufReader<Counting<R>>) -> u64 {
    input.get_ref().count - input.buffer().len() as u64
}

impl<R: Read> Read for GzMembers<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let invalid = |m: String| std::io::Error::new(std::io::ErrorKind::InvalidData, m);
        loop {
            match std::mem::replace(&mut self.state, GzState::Failed) {
                GzState::Member(mut member, start) => match member.read(buf) {
                    Ok(0) if !buf.is_empty() => {
                        self.state = GzState::Between(member.into_inner());
                    }
                    Ok(n) => {
                        self.state = GzState::Member(member, start);
                        return Ok(n);
                    }
                    Err(e) => {
                        return Err(invalid(format!(
                            "corrupt or truncated gzip stream (the member starting at byte {start}): {e}"
                        )))
                    }
                },
                GzState::Between(mut input) => {
                    let at = position(&input);
                    let next = input.fill_buf()?;
                    if next.is_empty() {
                        self.state = GzState::Between(input);
                        return Ok(0);
                    }
                    if next[0] != 0x1f || next.get(1).is_some_and(|&b| b != 0x8b) {
                        let shown: Vec<String> =
                            next.iter().take(4).map(|b| format!("{b:02x}")).collect();
                        return Err(invalid(format!(
                            "unexpected bytes after the end of the gzip stream, at byte {at}: expected another gzip member (1f 8b) or the end of the file, found {}",
                            shown.join(" ")
                        )));
                    }
                    self.state = GzState::Member(GzDecoder::new(input), at);
                }
                GzState::Failed => {
                    return Err(invalid("the gzip stream failed earlier".to_string()))
                }
            }
        }
    }
}

fn describe_magic(m: u32) -> String {
    match m {
        IMAGES_MAGIC => "unsigned-byte images, 3 dimensions".to_string(),
        LABELS_MAGIC => "unsigned-byte labels, 1 dimension".to_string(),
        _ => format!("unsigned bytes, {} dimension(s)", m & 0xff),
    }
}

/// Images and their integer labels.
#[derive(Clone, Debug, PartialEq)]
pub struct Dataset {
    /// `n * rows * cols` pixel bytes (0 to 255), image after image, row-major; the model
    /// sees `byte / 255` ([`Dataset::images`], [`Dataset::fill_images`]).
    pub pixels: Vec<u8>,
    /// `n` labels (MNIST: 0 to 9).
    pub labels: Vec<i32>,
    /// Number of examples.
    pub n: usize,
    /// Image height.
    pub rows: usize,
    /// Image width.
    pub cols: usize,
}

impl Dataset {
    /// Builds a dataset from an images file (3-D IDX) and its labels file (1-D IDX) that
    /// must hold the same number of examples.
    pub fn from_idx(
        images: &Idx,
        labels: &Idx,
        images_path: &Path,
        labels_path: &Path,
    ) -> Result<Dataset, DataError> {
        let (n, rows, cols) = Dataset::check_idx(images, labels, images_path, labels_path)?;
        Ok(Dataset {
            pixels: images.data.clone(),
            labels: labels.data.iter().map(|&b| b as i32).collect(),
            n,
            rows,
            cols,
        })
    }

    /// `(n, rows, cols)` of an images file and a labels file that agree.
    fn check_idx(
        images: &Idx,
        labels: &Idx,
        images_path: &Path,
        labels_path: &Path,
    ) -> Result<(usize, usize, usize), DataError> {
        let (n, rows, cols) = match images.dims[..] {
            [n, r, c] => (n, r, c),
            _ => {
                return Err(format_err(
                    images_path,
                    format!(
                        "expected 3 dimensions [n, rows, cols], found {:?}",
                        images.dims
                    ),
                ))
            }
        };
        if rows == 0 || cols == 0 {
            return Err(format_err(
                images_path,
                format!(
                    "expected images of at least 1x1 pixels, found dimensions {:?} ({rows}x{cols} pixels)",
                    images.dims
                ),
            ));
        }
        if labels.dims.len() != 1 || labels.dims[0] != n {
            return Err(format_err(
                labels_path,
                format!(
                    "expected {n} labels (one per image of {}), found dimensions {:?}",
                    images_path.display(),
                    labels.dims
                ),
            ));
        }
        Ok((n, rows, cols))
    }

    /// Reads an images file and a labels file (each gzipped or plain, see [`Idx::read`]).
    /// The pixels are kept as read (no copy).
    pub fn read(images_path: &Path, labels_path: &Path) -> Result<Dataset, DataError> {
        let images = Idx::read(images_path, IMAGES_MAGIC)?;
        let labels = Idx::read(labels_path, LABELS_MAGIC)?;
        let (n, rows, cols) = Dataset::check_idx(&images, &labels, images_path, labels_path)?;
        Ok(Dataset {
            pixels: images.data,
            labels: labels.data.iter().map(|&b| b as i32).collect(),
            n,
            rows,
            cols,
        })
    }

    /// Every image's pixels scaled to `[0, 1]` (byte / 255), image after image: a copy of
    /// the whole dataset as f32, for APIs that take all examples at once.
    pub fn images(&self) -> Vec<f32> {
        self.pixels.iter().map(|&b| pixel(b)).collect()
    }

    /// Writes the pixels of the examples `idx`, scaled to `[0, 1]`, into `out` (example
    /// after example; `out` holds `idx.len() * example_len()` values, extra values are left
    /// alone). Allocates nothing.
    pub fn fill_images(&self, idx: &[usize], out: &mut [f32]) {
        let k = self.example_len();
        // the examples are scattered over the dataset (shuffled): ask for every cache line of
        // the batch first, so that the misses overlap instead of stalling one image at a time
        #[cfg(target_arch = "x86_64")]
        for &i in idx {
            if let Some(src) = self.pixels.get(i * k..(i + 1) * k) {
                for line in src.chunks(64) {
                    // SAFETY: prefetching is a hint; the address is inside `src`.
                    unsafe {
                        std::arch::x86_64::_mm_prefetch(
                            line.as_ptr() as *const i8,
                            std::arch::x86_64::_MM_HINT_T0,
                        )
                    };
                }
            }
        }
        // in code built for the widest vectors: the division is most of the work
        crate::codegen::kernels::widest(|| {
            for (&i, dst) in idx.iter().zip(out.chunks_exact_mut(k)) {
                if let Some(src) = self.pixels.get(i * k..(i + 1) * k) {
                    for (d, &b) in dst.iter_mut().zip(src) {
                        *d = pixel(b);
                    }
                }
            }
        })
    }

    /// Writes the labels of the examples `idx` into `out`. Allocates nothing.
    pub fn fill_labels(&self, idx: &[usize], out: &mut [i32]) {
        for (&i, d) in idx.iter().zip(out.iter_mut()) {
            if let Some(&l) = self.labels.get(i) {
                *d = l;
            }
        }
    }

    /// Pixels per image (`rows * cols`).
    pub fn example_len(&self) -> usize {
        self.rows * self.cols
    }

    /// Number of classes: the largest label plus one (0 for an empty dataset).
    pub fn num_classes(&self) -> usize {
        self.labels
            .iter()
            .map(|&l| l.max(0) as usize + 1)
            .max()
            .unwrap_or(0)
    }

    /// How many examples of each class, indexed by label.
    pub fn class_counts(&self) -> Vec<usize> {
        let mut c = vec![0; self.num_classes()];
        for &l in &self.labels {
            if l >= 0 {
                c[l as usize] += 1;
            }
        }
        c
    }

    /// The examples `start..end` (clamped to the dataset) as a new dataset.
    pub fn slice(&self, start: usize, end: usize) -> Dataset {
        let end = end.min(self.n);
        let start = start.min(end);
        let k = self.example_len();
        Dataset {
            pixels: self.pixels[start * k..end * k].to_vec(),
            labels: self.labels[start..end].to_vec(),
            n: end - start,
            rows: self.rows,
            cols: self.cols,
        }
    }

    /// Mini-batches of `batch_size` examples (the last one may be smaller), in order or
    /// shuffled by `shuffle_seed`. Errors when `batch_size` is 0.
    pub fn batches(
        &self,
        batch_size: usize,
        shuffle_seed: Option<u64>,
    ) -> Result<Batches<'_>, DataError> {
        Batches::new(self, batch_size, shuffle_seed)
    }
}

/// Finds `dir/name` or `dir/name.gz` (plain first).
fn find_file(dir: &Path, name: &str) -> Result<PathBuf, DataError> {
    let plain = dir.join(name);
    if plain.is_file() {
        return Ok(plain);
    }
    let gz = dir.join(format!("{name}.gz"));
    if gz.is_file() {
        return Ok(gz);
    }
    Err(DataError::Missing { path: plain, gz })
}

/// Loads MNIST (or any dataset in its layout, such as Fashion-MNIST) from the four standard
/// files in `dir`, each plain or gzipped: returns `(train, test)`.
pub fn load_mnist(dir: impl AsRef<Path>) -> Result<(Dataset, Dataset), DataError> {
    let dir = dir.as_ref();
    let p: Vec<PathBuf> = MNIST_FILES
        .iter()
        .map(|f| find_file(dir, f))
        .collect::<Result<_, _>>()?;
    let train = Dataset::read(&p[0], &p[1])?;
    let test = Dataset::read(&p[2], &p[3])?;
    Ok((train, test))
}

/// Directory of the MNIST subset shipped with the crate (see its README).
pub fn default_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("data/mnist-subset")
}

/// The MNIST subset shipped in `data/mnist-subset/`: the first 6000 training and the first
/// 1000 test images of MNIST, with their labels.
pub fn load_default() -> Result<(Dataset, Dataset), DataError> {
    load_mnist(default_dir())
}

/// Mini-batches of a [`Dataset`]: `ceil(n / batch_size)` batches, the last one holding the
/// remainder. With a seed, the example order is a Fisher-Yates shuffle drawn from
/// [`Rng`]`::new(seed)`, so the same seed gives the same batches on every machine.
#[derive(Clone, Debug)]
pub struct Batches<'a> {
    data: &'a Dataset,
    order: Vec<usize>,
    batch_size: usize,
    pos: usize,
}

/// One mini-batch: copies of its examples' pixels and labels.
#[derive(Clone, Debug, PartialEq)]
pub struct Batch {
    /// `n * rows * cols` pixels.
    pub images: Vec<f32>,
    /// `n` labels.
    pub labels: Vec<i32>,
    /// Number of examples in this batch (`batch_size`, or fewer for the last one).
    pub n: usize,
    /// Index in the dataset of each example of the batch.
    pub indices: Vec<usize>,
}

impl<'a> Batches<'a> {
    /// Batches of `batch_size` over `data`, shuffled when `shuffle_seed` is given.
    pub fn new(
        data: &'a Dataset,
        batch_size: usize,
        shuffle_seed: Option<u64>,
    ) -> Result<Batches<'a>, DataError> {
        if batch_size == 0 {
            return Err(DataError::Invalid("batch size must be at least 1".into()));
        }
        let order = match shuffle_seed {
            Some(seed) => shuffled(data.n, seed),
            None => (0..data.n).collect(),
        };
        Ok(Batches {
            data,
            order,
            batch_size,
            pos: 0,
        })
    }

    /// Number of batches in total (including the last partial one).
    pub fn num_batches(&self) -> usize {
        self.order.len().div_ceil(self.batch_size)
    }
}

/// The model's value of pixel byte `b`: `b / 255`.
#[inline]
fn pixel(b: u8) -> f32 {
    b as f32 / 255.0
}

/// A permutation of `0..n` by Fisher-Yates, drawn from `Rng::new(seed)`.
pub fn shuffled(n: usize, seed: u64) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    let mut rng = Rng::new(seed);
    for i in (1..n).rev() {
        let j = rng.below(i as u64 + 1) as usize;
        order.swap(i, j);
    }
    order
}

impl Iterator for Batches<'_> {
    type Item = Batch;

    fn next(&mut self) -> Option<Batch> {
        if self.pos >= self.order.len() {
            return None;
        }
        let end = (self.pos + self.batch_size).min(self.order.len());
        let indices = self.order[self.pos..end].to_vec();
        self.pos = end;
        let k = self.data.example_len();
        let mut images = vec![0.0; indices.len() * k];
        let mut labels = vec![0; indices.len()];
        self.data.fill_images(&indices, &mut images);
        self.data.fill_labels(&indices, &mut labels);
        Some(Batch {
            images,
            labels,
            n: indices.len(),
            indices,
        })
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let left = (self.order.len() - self.pos).div_ceil(self.batch_size);
        (left, Some(left))
    }
}

impl ExactSizeIterator for Batches<'_> {}
