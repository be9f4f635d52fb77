//! One persistent pool of worker threads that runs the parts of a compiled step in parallel.
//!
//! [`Pool::run`] calls a job once per participant (`job(0)` on the calling thread, `job(w)`
//! on worker `w`) and returns when every call has returned, so the job may borrow from the
//! caller's stack, as with scoped threads, but no thread is spawned per call: workers wait
//! for the next job by spinning briefly (a training loop calls again within microseconds),
//! then sleep on a condition variable. A call allocates nothing. Jobs that run compiled code
//! set their floating-point mode themselves ([`super::fpenv::FlushDenormals`]): MXCSR is
//! per thread.
//!
//! The pool decides only *who* runs a part, never *what* a part computes: callers split
//! their work into parts fixed independently of the thread count, so results are
//! bit-identical for every number of threads.

use std::collections::HashMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How long an idle worker spins for the next job before it sleeps.
const SPIN: Duration = Duration::from_micros(200);

/// The environment variable that sets the default thread count ([`default_threads`]).
pub const THREADS_ENV: &str = "GRADLIFT_THREADS";

/// A job's address with its lifetime erased; [`Pool::run`] keeps the job alive until every
/// worker is done with it.
#[derive(Clone, Copy)]
struct JobPtr(*const (dyn Fn(usize) + Sync));
// SAFETY: the pointee is `Sync` and outlives every use (see `Pool::run`).
unsafe impl Send for JobPtr {}

struct Shared {
    /// Bumped once per job; workers run a job when they see a new value.
    generation: AtomicU64,
    /// The current job.
    job: Mutex<Option<JobPtr>>,
    /// Workers still running the current job.
    remaining: AtomicUsize,
    /// Whether a worker's part of the current job panicked.
    panicked: AtomicBool,
    /// Workers asleep on `wake` (notified only when non-zero).
    sleepers: AtomicUsize,
    sleep: Mutex<()>,
    wake: Condvar,
    shutdown: AtomicBool,
}

/// A fixed set of worker threads; see the module documentation.
pub struct Pool {
    threads: usize,
    shared: Arc<Shared>,
    /// Serializes jobs of callers on different threads.
    busy: Mutex<()>,
    workers: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("threads", &self.threads)
            .finish()
    }
}

