//! The duplicate test's feature: OpenCV's `img_hash` perceptual hash.

use image::GrayImage;

/// Side of the image the DCT runs on.
const SIDE: usize = 32;
/// Side of the low-frequency block that gives the 64 bits.
const LOW: usize = 8;

/// 64-bit perceptual hash, as `cv2.img_hash.PHash_create().compute(grey)`:
///
/// 1. resize to 32×32 with `INTER_LINEAR_EXACT`;
/// 2. orthonormal 2-D DCT-II of the f32 pixels, top-left 8×8 block, its DC
///    term set to 0;
/// 3. bit `8·row + col` set when that coefficient is strictly above the
///    block's mean.
///
/// The bits are numbered as OpenCV packs them (row-major, least significant
/// bit first in each byte), so `hash.to_le_bytes()` equals OpenCV's 8 bytes.
/// OpenCV's DCT runs in f32; this one runs in f64 and rounds each coefficient
/// to f32, which gives the same bits unless a coefficient lies within f32
/// rounding of the mean (not once in the reference set of photos and 3,000
/// random images). `grey` is OpenCV's greyscale decode
/// (`preprocess::decode_grey`).
pub fn phash(grey: &GrayImage) -> u64 {
    let (w, h) = (grey.width() as usize, grey.height() as usize);
    if w == 0 || h == 0 {
        return 0;
    }
    let small = resize_linear_exact(grey.as_raw(), w, h, SIDE, SIDE);
    let coeffs = dct2_low(&small);
    // cv::mean sums the f32 values in f64 and the comparison is made in f32.
    let mean = (coeffs.iter().map(|&c| f64::from(c)).sum::<f64>() / (LOW * LOW) as f64) as f32;
    coeffs
        .iter()
        .enumerate()
        .fold(0u64, |acc, (i, &c)| acc | (u64::from(c > mean) << i))
}

/// Orthonormal DCT-II basis for N = 32, rows 0..8 only:
/// `C[k][n] = s_k cos(π k (2n + 1) / 2N)`, `s_0 = √(1/N)`, `s_k = √(2/N)`.
fn dct_table() -> [[f64; SIDE]; LOW] {
    let mut c = [[0.0; SIDE]; LOW];
    for (k, row) in c.iter_mut().enumerate() {
        let s = if k == 0 { 1.0 } else { 2.0 } / SIDE as f64;
        for (n, v) in row.iter_mut().enumerate() {
            let angle =
                std::f64::consts::PI * (k as f64) * (2.0 * n as f64 + 1.0) / (2.0 * SIDE as f64);
            *v = s.sqrt() * angle.cos();
        }
    }
    c
}

/// Top-left 8×8 of the 2-D DCT of a 32×32 row-major block, DC zeroed, as f32:
/// `Y[k][l] = Σ_n Σ_m C[k][n] X[n][m] C[l][m]`.
///
/// Hand-written: only 64 outputs of a 32×32 transform are needed, two small
/// products with a precomputed table; an FFT crate would be more code and
/// dependency than the transform itself.
fn dct2_low(x: &[u8]) -> [f32; LOW * LOW] {
    let c = dct_table();
    // Down the columns: T[k][m] = Σ_n C[k][n] X[n][m].
    let mut t = [[0.0f64; SIDE]; LOW];
    for (k, trow) in t.iter_mut().enumerate() {
        for (n, xrow) in x.chunks_exact(SIDE).enumerate() {
            let ckn = c[k][n];
            for (tv, &xv) in trow.iter_mut().zip(xrow) {
                *tv += ckn * f64::from(xv);
            }
        }
    }
    // Along the rows: Y[k][l] = Σ_m T[k][m] C[l][m].
    let mut y = [0.0f32; LOW * LOW];
    for k in 0..LOW {
        for l in 0..LOW {
            let v: f64 = t[k].iter().zip(&c[l]).map(|(a, b)| a * b).sum();
            // A coefficient that is zero in exact arithmetic (flat or symmetric
            // images) comes out of OpenCV's f32 DCT as 0.0 but out of this sum as
            // ±1e-13 noise, which would decide its bit at random against a zero
            // mean. Real coefficients of 8-bit pixels are many orders larger.
            y[k * LOW + l] = if v.abs() < 1e-6 { 0.0 } else { v as f32 };
        }
    }
    y[0] = 0.0;
    y
}

/// Source offset and 8-bit fixed-point weights of one output position of
/// OpenCV's bit-exact bilinear resize, plus the range of outputs that
/// interpolate (those before `min` copy the first source pixel, those from
/// `max` on the last).
struct LinearAxis {
    taps: Vec<(usize, [u32; 2])>,
    min: usize,
    max: usize,
}

/// OpenCV's `interpolationLinear::getCoeffs` for one axis: the source position
/// `(d + 0.5) · scale − 0.5` in exact double arithmetic, the fraction rounded
/// (half to even) to 8 bits.
fn linear_axis(ssize: usize, dsize: usize) -> LinearAxis {
    // cv::resize passes dsize/ssize and the kernel inverts it again.
    let scale = 1.0 / (dsize as f64 / ssize as f64);
    let (mut min, mut max) = (0, dsize);
    let taps = (0..dsize)
        .map(|d| {
            let f = scale * (d as f64 + 0.5) - 0.5;
            let i = f.floor();
            if i >= 0.0 && ssize > 1 {
                if (i as usize) < ssize - 1 {
                    let c1 = ((f - i) * 256.0).round_ties_even() as u32;
                    return (i as usize, [256 - c1, c1]);
                }
                max = max.min(d);
                return (ssize - 1, [256, 0]);
            }
            min = min.max(d + 1);
            (0, [256, 0])
        })
        .collect();
    LinearAxis { taps, min, max }
}

