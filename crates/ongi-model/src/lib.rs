//! CLIP model code for ongi: configuration, vision and text towers.
//!
//! Pure tensor code: no image decoding, no I/O beyond reading a checkpoint.

pub mod clip;
pub mod config;
mod cpu;
pub mod error;
pub mod face;
mod kernels;
mod model_dir;
mod packed;
mod precision;
mod team;
mod vision_cpu;
pub mod weights;

pub use clip::{ClipModel, VisionKernels};
pub use config::{Activation, ClipConfig, ClipTextConfig, ClipVisionConfig, TextPooling};
pub use cpu::CpuFeatures;
pub use error::ModelError;
pub use model_dir::ModelDir;
pub use packed::{kernel_choice, KernelChoice, WeightFormat};
pub use precision::Precision;
