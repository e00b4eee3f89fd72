//! The byte transpose of 16-row bands that the blur measure's area resize
//! and the EXIF quarter turns of greyscale photos share.
//!
//! Why hand-written: a per-pixel transpose of a 12-MP plane writes every byte
//! a whole row apart (the `image` crate's `rotate90` took ~24 ms a photo);
//! in tiles that stay in registers it is a few milliseconds. No image crate
//! offers a transpose whose columns land where the caller says.

/// Tile side in bytes: a band's height, and the bytes of one column.
pub(crate) const TILE: usize = 16;

/// Transposes the first `n` columns (a multiple of [`TILE`]) of a band of 16
/// rows of `src`, row `r` starting at byte `rows[r]`: the column at `c`
/// (its 16 bytes, one per row, row 0 first) goes to `dst[at(c)..at(c) + 16]`.
///
/// # Panics
/// If a row's `n` bytes or a column's destination lie outside `src` or
/// `dst`.
pub(crate) fn transpose_band(
    src: &[u8],
    rows: &[usize; TILE],
    n: usize,
    dst: &mut [u8],
    at: impl Fn(usize) -> usize,
) {
    assert!(n.is_multiple_of(TILE), "{n} columns are not whole tiles");
    for &r in rows {
        assert!(r.checked_add(n).is_some_and(|end| end <= src.len()));
    }
    #[cfg(target_arch = "x86_64")]
    {
        let mut done = 0;
        if std::arch::is_x86_feature_detected!("avx512bw") {
            // SAFETY: the CPU has AVX512BW (and so AVX512F); rows were checked.
            done = unsafe { x86::band_avx512(src, rows, n, dst, &at) };
        }
        for c0 in (done..n).step_by(TILE) {
            // SAFETY: SSE2 is part of the x86-64 baseline; rows were checked.
            unsafe { x86::tile_sse2(src, rows, c0, dst, &at) };
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    for c in 0..n {
        let a = at(c);
        for (d, &r) in dst[a..a + TILE].iter_mut().zip(rows) {
            *d = src[r + c];
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::TILE;

    /// One round of byte interleaving of registers `k` and `k + 8`; four
    /// rounds turn the (row, column) index bits of each 128-bit lane's
    /// 16 × 16 tile around, so that register `c` then holds column `c` of
    /// every lane's tile. Spelled out so that the registers stay registers
    /// (as a loop over the array, the compiler kept it in memory).
    macro_rules! interleave_round {
        ($v:ident, $lo:ident, $hi:ident) => {
            $v = [
                $lo($v[0], $v[8]),
                $hi($v[0], $v[8]),
                $lo($v[1], $v[9]),
                $hi($v[1], $v[9]),
                $lo($v[2], $v[10]),
                $hi($v[2], $v[10]),
                $lo($v[3], $v[11]),
                $hi($v[3], $v[11]),
                $lo($v[4], $v[12]),
                $hi($v[4], $v[12]),
                $lo($v[5], $v[13]),
                $hi($v[5], $v[13]),
                $lo($v[6], $v[14]),
                $hi($v[6], $v[14]),
                $lo($v[7], $v[15]),
                $hi($v[7], $v[15]),
            ];
        };
    }

    macro_rules! transpose_lanes {
        ($v:ident, $lo:ident, $hi:ident) => {
            interleave_round!($v, $lo, $hi);
            interleave_round!($v, $lo, $hi);
            interleave_round!($v, $lo, $hi);
            interleave_round!($v, $lo, $hi);
        };
    }

    /// The 16 columns from `c0`, one tile in xmm registers.
    ///
    /// # Safety
    /// Every `rows[r] + c0 + 16 <= src.len()`.
    #[inline]
    pub(super) unsafe fn tile_sse2(
        src: &[u8],
        rows: &[usize; TILE],
        c0: usize,
        dst: &mut [u8],
        at: &impl Fn(usize) -> usize,
    ) {
        let mut v = [_mm_setzero_si128(); TILE];
        for (x, &r) in v.iter_mut().zip(rows) {
            // SAFETY: the caller's contract: 16 readable bytes per row.
            *x = unsafe { _mm_loadu_si128(src.as_ptr().add(r + c0).cast()) };
        }
        transpose_lanes!(v, _mm_unpacklo_epi8, _mm_unpackhi_epi8);
        for (c, col) in v.iter().enumerate() {
            let a = at(c0 + c);
            let out = &mut dst[a..a + TILE];
            // SAFETY: `out` is 16 writable bytes; the store is unaligned.
            unsafe { _mm_storeu_si128(out.as_mut_ptr().cast(), *col) };
        }
    }

    /// Four tiles at a time in zmm registers (each 128-bit lane one tile);
    /// returns how many columns it transposed (a multiple of 64).
    ///
    /// # Safety
    /// The CPU has AVX512BW; every `rows[r] + n <= src.len()`.
    #[target_feature(enable = "avx512f,avx512bw")]
    pub(super) unsafe fn band_avx512(
        src: &[u8],
        rows: &[usize; TILE],
        n: usize,
        dst: &mut [u8],
        at: &impl Fn(usize) -> usize,
    ) -> usize {
        const WIDE: usize = 4 * TILE;
        let groups = n / WIDE;
        for g in 0..groups {
            let c0 = g * WIDE;
            let mut v = [_mm512_setzero_si512(); TILE];
            for (x, &r) in v.iter_mut().zip(rows) {
                // SAFETY: the caller's contract: c0 + 64 <= n readable bytes per row.
                *x = unsafe { _mm512_loadu_si512(src.as_ptr().add(r + c0).cast()) };
            }
            transpose_lanes!(v, _mm512_unpacklo_epi8, _mm512_unpackhi_epi8);
            let mut cols = [[0u8; WIDE]; TILE];
            for (out, col) in cols.iter_mut().zip(v) {
                // SAFETY: `out` is 64 writable bytes; the store is unaligned.
                unsafe { _mm512_storeu_si512(out.as_mut_ptr().cast(), col) };
            }
            // Lane `t` of register `c` is column `c` of tile `t`.
            for (c, col) in cols.iter().enumerate() {
                for (t, lane) in col.chunks_exact(TILE).enumerate() {
                    let a = at(c0 + t * TILE + c);
                    dst[a..a + TILE].copy_from_slice(lane);
                }
            }
        }
        groups * WIDE
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_become_columns_wherever_they_are_asked_to_go() {
        let mut checked = 0;
        // Widths around the four-tile step; rows out of order and strided.
        for n in [16, 48, 64, 80, 128, 208] {
            let stride = n + 7;
            let src: Vec<u8> = (0..stride * 40).map(|i| (i * 37 % 251) as u8).collect();
            let rows: [usize; TILE] = std::array::from_fn(|r| ((r * 7) % TILE + 3) * stride + 5);
            let src_len_needed = rows.iter().max().unwrap() + n;
            assert!(src_len_needed <= src.len());
            // Columns reversed, with a gap between them.
            let mut dst = vec![0u8; n * 20];
            transpose_band(&src, &rows, n, &mut dst, |c| (n - 1 - c) * 20 + 2);
            for c in 0..n {
                for r in 0..TILE {
                    assert_eq!(
                        dst[(n - 1 - c) * 20 + 2 + r],
                        src[rows[r] + c],
                        "n {n} c {c} r {r}"
                    );
                    checked += 1;
                }
            }
        }
        assert_eq!(checked, (16 + 48 + 64 + 80 + 128 + 208) * TILE);
    }

    #[test]
    #[should_panic]
    fn a_row_past_the_source_panics() {
        let src = vec![0u8; 100];
        let rows = [90; TILE];
        transpose_band(&src, &rows, 16, &mut [0u8; 256], |c| c * TILE);
    }
}
