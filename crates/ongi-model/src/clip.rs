//! The CLIP model: vision and text towers with their projections.
//!
//! Mirrors transformers' `CLIPModel` (`get_image_features`,
//! `get_text_features`) op for op, with two load-time rewrites that do not
//! change the maths: the query/key/value projections are fused into one
//! matrix (one matmul instead of three, and one head-major copy instead of
//! three), and the attention scale `head_dim^-0.5` is folded into the query
//! weights and bias.
//!
//! Activations are kept as 2-D `[batch * seq, width]` matrices between
//! blocks, so every linear layer is a single plain matmul.

use std::path::Path;
use std::sync::Arc;

use candle_core::{DType, Device, IndexOp, Tensor};

use crate::config::{Activation, ClipConfig, TextPooling};
use crate::error::ModelError;
use crate::packed::{PackedWeight, WeightFormat};
use crate::precision::Precision;
use crate::team::Team;
use crate::weights::SafetensorsFile;

/// How a dense layer's weight is held.
#[derive(Debug, Clone)]
pub(crate) enum LinearWeight {
    /// `[out, in]` as stored by PyTorch; candle's matmul reads it transposed
    /// through strides, without a copy.
    Dense(Tensor),
    /// f32 in the fused CPU forward's panel layout (`kernels::pack_panels`).
    Panels(Tensor),
    /// Blocks of 32 output features for the packed kernels (`packed.rs`):
    /// bf16, int8, or f32 where those kernels are preferred.
    Blocks(Arc<PackedWeight>),
}

/// A dense layer `y = x Wᵀ + b` over a 2-D input.
#[derive(Debug, Clone)]
pub(crate) struct Linear {
    pub(crate) weight: LinearWeight,
    pub(crate) bias: Option<Tensor>,
}

impl Linear {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let y = match &self.weight {
            LinearWeight::Dense(weight) => x.matmul(&weight.t()?)?,
            // The text tower at bf16/int8 on the CPU: its products on the
            // packed kernels (one thread; prompts are embedded once), the
            // rest on candle at f32.
            LinearWeight::Blocks(w) => {
                let rows = x.dim(0)?;
                let input = x.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
                let mut out = vec![0.0f32; rows * w.out];
                let team = Team::new(1).map_err(candle_core::Error::wrap)?;
                crate::packed::linear(&input, rows, w, &mut out, Default::default(), &team)
                    .map_err(candle_core::Error::wrap)?;
                Tensor::from_vec(out, (rows, w.out), x.device())?
            }
            LinearWeight::Panels(_) => {
                candle_core::bail!("weights packed for the fused CPU forward reached candle")
            }
        };
        match &self.bias {
            Some(b) => y.broadcast_add(b),
            None => Ok(y),
        }
    }
}

#[derive(Debug, Clone)]
pub(crate) struct LayerNorm {
    pub(crate) weight: Tensor,
    pub(crate) bias: Tensor,
    pub(crate) eps: f32,
}

impl LayerNorm {
    /// Needs a contiguous input (candle's fused kernel).
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        candle_nn::ops::layer_norm(x, &self.weight, &self.bias, self.eps)
    }
}

#[derive(Debug, Clone)]
pub(crate) struct Attention {
    /// Fused `[q; k; v]` projection, `[3 * width, width]`, q pre-scaled.
    pub(crate) qkv: Linear,
    pub(crate) out: Linear,
    pub(crate) heads: usize,
    pub(crate) head_dim: usize,
}

impl Attention {
    /// `x`: `[batch * seq, width]`; `mask`: additive `[seq, seq]` or none.
    fn forward(
        &self,
        x: &Tensor,
        batch: usize,
        seq: usize,
        mask: Option<&Tensor>,
    ) -> candle_core::Result<Tensor> {
        let width = self.heads * self.head_dim;
        // One copy puts q, k and v head-major ([3, B, H, S, hd]); each is then
        // a contiguous slice, as the batched matmuls want.
        let qkv = self
            .qkv
            .forward(x)?
            .reshape((batch, seq, 3, self.heads, self.head_dim))?
            .permute((2, 0, 3, 1, 4))?
            .contiguous()?;
        let q = qkv.get(0)?;
        let k = qkv.get(1)?;
        let v = qkv.get(2)?;
        // k transposed via strides: the matmul kernel takes it as is.
        let scores = q.matmul(&k.t()?)?;
        let scores = match mask {
            Some(m) => scores.broadcast_add(m)?,
            None => scores,
        };
        let probs = candle_nn::ops::softmax_last_dim(&scores)?;
        let y = probs
            .matmul(&v)?
            .transpose(1, 2)?
            .reshape((batch * seq, width))?;
        self.out.forward(&y)
    }
}

