//! Per-photo features, computed once from the decoded pixels.
//!
//! The server decodes a photo once and computes, beside the CLIP embedding,
//! everything the album tasks need later, so that nothing downstream touches
//! pixels again:
//!
//! - [`phash`]: OpenCV's `img_hash` perceptual hash, which the original server
//!   clusters for duplicates;
//! - [`laplacian_variance`]: the original's OpenCV blur measure;
//! - the photo's upright width and height.
//!
//! Both pixel features are defined on OpenCV's greyscale decode of the photo's
//! bytes (`preprocess::decode_grey`). [`FeatureRecord`] bundles them with the
//! embedding and has a compact, versioned binary encoding for the feature store.

mod blur;
mod phash;

pub use blur::{laplacian_variance, LAPLACIAN_LONG_SIDE};
pub use phash::phash;

use image::GrayImage;
use thiserror::Error;

/// One face found in a photo.
#[derive(Debug, Clone, PartialEq)]
pub struct FaceRecord {
    /// Detector score.
    pub score: f32,
    /// `[x1, y1, x2, y2]` in whole pixels of the upright, full-size photo.
    pub bbox: [i32; 4],
    /// Landmarks (68 points: jaw, brows, nose, eyes, mouth) in pixels of
    /// the upright, full-size photo.
    pub landmarks: Vec<[f32; 2]>,
    /// The face descriptor (not normalised).
    pub embedding: Vec<f32>,
}

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
    /// The faces in the photo, best first; `None` when the photo was
    /// embedded without a face model (not the same as no faces).
    pub faces: Option<Vec<FaceRecord>>,
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
    /// The faces section is cut short or has bytes left over.
    #[error("feature record's faces section is malformed")]
    BadFaces,
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
    /// Version 3 adds the faces section; version 2 records (no faces
    /// section) still read, with `faces: None`. Version 1 held imagehash's
    /// pHash instead of OpenCV's, so it reads as missing and is computed again.
    pub const FORMAT_VERSION: u8 = 3;

    /// The oldest version this build reads.
    const OLDEST_READABLE: u8 = 2;

    /// Header size: version, width, height, phash, laplacian variance, embedding length.
    const HEADER_LEN: usize = 1 + 4 + 4 + 8 + 4 + 4;

    /// The pixel-derived part of the record.
    pub fn pixel_features(&self) -> PixelFeatures {
        PixelFeatures {
            phash: self.phash,
            laplacian_var: self.laplacian_var,
            width: self.width,
            height: self.height,
        }
    }

    /// Encodes the record compactly (2 KiB for a 512-d embedding, plus
    /// about 1 KiB per face).
    ///
    /// Layout, all little-endian: `u8` format version (3), `u32` width,
    /// `u32` height, `u64` pHash, `f32` Laplacian variance, `u32` embedding
    /// length `n`, then `n` raw `f32`s; then the faces section: `u8` 0 (not
    /// computed) or 1, and when 1 a `u16` face count, each face as `f32`
    /// score, 4 × `i32` box, `u8` landmark count `l`, `2l` `f32`s, `u16`
    /// descriptor length `m`, `m` `f32`s.
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
        match &self.faces {
            None => out.push(0),
            Some(faces) => {
                out.push(1);
                // Counts saturate like the embedding length: the detector keeps
                // at most a few hundred faces of 68 landmarks and 128 values.
                let faces = &faces[..faces.len().min(usize::from(u16::MAX))];
                out.extend_from_slice(&(faces.len() as u16).to_le_bytes());
                for face in faces {
                    out.extend_from_slice(&face.score.to_le_bytes());
                    for v in face.bbox {
                        out.extend_from_slice(&v.to_le_bytes());
                    }
                    let landmarks = &face.landmarks[..face.landmarks.len().min(255)];
                    out.push(landmarks.len() as u8);
                    for v in landmarks.iter().flatten() {
                        out.extend_from_slice(&v.to_le_bytes());
                    }
                    let embedding =
                        &face.embedding[..face.embedding.len().min(usize::from(u16::MAX))];
                    out.extend_from_slice(&(embedding.len() as u16).to_le_bytes());
                    for v in embedding {
                        out.extend_from_slice(&v.to_le_bytes());
                    }
                }
            }
        }
        out
    }

    /// Decodes a record written by [`FeatureRecord::encode`], checking the
    /// version and every length.
    pub fn decode(bytes: &[u8]) -> Result<Self, FeatureError> {
        let (&version, _) = bytes.split_first().ok_or(FeatureError::Empty)?;
        if !(Self::OLDEST_READABLE..=Self::FORMAT_VERSION).contains(&version) {
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
        // Version 2 ends with the embedding; version 3 has a faces section after it.
        let length_ok = if version == 2 {
            bytes.len() == expected
        } else {
            bytes.len() > expected
        };
        if !length_ok {
            return Err(FeatureError::LengthMismatch {
                expected,
                got: bytes.len(),
            });
        }
        let embedding = floats(&bytes[Self::HEADER_LEN..expected]);
        let faces = if version == 2 {
            None
        } else {
            decode_faces(&bytes[expected..]).ok_or(FeatureError::BadFaces)?
        };
        Ok(Self {
            embedding,
            phash,
            laplacian_var,
            width,
            height,
            faces,
        })
    }
}

