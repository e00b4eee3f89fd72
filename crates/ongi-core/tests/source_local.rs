//! Local-directory image source: reads, hostile keys, symlinks, limits.

use std::fs;
use std::os::unix::fs::symlink;
use std::time::{Duration, Instant};

use ongi_core::source::{validate_key, ImageSource, SourceError, SourceLimits, MAX_KEY_BYTES};

/// A temp dir holding `root/` (the image root) and `outside/` (a secret next to it).
struct Fixture {
    _dir: tempfile::TempDir,
    root: std::path::PathBuf,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let outside = dir.path().join("outside");
    fs::create_dir_all(root.join("nested/deep")).unwrap();
    fs::create_dir_all(&outside).unwrap();
    fs::write(root.join("a.jpg"), b"photo a").unwrap();
    fs::write(root.join("nested/deep/b.png"), b"photo b").unwrap();
    fs::write(root.join("my photo ü.jpg"), b"unicode").unwrap();
    fs::write(root.join("a%20b.jpg"), b"percent").unwrap();
    fs::write(root.join("big.bin"), vec![7u8; 2048]).unwrap();
    fs::write(root.join("exact.bin"), vec![1u8; 1024]).unwrap();
    fs::write(outside.join("secret.txt"), b"SECRET").unwrap();
    // Links out of the root: to a file, to a directory, and relative via `..`.
    symlink(outside.join("secret.txt"), root.join("escape.jpg")).unwrap();
    symlink(&outside, root.join("outdir")).unwrap();
    symlink("../outside/secret.txt", root.join("relative_escape.jpg")).unwrap();
    // Links that stay inside: absolute to a file, relative to a directory.
    symlink(root.join("a.jpg"), root.join("alias.jpg")).unwrap();
    symlink("nested/deep", root.join("shortcut")).unwrap();
    // A link to the root's own parent, then back down into the root.
    symlink("..", root.join("up")).unwrap();
    Fixture { _dir: dir, root }
}

fn limits() -> SourceLimits {
    SourceLimits {
        max_bytes: 1024,
        ..SourceLimits::default()
    }
}

fn source(fixture: &Fixture) -> ImageSource {
    ImageSource::from_spec(fixture.root.to_str().unwrap(), limits()).unwrap()
}

#[tokio::test]
async fn reads_files_and_nested_keys() {
    let fx = fixture();
    let src = source(&fx);
    assert_eq!(&src.fetch("a.jpg").await.unwrap()[..], b"photo a");
    assert_eq!(
        &src.fetch("nested/deep/b.png").await.unwrap()[..],
        b"photo b"
    );
    // Spaces, non-ASCII and a literal `%20` all name the file they spell.
    assert_eq!(&src.fetch("my photo ü.jpg").await.unwrap()[..], b"unicode");
    assert_eq!(&src.fetch("a%20b.jpg").await.unwrap()[..], b"percent");
    assert!(
        src.describe().starts_with("local directory "),
        "{}",
        src.describe()
    );
}

#[tokio::test]
async fn file_url_spec_reads_the_same_directory() {
    let fx = fixture();
    let url = format!("file://{}", fx.root.display());
    let src = ImageSource::from_spec(&url, limits()).unwrap();
    assert_eq!(&src.fetch("a.jpg").await.unwrap()[..], b"photo a");
}

#[tokio::test]
async fn hostile_keys_are_invalid_and_read_nothing() {
    let fx = fixture();
    let src = source(&fx);
    let too_long = "a".repeat(MAX_KEY_BYTES + 1);
    let hostile = [
        "../outside/secret.txt",
        "a/../../outside/secret.txt",
        "nested/../../outside/secret.txt",
        "/etc/passwd",
        "//etc/passwd",
        "a\0b",
        "a.jpg\0",
        "a\\b",
        "..\\outside\\secret.txt",
        "",
        "./a.jpg",
        "a//b",
        "nested/deep/",
        ".",
        "..",
        "a\nb",
        "a\u{7f}b",
        "a\u{85}b",
        too_long.as_str(),
    ];
    for key in hostile {
        let result = src.fetch(key).await;
        assert!(
            matches!(result, Err(SourceError::InvalidKey(_))),
            "{key:?} gave {result:?}"
        );
        assert!(validate_key(key).is_err(), "{key:?}");
    }
}