#[derive(Debug, Clone)]
pub(crate) struct Mlp {
    pub(crate) fc1: Linear,
    pub(crate) fc2: Linear,
    pub(crate) act: Activation,
}

impl Mlp {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let h = self.fc1.forward(x)?;
        let h = match self.act {
            Activation::QuickGelu => (&h * candle_nn::ops::sigmoid(&(&h * 1.702)?)?)?,
            Activation::Gelu => h.gelu_erf()?,
            Activation::GeluTanh => h.gelu()?,
        };
        self.fc2.forward(&h)
    }
}

/// A pre-norm transformer block.
#[derive(Debug, Clone)]
pub(crate) struct EncoderLayer {
    pub(crate) ln1: LayerNorm,
    pub(crate) attn: Attention,
    pub(crate) ln2: LayerNorm,
    pub(crate) mlp: Mlp,
}

impl EncoderLayer {
    fn forward(
        &self,
        x: &Tensor,
        batch: usize,
        seq: usize,
        mask: Option<&Tensor>,
    ) -> candle_core::Result<Tensor> {
        let h = self.attn.forward(&self.ln1.forward(x)?, batch, seq, mask)?;
        let x = (x + h)?;
        let h = self.mlp.forward(&self.ln2.forward(&x)?)?;
        x + h
    }
}

#[derive(Debug, Clone)]
pub(crate) struct VisionTower {
    /// Conv weight flattened to `[width, channels * patch * patch]`, in the
    /// (channel, row, column) order the patches are flattened in; no bias.
    pub(crate) patch_embedding: Linear,
    pub(crate) class_embedding: Tensor,
    pub(crate) position_embedding: Tensor,
    pub(crate) pre_ln: LayerNorm,
    pub(crate) layers: Vec<EncoderLayer>,
    pub(crate) post_ln: LayerNorm,
    pub(crate) projection: Linear,
}

#[derive(Debug, Clone)]
struct TextTower {
    token_embedding: Tensor,
    position_embedding: Tensor,
    layers: Vec<EncoderLayer>,
    final_ln: LayerNorm,
    projection: Linear,
}

/// Which implementation runs the vision tower.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VisionKernels {
    /// The fused f32 CPU forward (`vision_cpu.rs`): the default on the CPU
    /// at f32, about twice candle's speed there.
    Fused,
    /// candle's generic ops: every other device and dtype, and selectable on
    /// the CPU as the reference the fused forward is tested against.
    Candle,
}

impl VisionKernels {
    /// Fused on the CPU at f32, bf16 and int8; candle everywhere else.
    pub fn default_for(device: &Device, precision: Precision) -> Self {
        if device.is_cpu() && precision != Precision::F16 {
            Self::Fused
        } else {
            Self::Candle
        }
    }
}

/// A loaded CLIP model (both towers) on one device, at one precision.
#[derive(Debug, Clone)]
pub struct ClipModel {
    config: ClipConfig,
    vision: VisionTower,
    text: TextTower,
    device: Device,
    precision: Precision,
    /// The dtype of the tensors candle computes with (the text tower, and
    /// the vision tower when it is not fused).
    dtype: DType,
    /// The fused forward's compute threads: present exactly when the vision
    /// tower runs [`VisionKernels::Fused`].
    team: Option<Arc<Team>>,
}

impl ClipModel {
    /// Loads `dir/config.json` and `dir/model.safetensors` (Hugging Face
    /// `CLIPModel` layout) onto `device` at `precision` (see
    /// [`Precision::auto`]), with the vision kernels
    /// [`VisionKernels::default_for`] picks.
    pub fn load(dir: &Path, device: &Device, precision: Precision) -> Result<Self, ModelError> {
        Self::load_with_kernels(
            dir,
            device,
            precision,
            VisionKernels::default_for(device, precision),
        )
    }

