//! `ongi analyze --html` rendered in a real headless browser (Debian's
//! `chromium`, installed by `scripts/test-deps`): the DOM after load must
//! show every section, every photo once per section it belongs to, and no
//! broken image; a screenshot is written beside the test binaries.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;

use support::{photo_dir, photo_names, tiny_model};

/// The browser, or a loud failure naming what is missing.
fn chromium() -> PathBuf {
    let candidates = [
        std::env::var("ONGI_CHROMIUM").ok(),
        Some("/usr/bin/chromium".into()),
    ];
    candidates
        .into_iter()
        .flatten()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .unwrap_or_else(|| {
            panic!("chromium not found: `apt-get install chromium` (scripts/test-deps installs it) or set ONGI_CHROMIUM")
        })
}

fn browser(args: &[&str], page: &Path) -> std::process::Output {
    let profile = tempfile::tempdir().unwrap();
    let out = Command::new(chromium())
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--virtual-time-budget=10000",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(args)
        .arg(format!("file://{}", page.display()))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// The part of `dom` inside `<section id="ID">`.
fn section<'a>(dom: &'a str, id: &str) -> &'a str {
    let open = format!(r#"<section id="{id}">"#);
    let start = dom.find(&open).unwrap_or_else(|| panic!("no section {id}"));
    let rest = &dom[start..];
    &rest[..rest.find("</section>").unwrap()]
}

fn count_key(html: &str, key: &str) -> usize {
    html.matches(&format!(r#"class="photo" data-key="{key}""#))
        .count()
}

fn analyze(photos: &Path, store: &Path, extra: &[&str]) -> serde_json::Value {
    let (model, store) = (tiny_model(), store.join("f.redb"));
    let mut args = vec!["analyze", "--model", model.to_str().unwrap()];
    args.extend([
        "--store",
        store.to_str().unwrap(),
        "--concepts",
        "travel,pets",
    ]);
    args.extend(extra);
    args.push(photos.to_str().unwrap());
    // Exit 1: the album holds a corrupt photo, listed in the report.
    let (code, stdout, stderr) = support::ongi_run(args);
    assert_eq!(code, 1, "{stderr}");
    serde_json::from_slice(&stdout).unwrap()
}

/// Checks the loaded page against the JSON report of the same run.
fn check_dom(dom: &str, report: &serde_json::Value, keys: &[String]) {
    assert!(
        dom.contains(r#"data-broken-images="0""#),
        "broken images (or the check did not run)"
    );
    let images: usize = dom
        .split(r#"data-images=""#)
        .nth(1)
        .and_then(|s| s.split('"').next())
        .and_then(|n| n.parse().ok())
        .expect("the page's image count");
    assert!(
        images >= keys.len(),
        "only {images} images for {} photos",
        keys.len()
    );

    let categories = section(dom, "categories");
    for key in keys {
        assert_eq!(count_key(categories, key), 1, "{key} in categories");
    }
    let names: Vec<&str> = report["categories"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["category"].as_str().unwrap())
        .collect();
    assert!(!names.is_empty());
    for name in &names {
        assert!(categories.contains(name), "category {name} missing");
    }
    let duplicates = section(dom, "duplicates");
    assert!(
        !report["duplicates"].as_array().unwrap().is_empty(),
        "the album has a near-copy"
    );
    assert!(duplicates.contains("Hamming distance"), "{duplicates}");
    let in_groups: Vec<&str> = report["duplicates"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|g| g.as_array().unwrap().iter().map(|k| k.as_str().unwrap()))
        .collect();
    for key in keys {
        let want = usize::from(in_groups.contains(&key.as_str()));
        assert_eq!(count_key(duplicates, key), want, "{key} in duplicates");
    }
    let low = section(dom, "low-quality");
    let low_keys: Vec<&str> = report["low_quality"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k.as_str().unwrap())
        .collect();
    for key in keys {
        assert_eq!(
            count_key(low, key),
            usize::from(low_keys.contains(&key.as_str())),
            "{key} in low quality"
        );
    }
    let failed = section(dom, "failed");
    assert!(failed.contains(r#"data-key="corrupt.jpg""#), "{failed}");
    assert!(section(dom, "timings").contains("embedding, wall clock"));
}

#[test]
fn the_album_report_renders_in_a_browser_with_every_photo_in_place() {
    let photos = photo_dir();
    // A near-copy (re-encoded at another quality), so one duplicate group shows.
    let dune = image::open(photos.path().join("landscape_dune.jpg"))
        .unwrap()
        .to_rgb8();
    let mut copy = std::fs::File::create(photos.path().join("dune_copy.jpg")).unwrap();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut copy, 70)
        .encode_image(&dune)
        .unwrap();
    let mut keys = photo_names();
    keys.push("dune_copy.jpg".into());
    let store = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    let page = out.path().join("album.html");

    let report = analyze(
        photos.path(),
        store.path(),
        &["--html", page.to_str().unwrap()],
    );
    let html = std::fs::read_to_string(&page).unwrap();
    assert!(
        !html.contains("http://") && !html.contains("https://"),
        "the page must not reach the network"
    );
    let dom = String::from_utf8(browser(&["--dump-dom"], &page).stdout).unwrap();
    check_dom(&dom, &report, &keys);

    // A screenshot for people to look at (kept beside the test binaries).
    let shot = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("album-report.png");
    let _ = std::fs::remove_file(&shot);
    browser(
        &[
            &format!("--screenshot={}", shot.display()),
            "--window-size=1280,2200",
        ],
        &page,
    );
    let png = std::fs::read(&shot).unwrap();
    assert!(
        png.len() > 10_000 && png.starts_with(b"\x89PNG"),
        "screenshot {} bytes",
        png.len()
    );
    eprintln!("screenshot: {}", shot.display());

    // From the warm store, with thumbnails as linked files: the same page.
    let thumbs = out.path().join("thumbs");
    let page2 = out.path().join("linked.html");
    let report2 = analyze(
        photos.path(),
        store.path(),
        &[
            "--html",
            page2.to_str().unwrap(),
            "--thumbnails",
            thumbs.to_str().unwrap(),
        ],
    );
    assert_eq!(report2, report);
    let html2 = std::fs::read_to_string(&page2).unwrap();
    assert!(
        html2.contains(r#"src="thumbs/00001.jpg""#),
        "links are relative to the page"
    );
    assert!(!html2.contains("data:image"));
    let files = std::fs::read_dir(&thumbs).unwrap().count();
    assert_eq!(files, keys.len(), "one thumbnail per analysed photo");
    let dom2 = String::from_utf8(browser(&["--dump-dom"], &page2).stdout).unwrap();
    check_dom(&dom2, &report2, &keys);
}
