//! Snapshot of the Cranelift IR of a small graph: a broadcasting add and a relu over 2x5
//! elements show the f32x4 loop, its scalar tail and the `bitselect` relu; reviewed by hand.

use gradlift::codegen::{self, CompileOptions};
use gradlift::text;

#[test]
fn clif_of_a_broadcast_add_and_relu() {
    let g = text::parse(
        "graph small {
inputs:
  %x: f32[2,5] = input
  %b: f32[5] = input
body:
  %s: f32[2,5] = add %x, %b
  %y: f32[2,5] = relu %s
outputs:
  y = %y
}",
        "small.ir",
    )
    .unwrap();
    let clif = codegen::clif(&g, &CompileOptions::default()).unwrap();
    insta::assert_snapshot!(clif);
}
