//! People on real faces: face-api's six sample photos plus edited copies of
//! each (resized, recompressed, mirrored, cropped around one face), through
//! ongi's decoder, face models and clustering with the default constants.
//!
//! Every copy of a face must land in its source face's cluster, and no
//! cluster may hold two different faces of one source photo.

use ongi_test_support::face_models;

use std::collections::HashMap;
use std::io::Cursor;

use image::{imageops, DynamicImage, RgbImage};
use ongi_core::analysis::people::{face_clusters, people, PeopleConfig};
use ongi_core::faces::FaceFinder;
use ongi_core::features::{FaceRecord, FeatureRecord};
use ongi_core::preprocess::{decode_image, DecodedImage};
use ongi_model::face::FaceOptions;

/// How a copy's pixel frame maps back to its source photo's.
/// A source face: its sample photo (0-based) and its index there.
type Identity = (usize, usize);

#[derive(Clone, Copy)]
enum Edit {
    Original,
    Resized(f32),
    Recompressed,
    Mirrored(u32),
    Cropped(u32, u32),
}

impl Edit {
    fn to_source(self, [x1, y1, x2, y2]: [i32; 4]) -> [f32; 4] {
        let b = [x1 as f32, y1 as f32, x2 as f32, y2 as f32];
        match self {
            Edit::Original | Edit::Recompressed => b,
            Edit::Resized(s) => b.map(|v| v / s),
            Edit::Mirrored(w) => [w as f32 - b[2], b[1], w as f32 - b[0], b[3]],
            Edit::Cropped(x, y) => [
                b[0] + x as f32,
                b[1] + y as f32,
                b[2] + x as f32,
                b[3] + y as f32,
            ],
        }
    }
}

fn jpeg(image: &RgbImage, quality: u8) -> Vec<u8> {
    let mut out = Cursor::new(Vec::new());
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, quality)
        .encode_image(&DynamicImage::ImageRgb8(image.clone()))
        .unwrap();
    out.into_inner()
}

fn iou(a: [f32; 4], b: [f32; 4]) -> f32 {
    let ix = a[2].min(b[2]) - a[0].max(b[0]);
    let iy = a[3].min(b[3]) - a[1].max(b[1]);
    let inter = ix.max(0.0) * iy.max(0.0);
    inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)
}

fn record(faces: Vec<FaceRecord>) -> FeatureRecord {
    FeatureRecord {
        embedding: vec![],
        phash: 0,
        laplacian_var: 0.0,
        width: 0,
        height: 0,
        faces: Some(faces),
    }
}

