//! Per-photo features, computed once from the decoded pixels.
//!
//! The server decodes a photo once and computes, in the same pass as the CLIP
//! embedding, everything the album tasks need later (seed 000: the embedding
//! is the expensive part, so nothing downstream may touch pixels again):
//!
//! - a 64-bit perceptual hash identical in definition to Python's
//!   `imagehash.phash`, which the original server used for duplicates;
//! - the variance of the Laplacian exactly as the original's OpenCV code
//!   computed it for the blur test;
//! - the decoded width and height.
//!
//! [`FeatureRecord`] bundles them with the embedding and has a compact,
//! versioned binary encoding for the feature store.

use image::RgbImage;
use thiserror::Error;

/// Everything the album tasks need from one photo, computed once.
#[derive(Debug, Clone, PartialEq)]
pub struct FeatureRecord {
    /// Unnormalised projected CLIP image features (tasks L2-normalise first).
    pub embedding: Vec<f32>,
    /// 64-bit perceptual hash, see [`phash`].
    pub phash: u64,
    /// Variance of the Laplacian of the 300 px greyscale copy, see [`laplacian_variance`].
    pub laplacian_var: f32,
    /// Decoded width in pixels (after EXIF orientation).
    pub width: u32,
    /// Decoded height in pixels (after EXIF orientation).
    pub height: u32,
}

/// Pixel-derived features (all but the embedding).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PixelFeatures {
    /// 64-bit perceptual hash, see [`phash`].
    pub phash: u64,
    /// Variance of the Laplacian, see [`laplacian_variance`].
    pub laplacian_var: f32,
    /// Image width in pixels.
    pub width: u32,
    /// Image height in pixels.
    pub height: u32,
}

/// Why a stored feature record could not be decoded.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum FeatureError {
    /// The byte string was empty.
    #[error("feature record is empty")]
    Empty,
    /// The record was written by an unknown (newer or foreign) format version.
    #[error("feature record has format version {found}, this build reads version {supported}")]
    UnsupportedVersion {
        /// Version byte found in the record.
        found: u8,
        /// The only version this build reads.
        supported: u8,
    },
    /// The record is shorter than its fixed header.
    #[error("feature record truncated: header needs {needed} bytes, got {got}")]
    Truncated {
        /// Bytes the header needs.
        needed: usize,
        /// Bytes present.
        got: usize,
    },
    /// The record's length disagrees with the embedding length in its header.
    #[error("feature record length mismatch: header implies {expected} bytes, got {got}")]
    LengthMismatch {
        /// Length implied by the header's embedding dimension.
        expected: usize,
        /// Actual length.
        got: usize,
    },
}

impl FeatureRecord {
    /// Current binary format version, the first byte of every encoded record.
    pub const FORMAT_VERSION: u8 = 1;

    /// Header size: version, width, height, phash, laplacian variance, embedding length.
    const HEADER_LEN: usize = 1 + 4 + 4 + 8 + 4 + 4;

    /// Combines an embedding with the pixel features of the same photo.
    pub fn new(embedding: Vec<f32>, pixels: PixelFeatures) -> Self {
        Self {
            embedding,
            phash: pixels.phash,
            laplacian_var: pixels.laplacian_var,
            width: pixels.width,
            height: pixels.height,
        }
    }

    /// The pixel-derived part of the record.
    pub fn pixel_features(&self) -> PixelFeatures {
        PixelFeatures {
            phash: self.phash,
            laplacian_var: self.laplacian_var,
            width: self.width,
            height: self.height,
        }
    }

    /// Encodes the record compactly (2 KiB for a 512-d embedding).
    ///
    /// Layout, all little-endian: `u8` format version (1), `u32` width,
    /// `u32` height, `u64` pHash, `f32` Laplacian variance, `u32` embedding
    /// length `n`, then `n` raw `f32`s.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(Self::HEADER_LEN + 4 * self.embedding.len());
        out.push(Self::FORMAT_VERSION);
        out.extend_from_slice(&self.width.to_le_bytes());
        out.extend_from_slice(&self.height.to_le_bytes());
        out.extend_from_slice(&self.phash.to_le_bytes());
        out.extend_from_slice(&self.laplacian_var.to_le_bytes());
        // An embedding longer than u32::MAX floats cannot exist in practice
        // (16 GiB); saturating keeps encode infallible and decode would then
        // reject the record by its length check rather than misread it.
        let n = u32::try_from(self.embedding.len()).unwrap_or(u32::MAX);
        out.extend_from_slice(&n.to_le_bytes());
        for v in &self.embedding {
            out.extend_from_slice(&v.to_le_bytes());
        }
        out
    }

    /// Decodes a record written by [`FeatureRecord::encode`], checking the
    /// version and every length.
    pub fn decode(bytes: &[u8]) -> Result<Self, FeatureError> {
        let (&version, _) = bytes.split_first().ok_or(FeatureError::Empty)?;
        if version != Self::FORMAT_VERSION {
            return Err(FeatureError::UnsupportedVersion {
                found: version,
                supported: Self::FORMAT_VERSION,
            });
        }
        if bytes.len() < Self::HEADER_LEN {
            return Err(FeatureError::Truncated {
                needed: Self::HEADER_LEN,
                got: bytes.len(),
            });
        }
        let mut r = Reader { bytes, pos: 1 };
        let width = u32::from_le_bytes(r.take());
        let height = u32::from_le_bytes(r.take());
        let phash = u64::from_le_bytes(r.take());
        let laplacian_var = f32::from_le_bytes(r.take());
        let n = u32::from_le_bytes(r.take()) as usize;
        let expected = n
            .checked_mul(4)
            .and_then(|b| b.checked_add(Self::HEADER_LEN))
            .unwrap_or(usize::MAX);
        if bytes.len() != expected {
            return Err(FeatureError::LengthMismatch {
                expected,
                got: bytes.len(),
            });
        }
        let embedding = bytes[Self::HEADER_LEN..]
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        Ok(Self {
            embedding,
            phash,
            laplacian_var,
            width,
            height,
        })
    }
}

