//! Saving is atomic: a failed save leaves the previous file as it was and no temporary file,
//! and a reader running during saves always sees a whole checkpoint, old or new.

use gradlift::checkpoint::{load, save, CheckpointError, NamedTensor};
use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

fn scratch(test: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("checkpoint_atomic-{test}"));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).expect("create scratch dir");
    dir
}

fn entries(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .expect("read dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

fn weights(v: f32, n: usize) -> Vec<NamedTensor> {
    vec![
        NamedTensor::f32("w", [n], vec![v; n]),
        NamedTensor::i32("step", [], vec![v as i32]),
    ]
}

#[test]
fn a_missing_directory_is_an_io_error_naming_the_path() {
    let dir = scratch("missing_dir");
    let path = dir.join("no/such/dir/c.safetensors");
    let e = save(&path, &weights(1.0, 4), &BTreeMap::new()).expect_err("no directory");
    assert!(matches!(e, CheckpointError::Io { .. }), "{e:?}");
    let msg = e.to_string().replace(dir.to_str().expect("utf-8"), "[DIR]");
    assert!(
        msg.starts_with("[DIR]/no/such/dir/c.safetensors.tmp-"),
        "{msg}"
    );
    assert!(msg.contains("cannot create the temporary file"), "{msg}");
    assert!(entries(&dir).is_empty());
}

#[test]
fn a_failed_rename_keeps_what_was_there_and_removes_the_temporary_file() {
    let dir = scratch("rename");
    // The target is a non-empty directory: writing and syncing succeed, the rename fails.
    let target = dir.join("c.safetensors");
    fs::create_dir(&target).expect("mkdir");
    fs::write(target.join("keep.txt"), "keep").expect("write");
    let e = save(&target, &weights(2.0, 4), &BTreeMap::new()).expect_err("rename over a dir");
    let msg = e.to_string();
    assert!(
        msg.contains("cannot rename the temporary file over the checkpoint"),
        "{msg}"
    );
    assert_eq!(entries(&dir), vec!["c.safetensors".to_string()]);
    assert_eq!(
        fs::read_to_string(target.join("keep.txt")).expect("read"),
        "keep"
    );
}

#[test]
fn an_invalid_save_leaves_the_old_checkpoint_intact() {
    let dir = scratch("invalid");
    let path = dir.join("c.safetensors");
    save(&path, &weights(3.0, 4), &BTreeMap::new()).expect("save");
    let before = fs::read(&path).expect("read");
    let bad = vec![NamedTensor::f32("w", [5], vec![1.0; 4])];
    save(&path, &bad, &BTreeMap::new()).expect_err("length mismatch");
    assert_eq!(fs::read(&path).expect("read"), before);
    assert_eq!(entries(&dir), vec!["c.safetensors".to_string()]);
    assert_eq!(load(&path).expect("load").tensors, {
        let mut w = weights(3.0, 4);
        w.sort_by(|a, b| a.name.cmp(&b.name));
        w
    });
}

#[cfg(unix)]
#[test]
fn a_read_only_directory_keeps_the_old_checkpoint() {
    use std::os::unix::fs::PermissionsExt;
    let dir = scratch("read_only");
    let path = dir.join("c.safetensors");
    save(&path, &weights(4.0, 4), &BTreeMap::new()).expect("save");
    let before = fs::read(&path).expect("read");
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o555)).expect("chmod");
    // Root ignores permission bits: only check the failure where it can happen.
    let probe = dir.join("probe");
    let enforced = fs::write(&probe, b"").is_err();
    let _ = fs::remove_file(&probe);
    let result = save(&path, &weights(5.0, 4), &BTreeMap::new());
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).expect("chmod back");
    if enforced {
        let e = result.expect_err("read-only directory");
        assert!(
            e.to_string().contains("cannot create the temporary file"),
            "{e}"
        );
        assert_eq!(fs::read(&path).expect("read"), before);
    } else {
        eprintln!("permissions are not enforced for this user; only the cleanup is checked");
        result.expect("save succeeds when permissions are not enforced");
    }
    assert_eq!(entries(&dir), vec!["c.safetensors".to_string()]);
}

