//! The `ongi` command line and HTTP server as a library: the binary is one
//! call to [`main`]; tests drive the HTTP app in-process through
//! [`server::app`].

pub mod analyze;
pub mod compute;
pub mod embed;
pub mod hub;
pub mod inputs;
pub mod kafka;
pub mod pipeline;
pub mod progress;
pub mod report;
pub mod server;

use clap::{Parser, Subcommand};

/// Command line of the `ongi` binary.
#[derive(Parser, Debug)]
#[command(
    name = "ongi",
    version,
    about = "CLIP photo-album analysis: embeddings, duplicates, quality, categories, highlights"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Embed images (files or directories) or, with --text, strings; prints JSON lines.
    Embed(embed::EmbedArgs),
    /// Embed a local folder into the store and print the album report as JSON.
    Analyze(analyze::AnalyzeArgs),
    /// Run the HTTP server (the original AI server's contract).
    Serve(server::ServeArgs),
}

/// Runs the command line: parses the arguments, runs the command, and maps
/// its outcome to an exit status (2 for usage, model or store errors).
pub fn main() -> std::process::ExitCode {
    init_tracing();
    let mut cli = Cli::parse();
    if let Err(err) = resolve_model(&mut cli.command) {
        eprintln!("error: {}", describe(&err));
        return std::process::ExitCode::from(2);
    }
    let result = match cli.command {
        Command::Embed(args) => embed::run(args),
        Command::Analyze(args) => analyze::run(args),
        Command::Serve(args) => server::run(args).map(|()| std::process::ExitCode::SUCCESS),
    };
    exit_code(result)
}

/// The exit status of a command's outcome: its own on success, 2 (with the
/// error on stderr) on a usage, model or store error.
pub fn exit_code(result: anyhow::Result<std::process::ExitCode>) -> std::process::ExitCode {
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {}", describe(&err));
            std::process::ExitCode::from(2)
        }
    }
}

/// An error and its causes on one line, each cause once: library errors
/// often show their source in their own message too, which anyhow's `{:#}`
/// would print a second time.
pub fn describe(err: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in err.chain() {
        let part = cause.to_string();
        if !text.contains(&part) {
            if !text.is_empty() {
                text.push_str(": ");
            }
            text.push_str(&part);
        }
    }
    text
}

/// Replaces a command's `--model` hub id by the cached snapshot directory
/// (downloading it first if needed), before anything else starts.
fn resolve_model(command: &mut Command) -> anyhow::Result<()> {
    let model = match command {
        Command::Embed(args) => &mut args.model,
        Command::Analyze(args) => &mut args.pipeline.model,
        Command::Serve(args) => &mut args.pipeline.model,
    };
    *model = hub::resolve(model)?;
    Ok(())
}

/// Logs go to stderr so that stdout stays machine-readable. `RUST_LOG`
/// filters (default `info` for ongi, `warn` otherwise);
/// `ONGI_LOG_FORMAT=json` gives one JSON object per line. Colours only on a
/// terminal, and never with `NO_COLOR` set, so a log file holds no escape codes.
pub fn init_tracing() {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,ongi=info,ongi_core=info"));
    let colour = std::io::stderr().is_terminal()
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(colour)
        .with_writer(std::io::stderr);
    if std::env::var("ONGI_LOG_FORMAT").is_ok_and(|f| f == "json") {
        builder.json().init();
    } else {
        builder.init();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An error that shows its source in its own message, as many do.
    #[derive(Debug)]
    struct Shows {
        source: std::io::Error,
    }

    impl std::fmt::Display for Shows {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "embedded store x.redb: {}", self.source)
        }
    }

    impl std::error::Error for Shows {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.source)
        }
    }

    #[test]
    fn each_cause_is_told_once() {
        let io = || std::io::Error::new(std::io::ErrorKind::IsADirectory, "Is a directory");
        let err = anyhow::Error::new(Shows { source: io() }).context("opening the feature store");
        assert_eq!(
            describe(&err),
            "opening the feature store: embedded store x.redb: Is a directory"
        );
        let err = anyhow::Error::new(io()).context("reading x");
        assert_eq!(describe(&err), "reading x: Is a directory");
    }
}