/// Sequential fixed-size reads from a buffer whose length was checked first.
struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl Reader<'_> {
    fn take<const N: usize>(&mut self) -> [u8; N] {
        let mut out = [0u8; N];
        // Callers check the header length before reading, so the slice is
        // always in range; `get` keeps this panic-free regardless.
        if let Some(src) = self.bytes.get(self.pos..self.pos + N) {
            out.copy_from_slice(src);
        }
        self.pos += N;
        out
    }
}

/// Computes every pixel-derived feature of a decoded photo.
pub fn pixel_features(img: &RgbImage) -> PixelFeatures {
    PixelFeatures {
        phash: phash(img),
        laplacian_var: laplacian_variance(img),
        width: img.width(),
        height: img.height(),
    }
}

/// Number of differing bits between two hashes.
pub fn hamming(a: u64, b: u64) -> u32 {
    (a ^ b).count_ones()
}

// ---------------------------------------------------------------------------
// pHash
// ---------------------------------------------------------------------------

/// Side of the image the DCT runs on (`hash_size * highfreq_factor` = 8 × 4).
const PHASH_IMG: usize = 32;
/// Side of the low-frequency block that gives the 64 bits.
const PHASH_LOW: usize = 8;

/// 64-bit perceptual hash, as Python's `imagehash.phash(img)` computes it.
///
/// PIL greyscale ("L"), Lanczos resize to 32×32, 2-D DCT-II (scipy's
/// unnormalised convention, axis 0 then axis 1), top-left 8×8 block, each bit
/// set when its coefficient is above the block's median (numpy's median: the
/// mean of the two middle values), packed row-major, first bit the most
/// significant — the same integer as `int(str(imagehash.phash(img)), 16)`.
///
/// The greyscale conversion and the resize reproduce Pillow's integer
/// arithmetic exactly (see [`pil_resize_lanczos`]), so on the same pixels the
/// hash equals imagehash's (checked on 66 photos and sizes with Pillow 11.3).
/// Pillow 13 runs the vertical pass first for some images taller than wide,
/// which can move one or two bits; we keep the pass order of the Pillow
/// releases the original server ran. One deliberate difference: for flat images every
/// AC coefficient is mathematically zero and scipy's FFT leaves ±1e-13 noise
/// that decides those bits at random; we snap such coefficients to exactly
/// zero, so any constant image hashes to `0x8000_0000_0000_0000`.
pub fn phash(img: &RgbImage) -> u64 {
    let (w, h) = (img.width() as usize, img.height() as usize);
    if w == 0 || h == 0 {
        return 0;
    }
    let grey = pil_grey(img);
    let small = pil_resize_lanczos(&grey, w, h, PHASH_IMG, PHASH_IMG);
    let pixels: Vec<f64> = small.iter().map(|&p| f64::from(p)).collect();
    let coeffs = dct2_low(&pixels);
    phash_bits(&coeffs)
}

/// Bits from the 8×8 low-frequency DCT block, thresholded at its median.
fn phash_bits(coeffs: &[f64; PHASH_LOW * PHASH_LOW]) -> u64 {
    let mut sorted = *coeffs;
    sorted.sort_by(f64::total_cmp);
    let mid = sorted.len() / 2;
    let median = (sorted[mid - 1] + sorted[mid]) / 2.0;
    coeffs
        .iter()
        .fold(0u64, |acc, &c| (acc << 1) | u64::from(c > median))
}

/// PIL's RGB → "L" conversion: ITU-R 601-2 luma in 16-bit fixed point.
fn pil_grey(img: &RgbImage) -> Vec<u8> {
    img.pixels()
        .map(|p| {
            let [r, g, b] = p.0.map(u32::from);
            // Max is 255 · 65536 + 0x8000, so the shifted value fits in u8.
            ((r * 19595 + g * 38470 + b * 7471 + 0x8000) >> 16) as u8
        })
        .collect()
}

/// Unnormalised DCT-II cosine table for N = 32, rows 0..8 only:
/// `C[k][n] = 2 cos(π k (2n + 1) / 2N)` (scipy.fftpack's `norm=None`).
fn dct_table() -> [[f64; PHASH_IMG]; PHASH_LOW] {
    let mut c = [[0.0; PHASH_IMG]; PHASH_LOW];
    for (k, row) in c.iter_mut().enumerate() {
        for (n, v) in row.iter_mut().enumerate() {
            let angle = std::f64::consts::PI * (k as f64) * (2.0 * n as f64 + 1.0)
                / (2.0 * PHASH_IMG as f64);
            *v = 2.0 * angle.cos();
        }
    }
    c
}