    /// [`Self::load`] with a chosen vision-tower implementation.
    ///
    /// [`VisionKernels::Fused`] runs on the CPU at f32, bf16 or int8 (only
    /// the matrix products at that precision, in both towers; see
    /// `packed.rs`).
    /// [`VisionKernels::Candle`] runs f32, f16 and bf16 on any device.
    pub fn load_with_kernels(
        dir: &Path,
        device: &Device,
        precision: Precision,
        vision_kernels: VisionKernels,
    ) -> Result<Self, ModelError> {
        let fused = vision_kernels == VisionKernels::Fused;
        if fused && !device.is_cpu() {
            return Err(ModelError::Unsupported(format!(
                "the fused vision forward runs on the CPU only, not on {:?}",
                device.location()
            )));
        }
        let (dtype, packing) = match (precision, fused) {
            (Precision::F32 | Precision::Bf16 | Precision::Int8, true) => (
                DType::F32,
                precision
                    .packed_format()
                    .map_or(Packing::Panels, Packing::Blocks),
            ),
            (Precision::F32, false) => (DType::F32, Packing::None),
            (Precision::F16, false) => (DType::F16, Packing::None),
            (Precision::Bf16, false) => (DType::BF16, Packing::None),
            (Precision::F16, true) | (Precision::Int8, false) => {
                return Err(ModelError::Unsupported(format!(
                    "{} runs only {} the fused CPU vision forward",
                    precision.name(),
                    if fused { "outside" } else { "in" }
                )))
            }
        };
        let config = ClipConfig::from_model_dir(dir)?;
        let mut file = SafetensorsFile::open(&crate::ModelDir::new(dir).weights())?;
        let mut w = Loader {
            file: &mut file,
            dtype,
            device,
            packing,
        };
        let vision = load_vision(&mut w, &config)?;
        // The text tower runs on candle; at bf16/int8 its products take the
        // packed weights too (half the memory of f32 ones), at f32 candle's
        // own layout.
        if matches!(
            w.packing,
            Packing::Panels | Packing::Blocks(WeightFormat::F32)
        ) {
            w.packing = Packing::None;
        }
        let text = load_text(&mut w, &config)?;
        // As many threads as the global rayon pool (which `--threads` sizes).
        let team = if fused {
            Some(Arc::new(Team::new(rayon::current_num_threads())?))
        } else {
            None
        };
        Ok(Self {
            config,
            vision,
            text,
            device: device.clone(),
            precision,
            dtype,
            team,
        })
    }

    /// The vision tower's implementation.
    pub fn vision_kernels(&self) -> VisionKernels {
        if self.team.is_some() {
            VisionKernels::Fused
        } else {
            VisionKernels::Candle
        }
    }

    /// The configuration the model was built from.
    pub fn config(&self) -> &ClipConfig {
        &self.config
    }

    /// Width of the image and text embeddings.
    pub fn projection_dim(&self) -> usize {
        self.config.projection_dim
    }

    /// Side of the square input image the vision tower takes, in pixels.
    pub fn image_size(&self) -> usize {
        self.config.vision.image_size
    }

    /// Longest token sequence the text tower takes (BOS and EOS included).
    pub fn max_text_len(&self) -> usize {
        self.config.text.max_position_embeddings
    }

    /// The precision the model computes at.
    pub fn precision(&self) -> Precision {
        self.precision
    }

    /// The device the weights live on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Projected image features (`get_image_features`), unnormalised.
    ///
    /// `pixel_values`: `[batch, channels, image_size, image_size]`, already
    /// CLIP-normalised, any float dtype on any device; it is moved to the
    /// model's device and dtype. Returns `[batch, projection_dim]` f32.
    pub fn image_features(&self, pixel_values: &Tensor) -> Result<Tensor, ModelError> {
        let vc = &self.config.vision;
        let (batch, channels, height, width) = pixel_values.dims4().map_err(|_| {
            ModelError::Input(format!(
                "pixel_values must be [batch, {}, {2}, {2}], got {:?}",
                vc.num_channels,
                pixel_values.dims(),
                vc.image_size
            ))
        })?;
        if channels != vc.num_channels || height != vc.image_size || width != vc.image_size {
            return Err(ModelError::Input(format!(
                "pixel_values must be [batch, {}, {2}, {2}], got {:?}",
                vc.num_channels,
                pixel_values.dims(),
                vc.image_size
            )));
        }
        if !pixel_values.dtype().is_float() {
            return Err(ModelError::Input(format!(
                "pixel_values must be a float tensor, got {:?}",
                pixel_values.dtype()
            )));
        }
        if batch == 0 {
            return Ok(Tensor::zeros(
                (0, self.projection_dim()),
                DType::F32,
                &self.device,
            )?);
        }
        match &self.team {
            Some(team) => {
                let pixels = pixel_values
                    .to_device(&Device::Cpu)?
                    .to_dtype(DType::F32)?
                    .flatten_all()?
                    .to_vec1::<f32>()?;
                let features =
                    crate::vision_cpu::image_features(&self.vision, vc, &pixels, batch, team)?;
                Ok(Tensor::from_vec(
                    features,
                    (batch, self.projection_dim()),
                    &Device::Cpu,
                )?)
            }
            None => Ok(self.vision_forward(pixel_values, batch)?),
        }
    }

