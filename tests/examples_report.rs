//! The report the MNIST examples share (`examples/common`): an epoch shorter than a second
//! prints in milliseconds (on the shipped subset every epoch used to print `0.0 s`).

#[allow(dead_code)]
#[path = "../examples/common/mod.rs"]
mod common;

use std::time::Duration;

#[test]
fn times_under_a_second_print_in_milliseconds() {
    let ms = |n: u64| common::duration(Duration::from_micros(n));
    assert_eq!(ms(340_000), "340 ms");
    assert_eq!(ms(12_400), "12 ms");
    assert_eq!(ms(4_230), "4.2 ms");
    assert_eq!(ms(40), "0.0 ms");
    assert_eq!(ms(999_700), "1.0 s");
    assert_eq!(ms(1_000_000), "1.0 s");
    assert_eq!(ms(12_345_000), "12.3 s");
}
