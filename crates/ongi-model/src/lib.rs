//! CLIP model code for ongi: configuration, vision and text towers.
//!
//! Pure tensor code: no image decoding, no I/O beyond reading a checkpoint.

pub mod clip;
pub mod config;