    fn vision_forward(&self, pixels: &Tensor, batch: usize) -> candle_core::Result<Tensor> {
        let vc = &self.config.vision;
        let v = &self.vision;
        let (p, g, c) = (vc.patch_size, vc.grid_size(), vc.num_channels);
        let width = vc.hidden_size;
        let seq = g * g + 1;
        let mut x = pixels.to_device(&self.device)?.to_dtype(self.dtype)?;
        if g * p != vc.image_size {
            // A strided convolution ignores the pixels past the last whole patch.
            x = x.narrow(2, 0, g * p)?.narrow(3, 0, g * p)?;
        }
        // Patch embedding = stride-p convolution = one matmul over the
        // flattened patches (rows in raster order, as conv output flattens).
        let patches = x
            .reshape((batch, c, g, p, g, p))?
            .permute((0, 2, 4, 1, 3, 5))?
            .contiguous()?
            .reshape((batch * g * g, c * p * p))?;
        let patches = v
            .patch_embedding
            .forward(&patches)?
            .reshape((batch, g * g, width))?;
        let class = v
            .class_embedding
            .reshape((1, 1, width))?
            .broadcast_as((batch, 1, width))?
            // candle's cat along dim 1 is only fast for contiguous parts.
            .contiguous()?;
        let x = Tensor::cat(&[&class, &patches], 1)?
            .broadcast_add(&v.position_embedding)?
            .reshape((batch * seq, width))?;
        let mut x = v.pre_ln.forward(&x)?;
        for layer in &v.layers {
            x = layer.forward(&x, batch, seq, None)?;
        }
        // Only the class token is used: normalise just those rows.
        let pooled = x.reshape((batch, seq, width))?.i((.., 0))?.contiguous()?;
        let pooled = v.post_ln.forward(&pooled)?;
        v.projection.forward(&pooled)?.to_dtype(DType::F32)
    }

    /// Projected text features (`get_text_features`), unnormalised.
    ///
    /// `input_ids`: `[batch, seq]` (u32 or i64) token ids with BOS and EOS,
    /// `seq ≤` [`Self::max_text_len`]. Rows of a batch may be padded to a
    /// common length with any token placed *after* the EOS (attention is
    /// causal, so padding cannot reach the pooled EOS state); pad with the
    /// EOS token itself (`<|endoftext|>`, what `ClipTokenizer` does), which is
    /// right for both pooling rules: legacy checkpoints pool at the first
    /// maximal id, newer ones at the first EOS. Returns `[batch,
    /// projection_dim]` f32.
    pub fn text_features(&self, input_ids: &Tensor) -> Result<Tensor, ModelError> {
        let (batch, seq) = input_ids.dims2().map_err(|_| {
            ModelError::Input(format!(
                "input_ids must be [batch, seq], got {:?}",
                input_ids.dims()
            ))
        })?;
        let ids = match input_ids.dtype() {
            DType::U32 => input_ids.flatten_all()?.to_vec1::<u32>()?,
            DType::I64 => input_ids
                .flatten_all()?
                .to_vec1::<i64>()?
                .into_iter()
                .map(|id| u32::try_from(id).unwrap_or(u32::MAX))
                .collect(),
            other => {
                return Err(ModelError::Input(format!(
                    "input_ids must be u32 or i64, got {other:?}"
                )))
            }
        };
        self.text_features_from_ids(&ids, batch, seq)
    }

