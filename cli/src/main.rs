//! The `arkline` binary. Everything lives in the `arkline_cli` library so tests
//! and the `ctl` client can share it; this is only the entry point.

/// mimalloc rather than glibc's malloc: a burst of durable executions spends
/// 12–20 % of its samples in malloc and free, and with mimalloc the
/// `executions` bench ran 2–27 % faster in each of two alternated pairs (issue
/// 20's allocator trial; `benches/README.md`). Embedders choose their own.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    arkline_cli::main()
}
