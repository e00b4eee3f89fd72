//! A bit-exact port of Pillow's convolution resampling (`src/libImaging/Resample.c`)
//! for 8-bit RGB images.
//!
//! Why hand-written: CLIP checkpoints were trained and are evaluated with
//! `transformers`' PIL-based preprocessing, and the parity bar (cosine 0.99999) leaves
//! almost no room for a resize that is merely "a bicubic". No maintained Rust crate
//! reproduces Pillow's fixed-point arithmetic bit for bit (`image`'s and
//! `fast_image_resize`'s filters round differently and do not scale the support the
//! same way), so the relevant part of Pillow is ported here:
//!
//! * `precompute_coeffs`: per output pixel, a window of input pixels whose width is
//!   the filter support times the downscale factor, f64 weights normalised to sum 1;
//! * `normalize_coeffs_8bpc`: weights to fixed point with `PRECISION_BITS = 22`,
//!   rounded half away from zero;
//! * `ImagingResampleInner`: the horizontal pass first (only over the input rows the
//!   vertical pass will read), its result rounded and clipped to u8, then the
//!   vertical pass; a pass whose size does not change is skipped.
//!
//! Every intermediate is an integer, so the order of accumulation does not matter
//! and any output pixel can be computed on its own. [`resample_window`] uses that to
//! compute only the part of the resized image that survives the centre crop; the
//! pixels it returns are identical to the same pixels of the full resize.

use image::RgbImage;

use super::config::Resample;

/// Fixed-point precision of the weights: 8 bits for the result, 2 bits of headroom
/// because filters with negative lobes can push partial sums below 0 or above 255
/// (Pillow's `PRECISION_BITS (32 - 8 - 2)`).
const PRECISION_BITS: u32 = 32 - 8 - 2;

/// One resampling filter: the kernel and its support (radius) at scale 1.
struct Filter {
    kernel: fn(f64) -> f64,
    support: f64,
}

fn box_filter(x: f64) -> f64 {
    if x > -0.5 && x <= 0.5 {
        1.0
    } else {
        0.0
    }
}

fn bilinear_filter(x: f64) -> f64 {
    let x = x.abs();
    if x < 1.0 {
        1.0 - x
    } else {
        0.0
    }
}

fn hamming_filter(x: f64) -> f64 {
    let x = x.abs();
    if x == 0.0 {
        1.0
    } else if x >= 1.0 {
        0.0
    } else {
        let x = x * std::f64::consts::PI;
        // Pillow writes these constants as C `float` literals (0.54f, 0.46f); they are
        // widened to double, so the f32 values are what must be used here.
        x.sin() / x * (f64::from(0.54f32) + f64::from(0.46f32) * x.cos())
    }
}

fn bicubic_filter(x: f64) -> f64 {
    // Keys' cubic convolution with a = -0.5; the expressions keep Pillow's operation
    // order so that the f64 rounding is the same.
    const A: f64 = -0.5;
    let x = x.abs();
    if x < 1.0 {
        ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
    } else if x < 2.0 {
        (((x - 5.0) * x + 8.0) * x - 4.0) * A
    } else {
        0.0
    }
}

fn sinc_filter(x: f64) -> f64 {
    if x == 0.0 {
        1.0
    } else {
        let x = x * std::f64::consts::PI;
        x.sin() / x
    }
}

fn lanczos_filter(x: f64) -> f64 {
    if (-3.0..3.0).contains(&x) {
        sinc_filter(x) * sinc_filter(x / 3.0)
    } else {
        0.0
    }
}

fn filter_for(resample: Resample) -> Filter {
    let (kernel, support): (fn(f64) -> f64, f64) = match resample {
        Resample::Box => (box_filter, 0.5),
        Resample::Bilinear => (bilinear_filter, 1.0),
        Resample::Hamming => (hamming_filter, 1.0),
        Resample::Bicubic => (bicubic_filter, 2.0),
        Resample::Lanczos => (lanczos_filter, 3.0),
    };
    Filter { kernel, support }
}

