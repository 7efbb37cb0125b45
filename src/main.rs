//! The `quicbus` command: parses arguments, sets up logging, runs a command.
//! Exit status: 0 success, 1 runtime failure (one line on stderr), 2 usage error.

mod bench;
mod cli;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    // `serve --config FILE`: the file's flags join the command line before
    // clap sees it; anything wrong in the file is a usage error.
    let raw = match cli::config::expand(std::env::args_os().collect()) {
        Ok(raw) => raw,
        Err(err) => {
            let line = err.to_string().replace('\n', " ");
            eprintln!("quicbus: error: {line}");
            return ExitCode::from(2);
        }
    };
    let args = cli::Args::parse_from(raw);
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    match cli::run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            let line = err.to_string().replace('\n', " ");
            eprintln!("quicbus: error: {line}");
            ExitCode::from(1)
        }
    }
}
