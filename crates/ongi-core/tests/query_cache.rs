//! Search queries are embedded once per model: the normalised text embedding
//! is stored and read back instead of running the text tower again.

use std::path::Path;
use std::sync::Arc;

use candle_core::Device;
use ongi_core::encoder::ClipTextEncoder;
use ongi_core::store::open_store;
use ongi_core::text_cache::TextEmbeddings;
use ongi_core::tokenize::ClipTokenizer;
use ongi_model::{ClipModel, Precision};

#[tokio::test]
async fn a_query_embedding_is_computed_once_then_read_from_the_store() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/tiny-clip");
    let model = Arc::new(ClipModel::load(&dir, &Device::Cpu, Precision::F32).unwrap());
    let text = Arc::new(ClipTextEncoder::new(
        model,
        ClipTokenizer::from_model_dir(&dir).unwrap(),
    ));
    let tmp = tempfile::tempdir().unwrap();
    let store = open_store(tmp.path().join("f.redb").to_str().unwrap(), None)
        .await
        .unwrap();
    let queries = TextEmbeddings::new(text.clone(), store.clone(), "tiny".into());

    // First time: the text tower's output, normalised, and now in the store.
    let v = queries.query("a dog on the beach").await.unwrap();
    let raw = text.encode(&["a dog on the beach"], 1).unwrap().remove(0);
    let norm = raw.iter().map(|x| x * x).sum::<f32>().sqrt();
    assert!(norm > 0.0);
    assert_eq!(v.len(), raw.len());
    for (a, b) in v.iter().zip(&raw) {
        assert!((a - b / norm).abs() < 1e-6, "{a} vs {}", b / norm);
    }
    let blob = store
        .get_blob("tiny", "query:v1:a dog on the beach")
        .await
        .unwrap()
        .expect("the query's embedding was not cached");
    assert_eq!(blob.len(), 4 * v.len());

    // Second time: whatever the store holds is the answer (here a planted
    // vector the text tower could not have produced).
    let planted: Vec<f32> = (0..v.len())
        .map(|i| if i == 0 { 1.0 } else { 0.0 })
        .collect();
    let bytes: Vec<u8> = planted.iter().flat_map(|x| x.to_le_bytes()).collect();
    store
        .put_blob("tiny", "query:v1:a dog on the beach", &bytes)
        .await
        .unwrap();
    assert_eq!(queries.query("a dog on the beach").await.unwrap(), planted);

    // Another model's namespace does not see it.
    let other = TextEmbeddings::new(text, store.clone(), "other".into());
    assert_ne!(other.query("a dog on the beach").await.unwrap(), planted);
}
