//! The few NHWC operations the face networks need, with TensorFlow's
//! padding rules ("SAME" pads the bottom/right more when the total is odd).
//!
//! Activations stay channel-last so that TF filters `[kh, kw, in, out]` are
//! already the `[k, out]` matrix of an im2col convolution, and 1×1
//! convolutions are plain matrix products. The depthwise convolution is a
//! hand loop because candle runs a grouped convolution as one convolution per
//! channel.

use candle_core::{Device, Tensor};
use rayon::prelude::*;

use crate::error::ModelError;

/// One image's activations, `[h, w, c]` row-major.
#[derive(Debug, Clone)]
pub(crate) struct Map {
    pub h: usize,
    pub w: usize,
    pub c: usize,
    pub data: Vec<f32>,
}

/// TensorFlow's two padding modes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Padding {
    Same,
    Valid,
}

impl Padding {
    /// Output size and padding before, for one axis.
    fn plan(self, input: usize, kernel: usize, stride: usize) -> (usize, usize) {
        match self {
            Padding::Valid => ((input.saturating_sub(kernel)) / stride + 1, 0),
            Padding::Same => {
                let out = input.div_ceil(stride);
                let total = ((out - 1) * stride + kernel).saturating_sub(input);
                (out, total / 2)
            }
        }
    }
}

/// A convolution's filter as the `[kh * kw * in, out]` matrix, plus bias.
pub(crate) struct Conv {
    pub k: usize,
    pub cin: usize,
    pub cout: usize,
    matrix: Tensor,
    pub bias: Vec<f32>,
}

impl Conv {
    /// From TF's `[k, k, in, out]` filter values and a bias of `out`.
    pub fn new(
        k: usize,
        cin: usize,
        cout: usize,
        filter: &[f32],
        bias: Vec<f32>,
    ) -> Result<Self, ModelError> {
        let matrix = Tensor::from_slice(filter, (k * k * cin, cout), &Device::Cpu)?;
        Ok(Self {
            k,
            cin,
            cout,
            matrix,
            bias,
        })
    }

    /// Convolution plus bias.
    pub fn forward(&self, x: &Map, stride: usize, padding: Padding) -> Result<Map, ModelError> {
        if x.c != self.cin {
            return Err(ModelError::Internal(format!(
                "convolution over {} channels given {}",
                self.cin, x.c
            )));
        }
        let (oh, top) = padding.plan(x.h, self.k, stride);
        let (ow, left) = padding.plan(x.w, self.k, stride);
        let rows = oh * ow;
        let cols = if self.k == 1 && stride == 1 {
            Tensor::from_slice(&x.data, (rows, x.c), &Device::Cpu)?
        } else {
            Tensor::from_vec(
                im2col(x, self.k, stride, (oh, top), (ow, left)),
                (rows, self.k * self.k * x.c),
                &Device::Cpu,
            )?
        };
        let mut data = cols.matmul(&self.matrix)?.flatten_all()?.to_vec1::<f32>()?;
        add_bias(&mut data, &self.bias);
        Ok(Map {
            h: oh,
            w: ow,
            c: self.cout,
            data,
        })
    }
}

fn im2col(
    x: &Map,
    k: usize,
    stride: usize,
    (oh, top): (usize, usize),
    (ow, left): (usize, usize),
) -> Vec<f32> {
    let patch = k * k * x.c;
    let mut cols = vec![0.0f32; oh * ow * patch];
    cols.par_chunks_mut(ow * patch)
        .enumerate()
        .for_each(|(oy, row)| {
            for ox in 0..ow {
                let out = &mut row[ox * patch..(ox + 1) * patch];
                for ky in 0..k {
                    let Some(iy) = (oy * stride + ky).checked_sub(top).filter(|&iy| iy < x.h)
                    else {
                        continue;
                    };
                    for kx in 0..k {
                        let Some(ix) = (ox * stride + kx).checked_sub(left).filter(|&ix| ix < x.w)
                        else {
                            continue;
                        };
                        let src = (iy * x.w + ix) * x.c;
                        let dst = (ky * k + kx) * x.c;
                        out[dst..dst + x.c].copy_from_slice(&x.data[src..src + x.c]);
                    }
                }
            }
        });
    cols
}

