//! `ongi-loadtest`: drives a local (loopback-only) `ongi serve` with virtual
//! users and reports latency, errors, images/s and the server's RSS.

use clap::Parser;

/// Drive a local (loopback-only) server with virtual users; print latency,
/// errors, images/s, RSS.
#[derive(Parser, Debug)]
#[command(name = "ongi-loadtest", version)]
struct Cli {
    #[command(flatten)]
    args: ongi_bench::loadtest::LoadtestArgs,
}

fn main() -> std::process::ExitCode {
    ongi_router::init_tracing();
    ongi_router::exit_code(ongi_bench::loadtest::run(Cli::parse().args))
}