/// Top-left 8×8 of the 2-D DCT-II of a 32×32 row-major block:
/// `Y[k][l] = Σ_n Σ_m C[k][n] X[n][m] C[l][m]`.
///
/// Hand-written: it is a 32×32 transform of which only 64 outputs are needed,
/// two small matrix products with a precomputed table; an FFT crate would be
/// more code and dependency than the transform itself.
fn dct2_low(x: &[f64]) -> [f64; PHASH_LOW * PHASH_LOW] {
    let c = dct_table();
    // Along axis 0 (columns): T[k][m] = Σ_n C[k][n] X[n][m].
    let mut t = [[0.0f64; PHASH_IMG]; PHASH_LOW];
    for (k, trow) in t.iter_mut().enumerate() {
        for (n, xrow) in x.chunks_exact(PHASH_IMG).enumerate() {
            let ckn = c[k][n];
            for (tv, &xv) in trow.iter_mut().zip(xrow) {
                *tv += ckn * xv;
            }
        }
    }
    // Along axis 1 (rows): Y[k][l] = Σ_m T[k][m] C[l][m].
    let mut y = [0.0f64; PHASH_LOW * PHASH_LOW];
    // The DC term is at most 4 · 1024 · 255 ≈ 1e6, so double-precision
    // rounding noise is ~1e-9; a true non-zero coefficient of an 8-bit image is
    // far larger. Snapping keeps flat regions from hashing to noise.
    let eps = 1e-6;
    for k in 0..PHASH_LOW {
        for l in 0..PHASH_LOW {
            let v: f64 = t[k].iter().zip(&c[l]).map(|(a, b)| a * b).sum();
            y[k * PHASH_LOW + l] = if v.abs() < eps { 0.0 } else { v };
        }
    }
    y
}

/// Pillow's fixed-point precision for 8-bit resampling (`PRECISION_BITS`).
const PIL_PRECISION_BITS: u32 = 32 - 8 - 2;

/// Pillow's Lanczos kernel (`lanczos_filter`, support 3).
fn pil_lanczos(x: f64) -> f64 {
    fn sinc(x: f64) -> f64 {
        if x == 0.0 {
            1.0
        } else {
            let x = x * std::f64::consts::PI;
            x.sin() / x
        }
    }
    if (-3.0..3.0).contains(&x) {
        sinc(x) * sinc(x / 3.0)
    } else {
        0.0
    }
}

/// Per-output-pixel source window and fixed-point weights of one axis.
struct Coeffs {
    /// `(first source index, number of taps)` per output pixel.
    bounds: Vec<(usize, usize)>,
    /// `ksize` weights per output pixel, scaled by 2^22.
    weights: Vec<i32>,
    ksize: usize,
}

/// Pillow's `precompute_coeffs` + `normalize_coeffs_8bpc` for the Lanczos
/// filter over the whole input (`box` = 0..in_size).
fn pil_coeffs(in_size: usize, out_size: usize) -> Coeffs {
    const SUPPORT: f64 = 3.0;
    let scale = in_size as f64 / out_size as f64;
    let filterscale = scale.max(1.0);
    let support = SUPPORT * filterscale;
    let ksize = support.ceil() as usize * 2 + 1;
    let mut bounds = Vec::with_capacity(out_size);
    let mut weights = vec![0i32; out_size * ksize];
    let mut k = vec![0.0f64; ksize];
    for xx in 0..out_size {
        let center = (xx as f64 + 0.5) * scale;
        let ss = 1.0 / filterscale;
        // C's `(int)` truncates toward zero; negatives clamp to 0 anyway.
        let xmin = ((center - support + 0.5) as i64).max(0) as usize;
        let xmax = ((center + support + 0.5) as i64).min(in_size as i64) as usize;
        let taps = xmax.saturating_sub(xmin).min(ksize);
        let mut ww = 0.0;
        for (x, kv) in k.iter_mut().enumerate().take(taps) {
            let w = pil_lanczos((x as f64 + xmin as f64 - center + 0.5) * ss);
            *kv = w;
            ww += w;
        }
        let row = &mut weights[xx * ksize..xx * ksize + taps];
        for (dst, &w) in row.iter_mut().zip(&k) {
            let w = if ww != 0.0 { w / ww } else { w };
            let scaled = w * f64::from(1u32 << PIL_PRECISION_BITS);
            // Pillow rounds half away from zero via `(int)(x ± 0.5)`.
            *dst = if w < 0.0 {
                (scaled - 0.5) as i32
            } else {
                (scaled + 0.5) as i32
            };
        }
        bounds.push((xmin, taps));
    }
    Coeffs {
        bounds,
        weights,
        ksize,
    }
}

/// Pillow's `clip8`: drop the fixed-point fraction and clamp to a byte.
fn pil_clip8(acc: i64) -> u8 {
    (acc >> PIL_PRECISION_BITS).clamp(0, 255) as u8
}

