//! The vision tower's fused forward for the CPU (f32, or bf16/int8 matrix
//! products with everything between them in f32).
//!
//! Same maths as the candle forward in `clip.rs` (and transformers'
//! `CLIPVisionModel`), reorganised for a CPU: activations live in a handful of
//! row-major buffers allocated once per call and reused by every layer; bias
//! and residual adds fold into the matrix products' accumulate mode or into one
//! pass with the activation; attention runs per (image, head) on strided
//! views of the fused q/k/v rows, without head-major copies; every heavy pass
//! is split over the model's compute team (`team.rs`), so exactly the
//! configured threads compute. Weights
//! are read in place from the candle tensors that hold them (no second copy).

use candle_core::{Storage, StorageRef, Tensor};

use crate::clip::{EncoderLayer, LayerNorm, Linear, LinearWeight, VisionTower};
use crate::config::{Activation, ClipVisionConfig};
use crate::error::ModelError;
use crate::kernels::{self, AttentionShape, Epilogue};
use crate::packed::{self, PackedWeight};
use crate::team::Team;

/// A contiguous CPU f32 tensor, read-locked while the forward uses it.
struct Held<'a> {
    guard: StorageRef<'a>,
    start: usize,
    end: usize,
}

impl<'a> Held<'a> {
    fn new(t: &'a Tensor) -> Result<Self, ModelError> {
        let (guard, layout) = t.storage_and_layout();
        let (start, end) = layout.contiguous_offsets().ok_or_else(|| {
            ModelError::Internal("fused CPU forward: non-contiguous weight".into())
        })?;
        Ok(Self { guard, start, end })
    }

    fn slice(&self) -> Result<&[f32], ModelError> {
        match &*self.guard {
            Storage::Cpu(cpu) => Ok(&cpu.as_slice::<f32>()?[self.start..self.end]),
            _ => Err(ModelError::Internal(
                "fused CPU forward: weights are not on the CPU".into(),
            )),
        }
    }
}

/// A linear layer's packed weight, held.
enum HeldWeight<'a> {
    /// f32 panels for gemm.
    Panels(Held<'a>),
    /// Blocks for the packed kernels (f32, bf16 or int8).
    Blocks(&'a PackedWeight),
}

/// A linear layer's packed weight and optional bias, held.
struct HeldLinear<'a> {
    weight: HeldWeight<'a>,
    bias: Option<Held<'a>>,
    out: usize,
}

impl<'a> HeldLinear<'a> {
    fn new(l: &'a Linear) -> Result<Self, ModelError> {
        let (weight, out) = match &l.weight {
            LinearWeight::Panels(t) => (HeldWeight::Panels(Held::new(t)?), t.dim(0)?),
            LinearWeight::Blocks(p) => (HeldWeight::Blocks(p), p.out),
            LinearWeight::Dense(_) => {
                return Err(ModelError::Internal(
                    "fused CPU forward: weights were not packed at load".into(),
                ))
            }
        };
        Ok(Self {
            weight,
            bias: l.bias.as_ref().map(Held::new).transpose()?,
            out,
        })
    }

    /// `dst = act(x · Wᵀ + b)`, or `dst += x · Wᵀ + b` when `residual`.
    fn apply(
        &self,
        x: &[f32],
        rows: usize,
        dst: &mut [f32],
        residual: bool,
        act: Option<Activation>,
        team: &Team,
    ) -> Result<(), ModelError> {
        let epi = Epilogue {
            bias: self.bias.as_ref().map(Held::slice).transpose()?,
            accumulate: residual,
            act,
        };
        match &self.weight {
            HeldWeight::Panels(w) => {
                let w = w.slice()?;
                let k = w.len().checked_div(self.out).unwrap_or(0);
                kernels::linear(x, rows, k, w, self.out, dst, epi, team)
            }
            HeldWeight::Blocks(w) => packed::linear(x, rows, w, dst, epi, team),
        }
    }
}

struct HeldNorm<'a> {
    weight: Held<'a>,
    bias: Held<'a>,
    eps: f32,
}

impl<'a> HeldNorm<'a> {
    fn new(n: &'a LayerNorm) -> Result<Self, ModelError> {
        Ok(Self {
            weight: Held::new(&n.weight)?,
            bias: Held::new(&n.bias)?,
            eps: n.eps,
        })
    }

    fn apply(&self, x: &[f32], out: &mut [f32], team: &Team) -> Result<(), ModelError> {
        let (w, b) = (self.weight.slice()?, self.bias.slice()?);
        kernels::layer_norm_rows(x, out, w, b, self.eps, team)
    }
}

/// Activation buffers of one forward, reused by every layer.
struct Buffers {
    /// Residual stream `[rows, width]`.
    x: Vec<f32>,
    /// Layer-norm output `[rows, width]`.
    normed: Vec<f32>,
    /// `[rows, 3·width]`.
    qkv: Vec<f32>,
    /// Attention output `[rows, width]`.
    attn: Vec<f32>,
    /// MLP hidden `[rows, intermediate]`.
    hidden: Vec<f32>,
}