/// A depthwise convolution's filter `[k, k, c]` (channel multiplier 1) and bias.
pub(crate) struct Depthwise {
    pub k: usize,
    pub filter: Vec<f32>,
    pub bias: Vec<f32>,
}

impl Depthwise {
    pub fn forward(&self, x: &Map, stride: usize) -> Map {
        let (oh, top) = Padding::Same.plan(x.h, self.k, stride);
        let (ow, left) = Padding::Same.plan(x.w, self.k, stride);
        let c = x.c;
        let mut data = vec![0.0f32; oh * ow * c];
        data.par_chunks_mut(ow * c)
            .enumerate()
            .for_each(|(oy, row)| {
                for ox in 0..ow {
                    let acc = &mut row[ox * c..(ox + 1) * c];
                    acc.copy_from_slice(&self.bias);
                    for ky in 0..self.k {
                        let Some(iy) = (oy * stride + ky).checked_sub(top).filter(|&iy| iy < x.h)
                        else {
                            continue;
                        };
                        for kx in 0..self.k {
                            let Some(ix) =
                                (ox * stride + kx).checked_sub(left).filter(|&ix| ix < x.w)
                            else {
                                continue;
                            };
                            let src = &x.data[(iy * x.w + ix) * c..][..c];
                            let f = &self.filter[(ky * self.k + kx) * c..][..c];
                            for ((a, s), w) in acc.iter_mut().zip(src).zip(f) {
                                *a += s * w;
                            }
                        }
                    }
                }
            });
        Map {
            h: oh,
            w: ow,
            c,
            data,
        }
    }
}

pub(crate) fn add_bias(data: &mut [f32], bias: &[f32]) {
    for px in data.chunks_exact_mut(bias.len()) {
        for (v, b) in px.iter_mut().zip(bias) {
            *v += b;
        }
    }
}

impl Map {
    pub fn relu(mut self) -> Self {
        self.data.iter_mut().for_each(|v| *v = v.max(0.0));
        self
    }

    pub fn relu6(mut self) -> Self {
        self.data.iter_mut().for_each(|v| *v = v.clamp(0.0, 6.0));
        self
    }

    /// Per-channel `x * scale + shift`.
    pub fn affine(mut self, scale: &[f32], shift: &[f32]) -> Self {
        for px in self.data.chunks_exact_mut(self.c) {
            for ((v, s), b) in px.iter_mut().zip(scale).zip(shift) {
                *v = *v * s + b;
            }
        }
        self
    }

    /// Element-wise sum of maps of one shape.
    pub fn add(mut self, other: &Map) -> Self {
        self.data
            .iter_mut()
            .zip(&other.data)
            .for_each(|(a, b)| *a += b);
        self
    }

    /// Max or average pooling without padding.
    fn pool(&self, k: usize, stride: usize, max: bool) -> Map {
        let (oh, _) = Padding::Valid.plan(self.h, k, stride);
        let (ow, _) = Padding::Valid.plan(self.w, k, stride);
        let c = self.c;
        let mut data = vec![0.0f32; oh * ow * c];
        for oy in 0..oh {
            for ox in 0..ow {
                let out = &mut data[(oy * ow + ox) * c..][..c];
                out.fill(if max { f32::NEG_INFINITY } else { 0.0 });
                for iy in oy * stride..oy * stride + k {
                    for ix in ox * stride..ox * stride + k {
                        let src = &self.data[(iy * self.w + ix) * c..][..c];
                        for (o, s) in out.iter_mut().zip(src) {
                            *o = if max { o.max(*s) } else { *o + s };
                        }
                    }
                }
                if !max {
                    let n = (k * k) as f32;
                    out.iter_mut().for_each(|o| *o /= n);
                }
            }
        }
        Map {
            h: oh,
            w: ow,
            c,
            data,
        }
    }

