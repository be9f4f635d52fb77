//! gradlift's runtime kernels as a C static library (`libgradlift_runtime.a`).
//!
//! An object file written by `gradlift compile --emit obj` imports the kernels it calls
//! (`gl_gemm`, `gl_conv2d`, `gl_softmax`, ...) by name. They are `#[no_mangle] extern "C"`
//! functions of `gradlift::codegen::kernels`; this crate links gradlift into an archive that
//! holds them, so a C program links `step.o libgradlift_runtime.a -lm -lpthread -ldl`.

/// Every kernel an exported object may import, by symbol; referencing the kernel table keeps
/// the whole kernel module in the archive whatever the linker of this crate drops.
pub use gradlift::codegen::kernels::Kernel;

/// The number of runtime kernels (`gradlift_runtime_kernel_count()` from C: a check that the
/// library is the one the header was generated with is the symbol names themselves).
#[no_mangle]
pub extern "C" fn gradlift_runtime_kernel_count() -> usize {
    Kernel::ALL.len()
}