/// Fixed-point weights for a contiguous range of output pixels along one axis.
struct Coeffs {
    /// Per output pixel: first input index and number of taps.
    bounds: Vec<(usize, usize)>,
    /// Row stride of `weights` (Pillow's `ksize`).
    stride: usize,
    /// `bounds.len() * stride` weights; only the first `taps` of each row are used.
    weights: Vec<i32>,
}

impl Coeffs {
    /// Weights of the `i`-th computed output pixel (relative to the range start).
    fn taps(&self, i: usize) -> (usize, &[i32]) {
        let (first, count) = self.bounds[i];
        let start = i * self.stride;
        (first, &self.weights[start..start + count])
    }

    /// First and one-past-last input index read by any computed output pixel.
    fn input_span(&self) -> (usize, usize) {
        let lo = self.bounds.iter().map(|b| b.0).min().unwrap_or(0);
        let hi = self.bounds.iter().map(|b| b.0 + b.1).max().unwrap_or(0);
        (lo, hi.max(lo))
    }
}

/// Pillow's `precompute_coeffs` + `normalize_coeffs_8bpc` for output pixels
/// `out_range` of a resize from the source span `in0..in1` of an axis of `in_size`
/// pixels to `out_size` (Pillow's `box`; `0..in_size` without one).
fn precompute_coeffs(
    in_size: usize,
    (in0, in1): (f32, f32),
    out_size: usize,
    out_range: std::ops::Range<usize>,
    filter: &Filter,
) -> Coeffs {
    // Pillow passes the box as C floats; `in1 - in0` is computed in f32 and widened.
    let scale = f64::from(in1 - in0) / out_size as f64;
    // Downscaling widens the kernel by the scale factor (it becomes a low-pass
    // filter); upscaling keeps it at its natural width.
    let filterscale = scale.max(1.0);
    let support = filter.support * filterscale;
    let stride = (support.ceil() as usize) * 2 + 1;
    let ss = 1.0 / filterscale;

    let mut bounds = Vec::with_capacity(out_range.len());
    let mut weights = vec![0i32; out_range.len() * stride];
    let mut row = vec![0f64; stride];
    for (i, xx) in out_range.enumerate() {
        let center = f64::from(in0) + (xx as f64 + 0.5) * scale;
        // C's `(int)` truncates toward zero; negatives are clamped to 0 right after,
        // so truncation and floor agree here. `as` saturates, so no overflow.
        let xmin = ((center - support + 0.5) as i64).max(0);
        let xmax = ((center + support + 0.5) as i64).min(in_size as i64);
        let count = (xmax - xmin).clamp(0, stride as i64) as usize;
        let xmin = xmin as usize;
        let mut ww = 0.0;
        for (x, w) in row.iter_mut().enumerate().take(count) {
            // Same operation order as Pillow: ((x + xmin) - center + 0.5) * ss.
            *w = (filter.kernel)(((x + xmin) as f64 - center + 0.5) * ss);
            ww += *w;
        }
        let out = &mut weights[i * stride..i * stride + count];
        for (k, &w) in out.iter_mut().zip(&row[..count]) {
            let w = if ww != 0.0 { w / ww } else { w };
            // Round half away from zero, then truncate like C's `(int)`.
            let scaled = w * f64::from(1u32 << PRECISION_BITS);
            *k = if w < 0.0 {
                (-0.5 + scaled) as i32
            } else {
                (0.5 + scaled) as i32
            };
        }
        bounds.push((xmin, count));
    }
    Coeffs {
        bounds,
        stride,
        weights,
    }
}

/// Pillow's `clip8`: drop the fraction bits (arithmetic shift, i.e. floor) and clamp.
#[inline]
fn clip8(acc: i32) -> u8 {
    (acc >> PRECISION_BITS).clamp(0, 255) as u8
}

/// Rounding offset every accumulator starts from (one half in fixed point).
const HALF: i32 = 1 << (PRECISION_BITS - 1);

