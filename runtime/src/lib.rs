//! The pagedrt runtime.
