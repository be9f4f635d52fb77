//! The floating-point environment compiled steps run in: flush-to-zero and
//! denormals-are-zero, set on entry and restored on exit, as XLA:CPU does.
//!
//! Denormal (subnormal) floats take a slow microcode path on x86: late in training, tiny
//! gradients and Adam moments made whole epochs 1.3-6x slower than the first. With FTZ
//! (results that would be denormal become zero) and DAZ (denormal operands read as zero)
//! every operation stays on the fast path. [`FlushDenormals`] sets both bits of MXCSR for
//! the lifetime of a guard and puts the caller's value back when dropped, so code around a
//! step (and the reference interpreter, which stays IEEE) never sees the change. Every thread
//! that runs step code takes its own guard (MXCSR is per thread). On targets other than
//! x86-64 the guard does nothing.

/// MXCSR bit 15: flush-to-zero (denormal results become zero).
pub const MXCSR_FTZ: u32 = 1 << 15;
/// MXCSR bit 6: denormals-are-zero (denormal operands read as zero).
pub const MXCSR_DAZ: u32 = 1 << 6;

/// While alive, the current thread computes with flush-to-zero and denormals-are-zero; on
/// drop the thread's previous MXCSR is restored.
#[must_use = "the mode lasts only while the guard is alive"]
pub struct FlushDenormals {
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    saved: u32,
}

impl FlushDenormals {
    /// Sets FTZ and DAZ on the current thread.
    #[inline]
    pub fn enter() -> FlushDenormals {
        let saved = mxcsr();
        set_mxcsr(saved | MXCSR_FTZ | MXCSR_DAZ);
        FlushDenormals { saved }
    }
}

impl Drop for FlushDenormals {
    #[inline]
    fn drop(&mut self) {
        set_mxcsr(self.saved);
    }
}

/// The current thread's MXCSR (0 on targets without one).
#[inline]
pub fn mxcsr() -> u32 {
    #[cfg(target_arch = "x86_64")]
    {
        let mut csr: u32 = 0;
        // SAFETY: `stmxcsr` stores the 4-byte control register into `csr`, a valid local.
        unsafe {
            core::arch::asm!("stmxcsr [{}]", in(reg) &mut csr, options(nostack, preserves_flags));
        }
        csr
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        0
    }
}

/// Sets the current thread's MXCSR (nothing on targets without one).
#[inline]
pub fn set_mxcsr(csr: u32) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: `ldmxcsr` loads the control register from a valid local; the values written
    // here are a previously read MXCSR, possibly with FTZ/DAZ added, which are valid modes
    // (no reserved bit is set).
    unsafe {
        core::arch::asm!("ldmxcsr [{}]", in(reg) &csr, options(nostack, readonly, preserves_flags));
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = csr;
}