#[test]
fn readers_never_see_a_partial_checkpoint() {
    let dir = scratch("concurrent");
    let path = dir.join("c.safetensors");
    let n = 20_000;
    save(&path, &weights(0.0, n), &BTreeMap::new()).expect("save");
    let done = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..2)
        .map(|t| {
            let path = path.clone();
            std::thread::spawn(move || {
                for i in 1..=15 {
                    let v = (t * 100 + i) as f32;
                    let mut m = BTreeMap::new();
                    m.insert("step".to_string(), format!("{v}"));
                    save(&path, &weights(v, n), &m).expect("save");
                }
            })
        })
        .collect();
    let reader = {
        let (path, done) = (path.clone(), done.clone());
        std::thread::spawn(move || {
            let mut loads = 0;
            while !done.load(Ordering::SeqCst) || loads == 0 {
                let c = load(&path).expect("every load sees a whole checkpoint");
                let w = c.get("w").expect("w");
                let step = c.get("step").expect("step");
                let gradlift::checkpoint::TensorData::F32(v) = &w.data else {
                    panic!("w is f32");
                };
                let gradlift::checkpoint::TensorData::I32(s) = &step.data else {
                    panic!("step is i32");
                };
                assert!(v.iter().all(|&x| x == v[0]), "one save's values only");
                assert_eq!(s[0], v[0] as i32, "tensors from the same save");
                loads += 1;
            }
            loads
        })
    };
    for w in writers {
        w.join().expect("writer");
    }
    done.store(true, Ordering::SeqCst);
    let loads = reader.join().expect("reader");
    assert!(loads > 0);
    assert_eq!(entries(&dir), vec!["c.safetensors".to_string()]);
}

/// A save removes the temporary files that saves killed before their rename left behind
/// (processes that no longer run), and keeps those of a live process and unrelated files.
#[test]
fn stale_temporary_files_are_removed_on_the_next_save() {
    let dir = scratch("stale_temps");
    let path = dir.join("w.safetensors");
    // pid 4000000000 exceeds any pid Linux gives (at most 2^22): a dead writer; ours is alive
    let dead = dir.join("w.safetensors.tmp-4000000000-7");
    let live = dir.join(format!("w.safetensors.tmp-{}-9", std::process::id()));
    let other = dir.join("w.safetensors.tmp-notes");
    for f in [&dead, &live, &other] {
        fs::write(f, b"partial").unwrap();
    }
    save(&path, &weights(1.0, 4), &BTreeMap::new()).unwrap();
    let left = entries(&dir);
    assert!(
        !left.contains(&"w.safetensors.tmp-4000000000-7".to_string()),
        "{left:?}"
    );
    assert!(
        left.contains(&format!("w.safetensors.tmp-{}-9", std::process::id())),
        "{left:?}"
    );
    assert!(
        left.contains(&"w.safetensors.tmp-notes".to_string()),
        "{left:?}"
    );
    assert!(left.contains(&"w.safetensors".to_string()), "{left:?}");
}

/// A temporary file named for a running process that started after the file was last
/// written is stale too (the pid was given to another process): it is removed, while a
/// running process's recent file is kept.
#[test]
fn temporary_files_older_than_their_pids_process_are_removed() {
    let dir = scratch("reused_pid");
    let path = dir.join("w.safetensors");
    let pid = std::process::id();
    let old = dir.join(format!("w.safetensors.tmp-{pid}-1000001"));
    let recent = dir.join(format!("w.safetensors.tmp-{pid}-1000002"));
    for f in [&old, &recent] {
        fs::write(f, b"partial").unwrap();
    }
    // last written in 2001, long before this process started
    let then = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_000_000_000);
    fs::File::options()
        .write(true)
        .open(&old)
        .unwrap()
        .set_modified(then)
        .unwrap();
    save(&path, &weights(1.0, 4), &BTreeMap::new()).unwrap();
    let left = entries(&dir);
    assert_eq!(
        left,
        vec![
            "w.safetensors".to_string(),
            format!("w.safetensors.tmp-{pid}-1000002")
        ]
    );
}
