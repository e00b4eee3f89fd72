//! `POST /api/albums/search` against a brute-force ranking computed from
//! `ongi embed`'s image and text embeddings of the same photos and query.

mod support;

use std::collections::HashMap;

use serde_json::json;
use support::{photo_dir, photo_names, OngiServer};

/// Normalised embeddings printed by `ongi embed --normalize ARGS...`, by input.
fn embed(args: &[&str]) -> HashMap<String, Vec<f32>> {
    support::cli_embeddings(std::iter::once("--normalize").chain(args.iter().copied()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn search_ranks_like_brute_force_and_rejects_bad_requests() {
    let photos = photo_dir();
    let store = tempfile::tempdir().unwrap();
    let server = OngiServer::start_over(
        photos.path(),
        &store.path().join("features.redb"),
        &[],
        None,
    );
    let keys = photo_names();
    assert!(keys.len() >= 8, "too few fixture photos: {keys:?}");
    let query = "a dog running on the beach";

    // Nothing embedded yet: 428 naming every key.
    let (status, body) = server
        .post(
            "/api/albums/search",
            &json!({"images": keys, "query": query}),
        )
        .await;
    assert_eq!((status, body["data"].clone()), (428, json!(keys)));

    let (status, body) = server
        .post("/api/albums/embedding", &json!({"images": keys}))
        .await;
    assert_eq!((status, body["data"].clone()), (201, json!(null)), "{body}");

    // The reference: cosine of each photo's embedding to the query's, by brute force.
    let paths: Vec<String> = keys
        .iter()
        .map(|k| photos.path().join(k).to_str().unwrap().to_string())
        .collect();
    let path_refs: Vec<&str> = paths.iter().map(String::as_str).collect();
    let images = embed(&path_refs);
    let text = embed(&["--text", query]);
    let q = &text[query];
    let reference: HashMap<&str, f32> = keys
        .iter()
        .zip(&paths)
        .map(|(k, p)| {
            (
                k.as_str(),
                images[p].iter().zip(q).map(|(a, b)| a * b).sum(),
            )
        })
        .collect();
    let mut ranked: Vec<(&str, f32)> = reference.iter().map(|(k, s)| (*k, *s)).collect();
    ranked.sort_by(|a, b| b.1.total_cmp(&a.1));

    // Repeated keys in the request are answered once; top_k bounds the answer.
    for top_k in [1usize, 3, keys.len() + 5] {
        let mut asked = keys.clone();
        asked.extend(keys.iter().take(3).cloned());
        let (status, body) = server
            .post(
                "/api/albums/search",
                &json!({"images": asked, "query": format!("  {query} "), "top_k": top_k}),
            )
            .await;
        assert_eq!(status, 201, "{body}");
        let got: Vec<(String, f32)> = body["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| {
                (
                    e["image"].as_str().unwrap().to_string(),
                    e["score"].as_f64().unwrap() as f32,
                )
            })
            .collect();
        let want = top_k.min(keys.len());
        assert_eq!(got.len(), want, "{body}");
        let mut seen = std::collections::HashSet::new();
        for (k, s) in &got {
            assert!(seen.insert(k.clone()), "{k} answered twice: {body}");
            assert!(
                (s - reference[k.as_str()]).abs() < 1e-4,
                "{k}: {s} vs {}",
                reference[k.as_str()]
            );
        }
        for pair in got.windows(2) {
            assert!(pair[0].1 >= pair[1].1, "not in score order: {body}");
        }
        // The answer is the reference's top `want`, up to scores the two
        // computations could order either way.
        let cutoff = ranked[want - 1].1;
        for (k, s) in &ranked {
            if *s > cutoff + 1e-4 {
                assert!(seen.contains(*k), "{k} ({s}) missing from {body}");
            }
        }
        for k in &seen {
            assert!(
                reference[k.as_str()] >= cutoff - 1e-4,
                "{k} should not be in {body}"
            );
        }
    }

    // Default top_k is 10.
    let (status, body) = server
        .post(
            "/api/albums/search",
            &json!({"images": keys, "query": query}),
        )
        .await;
    assert_eq!(status, 201);
    assert_eq!(body["data"].as_array().unwrap().len(), keys.len().min(10));

    // Bad requests: 400 with a reason in the envelope.
    let long = "x".repeat(1001);
    for (request, reason) in [
        (
            json!({"images": keys, "query": ""}),
            "query must not be empty",
        ),
        (
            json!({"images": keys, "query": " \t\n"}),
            "query must not be empty",
        ),
        (json!({"images": keys, "query": long}), "at most 1000"),
        (
            json!({"images": keys, "query": query, "top_k": 0}),
            "top_k must be at least 1",
        ),
        (json!({"images": keys}), "query"),
        (json!({"images": [], "query": query}), "images"),
        (
            json!({"images": keys, "query": query, "top_k": -1}),
            "top_k",
        ),
    ] {
        let (status, body) = server.post("/api/albums/search", &request).await;
        assert_eq!(
            (status, body["message"].clone()),
            (400, json!("invalid_request")),
            "{request}: {body}"
        );
        let data = body["data"].as_str().unwrap_or_default();
        assert!(data.contains(reason), "{request}: {data}");
    }
}