/// OpenCV's `cv::resize(…, INTER_LINEAR_EXACT)` for 8-bit greyscale.
///
/// Hand-written because the hash's bits depend on OpenCV's exact fixed-point
/// arithmetic, which no Rust resizer reproduces: a horizontal pass into 16-bit
/// values with 8 fractional bits (`ufixedpoint16`), a vertical pass into 32-bit
/// values with 16 (`ufixedpoint32`) rounded to 8 bits; rows outside the
/// interpolating range are the first or last source row's horizontal pass,
/// rounded from 8 fractional bits.
fn resize_linear_exact(src: &[u8], w: usize, h: usize, dw: usize, dh: usize) -> Vec<u8> {
    let xa = linear_axis(w, dw);
    let ya = linear_axis(h, dh);
    let hline = |y: usize| -> Vec<u32> {
        let row = &src[y * w..(y + 1) * w];
        xa.taps
            .iter()
            .enumerate()
            .map(|(d, &(s, [c0, c1]))| {
                if d < xa.min {
                    u32::from(row[0]) << 8
                } else if d >= xa.max {
                    u32::from(row[w - 1]) << 8
                } else {
                    c0 * u32::from(row[s]) + c1 * u32::from(row[s + 1])
                }
            })
            .collect()
    };
    let round8 = |v: u32| ((v + 128) >> 8) as u8;
    let mut out = Vec::with_capacity(dw * dh);
    for (d, &(s, [c0, c1])) in ya.taps.iter().enumerate() {
        if d < ya.min || d >= ya.max {
            let row = if d < ya.min { 0 } else { h - 1 };
            out.extend(hline(row).into_iter().map(round8));
        } else {
            let (r0, r1) = (hline(s), hline(s + 1));
            out.extend(
                r0.iter()
                    .zip(&r1)
                    .map(|(&a, &b)| ((a * c0 + b * c1 + (1 << 15)) >> 16) as u8),
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::features::hamming;

    #[test]
    fn constant_image_hashes_to_zero() {
        // Every AC coefficient is 0 and so is the mean: no bit is strictly above.
        for v in [0u8, 17, 255] {
            assert_eq!(phash(&GrayImage::from_pixel(50, 40, image::Luma([v]))), 0);
        }
        assert_eq!(phash(&GrayImage::new(0, 5)), 0);
    }

    #[test]
    fn dct_is_orthonormal() {
        // A constant block of 1 has DC 32 (zeroed) and no AC energy.
        let flat = [1u8; SIDE * SIDE];
        assert!(dct2_low(&flat).iter().all(|&v| v.abs() < 1e-5));
        // A horizontal cosine of frequency 1 lands in coefficient (0, 1) only.
        let c = dct_table();
        let x: Vec<u8> = (0..SIDE * SIDE)
            .map(|i| (128.0 + 100.0 * c[1][i % SIDE] / c[1][0]).round() as u8)
            .collect();
        let y = dct2_low(&x);
        let peak = y[1].abs();
        assert!(peak > 1000.0, "{peak}");
        assert!(y
            .iter()
            .enumerate()
            .all(|(i, v)| i == 1 || v.abs() < 0.01 * peak));
    }

    #[test]
    fn linear_exact_resize_hand_values() {
        // 4 → 2: positions 0.5 and 2.5, weights 128/128 → (a + b + 1) / 2.
        assert_eq!(
            resize_linear_exact(&[0, 10, 20, 255], 4, 1, 2, 1),
            vec![5, 138]
        );
        // 2 → 4 upscale: positions -0.25 (clamped), 0.25, 0.75, 1.25 (clamped).
        assert_eq!(
            resize_linear_exact(&[0, 200], 2, 1, 4, 1),
            vec![0, 50, 150, 200]
        );
        // Identity.
        let src: Vec<u8> = (0..=255).collect();
        assert_eq!(resize_linear_exact(&src, 16, 16, 16, 16), src);
    }

    #[test]
    fn stable_under_mild_changes_and_different_across_images() {
        // Smooth photos-like content: bilinear sampling without a low-pass
        // filter (as OpenCV's) makes the hash of pure noise depend on the size.
        let smooth = |w: u32, h: u32, fx: f64, fy: f64| {
            GrayImage::from_fn(w, h, |x, y| {
                let (x, y) = (f64::from(x) / f64::from(w), f64::from(y) / f64::from(h));
                let v = 128.0 + 60.0 * (fx * x).sin() + 50.0 * (fy * y * (x + 0.5)).cos();
                image::Luma([v.clamp(0.0, 255.0) as u8])
            })
        };
        let a = smooth(640, 480, 9.0, 7.0);
        let b = smooth(640, 480, 4.0, 13.0);
        let a_small = image::imageops::resize(&a, 320, 240, image::imageops::FilterType::Triangle);
        assert!(hamming(phash(&a), phash(&a_small)) <= 10);
        assert!(hamming(phash(&a), phash(&b)) > 10);
    }
}
