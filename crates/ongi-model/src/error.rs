//! The error type of this crate.

use std::path::PathBuf;

/// Everything that can go wrong loading or running a CLIP model.
///
/// Load-time variants name the file (and the field or tensor) at fault, so a
/// broken model directory can be fixed from the message alone.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// A model file could not be opened or read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },

    /// `config.json` is not valid JSON.
    #[error("{path}: invalid JSON: {source}")]
    ConfigJson {
        /// The configuration file.
        path: PathBuf,
        /// The parser's error.
        #[source]
        source: serde_json::Error,
    },

    /// A configuration field has an unusable value.
    #[error("{path}: field `{field}`: {message}")]
    Config {
        /// The configuration file.
        path: PathBuf,
        /// The field, dotted (`vision_config.hidden_act`).
        field: String,
        /// What is wrong with it.
        message: String,
    },

    /// The safetensors file itself is malformed (header, offsets).
    #[error("{path}: not a valid safetensors file: {message}")]
    Safetensors {
        /// The weights file.
        path: PathBuf,
        /// What is wrong with it.
        message: String,
    },

    /// A tensor is missing, has the wrong shape or an unsupported dtype.
    #[error("{path}: tensor `{name}`: {message}")]
    Tensor {
        /// The weights file.
        path: PathBuf,
        /// The tensor's name in the file.
        name: String,
        /// What is wrong with it.
        message: String,
    },

    /// The caller passed an input the model cannot take (shape, dtype, ids).
    #[error("invalid model input: {0}")]
    Input(String),

    /// A fault inside the model code (mismatched buffers, a compute thread
    /// that panicked): a bug, not a bad input.
    #[error("internal model error: {0}")]
    Internal(String),

    /// The requested precision cannot run on the requested device or kernels.
    #[error("unsupported: {0}")]
    Unsupported(String),

    /// A tensor operation failed.
    #[error("tensor operation failed: {0}")]
    Candle(#[from] candle_core::Error),
}