// Overflow: weights are normalised to sum to 1.0 (2^22 in fixed point), and for every
// supported filter the positive weights of one output pixel sum to well under 2.0
// (bicubic ≈ 1.1, lanczos ≈ 1.2), so |acc| < 2^21 + 255 · 2 · 2^22 < 2^31. Pillow
// relies on the same bound with its C `int` accumulators.

/// Horizontal pass over `rows` of `src` (interleaved RGB, `src_w` pixels per row)
/// into `dst` (interleaved RGB, `coeffs.bounds.len()` pixels per row).
fn horizontal_pass(
    src: &[u8],
    src_w: usize,
    rows: std::ops::Range<usize>,
    coeffs: &Coeffs,
) -> Vec<u8> {
    let out_w = coeffs.bounds.len();
    let mut dst = vec![0u8; rows.len() * out_w * 3];
    for (src_row, dst_row) in src
        .chunks_exact(src_w * 3)
        .skip(rows.start)
        .take(rows.len())
        .zip(dst.chunks_exact_mut(out_w * 3))
    {
        horizontal_row(src_row, dst_row, coeffs);
    }
    dst
}

/// One row of [`horizontal_pass`]. Each tap adds a whole pixel at once: its
/// three bytes and the next one are read as four lanes (the fourth is
/// discarded), which the compiler turns into one widening multiply-add per
/// tap instead of three scalar ones. Integer sums are exact in any order, so
/// the result is Pillow's bit for bit.
#[multiversion::multiversion(targets("x86_64+avx2", "x86_64+sse4.1"))]
fn horizontal_row(src_row: &[u8], dst_row: &mut [u8], coeffs: &Coeffs) {
    for (i, out_px) in dst_row.chunks_exact_mut(3).enumerate() {
        let (first, k) = coeffs.taps(i);
        let start = first * 3;
        let mut acc = [HALF; 4];
        // The fourth lane reads one byte past the window: only where the row has it.
        if start + k.len() * 3 < src_row.len() {
            let window = &src_row[start..start + k.len() * 3 + 1];
            for (t, &w) in k.iter().enumerate() {
                let px = &window[t * 3..t * 3 + 4];
                for (a, &p) in acc.iter_mut().zip(px) {
                    *a += i32::from(p) * w;
                }
            }
        } else {
            let window = &src_row[start..start + k.len() * 3];
            for (px, &w) in window.chunks_exact(3).zip(k) {
                for (a, &p) in acc.iter_mut().zip(px) {
                    *a += i32::from(p) * w;
                }
            }
        }
        out_px[0] = clip8(acc[0]);
        out_px[1] = clip8(acc[1]);
        out_px[2] = clip8(acc[2]);
    }
}

/// Vertical pass: `src` holds consecutive rows of `row_len` bytes starting at input
/// row `src_first_row`; each output row is a weighted sum of whole source rows.
fn vertical_pass(src: &[u8], row_len: usize, src_first_row: usize, coeffs: &Coeffs) -> Vec<u8> {
    let out_h = coeffs.bounds.len();
    let mut dst = vec![0u8; out_h * row_len];
    // Accumulate whole rows at a time: integer sums are exact in any order, and this
    // form lets the compiler vectorise the inner loop.
    let mut acc = vec![0i32; row_len];
    for (i, dst_row) in dst.chunks_exact_mut(row_len.max(1)).enumerate().take(out_h) {
        let (first, k) = coeffs.taps(i);
        acc.fill(HALF);
        for (t, &w) in k.iter().enumerate() {
            let start = (first + t - src_first_row) * row_len;
            accumulate_row(&mut acc, &src[start..start + row_len], w);
        }
        for (d, &a) in dst_row.iter_mut().zip(&acc) {
            *d = clip8(a);
        }
    }
    dst
}

