//! Expands command-line paths into the list of image files to embed.

use std::path::{Path, PathBuf};

/// File extensions picked up when walking a directory (explicit files are always tried).
const IMAGE_EXTENSIONS: &[&str] = &["jpg", "jpeg", "png", "webp"];

/// One input: a file to embed, or a path that could not even be listed.
pub enum Input {
    /// A file to read and embed.
    File(PathBuf),
    /// A path that failed before reading (e.g. a directory that cannot be walked).
    Error(PathBuf, String),
}

/// Expands `paths`: files are kept as given, directories are walked recursively
/// (sorted, so output order is stable) for files with an image extension.
pub fn expand(paths: &[PathBuf]) -> Vec<Input> {
    let mut out = Vec::new();
    for path in paths {
        if path.is_dir() {
            for entry in walkdir::WalkDir::new(path)
                .follow_links(true)
                .sort_by_file_name()
            {
                match entry {
                    Ok(e) if e.file_type().is_file() && has_image_extension(e.path()) => {
                        out.push(Input::File(e.into_path()))
                    }
                    Ok(_) => {}
                    Err(err) => {
                        let p = err.path().unwrap_or(path).to_path_buf();
                        out.push(Input::Error(p, err.to_string()));
                    }
                }
            }
        } else {
            out.push(Input::File(path.clone()));
        }
    }
    out
}

fn has_image_extension(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| IMAGE_EXTENSIONS.iter().any(|x| e.eq_ignore_ascii_case(x)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn walks_directories_recursively_and_keeps_explicit_files() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        for name in ["b.JPG", "a.png", "notes.txt", "sub/c.webp"] {
            std::fs::write(dir.path().join(name), b"x").unwrap();
        }
        let explicit = dir.path().join("notes.txt");
        let inputs = expand(&[dir.path().to_path_buf(), explicit.clone()]);
        let files: Vec<PathBuf> = inputs
            .into_iter()
            .map(|i| match i {
                Input::File(p) => p,
                Input::Error(p, e) => panic!("{}: {e}", p.display()),
            })
            .collect();
        assert_eq!(
            files,
            vec![
                dir.path().join("a.png"),
                dir.path().join("b.JPG"),
                dir.path().join("sub/c.webp"),
                explicit
            ]
        );
    }
}
