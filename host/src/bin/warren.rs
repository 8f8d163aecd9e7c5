//! The `warren` binary: parse the command line, set up logging, run the command.

use clap::Parser;

fn main() -> std::process::ExitCode {
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
