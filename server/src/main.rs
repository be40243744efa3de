//! The `changefeed` binary; everything lives in the library (see `changefeed::cli`).

/// mimalloc rather than the system allocator: most connections are idle event streams whose
/// hyper buffers are mostly never written, and mimalloc keeps no header next to a block, so
/// those pages stay out of RSS; and it returns freed pages to the OS, so RSS falls back once
/// clients leave (the bench's idle-memory rows measure both).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    changefeed::cli::main()
}
