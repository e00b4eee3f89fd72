//! Parity of ongi's CLIP (tokenizer, model, preprocessing) with transformers.
//!
//! References come from `scripts/make_fixtures.py`: transformers' embeddings of
//! the test photos and prompts on seeded random checkpoints. Two image checks
//! per model keep the error sources apart: the reference *pixels* through our
//! model (model error alone), and our decode + preprocessing through our model
//! (the whole pipeline). The bar is cosine ≥ 0.99999 everywhere.
//!
//! The full ViT-B/32-shaped checkpoint is too big to commit: set
//! `ONGI_PARITY_DIR` (e.g. `~/.cache/ongi`, written by
//! `make_fixtures.py --full`) to include it.

use ongi_test_support::real_photos;
mod support;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use ongi_core::preprocess::{
    decode_for_mode, decode_image_scaled, load_and_preprocess, preprocess_decoded, DecodeMode,
    PreprocessConfig, DEFAULT_MAX_PIXELS,
};
use ongi_core::tokenize::ClipTokenizer;
use ongi_model::{ClipModel, Precision, VisionKernels};
use ongi_test_support::fixtures::dir as fixtures;
use ongi_test_support::numeric::floats;
use serde_json::Value;
use support::cosine;

const MIN_COSINE: f64 = 0.99999;

struct Reference {
    images: Vec<(String, Vec<f32>)>,
    texts: Vec<(String, Vec<u32>, Vec<f32>)>,
}

fn read_reference(path: &Path) -> Reference {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    let json: Value = serde_json::from_str(&text).unwrap();
    let images = json["images"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            (
                i["file"].as_str().unwrap().to_string(),
                floats(&i["embedding"]),
            )
        })
        .collect();
    let texts = json["texts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            let ids = t["input_ids"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_u64().unwrap() as u32)
                .collect();
            (
                t["text"].as_str().unwrap().to_string(),
                ids,
                floats(&t["embedding"]),
            )
        })
        .collect();
    Reference { images, texts }
}

/// Checks every row of `got` against its reference; prints and returns the minimum.
fn check_rows(group: &str, labels: &[&str], got: &Tensor, want: &[&[f32]]) -> f64 {
    let got = got.to_vec2::<f32>().unwrap();
    assert_eq!(got.len(), want.len(), "{group}: row count");
    let mut min = f64::INFINITY;
    let mut failures = Vec::new();
    for ((g, w), label) in got.iter().zip(want).zip(labels) {
        let c = cosine(g, w);
        min = min.min(c);
        // NaN must fail too.
        if c.is_nan() || c < MIN_COSINE {
            failures.push(format!("{label}: cosine {c:.8}"));
        }
    }
    println!(
        "{group}: min cosine {min:.9} (1 - cos = {:.1e}) over {} rows",
        1.0 - min,
        got.len()
    );
    assert!(
        failures.is_empty(),
        "{group}: below {MIN_COSINE}: {failures:?}"
    );
    min
}

struct Fixture {
    name: &'static str,
    model_dir: PathBuf,
    reference: PathBuf,
    /// transformers' (PIL) pixel values of the photos, one `[3, H, W]` tensor per file.
    pixels: PathBuf,
}

fn tiny(name: &'static str, pixels: &str) -> Fixture {
    let f = fixtures();
    Fixture {
        name,
        model_dir: f.join(name),
        reference: f.join(format!("{name}.reference.json")),
        pixels: f.join(pixels),
    }
}

/// The full ViT-B/32-shaped model, when `ONGI_PARITY_DIR` says where it is.
fn vit_b32() -> Option<Fixture> {
    let Some(dir) = std::env::var_os("ONGI_PARITY_DIR") else {
        println!("vit-b32-random: skipped (set ONGI_PARITY_DIR, e.g. ~/.cache/ongi)");
        return None;
    };
    let dir = PathBuf::from(dir);
    Some(Fixture {
        name: "vit-b32-random",
        model_dir: dir.join("vit-b32-random"),
        reference: dir.join("vit-b32-random.reference.json"),
        // Same 224 px preprocessor config as tiny-clip.
        pixels: fixtures().join("pixels.reference.safetensors"),
    })
}

