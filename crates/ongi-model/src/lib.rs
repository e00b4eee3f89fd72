//! CLIP model code for ongi: configuration, vision and text towers.
//!
//! Pure tensor code: no image decoding, no I/O beyond reading a checkpoint.

pub mod clip;
pub mod config;
pub mod error;
mod kernels;
mod team;
mod vision_cpu;
pub mod weights;

pub use clip::{default_dtype, ClipModel, VisionKernels};
pub use config::{Activation, ClipConfig, ClipTextConfig, ClipVisionConfig, TextPooling};
pub use error::ModelError;
