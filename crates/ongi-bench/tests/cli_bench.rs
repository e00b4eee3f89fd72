//! `ongi-bench` end to end on the tiny fixture model: output structure only,
//! never timing values (they depend on the machine and its load).

use std::process::Command;

use serde_json::Value;

fn run_json(args: &[&str]) -> Vec<serde_json::Map<String, Value>> {
    let root = ongi_test_support::fixtures::repo();
    let out = Command::new(env!("CARGO_BIN_EXE_ongi-bench"))
        .current_dir(&root)
        .arg("--model")
        .arg(root.join("tests/fixtures/tiny-clip"))
        .arg("--json")
        .args(args)
        .output()
        .expect("running ongi-bench");
    let stdout = String::from_utf8(out.stdout).unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "status {}\nstdout:\n{stdout}\nstderr:\n{stderr}",
        out.status
    );
    stdout
        .lines()
        .map(|line| match serde_json::from_str::<Value>(line) {
            Ok(Value::Object(map)) => map,
            other => panic!("not a JSON object line: {line:?} ({other:?})"),
        })
        .collect()
}

fn number(obj: &serde_json::Map<String, Value>, key: &str) -> f64 {
    let v = obj
        .get(key)
        .and_then(Value::as_f64)
        .unwrap_or_else(|| panic!("{key} missing or not a number in {obj:?}"));
    assert!(v.is_finite(), "{key} = {v} in {obj:?}");
    v
}

#[test]
fn bench_json_prints_one_line_per_setting() {
    let lines = run_json(&[
        "--batch-sizes",
        "1,2",
        "--threads",
        "1",
        "--images",
        "4",
        "--warmup",
        "1",
    ]);
    assert_eq!(lines.len(), 2, "{lines:?}");
    for (line, batch) in lines.iter().zip([1, 2]) {
        for key in [
            "batch_size",
            "threads",
            "images",
            "images_per_sec",
            "ms_per_image",
            "cpu_avg_pct",
            "cpu_peak_pct",
            "peak_rss_mb",
        ] {
            number(line, key);
        }
        assert_eq!(line["batch_size"], batch);
        assert_eq!(line["threads"], 1);
        // 4 images in whole batches of 1 or 2.
        assert_eq!(line["images"], 4);
        check_timing(line);
    }
}

/// The timing fields every `--json` line carries are plausible.
fn check_timing(line: &serde_json::Map<String, Value>) {
    assert!(number(line, "images_per_sec") > 0.0);
    assert!(number(line, "ms_per_image") > 0.0);
    assert!(number(line, "peak_rss_mb") > 0.0);
    // CPU time ticks every 10 ms: a loop this short may read 0 %.
    assert!(number(line, "cpu_avg_pct") >= 0.0);
    assert!(number(line, "cpu_peak_pct") >= 0.0);
}

