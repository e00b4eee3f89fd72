//! CLIP model code for ongi: configuration, vision and text towers.
//!
//! Pure tensor code: no image decoding, no I/O beyond reading a checkpoint.

pub mod clip;
pub mod config;
pub mod error;
pub mod weights;

pub use clip::{default_dtype, ClipModel};
pub use config::{Activation, ClipConfig, ClipTextConfig, ClipVisionConfig, TextPooling};
pub use error::ModelError;
