//! Seeded mini-batching: deterministic per seed, a permutation of the examples, the last
//! partial batch included, examples copied with their own labels.

use gradlift::data::{load_default, shuffled, Batches, Dataset};

fn counting(n: usize) -> Dataset {
    Dataset {
        pixels: (0..n * 2).map(|k| k as u8).collect(),
        labels: (0..n as i32).collect(),
        n,
        rows: 1,
        cols: 2,
    }
}

#[test]
fn unshuffled_batches_are_in_order_with_a_partial_last_one() {
    let ds = counting(10);
    let b: Vec<_> = ds.batches(4, None).unwrap().collect();
    assert_eq!(b.len(), 3);
    assert_eq!(b.iter().map(|x| x.n).collect::<Vec<_>>(), vec![4, 4, 2]);
    assert_eq!(b[2].labels, vec![8, 9]);
    assert_eq!(
        b[2].images,
        [16.0f32, 17.0, 18.0, 19.0].map(|p| p / 255.0).to_vec()
    );
    assert_eq!(ds.batches(4, None).unwrap().num_batches(), 3);
    assert_eq!(ds.batches(5, None).unwrap().len(), 2);
}

#[test]
fn shuffling_is_deterministic_and_a_permutation() {
    let ds = counting(103);
    let run = |seed| -> Vec<Vec<i32>> {
        Batches::new(&ds, 16, Some(seed))
            .unwrap()
            .map(|b| b.labels)
            .collect()
    };
    let a = run(42);
    assert_eq!(a, run(42), "same seed, same batches");
    assert_ne!(a, run(43), "another seed, another order");
    assert_ne!(
        a.concat(),
        (0..103).collect::<Vec<i32>>(),
        "the order is shuffled"
    );
    let mut all = a.concat();
    assert_eq!(a.last().unwrap().len(), 103 % 16);
    all.sort();
    assert_eq!(all, (0..103).collect::<Vec<i32>>());
    // Each example keeps its own pixels.
    for b in Batches::new(&ds, 16, Some(42)).unwrap() {
        for (j, &i) in b.indices.iter().enumerate() {
            assert_eq!(b.labels[j], i as i32);
            assert_eq!(b.images[2 * j], (2 * i) as u8 as f32 / 255.0);
        }
    }
}

#[test]
fn shuffle_moves_almost_everything() {
    assert_eq!(shuffled(8, 7), shuffled(8, 7));
    let p = shuffled(1000, 1);
    let moved = p.iter().enumerate().filter(|(i, &v)| *i != v).count();
    assert!(
        moved > 900,
        "a fair shuffle moves almost everything, moved {moved}"
    );
}

#[test]
fn zero_batch_size_is_an_error() {
    let ds = counting(3);
    let e = ds.batches(0, Some(1)).unwrap_err();
    assert!(e.to_string().contains("batch size"), "{e}");
}

#[test]
fn mnist_subset_batches_cover_the_data() {
    let (_, test) = load_default().unwrap();
    let batches: Vec<_> = test.batches(64, Some(5)).unwrap().collect();
    assert_eq!(batches.len(), 16);
    assert_eq!(batches[15].n, 1000 - 15 * 64);
    assert_eq!(batches[0].images.len(), 64 * 784);
}