/// Resizes an 8-bit greyscale image exactly as Pillow's
/// `Image.resize(size, Image.LANCZOS)` does for mode "L".
///
/// [`crate::preprocess::resize`] ports the same Pillow code for RGB; this is the
/// single-channel ("L") variant, a third of the work on the greyscale image
/// imagehash resizes.
///
/// Hand-written rather than `image::imageops::resize`: that one computes in
/// f32 with different rounding (not bit-exact to Pillow, so hashes would
/// differ from imagehash's by a bit or two) and expands every grey pixel to
/// four f32 channels, four times the work on a 12 MP photo. Pillow's
/// algorithm is two separable passes (horizontal first) with 22-bit
/// fixed-point weights and a clamp to u8 after each pass.
fn pil_resize_lanczos(src: &[u8], w: usize, h: usize, out_w: usize, out_h: usize) -> Vec<u8> {
    let need_h = out_w != w;
    let need_v = out_h != h;
    let horiz = pil_coeffs(w, out_w);
    let vert = pil_coeffs(h, out_h);

    // Horizontal pass over only the source rows the vertical pass reads.
    let (rows_first, rows_last) = if need_v {
        let first = vert.bounds.first().map_or(0, |b| b.0);
        let last = vert.bounds.last().map_or(h, |b| b.0 + b.1);
        (first, last)
    } else {
        (0, h)
    };
    let (tmp, tmp_w) = if need_h {
        let mut tmp = Vec::with_capacity(out_w * (rows_last - rows_first));
        for row in src.chunks_exact(w).take(rows_last).skip(rows_first) {
            for (xx, &(xmin, taps)) in horiz.bounds.iter().enumerate() {
                let k = &horiz.weights[xx * horiz.ksize..xx * horiz.ksize + taps];
                // i32 as in Pillow (|Σ| < 1.3e9 for Lanczos weights, so it
                // never wraps); 32-bit lanes let this hot loop vectorise.
                let acc = row[xmin..xmin + taps]
                    .iter()
                    .zip(k)
                    .fold(1i32 << (PIL_PRECISION_BITS - 1), |acc, (&p, &kv)| {
                        acc.wrapping_add(i32::from(p).wrapping_mul(kv))
                    });
                tmp.push(pil_clip8(i64::from(acc)));
            }
        }
        (tmp, out_w)
    } else {
        (src[rows_first * w..rows_last * w].to_vec(), w)
    };
    if !need_v {
        return tmp;
    }
    let mut out = Vec::with_capacity(tmp_w * out_h);
    for (yy, &(ymin, taps)) in vert.bounds.iter().enumerate() {
        let k = &vert.weights[yy * vert.ksize..yy * vert.ksize + taps];
        let ymin = ymin - rows_first;
        for xx in 0..tmp_w {
            let acc = k
                .iter()
                .enumerate()
                .fold(1i64 << (PIL_PRECISION_BITS - 1), |acc, (y, &kv)| {
                    acc + i64::from(tmp[(ymin + y) * tmp_w + xx]) * i64::from(kv)
                });
            out.push(pil_clip8(acc));
        }
    }
    out
}

// ---------------------------------------------------------------------------
// Laplacian variance
// ---------------------------------------------------------------------------

/// Long side of the greyscale copy the blur test runs on.
pub const LAPLACIAN_LONG_SIDE: usize = 300;

/// Variance of the Laplacian, as the original's OpenCV blur test computed it:
///
/// ```python
/// gray = cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)
/// gray = cv2.resize(gray, (w', h'), interpolation=cv2.INTER_AREA)  # long side 300
/// cv2.Laplacian(gray, cv2.CV_64F).var()
/// ```
///
/// - greyscale with OpenCV's 15-bit fixed-point BT.601 weights;
/// - resized so the long side is exactly 300 px and the short side is
///   `round(short · 300 / long)` (at least 1), with OpenCV's `INTER_AREA`
///   reproduced (see [`cv_resize_area`]). Photos already smaller are resized
///   too, upwards, as the original resized unconditionally;
/// - 3×3 Laplacian `[[0,1,0],[1,-4,1],[0,1,0]]` (`ksize=1`) with
///   `BORDER_REFLECT_101`, computed exactly in integers;
/// - population variance over all pixels, in f64.
///
/// The "< 80 means blurry" threshold is applied by the analysis code.
pub fn laplacian_variance(img: &RgbImage) -> f32 {
    let (w, h) = (img.width() as usize, img.height() as usize);
    if w == 0 || h == 0 {
        return 0.0;
    }
    let grey = cv_grey(img);
    let (dw, dh) = laplacian_size(w, h);
    let small = cv_resize_area(&grey, w, h, dw, dh);
    laplacian_var_of(&small, dw, dh) as f32
}

/// Target size: long side 300, short side scaled and rounded, at least 1.
fn laplacian_size(w: usize, h: usize) -> (usize, usize) {
    let long = w.max(h);
    let scaled = |s: usize| {
        ((s as f64 * LAPLACIAN_LONG_SIDE as f64 / long as f64).round() as usize)
            .clamp(1, LAPLACIAN_LONG_SIDE)
    };
    if w >= h {
        (LAPLACIAN_LONG_SIDE, scaled(h))
    } else {
        (scaled(w), LAPLACIAN_LONG_SIDE)
    }
}

/// OpenCV's `COLOR_RGB2GRAY` for 8-bit: BT.601 weights in 15-bit fixed point,
/// rounded (`RGB2Gray<uchar>` in OpenCV 4.x; verified pixel-exact against
/// `cv2.cvtColor` 4.14 on 1 M random pixels, where the 14-bit
/// `4899/9617/1868` variant some docs quote disagrees on 0.3 % of them).
fn cv_grey(img: &RgbImage) -> Vec<u8> {
    img.pixels()
        .map(|p| {
            let [r, g, b] = p.0.map(u32::from);
            // Weights sum to 2^15, so the result is at most 255.
            ((r * 9798 + g * 19235 + b * 3735 + 16384) >> 15) as u8
        })
        .collect()
}

