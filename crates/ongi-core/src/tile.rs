//! The 16 × 16 byte tile transpose that the blur measure's area resize and
//! the EXIF quarter turns of greyscale photos share.
//!
//! Why hand-written: a per-pixel transpose of a 12-MP plane writes every byte
//! a whole row apart (the `image` crate's `rotate90` took ~24 ms a photo);
//! in tiles that stay in registers it is a few milliseconds.

/// Tile side in bytes.
pub(crate) const TILE: usize = 16;

/// The tile whose row `r` is the 16 bytes at column `x0` of row `row(r)` of
/// `src` (rows `stride` bytes apart).
pub(crate) fn gather(
    src: &[u8],
    stride: usize,
    x0: usize,
    row: impl Fn(usize) -> usize,
) -> [[u8; TILE]; TILE] {
    std::array::from_fn(|r| {
        let at = row(r) * stride + x0;
        let mut bytes = [0u8; TILE];
        bytes.copy_from_slice(&src[at..at + TILE]);
        bytes
    })
}

/// The transpose of `tile`: row `c` of the result is column `c` of `tile`.
#[cfg(target_arch = "x86_64")]
pub(crate) fn transpose16(tile: &[[u8; TILE]; TILE]) -> [[u8; TILE]; TILE] {
    use std::arch::x86_64::{
        __m128i, _mm_loadu_si128, _mm_storeu_si128, _mm_unpackhi_epi8, _mm_unpacklo_epi8,
    };
    // SAFETY: each row is 16 readable bytes; the load is unaligned.
    let mut v: [__m128i; TILE] =
        std::array::from_fn(|r| unsafe { _mm_loadu_si128(tile[r].as_ptr().cast()) });
    // Four rounds of byte interleaving of rows i and i + 8 turn the tile's
    // (row, column) index bits around, which is the transpose.
    for _ in 0..4 {
        v = std::array::from_fn(|j| {
            let (a, b) = (v[j / 2], v[j / 2 + TILE / 2]);
            // SAFETY: SSE2 is part of the x86-64 baseline.
            unsafe {
                if j % 2 == 0 {
                    _mm_unpacklo_epi8(a, b)
                } else {
                    _mm_unpackhi_epi8(a, b)
                }
            }
        });
    }
    std::array::from_fn(|c| {
        let mut row = [0u8; TILE];
        // SAFETY: `row` is 16 writable bytes; the store is unaligned.
        unsafe { _mm_storeu_si128(row.as_mut_ptr().cast(), v[c]) };
        row
    })
}

/// The transpose of `tile` (portable).
#[cfg(not(target_arch = "x86_64"))]
pub(crate) fn transpose16(tile: &[[u8; TILE]; TILE]) -> [[u8; TILE]; TILE] {
    std::array::from_fn(|c| std::array::from_fn(|r| tile[r][c]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_become_columns() {
        let tile: [[u8; TILE]; TILE] =
            std::array::from_fn(|r| std::array::from_fn(|c| (r * 16 + c) as u8));
        let t = transpose16(&tile);
        for r in 0..TILE {
            for c in 0..TILE {
                assert_eq!(t[c][r], tile[r][c]);
            }
        }
    }
}
