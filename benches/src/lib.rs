//! Criterion benchmarks of arkline: `cargo bench -p arkline-benches`.
