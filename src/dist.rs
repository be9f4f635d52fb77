//! Data-parallel training over processes: the world of ranks, and the collectives the
//! compiled step calls.
//!
//! Built with the `mpi` cargo feature and started under `mpirun -n N`, a process is one of
//! `N` ranks of MPI's world communicator; [`init`] joins it. Without the feature, or
//! before [`init`], or when started without `mpirun`, the world is one rank, where every
//! collective is the identity: [`crate::op::Op::AllReduce`] copies its operand, exactly as
//! the interpreter computes it.
//!
//! **The reduction order is fixed.** MPI does not promise an order for `MPI_Allreduce`'s
//! sum, so [`all_reduce`] gathers every rank's buffer (`MPI_Allgather`) and adds them in
//! rank order, `((x_0 + x_1) + x_2) + ...`, then multiplies by `1/N` (as an f32) for a mean:
//! every rank computes the same bits, and they are the bits a single process computes when it
//! averages the same per-rank values in the same order (the sharded step's update averages
//! its shards' gradients as `(g_0 + g_1 + ...) * (1/S)`, see
//! [`crate::optim::sharded_training_step`]).
//!
//! **Failures end every rank.** A panic on any rank calls `MPI_Abort` (a hook installed by
//! [`init`]), and [`abort`] is what a command calls after printing an error, so a rank that
//! fails never leaves the others waiting in a collective; [`check_same`] compares a
//! fingerprint across the ranks (the training step's graphs, at start-up) and names the ranks
//! that differ.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

/// This process's place among the ranks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct World {
    /// This process's rank, `0..size`.
    pub rank: usize,
    /// Number of ranks (1: a single process).
    pub size: usize,
}

impl World {
    /// A world of one rank.
    pub const SINGLE: World = World { rank: 0, size: 1 };

    /// Whether this process is rank 0, the one that prints progress and writes files.
    pub fn is_root(&self) -> bool {
        self.rank == 0
    }

    /// Whether there is more than one rank.
    pub fn is_distributed(&self) -> bool {
        self.size > 1
    }
}

/// Why the ranks cannot train together.
#[derive(Debug, thiserror::Error)]
pub enum DistError {
    /// MPI could not be initialized.
    #[error("MPI initialization failed: {0}")]
    Init(String),
    /// A value every rank must agree on differs.
    #[error("the ranks disagree on {what}: rank {rank} has fingerprint {theirs:016x}, rank 0 has {ours:016x} (every rank must run the same model, data and options)")]
    Mismatch {
        /// What was compared.
        what: String,
        /// The first rank whose value differs from rank 0's.
        rank: usize,
        /// Its fingerprint.
        theirs: u64,
        /// Rank 0's fingerprint.
        ours: u64,
    },
    /// The batch cannot be shared by the ranks.
    #[error("a batch of {batch} examples does not split into {ranks} equal parts, one per rank")]
    Batch {
        /// The global batch.
        batch: usize,
        /// The ranks.
        ranks: usize,
    },
}

static WORLD: OnceLock<World> = OnceLock::new();

/// Calls, bytes and nanoseconds of this process's all-reduces over more than one rank.
static STATS: [AtomicU64; 3] = [AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0)];

/// What this process's all-reduces over several ranks cost so far: calls, bytes contributed
/// and seconds spent in them (waiting for the other ranks included).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Stats {
    /// All-reduce calls.
    pub calls: u64,
    /// Bytes this rank contributed (4 per f32 element).
    pub bytes: u64,
    /// Seconds spent in them.
    pub seconds: f64,
}

/// The all-reduce counters of this process (zero in a world of one rank).
pub fn stats() -> Stats {
    Stats {
        calls: STATS[0].load(Ordering::Relaxed),
        bytes: STATS[1].load(Ordering::Relaxed),
        seconds: STATS[2].load(Ordering::Relaxed) as f64 * 1e-9,
    }
}

/// The world this process belongs to: the one [`init`] joined, else a single rank.
pub fn world() -> World {
    WORLD.get().copied().unwrap_or(World::SINGLE)
}

/// Joins the world: with the `mpi` feature, initializes MPI (serialized threading: the
/// step's collectives run on one thread at a time, not always the main one) and installs a
/// panic hook that aborts every rank; without it, a world of one rank. Calling it again
/// returns the same world.
pub fn init() -> Result<World, DistError> {
    if let Some(w) = WORLD.get() {
        return Ok(*w);
    }
    let w = imp::init()?;
    Ok(*WORLD.get_or_init(|| w))
}

