//! The face models of `@vladmandic/face-api` and their sample photos.
//!
//! `ONGI_FACE_MODELS`, else the cache directory `scripts/test-deps` fills
//! with `scripts/fetch-face-models.sh`.

use std::path::PathBuf;

/// Where `scripts/test-deps` puts the models.
pub fn default_dir() -> PathBuf {
    crate::cache_dir().join("face-models/face-api-1.7.15")
}

/// The model directory; `None` (the caller skips, loudly) when it is absent,
/// a panic when it is absent under CI.
pub fn model_dir() -> Option<PathBuf> {
    let dir = std::env::var_os("ONGI_FACE_MODELS").map_or_else(default_dir, PathBuf::from);
    let present = dir
        .join("ssd_mobilenetv1_model-weights_manifest.json")
        .is_file();
    let remedy = format!(
        "run scripts/fetch-face-models.sh {} or set ONGI_FACE_MODELS",
        dir.display()
    );
    crate::present_or_skip(dir, present, "face models", &remedy)
}
