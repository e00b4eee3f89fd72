//! ongi core: everything between HTTP and the tensors.

pub mod analysis;
pub mod batcher;
pub mod embedding;
pub mod encoder;
pub mod faces;
pub mod features;
pub mod model_id;
pub mod pipeline;
pub mod preprocess;
pub mod source;
pub mod store;
pub mod text_cache;
mod tile;
pub mod tokenize;
pub mod untrusted;
