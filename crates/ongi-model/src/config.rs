//! CLIP configuration, read from a Hugging Face `CLIPModel` `config.json`.
//!
//! Absent fields take the defaults of transformers' `CLIPTextConfig`,
//! `CLIPVisionConfig` and `CLIPConfig` (transformers 5.x), so a minimal
//! `config.json` written by `CLIPConfig(...).save_pretrained` and a full one
//! from the Hub (`openai/clip-vit-base-patch32`) both load.

use std::path::Path;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer};
use serde_json::Value;

use crate::error::ModelError;

/// Activation function of the MLP blocks (`hidden_act`), by its transformers name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum Activation {
    /// `quick_gelu`: `x * sigmoid(1.702 x)` (OpenAI CLIP).
    #[serde(rename = "quick_gelu")]
    QuickGelu,
    /// `gelu`: the exact, erf-based GELU (torch's default `gelu`).
    #[serde(rename = "gelu")]
    Gelu,
    /// `gelu_new` / `gelu_pytorch_tanh`: the tanh approximation of GELU.
    /// Same formula; transformers computes them differently (python vs
    /// torch's fused kernel), which only matters at rounding level.
    #[serde(rename = "gelu_new", alias = "gelu_pytorch_tanh")]
    GeluTanh,
}

/// How the text tower picks the token whose state becomes the text feature.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TextPooling {
    /// Legacy checkpoints (`eos_token_id == 2`, written before transformers
    /// PR #24773): the position of the largest token id, which is the EOS
    /// token (`<|endoftext|>` is the last vocabulary entry). First one on ties.
    ArgmaxId,
    /// The first position holding this token id (position 0 if absent, as
    /// transformers' `argmax` over an all-false mask gives).
    FirstToken(u32),
}

/// Text tower configuration (`text_config`).
#[derive(Debug, Clone, PartialEq)]
pub struct ClipTextConfig {
    /// Vocabulary size (rows of the token embedding).
    pub vocab_size: usize,
    /// Width of the transformer.
    pub hidden_size: usize,
    /// Width of the MLP's hidden layer.
    pub intermediate_size: usize,
    /// Number of attention heads.
    pub num_attention_heads: usize,
    /// Number of encoder layers.
    pub num_hidden_layers: usize,
    /// Maximum sequence length (rows of the position embedding).
    pub max_position_embeddings: usize,
    /// MLP activation.
    pub hidden_act: Activation,
    /// Epsilon of every layer norm.
    pub layer_norm_eps: f64,
    /// The end-of-text token id as written in the config.
    pub eos_token_id: u32,
    /// Pooling rule derived from `eos_token_id` exactly as transformers does.
    pub pooling: TextPooling,
}

/// Vision tower configuration (`vision_config`).
#[derive(Debug, Clone, PartialEq)]
pub struct ClipVisionConfig {
    /// Width of the transformer.
    pub hidden_size: usize,
    /// Width of the MLP's hidden layer.
    pub intermediate_size: usize,
    /// Number of attention heads.
    pub num_attention_heads: usize,
    /// Number of encoder layers.
    pub num_hidden_layers: usize,
    /// Number of input channels (3 for RGB).
    pub num_channels: usize,
    /// Side of the square input image, in pixels.
    pub image_size: usize,
    /// Side of a square patch, in pixels.
    pub patch_size: usize,
    /// MLP activation.
    pub hidden_act: Activation,
    /// Epsilon of every layer norm.
    pub layer_norm_eps: f64,
}

impl ClipVisionConfig {
    /// Patches per image side (`image_size / patch_size`, rounded down as the
    /// strided convolution does).
    pub fn grid_size(&self) -> usize {
        self.image_size / self.patch_size
    }

    /// Number of positions: one per patch plus the class token.
    pub fn num_positions(&self) -> usize {
        self.grid_size() * self.grid_size() + 1
    }
}

/// A whole CLIP configuration: both towers and the shared embedding width.
#[derive(Debug, Clone, PartialEq)]
pub struct ClipConfig {
    /// Width of the joint image/text embedding space.
    pub projection_dim: usize,
    /// Text tower.
    pub text: ClipTextConfig,
    /// Vision tower.
    pub vision: ClipVisionConfig,
}

impl ClipConfig {
    /// Reads `dir/config.json`.
    pub fn from_model_dir(dir: &Path) -> Result<Self, ModelError> {
        Self::from_file(&crate::ModelDir::new(dir).config())
    }