    /// [`Self::text_features`] over a row-major `[batch, seq]` id buffer, as
    /// `ClipTokenizer::encode_batch_padded` returns it.
    pub fn text_features_from_ids(
        &self,
        ids: &[u32],
        batch: usize,
        seq: usize,
    ) -> Result<Tensor, ModelError> {
        let tc = &self.config.text;
        if ids.len() != batch * seq {
            return Err(ModelError::Input(format!(
                "{} token ids for a [{batch}, {seq}] batch",
                ids.len()
            )));
        }
        if batch == 0 {
            return Ok(Tensor::zeros(
                (0, self.projection_dim()),
                DType::F32,
                &self.device,
            )?);
        }
        if seq == 0 || seq > tc.max_position_embeddings {
            return Err(ModelError::Input(format!(
                "token sequences must hold 1 to {} ids, got {seq}",
                tc.max_position_embeddings
            )));
        }
        if let Some(bad) = ids.iter().find(|&&id| id as usize >= tc.vocab_size) {
            return Err(ModelError::Input(format!(
                "token id {bad} is outside the vocabulary of {}",
                tc.vocab_size
            )));
        }
        // Pooling positions are decided on the host: the ids are there anyway,
        // and this keeps transformers' tie rules explicit (first maximum).
        let pooled_rows: Vec<u32> = ids
            .chunks_exact(seq)
            .enumerate()
            .map(|(row, tokens)| {
                let pos = pool_position(tokens, tc.pooling);
                // Bounded by batch * seq ≤ batch * max_position_embeddings,
                // which the id buffer's existence keeps far below u32::MAX.
                (row * seq + pos) as u32
            })
            .collect();
        Ok(self.text_forward(ids, batch, seq, &pooled_rows)?)
    }

    fn text_forward(
        &self,
        ids: &[u32],
        batch: usize,
        seq: usize,
        pooled_rows: &[u32],
    ) -> candle_core::Result<Tensor> {
        let t = &self.text;
        let width = self.config.text.hidden_size;
        let ids = Tensor::from_slice(ids, batch * seq, &self.device)?;
        let x = t
            .token_embedding
            .index_select(&ids, 0)?
            .reshape((batch, seq, width))?
            .broadcast_add(&t.position_embedding.narrow(0, 0, seq)?)?
            .reshape((batch * seq, width))?;
        let mask = causal_mask(seq, self.dtype, &self.device)?;
        let mut x = x;
        for layer in &t.layers {
            x = layer.forward(&x, batch, seq, Some(&mask))?;
        }
        // The final layer norm is per token, so pooling first is equivalent
        // and normalises `batch` rows instead of `batch * seq`.
        let rows = Tensor::from_slice(pooled_rows, pooled_rows.len(), &self.device)?;
        let pooled = x.index_select(&rows, 0)?;
        let pooled = t.final_ln.forward(&pooled)?;
        t.projection.forward(&pooled)?.to_dtype(DType::F32)
    }
}

/// The position whose hidden state is the text feature, per transformers.
fn pool_position(tokens: &[u32], pooling: TextPooling) -> usize {
    match pooling {
        TextPooling::ArgmaxId => {
            // First index of the maximum, like torch.argmax.
            let mut best = 0;
            for (i, &id) in tokens.iter().enumerate() {
                if id > tokens[best] {
                    best = i;
                }
            }
            best
        }
        TextPooling::FirstToken(eos) => tokens.iter().position(|&id| id == eos).unwrap_or(0),
    }
}

/// Additive causal mask `[seq, seq]`: 0 on and below the diagonal, -inf above.
fn causal_mask(seq: usize, dtype: DType, device: &Device) -> candle_core::Result<Tensor> {
    let mask: Vec<f32> = (0..seq)
        .flat_map(|i| (0..seq).map(move |j| if j > i { f32::NEG_INFINITY } else { 0.0 }))
        .collect();
    Tensor::from_vec(mask, (seq, seq), device)?.to_dtype(dtype)
}

/// How the loader stores linear weights (see [`LinearWeight`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Packing {
    None,
    Panels,
    Blocks(WeightFormat),
}

/// Reads named tensors in the model's dtype and device.
struct Loader<'a> {
    file: &'a mut SafetensorsFile,
    dtype: DType,
    device: &'a Device,
    packing: Packing,
}