#[test]
fn copies_of_a_face_cluster_with_it_and_faces_of_one_photo_stay_apart() {
    let Some(dir) = face_models::model_dir() else {
        return;
    };
    let finder = FaceFinder::load(&dir, FaceOptions::default()).unwrap();
    let find = |bytes: &[u8]| {
        finder
            .faces(&DecodedImage::full(decode_image(bytes).unwrap()))
            .unwrap()
    };

    let mut album: Vec<(String, FeatureRecord)> = Vec::new();
    // Per album key: its source photo and how its frame maps to the source's.
    let mut edits: HashMap<String, (usize, Edit)> = HashMap::new();
    let mut sources: Vec<Vec<FaceRecord>> = Vec::new();
    for n in 1..=6 {
        let bytes = std::fs::read(dir.join(format!("samples/sample{n}.jpg"))).unwrap();
        let photo = decode_image(&bytes).unwrap();
        let (w, h) = photo.dimensions();
        let faces = find(&bytes);
        assert!(faces.len() >= 3, "sample{n}: {} faces", faces.len());
        // Cropped around the first face with a face's width and height of margin.
        let [x1, y1, x2, y2] = faces[0].bbox.map(|v| v.max(0) as u32);
        let (cx, cy) = (x1.saturating_sub(x2 - x1), y1.saturating_sub(y2 - y1));
        let crop = imageops::crop_imm(
            &photo,
            cx,
            cy,
            (3 * (x2 - x1)).min(w - cx),
            (3 * (y2 - y1)).min(h - cy),
        )
        .to_image();
        let resized =
            imageops::resize(&photo, w * 3 / 5, h * 3 / 5, imageops::FilterType::Triangle);
        let copies = [
            (Edit::Original, bytes.clone()),
            (Edit::Resized(0.6), jpeg(&resized, 90)),
            (Edit::Recompressed, jpeg(&photo, 40)),
            (
                Edit::Mirrored(w),
                jpeg(&imageops::flip_horizontal(&photo), 90),
            ),
            (Edit::Cropped(cx, cy), jpeg(&crop, 90)),
        ];
        for (edit, bytes) in copies {
            let key = format!(
                "sample{n}-{}",
                ["original", "resized", "recompressed", "mirrored", "cropped"][album.len() % 5]
            );
            let found = if matches!(edit, Edit::Original) {
                faces.clone()
            } else {
                find(&bytes)
            };
            edits.insert(key.clone(), (n - 1, edit));
            album.push((key, record(found)));
        }
        sources.push(faces);
    }

    // Each face's identity: the source face its box maps onto.
    let identity = |key: &str, bbox: [i32; 4]| -> Option<Identity> {
        let (photo, edit) = edits[key];
        let mapped = edit.to_source(bbox);
        sources[photo]
            .iter()
            .enumerate()
            .map(|(i, f)| (i, iou(mapped, f.bbox.map(|v| v as f32))))
            .filter(|&(_, o)| o >= 0.5)
            .max_by(|a, b| a.1.total_cmp(&b.1))
            .map(|(i, _)| (photo, i))
    };

    // Distances for the record: within one identity and across identities.
    let cfg = PeopleConfig::default();
    let all: Vec<(Option<Identity>, Vec<f32>)> = album
        .iter()
        .flat_map(|(k, r)| r.faces.iter().flatten().map(move |f| (k, f)))
        .map(|(k, f)| {
            (
                identity(k, f.bbox),
                ongi_core::analysis::normalized(&f.embedding),
            )
        })
        .collect();
    let (mut same, mut different) = (0.0f32, f32::INFINITY);
    for (a, (ia, ea)) in all.iter().enumerate() {
        for (ib, eb) in &all[a + 1..] {
            let d = 1.0 - ea.iter().zip(eb).map(|(x, y)| x * y).sum::<f32>();
            match (ia, ib) {
                (Some(x), Some(y)) if x == y => same = same.max(d),
                (Some(_), Some(_)) => different = different.min(d),
                _ => {}
            }
        }
    }
    println!("cosine distance: copies of one face ≤ {same:.4}, different faces ≥ {different:.4} (eps {})", cfg.eps);

    let clusters = face_clusters(&album, &cfg);
    let persons = people(&album, &cfg);
    assert_eq!(persons.len(), clusters.len());
    let mut cluster_of: HashMap<Identity, usize> = HashMap::new();
    let mut checked_faces = 0;
    for (c, members) in clusters.iter().enumerate() {
        let keys: Vec<&String> = members.iter().map(|&(r, _)| &album[r].0).collect();
        assert_eq!(persons[c].images.iter().collect::<Vec<_>>(), keys);
        let identities: Vec<Option<Identity>> = members
            .iter()
            .map(|&(r, f)| identity(&album[r].0, album[r].1.faces.as_ref().unwrap()[f].bbox))
            .collect();
        let mut photos: HashMap<usize, Identity> = HashMap::new();
        for id in identities.iter().flatten() {
            if let Some(other) = photos.insert(id.0, *id) {
                assert_eq!(
                    other,
                    *id,
                    "cluster {c} ({keys:?}) holds two faces of sample{}",
                    id.0 + 1
                );
            }
            if let Some(before) = cluster_of.insert(*id, c) {
                assert_eq!(
                    before,
                    c,
                    "sample{} face {} is split over clusters {before} and {c}",
                    id.0 + 1,
                    id.1
                );
            }
        }
        checked_faces += members.len();
    }
    // Every source face with a copy found must be in a cluster.
    let mut checked_identities = 0;
    for (photo, faces) in sources.iter().enumerate() {
        for i in 0..faces.len() {
            let copies = all.iter().filter(|(id, _)| *id == Some((photo, i))).count();
            if copies >= 2 {
                assert!(
                    cluster_of.contains_key(&(photo, i)),
                    "sample{}: face {i} ({copies} copies) is in no cluster",
                    photo + 1
                );
                checked_identities += 1;
            }
        }
    }
    println!(
        "{} photos, {} faces found, {} faces in {} clusters, {checked_identities} source faces each with all its copies",
        album.len(),
        all.len(),
        checked_faces,
        persons.len()
    );
    assert!(
        checked_identities >= 20,
        "only {checked_identities} source faces checked"
    );
}