    /// Reads a `config.json` at an explicit path.
    pub fn from_file(path: &Path) -> Result<Self, ModelError> {
        let text = std::fs::read_to_string(path).map_err(|source| ModelError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_json_str(&text, path)
    }

    /// Parses the JSON text of a `config.json`; `path` is only used in errors.
    pub fn from_json_str(json: &str, path: &Path) -> Result<Self, ModelError> {
        let error = |field: String, message: String| ModelError::Config {
            path: path.to_path_buf(),
            field,
            message,
        };
        let raw: RawClip = from_json(json).map_err(|e| match e {
            JsonError::Syntax(source) => ModelError::ConfigJson {
                path: path.to_path_buf(),
                source,
            },
            JsonError::Field { field, message } => error(field, message),
        })?;
        // As `CLIPConfig.__post_init__`: a non-null legacy `<name>_dict` wins
        // outright (transformers expands it to a full config, defaults
        // included, and overwrites `<name>` with it); otherwise `<name>`, an
        // absent or null one meaning "all defaults".
        let (text_key, text) = match raw.text_config_dict {
            Some(t) => ("text_config_dict", t),
            None => ("text_config", raw.text_config.unwrap_or_default()),
        };
        let (vision_key, vision) = match raw.vision_config_dict {
            Some(v) => ("vision_config_dict", v),
            None => ("vision_config", raw.vision_config.unwrap_or_default()),
        };
        let text = text
            .resolve()
            .map_err(|(f, m)| error(format!("{text_key}.{f}"), m))?;
        let vision = vision
            .resolve()
            .map_err(|(f, m)| error(format!("{vision_key}.{f}"), m))?;
        Ok(Self {
            projection_dim: raw.projection_dim.map_or(512, |p| p.0),
            text,
            vision,
        })
    }
}

/// Why a JSON settings file did not parse.
#[derive(Debug)]
pub enum JsonError {
    /// Not JSON at all (with line and column).
    Syntax(serde_json::Error),
    /// JSON, but a field (dotted path, `(top level)` for the document
    /// itself) does not hold what it must.
    Field { field: String, message: String },
}

impl std::fmt::Display for JsonError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Syntax(e) => write!(f, "{e}"),
            Self::Field { field, message } => write!(f, "field `{field}`: {message}"),
        }
    }
}

/// Parses a JSON settings file, which must hold one object, into `T`,
/// naming the field of any error.
pub fn from_json<T: DeserializeOwned>(text: &str) -> Result<T, JsonError> {
    let value: Value = serde_json::from_str(text).map_err(JsonError::Syntax)?;
    if !value.is_object() {
        return Err(JsonError::Field {
            field: "(top level)".into(),
            message: "expected a JSON object".into(),
        });
    }
    serde_path_to_error::deserialize(value).map_err(|e| JsonError::Field {
        field: e.path().to_string(),
        message: e.into_inner().to_string(),
    })
}

/// `config.json` as written: every field optional (absent or null means
/// transformers' default), unknown fields ignored.
#[derive(Deserialize, Default)]
struct RawClip {
    projection_dim: Option<Positive>,
    text_config: Option<RawText>,
    text_config_dict: Option<RawText>,
    vision_config: Option<RawVision>,
    vision_config_dict: Option<RawVision>,
}

#[derive(Deserialize, Default)]
struct RawText {
    vocab_size: Option<Positive>,
    hidden_size: Option<Positive>,
    intermediate_size: Option<Positive>,
    num_attention_heads: Option<Positive>,
    num_hidden_layers: Option<Positive>,
    max_position_embeddings: Option<Positive>,
    hidden_act: Option<Activation>,
    layer_norm_eps: Option<f64>,
    #[serde(default, deserialize_with = "eos_token_id")]
    eos_token_id: Option<(u32, TextPooling)>,
}

#[derive(Deserialize, Default)]
struct RawVision {
    hidden_size: Option<Positive>,
    intermediate_size: Option<Positive>,
    num_attention_heads: Option<Positive>,
    num_hidden_layers: Option<Positive>,
    num_channels: Option<Positive>,
    image_size: Option<Positive>,
    patch_size: Option<Positive>,
    hidden_act: Option<Activation>,
    layer_norm_eps: Option<f64>,
}

/// A positive integer field.
#[derive(Deserialize, Clone, Copy)]
#[serde(try_from = "u64")]
struct Positive(usize);

impl TryFrom<u64> for Positive {
    type Error = String;
    fn try_from(n: u64) -> Result<Self, String> {
        match usize::try_from(n) {
            Ok(n) if n > 0 => Ok(Self(n)),
            _ => Err(format!("expected a positive integer, found {n}")),
        }
    }
}

