//! `preprocessor_config.json`: the CLIP image processor settings of a model directory.

use std::collections::BTreeMap;
use std::path::Path;

use ongi_model::config::{from_json, JsonError};
use ongi_model::ModelDir;
use serde::de::Error as _;
use serde::{Deserialize, Deserializer};

use super::PreprocessError;

/// Largest size (pixels) accepted for `shortest_edge` and the crop: far above any
/// CLIP variant, low enough that a typo cannot make us allocate gigabytes per image.
const MAX_EDGE: u64 = 8192;

/// OpenAI CLIP's normalisation mean (transformers' `OPENAI_CLIP_MEAN`).
pub const OPENAI_CLIP_MEAN: [f32; 3] = [0.481_454_66, 0.457_827_5, 0.408_210_73];
/// OpenAI CLIP's normalisation standard deviation (transformers' `OPENAI_CLIP_STD`).
// Written with transformers' decimals so they can be compared by eye; they round to
// the same f32 as the shorter forms clippy suggests.
#[allow(clippy::excessive_precision)]
pub const OPENAI_CLIP_STD: [f32; 3] = [0.268_629_54, 0.261_302_58, 0.275_777_11];

/// Resampling filter, numbered as PIL numbers them (`PIL.Image.Resampling`).
///
/// Nearest (0) is absent: Pillow implements it as an affine transform rather than
/// a convolution, and no CLIP checkpoint uses it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resample {
    /// PIL code 1: Lanczos (truncated sinc, support 3).
    Lanczos,
    /// PIL code 2: bilinear (triangle, support 1).
    Bilinear,
    /// PIL code 3: bicubic (Keys, a = -0.5, support 2); CLIP's filter.
    Bicubic,
    /// PIL code 4: box (area average, support 0.5).
    Box,
    /// PIL code 5: Hamming-windowed sinc (support 1).
    Hamming,
}

impl Resample {
    /// The filter for a PIL resampling code, or `None` for codes not implemented here.
    pub fn from_pil_code(code: u64) -> Option<Self> {
        match code {
            1 => Some(Self::Lanczos),
            2 => Some(Self::Bilinear),
            3 => Some(Self::Bicubic),
            4 => Some(Self::Box),
            5 => Some(Self::Hamming),
            _ => None,
        }
    }

    /// PIL's code for this filter (the value stored in `preprocessor_config.json`).
    pub fn pil_code(self) -> u8 {
        match self {
            Self::Lanczos => 1,
            Self::Bilinear => 2,
            Self::Bicubic => 3,
            Self::Box => 4,
            Self::Hamming => 5,
        }
    }
}

/// Settings read from a model directory's preprocessor_config.json (defaults = CLIP ViT-B/32's).
#[derive(Debug, Clone, PartialEq)]
pub struct PreprocessConfig {
    /// Target length of the image's shorter side after resizing (`size.shortest_edge`).
    pub shortest_edge: u32,
    /// Height of the centre crop (`crop_size.height`).
    pub crop_height: u32,
    /// Width of the centre crop (`crop_size.width`).
    pub crop_width: u32,
    /// Whether to resize (`do_resize`).
    pub do_resize: bool,
    /// Whether to centre-crop (`do_center_crop`); without it the output has the
    /// resized image's size, which differs per image.
    pub do_center_crop: bool,
    /// Whether to multiply the u8 values by `rescale_factor` (`do_rescale`).
    pub do_rescale: bool,
    /// Multiplier applied to u8 values (`rescale_factor`, 1/255 for CLIP).
    pub rescale_factor: f32,
    /// Whether to normalise with `image_mean` / `image_std` (`do_normalize`).
    pub do_normalize: bool,
    /// Per-channel (R, G, B) mean subtracted after rescaling.
    pub image_mean: [f32; 3],
    /// Per-channel (R, G, B) standard deviation divided by after subtracting the mean.
    pub image_std: [f32; 3],
    /// Resampling filter of the resize (`resample`, PIL code).
    pub resample: Resample,
}

