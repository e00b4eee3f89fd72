//! Image decoding and CLIP preprocessing, matching `transformers`' PIL-based
//! `CLIPImageProcessor` (embeddings within cosine 0.99999 of `transformers`').
//!
//! The reference pipeline is
//! `PIL.Image.open` → `ImageOps.exif_transpose` → `convert("RGB")` → image processor:
//!
//! 1. resize: shorter side → `shortest_edge`, longer side →
//!    `int(shortest_edge * long / short)` (truncated, computed in f64), with PIL's
//!    `Image.resize` on the u8 image (ported bit-exactly in [`resize`]);
//! 2. centre crop: offset `(size - crop) // 2` (floor), zero-padded (in u8, before
//!    rescaling) where the image is smaller than the crop;
//! 3. rescale: `f32(f64(v) * rescale_factor)` (numpy upcasts to f64, then narrows);
//! 4. normalise in f32: `(x - mean) / std`.
//!
//! Output is channel-first (C, H, W) f32, as `pixel_values[0]`.

mod config;
mod decode;
mod decoded;
mod grey;
mod jpeg;
mod orient;
mod planes;
pub mod resize;
mod ycc;

use std::path::PathBuf;

use image::RgbImage;

pub use config::{PreprocessConfig, Resample, OPENAI_CLIP_MEAN, OPENAI_CLIP_STD};
pub use decode::{
    decode_for_mode, decode_image, decode_image_scaled, decode_image_with_limit, DecodeMode,
    DEFAULT_MAX_PIXELS, FAST_SAFETY_FACTOR,
};
pub use decoded::{scale_denom_for, DecodedImage, MinDecodeSize};
pub use grey::{decode_grey, feature_grey};

