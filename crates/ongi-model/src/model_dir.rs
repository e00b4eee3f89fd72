//! A Hugging Face `CLIPModel` directory and the names of the files in it.

use std::path::{Path, PathBuf};

/// A model directory: `config.json`, `model.safetensors`, `tokenizer.json`
/// and `preprocessor_config.json`, as `save_pretrained` writes them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelDir(PathBuf);

impl ModelDir {
    /// The model configuration.
    pub const CONFIG: &'static str = "config.json";
    /// The weights.
    pub const WEIGHTS: &'static str = "model.safetensors";
    /// The tokenizer (Hugging Face `tokenizers` format).
    pub const TOKENIZER: &'static str = "tokenizer.json";
    /// The image processor settings (optional: CLIP's defaults without it).
    pub const PREPROCESSOR_CONFIG: &'static str = "preprocessor_config.json";
    /// Every file a complete model directory holds.
    pub const FILES: [&'static str; 4] = [
        Self::CONFIG,
        Self::PREPROCESSOR_CONFIG,
        Self::TOKENIZER,
        Self::WEIGHTS,
    ];

    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self(dir.into())
    }

    /// The directory itself.
    pub fn path(&self) -> &Path {
        &self.0
    }

    pub fn config(&self) -> PathBuf {
        self.0.join(Self::CONFIG)
    }

    pub fn weights(&self) -> PathBuf {
        self.0.join(Self::WEIGHTS)
    }

    pub fn tokenizer(&self) -> PathBuf {
        self.0.join(Self::TOKENIZER)
    }

    pub fn preprocessor_config(&self) -> PathBuf {
        self.0.join(Self::PREPROCESSOR_CONFIG)
    }
}

impl AsRef<Path> for ModelDir {
    fn as_ref(&self) -> &Path {
        &self.0
    }
}