impl Default for PreprocessConfig {
    /// The values of `openai/clip-vit-base-patch32`'s preprocessor_config.json.
    fn default() -> Self {
        Self {
            shortest_edge: 224,
            crop_height: 224,
            crop_width: 224,
            do_resize: true,
            do_center_crop: true,
            do_rescale: true,
            rescale_factor: (1.0f64 / 255.0) as f32,
            do_normalize: true,
            image_mean: OPENAI_CLIP_MEAN,
            image_std: OPENAI_CLIP_STD,
            resample: Resample::Bicubic,
        }
    }
}

impl PreprocessConfig {
    /// Reads a `preprocessor_config.json`. Missing keys keep their CLIP defaults;
    /// keys that do not change the computation are ignored; values this
    /// implementation cannot honour are errors naming the file and the field.
    pub fn from_file(path: &Path) -> Result<Self, PreprocessError> {
        let text = std::fs::read_to_string(path).map_err(|source| PreprocessError::ConfigRead {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_json_str(&text, path)
    }

    /// Reads `dir/preprocessor_config.json` if it exists, else returns the defaults.
    pub fn from_model_dir(dir: &Path) -> Result<Self, PreprocessError> {
        let path = ongi_model::ModelDir::new(dir).preprocessor_config();
        match std::fs::read_to_string(&path) {
            Ok(text) => Self::from_json_str(&text, &path),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                tracing::debug!(
                    dir = %dir.display(),
                    "no {}; using CLIP defaults",
                    ModelDir::PREPROCESSOR_CONFIG
                );
                Ok(Self::default())
            }
            Err(source) => Err(PreprocessError::ConfigRead { path, source }),
        }
    }

    /// Parses the JSON text of a `preprocessor_config.json`; `path` only names the
    /// source in error messages.
    pub fn from_json_str(text: &str, path: &Path) -> Result<Self, PreprocessError> {
        let raw: RawPreprocess = from_json(text).map_err(|e| match e {
            JsonError::Syntax(source) => PreprocessError::ConfigJson {
                path: path.to_path_buf(),
                source,
            },
            JsonError::Field { field, message } => field_error(path, &field, message),
        })?;
        raw.resolve()
            .map_err(|(field, reason)| field_error(path, field, reason))
    }

    /// Length of the output of [`super::preprocess`] when `do_center_crop` is set.
    pub fn output_len(&self) -> usize {
        3 * self.crop_height as usize * self.crop_width as usize
    }
}

fn field_error(path: &Path, field: &str, reason: impl Into<String>) -> PreprocessError {
    PreprocessError::ConfigField {
        path: path.to_path_buf(),
        field: field.to_owned(),
        reason: reason.into(),
    }
}

/// `preprocessor_config.json` as written: every key optional (absent or
/// null keeps the CLIP default, as transformers falls back to the class
/// default), keys that do not change the computation ignored.
#[derive(Deserialize)]
struct RawPreprocess {
    #[serde(default, deserialize_with = "shortest_edge")]
    size: Option<u32>,
    default_to_square: Option<bool>,
    #[serde(default, deserialize_with = "crop_size")]
    crop_size: Option<(u32, u32)>,
    do_resize: Option<bool>,
    do_center_crop: Option<bool>,
    do_rescale: Option<bool>,
    // JSON numbers are always finite.
    rescale_factor: Option<f64>,
    do_normalize: Option<bool>,
    #[serde(default, deserialize_with = "per_channel")]
    image_mean: Option<[f32; 3]>,
    #[serde(default, deserialize_with = "per_channel")]
    image_std: Option<[f32; 3]>,
    resample: Option<u64>,
}

/// A size in pixels: a positive integer (JSON `224` or `224.0`), at most MAX_EDGE.
#[derive(Deserialize, Clone, Copy)]
#[serde(try_from = "f64")]
struct Edge(u32);

impl TryFrom<f64> for Edge {
    type Error = String;
    fn try_from(x: f64) -> Result<Self, String> {
        if x.fract() != 0.0 || x < 0.0 {
            return Err(format!("expected a positive integer, got {x}"));
        }
        if x < 1.0 || x > MAX_EDGE as f64 {
            return Err(format!("{x} is out of range 1..={MAX_EDGE}"));
        }
        Ok(Self(x as u32))
    }
}

/// `size`: the shortest edge as `N`, `[N]` (old configs) or
/// `{"shortest_edge": N}`; other dict forms (`height`/`width`,
/// `longest_edge`) resize differently and are refused.
fn shortest_edge<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u32>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Form {
        Edge(Edge),
        List([Edge; 1]),
        Dict(BTreeMap<String, Edge>),
        Other(serde_json::Value),
    }
    let Some(form) = Option::<Form>::deserialize(d)? else {
        return Ok(None);
    };
    let edge = match form {
        Form::Edge(e) | Form::List([e]) => e,
        Form::Dict(map) => match map.iter().find(|(k, _)| k.as_str() != "shortest_edge") {
            Some((unknown, _)) => {
                return Err(D::Error::custom(format!(
                    "`{unknown}`: only {{\"shortest_edge\": N}} is supported (resize the shorter \
                     side, keep the aspect ratio)"
                )))
            }
            None => *map
                .get("shortest_edge")
                .ok_or_else(|| D::Error::custom("missing \"shortest_edge\""))?,
        },
        Form::Other(v) => return Err(edge_error(&v, "an integer or {\"shortest_edge\": N}")),
    };
    Ok(Some(edge.0))
}

