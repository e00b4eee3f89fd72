//! `ongi embed` and `ongi analyze` as a user runs them.

mod support;

use std::process::Command;

use support::{fixtures, photo_names, tiny_model};

fn ongi(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_ongi"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

fn lines(stdout: &str) -> Vec<serde_json::Value> {
    stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn embed_a_directory_reports_bad_files_and_keeps_going() {
    let model = tiny_model();
    let photos = fixtures().join("photos");
    let missing = photos.join("no-such-file.jpg");
    let (code, stdout, stderr) = ongi(&[
        "embed",
        "--model",
        model.to_str().unwrap(),
        "--batch-size",
        "5",
        photos.to_str().unwrap(),
        missing.to_str().unwrap(),
    ]);
    assert_eq!(
        code, 1,
        "any failed input makes the exit status non-zero: {stderr}"
    );
    let out = lines(&stdout);
    // every photo (sorted) plus corrupt.jpg, then the missing file, in input order
    let mut expected: Vec<String> = photo_names();
    expected.push("corrupt.jpg".into());
    expected.sort();
    let names: Vec<String> = out[..out.len() - 1]
        .iter()
        .map(|l| {
            l["input"]
                .as_str()
                .unwrap()
                .rsplit('/')
                .next()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(names, expected);
    for line in &out {
        let name = line["input"].as_str().unwrap();
        if name.ends_with("corrupt.jpg") || name.ends_with("no-such-file.jpg") {
            assert!(!line["error"].as_str().unwrap().is_empty(), "{line}");
            assert!(line.get("embedding").is_none());
        } else {
            assert_eq!(line["embedding"].as_array().unwrap().len(), 32, "{line}");
        }
    }
}

#[test]
fn embed_text_normalized_and_exit_zero() {
    let model = tiny_model();
    let (code, stdout, stderr) = ongi(&[
        "embed",
        "--model",
        model.to_str().unwrap(),
        "--text",
        "--normalize",
        "a photo of a cat",
        "가족 여행 사진",
    ]);
    assert_eq!(code, 0, "{stderr}");
    let out = lines(&stdout);
    assert_eq!(out.len(), 2);
    assert_eq!(out[1]["input"], "가족 여행 사진");
    for line in out {
        let norm: f64 = line["embedding"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap().powi(2))
            .sum();
        assert!((norm - 1.0).abs() < 1e-5, "norm² {norm}");
    }
}

#[test]
fn bad_model_directory_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let (code, _, stderr) = ongi(&[
        "embed",
        "--model",
        dir.path().to_str().unwrap(),
        "--text",
        "x",
    ]);
    assert_eq!(code, 2);
    assert!(stderr.contains("config.json"), "{stderr}");
}

#[test]
fn analyze_prints_the_album_report() {
    let model = tiny_model();
    let store = tempfile::tempdir().unwrap();
    let store_file = store.path().join("f.redb");
    let photos = fixtures().join("photos");
    let (code, stdout, stderr) = ongi(&[
        "analyze",
        "--model",
        model.to_str().unwrap(),
        "--store",
        store_file.to_str().unwrap(),
        "--concepts",
        "travel,pets",
        photos.to_str().unwrap(),
    ]);
    // 1, as `ongi embed`: corrupt.jpg failed (and is listed).
    assert_eq!(code, 1, "{stderr}");
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert!(report["duplicates"].is_array() && report["low_quality"].is_array());
    assert_eq!(report["failed"][0]["key"], "corrupt.jpg");
    let mut seen: Vec<String> = report["categories"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|g| {
            g["images"]
                .as_array()
                .unwrap()
                .iter()
                .map(|k| k.as_str().unwrap().to_owned())
        })
        .collect();
    seen.sort();
    assert_eq!(seen, photo_names());
    let scored: usize = report["scores"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["images"].as_array().unwrap().len())
        .sum();
    assert_eq!(scored, photo_names().len());
    // Scores print as the f32 they are (as `/api/albums/score` prints them),
    // without the digits a widening to f64 adds.
    for category in report["scores"].as_array().unwrap() {
        for image in category["images"].as_array().unwrap() {
            let score = image["score"].as_f64().unwrap();
            assert_eq!((score as f32).to_string(), score.to_string(), "{image}");
        }
    }
}

#[test]
fn analyze_stores_features_in_the_cache_directory_by_default() {
    let model = tiny_model();
    let cache = tempfile::tempdir().unwrap();
    let cwd = tempfile::tempdir().unwrap();
    let photos = fixtures().join("photos");
    let out = Command::new(env!("CARGO_BIN_EXE_ongi"))
        .current_dir(cwd.path())
        .env("XDG_CACHE_HOME", cache.path())
        .args(["analyze", "--model", model.to_str().unwrap()])
        .arg(&photos)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let store = cache.path().join("ongi/features.redb");
    assert!(store.is_file(), "no store at {}", store.display());
    assert!(
        stderr.contains(&store.display().to_string()),
        "the log names the store: {stderr}"
    );
    assert_eq!(
        std::fs::read_dir(cwd.path()).unwrap().count(),
        0,
        "left files in the working directory"
    );
}

#[test]
fn an_error_tells_its_cause_once() {
    let model = tiny_model();
    let dir = tempfile::tempdir().unwrap();
    let photos = fixtures().join("photos");
    // A directory where the store file should be.
    let (code, _, stderr) = ongi(&[
        "analyze",
        "--model",
        model.to_str().unwrap(),
        "--store",
        dir.path().to_str().unwrap(),
        photos.to_str().unwrap(),
    ]);
    assert_eq!(code, 2, "{stderr}");
    let line = stderr
        .lines()
        .find(|l| l.starts_with("error: "))
        .unwrap_or_default();
    assert_eq!(line.matches("os error 21").count(), 1, "{stderr}");
}

#[test]
fn analyze_query_prints_the_search_ranking() {
    let model = tiny_model();
    let store = tempfile::tempdir().unwrap();
    let store_file = store.path().join("f.redb");
    let photos = fixtures().join("photos");
    let run = |extra: &[&str]| {
        let mut args = vec![
            "analyze",
            "--model",
            model.to_str().unwrap(),
            "--store",
            store_file.to_str().unwrap(),
        ];
        args.extend(extra);
        args.push(photos.to_str().unwrap());
        ongi(&args)
    };
    let (code, stdout, stderr) = run(&["--query", "a red car", "--top-k", "3"]);
    assert_eq!(code, 1, "corrupt.jpg failed: {stderr}");
    let ranked: Vec<serde_json::Value> = serde_json::from_str(&stdout).unwrap();
    assert_eq!(ranked.len(), 3, "{stdout}");
    let scores: Vec<f64> = ranked
        .iter()
        .map(|e| e["score"].as_f64().unwrap())
        .collect();
    assert!(scores.windows(2).all(|w| w[0] >= w[1]), "{stdout}");
    let keys: std::collections::HashSet<&str> = ranked
        .iter()
        .map(|e| e["image"].as_str().unwrap())
        .collect();
    assert_eq!(keys.len(), 3);
    assert!(
        keys.iter().all(|k| photo_names().iter().any(|n| n == k)),
        "{stdout}"
    );

    let (code, _, stderr) = run(&["--query", "   "]);
    assert_ne!(code, 0);
    assert!(
        stderr.contains("--query: query must not be empty"),
        "{stderr}"
    );
    let (code, _, stderr) = run(&["--query", "a", "--top-k", "0"]);
    assert_ne!(code, 0);
    assert!(stderr.contains("top-k"), "{stderr}");
}

/// `ongi embed` runs the server's pipeline over the files named, wherever
/// they are: a relative path, a symbolic link and a second hard link all
/// embed (the image-root guards are for clients' keys, not the user's own
/// files), each line as the input was written.
#[test]
fn embed_takes_files_anywhere_by_any_name() {
    let photos = fixtures().join("photos");
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("copy.jpg");
    std::fs::copy(photos.join("landscape_dune.jpg"), &copy).unwrap();
    let link = dir.path().join("link.jpg");
    std::os::unix::fs::symlink(&copy, &link).unwrap();
    let hard = dir.path().join("hard.jpg");
    std::fs::hard_link(&copy, &hard).unwrap();
    let relative = "tests/fixtures/photos/landscape_dune.jpg";
    let out = Command::new(env!("CARGO_BIN_EXE_ongi"))
        .current_dir(ongi_test_support::fixtures::repo())
        .args(["embed", "--model"])
        .arg(tiny_model())
        .args([relative, link.to_str().unwrap(), hard.to_str().unwrap()])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    let lines = lines(&String::from_utf8(out.stdout).unwrap());
    let inputs: Vec<&str> = lines.iter().map(|l| l["input"].as_str().unwrap()).collect();
    assert_eq!(
        inputs,
        [relative, link.to_str().unwrap(), hard.to_str().unwrap()]
    );
    // One photo under three names: the same embedding three times.
    for line in &lines[1..] {
        assert_eq!(line["embedding"], lines[0]["embedding"], "{line}");
        assert!(line.get("faces").is_none(), "{line}");
    }
}

/// With `--face-model`, each line lists the photo's faces, as the server
/// stores them.
#[test]
fn embed_with_face_models_lists_faces() {
    let Some(models) = ongi_test_support::face_models::model_dir() else {
        return;
    };
    let faceless = fixtures().join("photos/landscape_dune.jpg");
    let people = models.join("samples/sample1.jpg");
    let (code, stdout, stderr) = ongi(&[
        "embed",
        "--model",
        tiny_model().to_str().unwrap(),
        "--face-model",
        models.to_str().unwrap(),
        faceless.to_str().unwrap(),
        people.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{stderr}");
    let lines = lines(&stdout);
    assert_eq!(lines[0]["faces"], serde_json::json!([]), "{}", lines[0]);
    let faces = lines[1]["faces"].as_array().unwrap();
    assert!(faces.len() >= 3, "{}", lines[1]);
    let mut last = f64::INFINITY;
    for face in faces {
        let score = face["score"].as_f64().unwrap();
        assert!(score <= last && score > 0.5, "best first: {face}");
        last = score;
        let b: Vec<i64> = serde_json::from_value(face["box"].clone()).unwrap();
        assert!(b[0] < b[2] && b[1] < b[3], "{face}");
        assert_eq!(face["descriptor"].as_array().unwrap().len(), 128);
    }
}

/// The README's duplicates example: each source photo's edited copies form
/// one group, and the mirrored copies stay apart.
#[test]
fn analyze_groups_the_edited_copies() {
    let edited = fixtures().join("original/edited");
    let (code, stdout, stderr) = ongi(&[
        "analyze",
        "--model",
        tiny_model().to_str().unwrap(),
        "--store",
        ":memory:",
        edited.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{stderr}");
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let groups: Vec<Vec<String>> = serde_json::from_value(report["duplicates"].clone()).unwrap();
    assert_eq!(groups.len(), 5, "{groups:?}");
    for group in &groups {
        let source = group[0].split("__").next().unwrap();
        assert!(
            group.iter().all(|k| k.starts_with(&format!("{source}__"))),
            "{group:?}"
        );
        for edit in ["blur", "bright", "crop", "recompress", "resize"] {
            assert!(
                group.contains(&format!("{source}__{edit}.jpg")),
                "{edit}: {group:?}"
            );
        }
        assert!(!group.iter().any(|k| k.contains("__flip")), "{group:?}");
    }
    assert_eq!(
        groups[2],
        [
            "landscape_dune__blur.jpg",
            "landscape_dune__bright.jpg",
            "landscape_dune__crop.jpg",
            "landscape_dune__recompress.jpg",
            "landscape_dune__resize.jpg"
        ]
    );
}