/// Ends this process with `code`: under MPI with more than one rank, `MPI_Abort` on the
/// world, which ends every rank (a rank that stops on an error must not leave the others
/// waiting in a collective); otherwise a plain exit.
pub fn abort(code: i32) -> ! {
    if world().is_distributed() {
        imp::abort(code)
    }
    std::process::exit(code)
}

/// Leaves the world at the end of a successful run (`MPI_Finalize`); nothing without MPI.
pub fn finalize() {
    imp::finalize()
}

/// A 64-bit FNV-1a fingerprint of `bytes` (the same on every machine and build).
pub fn fingerprint(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// Checks that every rank passes the same `value` (a [`fingerprint`]); a collective, so
/// every rank must call it. The error names `what` and the first rank that differs from
/// rank 0.
pub fn check_same(what: &str, value: u64) -> Result<(), DistError> {
    let w = world();
    if !w.is_distributed() {
        return Ok(());
    }
    let all = imp::all_gather_u64(value, w.size);
    match all.iter().position(|&v| v != all[0]) {
        None => Ok(()),
        Some(rank) => Err(DistError::Mismatch {
            what: what.to_string(),
            rank,
            theirs: all[rank],
            ours: all[0],
        }),
    }
}

/// The sum over the ranks of `x`, element by element, added in rank order, into `out`
/// (times `1/N` with `mean`); every rank gets the same bits. A copy in a world of one
/// rank. `out` may be `x` itself only through [`all_reduce_in_place`].
pub fn all_reduce(x: &[f32], out: &mut [f32], mean: bool) {
    let w = world();
    if !w.is_distributed() {
        out.copy_from_slice(x);
        return;
    }
    let t = std::time::Instant::now();
    imp::all_reduce(x, out, mean, w.size);
    STATS[0].fetch_add(1, Ordering::Relaxed);
    STATS[1].fetch_add(4 * x.len() as u64, Ordering::Relaxed);
    STATS[2].fetch_add(t.elapsed().as_nanos() as u64, Ordering::Relaxed);
}

/// [`all_reduce`] of `v` into itself.
pub fn all_reduce_in_place(v: &mut [f32], mean: bool) {
    let w = world();
    if !w.is_distributed() {
        return;
    }
    let x = v.to_vec();
    imp::all_reduce(&x, v, mean, w.size)
}

/// Adds `parts`, one per rank, element by element in rank order into `out`, then scales by
/// `1/parts.len()` (an f32) for a mean: the one reduction [`all_reduce`] performs.
fn ordered_sum<'a>(parts: impl Iterator<Item = &'a [f32]>, out: &mut [f32], mean: bool) {
    let mut n = 0usize;
    for (r, p) in parts.enumerate() {
        if r == 0 {
            out.copy_from_slice(p);
        } else {
            out.iter_mut().zip(p).for_each(|(a, b)| *a += b);
        }
        n += 1;
    }
    if mean && n > 1 {
        let scale = (1.0 / n as f64) as f32;
        out.iter_mut().for_each(|a| *a *= scale);
    }
}

#[cfg(feature = "mpi")]
mod imp {
    use super::{ordered_sum, DistError, World};
    use mpi::collective::CommunicatorCollectives;
    use mpi::environment::{Threading, Universe};
    use mpi::topology::{Communicator, SimpleCommunicator};
    use std::cell::RefCell;
    use std::sync::Mutex;

    static UNIVERSE: Mutex<Option<Universe>> = Mutex::new(None);

    /// Elements per `MPI_Allgather` call (counts are C ints).
    const CHUNK: usize = 1 << 24;

    thread_local! {
        /// The gathered buffers of one chunk, reused by every call on this thread.
        static GATHERED: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
    }

    pub(super) fn init() -> Result<World, DistError> {
        // MPI initialized by the program itself: join its world, leave finalizing to it
        let universe = if mpi::environment::is_initialized() {
            None
        } else {
            let (universe, level) = mpi::initialize_with_threading(Threading::Serialized)
                .ok_or_else(|| DistError::Init("MPI could not be initialized".into()))?;
            if matches!(level, Threading::Single | Threading::Funneled) {
                return Err(DistError::Init(format!(
                    "the MPI library offers the threading level {level:?}; the training step needs MPI_THREAD_SERIALIZED (its collectives may run on a worker thread)"
                )));
            }
            Some(universe)
        };
        let world = SimpleCommunicator::world();
        let w = World {
            rank: world.rank().max(0) as usize,
            size: world.size().max(1) as usize,
        };
        if let (Some(universe), Ok(mut u)) = (universe, UNIVERSE.lock()) {
            *u = Some(universe);
        }
        if w.size > 1 {
            let default = std::panic::take_hook();
            std::panic::set_hook(Box::new(move |info| {
                default(info);
                eprintln!("error: rank {} panicked; aborting every rank", w.rank);
                SimpleCommunicator::world().abort(101);
            }));
        }
        Ok(w)
    }

