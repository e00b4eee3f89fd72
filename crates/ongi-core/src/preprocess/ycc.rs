//! libjpeg's YCbCr → RGB conversion (`ycc_rgb_convert` in `jdcolor.c`), bit
//! for bit: 16-bit fixed point, each channel clamped to 0..=255. libjpeg
//! reads the products from per-value tables; they are computed here per
//! pixel instead (the same integer operations, which vectorise where table
//! lookups do not). libjpeg-turbo's SIMD converters give the same bytes.
//!
//! Why hand-written: decoding to YCbCr and converting here is what lets one
//! libjpeg pass hand out both the luma plane (the pixel features' input) and
//! the RGB pixels PIL would decode; the conversion is twenty lines, and no
//! crate reproduces libjpeg's rounding.

/// libjpeg's `SCALEBITS`.
const SCALE_BITS: u32 = 16;
const ONE_HALF: i32 = 1 << (SCALE_BITS - 1);
/// `FIX(x) = round(x · 2¹⁶)` of the BT.601 coefficients, as libjpeg writes them.
const FIX_1_40200: i32 = 91_881;
const FIX_1_77200: i32 = 116_130;
const FIX_0_71414: i32 = 46_802;
const FIX_0_34414: i32 = 22_554;

/// Pixels per run: the runs' loops are what vectorises.
const RUN: usize = 32;

/// One pixel: libjpeg's table entries `Cr_r_tab`, `Cb_b_tab`, `Cb_g_tab +
/// Cr_g_tab` for `x = sample − 128`, added to the luma.
#[inline(always)]
fn rgb(y: u8, cb: u8, cr: u8) -> [u8; 3] {
    let (y, x_cb, x_cr) = (i32::from(y), i32::from(cb) - 128, i32::from(cr) - 128);
    let clamp = |v: i32| v.clamp(0, 255) as u8;
    [
        clamp(y + ((FIX_1_40200 * x_cr + ONE_HALF) >> SCALE_BITS)),
        clamp(y + ((-FIX_0_34414 * x_cb + ONE_HALF - FIX_0_71414 * x_cr) >> SCALE_BITS)),
        clamp(y + ((FIX_1_77200 * x_cb + ONE_HALF) >> SCALE_BITS)),
    ]
}

/// One run of pixels, channel by channel.
#[inline(always)]
fn run(y: &[u8], cb: &[u8], cr: &[u8]) -> [[u8; 3]; RUN] {
    let mut out = [[0u8; 3]; RUN];
    for (i, px) in out.iter_mut().enumerate() {
        *px = rgb(y[i], cb[i], cr[i]);
    }
    out
}

/// Converts interleaved YCbCr pixels to RGB in place.
#[multiversion::multiversion(targets("x86_64+avx512f+avx512bw+avx512vl", "x86_64+avx2"))]
pub(super) fn ycc_to_rgb_in_place(data: &mut [u8]) {
    let mut runs = data.chunks_exact_mut(3 * RUN);
    for px in &mut runs {
        let (mut y, mut cb, mut cr) = ([0u8; RUN], [0u8; RUN], [0u8; RUN]);
        for (i, p) in px.chunks_exact(3).enumerate() {
            (y[i], cb[i], cr[i]) = (p[0], p[1], p[2]);
        }
        for (p, v) in px.chunks_exact_mut(3).zip(run(&y, &cb, &cr)) {
            p.copy_from_slice(&v);
        }
    }
    for p in runs.into_remainder().chunks_exact_mut(3) {
        let v = rgb(p[0], p[1], p[2]);
        p.copy_from_slice(&v);
    }
}