/// Token ids, text embeddings, and image embeddings from the reference
/// pixels: everything but decoding and preprocessing.
fn check_model(fx: &Fixture) {
    let name = fx.name;
    let reference = read_reference(&fx.reference);
    let device = Device::Cpu;
    let model = ClipModel::load(&fx.model_dir, &device, Precision::F32).unwrap();
    let tokenizer = ClipTokenizer::from_model_dir(&fx.model_dir).unwrap();

    // Tokenizer: ids identical to transformers' CLIPTokenizer.
    for (text, want_ids, _) in &reference.texts {
        assert_eq!(
            &tokenizer.encode(text).unwrap(),
            want_ids,
            "{name}: ids of {text:?}"
        );
    }

    // Text tower, one padded batch (exercises padding after EOS).
    let texts: Vec<&str> = reference.texts.iter().map(|t| t.0.as_str()).collect();
    let (ids, batch, seq) = tokenizer.encode_batch_padded(&texts).unwrap();
    let got = model.text_features_from_ids(&ids, batch, seq).unwrap();
    let want: Vec<&[f32]> = reference.texts.iter().map(|t| t.2.as_slice()).collect();
    check_rows(&format!("{name} texts (batched)"), &texts, &got, &want);
    // And each text alone, unpadded, through the Tensor entry point.
    let mut rows = Vec::new();
    for text in &texts {
        let ids = tokenizer.encode(text).unwrap();
        let n = ids.len();
        let ids = Tensor::from_vec(ids, (1, n), &device).unwrap();
        rows.push(model.text_features(&ids).unwrap());
    }
    let got = Tensor::cat(&rows, 0).unwrap();
    check_rows(&format!("{name} texts (single)"), &texts, &got, &want);

    // Images: the reference pixels in, one batch, through the default (fused
    // CPU) vision forward and through candle's ops; same bar for both.
    let labels: Vec<&str> = reference.images.iter().map(|i| i.0.as_str()).collect();
    let want: Vec<&[f32]> = reference.images.iter().map(|i| i.1.as_slice()).collect();
    let pixels = Tensor::stack(&reference_pixels(&fx.pixels, &labels), 0).unwrap();
    assert_eq!(model.vision_kernels(), VisionKernels::Fused);
    let got = model.image_features(&pixels).unwrap();
    check_rows(
        &format!("{name} images, fused (reference pixels)"),
        &labels,
        &got,
        &want,
    );
    drop(model);
    let candle = ClipModel::load_with_kernels(
        &fx.model_dir,
        &device,
        Precision::F32,
        VisionKernels::Candle,
    )
    .unwrap();
    let got = candle.image_features(&pixels).unwrap();
    check_rows(
        &format!("{name} images, candle (reference pixels)"),
        &labels,
        &got,
        &want,
    );
}

fn reference_pixels(path: &Path, files: &[&str]) -> Vec<Tensor> {
    let tensors = candle_core::safetensors::load(path, &Device::Cpu).unwrap();
    files
        .iter()
        .map(|file| {
            tensors
                .get(*file)
                .unwrap_or_else(|| panic!("{} has no tensor {file}", path.display()))
                .clone()
        })
        .collect()
}

/// Image embeddings from ongi's own decode + preprocessing: the whole image
/// path. Also prints how far our pixels are from transformers', per photo,
/// to tell preprocessing error from model error when this fails.
fn check_pipeline(fx: &Fixture) {
    let name = fx.name;
    let reference = read_reference(&fx.reference);
    let device = Device::Cpu;
    let model = ClipModel::load(&fx.model_dir, &device, Precision::F32).unwrap();
    let labels: Vec<&str> = reference.images.iter().map(|i| i.0.as_str()).collect();
    let want: Vec<&[f32]> = reference.images.iter().map(|i| i.1.as_slice()).collect();
    let size = model.image_size();
    let config = PreprocessConfig::from_model_dir(&fx.model_dir).unwrap();
    let ref_pixels = reference_pixels(&fx.pixels, &labels);
    let mut flat = Vec::new();
    for (file, want_px) in labels.iter().zip(&ref_pixels) {
        let bytes = std::fs::read(fixtures().join(file)).unwrap();
        // The exact decode: the parity bar holds for it, not for the fast one.
        let ours = load_and_preprocess(&bytes, &config, DecodeMode::Exact).unwrap();
        let theirs = want_px.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(ours.len(), theirs.len(), "{name} {file}: pixel count");
        let diffs: Vec<f32> = ours
            .iter()
            .zip(&theirs)
            .map(|(a, b)| (a - b).abs())
            .collect();
        let max = diffs.iter().fold(0f32, |m, &d| m.max(d));
        // One u8 level is 1/255/std ≈ 0.0147 after normalisation.
        let off = diffs.iter().filter(|&&d| d > 1e-4).count();
        println!(
            "{name} pixels {file}: max |diff| {max:.4}, {off} of {} values differ",
            diffs.len()
        );
        flat.extend(ours);
    }
    let batch = Tensor::from_vec(flat, (labels.len(), 3, size, size), &device).unwrap();
    let got = model.image_features(&batch).unwrap();
    check_rows(
        &format!("{name} images (ongi preprocessing)"),
        &labels,
        &got,
        &want,
    );
}

#[test]
fn tiny_clip_model_matches_transformers() {
    check_model(&tiny("tiny-clip", "pixels.reference.safetensors"));
}

