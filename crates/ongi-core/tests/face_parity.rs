//! Face detection, landmarks and descriptors against face-api's own
//! JavaScript on its six sample photos
//! (`tests/fixtures/faces/face-api-reference.json`, written by
//! `scripts/face-reference/reference.mjs`).
//!
//! Twice: on the reference's own pixels (jpeg-js, through
//! `scripts/face-reference/decode.mjs`), which tests the networks and their
//! geometry, and on ongi's decoder, which is what serving sees. The two
//! decoders differ by about half a grey level per channel, which moves a
//! face's crop by a pixel now and then.

use ongi_test_support::face_models;
use ongi_test_support::fixtures::repo;
use ongi_test_support::numeric::{cosine, floats};

use std::path::PathBuf;
use std::process::Command;

use ongi_core::preprocess::decode_image;
use ongi_model::face::{FaceModels, FaceOptions, RgbView};
use serde_json::Value;

fn iou(a: [f32; 4], b: [f32; 4]) -> f32 {
    let ix = (a[0] + a[2]).min(b[0] + b[2]) - a[0].max(b[0]);
    let iy = (a[1] + a[3]).min(b[1] + b[3]) - a[1].max(b[1]);
    let inter = ix.max(0.0) * iy.max(0.0);
    inter / (a[2] * a[3] + b[2] * b[3] - inter)
}

/// Worst IoU, descriptor cosine and landmark distance over every reference
/// face, each matched to our face of highest IoU; also asserts that as many
/// faces are found as the reference finds.
fn compare(
    models: &FaceModels,
    reference: &Value,
    pixels: &dyn Fn(&str, u32, u32) -> Vec<u8>,
) -> (usize, f32, f32, f32) {
    let options = FaceOptions {
        min_score: reference["min_score"].as_f64().unwrap() as f32,
        ..FaceOptions::default()
    };
    let (mut checked, mut worst_iou, mut worst_cosine, mut worst_landmark) =
        (0, 1.0f32, 1.0f32, 0.0f32);
    for photo in reference["photos"].as_array().unwrap() {
        let name = photo["photo"].as_str().unwrap();
        let (width, height) = (
            photo["width"].as_u64().unwrap() as u32,
            photo["height"].as_u64().unwrap() as u32,
        );
        let rgb = pixels(name, width, height);
        let view = RgbView {
            width: width as usize,
            height: height as usize,
            pixels: &rgb,
        };
        let ours = models.faces(&view, &options).unwrap();
        let theirs = photo["faces"].as_array().unwrap();
        assert_eq!(
            ours.len(),
            theirs.len(),
            "{name}: {} faces found, face-api finds {}",
            ours.len(),
            theirs.len()
        );
        for face in theirs {
            let bbox: [f32; 4] = floats(&face["box"]).try_into().unwrap();
            let (best, overlap) = ours
                .iter()
                .map(|f| (f, iou(f.bbox, bbox)))
                .max_by(|a, b| a.1.total_cmp(&b.1))
                .unwrap();
            let similarity = cosine(&best.descriptor, &floats(&face["descriptor"])) as f32;
            let shift = best
                .landmarks
                .iter()
                .zip(face["landmarks"].as_array().unwrap())
                .map(|(a, b)| {
                    let b = floats(b);
                    (a[0] - b[0]).hypot(a[1] - b[1])
                })
                .fold(0.0f32, f32::max);
            println!(
                "  {name}: face at {bbox:?}: IoU {overlap:.4}, score {:.4} (face-api {}), descriptor cosine {similarity:.5}, landmarks within {shift:.2} px",
                best.score, face["score"]
            );
            worst_iou = worst_iou.min(overlap);
            worst_cosine = worst_cosine.min(similarity);
            worst_landmark = worst_landmark.max(shift);
            checked += 1;
        }
    }
    (checked, worst_iou, worst_cosine, worst_landmark)
}

#[test]
fn faces_boxes_and_descriptors_match_face_api() {
    let Some(dir) = face_models::model_dir() else {
        return;
    };
    let reference: Value = serde_json::from_slice(
        &std::fs::read(repo().join("tests/fixtures/faces/face-api-reference.json")).unwrap(),
    )
    .unwrap();
    let models = FaceModels::load(&dir).unwrap();
    let samples = dir.join("samples");
    let total: usize = reference["photos"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["faces"].as_array().unwrap().len())
        .sum();
    assert_eq!(total, 22, "the reference file changed");

    // The reference's own pixels.
    let scripts = repo().join("scripts/face-reference");
    let raw = tempfile::tempdir().unwrap();
    let node_ready = scripts.join("node_modules/jpeg-js").is_dir();
    if node_ready {
        let photos: Vec<PathBuf> = (1..=6)
            .map(|i| samples.join(format!("sample{i}.jpg")))
            .collect();
        let status = Command::new("node")
            .arg(scripts.join("decode.mjs"))
            .arg(raw.path())
            .args(&photos)
            .status()
            .unwrap();
        assert!(status.success(), "decode.mjs failed");
        let (checked, iou, cosine, landmark) = compare(&models, &reference, &|name, w, h| {
            std::fs::read(raw.path().join(format!("{name}.{w}x{h}.rgb"))).unwrap()
        });
        println!("reference pixels: {checked} faces checked, IoU ≥ {iou:.4}, descriptor cosine ≥ {cosine:.5}, landmarks within {landmark:.2} px");
        assert_eq!(checked, total);
        assert!(iou >= 0.9 && cosine >= 0.999, "IoU {iou}, cosine {cosine}");
    } else {
        assert!(
            std::env::var_os("CI").is_none(),
            "scripts/face-reference/node_modules is missing: run scripts/test-deps"
        );
        println!("reference pixels: skipped (scripts/face-reference/node_modules is missing: run scripts/test-deps)");
    }

    // ongi's decoder.
    let (checked, iou, cosine, landmark) = compare(&models, &reference, &|name, w, h| {
        let image = decode_image(&std::fs::read(samples.join(name)).unwrap()).unwrap();
        assert_eq!(image.dimensions(), (w, h));
        image.into_raw()
    });
    println!("ongi's decoder: {checked} faces checked, IoU ≥ {iou:.4}, descriptor cosine ≥ {cosine:.5}, landmarks within {landmark:.2} px");
    assert_eq!(checked, total);
    assert!(iou >= 0.9 && cosine >= 0.995, "IoU {iou}, cosine {cosine}");
}