#[tokio::test]
async fn key_length_limit_is_inclusive() {
    let fx = fixture();
    let src = source(&fx);
    // 1024 bytes in short segments (a single 1024-byte name is over NAME_MAX).
    let key = format!("{}wxyz", "abcdefghi/".repeat(102));
    assert_eq!(key.len(), MAX_KEY_BYTES);
    assert_eq!(
        src.fetch(&key).await,
        Err(SourceError::NotFound(key.clone()))
    );
}

#[tokio::test]
async fn symlinks_out_of_the_root_are_rejected() {
    let fx = fixture();
    let src = source(&fx);
    for key in [
        "escape.jpg",
        "outdir/secret.txt",
        "relative_escape.jpg",
        "up/outside/secret.txt",
    ] {
        let result = src.fetch(key).await;
        match result {
            Err(SourceError::InvalidKey(reason)) => {
                assert!(reason.contains("outside the image root"), "{key}: {reason}")
            }
            other => panic!("{key:?} gave {other:?}"),
        }
    }
}

#[tokio::test]
async fn symlinks_inside_the_root_are_followed() {
    let fx = fixture();
    let src = source(&fx);
    assert_eq!(&src.fetch("alias.jpg").await.unwrap()[..], b"photo a");
    assert_eq!(&src.fetch("shortcut/b.png").await.unwrap()[..], b"photo b");
    // Out through `up` and back into the root: the target is inside, so fine.
    assert_eq!(&src.fetch("up/root/a.jpg").await.unwrap()[..], b"photo a");
}

#[tokio::test]
async fn missing_keys_are_not_found() {
    let fx = fixture();
    let src = source(&fx);
    for key in ["missing.jpg", "nested/missing.png", "a.jpg/child", "nested"] {
        assert_eq!(
            src.fetch(key).await,
            Err(SourceError::NotFound(key.to_owned())),
            "{key}"
        );
    }
}

