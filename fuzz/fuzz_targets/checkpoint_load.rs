//! The checkpoint loader: `checkpoint::load` on a file holding the input bytes, then the
//! step count of its metadata (`Checkpoint::step`); and `checkpoint::load_tensors`, the
//! reader of any safetensors file (`gradlift run --inputs`), on the same file. Any file gives a checkpoint or an error
//! naming what is wrong, never a panic. The target only calls the public entry points, so it
//! does not depend on how the module is organized inside.
#![no_main]

use gradlift::checkpoint;
use libfuzzer_sys::fuzz_target;
use std::path::PathBuf;
use std::sync::OnceLock;

/// A file of this process in the temporary directory (the loader reads files).
fn scratch() -> &'static PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        std::env::temp_dir().join(format!("gradlift-fuzz-{}.safetensors", std::process::id()))
    })
}

fuzz_target!(|data: &[u8]| {
    let path = scratch();
    std::fs::write(path, data).expect("write the scratch file");
    match checkpoint::load(path) {
        Ok(ck) => {
            let _ = ck.step().map_err(|e| e.to_string());
        }
        Err(e) => {
            let _ = e.to_string();
        }
    }
    if let Err(e) = checkpoint::load_tensors(path) {
        let _ = e.to_string();
    }
});