/// Converts three equally long Y, Cb and Cr planes to interleaved RGB.
#[multiversion::multiversion(targets("x86_64+avx512f+avx512bw+avx512vl", "x86_64+avx2"))]
pub(super) fn ycc_planes_to_rgb(y: &[u8], cb: &[u8], cr: &[u8]) -> Vec<u8> {
    let n = y.len().min(cb.len()).min(cr.len());
    let mut out = vec![0u8; n * 3];
    let runs = out.chunks_exact_mut(3 * RUN).zip(
        y.chunks_exact(RUN)
            .zip(cb.chunks_exact(RUN))
            .zip(cr.chunks_exact(RUN)),
    );
    for (px, ((y, cb), cr)) in runs {
        for (p, v) in px.chunks_exact_mut(3).zip(run(y, cb, cr)) {
            p.copy_from_slice(&v);
        }
    }
    let done = n - n % RUN;
    for (i, p) in out[done * 3..].chunks_exact_mut(3).enumerate() {
        p.copy_from_slice(&rgb(y[done + i], cb[done + i], cr[done + i]));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// libjpeg's `build_ycc_rgb_table` and `ycc_rgb_convert`, as written there.
    fn libjpeg_rgb(y: u8, cb: u8, cr: u8) -> [u8; 3] {
        let table = |f: &dyn Fn(i32) -> i32| -> Vec<i32> { (0..256).map(|i| f(i - 128)).collect() };
        let cr_r = table(&|x| (FIX_1_40200 * x + ONE_HALF) >> SCALE_BITS);
        let cb_b = table(&|x| (FIX_1_77200 * x + ONE_HALF) >> SCALE_BITS);
        let cr_g = table(&|x| -FIX_0_71414 * x);
        let cb_g = table(&|x| -FIX_0_34414 * x + ONE_HALF);
        let (y, cb, cr) = (i32::from(y), usize::from(cb), usize::from(cr));
        let clamp = |v: i32| v.clamp(0, 255) as u8;
        [
            clamp(y + cr_r[cr]),
            clamp(y + ((cb_g[cb] + cr_g[cr]) >> SCALE_BITS)),
            clamp(y + cb_b[cb]),
        ]
    }

    #[test]
    fn known_values() {
        // Neutral chroma leaves grey alone; the extremes clamp.
        let mut px = [77, 128, 128, 0, 255, 255, 255, 0, 0, 76, 85, 255];
        ycc_to_rgb_in_place(&mut px);
        assert_eq!(&px[..3], &[77, 77, 77]);
        // y=0, cb=cr=255: R = 0 + 178 = 178, G clamps to 0, B = 0 + 225 = 225.
        assert_eq!(&px[3..6], &[178, 0, 225]);
        // y=255, cb=cr=0: R = 255 − 179, G = 255 + 135 clamps, B = 255 − 227.
        assert_eq!(&px[6..9], &[76, 255, 28]);
        // Pure red as JPEG codes it (Y 76, Cb 85, Cr 255).
        assert_eq!(&px[9..], &[254, 0, 0]);
        let planes = ycc_planes_to_rgb(&[77, 0, 255, 76], &[128, 255, 0, 85], &[128, 255, 0, 255]);
        assert_eq!(planes, px);
    }

    #[test]
    fn every_chroma_pair_converts_as_libjpegs_tables_do() {
        // Every (Cb, Cr) pair at several lumas, in runs and a ragged tail.
        let (mut y, mut cb, mut cr) = (Vec::new(), Vec::new(), Vec::new());
        for luma in [0u8, 1, 64, 127, 128, 200, 254, 255] {
            for c in 0..=255u8 {
                for d in 0..=255u8 {
                    y.push(luma.wrapping_add(c % 3));
                    cb.push(c);
                    cr.push(d);
                }
            }
        }
        y.push(3);
        cb.push(250);
        cr.push(9);
        let want: Vec<u8> = y
            .iter()
            .zip(&cb)
            .zip(&cr)
            .flat_map(|((&y, &cb), &cr)| libjpeg_rgb(y, cb, cr))
            .collect();
        assert_eq!(ycc_planes_to_rgb(&y, &cb, &cr), want);
        let mut interleaved = super::super::planes::interleave3(&y, &cb, &cr);
        ycc_to_rgb_in_place(&mut interleaved);
        assert_eq!(interleaved, want);
        assert_eq!(want.len(), 3 * (8 * 256 * 256 + 1));
    }
}