#[tokio::test]
async fn special_files_are_not_read() {
    let fx = fixture();
    let fifo = fx.root.join("pipe.jpg");
    let status = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(status.success());
    let src = source(&fx);
    // Opening a FIFO would block forever; it is not a regular file, so it is
    // reported missing without being opened.
    let started = Instant::now();
    assert_eq!(
        src.fetch("pipe.jpg").await,
        Err(SourceError::NotFound("pipe.jpg".into()))
    );
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[tokio::test]
async fn symlink_loops_fail_cleanly() {
    let fx = fixture();
    symlink("loop.jpg", fx.root.join("loop.jpg")).unwrap();
    let src = source(&fx);
    let result = src.fetch("loop.jpg").await;
    assert!(matches!(result, Err(SourceError::Backend(_))), "{result:?}");
}

#[tokio::test]
async fn files_over_max_bytes_are_too_large() {
    let fx = fixture();
    let src = source(&fx);
    assert_eq!(
        src.fetch("big.bin").await,
        Err(SourceError::TooLarge {
            size: 2048,
            limit: 1024
        })
    );
    assert_eq!(src.fetch("exact.bin").await.unwrap().len(), 1024);
}

#[tokio::test]
async fn error_messages_do_not_reveal_the_root() {
    let fx = fixture();
    let src = source(&fx);
    let root = fs::canonicalize(&fx.root).unwrap();
    for key in ["escape.jpg", "missing.jpg", "big.bin", "../x"] {
        let message = src.fetch(key).await.unwrap_err().to_string();
        assert!(!message.contains(root.to_str().unwrap()), "{message}");
    }
}

#[test]
fn bad_local_specs_are_rejected() {
    let fx = fixture();
    let file = fx.root.join("a.jpg");
    let missing = fx.root.join("nope");
    for spec in [file.to_str().unwrap(), missing.to_str().unwrap()] {
        let result = ImageSource::from_spec(spec, limits());
        assert!(
            matches!(result, Err(SourceError::InvalidSpec(_))),
            "{spec}: {result:?}"
        );
    }
    let with_options =
        ImageSource::from_spec_with_options(fx.root.to_str().unwrap(), limits(), &[("a", "b")]);
    assert!(matches!(with_options, Err(SourceError::InvalidSpec(_))));
    let zero = SourceLimits {
        max_bytes: 0,
        ..limits()
    };
    assert!(matches!(
        ImageSource::from_spec(fx.root.to_str().unwrap(), zero),
        Err(SourceError::InvalidSpec(_))
    ));
}

#[test]
fn default_limits() {
    let limits = SourceLimits::default();
    assert_eq!(limits.max_bytes, 50 * 1024 * 1024);
    assert_eq!(limits.timeout, Duration::from_secs(30));
    assert_eq!(limits.retries, 2);
}

#[tokio::test]
async fn names_with_a_hash_are_read() {
    // `name#<digits>` is an ordinary file name (object_store's LocalFileSystem
    // reserved it for its temporary files; the local source no longer uses it).
    let fx = fixture();
    fs::write(fx.root.join("scan#1"), b"x").unwrap();
    let src = source(&fx);
    assert_eq!(&src.fetch("scan#1").await.unwrap()[..], b"x");
}

#[tokio::test]
async fn hard_links_are_refused_unless_allowed() {
    let fx = fixture();
    // A hard link in the root to the secret outside it: the link itself is an
    // ordinary file inside the root, only its link count gives it away.
    let secret = fx.root.parent().unwrap().join("outside/secret.txt");
    fs::hard_link(&secret, fx.root.join("linked.jpg")).unwrap();
    let src = source(&fx);
    let result = src.fetch("linked.jpg").await;
    assert_eq!(result, Err(SourceError::HardLinked { links: 2 }));
    let message = result.unwrap_err().to_string();
    assert!(message.contains("hard links"), "{message}");
    // ordinary files still read
    assert_eq!(&src.fetch("a.jpg").await.unwrap()[..], b"photo a");

    let trusting = ImageSource::from_spec(
        fx.root.to_str().unwrap(),
        SourceLimits {
            allow_hard_links: true,
            ..limits()
        },
    )
    .unwrap();
    assert_eq!(&trusting.fetch("linked.jpg").await.unwrap()[..], b"SECRET");
}

/// A file swapped for a FIFO, or for a symlink out of the root, between the
/// path check and the open (the race a hostile uploader with write access to
/// the root can run): no fetch blocks, none reads the secret. Every swap is
/// raced against a fetch many times; each fetch must finish promptly with the
/// photo, not-found, or an error, never with the secret's bytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_swapped_during_the_fetch_never_hang_or_escape() {
    let fx = fixture();
    let secret = fx.root.parent().unwrap().join("outside/secret.txt");
    let target = fx.root.join("swap.jpg");
    let fifo = fx.root.join("swap.fifo");
    let link = fx.root.join("swap.link");
    let photo = fx.root.join("swap.photo");
    let src = source(&fx);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let swapper = {
        let stop = stop.clone();
        let (target, fifo, link, photo) =
            (target.clone(), fifo.clone(), link.clone(), photo.clone());
        std::thread::spawn(move || {
            let mut swaps = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                fs::write(&photo, b"photo").unwrap();
                fs::rename(&photo, &target).unwrap();
                let _ = fs::remove_file(&fifo);
                let made = std::process::Command::new("mkfifo")
                    .arg(&fifo)
                    .status()
                    .unwrap();
                assert!(made.success());
                fs::rename(&fifo, &target).unwrap();
                let _ = fs::remove_file(&link);
                symlink(&secret, &link).unwrap();
                fs::rename(&link, &target).unwrap();
                swaps += 1;
            }
            swaps
        })
    };
    let mut outcomes = std::collections::BTreeMap::<&str, usize>::new();
    let started = Instant::now();
    for _ in 0..600 {
        let fetch_started = Instant::now();
        let result = tokio::time::timeout(Duration::from_secs(5), src.fetch("swap.jpg"))
            .await
            .expect("a fetch hung on a swapped file");
        assert!(fetch_started.elapsed() < Duration::from_secs(5));
        let outcome = match &result {
            Ok(bytes) => {
                assert_eq!(&bytes[..], b"photo", "read something other than the photo");
                "photo"
            }
            Err(SourceError::NotFound(_)) => "not found",
            Err(SourceError::InvalidKey(reason)) => {
                assert!(reason.contains("outside the image root"), "{reason}");
                "outside the root"
            }
            Err(SourceError::Backend(_)) => "changed while opened",
            Err(other) => panic!("unexpected {other:?}"),
        };
        *outcomes.entry(outcome).or_default() += 1;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let swaps = swapper.join().unwrap();
    println!(
        "600 fetches against {swaps} swaps in {:.1?}: {outcomes:?}",
        started.elapsed()
    );
    assert!(swaps > 0);
    assert_eq!(outcomes.values().sum::<usize>(), 600);
}