    pub fn max_pool(&self, k: usize, stride: usize) -> Map {
        self.pool(k, stride, true)
    }

    pub fn avg_pool(&self, k: usize, stride: usize) -> Map {
        self.pool(k, stride, false)
    }

    /// The mean over all positions: one value per channel.
    pub fn mean(&self) -> Vec<f32> {
        let mut sum = vec![0.0f32; self.c];
        for px in self.data.chunks_exact(self.c) {
            sum.iter_mut().zip(px).for_each(|(s, v)| *s += v);
        }
        let n = (self.h * self.w).max(1) as f32;
        sum.iter_mut().for_each(|s| *s /= n);
        sum
    }

    /// Zero rows at the bottom, zero columns at the right, zero channels at the end.
    pub fn pad_end(&self, h: usize, w: usize, c: usize) -> Map {
        let mut data = vec![0.0f32; h * w * c];
        for y in 0..self.h.min(h) {
            for x in 0..self.w.min(w) {
                let src = &self.data[(y * self.w + x) * self.c..][..self.c.min(c)];
                data[(y * w + x) * c..][..src.len()].copy_from_slice(src);
            }
        }
        Map { h, w, c, data }
    }
}

/// `x · matrix + bias` for a vector `x`; `matrix` is `[x.len(), out]`.
pub(crate) fn dense(x: &[f32], matrix: &[f32], bias: Option<&[f32]>) -> Vec<f32> {
    let out = matrix.len() / x.len().max(1);
    let mut y = bias.map_or_else(|| vec![0.0; out], <[f32]>::to_vec);
    for (xi, row) in x.iter().zip(matrix.chunks_exact(out)) {
        y.iter_mut().zip(row).for_each(|(acc, w)| *acc += xi * w);
    }
    y
}

/// An RGB photo, 8 bits per channel, row-major.
#[derive(Debug, Clone, Copy)]
pub struct RgbView<'a> {
    /// Width in pixels.
    pub width: usize,
    /// Height in pixels.
    pub height: usize,
    /// `width * height * 3` bytes.
    pub pixels: &'a [u8],
}

/// A pixel rectangle with integer corners inside the photo.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Crop {
    pub x: usize,
    pub y: usize,
    pub w: usize,
    pub h: usize,
}

