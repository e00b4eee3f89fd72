//! CLIP configuration, read from a Hugging Face `CLIPModel` `config.json`.
//!
//! Absent fields take the defaults of transformers' `CLIPTextConfig`,
//! `CLIPVisionConfig` and `CLIPConfig` (transformers 5.x), so a minimal
//! `config.json` written by `CLIPConfig(...).save_pretrained` and a full one
//! from the Hub (`openai/clip-vit-base-patch32`) both load.

use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use crate::error::ModelError;

/// File name of the configuration inside a model directory.
pub const CONFIG_FILE: &str = "config.json";

/// Activation function of the MLP blocks (`hidden_act`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// `quick_gelu`: `x * sigmoid(1.702 x)` (OpenAI CLIP).
    QuickGelu,
    /// `gelu`: the exact, erf-based GELU (torch's default `gelu`).
    Gelu,
    /// `gelu_new` / `gelu_pytorch_tanh`: the tanh approximation of GELU.
    GeluTanh,
}

impl Activation {
    /// Names accepted in `hidden_act`, for error messages.
    pub const SUPPORTED: &'static str = "quick_gelu, gelu, gelu_new, gelu_pytorch_tanh";

    /// Parses a transformers activation name; `None` when unsupported.
    pub fn from_hf_name(name: &str) -> Option<Self> {
        match name {
            "quick_gelu" => Some(Self::QuickGelu),
            "gelu" => Some(Self::Gelu),
            // Same formula; transformers computes them differently (python
            // vs torch's fused kernel), which only matters at rounding level.
            "gelu_new" | "gelu_pytorch_tanh" => Some(Self::GeluTanh),
            _ => None,
        }
    }
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
        Self::from_file(&dir.join(CONFIG_FILE))
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
        let root: Value = serde_json::from_str(json).map_err(|source| ModelError::ConfigJson {
            path: path.to_path_buf(),
            source,
        })?;
        let root = root.as_object().ok_or_else(|| ModelError::Config {
            path: path.to_path_buf(),
            field: "(root)".into(),
            message: "expected a JSON object".into(),
        })?;
        let top = Fields {
            path,
            section: "",
            map: root,
        };
        let projection_dim = top.usize_or("projection_dim", 512)?;

        let text_map = sub_config(&top, "text_config")?;
        let text = parse_text(&Fields {
            path,
            section: text_map.0,
            map: &text_map.1,
        })?;
        let vision_map = sub_config(&top, "vision_config")?;
        let vision = parse_vision(&Fields {
            path,
            section: vision_map.0,
            map: &vision_map.1,
        })?;
        Ok(Self {
            projection_dim,
            text,
            vision,
        })
    }
}

/// Picks the object that determines a sub-config, as `CLIPConfig.__post_init__`
/// does: a non-null legacy `<name>_dict` wins outright (transformers expands it
/// to a full config, defaults included, and overwrites `<name>` with it);
/// otherwise `<name>`, with an absent or null one meaning "all defaults".
fn sub_config(
    top: &Fields<'_>,
    name: &'static str,
) -> Result<(&'static str, Map<String, Value>), ModelError> {
    let legacy: &'static str = match name {
        "text_config" => "text_config_dict",
        _ => "vision_config_dict",
    };
    for key in [legacy, name] {
        match top.map.get(key) {
            None | Some(Value::Null) => continue,
            Some(Value::Object(m)) => return Ok((key, m.clone())),
            Some(_) => return Err(top.err(key, "expected a JSON object")),
        }
    }
    Ok((name, Map::new()))
}

fn parse_text(f: &Fields<'_>) -> Result<ClipTextConfig, ModelError> {
    let hidden_size = f.usize_or("hidden_size", 512)?;
    let num_attention_heads = f.usize_or("num_attention_heads", 8)?;
    f.check_heads(hidden_size, num_attention_heads)?;
    let (eos_token_id, pooling) = f.eos_token_id(49407)?;
    Ok(ClipTextConfig {
        vocab_size: f.usize_or("vocab_size", 49408)?,
        hidden_size,
        intermediate_size: f.usize_or("intermediate_size", 2048)?,
        num_attention_heads,
        num_hidden_layers: f.usize_or("num_hidden_layers", 12)?,
        max_position_embeddings: f.usize_or("max_position_embeddings", 77)?,
        hidden_act: f.activation_or("hidden_act", Activation::QuickGelu)?,
        layer_norm_eps: f.eps_or("layer_norm_eps", 1e-5)?,
        eos_token_id,
        pooling,
    })
}