/// `crop_size`: `N` or `{"height": H, "width": W}`.
fn crop_size<'de, D: Deserializer<'de>>(d: D) -> Result<Option<(u32, u32)>, D::Error> {
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Dict {
        height: Edge,
        width: Edge,
    }
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Form {
        Edge(Edge),
        Dict(Dict),
        Other(serde_json::Value),
    }
    match Option::<Form>::deserialize(d)? {
        None => Ok(None),
        Some(Form::Edge(e)) => Ok(Some((e.0, e.0))),
        Some(Form::Dict(Dict { height, width })) => Ok(Some((height.0, width.0))),
        Some(Form::Other(v)) => Err(edge_error(
            &v,
            "an integer or {\"height\": H, \"width\": W}",
        )),
    }
}

/// Why an edge-or-dict value is refused: an out-of-range or fractional size
/// says so, anything else names the forms accepted.
fn edge_error<E: serde::de::Error>(v: &serde_json::Value, forms: &str) -> E {
    let as_edge = |v: &serde_json::Value| v.as_f64().map(Edge::try_from);
    let single = match v {
        serde_json::Value::Array(items) if items.len() == 1 => as_edge(&items[0]),
        _ => as_edge(v),
    };
    match single {
        Some(Err(reason)) => E::custom(reason),
        _ => E::custom(format!("expected {forms}, got {v}")),
    }
}

/// Three per-channel values, or one number applied to all channels. Parsed
/// as f64 and narrowed: that is what numpy does with the Python floats
/// (`np.array(mean, dtype=float32)`), so the f32 values match exactly.
fn per_channel<'de, D: Deserializer<'de>>(d: D) -> Result<Option<[f32; 3]>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Form {
        One(f64),
        List(Vec<f64>),
        Other(serde_json::Value),
    }
    match Option::<Form>::deserialize(d)? {
        None => Ok(None),
        Some(Form::One(x)) => Ok(Some([x as f32; 3])),
        Some(Form::List(items)) => match items[..] {
            [r, g, b] => Ok(Some([r as f32, g as f32, b as f32])),
            _ => Err(D::Error::custom(format!(
                "expected 3 values (R, G, B), got {}",
                items.len()
            ))),
        },
        Some(Form::Other(v)) => Err(D::Error::custom(format!(
            "expected a list of 3 numbers, got {v}"
        ))),
    }
}