#[test]
fn bench_json_covers_every_thread_count() {
    let lines = run_json(&[
        "--batch-sizes",
        "2",
        "--threads",
        "1,2",
        "--images",
        "2",
        "--warmup",
        "0",
    ]);
    let settings: Vec<(u64, u64)> = lines
        .iter()
        .map(|l| {
            (
                l["threads"].as_u64().unwrap(),
                l["batch_size"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(settings, [(1, 2), (2, 2)]);
}

#[test]
fn bench_preprocess_reports_decode_throughput() {
    let photos = ongi_test_support::fixtures::repo().join("tests/fixtures/photos");
    let a = photos.join("landscape_dune.jpg");
    let b = photos.join("rgb_garden.png");
    let lines = run_json(&[
        "--images",
        "3",
        "--warmup",
        "1",
        "--preprocess",
        a.to_str().unwrap(),
        b.to_str().unwrap(),
    ]);
    assert_eq!(lines.len(), 1, "{lines:?}");
    let line = &lines[0];
    assert_eq!(line["mode"], "preprocess");
    assert_eq!(line["files"], 2);
    assert_eq!(line["images"], 3);
    check_timing(line);
}

#[test]
fn bench_pipeline_reports_photos_per_second_and_stages() {
    let photos = ongi_test_support::fixtures::repo().join("tests/fixtures/photos");
    let files = [
        photos.join("landscape_dune.jpg"),
        photos.join("portrait_yellowflower.jpg"),
        photos.join("rgb_garden.png"),
    ];
    let files: Vec<&str> = files.iter().map(|p| p.to_str().unwrap()).collect();
    for decode in ["fast", "reduced"] {
        let mut args = vec![
            "--images",
            "5",
            "--threads",
            "1",
            "--decode",
            decode,
            "--pipeline",
        ];
        args.extend(&files);
        let lines = run_json(&args);
        assert_eq!(lines.len(), 1, "{lines:?}");
        let line = &lines[0];
        assert_eq!(line["mode"], "pipeline");
        assert_eq!(line["decode"], decode);
        assert_eq!(line["threads"], 1);
        assert_eq!(line["decode_workers"], 1);
        assert_eq!(line["decode_workers_from"], "default");
        assert_eq!(line["files"], 3);
        assert_eq!(line["failed"], 0);
        assert_eq!(line["images"], 5);
        check_timing(line);
        let Some(Value::Object(stages)) = line.get("stages") else {
            panic!("no stages in {line:?}");
        };
        for key in [
            "load_s",
            "decode_s",
            "pixel_features_s",
            "model_s",
            "store_s",
        ] {
            assert!(number(stages, key) >= 0.0, "{key} in {stages:?}");
        }
        assert!(number(stages, "decode_s") > 0.0 && number(stages, "model_s") > 0.0);
        for key in ["decode_workers_busy", "model_busy"] {
            let share = number(stages, key);
            assert!(share > 0.0 && share < 1.5, "{key} = {share}");
        }
        let Some(Value::Object(cores)) = line.get("cores") else {
            panic!("no per-thread CPU split in {line:?}");
        };
        // Both sides ran on a core, and one thread cannot be on more than
        // one core for the whole run.
        assert!(number(cores, "decode_cpu_s") > 0.0 && number(cores, "model_cpu_s") > 0.0);
        for key in ["other_cpu_s", "decode_wait_s", "model_wait_s"] {
            assert!(number(cores, key) >= 0.0, "{key} in {cores:?}");
        }
        let busy = number(cores, "busy");
        assert!(busy > 0.0 && busy < 1.05, "cores busy {busy}");
        let bound = line["bound"].as_str().unwrap_or("");
        assert!(
            ["decode", "model", "cores: decode", "cores: model"].contains(&bound),
            "{line:?}"
        );
    }
}

#[test]
fn bench_preprocess_rejects_an_undecodable_file() {
    let root = ongi_test_support::fixtures::repo();
    let out = Command::new(env!("CARGO_BIN_EXE_ongi-bench"))
        .arg("--model")
        .arg(root.join("tests/fixtures/tiny-clip"))
        .arg("--preprocess")
        .arg(root.join("tests/fixtures/photos/corrupt.jpg"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("corrupt.jpg"));
}

#[test]
fn bench_preprocess_skips_an_undecodable_file_with_a_line() {
    let root = ongi_test_support::fixtures::repo();
    let photos = root.join("tests/fixtures/photos");
    let out = Command::new(env!("CARGO_BIN_EXE_ongi-bench"))
        .args(["--json", "--images", "2", "--warmup", "0", "--model"])
        .arg(root.join("tests/fixtures/tiny-clip"))
        .arg("--preprocess")
        .arg(&photos)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let skipped: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("skipped "))
        .collect();
    assert_eq!(skipped.len(), 1, "{stderr}");
    assert!(skipped[0].contains("corrupt.jpg"), "{stderr}");
    let line: Value = serde_json::from_slice(&out.stdout).unwrap();
    let decodable = std::fs::read_dir(&photos).unwrap().count() - 1;
    assert_eq!(line["files"], decodable);
}

#[test]
fn bench_table_has_a_row_per_setting() {
    let root = ongi_test_support::fixtures::repo();
    let out = Command::new(env!("CARGO_BIN_EXE_ongi-bench"))
        .arg("--model")
        .arg(root.join("tests/fixtures/tiny-clip"))
        .args(["--batch-sizes", "1,2", "--threads", "1", "--images", "2"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let stdout = String::from_utf8(out.stdout).unwrap();
    let rows: Vec<Vec<&str>> = stdout
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .filter(|cols| cols.len() == 8 && cols[0] == "1")
        .collect();
    assert_eq!(rows.len(), 2, "{stdout}");
    assert_eq!(rows[0][1], "1");
    assert_eq!(rows[1][1], "2");
    assert!(stdout.contains("images/s"), "{stdout}");
}