/// OpenCV's `saturate_cast<uchar>(float)`: round half to even, clamp.
fn cv_saturate_u8(v: f32) -> u8 {
    v.round_ties_even().clamp(0.0, 255.0) as u8
}

/// Resizes an 8-bit greyscale image as OpenCV's `cv::resize(...,
/// INTER_AREA)` does, choosing the same one of its three code paths.
///
/// Hand-written because no Rust crate implements OpenCV's area interpolation
/// for non-integer factors (the `image` crate has no area filter;
/// `fast_image_resize`'s box filter weights differently), and the blur
/// threshold of 80 was tuned on OpenCV's output:
///
/// 1. downscale by integer factors in both axes → `resizeAreaFast` (block
///    mean; for 2×2 OpenCV's SIMD path rounds `(sum + 2) >> 2`, otherwise
///    `sum · (1/area)` rounded half to even);
/// 2. downscale in both axes otherwise → `resizeArea`: each destination pixel
///    is the overlap-weighted mean of the source cells it covers
///    (`computeResizeAreaTab`), accumulated in f32 and rounded;
/// 3. any axis upscaled (photos under 300 px) → OpenCV's bilinear emulation of
///    area mode (weights from `(d+1) − (s+1)/scale`, 11-bit fixed point),
///    with the rounding of OpenCV's SIMD vertical pass.
fn cv_resize_area(src: &[u8], w: usize, h: usize, dw: usize, dh: usize) -> Vec<u8> {
    let inv_scale_x = dw as f64 / w as f64;
    let inv_scale_y = dh as f64 / h as f64;
    let scale_x = 1.0 / inv_scale_x;
    let scale_y = 1.0 / inv_scale_y;
    if scale_x >= 1.0 && scale_y >= 1.0 {
        let iscale_x = scale_x.round();
        let iscale_y = scale_y.round();
        if (scale_x - iscale_x).abs() < f64::EPSILON && (scale_y - iscale_y).abs() < f64::EPSILON {
            return cv_resize_area_fast(src, w, dw, dh, iscale_x as usize, iscale_y as usize);
        }
        return cv_resize_area_general(src, w, h, dw, dh, scale_x, scale_y);
    }
    cv_resize_area_up(src, w, h, dw, dh, scale_x, scale_y)
}

/// `resizeAreaFast`: integer downscale factors, plain block sums.
fn cv_resize_area_fast(
    src: &[u8],
    w: usize,
    dw: usize,
    dh: usize,
    sx: usize,
    sy: usize,
) -> Vec<u8> {
    let area = sx * sy;
    let inv_area = 1.0f32 / area as f32;
    let mut out = Vec::with_capacity(dw * dh);
    for dy in 0..dh {
        for dx in 0..dw {
            let mut sum = 0u32;
            for y in dy * sy..(dy + 1) * sy {
                let row = &src[y * w..(y + 1) * w];
                sum += row[dx * sx..(dx + 1) * sx]
                    .iter()
                    .map(|&p| u32::from(p))
                    .sum::<u32>();
            }
            out.push(if sx == 2 && sy == 2 {
                ((sum + 2) >> 2) as u8
            } else {
                cv_saturate_u8(sum as f32 * inv_area)
            });
        }
    }
    out
}

/// One entry of OpenCV's `DecimateAlpha` table: source index `si`
/// contributes `alpha` to destination index `di`.
#[derive(Clone, Copy)]
struct AreaTap {
    di: usize,
    si: usize,
    alpha: f32,
}

/// OpenCV's `computeResizeAreaTab` for one axis.
fn cv_area_tab(ssize: usize, dsize: usize, scale: f64) -> Vec<AreaTap> {
    let mut tab = Vec::with_capacity(ssize * 2);
    for dx in 0..dsize {
        let fsx1 = dx as f64 * scale;
        let fsx2 = fsx1 + scale;
        let cell_width = scale.min(ssize as f64 - fsx1);
        let mut sx2 = fsx2.floor() as i64;
        sx2 = sx2.min(ssize as i64 - 1);
        let sx1 = (fsx1.ceil() as i64).min(sx2);
        if sx1 as f64 - fsx1 > 1e-3 && sx1 >= 1 {
            tab.push(AreaTap {
                di: dx,
                si: (sx1 - 1) as usize,
                alpha: ((sx1 as f64 - fsx1) / cell_width) as f32,
            });
        }
        for sx in sx1.max(0)..sx2 {
            tab.push(AreaTap {
                di: dx,
                si: sx as usize,
                alpha: (1.0 / cell_width) as f32,
            });
        }
        if fsx2 - sx2 as f64 > 1e-3 && sx2 >= 0 {
            tab.push(AreaTap {
                di: dx,
                si: sx2 as usize,
                alpha: ((fsx2 - sx2 as f64).min(1.0).min(cell_width) / cell_width) as f32,
            });
        }
    }
    tab
}