/// `acc += row · w`, lane by lane: the vertical pass's inner loop, built for
/// the vector units the CPU has (the baseline x86-64 target has no 32-bit
/// vector multiply).
#[multiversion::multiversion(targets("x86_64+avx2", "x86_64+sse4.1"))]
fn accumulate_row(acc: &mut [i32], row: &[u8], w: i32) {
    for (a, &p) in acc.iter_mut().zip(row) {
        *a += i32::from(p) * w;
    }
}

/// A rectangle of the resized image, in output pixel coordinates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    /// Left column.
    pub x: usize,
    /// Top row.
    pub y: usize,
    /// Number of columns.
    pub width: usize,
    /// Number of rows.
    pub height: usize,
}

impl Window {
    /// The window clamped to an `out`-sized output: `(x, y, width, height)`,
    /// the last two also as `u32`; `None` when nothing is left to compute
    /// (an empty source, output or window).
    fn clamped(
        self,
        src: &RgbImage,
        (out_w, out_h): (usize, usize),
    ) -> Option<(usize, usize, usize, usize, u32, u32)> {
        let x0 = self.x.min(out_w);
        let y0 = self.y.min(out_h);
        let w = self.width.min(out_w - x0);
        let h = self.height.min(out_h - y0);
        if src.width() == 0 || src.height() == 0 || w == 0 || h == 0 {
            return None;
        }
        Some((x0, y0, w, h, u32::try_from(w).ok()?, u32::try_from(h).ok()?))
    }
}

/// The pixels of `window` of `src` resized to `out = (width, height)` with Pillow's
/// `Image.resize(out, resample)`, bit for bit.
///
/// The window is clamped to the output. An empty source, output or window gives an
/// empty image.
pub fn resample_window(
    src: &RgbImage,
    out: (usize, usize),
    window: Window,
    resample: Resample,
) -> RgbImage {
    let src_box = [0.0, 0.0, src.width() as f32, src.height() as f32];
    resample_window_box(src, src_box, out, window, resample)
}

/// [`resample_window`] of the part `src_box` (x0, y0, x1, y1, fractional) of `src`,
/// as Pillow's `Image.resize(out, resample, box=src_box)`: the box is stretched
/// over the output, and filter taps may still read pixels just outside it.
pub fn resample_window_box(
    src: &RgbImage,
    src_box: [f32; 4],
    out: (usize, usize),
    window: Window,
    resample: Resample,
) -> RgbImage {
    let (out_w, out_h) = out;
    let (src_w, src_h) = (src.width() as usize, src.height() as usize);
    let Some((x0, y0, w, h, w32, h32)) = window.clamped(src, out) else {
        return RgbImage::new(0, 0);
    };
    let filter = filter_for(resample);
    let raw: &[u8] = src.as_raw();

    // Pillow skips a pass whose size does not change (`need_horizontal` /
    // `need_vertical` in ImagingResampleInner); an identity pass is a plain copy.
    let [bx0, by0, bx1, by1] = src_box;
    let need_horizontal = out_w != src_w || bx0 != 0.0 || bx1 != src_w as f32;
    let need_vertical = out_h != src_h || by0 != 0.0 || by1 != src_h as f32;

    // The input rows the vertical pass reads, so the horizontal pass only does those
    // (Pillow's ybox_first / ybox_last).
    let vcoeffs =
        need_vertical.then(|| precompute_coeffs(src_h, (by0, by1), out_h, y0..y0 + h, &filter));
    let (row_lo, row_hi) = match &vcoeffs {
        Some(c) => c.input_span(),
        None => (y0, y0 + h),
    };

    let temp = if need_horizontal {
        let hcoeffs = precompute_coeffs(src_w, (bx0, bx1), out_w, x0..x0 + w, &filter);
        horizontal_pass(raw, src_w, row_lo..row_hi, &hcoeffs)
    } else {
        let mut temp = Vec::with_capacity((row_hi - row_lo) * w * 3);
        for row in raw
            .chunks_exact(src_w * 3)
            .skip(row_lo)
            .take(row_hi - row_lo)
        {
            temp.extend_from_slice(&row[x0 * 3..(x0 + w) * 3]);
        }
        temp
    };

    let pixels = match &vcoeffs {
        Some(c) => vertical_pass(&temp, w * 3, row_lo, c),
        None => temp,
    };
    // The buffer has exactly w * h * 3 bytes by construction.
    RgbImage::from_raw(w32, h32, pixels).unwrap_or_else(|| RgbImage::new(0, 0))
}

