//! KV layout contract and kernels: see `../shared/DESIGN.md`.