/// Projected image features `[batch, projection_dim]` of CLIP-normalised
/// `pixels` (`[batch, channels, image_size, image_size]`, row-major).
pub(crate) fn image_features(
    tower: &VisionTower,
    vc: &ClipVisionConfig,
    pixels: &[f32],
    batch: usize,
    team: &Team,
) -> Result<Vec<f32>, ModelError> {
    let (p, g, c, size) = (
        vc.patch_size,
        vc.grid_size(),
        vc.num_channels,
        vc.image_size,
    );
    let width = vc.hidden_size;
    let seq = g * g + 1;
    let rows = batch * seq;
    if pixels.len() != batch * c * size * size {
        return Err(ModelError::Input(format!(
            "pixel buffer holds {} values, expected {}",
            pixels.len(),
            batch * c * size * size
        )));
    }

    // Patch embedding: the stride-p convolution as one product over the
    // flattened (channel, row, column) patches.
    let patch_len = c * p * p;
    let mut patches = vec![0.0f32; batch * g * g * patch_len];
    // Plain copies (~1 % of the forward at one thread): not worth a pass.
    patches
        .chunks_exact_mut(patch_len)
        .enumerate()
        .for_each(|(idx, dst)| {
            let (b, gy, gx) = (idx / (g * g), (idx / g) % g, idx % g);
            for ch in 0..c {
                for py in 0..p {
                    let src = ((b * c + ch) * size + gy * p + py) * size + gx * p;
                    let at = (ch * p + py) * p;
                    dst[at..at + p].copy_from_slice(&pixels[src..src + p]);
                }
            }
        });
    let mut embedded = vec![0.0f32; batch * g * g * width];
    HeldLinear::new(&tower.patch_embedding)?.apply(
        &patches,
        batch * g * g,
        &mut embedded,
        false,
        None,
        team,
    )?;
    drop(patches);

    let class = Held::new(&tower.class_embedding)?;
    let positions = Held::new(&tower.position_embedding)?;
    let (class, positions) = (class.slice()?, positions.slice()?);
    let mut buf = Buffers {
        x: vec![0.0; rows * width],
        normed: vec![0.0; rows * width],
        qkv: vec![0.0; rows * 3 * width],
        attn: vec![0.0; rows * width],
        hidden: vec![0.0; rows * vc.intermediate_size],
    };
    buf.normed
        .chunks_exact_mut(width)
        .enumerate()
        .for_each(|(r, row)| {
            let (b, s) = (r / seq, r % seq);
            let token = if s == 0 {
                class
            } else {
                &embedded[(b * g * g + s - 1) * width..][..width]
            };
            let pos = &positions[s * width..][..width];
            for ((d, t), e) in row.iter_mut().zip(token).zip(pos) {
                *d = t + e;
            }
        });
    drop(embedded);
    HeldNorm::new(&tower.pre_ln)?.apply(&buf.normed, &mut buf.x, team)?;

    let shape = AttentionShape {
        batch,
        seq,
        heads: vc.num_attention_heads,
        head_dim: width / vc.num_attention_heads,
    };
    // Only the class token is pooled, so the last block needs its own
    // output at that one position per image: keys and values still come from
    // every token, but attention, the output projection and the MLP run on
    // one row per image instead of `seq` (exact, and ~7 % of ViT-B/32's FLOPs).
    let (last, body) = match tower.layers.split_last() {
        Some((last, body)) => (Some(last), body),
        None => (None, &tower.layers[..]),
    };
    for layer in body {
        encoder_layer(layer, &mut buf, rows, shape, shape.seq, team)?;
    }
    match last {
        Some(layer) => encoder_layer(layer, &mut buf, rows, shape, 1, team)?,
        None => buf.x = class_rows(&buf.x, batch, seq, width),
    }
    let pooled = &buf.x;
    let mut normed = vec![0.0f32; batch * width];
    HeldNorm::new(&tower.post_ln)?.apply(pooled, &mut normed, team)?;
    let projection = HeldLinear::new(&tower.projection)?;
    let mut out = vec![0.0f32; batch * projection.out];
    projection.apply(&normed, batch, &mut out, false, None, team)?;
    Ok(out)
}

/// Rows `b·seq` (each sequence's first token) of `[batch·seq, width]` `x`.
fn class_rows(x: &[f32], batch: usize, seq: usize, width: usize) -> Vec<f32> {
    let mut out = vec![0.0f32; batch * width];
    for (b, dst) in out.chunks_exact_mut(width).enumerate() {
        dst.copy_from_slice(&x[b * seq * width..][..width]);
    }
    out
}

/// One pre-norm block on `buf.x`. With `queries == seq` every position is
/// updated in place; with `queries == 1` only each sequence's first position
/// is computed and `buf.x` becomes those `[batch, width]` rows.
fn encoder_layer(
    layer: &EncoderLayer,
    buf: &mut Buffers,
    rows: usize,
    shape: AttentionShape,
    queries: usize,
    team: &Team,
) -> Result<(), ModelError> {
    let qkv = HeldLinear::new(&layer.attn.qkv)?;
    let out = HeldLinear::new(&layer.attn.out)?;
    let fc1 = HeldLinear::new(&layer.mlp.fc1)?;
    let fc2 = HeldLinear::new(&layer.mlp.fc2)?;
    let width = shape.heads * shape.head_dim;

    HeldNorm::new(&layer.ln1)?.apply(&buf.x, &mut buf.normed, team)?;
    qkv.apply(&buf.normed, rows, &mut buf.qkv, false, None, team)?;
    let kept = shape.batch * queries;
    let attn = &mut buf.attn[..kept * width];
    kernels::attention(&buf.qkv, attn, shape, queries, team)?;
    if queries < shape.seq {
        buf.x = class_rows(&buf.x, shape.batch, shape.seq, width);
    }
    out.apply(attn, kept, &mut buf.x, true, None, team)?;

    let normed = &mut buf.normed[..kept * width];
    HeldNorm::new(&layer.ln2)?.apply(&buf.x, normed, team)?;
    let hidden = &mut buf.hidden[..kept * fc1.out];
    fc1.apply(normed, kept, hidden, false, Some(layer.mlp.act), team)?;
    fc2.apply(hidden, kept, &mut buf.x, true, None, team)
}