/// A layer-norm epsilon: not negative (JSON numbers are always finite).
fn eps(field: Option<f64>) -> Result<f64, FieldError> {
    match field {
        None => Ok(1e-5),
        Some(x) if x >= 0.0 => Ok(x),
        Some(x) => Err((
            "layer_norm_eps",
            format!("expected a non-negative number, found {x}"),
        )),
    }
}

fn or(field: Option<Positive>, default: usize) -> usize {
    field.map_or(default, |p| p.0)
}

/// A field error of a sub-config: the key inside it and the message.
type FieldError = (&'static str, String);

fn check_heads(hidden_size: usize, heads: usize) -> Result<(), FieldError> {
    if hidden_size.is_multiple_of(heads) {
        Ok(())
    } else {
        Err((
            "num_attention_heads",
            format!("hidden_size {hidden_size} is not a multiple of {heads} heads"),
        ))
    }
}

impl RawText {
    fn resolve(self) -> Result<ClipTextConfig, FieldError> {
        let hidden_size = or(self.hidden_size, 512);
        let num_attention_heads = or(self.num_attention_heads, 8);
        check_heads(hidden_size, num_attention_heads)?;
        let (eos_token_id, pooling) = self
            .eos_token_id
            .unwrap_or((49407, TextPooling::FirstToken(49407)));
        Ok(ClipTextConfig {
            vocab_size: or(self.vocab_size, 49408),
            hidden_size,
            intermediate_size: or(self.intermediate_size, 2048),
            num_attention_heads,
            num_hidden_layers: or(self.num_hidden_layers, 12),
            max_position_embeddings: or(self.max_position_embeddings, 77),
            hidden_act: self.hidden_act.unwrap_or(Activation::QuickGelu),
            layer_norm_eps: eps(self.layer_norm_eps)?,
            eos_token_id,
            pooling,
        })
    }
}

impl RawVision {
    fn resolve(self) -> Result<ClipVisionConfig, FieldError> {
        let hidden_size = or(self.hidden_size, 768);
        let num_attention_heads = or(self.num_attention_heads, 12);
        check_heads(hidden_size, num_attention_heads)?;
        let image_size = or(self.image_size, 224);
        let patch_size = or(self.patch_size, 32);
        if patch_size > image_size {
            return Err((
                "patch_size",
                format!("{patch_size} is larger than image_size {image_size}"),
            ));
        }
        Ok(ClipVisionConfig {
            hidden_size,
            intermediate_size: or(self.intermediate_size, 3072),
            num_attention_heads,
            num_hidden_layers: or(self.num_hidden_layers, 12),
            num_channels: or(self.num_channels, 3),
            image_size,
            patch_size,
            hidden_act: self.hidden_act.unwrap_or(Activation::QuickGelu),
            layer_norm_eps: eps(self.layer_norm_eps)?,
        })
    }
}

/// `eos_token_id` and the pooling transformers derives from it: only the
/// integer 2 selects the legacy argmax rule. A one-element list (allowed by
/// the config class) compares like its element in torch's `==`, but never
/// equals the integer 2, hence never legacy.
fn eos_token_id<'de, D: Deserializer<'de>>(d: D) -> Result<Option<(u32, TextPooling)>, D::Error> {
    use serde::de::Error;
    let as_u32 = |v: &Value| v.as_u64().and_then(|n| u32::try_from(n).ok());
    let Some(v) = Option::<Value>::deserialize(d)? else {
        return Ok(None);
    };
    let id = match &v {
        Value::Array(items) if items.len() == 1 => as_u32(&items[0])
            .map(|id| (id, TextPooling::FirstToken(id)))
            .ok_or_else(|| D::Error::custom(format!("expected a token id, found {v}")))?,
        _ => match as_u32(&v) {
            Some(2) => (2, TextPooling::ArgmaxId),
            Some(id) => (id, TextPooling::FirstToken(id)),
            None => {
                return Err(D::Error::custom(format!(
                    "expected a single token id, found {v}"
                )))
            }
        },
    };
    Ok(Some(id))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> Result<ClipConfig, ModelError> {
        ClipConfig::from_json_str(json, Path::new("/m/config.json"))
    }

    #[test]
    fn empty_config_gets_transformers_defaults() {
        let c = parse("{}").unwrap();
        assert_eq!(c.projection_dim, 512);
        assert_eq!(c.text.vocab_size, 49408);
        assert_eq!(c.text.hidden_size, 512);
        assert_eq!(c.text.intermediate_size, 2048);
        assert_eq!(c.text.num_attention_heads, 8);
        assert_eq!(c.text.num_hidden_layers, 12);
        assert_eq!(c.text.max_position_embeddings, 77);
        assert_eq!(c.text.hidden_act, Activation::QuickGelu);
        assert_eq!(c.text.layer_norm_eps, 1e-5);
        assert_eq!(c.text.eos_token_id, 49407);
        assert_eq!(c.text.pooling, TextPooling::FirstToken(49407));
        assert_eq!(c.vision.hidden_size, 768);
        assert_eq!(c.vision.intermediate_size, 3072);
        assert_eq!(c.vision.num_attention_heads, 12);
        assert_eq!(c.vision.num_hidden_layers, 12);
        assert_eq!(c.vision.num_channels, 3);
        assert_eq!(c.vision.image_size, 224);
        assert_eq!(c.vision.patch_size, 32);
        assert_eq!(c.vision.hidden_act, Activation::QuickGelu);
        assert_eq!(c.vision.num_positions(), 50);
    }

    #[test]
    fn reads_sub_configs_and_legacy_eos() {
        let c = parse(
            r#"{"projection_dim": 16,
                "text_config": {"hidden_size": 32, "num_attention_heads": 4, "eos_token_id": 2,
                                "hidden_act": "gelu", "layer_norm_eps": 1e-6},
                "vision_config": {"image_size": 64, "patch_size": 16, "hidden_act": "gelu_new"}}"#,
        )
        .unwrap();
        assert_eq!(c.projection_dim, 16);
        assert_eq!(c.text.hidden_size, 32);
        assert_eq!(c.text.pooling, TextPooling::ArgmaxId);
        assert_eq!(c.text.hidden_act, Activation::Gelu);
        assert_eq!(c.text.layer_norm_eps, 1e-6);
        assert_eq!(c.vision.hidden_act, Activation::GeluTanh);
        assert_eq!(c.vision.num_positions(), 17);
    }

    #[test]
    fn legacy_dict_overrides_with_defaults() {
        let c = parse(
            r#"{"text_config": {"hidden_size": 32, "num_attention_heads": 4},
                "text_config_dict": {"num_hidden_layers": 3}, "vision_config_dict": null}"#,
        )
        .unwrap();
        // transformers expands text_config_dict with defaults and lets it win.
        assert_eq!(c.text.num_hidden_layers, 3);
        assert_eq!(c.text.hidden_size, 512);
    }

    #[test]
    fn one_element_eos_list_is_not_legacy() {
        let c = parse(r#"{"text_config": {"eos_token_id": [2]}}"#).unwrap();
        assert_eq!(c.text.pooling, TextPooling::FirstToken(2));
        assert!(parse(r#"{"text_config": {"eos_token_id": [1, 2]}}"#).is_err());
    }

    #[test]
    fn errors_name_file_and_field() {
        let e = parse(r#"{"vision_config": {"hidden_act": "relu"}}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("/m/config.json"), "{e}");
        assert!(e.contains("vision_config.hidden_act"), "{e}");
        assert!(e.contains("relu"), "{e}");

        let e = parse(r#"{"text_config": {"hidden_size": 30, "num_attention_heads": 4}}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("text_config.num_attention_heads"), "{e}");

        let e = parse(r#"{"projection_dim": "big"}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("projection_dim"), "{e}");

        let e = parse(r#"{"vision_config": {"patch_size": 0}}"#)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("vision_config.patch_size") && e.contains("positive"),
            "{e}"
        );

        let e = parse(r#"{"text_config_dict": {"layer_norm_eps": -1}}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("text_config_dict.layer_norm_eps"), "{e}");

        let e = parse(r#"{"text_config": 3}"#).unwrap_err().to_string();
        assert!(e.contains("text_config"), "{e}");

        let e = parse("[]").unwrap_err().to_string();
        assert!(e.contains("(top level)"), "{e}");

        for bad in ["not json", "{} {}"] {
            let e = parse(bad).unwrap_err();
            assert!(matches!(e, ModelError::ConfigJson { .. }), "{bad}: {e:?}");
            assert!(e.to_string().contains("/m/config.json"), "{e}");
        }
    }

    #[test]
    fn missing_file_names_it() {
        let e = ClipConfig::from_model_dir(Path::new("/nonexistent/model"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("/nonexistent/model/config.json"), "{e}");
    }
}
