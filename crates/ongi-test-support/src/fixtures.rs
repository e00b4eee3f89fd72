//! The repository's committed fixtures (`tests/fixtures`, made by
//! `scripts/make_fixtures.py`).

use std::path::PathBuf;

/// The repository's root.
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The fixture folder.
pub fn dir() -> PathBuf {
    repo().join("tests/fixtures")
}

/// The committed tiny CLIP checkpoint.
pub fn tiny_model() -> PathBuf {
    dir().join("tiny-clip")
}

/// The fixture photos' folder (the decodable photos and `corrupt.jpg`).
pub fn photos() -> PathBuf {
    dir().join("photos")
}

/// The name of the one fixture photo that does not decode.
pub const CORRUPT_PHOTO: &str = "corrupt.jpg";

/// The decodable fixture photos (file names), sorted.
pub fn photo_names() -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(photos())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n != CORRUPT_PHOTO)
        .collect();
    names.sort();
    names
}

/// Copies every fixture photo (and the corrupt one) into a fresh directory.
pub fn photo_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(photos()).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), dir.path().join(entry.file_name())).unwrap();
    }
    dir
}
