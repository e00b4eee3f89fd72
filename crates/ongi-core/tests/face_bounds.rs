//! The face models at the edges of what a photo holds: no face at all, odd
//! shapes, and a crowd of 56 faces (each of the 22 reference faces cut out
//! of its sample photo and tiled, repeated) against the per-photo bound.

use ongi_test_support::face_models;
use ongi_test_support::fixtures::repo;
use ongi_test_support::numeric::floats;

use image::imageops::{self, FilterType};
use image::RgbImage;
use ongi_core::preprocess::decode_image;
use ongi_model::face::{Face, FaceModels, FaceOptions, RgbView};
use serde_json::Value;

const TILE: u32 = 160;
const COLUMNS: u32 = 8;
const ROWS: u32 = 7;

fn faces(models: &FaceModels, photo: &RgbImage, options: &FaceOptions) -> Vec<Face> {
    let view = RgbView {
        width: photo.width() as usize,
        height: photo.height() as usize,
        pixels: photo.as_raw(),
    };
    models.faces(&view, options).unwrap()
}

/// The crowd: tile `i` (row-major) holds reference face `i % 22`, its box
/// widened by a fifth on each side (more takes in a neighbour's face), resized to fill the tile.
fn crowd(samples: &std::path::Path) -> RgbImage {
    let reference: Value = serde_json::from_slice(
        &std::fs::read(repo().join("tests/fixtures/faces/face-api-reference.json")).unwrap(),
    )
    .unwrap();
    let mut cutouts = Vec::new();
    for photo in reference["photos"].as_array().unwrap() {
        let name = photo["photo"].as_str().unwrap();
        let image = decode_image(&std::fs::read(samples.join(name)).unwrap()).unwrap();
        for face in photo["faces"].as_array().unwrap() {
            let [x, y, w, h]: [f32; 4] = floats(&face["box"]).try_into().unwrap();
            let side = w.max(h) * 1.4;
            let (cx, cy) = (x + w / 2.0, y + h / 2.0);
            let left = (cx - side / 2.0).max(0.0) as u32;
            let top = (cy - side / 2.0).max(0.0) as u32;
            let side = (side as u32)
                .min(image.width() - left)
                .min(image.height() - top);
            let cut = imageops::crop_imm(&image, left, top, side, side).to_image();
            cutouts.push(imageops::resize(&cut, TILE, TILE, FilterType::Triangle));
        }
    }
    assert_eq!(cutouts.len(), 22, "the reference file changed");
    let mut canvas = RgbImage::from_pixel(TILE * COLUMNS, TILE * ROWS, image::Rgb([128; 3]));
    for i in 0..COLUMNS * ROWS {
        let tile = &cutouts[i as usize % cutouts.len()];
        imageops::replace(
            &mut canvas,
            tile,
            i64::from(i % COLUMNS * TILE),
            i64::from(i / COLUMNS * TILE),
        );
    }
    canvas
}

#[test]
fn no_face_photos_answer_no_faces() {
    let Some(dir) = face_models::model_dir() else {
        return;
    };
    let models = FaceModels::load(&dir).unwrap();
    let mut photos: Vec<(String, RgbImage)> = [
        "landscape_dune.jpg",
        "landscape_meadow_444.jpg",
        "grey_wood.jpg",
    ]
    .into_iter()
    .map(|name| {
        let bytes = std::fs::read(repo().join("tests/fixtures/photos").join(name)).unwrap();
        (name.to_string(), decode_image(&bytes).unwrap())
    })
    .collect();
    // Shapes the detector's square resize must survive: a single pixel, a
    // sliver each way, and a flat grey field.
    for (width, height) in [(1, 1), (2, 3), (4000, 3), (3, 4000), (640, 480)] {
        photos.push((
            format!("{width}×{height} grey"),
            RgbImage::from_pixel(width, height, image::Rgb([128; 3])),
        ));
    }
    for (name, photo) in &photos {
        let found = faces(&models, photo, &FaceOptions::default());
        assert!(
            found.is_empty(),
            "{name}: {} faces in a faceless photo",
            found.len()
        );
    }
    let checked = photos.len();
    println!("{checked} faceless photos checked");
}

#[test]
fn a_crowd_is_found_one_face_per_tile_within_the_bound() {
    let Some(dir) = face_models::model_dir() else {
        return;
    };
    let models = FaceModels::load(&dir).unwrap();
    let photo = crowd(&dir.join("samples"));
    let tiles = (COLUMNS * ROWS) as usize;

    let all = faces(&models, &photo, &FaceOptions::default());
    let mut seen = vec![false; tiles];
    for face in &all {
        let [x, y, w, h] = face.bbox;
        let (cx, cy) = (x + w / 2.0, y + h / 2.0);
        let tile = (cy as u32 / TILE * COLUMNS + cx as u32 / TILE) as usize;
        assert!(tile < tiles, "face centred at ({cx}, {cy}) off the canvas");
        assert!(
            !seen[tile],
            "two faces in tile {tile} (reference face {})",
            tile % 22
        );
        seen[tile] = true;
        assert_eq!(face.descriptor.len(), 128);
    }
    println!("crowd: {} of {tiles} faces found", all.len());
    assert!(
        all.len() * 10 >= tiles * 8,
        "only {} of {tiles} faces found",
        all.len()
    );
    assert!(
        all.windows(2).all(|pair| pair[0].score >= pair[1].score),
        "faces not best first"
    );

    // The bound keeps the best ones and no more.
    let bounded = faces(
        &models,
        &photo,
        &FaceOptions {
            max_faces: 10,
            ..FaceOptions::default()
        },
    );
    assert_eq!(bounded.len(), 10);
    for (kept, best) in bounded.iter().zip(&all) {
        assert_eq!(kept.bbox, best.bbox);
    }
}
