//! `ongi-bench`: times the image tower per batch size and thread count, or
//! decode + preprocess alone (`--preprocess`).

use clap::Parser;

/// Time the CLIP image tower (or, with --preprocess, decode + preprocess) per
/// batch size and thread count.
#[derive(Parser, Debug)]
#[command(name = "ongi-bench", version)]
struct Cli {
    #[command(flatten)]
    args: ongi_bench::tower::BenchArgs,
}

fn main() -> std::process::ExitCode {
    ongi_router::init_tracing();
    let mut cli = Cli::parse();
    ongi_router::exit_code(
        ongi_router::hub::resolve(&cli.args.model)
            .and_then(|model| {
                cli.args.model = model;
                ongi_bench::tower::run(cli.args)
            })
            .map(|()| std::process::ExitCode::SUCCESS),
    )
}