/// `resizeArea_<uchar, float>`: overlap-weighted area averaging for
/// non-integer downscale factors, in OpenCV's accumulation order.
fn cv_resize_area_general(
    src: &[u8],
    w: usize,
    h: usize,
    dw: usize,
    dh: usize,
    scale_x: f64,
    scale_y: f64,
) -> Vec<u8> {
    // OpenCV scatters `xtab` entries into `buf[di]` one by one; a destination
    // pixel's entries are consecutive with consecutive source indices, so
    // grouping them into spans gives the same f32 additions in the same
    // order with contiguous loads.
    let xtab = cv_area_tab(w, dw, scale_x);
    let mut spans: Vec<(usize, usize, usize)> = Vec::with_capacity(dw);
    for (i, t) in xtab.iter().enumerate() {
        match spans.last_mut() {
            Some(last) if xtab[last.2].di == t.di => last.1 += 1,
            _ => spans.push((t.si, 1, i)),
        }
    }
    let alphas: Vec<f32> = xtab.iter().map(|t| t.alpha).collect();
    let ytab = cv_area_tab(h, dh, scale_y);
    let mut out = vec![0u8; dw * dh];
    let mut buf = vec![0f32; dw];
    let mut sum = vec![0f32; dw];
    let Some(first) = ytab.first() else {
        return out;
    };
    let mut prev_dy = first.di;
    for t in &ytab {
        let row = &src[t.si * w..(t.si + 1) * w];
        for (b, &(si, n, first)) in buf.iter_mut().zip(&spans) {
            *b = row[si..si + n]
                .iter()
                .zip(&alphas[first..first + n])
                .fold(0.0f32, |acc, (&p, &a)| acc + f32::from(p) * a);
        }
        if t.di != prev_dy {
            let dst = &mut out[prev_dy * dw..(prev_dy + 1) * dw];
            for ((d, s), &b) in dst.iter_mut().zip(sum.iter_mut()).zip(&buf) {
                *d = cv_saturate_u8(*s);
                *s = t.alpha * b;
            }
            prev_dy = t.di;
        } else {
            for (s, &b) in sum.iter_mut().zip(&buf) {
                *s += t.alpha * b;
            }
        }
    }
    let dst = &mut out[prev_dy * dw..(prev_dy + 1) * dw];
    for (d, &s) in dst.iter_mut().zip(&sum) {
        *d = cv_saturate_u8(s);
    }
    out
}

/// OpenCV's fixed-point scale for bilinear weights (`INTER_RESIZE_COEF_SCALE`).
const CV_COEF_SCALE: f32 = 2048.0;

/// Source index and fixed-point weights `(1 − f, f)` of OpenCV's area-mode
/// bilinear emulation for one axis; `clamp_hi` applies the horizontal pass's
/// edge rule (the vertical pass clamps row indices instead).
fn cv_area_up_axis(
    ssize: usize,
    dsize: usize,
    scale: f64,
    clamp_hi: bool,
) -> Vec<(usize, [i32; 2])> {
    let inv_scale = 1.0 / scale;
    (0..dsize)
        .map(|d| {
            let mut s = (d as f64 * scale).floor() as i64;
            let mut f = ((d as f64 + 1.0) - (s as f64 + 1.0) * inv_scale) as f32;
            f = if f <= 0.0 { 0.0 } else { f - f.floor() };
            if s < 0 {
                s = 0;
                f = 0.0;
            }
            if clamp_hi && s >= ssize as i64 - 1 {
                s = ssize as i64 - 1;
                f = 0.0;
            }
            let c0 = ((1.0 - f) * CV_COEF_SCALE).round_ties_even() as i32;
            let c1 = (f * CV_COEF_SCALE).round_ties_even() as i32;
            (s as usize, [c0, c1])
        })
        .collect()
}

/// `resizeGeneric_` with `HResizeLinear`/`VResizeLinear` in area mode (used
/// when either axis is enlarged): 8-bit fixed point.
fn cv_resize_area_up(
    src: &[u8],
    w: usize,
    h: usize,
    dw: usize,
    dh: usize,
    scale_x: f64,
    scale_y: f64,
) -> Vec<u8> {
    let xs = cv_area_up_axis(w, dw, scale_x, true);
    let ys = cv_area_up_axis(h, dh, scale_y, false);
    let hrow = |y: usize| -> Vec<i32> {
        let row = &src[y * w..(y + 1) * w];
        xs.iter()
            .map(|&(sx, [a0, a1])| {
                let p0 = i32::from(row[sx]);
                if sx + 1 < w {
                    p0 * a0 + i32::from(row[sx + 1]) * a1
                } else {
                    // OpenCV's right edge uses the full weight on the last pixel.
                    p0 * CV_COEF_SCALE as i32
                }
            })
            .collect()
    };
    let mut out = Vec::with_capacity(dw * dh);
    for &(sy, [b0, b1]) in &ys {
        let r0 = hrow(sy.min(h - 1));
        let r1 = hrow((sy + 1).min(h - 1));
        for (&v0, &v1) in r0.iter().zip(&r1) {
            // OpenCV's SIMD vertical pass (`VResizeLinearVec_32s8u`), not the
            // scalar `FixedPtCast`: drop 4 bits, 16-bit multiply-high by each
            // weight, then round off 2 bits. It rounds differently from the
            // scalar formula on ~10 % of pixels and is what cv2 runs on x86.
            let t0 = ((v0 >> 4) * b0) >> 16;
            let t1 = ((v1 >> 4) * b1) >> 16;
            out.push(((t0 + t1 + 2) >> 2).clamp(0, 255) as u8);
        }
    }
    out
}