impl Loader<'_> {
    fn get(&mut self, name: &str, shape: &[usize]) -> Result<Tensor, ModelError> {
        self.file.load(name, shape, self.dtype, self.device)
    }

    /// Wraps a tensor-op failure during a load-time rewrite with the tensor's name.
    fn op_err(&self, name: &str, e: candle_core::Error) -> ModelError {
        ModelError::Tensor {
            path: self.file.path().to_path_buf(),
            name: name.to_string(),
            message: e.to_string(),
        }
    }

    fn linear(
        &mut self,
        prefix: &str,
        out: usize,
        inp: usize,
        bias: bool,
    ) -> Result<Linear, ModelError> {
        let weight = self.get(&format!("{prefix}.weight"), &[out, inp])?;
        let bias = if bias {
            Some(self.get(&format!("{prefix}.bias"), &[out])?)
        } else {
            None
        };
        self.finish_linear(prefix, weight, bias)
    }

    fn layer_norm(&mut self, prefix: &str, dim: usize, eps: f64) -> Result<LayerNorm, ModelError> {
        Ok(LayerNorm {
            weight: self.get(&format!("{prefix}.weight"), &[dim])?,
            bias: self.get(&format!("{prefix}.bias"), &[dim])?,
            eps: eps as f32,
        })
    }

    /// q, k, v fused into one projection, with `head_dim^-0.5` folded into q.
    fn fused_qkv(
        &mut self,
        prefix: &str,
        width: usize,
        heads: usize,
    ) -> Result<Linear, ModelError> {
        let scale = ((width / heads) as f64).powf(-0.5);
        let mut weights = Vec::with_capacity(3);
        let mut biases = Vec::with_capacity(3);
        for (name, s) in [("q_proj", scale), ("k_proj", 1.0), ("v_proj", 1.0)] {
            let w_name = format!("{prefix}.{name}.weight");
            let b_name = format!("{prefix}.{name}.bias");
            // Scale in f32 before rounding to the compute dtype.
            let w = self
                .file
                .load(&w_name, &[width, width], DType::F32, self.device)?;
            let b = self.file.load(&b_name, &[width], DType::F32, self.device)?;
            let (w, b) = if s == 1.0 {
                (w, b)
            } else {
                (
                    (w * s).map_err(|e| self.op_err(&w_name, e))?,
                    (b * s).map_err(|e| self.op_err(&b_name, e))?,
                )
            };
            weights.push(w);
            biases.push(b);
        }
        let name = format!("{prefix}.q_proj");
        let fuse = |parts: &[Tensor], dtype| Tensor::cat(parts, 0)?.to_dtype(dtype);
        let weight = fuse(&weights, self.dtype).map_err(|e| self.op_err(&name, e))?;
        drop(weights);
        let bias = fuse(&biases, self.dtype).map_err(|e| self.op_err(&name, e))?;
        self.finish_linear(&name, weight, Some(bias))
    }

    /// Builds a layer from an `[out, in]` weight, packed as the loader is
    /// set to (see [`LinearWeight`]).
    fn finish_linear(
        &self,
        name: &str,
        weight: Tensor,
        bias: Option<Tensor>,
    ) -> Result<Linear, ModelError> {
        if self.packing == Packing::None {
            return Ok(Linear {
                weight: LinearWeight::Dense(weight),
                bias,
            });
        }
        let (out, inp) = weight.dims2().map_err(|e| self.op_err(name, e))?;
        let rows = weight
            .flatten_all()
            .and_then(|t| t.to_vec1::<f32>())
            .map_err(|e| self.op_err(name, e))?;
        drop(weight);
        let weight = match self.packing {
            Packing::Blocks(kind) => {
                LinearWeight::Blocks(Arc::new(PackedWeight::pack(&rows, out, inp, kind)))
            }
            _ => {
                let packed = crate::kernels::pack_panels(&rows, out, inp);
                drop(rows);
                LinearWeight::Panels(
                    Tensor::from_vec(packed, (out, inp), self.device)
                        .map_err(|e| self.op_err(name, e))?,
                )
            }
        };
        Ok(Linear { weight, bias })
    }

    #[allow(clippy::too_many_arguments)]
    fn encoder_layers(
        &mut self,
        prefix: &str,
        layers: usize,
        width: usize,
        intermediate: usize,
        heads: usize,
        act: Activation,
        eps: f64,
    ) -> Result<Vec<EncoderLayer>, ModelError> {
        (0..layers)
            .map(|i| {
                let p = format!("{prefix}.encoder.layers.{i}");
                Ok(EncoderLayer {
                    ln1: self.layer_norm(&format!("{p}.layer_norm1"), width, eps)?,
                    attn: Attention {
                        qkv: self.fused_qkv(&format!("{p}.self_attn"), width, heads)?,
                        out: self.linear(&format!("{p}.self_attn.out_proj"), width, width, true)?,
                        heads,
                        head_dim: width / heads,
                    },
                    ln2: self.layer_norm(&format!("{p}.layer_norm2"), width, eps)?,
                    mlp: Mlp {
                        fc1: self.linear(&format!("{p}.mlp.fc1"), intermediate, width, true)?,
                        fc2: self.linear(&format!("{p}.mlp.fc2"), width, intermediate, true)?,
                        act,
                    },
                })
            })
            .collect()
    }
}

