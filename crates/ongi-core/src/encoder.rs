//! The CLIP image tower as the batcher's [`ImageEncoder`].

use std::sync::Arc;

use candle_core::{Device, Tensor};
use ongi_model::clip::ClipModel;

use crate::batcher::ImageEncoder;

/// Runs batches of preprocessed `[3, size, size]` images through a shared CLIP model.
#[derive(Clone)]
pub struct ClipImageEncoder {
    model: Arc<ClipModel>,
    size: usize,
}

impl ClipImageEncoder {
    /// Wraps `model`; inputs must be CHW f32 at the model's image size.
    pub fn new(model: Arc<ClipModel>) -> Self {
        let size = model.image_size();
        Self { model, size }
    }

    /// Embeds a batch, returning one projected feature vector per image.
    pub fn encode_batch(&self, batch: &[&[f32]]) -> Result<Vec<Vec<f32>>, String> {
        let per_image = 3 * self.size * self.size;
        let mut flat = Vec::with_capacity(batch.len() * per_image);
        for pixels in batch {
            if pixels.len() != per_image {
                return Err(format!(
                    "preprocessed image has {} values, the model expects 3x{}x{}",
                    pixels.len(),
                    self.size,
                    self.size
                ));
            }
            flat.extend_from_slice(pixels);
        }
        // The model moves inputs to its own device and dtype.
        let pixels = Tensor::from_vec(flat, (batch.len(), 3, self.size, self.size), &Device::Cpu)
            .map_err(|e| e.to_string())?;
        self.model
            .image_features(&pixels)
            .map_err(|e| e.to_string())?
            .to_vec2::<f32>()
            .map_err(|e| e.to_string())
    }
}

impl ImageEncoder for ClipImageEncoder {
    fn encode(&mut self, batch: &[&[f32]]) -> Result<Vec<Vec<f32>>, String> {
        self.encode_batch(batch)
    }
}

/// Runs strings through the CLIP text tower (prompt embeddings; not on the request path).
pub struct ClipTextEncoder {
    model: Arc<ClipModel>,
    tokenizer: crate::tokenize::ClipTokenizer,
}

impl ClipTextEncoder {
    /// Pairs a shared model with its tokenizer.
    pub fn new(model: Arc<ClipModel>, tokenizer: crate::tokenize::ClipTokenizer) -> Self {
        Self { model, tokenizer }
    }

    /// Projected text features of each string, in order, batched by `batch_size`.
    pub fn encode(&self, texts: &[&str], batch_size: usize) -> Result<Vec<Vec<f32>>, String> {
        let mut out = Vec::with_capacity(texts.len());
        for chunk in texts.chunks(batch_size.max(1)) {
            // Padding only to the longest prompt of the chunk: the causal mask
            // makes the pooled EOS output independent of what follows it.
            let (ids, batch, seq) = self
                .tokenizer
                .encode_batch_padded(chunk)
                .map_err(|e| e.to_string())?;
            let rows = self
                .model
                .text_features_from_ids(&ids, batch, seq)
                .map_err(|e| e.to_string())?
                .to_vec2::<f32>()
                .map_err(|e| e.to_string())?;
            out.extend(rows);
        }
        Ok(out)
    }
}