impl RawPreprocess {
    fn resolve(self) -> Result<PreprocessConfig, (&'static str, String)> {
        let defaults = PreprocessConfig::default();
        if self.size.is_some() && self.default_to_square == Some(true) {
            return Err((
                "default_to_square",
                "true (resize to a square) is not supported; CLIP resizes the shortest edge".into(),
            ));
        }
        let image_std = self.image_std.unwrap_or(defaults.image_std);
        if image_std.contains(&0.0) {
            return Err(("image_std", "must not contain 0".into()));
        }
        let resample = match self.resample {
            None => defaults.resample,
            Some(code) => Resample::from_pil_code(code).ok_or_else(|| {
                (
                    "resample",
                    format!(
                        "PIL filter {code} is not supported (supported: 1 lanczos, 2 bilinear, \
                         3 bicubic, 4 box, 5 hamming)"
                    ),
                )
            })?,
        };
        let (crop_height, crop_width) = self
            .crop_size
            .unwrap_or((defaults.crop_height, defaults.crop_width));
        Ok(PreprocessConfig {
            shortest_edge: self.size.unwrap_or(defaults.shortest_edge),
            crop_height,
            crop_width,
            do_resize: self.do_resize.unwrap_or(defaults.do_resize),
            do_center_crop: self.do_center_crop.unwrap_or(defaults.do_center_crop),
            do_rescale: self.do_rescale.unwrap_or(defaults.do_rescale),
            rescale_factor: self
                .rescale_factor
                .map_or(defaults.rescale_factor, |f| f as f32),
            do_normalize: self.do_normalize.unwrap_or(defaults.do_normalize),
            image_mean: self.image_mean.unwrap_or(defaults.image_mean),
            image_std,
            resample,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> Result<PreprocessConfig, PreprocessError> {
        PreprocessConfig::from_json_str(json, Path::new("/m/preprocessor_config.json"))
    }

    fn field_of(err: PreprocessError) -> String {
        match err {
            PreprocessError::ConfigField { field, .. } => field,
            other => panic!("expected a field error, got {other:?}"),
        }
    }

    #[test]
    fn openai_clip_vit_b32_config_is_the_default() {
        // openai/clip-vit-base-patch32's file (old feature-extractor form).
        let cfg = parse(
            r#"{"crop_size": 224, "do_center_crop": true, "do_normalize": true,
                "do_resize": true, "feature_extractor_type": "CLIPFeatureExtractor",
                "image_mean": [0.48145466, 0.4578275, 0.40821073],
                "image_std": [0.26862954, 0.26130258, 0.27577711],
                "resample": 3, "size": 224}"#,
        )
        .unwrap();
        assert_eq!(cfg, PreprocessConfig::default());
    }

    #[test]
    fn dict_forms_and_ignored_fields() {
        let cfg = parse(
            r#"{"size": {"shortest_edge": 336}, "crop_size": {"height": 320, "width": 300},
                "do_convert_rgb": true, "image_processor_type": "CLIPImageProcessor",
                "processor_class": "CLIPProcessor", "rescale_factor": 0.00392156862745098,
                "resample": 2, "do_normalize": false, "image_mean": 0.5}"#,
        )
        .unwrap();
        assert_eq!(cfg.shortest_edge, 336);
        assert_eq!((cfg.crop_height, cfg.crop_width), (320, 300));
        assert_eq!(cfg.resample, Resample::Bilinear);
        assert!(!cfg.do_normalize);
        assert_eq!(cfg.image_mean, [0.5; 3]);
        assert_eq!(cfg.rescale_factor, (1.0f64 / 255.0) as f32);
        assert_eq!(parse("{}").unwrap(), PreprocessConfig::default());
        assert_eq!(parse(r#"{"size": [240]}"#).unwrap().shortest_edge, 240);
        assert_eq!(parse(r#"{"crop_size": null}"#).unwrap().crop_width, 224);
    }

    #[test]
    fn unsupported_values_are_named() {
        assert_eq!(
            field_of(parse(r#"{"resample": 0}"#).unwrap_err()),
            "resample"
        );
        assert_eq!(
            field_of(parse(r#"{"resample": "bicubic"}"#).unwrap_err()),
            "resample"
        );
        // Other dict forms: the field is `size`, the message names the key.
        for (json, key) in [
            (r#"{"size": {"height": 224, "width": 224}}"#, "`height`"),
            (
                r#"{"size": {"shortest_edge": 224, "longest_edge": 500}}"#,
                "`longest_edge`",
            ),
        ] {
            let err = parse(json).unwrap_err();
            assert!(err.to_string().contains(key), "{err}");
            assert_eq!(field_of(err), "size");
        }
        assert_eq!(
            field_of(parse(r#"{"crop_size": {"height": 224, "depth": 3}}"#).unwrap_err()),
            "crop_size"
        );
        let msg = parse(r#"{"size": 9000}"#).unwrap_err().to_string();
        assert!(msg.contains("out of range"), "{msg}");
        assert_eq!(field_of(parse(r#"{"size": 0}"#).unwrap_err()), "size");
        assert_eq!(field_of(parse(r#"{"size": 22.5}"#).unwrap_err()), "size");
        assert_eq!(
            field_of(parse(r#"{"crop_size": {"height": 224}}"#).unwrap_err()),
            "crop_size"
        );
        assert_eq!(
            field_of(parse(r#"{"image_std": [1, 0, 1]}"#).unwrap_err()),
            "image_std"
        );
        assert_eq!(
            field_of(parse(r#"{"image_mean": [1, 2]}"#).unwrap_err()),
            "image_mean"
        );
        assert_eq!(
            field_of(parse(r#"{"do_resize": "yes"}"#).unwrap_err()),
            "do_resize"
        );
        assert_eq!(
            field_of(parse(r#"{"size": 224, "default_to_square": true}"#).unwrap_err()),
            "default_to_square"
        );
        assert_eq!(field_of(parse("[]").unwrap_err()), "(top level)");

        let msg = parse(r#"{"resample": 0}"#).unwrap_err().to_string();
        assert!(msg.contains("/m/preprocessor_config.json"), "{msg}");
        assert!(
            msg.contains("`resample`") && msg.contains("not supported"),
            "{msg}"
        );
    }

    #[test]
    fn files_and_directories() {
        let dir = std::env::temp_dir().join(format!("ongi-pp-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        // No file: defaults.
        assert_eq!(
            PreprocessConfig::from_model_dir(&dir).unwrap(),
            PreprocessConfig::default()
        );
        let path = ModelDir::new(&dir).preprocessor_config();
        std::fs::write(&path, r#"{"size": {"shortest_edge": 64}, "crop_size": 64}"#).unwrap();
        let cfg = PreprocessConfig::from_model_dir(&dir).unwrap();
        assert_eq!(
            (cfg.shortest_edge, cfg.crop_height, cfg.crop_width),
            (64, 64, 64)
        );
        assert_eq!(cfg.output_len(), 3 * 64 * 64);

        std::fs::write(&path, "{not json").unwrap();
        let err = PreprocessConfig::from_file(&path).unwrap_err();
        assert!(matches!(err, PreprocessError::ConfigJson { .. }), "{err:?}");
        assert!(
            err.to_string().contains(ModelDir::PREPROCESSOR_CONFIG),
            "{err}"
        );

        let missing = dir.join("nope.json");
        let err = PreprocessConfig::from_file(&missing).unwrap_err();
        assert!(matches!(err, PreprocessError::ConfigRead { .. }), "{err:?}");
        assert!(err.to_string().contains("nope.json"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn resample_codes_round_trip() {
        for code in 1..=5 {
            let r = Resample::from_pil_code(code).unwrap();
            assert_eq!(u64::from(r.pil_code()), code);
        }
        assert_eq!(Resample::from_pil_code(0), None);
        assert_eq!(Resample::from_pil_code(6), None);
    }
}