fn floats(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

/// The faces section: `None` when it is malformed.
fn decode_faces(bytes: &[u8]) -> Option<Option<Vec<FaceRecord>>> {
    let mut rest = bytes;
    let mut take = |n: usize| -> Option<&[u8]> {
        let (head, tail) = (rest.get(..n)?, rest.get(n..)?);
        rest = tail;
        Some(head)
    };
    let faces = match take(1)? {
        [0] => None,
        [1] => {
            let count = u16::from_le_bytes(take(2)?.try_into().ok()?);
            let mut faces = Vec::with_capacity(usize::from(count));
            for _ in 0..count {
                let score = f32::from_le_bytes(take(4)?.try_into().ok()?);
                let corners = take(16)?;
                let bbox = std::array::from_fn(|i| {
                    i32::from_le_bytes([
                        corners[4 * i],
                        corners[4 * i + 1],
                        corners[4 * i + 2],
                        corners[4 * i + 3],
                    ])
                });
                let points = usize::from(take(1)?[0]);
                let landmarks = floats(take(points * 8)?)
                    .chunks_exact(2)
                    .map(|p| [p[0], p[1]])
                    .collect();
                let dim = usize::from(u16::from_le_bytes(take(2)?.try_into().ok()?));
                let embedding = floats(take(dim * 4)?);
                faces.push(FaceRecord {
                    score,
                    bbox,
                    landmarks,
                    embedding,
                });
            }
            Some(faces)
        }
        _ => return None,
    };
    rest.is_empty().then_some(faces)
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

/// Computes every pixel-derived feature from OpenCV's greyscale decode of a photo.
pub fn pixel_features(grey: &GrayImage) -> PixelFeatures {
    PixelFeatures {
        phash: phash(grey),
        laplacian_var: laplacian_variance(grey),
        width: grey.width(),
        height: grey.height(),
    }
}

/// Number of differing bits between two hashes.
pub fn hamming(a: u64, b: u64) -> u32 {
    (a ^ b).count_ones()
}

#[cfg(test)]
pub(crate) mod test_images {
    use image::{GrayImage, Luma};

    /// Deterministic pseudo-random texture (xorshift), sharp edges everywhere.
    pub fn textured(w: u32, h: u32) -> GrayImage {
        let mut s: u32 = 0x1234_5678;
        GrayImage::from_fn(w, h, |_, _| {
            s ^= s << 13;
            s ^= s >> 17;
            s ^= s << 5;
            Luma([(s & 0xff) as u8])
        })
    }

    /// Mean over a (2r+1)² window clipped to the image.
    pub fn box_blur(img: &GrayImage, radius: i64) -> GrayImage {
        let (w, h) = (i64::from(img.width()), i64::from(img.height()));
        GrayImage::from_fn(img.width(), img.height(), |x, y| {
            let (mut acc, mut n) = (0u32, 0u32);
            for dy in -radius..=radius {
                for dx in -radius..=radius {
                    let (sx, sy) = (i64::from(x) + dx, i64::from(y) + dy);
                    if sx >= 0 && sy >= 0 && sx < w && sy < h {
                        acc += u32::from(img.get_pixel(sx as u32, sy as u32).0[0]);
                        n += 1;
                    }
                }
            }
            Luma([(acc / n) as u8])
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hamming_counts_bits() {
        assert_eq!(hamming(0, 0), 0);
        assert_eq!(hamming(0, u64::MAX), 64);
        assert_eq!(hamming(0b1011, 0b0110), 3);
    }

    fn face(score: f32) -> FaceRecord {
        FaceRecord {
            score,
            bbox: [-3, 10, 250, 400],
            landmarks: vec![[1.5, 2.5]; 68],
            embedding: (0..128).map(|i| i as f32 / 128.0).collect(),
        }
    }

    fn record() -> FeatureRecord {
        FeatureRecord {
            embedding: vec![1.0, -2.5, f32::MIN_POSITIVE, 3.25e7],
            phash: 0xDEAD_BEEF_0123_4567,
            laplacian_var: 123.5,
            width: 4032,
            height: 3024,
            faces: None,
        }
    }

    #[test]
    fn record_roundtrip() {
        let rec = record();
        let bytes = rec.encode();
        assert_eq!(bytes.len(), 25 + 16 + 1);
        assert_eq!(bytes[0], FeatureRecord::FORMAT_VERSION);
        assert_eq!(FeatureRecord::decode(&bytes), Ok(rec.clone()));
        let empty = FeatureRecord {
            embedding: vec![],
            ..rec.clone()
        };
        assert_eq!(FeatureRecord::decode(&empty.encode()), Ok(empty));
        // Faces computed, none found, is not the same as not computed.
        for faces in [vec![], vec![face(0.9), face(0.6)]] {
            let with = FeatureRecord {
                faces: Some(faces),
                ..rec.clone()
            };
            assert_eq!(FeatureRecord::decode(&with.encode()), Ok(with));
        }
    }

    #[test]
    fn version_2_records_read_without_faces() {
        // Version 2 is version 3 without the faces section.
        let mut v2 = record().encode();
        v2[0] = 2;
        v2.pop();
        assert_eq!(FeatureRecord::decode(&v2), Ok(record()));
        v2.push(0);
        assert!(matches!(
            FeatureRecord::decode(&v2),
            Err(FeatureError::LengthMismatch { .. })
        ));
    }

    #[test]
    fn record_corruption_is_reported() {
        let rec = FeatureRecord {
            embedding: vec![0.5; 8],
            faces: Some(vec![face(0.8)]),
            ..record()
        };
        let bytes = rec.encode();
        assert_eq!(FeatureRecord::decode(&[]), Err(FeatureError::Empty));
        // Version 1 records hold imagehash's pHash: read as unsupported, so they
        // are treated as missing and computed again.
        let mut old = bytes.clone();
        old[0] = 1;
        assert!(matches!(
            FeatureRecord::decode(&old),
            Err(FeatureError::UnsupportedVersion { found: 1, .. })
        ));
        let mut wrong = bytes.clone();
        wrong[0] = 9;
        assert_eq!(
            FeatureRecord::decode(&wrong),
            Err(FeatureError::UnsupportedVersion {
                found: 9,
                supported: 3
            })
        );
        assert_eq!(
            FeatureRecord::decode(&bytes[..10]),
            Err(FeatureError::Truncated {
                needed: 25,
                got: 10
            })
        );
        // Every cut inside the faces section, and a byte too many, is caught.
        let embedding_end = 25 + 32;
        assert!(matches!(
            FeatureRecord::decode(&bytes[..embedding_end]),
            Err(FeatureError::LengthMismatch { .. })
        ));
        for end in embedding_end + 1..bytes.len() {
            assert_eq!(
                FeatureRecord::decode(&bytes[..end]),
                Err(FeatureError::BadFaces),
                "cut at {end}"
            );
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert_eq!(FeatureRecord::decode(&longer), Err(FeatureError::BadFaces));
        let mut flag = bytes.clone();
        flag[embedding_end] = 7;
        assert_eq!(FeatureRecord::decode(&flag), Err(FeatureError::BadFaces));
        // A huge declared length must not overflow or allocate.
        let mut huge = bytes;
        huge[21..25].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(
            FeatureRecord::decode(&huge),
            Err(FeatureError::LengthMismatch { .. })
        ));
    }
}
