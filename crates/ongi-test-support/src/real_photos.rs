//! Real photos for the fast-decode tests.
//!
//! `ONGI_REAL_PHOTOS`, else `/usr/share/backgrounds/mate` (Debian's
//! `mate-backgrounds`, real photos of 1280–5640 px, which `.ci/run` installs).

use std::path::{Path, PathBuf};

/// The photo directory; `None` (the caller skips) when it is absent, a panic
/// when it is absent under CI.
pub fn photo_dir() -> Option<PathBuf> {
    let dir = std::env::var_os("ONGI_REAL_PHOTOS").map_or_else(
        || PathBuf::from("/usr/share/backgrounds/mate"),
        PathBuf::from,
    );
    let present = dir.is_dir();
    crate::present_or_skip(
        dir,
        present,
        "real photos",
        "install mate-backgrounds or set ONGI_REAL_PHOTOS",
    )
}

/// Every `.jpg`/`.jpeg` under `dir`, recursively, sorted.
pub fn jpegs(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut dirs = vec![dir.to_path_buf()];
    while let Some(d) = dirs.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else if path
                .extension()
                .is_some_and(|e| e.eq_ignore_ascii_case("jpg") || e.eq_ignore_ascii_case("jpeg"))
            {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}
