//! A training step allocates nothing: a counting global allocator sees 0 heap allocations
//! inside a compiled step's call (after one warm-up call), in the inner loop of
//! `gradlift train` (fill the batch, run and check, read the outputs; also with
//! `check_numerics`), per step of the training driver running `gradlift train`'s session, and
//! per step of `Model::fit`.
//! One test in this binary, so no other test allocates while it counts.

use gradlift::data::load_default;
use gradlift::nn::{
    Activation, CompileOptions, Dense, FitOptions, Loss, Metric, Sequential, Targets,
};
use gradlift::optim::Optimizer;
use gradlift::step::{compile_training_step, DataFeed, StepOptions};
use gradlift::text::parse;
use gradlift::train::graph::GraphModel;
use gradlift::train::{Silent, Span};
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};

struct Counting;

static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards to the system allocator; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, SeqCst);
        // SAFETY: the caller's contract is the system allocator's.
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        // SAFETY: as above.
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn alloc_zeroed(&self, l: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, SeqCst);
        // SAFETY: as above.
        unsafe { System.alloc_zeroed(l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, n: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, SeqCst);
        // SAFETY: as above.
        unsafe { System.realloc(p, l, n) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn allocations(f: impl FnOnce()) -> usize {
    let before = ALLOCATIONS.load(SeqCst);
    f();
    ALLOCATIONS.load(SeqCst) - before
}

/// Starts the shared 2-thread pool's worker and waits until it has taken an item, so its
/// start-up allocations (thread name, stack, thread-locals) happen before anything is counted.
fn start_pool() {
    let pool = gradlift::runtime::pool::Pool::shared(2);
    let started = AtomicUsize::new(0);
    pool.run(2, &|_| {
        started.fetch_add(1, SeqCst);
        while started.load(SeqCst) < 2 {
            std::hint::spin_loop();
        }
    });
}

#[test]
fn training_steps_allocate_nothing() {
    start_pool();
    let (train, _) = load_default().unwrap();
    for (file, shards) in [("mlp.ir", 1), ("mlp.ir", 2), ("cnn.ir", 4), ("cnn.ir", 1)] {
        let path = format!("{}/ir/{file}", env!("CARGO_MANIFEST_DIR"));
        let g = parse(&std::fs::read_to_string(&path).unwrap(), &path).unwrap();
        let opts = StepOptions {
            threads: 2,
            shards: Some(shards),
            ..StepOptions::default()
        };
        let (mut step, _) =
            compile_training_step(&g, "loss", &Optimizer::adam(), None, 64, &opts).unwrap();
        let feed = DataFeed {
            x: "x".into(),
            labels: "labels".into(),
        };
        step.input_f32_mut("lr").unwrap()[0] = 0.001;
        let order: Vec<usize> = (0..640).collect();
        feed.step(&mut step, &train, &order[..64]).unwrap();
        let n = allocations(|| step.run_bound());
        assert_eq!(
            n, 0,
            "{file}, {shards} shards: allocations in a compiled step"
        );
        let mut loss = 0.0;
        let n = allocations(|| {
            for (k, idx) in order.chunks_exact(64).enumerate() {
                feed.fill(&mut step, &train, idx).unwrap();
                step.run_checked(k as u64 + 2).unwrap();
                loss += step.output("loss").unwrap().as_f32().unwrap()[0];
            }
        });
        assert_eq!(
            n, 0,
            "{file}, {shards} shards: allocations in the training loop"
        );
        assert!(loss.is_finite());
    }

    // With check_numerics, a step copies the params and state into buffers made on the
    // first call and scans them: nothing is allocated after that call.
    let path = format!("{}/ir/mlp.ir", env!("CARGO_MANIFEST_DIR"));
    let g = parse(&std::fs::read_to_string(&path).unwrap(), &path).unwrap();
    let opts = StepOptions {
        threads: 2,
        check_numerics: true,
        ..StepOptions::default()
    };
    let (mut step, _) =
        compile_training_step(&g, "loss", &Optimizer::adam(), None, 64, &opts).unwrap();
    let feed = DataFeed {
        x: "x".into(),
        labels: "labels".into(),
    };
    step.input_f32_mut("lr").unwrap()[0] = 0.001;
    let order: Vec<usize> = (0..640).collect();
    feed.fill(&mut step, &train, &order[..64]).unwrap();
    step.run_checked(1).unwrap();
    let n = allocations(|| {
        for (k, idx) in order.chunks_exact(64).enumerate() {
            feed.fill(&mut step, &train, idx).unwrap();
            step.run_checked(k as u64 + 2).unwrap();
        }
    });
    assert_eq!(n, 0, "allocations in a checked training loop");

    // The driver running `gradlift train`'s session (fill, run_checked, running means): the
    // same number of allocations (the epoch's shuffled order, the session's input names)
    // for 10 and for 20 steps of an epoch.
    let m = GraphModel::new(g.clone(), path.clone(), &Optimizer::adam()).unwrap();
    let opts = StepOptions {
        threads: 2,
        ..StepOptions::default()
    };
    let (mut exe, _) = m.compile(&Optimizer::adam(), 0.001, &opts).unwrap();
    let data = train.slice(0, 1280);
    let plan = m.plan(&data, 0).unwrap();
    let mut steps = |n: u64| {
        let span = Span {
            epochs: 1,
            max_steps: Some(n),
            ..Span::default()
        };
        let done = gradlift::train::run(&mut m.session(&mut exe, &data), &plan, &span, &mut Silent)
            .unwrap();
        assert_eq!(done.ran, n);
    };
    steps(2); // warm-up
    let short = allocations(|| steps(10));
    let long = allocations(|| steps(20));
    assert_eq!(
        long, short,
        "the driver allocates per step ({short} for 10 steps, {long} for 20)"
    );

    // Model::fit: the same number of allocations for 10 and for 20 steps an epoch.
    let mut model = Sequential::new([784])
        .layer(Dense::new(32).activation(Activation::Relu))
        .layer(Dense::new(10).activation(Activation::Softmax))
        .compile(
            CompileOptions::new(
                Optimizer::adam(),
                Loss::SparseCategoricalCrossentropy { from_logits: false },
                &[Metric::Accuracy],
            )
            .threads(2),
        )
        .unwrap();
    let x = train.slice(0, 1280).images();
    let y = &train.labels[..1280];
    let opts = FitOptions {
        epochs: 1,
        batch_size: 64,
        verbose: false,
        ..FitOptions::default()
    };
    model.fit(&x, Targets::Classes(y), &opts).unwrap(); // compiles
    let short = allocations(|| {
        model
            .fit(&x[..640 * 784], Targets::Classes(&y[..640]), &opts)
            .unwrap();
    });
    let long = allocations(|| {
        model.fit(&x, Targets::Classes(y), &opts).unwrap();
    });
    assert_eq!(
        long, short,
        "Model::fit allocates per step ({short} for 10 steps, {long} for 20)"
    );
}
