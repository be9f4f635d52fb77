//! Training loop (placeholder while autodiff and the runtime land).
