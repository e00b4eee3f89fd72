//! `POST /api/albums/people` on real faces (face-api's sample photos),
//! through `ongi serve --face-model`: the body in the original's shape, 428
//! for photos never embedded and for photos embedded before faces were
//! enabled, and the answer from the stored faces alone.

use ongi_test_support::face_models;
mod support;

use serde_json::{json, Value};
use support::{fixtures, OngiServer};

/// Checks one person entry against the original's schema: exactly `images`
/// (strings) and `representative_face` (exactly `image` and `bbox`, four
/// integers, a non-empty box), the representative being the first image.
fn check_person(person: &Value) {
    let object = person.as_object().unwrap();
    assert_eq!(
        object.keys().collect::<Vec<_>>(),
        ["images", "representative_face"],
        "{person}"
    );
    let images: Vec<&str> = person["images"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    let face = person["representative_face"].as_object().unwrap();
    assert_eq!(
        face.keys().collect::<Vec<_>>(),
        ["bbox", "image"],
        "{person}"
    );
    assert_eq!(face["image"], images[0], "{person}");
    let bbox: Vec<i64> = face["bbox"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_i64().unwrap())
        .collect();
    assert!(
        bbox.len() == 4 && bbox[0] < bbox[2] && bbox[1] < bbox[3],
        "{person}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn people_are_answered_from_the_faces_found_while_embedding() {
    let Some(models) = face_models::model_dir() else {
        return;
    };
    let models = models.to_str().unwrap().to_string();
    let photos = tempfile::tempdir().unwrap();
    for n in 1..=6 {
        let name = format!("sample{n}.jpg");
        std::fs::copy(
            std::path::Path::new(&models).join("samples").join(&name),
            photos.path().join(&name),
        )
        .unwrap();
    }
    std::fs::copy(
        photos.path().join("sample1.jpg"),
        photos.path().join("sample1-copy.jpg"),
    )
    .unwrap();
    std::fs::copy(
        fixtures().join("photos/corrupt.jpg"),
        photos.path().join("corrupt.jpg"),
    )
    .unwrap();
    let store = tempfile::tempdir().unwrap();
    let store = store.path().join("features.redb");

    // Embedded by a server without face models: its faces are unknown.
    let mut plain = OngiServer::start_over(photos.path(), &store, &[], None);
    let (status, _) = plain
        .post("/api/albums/embedding", &json!({"images": ["sample2.jpg"]}))
        .await;
    assert_eq!(status, 201);
    let (status, body) = plain
        .post("/api/albums/people", &json!({"images": ["sample2.jpg"]}))
        .await;
    assert_eq!(
        (status, body),
        (
            400,
            json!({"message": "invalid_request", "data": "people needs face models: this server was started without --face-model"})
        )
    );
    plain.stop();

    let server = OngiServer::start_over(photos.path(), &store, &["--face-model", &models], None);
    let (status, body) = server
        .post(
            "/api/albums/people",
            &json!({"images": ["sample2.jpg", "sample3.jpg"]}),
        )
        .await;
    assert_eq!(
        (status, body),
        (
            428,
            json!({"message": "embedding_required", "data": ["sample3.jpg"]})
        )
    );
    let (status, body) = server
        .post("/api/albums/people", &json!({"images": ["sample2.jpg"]}))
        .await;
    assert_eq!(
        (status, body),
        (
            428,
            json!({"message": "embedding_required", "data": ["sample2.jpg"]})
        )
    );

    let album: Vec<String> = (1..=6)
        .map(|n| format!("sample{n}.jpg"))
        .chain(["sample1-copy.jpg".to_string()])
        .collect();
    let mut with_corrupt = album.clone();
    with_corrupt.push("corrupt.jpg".into());
    let (status, body) = server
        .post("/api/albums/embedding", &json!({"images": with_corrupt}))
        .await;
    assert_eq!(
        (status, body),
        (201, json!({"message": "success", "data": ["corrupt.jpg"]}))
    );
    assert!(
        server
            .metric("ongi_stage_seconds_count{stage=\"faces\"}")
            .await
            >= 7.0
    );

    // The photos are gone: people reads stored faces only.
    for name in &album {
        std::fs::remove_file(photos.path().join(name)).unwrap();
    }
    let (status, body) = server
        .post("/api/albums/people", &json!({"images": album}))
        .await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["message"], "success");
    let persons = body["data"].as_array().unwrap();
    persons.iter().for_each(check_person);
    // Each of sample1's three faces is found in its copy too, and no two
    // different people of the samples are as close as a face and its copy.
    let images: Vec<&Value> = persons.iter().map(|p| &p["images"]).collect();
    assert_eq!(
        images,
        vec![&json!(["sample1.jpg", "sample1-copy.jpg"]); 3],
        "{body}"
    );
    // The representatives are sample1's faces where face-api puts them.
    let reference: Value = serde_json::from_slice(
        &std::fs::read(fixtures().join("faces/face-api-reference.json")).unwrap(),
    )
    .unwrap();
    let boxes: Vec<[f64; 4]> = reference["photos"][0]["faces"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            let b: Vec<f64> = f["box"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_f64().unwrap())
                .collect();
            [b[0], b[1], b[0] + b[2], b[1] + b[3]]
        })
        .collect();
    for person in persons {
        let bbox: Vec<f64> = person["representative_face"]["bbox"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect();
        let nearest = boxes
            .iter()
            .map(|b| {
                b.iter()
                    .zip(&bbox)
                    .map(|(x, y)| (x - y).abs())
                    .fold(0.0, f64::max)
            })
            .fold(f64::INFINITY, f64::min);
        assert!(
            nearest <= 6.0,
            "{bbox:?} is {nearest} px from every reference face of sample1"
        );
    }
    println!(
        "{} persons checked against the reference boxes",
        persons.len()
    );
}