#[test]
fn tiny_clip_gelu_model_matches_transformers() {
    check_model(&tiny("tiny-clip-gelu", "pixels64.reference.safetensors"));
}

#[test]
fn vit_b32_random_model_matches_transformers() {
    if let Some(fx) = vit_b32() {
        check_model(&fx);
    }
}

#[test]
fn tiny_clip_pipeline_matches_transformers() {
    check_pipeline(&tiny("tiny-clip", "pixels.reference.safetensors"));
}

#[test]
fn tiny_clip_gelu_pipeline_matches_transformers() {
    check_pipeline(&tiny("tiny-clip-gelu", "pixels64.reference.safetensors"));
}

#[test]
fn vit_b32_random_pipeline_matches_transformers() {
    if let Some(fx) = vit_b32() {
        check_pipeline(&fx);
    }
}

/// Real photos for the fast-decode checks (see the shared support file).
fn real_photos() -> Option<Vec<PathBuf>> {
    let dir = real_photos::photo_dir()?;
    Some(real_photos::jpegs(&dir))
}

/// Issue #5: on real photos, embeddings from the DCT-reduced decode stay within
/// cosine 0.995 of the exact decode's, through the full-size ViT-B/32 shape.
#[test]
fn vit_b32_random_fast_decode_stays_close_to_exact() {
    const MIN_FAST_COSINE: f64 = 0.995;
    let Some(fx) = vit_b32() else { return };
    let Some(photos) = real_photos() else { return };
    assert!(!photos.is_empty(), "no JPEGs among the real photos");
    let device = Device::Cpu;
    let model = ClipModel::load(&fx.model_dir, &device, Precision::F32).unwrap();
    let config = PreprocessConfig::from_model_dir(&fx.model_dir).unwrap();
    let size = model.image_size();
    // `serving`: the server's decode, which in fast mode reduces the colour
    // from the full-size pass that also feeds the pixel features.
    let embed = |mode: DecodeMode, serving: bool| {
        let mut flat = Vec::new();
        for path in &photos {
            let bytes = std::fs::read(path).unwrap();
            flat.extend(if serving {
                let min = mode.min_decode_size(&config);
                let decoded = decode_for_mode(&bytes, DEFAULT_MAX_PIXELS, min, mode).unwrap();
                preprocess_decoded(&decoded, &config)
            } else {
                load_and_preprocess(&bytes, &config, mode).unwrap()
            });
        }
        let batch = Tensor::from_vec(flat, (photos.len(), 3, size, size), &device).unwrap();
        model
            .image_features(&batch)
            .unwrap()
            .to_vec2::<f32>()
            .unwrap()
    };
    let exact = embed(DecodeMode::Exact, false);
    let (fast, serving) = (
        embed(DecodeMode::Fast, false),
        embed(DecodeMode::Fast, true),
    );
    let mut min = f64::INFINITY;
    let mut min_serving = f64::INFINITY;
    let mut scaled = 0;
    for (((path, e), f), s) in photos.iter().zip(&exact).zip(&fast).zip(&serving) {
        let bytes = std::fs::read(path).unwrap();
        let min_edge = DecodeMode::Fast.min_decode_size(&config);
        let denom = decode_image_scaled(&bytes, DEFAULT_MAX_PIXELS, min_edge)
            .unwrap()
            .scale_denom;
        scaled += usize::from(denom > 1);
        let (cos, cos_serving) = (cosine(e, f), cosine(e, s));
        println!(
            "vit-b32-random fast vs exact {}: 1/{denom}, cosine {cos:.6} (DCT-reduced), {cos_serving:.6} (serving: box-reduced planes)",
            path.display()
        );
        min = min.min(cos);
        min_serving = min_serving.min(cos_serving);
    }
    println!("vit-b32-random fast vs exact: min cosine {min:.6} DCT-reduced, {min_serving:.6} serving, over {} photos ({scaled} reduced), bar {MIN_FAST_COSINE}", photos.len());
    assert!(scaled > 0, "no photo was decoded reduced");
    assert!(
        min >= MIN_FAST_COSINE,
        "min cosine {min} < {MIN_FAST_COSINE}"
    );
    assert!(
        min_serving >= MIN_FAST_COSINE,
        "serving min cosine {min_serving} < {MIN_FAST_COSINE}"
    );
}

/// Copies the tiny fixture into a temp dir, for breaking it.
fn tiny_copy() -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(fixtures().join("tiny-clip")).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), tmp.path().join(entry.file_name())).unwrap();
    }
    tmp
}

fn load_err(dir: &Path) -> String {
    ClipModel::load(dir, &Device::Cpu, Precision::F32)
        .unwrap_err()
        .to_string()
}

#[test]
fn missing_weights_file_is_named() {
    let tmp = tiny_copy();
    std::fs::remove_file(tmp.path().join("model.safetensors")).unwrap();
    let e = load_err(tmp.path());
    assert!(e.contains("model.safetensors"), "{e}");
}