/// Why an image or a preprocessing configuration could not be used.
#[derive(Debug, thiserror::Error)]
pub enum PreprocessError {
    /// The bytes do not start like any known image format (includes empty input).
    #[error("not a recognised image ({len} bytes); expected JPEG, PNG or WebP")]
    UnrecognizedFormat {
        /// Length of the input in bytes.
        len: usize,
    },
    /// A known image format that this build does not decode (e.g. GIF, TIFF).
    #[error("unsupported image format {format}; expected JPEG, PNG or WebP")]
    UnsupportedFormat {
        /// The detected format.
        format: String,
    },
    /// The decoder rejected the data (corrupt, truncated, too large, ...).
    #[error("cannot decode {format} image: {reason}")]
    Decode {
        /// The detected format.
        format: String,
        /// The decoder's explanation.
        reason: String,
    },
    /// The thumbnail could not be encoded.
    #[error("cannot encode the thumbnail: {0}")]
    Thumbnail(String),
    /// The configuration file exists but could not be read.
    #[error("cannot read {}: {source}", path.display())]
    ConfigRead {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The configuration file is not valid JSON.
    #[error("{} is not valid JSON: {source}", path.display())]
    ConfigJson {
        /// The file.
        path: PathBuf,
        /// The parse error (with line and column).
        #[source]
        source: serde_json::Error,
    },
    /// A configuration value is malformed or not supported.
    #[error("{}: field `{field}`: {reason}", path.display())]
    ConfigField {
        /// The file.
        path: PathBuf,
        /// The offending field, dotted for nested keys (`size.height`).
        field: String,
        /// What is wrong with it.
        reason: String,
    },
}

/// Size (width, height) the image is resized to: transformers'
/// `get_resize_output_image_size(size=shortest_edge, default_to_square=False)`.
///
/// The longer side is `int(shortest_edge * long / short)`: Python computes the
/// product exactly, divides with correct rounding to f64 and truncates; for sizes
/// below 2^53 the f64 product is exact and IEEE division is correctly rounded, so
/// this is the same number. Ties (`w == h`) count as portrait, as in transformers.
pub fn resize_output_size(width: u64, height: u64, shortest_edge: u64) -> (u64, u64) {
    if width == 0 || height == 0 {
        return (width, height);
    }
    let (short, long) = if width <= height {
        (width, height)
    } else {
        (height, width)
    };
    let new_long = (shortest_edge as f64 * long as f64 / short as f64) as u64;
    if width <= height {
        (shortest_edge, new_long)
    } else {
        (new_long, shortest_edge)
    }
}

/// The rescale factor as the f64 transformers multiplies by.
///
/// The config stores it as f32, but numpy multiplies the u8 values by the Python
/// float (f64) and narrows afterwards; with f32(1/255) instead of 1/255, about half
/// of the 256 levels land one f32 ulp away. 1/255 is what every CLIP checkpoint
/// uses, so it is recovered exactly; any other factor is taken at its f32 value.
fn rescale_factor_f64(factor: f32) -> f64 {
    const INV_255: f64 = 1.0 / 255.0;
    if factor == INV_255 as f32 {
        INV_255
    } else {
        f64::from(factor)
    }
}

/// The final value for every u8 level, per channel: rescale then normalise, with
/// transformers' precision (f64 multiply narrowed to f32, then f32 arithmetic).
fn value_table(cfg: &PreprocessConfig) -> [[f32; 256]; 3] {
    let scale = rescale_factor_f64(cfg.rescale_factor);
    let mut lut = [[0f32; 256]; 3];
    for (c, table) in lut.iter_mut().enumerate() {
        for (v, out) in table.iter_mut().enumerate() {
            let mut x = if cfg.do_rescale {
                (v as f64 * scale) as f32
            } else {
                v as f32
            };
            if cfg.do_normalize {
                x = (x - cfg.image_mean[c]) / cfg.image_std[c];
            }
            *out = x;
        }
    }
    lut
}

/// CLIP preprocessing of a decoded image: resize, centre crop, rescale, normalise.
///
/// Returns CHW f32 of length `3 * crop_height * crop_width` (with `do_center_crop`;
/// without it, the resized image's own size). Never fails: an empty image yields
/// the crop filled with the value of black padding, as transformers pads.
pub fn preprocess(img: &RgbImage, cfg: &PreprocessConfig) -> Vec<f32> {
    let src_box = [0.0, 0.0, img.width() as f32, img.height() as f32];
    preprocess_box(img, img.dimensions(), src_box, false, cfg)
}

/// [`preprocess`] of a possibly reduced decode: sizes and crop offsets come from
/// the full-size photo, as on the exact path, and the resize reads the reduced
/// pixels through [`DecodedImage::source_box`], so both paths sample the same
/// output grid. Equal to [`preprocess`] of the image when it is full size.
pub fn preprocess_decoded(decoded: &DecodedImage, cfg: &PreprocessConfig) -> Vec<f32> {
    if decoded.scale_denom > 1 && !cfg.do_resize {
        // Unreachable through `DecodeMode` (no reduction without a resize); the
        // reduced pixels are all there is, so take them as they are.
        return preprocess(&decoded.image, cfg);
    }
    preprocess_box(
        &decoded.image,
        (decoded.width, decoded.height),
        decoded.source_box,
        decoded.scale_denom > 1,
        cfg,
    )
}

/// The preprocessing proper: `full` is the photo's size, `src_box` where it lies
/// in `img`.
fn preprocess_box(
    img: &RgbImage,
    full: (u32, u32),
    src_box: [f32; 4],
    reduced: bool,
    cfg: &PreprocessConfig,
) -> Vec<f32> {
    let (src_w, src_h) = (u64::from(full.0), u64::from(full.1));
    let (rw, rh) = if cfg.do_resize {
        resize_output_size(src_w, src_h, u64::from(cfg.shortest_edge))
    } else {
        (src_w, src_h)
    };
    let (cw, ch) = if cfg.do_center_crop {
        (u64::from(cfg.crop_width), u64::from(cfg.crop_height))
    } else {
        (rw, rh)
    };
    // transformers: top = (orig - crop) // 2 with Python's floor division; when the
    // image is smaller it pads by ceil((crop - orig) / 2) first, which lands on the
    // same floor formula. So crop pixel (x, y) is resized pixel (left + x, top + y),
    // or padding (u8 zero) when that is outside the resized image.
    let left = (rw as i64 - cw as i64).div_euclid(2);
    let top = (rh as i64 - ch as i64).div_euclid(2);
    let x0 = left.max(0);
    let y0 = top.max(0);
    let x1 = (left + cw as i64).min(rw as i64).max(x0);
    let y1 = (top + ch as i64).min(rh as i64).max(y0);

    // Only the pixels that survive the crop are resampled; each is bit-identical to
    // the same pixel of the full resize (see `resize`). A reduced decode is the
    // fast path already, which takes the cheaper pass order.
    let resample = if reduced {
        resize::resample_window_box_fast
    } else {
        resize::resample_window_box
    };
    let window = resample(
        img,
        src_box,
        (rw as usize, rh as usize),
        resize::Window {
            x: x0 as usize,
            y: y0 as usize,
            width: (x1 - x0) as usize,
            height: (y1 - y0) as usize,
        },
        cfg.resample,
    );

    let lut = value_table(cfg);
    let (cw, ch) = (cw as usize, ch as usize);
    let plane = cw * ch;
    let mut out = vec![0f32; 3 * plane];
    for (c, table) in lut.iter().enumerate() {
        out[c * plane..(c + 1) * plane].fill(table[0]);
    }
    let (win_w, win_h) = (window.width() as usize, window.height() as usize);
    // Where the window starts inside the crop (non-zero only when padding).
    let (ox, oy) = ((x0 - left) as usize, (y0 - top) as usize);
    if win_w == 0 {
        return out;
    }
    for (wy, row) in window
        .as_raw()
        .chunks_exact(win_w * 3)
        .take(win_h)
        .enumerate()
    {
        let base = (oy + wy) * cw + ox;
        for (wx, px) in row.chunks_exact(3).enumerate() {
            for (c, table) in lut.iter().enumerate() {
                out[c * plane + base + wx] = table[usize::from(px[c])];
            }
        }
    }
    out
}

/// A small JPEG of the photo, at most `long_side` pixels on its longer side,
/// made from pixels already decoded for the model (a possibly reduced
/// decode is still far larger than a thumbnail), so it costs no second
/// decode. Quality 75: a 160-pixel thumbnail is a few kilobytes.
pub fn thumbnail_jpeg(decoded: &DecodedImage, long_side: u32) -> Result<Vec<u8>, PreprocessError> {
    let img = &decoded.image;
    let [x0, y0, x1, y1] = decoded.source_box;
    // The photo's own pixels: a reduced decode can carry a partial block past
    // its edge.
    let (w, h) = (
        ((x1 - x0).round() as u32).clamp(1, img.width().max(1)),
        ((y1 - y0).round() as u32).clamp(1, img.height().max(1)),
    );
    let view = image::imageops::crop_imm(img, x0.max(0.0) as u32, y0.max(0.0) as u32, w, h);
    let long = w.max(h);
    let scale = (f64::from(long_side.max(1)) / f64::from(long)).min(1.0);
    let (tw, th) = (
        ((f64::from(w) * scale).round() as u32).max(1),
        ((f64::from(h) * scale).round() as u32).max(1),
    );
    let small = image::imageops::thumbnail(&*view, tw, th);
    let mut out = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 75)
        .encode_image(&small)
        .map_err(|e| PreprocessError::Thumbnail(e.to_string()))?;
    Ok(out)
}

