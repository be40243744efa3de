//! The `changefeed` binary; everything lives in the library (see `changefeed::cli`).

fn main() -> std::process::ExitCode {
    changefeed::cli::main()
}
