//! One persistent pool of worker threads that runs the parts of a compiled step in parallel.
//!
//! [`Pool::run`] runs `items` independent work items, `job(0)` .. `job(items - 1)`, on the
//! calling thread and the pool's workers, and returns when every item is done, so the job
//! may borrow from the caller's stack, as with scoped threads, but no thread is spawned per
//! call. Participants claim items one at a time from a shared counter, so a worker that the
//! system has not scheduled (another process on its core) delays nothing: the caller takes
//! its items. Idle workers wait for the next job by spinning briefly (`SPIN`), then sleep
//! on a condition variable. A call allocates nothing.
//! Jobs that run compiled code set their floating-point mode themselves
//! ([`super::fpenv::FlushDenormals`]): MXCSR is per thread.
//!
//! The pool decides only *who* runs an item, never *what* an item computes: callers split
//! their work into items fixed independently of the thread count, so results are
//! bit-identical for every number of threads.

use std::collections::HashMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How long an idle worker spins for the next job before it sleeps. Short, because when the
/// machine puts both our threads on one physical core (SMT siblings, seen on this shared VM)
/// a spinning worker takes the caller's issue slots: the MLP epoch at batch 64 took 0.79 s
/// with 200 us of spinning against 0.27-0.28 s with 20 us (0.36 s on one thread); when the
/// cores are separate, 200 us gained 7% (0.257 against 0.276 s).
const SPIN: Duration = Duration::from_micros(20);

/// The environment variable that sets the default thread count ([`default_threads`]).
pub const THREADS_ENV: &str = "GRADLIFT_THREADS";

/// A job's address with its lifetime erased; [`Pool::run`] returns only after every item
/// claimed from it is done, and an item can only be claimed under the job's id.
#[derive(Clone, Copy)]
struct JobPtr(*const (dyn Fn(usize) + Sync));
// SAFETY: the pointee is `Sync` and outlives every call made through it (see `Pool::run`).
unsafe impl Send for JobPtr {}

/// The current job: its address, its id and its number of items.
#[derive(Clone, Copy)]
struct Job {
    ptr: JobPtr,
    id: u32,
    items: usize,
}

struct Shared {
    /// Bumped once per job; idle workers wake when it changes.
    generation: AtomicU64,
    /// `(job id << 32) | next unclaimed item`: claiming is a compare-and-swap that fails
    /// once the job is over or replaced, so a late worker never calls an old job.
    claim: AtomicU64,
    /// Items of the current job finished.
    done: AtomicUsize,
    /// Whether an item of the current job panicked.
    panicked: AtomicBool,
    job: Mutex<Option<Job>>,
    /// Workers asleep on `wake` (notified only when non-zero).
    sleepers: AtomicUsize,
    sleep: Mutex<()>,
    wake: Condvar,
    shutdown: AtomicBool,
}

impl Shared {
    /// Claims and runs items of job `j` until none is left.
    fn work(&self, j: Job) {
        loop {
            let c = self.claim.load(SeqCst);
            let (id, next) = ((c >> 32) as u32, (c & 0xffff_ffff) as usize);
            if id != j.id || next >= j.items {
                return;
            }
            if self
                .claim
                .compare_exchange(c, c + 1, SeqCst, SeqCst)
                .is_err()
            {
                continue;
            }
            // SAFETY: item `next` of job `j.id` was claimed, so `Pool::run` is still
            // waiting for it and the job is alive.
            let r = catch_unwind(AssertUnwindSafe(|| unsafe { (*j.ptr.0)(next) }));
            if r.is_err() {
                self.panicked.store(true, SeqCst);
            }
            self.done.fetch_add(1, SeqCst);
        }
    }
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
            claim: AtomicU64::new(0),
            done: AtomicUsize::new(0),
            panicked: AtomicBool::new(false),
            job: Mutex::new(None),
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
                    .spawn(move || worker(&s))
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

    /// Runs the items of `phases` in order, phase by phase, as one job: `job(p, i)` for every
    /// item `i` in `0..phases[p]`, an item of phase `p` starting only once every item of the
    /// phases before it is done; returns when all are done. A participant that runs out of
    /// items of one phase claims the next phase's and waits for the phase before it there,
    /// spinning, so no participant sleeps between phases (a sleeping worker took tens of
    /// microseconds to wake on this shared VM, longer than a step's update).
    ///
    /// # Panics
    /// If an item panicked (jobs are compiled code and kernels, which never panic).
    pub fn run_phases(&self, phases: &[usize], job: &(dyn Fn(usize, usize) + Sync)) {
        let items: usize = phases.iter().sum();
        if self.threads == 1 || items < 2 {
            for (p, &n) in phases.iter().enumerate() {
                (0..n).for_each(|k| job(p, k));
            }
            return;
        }
        // the phase of flat item `i` and its index in it, and the items before that phase
        let locate = |i: usize| {
            let mut start = 0;
            for (p, &n) in phases.iter().enumerate() {
                if i < start + n {
                    return (p, i - start, start);
                }
                start += n;
            }
            (phases.len(), 0, start)
        };
        let done = &self.shared.done;
        self.run(items, &|i| {
            let (p, k, before) = locate(i);
            // items are claimed in order, so every item before this phase has been claimed by
            // a running participant: waiting for them cannot deadlock
            spin_until(|| done.load(SeqCst) >= before);
            job(p, k);
        });
    }