/// Decodes (in `mode`, with [`DEFAULT_MAX_PIXELS`]) then preprocesses.
pub fn load_and_preprocess(
    bytes: &[u8],
    cfg: &PreprocessConfig,
    mode: DecodeMode,
) -> Result<Vec<f32>, PreprocessError> {
    let decoded = decode_image_scaled(bytes, DEFAULT_MAX_PIXELS, mode.min_decode_size(cfg))?;
    Ok(preprocess_decoded(&decoded, cfg))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resize_output_size_truncates_like_transformers() {
        // int(224 * 640 / 427) = int(335.73...) = 335; ties count as portrait.
        assert_eq!(resize_output_size(640, 427, 224), (335, 224));
        assert_eq!(resize_output_size(427, 640, 224), (224, 335));
        assert_eq!(resize_output_size(500, 500, 224), (224, 224));
        // Upscaling: int(224 * 180 / 120) = 336.
        assert_eq!(resize_output_size(180, 120, 224), (336, 224));
        // int(64 * 301 / 400)... the short side is 301: int(64 * 400 / 301) = 85.
        assert_eq!(resize_output_size(400, 301, 64), (85, 64));
        // 224 * 3 / 1 is exact: no off-by-one from the division.
        assert_eq!(resize_output_size(1, 3, 224), (224, 672));
        assert_eq!(resize_output_size(0, 3, 224), (0, 3));
    }

    #[test]
    fn values_match_numpy_bit_for_bit() {
        // numpy: ((v.astype(f64) * 0.00392156862745098).astype(f32) - mean) / std
        // for v = 0, 1, 128, 255, as f32 bit patterns.
        let want: [[u32; 4]; 3] = [
            [0xbfe568dc, 0xbfe38a7f, 0x3d9c5620, 0x3ff71541],
            [0xbfe044b8, 0xbfde58f1, 0x3e2cf36b, 0x4004cae5],
            [0xbfbd77d8, 0xbfbba5e1, 0x3eae0dc4, 0x40095660],
        ];
        let lut = value_table(&PreprocessConfig::default());
        for c in 0..3 {
            for (i, v) in [0usize, 1, 128, 255].into_iter().enumerate() {
                assert_eq!(lut[c][v].to_bits(), want[c][i], "channel {c} level {v}");
            }
        }
    }

    #[test]
    fn crop_offsets_floor_and_pad_like_transformers() {
        // No resize, crop 3×2 out of 6×5: left = (6 - 3) // 2 = 1, top = (5 - 2) // 2 = 1.
        let img = RgbImage::from_fn(6, 5, |x, y| image::Rgb([(10 * y + x) as u8, 0, 0]));
        let cfg = PreprocessConfig {
            do_resize: false,
            crop_width: 3,
            crop_height: 2,
            do_rescale: false,
            do_normalize: false,
            ..PreprocessConfig::default()
        };
        let out = preprocess(&img, &cfg);
        assert_eq!(out.len(), 3 * 3 * 2);
        assert_eq!(&out[..6], &[11.0, 12.0, 13.0, 21.0, 22.0, 23.0]);

        // Crop 4×4 out of 1×2: padded with zeros, image at left = ceil(3/2) = 2,
        // top = ceil(2/2) = 1 (transformers' padding offsets).
        let img = RgbImage::from_fn(1, 2, |_, y| image::Rgb([7 + y as u8, 0, 0]));
        let cfg = PreprocessConfig {
            crop_width: 4,
            crop_height: 4,
            ..cfg
        };
        let out = preprocess(&img, &cfg);
        #[rustfmt::skip]
        let want = [
            0.0, 0.0, 0.0, 0.0,
            0.0, 0.0, 7.0, 0.0,
            0.0, 0.0, 8.0, 0.0,
            0.0, 0.0, 0.0, 0.0,
        ];
        assert_eq!(&out[..16], &want);
        assert!(out[16..].iter().all(|v| *v == 0.0));
    }

    #[test]
    fn uniform_image_gives_constant_planes() {
        let img = RgbImage::from_pixel(300, 200, image::Rgb([255, 128, 0]));
        let cfg = PreprocessConfig::default();
        let out = preprocess(&img, &cfg);
        assert_eq!(out.len(), cfg.output_len());
        let lut = value_table(&cfg);
        let plane = 224 * 224;
        for (c, level) in [255usize, 128, 0].into_iter().enumerate() {
            assert!(out[c * plane..(c + 1) * plane]
                .iter()
                .all(|v| *v == lut[c][level]));
        }
    }

    #[test]
    fn empty_image_is_all_padding() {
        let cfg = PreprocessConfig::default();
        let out = preprocess(&RgbImage::new(0, 0), &cfg);
        assert_eq!(out.len(), cfg.output_len());
        let lut = value_table(&cfg);
        assert!(out[..224 * 224].iter().all(|v| *v == lut[0][0]));
    }

    #[test]
    fn load_and_preprocess_reports_decode_errors() {
        let err = load_and_preprocess(
            b"definitely not an image",
            &PreprocessConfig::default(),
            DecodeMode::Fast,
        )
        .unwrap_err();
        assert!(err.to_string().contains("not a recognised image"), "{err}");
    }
}