#[test]
fn unsupported_activation_names_file_and_field() {
    let tmp = tiny_copy();
    let path = tmp.path().join("config.json");
    let mut config: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    config["vision_config"]["hidden_act"] = Value::from("swish");
    std::fs::write(&path, config.to_string()).unwrap();
    let e = load_err(tmp.path());
    assert!(e.contains("config.json"), "{e}");
    assert!(e.contains("vision_config.hidden_act"), "{e}");
    assert!(e.contains("swish"), "{e}");
}

#[test]
fn wrong_shaped_tensor_is_named() {
    let tmp = tiny_copy();
    let path = tmp.path().join("model.safetensors");
    let mut tensors: HashMap<String, Tensor> =
        candle_core::safetensors::load(&path, &Device::Cpu).unwrap();
    let name = "text_model.encoder.layers.1.mlp.fc1.weight";
    let (rows, cols) = tensors[name].dims2().unwrap();
    // Same element count, wrong shape: only a shape check catches it.
    tensors.insert(
        name.to_string(),
        tensors[name].reshape((cols, rows)).unwrap(),
    );
    candle_core::safetensors::save(&tensors, &path).unwrap();
    let e = load_err(tmp.path());
    assert!(e.contains("model.safetensors"), "{e}");
    assert!(e.contains(name), "{e}");

    tensors.remove(name);
    candle_core::safetensors::save(&tensors, &path).unwrap();
    let e = load_err(tmp.path());
    assert!(e.contains(name) && e.contains("missing"), "{e}");
}

#[test]
fn batched_and_single_images_agree() {
    // Batching must not change a row (no cross-talk between images).
    let f = fixtures();
    let model = ClipModel::load(&f.join("tiny-clip"), &Device::Cpu, Precision::F32).unwrap();
    let tensors =
        candle_core::safetensors::load(f.join("pixels.reference.safetensors"), &Device::Cpu)
            .unwrap();
    let mut names: Vec<&String> = tensors.keys().collect();
    names.sort();
    let batch: Vec<Tensor> = names.iter().map(|n| tensors[*n].clone()).collect();
    let all = model
        .image_features(&Tensor::stack(&batch, 0).unwrap())
        .unwrap()
        .to_vec2::<f32>()
        .unwrap();
    for (i, t) in batch.iter().enumerate() {
        let one = model
            .image_features(&t.unsqueeze(0).unwrap())
            .unwrap()
            .to_vec2::<f32>()
            .unwrap();
        assert!(cosine(&one[0], &all[i]) > 0.999_999, "{}", names[i]);
    }
}

#[test]
fn half_precision_stays_close() {
    // f16 is for accelerators (on a CPU without native half precision it is
    // many times slower), but must work anywhere:
    // same embeddings up to the precision of the format.
    let fx = tiny("tiny-clip", "pixels.reference.safetensors");
    let reference = read_reference(&fx.reference);
    let labels: Vec<&str> = reference.images.iter().map(|i| i.0.as_str()).collect();
    let pixels = Tensor::stack(&reference_pixels(&fx.pixels, &labels), 0).unwrap();
    let texts: Vec<&str> = reference.texts.iter().map(|t| t.0.as_str()).collect();
    let tokenizer = ClipTokenizer::from_model_dir(&fx.model_dir).unwrap();
    let (ids, batch, seq) = tokenizer.encode_batch_padded(&texts).unwrap();
    // Measured: f16 0.999999, bf16 0.99991 (8 mantissa bits).
    // bf16 runs the fused forward's bf16 kernels on the vision side and f32
    // on the text side; f16 runs candle's ops throughout.
    for (dtype, bar) in [(Precision::F16, 0.9999), (Precision::Bf16, 0.999)] {
        let model = ClipModel::load(&fx.model_dir, &Device::Cpu, dtype).unwrap();
        assert_eq!(model.precision(), dtype);
        let images = model.image_features(&pixels).unwrap();
        assert_eq!(images.dtype(), DType::F32);
        let texts_out = model.text_features_from_ids(&ids, batch, seq).unwrap();
        for (group, got, want) in [
            (
                "images",
                images,
                reference.images.iter().map(|i| &i.1).collect::<Vec<_>>(),
            ),
            (
                "texts",
                texts_out,
                reference.texts.iter().map(|t| &t.2).collect(),
            ),
        ] {
            let got = got.to_vec2::<f32>().unwrap();
            let min = got
                .iter()
                .zip(want)
                .map(|(g, w)| cosine(g, w))
                .fold(f64::INFINITY, f64::min);
            println!("tiny-clip {dtype:?} {group}: min cosine {min:.6}");
            assert!(min >= bar, "{dtype:?} {group}: {min}");
        }
    }
}
