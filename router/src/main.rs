//! `ongi`: CLIP photo-album analysis server and command line.

fn main() -> std::process::ExitCode {
    ongi_router::main()
}