/// The default number of threads: `GRADLIFT_THREADS` if set to a positive number, else
/// every core the process may use.
pub fn default_threads() -> usize {
    std::env::var(THREADS_ENV)
        .ok()
        .and_then(|v| v.trim().parse::<usize>().ok())
        .filter(|&n| n > 0)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

impl Pool {
    /// A pool of `threads` participants: the calling thread and `threads - 1` workers
    /// (`threads` 0 counts as 1; fewer if the system refuses to start a thread).
    pub fn new(threads: usize) -> Pool {
        let threads = threads.max(1);
        let shared = Arc::new(Shared {
            generation: AtomicU64::new(0),
            job: Mutex::new(None),
            remaining: AtomicUsize::new(0),
            panicked: AtomicBool::new(false),
            sleepers: AtomicUsize::new(0),
            sleep: Mutex::new(()),
            wake: Condvar::new(),
            shutdown: AtomicBool::new(false),
        });
        // a worker the system refuses to start leaves a smaller pool, not an error
        let workers: Vec<JoinHandle<()>> = (1..threads)
            .map_while(|w| {
                let s = Arc::clone(&shared);
                std::thread::Builder::new()
                    .name(format!("gradlift-{w}"))
                    .spawn(move || worker(&s, w))
                    .ok()
            })
            .collect();
        Pool {
            threads: 1 + workers.len(),
            shared,
            busy: Mutex::new(()),
            workers,
        }
    }

    /// The process-wide pool of `threads` participants, made on first use and kept.
    pub fn shared(threads: usize) -> Arc<Pool> {
        static POOLS: OnceLock<Mutex<HashMap<usize, Arc<Pool>>>> = OnceLock::new();
        let threads = threads.max(1);
        let pools = POOLS.get_or_init(Default::default);
        let mut pools = pools.lock().unwrap_or_else(|e| e.into_inner());
        Arc::clone(
            pools
                .entry(threads)
                .or_insert_with(|| Arc::new(Pool::new(threads))),
        )
    }

    /// Number of participants (the caller included).
    pub fn threads(&self) -> usize {
        self.threads
    }

    /// Calls `job(w)` for every participant `w` in `0..threads()` (`w = 0` on this thread)
    /// and returns when all are done.
    ///
    /// # Panics
    /// If a call of `job` panicked (jobs are compiled code and kernels, which never panic).
    pub fn run(&self, job: &(dyn Fn(usize) + Sync)) {
        if self.threads == 1 {
            job(0);
            return;
        }
        let _busy = self.busy.lock().unwrap_or_else(|e| e.into_inner());
        let s = &*self.shared;
        // SAFETY (lifetime erasure): every worker finishes with the job before
        // `remaining` reaches 0, and this function does not return before that.
        let ptr = JobPtr(unsafe {
            std::mem::transmute::<*const (dyn Fn(usize) + Sync + '_), *const (dyn Fn(usize) + Sync)>(
                job,
            )
        });
        *s.job.lock().unwrap_or_else(|e| e.into_inner()) = Some(ptr);
        s.remaining.store(self.threads - 1, SeqCst);
        s.generation.fetch_add(1, SeqCst);
        if s.sleepers.load(SeqCst) > 0 {
            let _g = s.sleep.lock().unwrap_or_else(|e| e.into_inner());
            s.wake.notify_all();
        }
        let mine = catch_unwind(AssertUnwindSafe(|| job(0)));
        let mut spins = 0u32;
        while s.remaining.load(SeqCst) != 0 {
            spins = spins.wrapping_add(1);
            if spins.is_multiple_of(1024) {
                std::thread::yield_now();
            } else {
                std::hint::spin_loop();
            }
        }
        *s.job.lock().unwrap_or_else(|e| e.into_inner()) = None;
        if mine.is_err() || s.panicked.swap(false, SeqCst) {
            panic!("a part of a parallel step panicked");
        }
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        let s = &*self.shared;
        s.shutdown.store(true, SeqCst);
        s.generation.fetch_add(1, SeqCst);
        {
            let _g = s.sleep.lock().unwrap_or_else(|e| e.into_inner());
            s.wake.notify_all();
        }
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}

/// A worker's loop: wait for a new generation, run its part, count down.
fn worker(s: &Shared, w: usize) {
    let mut seen = 0u64;
    loop {
        let start = Instant::now();
        let mut spins = 0u32;
        while s.generation.load(SeqCst) == seen {
            std::hint::spin_loop();
            spins = spins.wrapping_add(1);
            if spins.is_multiple_of(256) && start.elapsed() > SPIN {
                let mut g = s.sleep.lock().unwrap_or_else(|e| e.into_inner());
                s.sleepers.fetch_add(1, SeqCst);
                while s.generation.load(SeqCst) == seen {
                    g = s.wake.wait(g).unwrap_or_else(|e| e.into_inner());
                }
                s.sleepers.fetch_sub(1, SeqCst);
                break;
            }
        }
        seen = s.generation.load(SeqCst);
        if s.shutdown.load(SeqCst) {
            return;
        }
        let job = *s.job.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(JobPtr(job)) = job {
            // SAFETY: `Pool::run` keeps the job alive until `remaining` reaches 0.
            let r = catch_unwind(AssertUnwindSafe(|| unsafe { (*job)(w) }));
            if r.is_err() {
                s.panicked.store(true, SeqCst);
            }
        }
        s.remaining.fetch_sub(1, SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_participant_runs_once_per_job() {
        let pool = Pool::new(3);
        for _ in 0..1000 {
            let hits: Vec<AtomicUsize> = (0..3).map(|_| AtomicUsize::new(0)).collect();
            pool.run(&|w| {
                hits[w].fetch_add(1, SeqCst);
            });
            assert!(hits.iter().all(|h| h.load(SeqCst) == 1));
        }
    }

    #[test]
    fn workers_that_fell_asleep_wake_for_the_next_job() {
        let pool = Pool::new(2);
        let n = AtomicUsize::new(0);
        pool.run(&|_| {
            n.fetch_add(1, SeqCst);
        });
        std::thread::sleep(SPIN * 5);
        pool.run(&|_| {
            n.fetch_add(1, SeqCst);
        });
        assert_eq!(n.load(SeqCst), 4);
    }
}