    /// Runs `job(i)` for every item `i` in `0..items`, on this thread and the workers, and
    /// returns when all are done.
    ///
    /// # Panics
    /// If an item panicked (jobs are compiled code and kernels, which never panic).
    pub fn run(&self, items: usize, job: &(dyn Fn(usize) + Sync)) {
        if self.threads == 1 || items < 2 {
            (0..items).for_each(job);
            return;
        }
        let _busy = self.busy.lock().unwrap_or_else(|e| e.into_inner());
        let s = &*self.shared;
        // SAFETY: (lifetime erasure) an item runs only after it was claimed under this job's
        // id, and this function returns only after every claimed item is done; once it
        // returns, the claim counter belongs to the next job and every claim of this one fails.
        let ptr = JobPtr(unsafe {
            std::mem::transmute::<*const (dyn Fn(usize) + Sync + '_), *const (dyn Fn(usize) + Sync)>(
                job,
            )
        });
        let id = (s.generation.load(SeqCst) as u32).wrapping_add(1);
        let j = Job { ptr, id, items };
        s.done.store(0, SeqCst);
        s.claim.store(u64::from(id) << 32, SeqCst);
        *s.job.lock().unwrap_or_else(|e| e.into_inner()) = Some(j);
        s.generation.fetch_add(1, SeqCst);
        if s.sleepers.load(SeqCst) > 0 {
            let _g = s.sleep.lock().unwrap_or_else(|e| e.into_inner());
            s.wake.notify_all();
        }
        s.work(j);
        spin_until(|| s.done.load(SeqCst) == items);
        *s.job.lock().unwrap_or_else(|e| e.into_inner()) = None;
        if s.panicked.swap(false, SeqCst) {
            panic!("an item of a parallel step panicked");
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

/// Spins until `ready()`, yielding the core now and then (another thread may need it to
/// finish what is awaited).
fn spin_until(ready: impl Fn() -> bool) {
    let mut spins = 0u32;
    while !ready() {
        spins = spins.wrapping_add(1);
        if spins.is_multiple_of(1024) {
            std::thread::yield_now();
        } else {
            std::hint::spin_loop();
        }
    }
}

/// A worker's loop: wait for a new generation, take items of the current job.
fn worker(s: &Shared) {
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
        if let Some(j) = job {
            s.work(j);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_item_runs_once_per_job() {
        let pool = Pool::new(3);
        for items in [0, 1, 2, 3, 7, 64] {
            for _ in 0..200 {
                let hits: Vec<AtomicUsize> = (0..items).map(|_| AtomicUsize::new(0)).collect();
                pool.run(items, &|i| {
                    hits[i].fetch_add(1, SeqCst);
                });
                assert!(hits.iter().all(|h| h.load(SeqCst) == 1), "{items} items");
            }
        }
    }

    #[test]
    fn phases_run_in_order_and_every_item_once() {
        for threads in [1, 2, 3] {
            let pool = Pool::new(threads);
            for phases in [vec![2, 2, 1], vec![3, 0, 4], vec![1], vec![5, 7]] {
                for _ in 0..100 {
                    let total: usize = phases.iter().sum();
                    let finished = AtomicUsize::new(0);
                    let hits: Vec<AtomicUsize> = (0..total).map(|_| AtomicUsize::new(0)).collect();
                    let starts: Vec<usize> = (0..phases.len())
                        .map(|p| phases[..p].iter().sum())
                        .collect();
                    pool.run_phases(&phases, &|p, k| {
                        // every item of the phases before has finished
                        assert!(finished.load(SeqCst) >= starts[p], "{phases:?} phase {p}");
                        hits[starts[p] + k].fetch_add(1, SeqCst);
                        finished.fetch_add(1, SeqCst);
                    });
                    assert!(hits.iter().all(|h| h.load(SeqCst) == 1), "{phases:?}");
                }
            }
        }
    }

    #[test]
    fn workers_that_fell_asleep_wake_for_the_next_job() {
        let pool = Pool::new(2);
        let n = AtomicUsize::new(0);
        pool.run(2, &|_| {
            n.fetch_add(1, SeqCst);
        });
        std::thread::sleep(SPIN * 5);
        pool.run(2, &|_| {
            n.fetch_add(1, SeqCst);
        });
        assert_eq!(n.load(SeqCst), 4);
    }

    #[test]
    fn a_busy_worker_does_not_hold_up_the_caller() {
        // one item blocks until the caller has done every other item itself
        let pool = Pool::new(2);
        let others = AtomicUsize::new(0);
        pool.run(6, &|i| {
            if i == 0 {
                while others.load(SeqCst) < 5 {
                    std::hint::spin_loop();
                }
            } else {
                others.fetch_add(1, SeqCst);
            }
        });
        assert_eq!(others.load(SeqCst), 5);
    }
}