/// [`resample_window_box`] for the fast path: the same filter, support and
/// sample grid, computed by `fast_image_resize` (16-bit weights, SIMD chosen
/// at run time), so a pixel can differ from Pillow's by a level. The window
/// becomes a source crop box with the same scale, which puts every output
/// pixel's centre where Pillow's full resize puts it.
pub fn resample_window_box_fast(
    src: &RgbImage,
    src_box: [f32; 4],
    out: (usize, usize),
    window: Window,
    resample: Resample,
) -> RgbImage {
    use fast_image_resize as fir;

    let (out_w, out_h) = out;
    let exact = || resample_window_box(src, src_box, out, window, resample);
    let Some((x0, y0, w, h, w32, h32)) = window.clamped(src, out) else {
        return RgbImage::new(0, 0);
    };
    let [bx0, by0, bx1, by1] = src_box.map(f64::from);
    let (sx, sy) = ((bx1 - bx0) / out_w as f64, (by1 - by0) / out_h as f64);
    let filter = match resample {
        Resample::Box => fir::FilterType::Box,
        Resample::Bilinear => fir::FilterType::Bilinear,
        Resample::Hamming => fir::FilterType::Hamming,
        Resample::Bicubic => fir::FilterType::CatmullRom,
        Resample::Lanczos => fir::FilterType::Lanczos3,
    };
    let options = fir::ResizeOptions::new()
        .resize_alg(fir::ResizeAlg::Convolution(filter))
        .crop(
            bx0 + x0 as f64 * sx,
            by0 + y0 as f64 * sy,
            w as f64 * sx,
            h as f64 * sy,
        );
    let Ok(view) = fir::images::ImageRef::new(
        src.width(),
        src.height(),
        src.as_raw(),
        fir::PixelType::U8x3,
    ) else {
        return exact();
    };
    let mut dst = fir::images::Image::new(w32, h32, fir::PixelType::U8x3);
    // The crate refuses only boxes outside the image, which a decoded photo's
    // box never is; the exact resampler stays the answer if it ever did.
    if fir::Resizer::new()
        .resize(&view, &mut dst, &options)
        .is_err()
    {
        return exact();
    }
    RgbImage::from_raw(w32, h32, dst.into_vec()).unwrap_or_else(exact)
}

