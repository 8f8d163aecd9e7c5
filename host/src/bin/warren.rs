//! The `warren` binary: parse the command line, set up logging, run the command.

use clap::Parser;

fn main() -> std::process::ExitCode {
    if std::env::var_os("RUST_MIN_STACK").is_none() {
        // SAFETY: the first statement of main: no other thread exists to read the
        // environment at the same time. See `IO_THREAD_STACK` for why.
        unsafe { std::env::set_var("RUST_MIN_STACK", warren::amqp::broker::IO_THREAD_STACK.to_string()) };
    }
    let cli = warren::cli::Cli::parse();
    cli.init_logging();
    match warren::cli::run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error}");
            std::process::ExitCode::FAILURE
        }
    }
}
