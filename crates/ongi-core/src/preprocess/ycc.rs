//! libjpeg's YCbCr → RGB conversion (`ycc_rgb_convert` in `jdcolor.c`), bit
//! for bit: 16-bit fixed point through per-value tables, each channel clamped
//! to 0..=255. libjpeg-turbo's SIMD converters give the same bytes.
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

/// `build_ycc_rgb_table`: index = the 8-bit sample, `x = sample − 128`.
struct Tables {
    cr_r: [i32; 256],
    cb_b: [i32; 256],
    cr_g: [i32; 256],
    cb_g: [i32; 256],
}

const TABLES: Tables = {
    let mut t = Tables {
        cr_r: [0; 256],
        cb_b: [0; 256],
        cr_g: [0; 256],
        cb_g: [0; 256],
    };
    let mut i = 0;
    while i < 256 {
        let x = i as i32 - 128;
        t.cr_r[i] = (FIX_1_40200 * x + ONE_HALF) >> SCALE_BITS;
        t.cb_b[i] = (FIX_1_77200 * x + ONE_HALF) >> SCALE_BITS;
        t.cr_g[i] = -FIX_0_71414 * x;
        t.cb_g[i] = -FIX_0_34414 * x + ONE_HALF;
        i += 1;
    }
    t
};

/// One pixel.
#[inline(always)]
fn rgb(y: u8, cb: u8, cr: u8) -> [u8; 3] {
    let t = &TABLES;
    let clamp = |v: i32| v.clamp(0, 255) as u8;
    let y = i32::from(y);
    let (cb, cr) = (usize::from(cb), usize::from(cr));
    [
        clamp(y + t.cr_r[cr]),
        clamp(y + ((t.cb_g[cb] + t.cr_g[cr]) >> SCALE_BITS)),
        clamp(y + t.cb_b[cb]),
    ]
}

/// Converts interleaved YCbCr pixels to RGB in place.
pub(super) fn ycc_to_rgb_in_place(data: &mut [u8]) {
    for px in data.chunks_exact_mut(3) {
        let out = rgb(px[0], px[1], px[2]);
        px.copy_from_slice(&out);
    }
}

/// Converts three equally long Y, Cb and Cr planes to interleaved RGB.
///
/// The tables' entries are the fixed-point products themselves, so this
/// computes them per pixel instead (the same integer operations, which
/// vectorise where table lookups do not) in runs of [`RUN`] pixels.
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
        let (mut r, mut g, mut b) = ([0u8; RUN], [0u8; RUN], [0u8; RUN]);
        for i in 0..RUN {
            let (yv, x_cb, x_cr) = (
                i32::from(y[i]),
                i32::from(cb[i]) - 128,
                i32::from(cr[i]) - 128,
            );
            let g_off = (-FIX_0_34414 * x_cb + ONE_HALF - FIX_0_71414 * x_cr) >> SCALE_BITS;
            r[i] = (yv + ((FIX_1_40200 * x_cr + ONE_HALF) >> SCALE_BITS)).clamp(0, 255) as u8;
            g[i] = (yv + g_off).clamp(0, 255) as u8;
            b[i] = (yv + ((FIX_1_77200 * x_cb + ONE_HALF) >> SCALE_BITS)).clamp(0, 255) as u8;
        }
        for (i, p) in px.chunks_exact_mut(3).enumerate() {
            p.copy_from_slice(&[r[i], g[i], b[i]]);
        }
    }
    let done = n - n % RUN;
    for (i, p) in out[done * 3..].chunks_exact_mut(3).enumerate() {
        p.copy_from_slice(&rgb(y[done + i], cb[done + i], cr[done + i]));
    }
    out
}

/// Pixels per run of [`ycc_planes_to_rgb`].
const RUN: usize = 32;

#[cfg(test)]
mod tests {
    use super::*;

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
    fn planes_convert_as_the_tables_do_for_every_chroma_pair() {
        // Every (Cb, Cr) pair with several lumas, in runs and a ragged tail.
        let (mut y, mut cb, mut cr) = (Vec::new(), Vec::new(), Vec::new());
        for c in 0..=255u8 {
            for d in 0..=255u8 {
                y.push(c.wrapping_mul(7).wrapping_add(d));
                cb.push(c);
                cr.push(d);
            }
        }
        y.push(3);
        cb.push(250);
        cr.push(9);
        let mut want = super::super::planes::interleave3(&y, &cb, &cr);
        ycc_to_rgb_in_place(&mut want);
        assert_eq!(ycc_planes_to_rgb(&y, &cb, &cr), want);
        assert_eq!(want.len(), 3 * (256 * 256 + 1));
    }
}