/// `src` resized to `out_w × out_h` exactly like Pillow's `Image.resize` on an RGB
/// image (no `box`, no `reducing_gap`).
pub fn resize(src: &RgbImage, out_w: u32, out_h: u32, resample: Resample) -> RgbImage {
    let (width, height) = (out_w as usize, out_h as usize);
    let window = Window {
        x: 0,
        y: 0,
        width,
        height,
    };
    resample_window(src, (width, height), window, resample)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The 5×3 test image: channel c of pixel (x, y) is (37x + 91y + 53c) mod 256.
    fn pattern() -> RgbImage {
        RgbImage::from_fn(5, 3, |x, y| {
            image::Rgb([0u32, 1, 2].map(|c| ((x * 37 + y * 91 + c * 53) % 256) as u8))
        })
    }

    #[test]
    fn bilinear_halving_by_hand() {
        // 4 → 2, bilinear: scale 2 widens the triangle to support 2. Output 0 has
        // centre 1.0 and taps at inputs 0, 1, 2 with weights f(-0.25), f(0.25),
        // f(0.75) = 0.75, 0.75, 0.25 → 3/7, 3/7, 1/7. On [0, 70, 140, 210] that is
        // exactly 50; in fixed point 2^21 + 70·1797559 + 140·599186 = 211812322,
        // >> 22 = 50.
        let src = RgbImage::from_fn(4, 1, |x, _| image::Rgb([(70 * x) as u8; 3]));
        let out = resize(&src, 2, 1, Resample::Bilinear);
        // Output 1: centre 3.0, taps 1..4 → f(-0.75), f(-0.25), f(0.25) = 1/7, 3/7, 3/7:
        // (70 + 3·140 + 3·210) / 7 = 160.
        assert_eq!(out.as_raw(), &[50, 50, 50, 160, 160, 160]);
    }

    #[test]
    fn coefficients_by_hand() {
        // Bicubic 4 → 2: support 4, centre 1.0, xmin = (int)(1 - 4 + 0.5) → 0,
        // xmax = (int)(1 + 4 + 0.5) = 5 → clamped to 4; taps at (x - 1 + 0.5) / 2.
        let c = precompute_coeffs(4, (0.0, 4.0), 2, 0..2, &filter_for(Resample::Bicubic));
        assert_eq!(c.stride, 9);
        assert_eq!(c.bounds, vec![(0, 4), (0, 4)]);
        let sum: i32 = c.taps(0).1.iter().sum();
        // The fixed-point weights sum to 1.0 up to rounding of each weight.
        assert!((sum - (1 << PRECISION_BITS)).abs() <= 2, "{sum}");
    }

    /// Expected outputs measured with Pillow 13: `Image.fromarray(pattern).resize(size, f)`.
    #[test]
    fn matches_pillow_on_small_images() {
        let cases: [(Resample, u32, u32, &[u8]); 5] = [
            (
                Resample::Bicubic,
                3,
                2,
                &[
                    41, 98, 161, 110, 170, 140, 174, 168, 176, 172, 151, 110, 96, 112, 89, 117,
                    117, 125,
                ],
            ),
            (
                Resample::Bicubic,
                8,
                4,
                &[
                    0, 45, 98, 8, 61, 114, 34, 87, 141, 57, 110, 173, 81, 134, 202, 104, 157, 224,
                    130, 191, 250, 146, 214, 255, 49, 99, 172, 63, 124, 197, 90, 161, 207, 126,
                    184, 107, 155, 213, 69, 178, 232, 105, 204, 149, 131, 220, 81, 146, 128, 188,
                    139, 149, 160, 164, 167, 125, 175, 124, 148, 74, 117, 180, 36, 144, 199, 72,
                    171, 116, 98, 187, 48, 115, 184, 255, 20, 213, 146, 36, 216, 2, 63, 53, 24, 95,
                    0, 56, 124, 25, 79, 146, 52, 113, 172, 68, 136, 188,
                ],
            ),
            (
                Resample::Bilinear,
                2,
                3,
                &[
                    37, 90, 143, 111, 164, 217, 128, 181, 164, 202, 174, 64, 149, 97, 69, 49, 90,
                    143,
                ],
            ),
            (
                Resample::Lanczos,
                4,
                2,
                &[
                    28, 86, 164, 82, 146, 158, 143, 200, 129, 186, 153, 188, 176, 183, 110, 143,
                    82, 105, 72, 148, 76, 137, 99, 135,
                ],
            ),
            (
                Resample::Bicubic,
                5,
                1,
                &[
                    91, 144, 119, 128, 103, 156, 87, 140, 93, 124, 177, 130, 161, 114, 167,
                ],
            ),
        ];
        let src = pattern();
        for (filter, w, h, want) in cases {
            let got = resize(&src, w, h, filter);
            assert_eq!(got.dimensions(), (w, h));
            assert_eq!(got.as_raw().as_slice(), want, "{filter:?} {w}x{h}");
        }
    }

    #[test]
    fn same_size_is_a_copy() {
        let src = pattern();
        assert_eq!(resize(&src, 5, 3, Resample::Bicubic), src);
    }

    #[test]
    fn window_equals_the_same_pixels_of_the_full_resize() {
        let src = RgbImage::from_fn(97, 61, |x, y| {
            image::Rgb([(x * 7 + y * 3) as u8, (x * y) as u8, (x ^ y) as u8])
        });
        for filter in [Resample::Bicubic, Resample::Bilinear, Resample::Lanczos] {
            for (ow, oh) in [(40, 25), (97, 30), (40, 61), (300, 190), (97, 61)] {
                let full = resize(&src, ow, oh, filter);
                for (x, y, w, h) in [(0, 0, 1, 1), (3, 2, 10, 7), (ow - 5, oh - 4, 5, 4)] {
                    let window = Window {
                        x: x as usize,
                        y: y as usize,
                        width: w as usize,
                        height: h as usize,
                    };
                    let part = resample_window(&src, (ow as usize, oh as usize), window, filter);
                    let want = image::imageops::crop_imm(&full, x, y, w, h).to_image();
                    assert_eq!(part, want, "{filter:?} {ow}x{oh} window {window:?}");
                }
            }
        }
    }

    #[test]
    fn degenerate_sizes_do_not_panic() {
        let src = pattern();
        assert_eq!(resize(&src, 0, 0, Resample::Bicubic).dimensions(), (0, 0));
        assert_eq!(resize(&src, 4, 0, Resample::Bicubic).dimensions(), (0, 0));
        let empty = RgbImage::new(0, 0);
        assert_eq!(resize(&empty, 4, 4, Resample::Bicubic).dimensions(), (0, 0));
        let window = Window {
            x: 10,
            y: 10,
            width: 10,
            height: 10,
        };
        assert_eq!(
            resample_window(&src, (4, 4), window, Resample::Bicubic).dimensions(),
            (0, 0)
        );
        // 1×1 up to a large size and a large downscale factor.
        let one = RgbImage::from_pixel(1, 1, image::Rgb([9, 8, 7]));
        let up = resize(&one, 50, 3, Resample::Lanczos);
        assert!(up.pixels().all(|p| p.0 == [9, 8, 7]));
        let wide = RgbImage::from_pixel(3000, 2, image::Rgb([200, 100, 0]));
        let down = resize(&wide, 1, 1, Resample::Bicubic);
        assert_eq!(down.as_raw(), &[200, 100, 0]);
    }

    #[test]
    fn fast_resampler_stays_within_a_level_of_pillow() {
        // A smooth photo-like gradient with texture, reduced as the fast path
        // reduces a 12-MP photo, through a box and a window as preprocessing
        // asks for them.
        let src = RgbImage::from_fn(1000, 750, |x, y| {
            let v = |c: u32| ((x * (3 + c) + y * (5 - c) + (x * y) % 17) % 256) as u8;
            image::Rgb([v(0), v(1), v(2)])
        });
        let src_box = [0.0, 0.0, 999.75, 750.0];
        let window = Window {
            x: 37,
            y: 0,
            width: 224,
            height: 224,
        };
        for resample in [Resample::Bicubic, Resample::Bilinear] {
            let exact = resample_window_box(&src, src_box, (298, 224), window, resample);
            let fast = resample_window_box_fast(&src, src_box, (298, 224), window, resample);
            assert_eq!(fast.dimensions(), exact.dimensions());
            let diffs: Vec<i32> = exact
                .as_raw()
                .iter()
                .zip(fast.as_raw())
                .map(|(&a, &b)| (i32::from(a) - i32::from(b)).abs())
                .collect();
            let worst = diffs.iter().max().copied().unwrap_or(0);
            let mean = diffs.iter().sum::<i32>() as f64 / diffs.len() as f64;
            // 16-bit weights and their own rounding: a fraction of a level on
            // average, a few levels where the texture is harshest (real photos
            // stay within the fast path's tensor budget; dct_scaled_parity).
            assert!(
                worst <= 8 && mean < 0.5,
                "{resample:?}: worst {worst}, mean {mean}"
            );
            // Identical output would mean the exact fallback ran, not the fast path.
            assert!(worst > 0, "{resample:?}: the fast resampler was not used");
        }
    }
}