    pub(super) fn abort(code: i32) -> ! {
        SimpleCommunicator::world().abort(code)
    }

    pub(super) fn finalize() {
        if let Ok(mut u) = UNIVERSE.lock() {
            // dropping the universe calls MPI_Finalize
            u.take();
        }
    }

    /// `MPI_Iallgather` of `x` into `all`, then a wait that spins for [`SPIN`] and then
    /// sleeps between tests: a rank that waits for a slower one gives up its core (a
    /// blocking `MPI_Allgather` polls at full speed, which on a machine with fewer free
    /// cores than ranks takes the time of the rank it waits for).
    fn gather(world: &SimpleCommunicator, x: &[f32], all: &mut [f32]) {
        mpi::request::scope(|scope| {
            let mut req = world.immediate_all_gather_into(scope, x, all);
            let start = std::time::Instant::now();
            loop {
                match req.test() {
                    Ok(_) => break,
                    Err(r) => req = r,
                }
                if start.elapsed() < SPIN {
                    std::hint::spin_loop();
                } else {
                    std::thread::sleep(std::time::Duration::from_micros(20));
                }
            }
        });
    }

    /// How long a wait polls before it sleeps between tests.
    const SPIN: std::time::Duration = std::time::Duration::from_micros(50);

    pub(super) fn all_gather_u64(value: u64, size: usize) -> Vec<u64> {
        let mut all = vec![0u64; size];
        SimpleCommunicator::world().all_gather_into(&value, &mut all[..]);
        all
    }

    pub(super) fn all_reduce(x: &[f32], out: &mut [f32], mean: bool, size: usize) {
        let world = SimpleCommunicator::world();
        GATHERED.with(|buf| {
            let mut buf = buf.borrow_mut();
            for (xc, oc) in x.chunks(CHUNK).zip(out.chunks_mut(CHUNK)) {
                let n = xc.len();
                if buf.len() < n * size {
                    buf.resize(n * size, 0.0);
                }
                let all = &mut buf[..n * size];
                gather(&world, xc, all);
                ordered_sum(all.chunks(n), oc, mean);
            }
        })
    }
}

#[cfg(not(feature = "mpi"))]
mod imp {
    use super::{ordered_sum, DistError, World};

    pub(super) fn init() -> Result<World, DistError> {
        // started by mpirun with several ranks: training alone on each would be N copies
        let launched = ["OMPI_COMM_WORLD_SIZE", "PMI_SIZE"]
            .iter()
            .filter_map(|v| std::env::var(v).ok()?.parse::<usize>().ok())
            .max()
            .unwrap_or(1);
        if launched > 1 {
            return Err(DistError::Init(format!(
                "started as one of {launched} ranks, but gradlift was built without the `mpi` feature (build with `--features mpi`)"
            )));
        }
        Ok(World::SINGLE)
    }

    pub(super) fn abort(code: i32) -> ! {
        std::process::exit(code)
    }

    pub(super) fn finalize() {}

    pub(super) fn all_gather_u64(value: u64, _size: usize) -> Vec<u64> {
        vec![value]
    }

    pub(super) fn all_reduce(x: &[f32], out: &mut [f32], mean: bool, _size: usize) {
        ordered_sum(std::iter::once(x), out, mean)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_world_of_one_rank_copies() {
        let x = [1.0, -2.5, 3.0];
        let mut out = [0.0; 3];
        all_reduce(&x, &mut out, true);
        assert_eq!(out, x);
        assert_eq!(world(), World::SINGLE);
        assert!(check_same("anything", 7).is_ok());
    }

    #[test]
    fn the_ordered_sum_adds_in_rank_order_then_scales() {
        let parts: [&[f32]; 3] = [&[1e8, 1.0], &[1.0, 2.0], &[-1e8, 3.0]];
        let mut out = [0.0; 2];
        ordered_sum(parts.iter().copied(), &mut out, false);
        // (1e8 + 1) + -1e8 in f32 is 0: the order is rank order, not a better one
        assert_eq!(out, [0.0, 6.0]);
        ordered_sum(parts.iter().copied(), &mut out, true);
        assert_eq!(out[1], 6.0 * (1.0f64 / 3.0) as f32);
    }

    #[test]
    fn fingerprints_are_fnv1a() {
        assert_eq!(fingerprint(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fingerprint(b"a"), 0xaf63_dc4c_8601_ec8c);
    }
}