/// Crops `crop` from the photo, pads it to a square with zeros (centred, or
/// at the bottom/right), resizes it to `size`×`size` as TensorFlow's
/// `resizeBilinear` (no corner alignment, no half-pixel centres) does, and
/// maps each value through `normalise(value, channel)`.
///
/// The padded square is never built: samples that fall in it read zero.
pub(crate) fn square_input(
    photo: &RgbView<'_>,
    crop: Crop,
    centre: bool,
    size: usize,
    normalise: impl Fn(f32, usize) -> f32 + Sync,
) -> Map {
    let side = crop.w.max(crop.h);
    let pad = |extent: usize| {
        let diff = side - extent;
        if centre {
            // The padding after is `round(diff / 2)`, the rest goes before.
            diff - diff.div_ceil(2)
        } else {
            0
        }
    };
    let (pad_x, pad_y) = (pad(crop.w), pad(crop.h));
    let ratio = side as f64 / size as f64;
    let sample = |py: usize, px: usize, ch: usize| -> f32 {
        // A position in the padded square; outside the crop reads zero.
        let (Some(y), Some(x)) = (py.checked_sub(pad_y), px.checked_sub(pad_x)) else {
            return 0.0;
        };
        if y >= crop.h || x >= crop.w {
            return 0.0;
        }
        photo.pixels[((crop.y + y) * photo.width + crop.x + x) * 3 + ch] as f32
    };
    let axis = |o: usize| {
        let src = o as f64 * ratio;
        let lo = (src.floor() as usize).min(side - 1);
        let hi = (lo + 1).min(side - 1);
        (lo, hi, (src - lo as f64) as f32)
    };
    let mut data = vec![0.0f32; size * size * 3];
    data.par_chunks_mut(size * 3)
        .enumerate()
        .for_each(|(oy, row)| {
            let (y0, y1, fy) = axis(oy);
            for ox in 0..size {
                let (x0, x1, fx) = axis(ox);
                for ch in 0..3 {
                    let top = sample(y0, x0, ch) + (sample(y0, x1, ch) - sample(y0, x0, ch)) * fx;
                    let bottom =
                        sample(y1, x0, ch) + (sample(y1, x1, ch) - sample(y1, x0, ch)) * fx;
                    row[ox * 3 + ch] = normalise(top + (bottom - top) * fy, ch);
                }
            }
        });
    Map {
        h: size,
        w: size,
        c: 3,
        data,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_padding_puts_the_odd_pixel_after() {
        assert_eq!(Padding::Same.plan(512, 3, 2), (256, 0));
        assert_eq!(Padding::Same.plan(7, 3, 2), (4, 1));
        assert_eq!(Padding::Same.plan(14, 3, 1), (14, 1));
        assert_eq!(Padding::Valid.plan(150, 7, 2), (72, 0));
        assert_eq!(Padding::Valid.plan(8, 3, 2), (3, 0));
    }

    #[test]
    fn convolution_matches_a_direct_sum() {
        // 3×3, stride 2, SAME over a 5×4×2 map, 3 outputs, against a naive loop.
        let x = Map {
            h: 5,
            w: 4,
            c: 2,
            data: (0..40).map(|v| (v as f32 * 0.37).sin()).collect(),
        };
        let filter: Vec<f32> = (0..54).map(|v| (v as f32 * 0.11).cos()).collect();
        let conv = Conv::new(3, 2, 3, &filter, vec![0.5, -0.5, 0.0]).unwrap();
        let y = conv.forward(&x, 2, Padding::Same).unwrap();
        assert_eq!((y.h, y.w, y.c), (3, 2, 3));
        let (top, left) = (1, 0); // total padding 2 rows (1 before), 1 column (0 before)
        for oy in 0..3 {
            for ox in 0..2 {
                for o in 0..3 {
                    let mut want = conv.bias[o];
                    for ky in 0..3 {
                        for kx in 0..3 {
                            let (iy, ix) =
                                ((oy * 2 + ky) as isize - top, (ox * 2 + kx) as isize - left);
                            if iy < 0 || ix < 0 || iy >= 5 || ix >= 4 {
                                continue;
                            }
                            for i in 0..2 {
                                want += x.data[((iy * 4 + ix) * 2 + i as isize) as usize]
                                    * filter[((ky * 3 + kx) * 2 + i) * 3 + o];
                            }
                        }
                    }
                    let got = y.data[(oy * 2 + ox) * 3 + o];
                    assert!(
                        (got - want).abs() < 1e-5,
                        "({oy},{ox},{o}): {got} vs {want}"
                    );
                }
            }
        }
    }

    #[test]
    fn square_input_pads_and_resizes_like_tensorflow() {
        // A 2×1 photo (one column) padded centred to 2×2: padding after is 1, before 0.
        let pixels = [10u8, 10, 10, 30, 30, 30];
        let photo = RgbView {
            width: 1,
            height: 2,
            pixels: &pixels,
        };
        let crop = Crop {
            x: 0,
            y: 0,
            w: 1,
            h: 2,
        };
        let same = square_input(&photo, crop, true, 2, |v, _| v);
        assert_eq!(
            same.data,
            vec![10.0, 10.0, 10.0, 0.0, 0.0, 0.0, 30.0, 30.0, 30.0, 0.0, 0.0, 0.0]
        );
        // Upsampled to 4: source positions 0, 0.5, 1, 1.5 (clamped at the edge).
        let up = square_input(&photo, crop, false, 4, |v, _| v);
        let column: Vec<f32> = (0..4).map(|y| up.data[y * 12]).collect();
        assert_eq!(column, vec![10.0, 20.0, 30.0, 30.0]);
        let row: Vec<f32> = (0..4).map(|x| up.data[x * 3]).collect();
        assert_eq!(row, vec![10.0, 5.0, 0.0, 0.0]);
    }
}