/// OpenCV's `BORDER_REFLECT_101` index (`gfedcb|abcdefgh|gfedcba`).
fn reflect101(i: isize, len: usize) -> usize {
    if len == 1 {
        return 0;
    }
    let len = len as isize;
    let mut i = i;
    // The kernel reaches one pixel out, so one reflection always suffices.
    if i < 0 {
        i = -i;
    }
    if i >= len {
        i = 2 * len - 2 - i;
    }
    i.clamp(0, len - 1) as usize
}

/// Population variance of the 4-neighbour Laplacian with reflect-101 borders.
fn laplacian_var_of(img: &[u8], w: usize, h: usize) -> f64 {
    let px =
        |x: isize, y: isize| -> i32 { i32::from(img[reflect101(y, h) * w + reflect101(x, w)]) };
    let n = (w * h) as f64;
    let mut sum = 0f64;
    let mut sum_sq = 0f64;
    let mut values = Vec::with_capacity(w * h);
    for y in 0..h as isize {
        for x in 0..w as isize {
            let v = px(x, y - 1) + px(x - 1, y) + px(x + 1, y) + px(x, y + 1) - 4 * px(x, y);
            values.push(v);
            sum += f64::from(v);
        }
    }
    // Two-pass variance (as numpy's `.var()`), exact enough for ~90k values.
    let mean = sum / n;
    for v in values {
        let d = f64::from(v) - mean;
        sum_sq += d * d;
    }
    sum_sq / n
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::Rgb;

    fn textured(w: u32, h: u32) -> RgbImage {
        // Deterministic pseudo-random texture (xorshift), sharp edges everywhere.
        let mut s: u32 = 0x1234_5678;
        RgbImage::from_fn(w, h, |_, _| {
            s ^= s << 13;
            s ^= s >> 17;
            s ^= s << 5;
            let v = (s & 0xff) as u8;
            Rgb([v, v.wrapping_mul(3), v.wrapping_add(40)])
        })
    }

    fn box_blur(img: &RgbImage, radius: i64) -> RgbImage {
        let (w, h) = (img.width() as i64, img.height() as i64);
        RgbImage::from_fn(img.width(), img.height(), |x, y| {
            let mut acc = [0u32; 3];
            let mut n = 0;
            for dy in -radius..=radius {
                for dx in -radius..=radius {
                    let (sx, sy) = (x as i64 + dx, y as i64 + dy);
                    if sx >= 0 && sy >= 0 && sx < w && sy < h {
                        let p = img.get_pixel(sx as u32, sy as u32);
                        for c in 0..3 {
                            acc[c] += u32::from(p[c]);
                        }
                        n += 1;
                    }
                }
            }
            Rgb(acc.map(|a| (a / n) as u8))
        })
    }

    #[test]
    fn hamming_counts_bits() {
        assert_eq!(hamming(0, 0), 0);
        assert_eq!(hamming(0, u64::MAX), 64);
        assert_eq!(hamming(0b1011, 0b0110), 3);
    }

    #[test]
    fn phash_of_constant_image_is_dc_bit_only() {
        for v in [0u8, 17, 128, 255] {
            let img = RgbImage::from_pixel(50, 40, Rgb([v, v, v]));
            let expected = if v == 0 { 0 } else { 1u64 << 63 };
            assert_eq!(phash(&img), expected, "grey {v}");
        }
    }

    #[test]
    fn dct_known_values() {
        // Constant 1: DC = 4 · 32 · 32 (scipy's unnormalised DCT-II, twice).
        let ones = vec![1.0; 32 * 32];
        let y = dct2_low(&ones);
        assert!((y[0] - 4096.0).abs() < 1e-9);
        assert!(y[1..].iter().all(|&v| v == 0.0));
        // x[n][m] = n: Y[1][0] = 2 Σ_n n cos(π(2n+1)/64) · 2 · 32.
        let ramp: Vec<f64> = (0..32 * 32).map(|i| (i / 32) as f64).collect();
        let y = dct2_low(&ramp);
        let expected: f64 = (0..32)
            .map(|n| 2.0 * n as f64 * (std::f64::consts::PI * (2.0 * n as f64 + 1.0) / 64.0).cos())
            .sum::<f64>()
            * 64.0;
        assert!((y[8] - expected).abs() < 1e-6, "{} vs {expected}", y[8]);
        assert_eq!(y[1], 0.0, "no variation along axis 1");
    }

    #[test]
    fn phash_bits_use_numpy_median_and_msb_first() {
        let mut c = [0.0; 64];
        for (i, v) in c.iter_mut().enumerate() {
            *v = i as f64;
        }
        // Median of 0..64 is 31.5: the last 32 values are above it.
        assert_eq!(phash_bits(&c), 0x0000_0000_FFFF_FFFF);
        c[0] = 100.0;
        assert_eq!(phash_bits(&c) >> 63, 1);
    }

    #[test]
    fn phash_is_stable_under_mild_changes_and_differs_across_images() {
        let a = textured(200, 150);
        let b = textured(150, 200);
        let a_small = image::imageops::resize(&a, 160, 120, image::imageops::FilterType::Triangle);
        assert!(hamming(phash(&a), phash(&a_small)) <= 10);
        assert!(hamming(phash(&a), phash(&b)) > 10);
    }

    #[test]
    fn pil_resize_identity_and_constant() {
        let src: Vec<u8> = (0..32 * 32).map(|i| (i % 251) as u8).collect();
        assert_eq!(pil_resize_lanczos(&src, 32, 32, 32, 32), src);
        let flat = vec![77u8; 97 * 61];
        assert!(pil_resize_lanczos(&flat, 97, 61, 32, 32)
            .iter()
            .all(|&p| p == 77));
    }

    #[test]
    fn blurred_copy_has_much_lower_laplacian_variance() {
        let sharp = textured(640, 480);
        let blurred = box_blur(&sharp, 4);
        let vs = laplacian_variance(&sharp);
        let vb = laplacian_variance(&blurred);
        assert!(vs > 80.0, "sharp {vs}");
        assert!(vb < vs / 10.0, "sharp {vs} blurred {vb}");
    }

    #[test]
    fn laplacian_of_constant_is_zero_and_small_images_work() {
        assert_eq!(
            laplacian_variance(&RgbImage::from_pixel(1000, 10, Rgb([9, 9, 9]))),
            0.0
        );
        // Upscaled path and degenerate sizes must not panic.
        for (w, h) in [(1, 1), (1, 7), (7, 1), (120, 80), (300, 300), (301, 2)] {
            let v = laplacian_variance(&textured(w, h));
            assert!(v.is_finite() && v >= 0.0, "{w}x{h}: {v}");
        }
        assert_eq!(laplacian_variance(&RgbImage::new(0, 0)), 0.0);
        assert_eq!(phash(&RgbImage::new(0, 5)), 0);
    }

    #[test]
    fn laplacian_of_known_pattern() {
        // A single bright pixel on black, already 300 wide (no resampling):
        // Laplacian is -4·255 at the pixel and 255 at its 4 neighbours.
        let mut img = RgbImage::new(300, 150);
        img.put_pixel(100, 50, Rgb([255, 255, 255]));
        let n = 300.0 * 150.0;
        let vals = [-1020.0f64, 255.0, 255.0, 255.0, 255.0];
        let mean: f64 = vals.iter().sum::<f64>() / n;
        let var =
            (vals.iter().map(|v| (v - mean).powi(2)).sum::<f64>() + (n - 5.0) * mean * mean) / n;
        let got = f64::from(laplacian_variance(&img));
        assert!((got - var).abs() < 1e-3 * var, "{got} vs {var}");
    }

    #[test]
    fn area_resize_matches_hand_computed_values() {
        // 2×2 fast path rounds half up: (1+2+3+4+2)>>2 = 3 (2.5 → 3).
        let src = [1u8, 2, 3, 4];
        assert_eq!(cv_resize_area(&src, 2, 2, 1, 1), vec![3]);
        // 3 → 2 on a row: weights 2/3,1/3 | 1/3,2/3 of cells 1.5 wide.
        let src = [0u8, 90, 180];
        let out = cv_resize_area(&src, 3, 1, 2, 1);
        assert_eq!(out, vec![30, 150]);
    }

    #[test]
    fn record_roundtrip() {
        let rec = FeatureRecord {
            embedding: vec![1.0, -2.5, f32::MIN_POSITIVE, 3.25e7],
            phash: 0xDEAD_BEEF_0123_4567,
            laplacian_var: 123.5,
            width: 4032,
            height: 3024,
        };
        let bytes = rec.encode();
        assert_eq!(bytes.len(), 25 + 16);
        assert_eq!(bytes[0], FeatureRecord::FORMAT_VERSION);
        assert_eq!(FeatureRecord::decode(&bytes), Ok(rec.clone()));
        let empty = FeatureRecord {
            embedding: vec![],
            ..rec
        };
        assert_eq!(FeatureRecord::decode(&empty.encode()), Ok(empty));
    }

    #[test]
    fn record_corruption_is_reported() {
        let rec = FeatureRecord {
            embedding: vec![0.5; 8],
            phash: 1,
            laplacian_var: 2.0,
            width: 3,
            height: 4,
        };
        let bytes = rec.encode();
        assert_eq!(FeatureRecord::decode(&[]), Err(FeatureError::Empty));
        let mut wrong = bytes.clone();
        wrong[0] = 9;
        assert_eq!(
            FeatureRecord::decode(&wrong),
            Err(FeatureError::UnsupportedVersion {
                found: 9,
                supported: 1
            })
        );
        assert_eq!(
            FeatureRecord::decode(&bytes[..10]),
            Err(FeatureError::Truncated {
                needed: 25,
                got: 10
            })
        );
        assert_eq!(
            FeatureRecord::decode(&bytes[..bytes.len() - 1]),
            Err(FeatureError::LengthMismatch {
                expected: bytes.len(),
                got: bytes.len() - 1
            })
        );
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(matches!(
            FeatureRecord::decode(&longer),
            Err(FeatureError::LengthMismatch { .. })
        ));
        // A huge declared length must not overflow or allocate.
        let mut huge = bytes;
        huge[21..25].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(
            FeatureRecord::decode(&huge),
            Err(FeatureError::LengthMismatch { .. })
        ));
    }
}