fn load_vision(w: &mut Loader<'_>, config: &ClipConfig) -> Result<VisionTower, ModelError> {
    let vc = &config.vision;
    let width = vc.hidden_size;
    let (c, p) = (vc.num_channels, vc.patch_size);
    let conv_name = "vision_model.embeddings.patch_embedding.weight";
    let patch_weight = w.get(conv_name, &[width, c, p, p])?;
    let patch_weight = patch_weight
        .reshape((width, c * p * p))
        .map_err(|e| w.op_err(conv_name, e))?;
    Ok(VisionTower {
        patch_embedding: w.finish_linear(conv_name, patch_weight, None)?,
        class_embedding: w.get("vision_model.embeddings.class_embedding", &[width])?,
        position_embedding: w.get(
            "vision_model.embeddings.position_embedding.weight",
            &[vc.num_positions(), width],
        )?,
        pre_ln: w.layer_norm("vision_model.pre_layrnorm", width, vc.layer_norm_eps)?,
        layers: w.encoder_layers(
            "vision_model",
            vc.num_hidden_layers,
            width,
            vc.intermediate_size,
            vc.num_attention_heads,
            vc.hidden_act,
            vc.layer_norm_eps,
        )?,
        post_ln: w.layer_norm("vision_model.post_layernorm", width, vc.layer_norm_eps)?,
        projection: w.linear("visual_projection", config.projection_dim, width, false)?,
    })
}

fn load_text(w: &mut Loader<'_>, config: &ClipConfig) -> Result<TextTower, ModelError> {
    let tc = &config.text;
    let width = tc.hidden_size;
    Ok(TextTower {
        token_embedding: w.get(
            "text_model.embeddings.token_embedding.weight",
            &[tc.vocab_size, width],
        )?,
        position_embedding: w.get(
            "text_model.embeddings.position_embedding.weight",
            &[tc.max_position_embeddings, width],
        )?,
        layers: w.encoder_layers(
            "text_model",
            tc.num_hidden_layers,
            width,
            tc.intermediate_size,
            tc.num_attention_heads,
            tc.hidden_act,
            tc.layer_norm_eps,
        )?,
        final_ln: w.layer_norm("text_model.final_layer_norm", width, tc.layer_norm_eps)?,
        projection: w.linear("text_projection", config.projection_dim, width, false)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pooling_follows_transformers() {
        // Legacy: first maximal id (EOS-padded rows tie on 49407).
        assert_eq!(
            pool_position(&[49406, 5, 49407, 49407], TextPooling::ArgmaxId),
            2
        );
        assert_eq!(
            pool_position(&[49406, 5, 49407, 0], TextPooling::FirstToken(49407)),
            2
        );
        // No EOS: argmax over an all-false mask is position 0.
        assert_eq!(
            pool_position(&[49406, 5], TextPooling::FirstToken(49407)),
            0
        );
    }

    #[test]
    fn causal_mask_blocks_the_future() {
        let m = causal_mask(3, DType::F32, &Device::Cpu)
            .unwrap()
            .to_vec2::<f32>()
            .unwrap();
        assert_eq!(m[0][0], 0.0);
        assert_eq!(m[2][0], 0.0);
        assert!(m[0][1].is_infinite() && m[0][1] < 0.0);
        assert!(m[1][2].is_infinite());
    }

    #[test]
    fn rejects_precisions_the_kernels_cannot_run() {
        let dir = Path::new("/nonexistent");
        let e =
            ClipModel::load_with_kernels(dir, &Device::Cpu, Precision::Int8, VisionKernels::Candle)
                .unwrap_err();
        assert!(matches!(e, ModelError::Unsupported(_)), "{e}");
        let e =
            ClipModel::load_with_kernels(dir, &Device::Cpu, Precision::F16, VisionKernels::Fused)
                .unwrap_err();
        assert!(matches!(e, ModelError::Unsupported(_)), "{e}");
    }
}
