//! The IDX reader's memory stays within what a file's header declares: a small gzip file that
//! inflates to far more (a gzip bomb) is refused, after reading at most one byte past the
//! declared data, without the heap ever holding the inflated bytes; a header declaring more
//! than the limit is refused before anything is decompressed. A counting global allocator
//! measures the peak of live heap bytes. One test in this binary, so no other test allocates
//! while it measures.

use gradlift::data::{Idx, IMAGES_MAGIC};
use std::alloc::{GlobalAlloc, Layout, System};
use std::io::Write;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};

struct Peak;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

fn grew(n: usize) {
    let live = LIVE.fetch_add(n, SeqCst) + n;
    PEAK.fetch_max(live, SeqCst);
}

// SAFETY: forwards to the system allocator; only counts.
unsafe impl GlobalAlloc for Peak {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        grew(l.size());
        // SAFETY: the caller's contract is the system allocator's.
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        LIVE.fetch_sub(l.size(), SeqCst);
        // SAFETY: as above.
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn alloc_zeroed(&self, l: Layout) -> *mut u8 {
        grew(l.size());
        // SAFETY: as above.
        unsafe { System.alloc_zeroed(l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, n: usize) -> *mut u8 {
        // the old and the new block both live while the bytes are copied
        grew(n);
        LIVE.fetch_sub(l.size(), SeqCst);
        // SAFETY: as above.
        unsafe { System.realloc(p, l, n) }
    }
}

#[global_allocator]
static GLOBAL: Peak = Peak;

/// The peak of live heap bytes while `f` runs, above what was live before it.
fn peak_during<T>(f: impl FnOnce() -> T) -> (T, usize) {
    let before = LIVE.load(SeqCst);
    PEAK.store(before, SeqCst);
    let r = f();
    (r, PEAK.load(SeqCst) - before)
}

/// A gzipped images file whose header says `dims` followed by `zeros` zero bytes.
fn bomb(dims: [u32; 3], zeros: usize) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    enc.write_all(&[0, 0, 8, 3]).unwrap();
    for d in dims {
        enc.write_all(&d.to_be_bytes()).unwrap();
    }
    let chunk = vec![0u8; 1 << 20];
    for _ in 0..zeros / chunk.len() {
        enc.write_all(&chunk).unwrap();
    }
    enc.finish().unwrap()
}

#[test]
fn a_gzip_bomb_costs_no_more_memory_than_its_header_declares() {
    let dir = std::env::temp_dir().join(format!("gradlift-idx-memory-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    const INFLATED: usize = 128 << 20;

    // 784 bytes declared, 128 MiB inside (about 130 KB compressed)
    let p = dir.join("bomb.gz");
    std::fs::write(&p, bomb([1, 28, 28], INFLATED)).unwrap();
    let (r, peak) = peak_during(|| Idx::read(&p, IMAGES_MAGIC));
    let msg = r.unwrap_err().to_string();
    assert!(
        msg.contains("trailing bytes: dimensions [1, 28, 28] need 784 data bytes"),
        "{msg}"
    );
    assert!(
        peak < 4 << 20,
        "reading a file that declares 784 bytes held {peak} heap bytes at once"
    );

    // more than the 1 GiB limit declared: refused before decompressing
    let p = dir.join("huge.gz");
    std::fs::write(&p, bomb([70_000, 128, 128], INFLATED)).unwrap();
    let (r, peak) = peak_during(|| Idx::read(&p, IMAGES_MAGIC));
    let msg = r.unwrap_err().to_string();
    assert!(msg.contains("more than the limit of"), "{msg}");
    assert!(peak < 4 << 20, "{peak} heap bytes");
    let _ = std::fs::remove_dir_all(&dir);
}
