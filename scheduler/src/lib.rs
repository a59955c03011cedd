//! Continuous-batching scheduler: see `../shared/DESIGN.md`.