fn parse_vision(f: &Fields<'_>) -> Result<ClipVisionConfig, ModelError> {
    let hidden_size = f.usize_or("hidden_size", 768)?;
    let num_attention_heads = f.usize_or("num_attention_heads", 12)?;
    f.check_heads(hidden_size, num_attention_heads)?;
    let image_size = f.usize_or("image_size", 224)?;
    let patch_size = f.usize_or("patch_size", 32)?;
    if patch_size > image_size {
        return Err(f.err(
            "patch_size",
            &format!("{patch_size} is larger than image_size {image_size}"),
        ));
    }
    Ok(ClipVisionConfig {
        hidden_size,
        intermediate_size: f.usize_or("intermediate_size", 3072)?,
        num_attention_heads,
        num_hidden_layers: f.usize_or("num_hidden_layers", 12)?,
        num_channels: f.usize_or("num_channels", 3)?,
        image_size,
        patch_size,
        hidden_act: f.activation_or("hidden_act", Activation::QuickGelu)?,
        layer_norm_eps: f.eps_or("layer_norm_eps", 1e-5)?,
    })
}

/// One JSON object of the config plus what is needed to name its fields.
struct Fields<'a> {
    path: &'a Path,
    /// `""` for the top level, else the key of the sub-config.
    section: &'a str,
    map: &'a Map<String, Value>,
}

impl Fields<'_> {
    fn qualified(&self, key: &str) -> String {
        if self.section.is_empty() {
            key.to_string()
        } else {
            format!("{}.{key}", self.section)
        }
    }

    fn err(&self, key: &str, message: &str) -> ModelError {
        ModelError::Config {
            path: PathBuf::from(self.path),
            field: self.qualified(key),
            message: message.to_string(),
        }
    }

    /// The value of `key`, `None` when absent or null (transformers' `None`
    /// would break the model, so null is read as "use the default").
    fn get(&self, key: &str) -> Option<&Value> {
        self.map.get(key).filter(|v| !v.is_null())
    }

    /// A positive integer field.
    fn usize_or(&self, key: &str, default: usize) -> Result<usize, ModelError> {
        let Some(v) = self.get(key) else {
            return Ok(default);
        };
        match v.as_u64().and_then(|n| usize::try_from(n).ok()) {
            Some(n) if n > 0 => Ok(n),
            _ => Err(self.err(key, &format!("expected a positive integer, found {v}"))),
        }
    }

    fn eps_or(&self, key: &str, default: f64) -> Result<f64, ModelError> {
        let Some(v) = self.get(key) else {
            return Ok(default);
        };
        match v.as_f64() {
            Some(x) if x.is_finite() && x >= 0.0 => Ok(x),
            _ => Err(self.err(key, &format!("expected a non-negative number, found {v}"))),
        }
    }

    fn activation_or(&self, key: &str, default: Activation) -> Result<Activation, ModelError> {
        let Some(v) = self.get(key) else {
            return Ok(default);
        };
        v.as_str()
            .and_then(Activation::from_hf_name)
            .ok_or_else(|| {
                self.err(
                    key,
                    &format!(
                        "unsupported activation {v} (supported: {})",
                        Activation::SUPPORTED
                    ),
                )
            })
    }

    fn check_heads(&self, hidden_size: usize, heads: usize) -> Result<(), ModelError> {
        if !hidden_size.is_multiple_of(heads) {
            return Err(self.err(
                "num_attention_heads",
                &format!("hidden_size {hidden_size} is not a multiple of {heads} heads"),
            ));
        }
        Ok(())
    }

    /// `eos_token_id` and the pooling transformers derives from it: only the
    /// integer 2 selects the legacy argmax rule. A one-element list (allowed
    /// by the config class) compares like its element in torch's `==`, but
    /// never equals the integer 2, hence never legacy.
    fn eos_token_id(&self, default: u32) -> Result<(u32, TextPooling), ModelError> {
        let key = "eos_token_id";
        let Some(v) = self.get(key) else {
            return Ok((default, TextPooling::FirstToken(default)));
        };
        let as_u32 = |v: &Value| v.as_u64().and_then(|n| u32::try_from(n).ok());
        match v {
            Value::Array(items) if items.len() == 1 => match as_u32(&items[0]) {
                Some(id) => Ok((id, TextPooling::FirstToken(id))),
                None => Err(self.err(key, &format!("expected a token id, found {v}"))),
            },
            _ => match as_u32(v) {
                Some(2) => Ok((2, TextPooling::ArgmaxId)),
                Some(id) => Ok((id, TextPooling::FirstToken(id))),
                None => Err(self.err(key, &format!("expected a single token id, found {v}"))),
            },
        }
    }
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

        let e = parse("not json").unwrap_err().to_string();
        assert!(e.contains("/m/config.json"), "{e}");
    }

    #[test]
    fn missing_file_names_it() {
        let e = ClipConfig::from_model_dir(Path::new("/nonexistent/model"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("/nonexistent/model/config.json"), "{e}");
    }
}
