//! Image bytes → upright 8-bit RGB, the way the reference pipeline
//! (`PIL.Image.open` → `ImageOps.exif_transpose` → `convert("RGB")`) sees them.
//!
//! JPEGs go through libjpeg-turbo's decoder, the one PIL uses (see `jpeg.rs`);
//! PNG and WebP through the `image` crate, whose lossless output is PIL's.

use std::io::Cursor;

use image::metadata::Orientation;
use image::{DynamicImage, ImageDecoder, ImageError, ImageFormat, ImageReader, Limits, RgbImage};

use super::decoded::{DecodedImage, Luma, MinDecodeSize};
use super::jpeg::decode_jpeg;
use super::orient;
use super::{PreprocessConfig, PreprocessError};

/// Formats this build decodes (JPEG here, PNG and WebP through `image`'s features).
const SUPPORTED: &[ImageFormat] = &[ImageFormat::Jpeg, ImageFormat::Png, ImageFormat::WebP];

/// Largest image, in pixels (width × height as its header declares them), that
/// [`decode_image`] decodes: 100 MP covers full-resolution photos from nearly all
/// cameras and phones (not 200 MP phone modes) while the decoded RGB buffer stays
/// at 300 MB. Pillow warns above 89 MP and refuses above 179 MP.
pub const DEFAULT_MAX_PIXELS: u64 = 100_000_000;

/// Widest sample `image` decodes PNG/WebP to (RGBA16): bounds its allocations.
const MAX_BYTES_PER_PIXEL: u64 = 8;

/// How JPEG photos are decoded before preprocessing, and which pixels the
/// pixel features (pHash, blur) are computed on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
pub enum DecodeMode {
    /// Full size, bit for bit what PIL decodes (the parity-tested pipeline);
    /// the pixel features use the same decode's luma, which at full size is
    /// OpenCV's greyscale decode.
    #[cfg_attr(feature = "clap", value(help = "Full size, bit-identical to PIL"))]
    Exact,
    /// JPEGs much larger than the model input are decoded at 1/2, 1/4 or 1/8 scale
    /// in the DCT domain (libjpeg's `scale_num / scale_denom`), keeping a shorter
    /// side of at least [`FAST_SAFETY_FACTOR`] × the resize target. About 3× cheaper
    /// on 12-MP photos; the tensors differ slightly from the exact ones (see
    /// [`FAST_SAFETY_FACTOR`]). The pixel features do not depend on it: they are
    /// computed on the full-size luma (OpenCV's greyscale pixels), so duplicate
    /// and blur answers are the exact path's. Where the features are wanted
    /// ([`decode_for_mode`]), a YCbCr or grey JPEG is decoded once, at full size
    /// into its component planes: the luma serves the features as it is, and
    /// the colour image is the planes averaged over `denom × denom` boxes
    /// rather than reduced in the DCT domain. Other formats decode as in `Exact`.
    #[default]
    #[cfg_attr(
        feature = "clap",
        value(help = "DCT-domain reduced decoding of large JPEGs; features as exact")
    )]
    Fast,
    /// `Fast`'s DCT-reduced colour decode, with the pixel features taken from
    /// its reduced luma instead of a full-size one (no full-size IDCT: on
    /// 12-MP photos about as fast as `fast` end to end). Hashes and blur measures move
    /// (on the real test photos by up to 8 bits and 26 %, with the same
    /// duplicate groups and blur verdicts there), so a photo near the blur
    /// threshold can be judged otherwise than by `exact` or `fast`.
    #[cfg_attr(
        feature = "clap",
        value(help = "As fast, with pHash and blur from the reduced decode (one decode)")
    )]
    Reduced,
}

impl DecodeMode {
    /// The name used by the CLI and in model identities.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Exact => "exact",
            Self::Fast => "fast",
            Self::Reduced => "reduced",
        }
    }

    /// Which luma plane the serving decode keeps for the pixel features:
    /// exact and reduced their decode's own, fast the full-size one.
    fn luma(self) -> Luma {
        match self {
            Self::Exact | Self::Reduced => Luma::AtScale,
            Self::Fast => Luma::Full,
        }
    }

    /// Size a reduced decode must keep for `cfg`, or `None` when the image must be
    /// decoded at full size (exact mode, or no resize, where the model sees the
    /// native pixels).
    pub fn min_decode_size(self, cfg: &PreprocessConfig) -> Option<MinDecodeSize> {
        let shortest_edge = (f64::from(cfg.shortest_edge) * FAST_SAFETY_FACTOR).ceil() as u32;
        match self {
            Self::Exact => None,
            _ if !cfg.do_resize => None,
            Self::Fast => Some(MinDecodeSize {
                shortest_edge,
                longest_edge: 0,
            }),
            Self::Reduced => Some(MinDecodeSize {
                shortest_edge,
                // The blur test must still downscale to its long side.
                longest_edge: crate::features::LAPLACIAN_LONG_SIDE as u32,
            }),
        }
    }
}

impl std::fmt::Display for DecodeMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How much larger than the resize target (`shortest_edge`) the shorter side of a
/// DCT-reduced JPEG must stay in [`DecodeMode::Fast`].
///
/// PIL's bicubic downscale low-pass filters over `2 × scale` source pixels; a
/// reduced decode first averages `denom × denom` blocks, which blurs a little more
/// the closer the reduced image gets to the target. Mean absolute difference to the
/// exact path (normalised units, 224 px CLIP input) on the mate-backgrounds photos
/// (1280–5640 px, see `tests/dct_scaled_parity.rs`):
///
/// | factor | min edge | mean   | worst  | worst photo                    |
/// |--------|----------|--------|--------|--------------------------------|
/// | 1.0    | 224      | 0.0129 | 0.0381 | Elephants_3840x2160 at 1/8     |
/// | 1.5    | 336      | 0.0063 | 0.0214 | Elephants_5640x3172 at 1/8     |
/// | 2.0    | 448      | 0.0047 | 0.0139 | Elephants_3840x2160 at 1/4     |
///
/// (All 16 photos are reduced at every factor.) Only 2.0 keeps the worst photo,
/// a high-contrast abstract one, under the fast path's 0.02 budget, at 70 % of
/// it; the natural photos stay at 0.001–0.01. A 12-MP 4000×3000 photo decodes at
/// 1/4 (1000×750).
pub const FAST_SAFETY_FACTOR: f64 = 2.0;

/// Sniffs the format from the leading bytes, decodes, applies the EXIF orientation,
/// and converts to RGB8 like PIL's `convert("RGB")`.
///
/// Images declaring more than [`DEFAULT_MAX_PIXELS`] pixels are refused before
/// anything is allocated for them (see [`decode_image_with_limit`]).
pub fn decode_image(bytes: &[u8]) -> Result<RgbImage, PreprocessError> {
    decode_image_with_limit(bytes, DEFAULT_MAX_PIXELS)
}

/// [`decode_image`] with a caller-chosen cap on width × height.
///
/// The cap is checked against the dimensions in the file's header, before any
/// pixel buffer exists, so a small file claiming a huge image (a decompression
/// bomb) fails fast with [`PreprocessError::Decode`] instead of exhausting memory.
pub fn decode_image_with_limit(bytes: &[u8], max_pixels: u64) -> Result<RgbImage, PreprocessError> {
    decode_image_scaled(bytes, max_pixels, None).map(|d| d.image)
}

/// [`decode_image_with_limit`] that may decode a JPEG reduced (1/2, 1/4, 1/8, in
/// libjpeg's DCT domain) as long as it keeps `min_size` (see
/// [`DecodeMode::min_decode_size`]); `None` decodes at full size. The `max_pixels`
/// check always uses the full header size.
pub fn decode_image_scaled(
    bytes: &[u8],
    max_pixels: u64,
    min_size: Option<MinDecodeSize>,
) -> Result<DecodedImage, PreprocessError> {
    decode_any(bytes, max_pixels, min_size, Luma::No)
}

/// The serving path's decode of a photo in `mode` at `min_size` (normally
/// `mode.min_decode_size(..)`): [`decode_image_scaled`] that also keeps, in
/// [`DecodedImage::luma`], the JPEG luma plane the pixel features are computed
/// on (at the decode's scale in exact and reduced mode, at full size in fast
/// mode), so that [`feature_grey`](super::feature_grey) finds it without a
/// second decode.
pub fn decode_for_mode(
    bytes: &[u8],
    max_pixels: u64,
    min_size: Option<MinDecodeSize>,
    mode: DecodeMode,
) -> Result<DecodedImage, PreprocessError> {
    decode_any(bytes, max_pixels, min_size, mode.luma())
}

fn decode_any(
    bytes: &[u8],
    max_pixels: u64,
    min_size: Option<MinDecodeSize>,
    luma: Luma,
) -> Result<DecodedImage, PreprocessError> {
    let format = image::guess_format(bytes)
        .map_err(|_| PreprocessError::UnrecognizedFormat { len: bytes.len() })?;
    if !SUPPORTED.contains(&format) {
        return Err(PreprocessError::UnsupportedFormat {
            format: format_name(format),
        });
    }
    if format == ImageFormat::Jpeg {
        return decode_jpeg(bytes, max_pixels, min_size, luma);
    }
    let name = format_name(format);
    let decode_err = |e: ImageError| map_image_error(name.clone(), e);

    // No single allocation beyond what the largest allowed image needs at the
    // widest sample type; the pixel count itself is checked from the header below.
    let mut limits = Limits::default();
    limits.max_alloc = Some(max_pixels.saturating_mul(MAX_BYTES_PER_PIXEL));
    let mut reader = ImageReader::with_format(Cursor::new(bytes), format);
    reader.limits(limits);
    let mut decoder = reader.into_decoder().map_err(decode_err)?;
    let (width, height) = decoder.dimensions();
    let pixels = u64::from(width) * u64::from(height);
    if pixels > max_pixels {
        return Err(PreprocessError::Decode {
            format: name,
            reason: format!(
                "image is {width}x{height} = {pixels} pixels, more than the limit of {max_pixels}"
            ),
        });
    }
    // PIL's exif_transpose silently leaves an image alone when its EXIF block is
    // unreadable, so a broken EXIF block must not fail an otherwise good image.
    let orientation = decoder.orientation().unwrap_or_else(|e| {
        tracing::debug!(error = %e, "unreadable EXIF orientation; assuming none");
        Orientation::NoTransforms
    });
    let img = DynamicImage::from_decoder(decoder).map_err(decode_err)?;
    if img.width() == 0 || img.height() == 0 {
        return Err(PreprocessError::Decode {
            format: name,
            reason: format!("image is {}x{} pixels", img.width(), img.height()),
        });
    }
    // Converted first, turned second: the conversion is per pixel, so the
    // order does not change a pixel, and the turn then moves 3-byte pixels
    // as planes through the byte transposes instead of the crate's
    // pixel-by-pixel turn.
    let rgb = orient::orient_rgb(to_rgb8_like_pil(img), orientation);
    Ok(DecodedImage::full(rgb))
}

fn format_name(format: ImageFormat) -> String {
    format!("{format:?}").to_uppercase()
}

fn map_image_error(format: String, e: ImageError) -> PreprocessError {
    match e {
        ImageError::Unsupported(u) => PreprocessError::Decode {
            format,
            reason: format!("unsupported feature: {u}"),
        },
        ImageError::Limits(l) => PreprocessError::Decode {
            format,
            reason: format!("image too large: {l}"),
        },
        // A truncated file surfaces as an I/O error from the in-memory reader.
        ImageError::IoError(io) => PreprocessError::Decode {
            format,
            reason: format!("truncated or unreadable data: {io}"),
        },
        other => PreprocessError::Decode {
            format,
            reason: other.to_string(),
        },
    }
}

/// RGB8 with PIL's conversion rules, which differ from `image`'s for 16-bit input:
///
/// * RGB(A)16 and LA16: PIL's PNG reader unpacks 16-bit samples to 8 bits by keeping
///   the high byte (`RGB;16B` etc.), where `image` rounds (`v / 257`).
/// * L16: PIL opens it as mode `I;16` and `convert("RGB")` *clips* to 255 rather
///   than scaling (so most of a 16-bit greyscale photo turns white). Reproduced for
///   parity with the reference pipeline, odd as it is.
/// * 8-bit: alpha is dropped without compositing and grey is replicated to R, G, B,
///   which is what both libraries do.
fn to_rgb8_like_pil(img: DynamicImage) -> RgbImage {
    let (w, h) = (img.width(), img.height());
    let from_fn =
        |f: &dyn Fn(u32, u32) -> [u8; 3]| RgbImage::from_fn(w, h, |x, y| image::Rgb(f(x, y)));
    match img {
        DynamicImage::ImageRgb8(rgb) => rgb,
        DynamicImage::ImageLuma16(l) => from_fn(&|x, y| {
            let v = l.get_pixel(x, y).0[0].min(255) as u8;
            [v, v, v]
        }),
        DynamicImage::ImageLumaA16(la) => from_fn(&|x, y| {
            let v = (la.get_pixel(x, y).0[0] >> 8) as u8;
            [v, v, v]
        }),
        DynamicImage::ImageRgb16(rgb) => from_fn(&|x, y| {
            let p = rgb.get_pixel(x, y).0;
            [(p[0] >> 8) as u8, (p[1] >> 8) as u8, (p[2] >> 8) as u8]
        }),
        DynamicImage::ImageRgba16(rgba) => from_fn(&|x, y| {
            let p = rgba.get_pixel(x, y).0;
            [(p[0] >> 8) as u8, (p[1] >> 8) as u8, (p[2] >> 8) as u8]
        }),
        // Luma8, LumaA8, Rgba8 (and float images, which no enabled decoder produces).
        other => other.to_rgb8(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::preprocess::decoded::{oriented_source_box, scale_denom_for};
    use image::{ImageBuffer, Luma, LumaA, Rgb, Rgba};

    #[test]
    fn scale_denominator_is_the_smallest_decode_that_keeps_the_edge() {
        // 12-MP phone photo, CLIP 224 at factor 2 (448): 3000/8 = 375 is too small.
        assert_eq!(scale_denom_for(4000, 3000, 448), 4);
        assert_eq!(
            scale_denom_for(3000, 4000, 448),
            4,
            "portrait / EXIF-rotated"
        );
        assert_eq!(scale_denom_for(4000, 3000, 336), 8);
        // Exactly at the boundary: 3584 / 8 = 448 is enough, 3583 rounds up to 448 too
        // (libjpeg's ceil), 3576 / 8 = 447 is not.
        assert_eq!(scale_denom_for(5000, 3584, 448), 8);
        assert_eq!(scale_denom_for(5000, 3583, 448), 8);
        assert_eq!(scale_denom_for(5000, 3576, 448), 4);
        assert_eq!(scale_denom_for(896, 896, 448), 2);
        assert_eq!(scale_denom_for(895, 2000, 448), 2, "ceil(895 / 2) = 448");
        assert_eq!(scale_denom_for(894, 2000, 448), 1);
        // Tiny images and degenerate targets.
        assert_eq!(scale_denom_for(224, 224, 448), 1);
        assert_eq!(scale_denom_for(1, 1, 448), 1);
        assert_eq!(scale_denom_for(1, 1, 1), 8, "ceil keeps one pixel");
        assert_eq!(scale_denom_for(0, 100, 1), 1);
    }

    #[test]
    fn scale_denominator_also_keeps_the_long_side() {
        let fast = |short, long| MinDecodeSize {
            shortest_edge: short,
            longest_edge: long,
        };
        // 12-MP at 1/4 keeps exactly the 1000 px long side (and 750 ≥ 448).
        assert_eq!(scale_denom_for(4000, 3000, fast(448, 1000)), 4);
        assert_eq!(scale_denom_for(3000, 4000, fast(448, 1000)), 4);
        // A 1500 px bound would have kept it at 1/2.
        assert_eq!(scale_denom_for(4000, 3000, fast(448, 1500)), 2);
        // 1920×1080 at 1/2 would be 960 px long: full size.
        assert_eq!(scale_denom_for(1920, 1080, fast(448, 1000)), 1);
        assert_eq!(scale_denom_for(2560, 1600, fast(448, 1000)), 2);
        // The long side alone can decide (a panorama).
        assert_eq!(scale_denom_for(12000, 1000, fast(448, 1500)), 2);
        assert_eq!(scale_denom_for(12000, 4000, fast(448, 1500)), 8);
    }

    #[test]
    fn mode_needs_an_edge_only_when_fast_and_resizing() {
        let cfg = PreprocessConfig::default();
        let edges = |mode: DecodeMode, cfg: &PreprocessConfig| {
            mode.min_decode_size(cfg)
                .map(|m| (m.shortest_edge, m.longest_edge))
        };
        assert_eq!(edges(DecodeMode::Exact, &cfg), None);
        assert_eq!(edges(DecodeMode::Fast, &cfg), Some((448, 0)));
        // The blur test's 300-px copy is always a downscale of the reduced luma.
        assert_eq!(edges(DecodeMode::Reduced, &cfg), Some((448, 300)));
        let cfg64 = PreprocessConfig {
            shortest_edge: 64,
            ..cfg.clone()
        };
        assert_eq!(edges(DecodeMode::Fast, &cfg64), Some((128, 0)));
        assert_eq!(edges(DecodeMode::Reduced, &cfg64), Some((128, 300)));
        let native = PreprocessConfig {
            do_resize: false,
            ..cfg
        };
        assert_eq!(edges(DecodeMode::Fast, &native), None);
        assert_eq!(edges(DecodeMode::Reduced, &native), None);
        assert_eq!(DecodeMode::default(), DecodeMode::Fast);
    }

    #[test]
    fn source_box_follows_every_orientation() {
        // A 5x3 image whose first 4x2 pixels are the photo (the rest is block
        // padding): after each orientation the box must be the marked pixels.
        let img = RgbImage::from_fn(5, 3, |x, y| Rgb([u8::from(x < 4 && y < 2), 0, 0]));
        for o in 1..=8u8 {
            let orientation = Orientation::from_exif(o).unwrap();
            let mut oriented = DynamicImage::ImageRgb8(img.clone());
            oriented.apply_orientation(orientation);
            let oriented = oriented.into_rgb8();
            let marked: Vec<(u32, u32)> = oriented
                .enumerate_pixels()
                .filter(|(_, _, p)| p.0[0] == 1)
                .map(|(x, y, _)| (x, y))
                .collect();
            let bounds = [
                marked.iter().map(|p| p.0).min().unwrap() as f32,
                marked.iter().map(|p| p.1).min().unwrap() as f32,
                marked.iter().map(|p| p.0).max().unwrap() as f32 + 1.0,
                marked.iter().map(|p| p.1).max().unwrap() as f32 + 1.0,
            ];
            assert_eq!(
                oriented_source_box((4.0, 2.0), (5.0, 3.0), orientation),
                bounds,
                "{orientation:?}"
            );
        }
    }

    #[test]
    fn sixteen_bit_conversions_follow_pil() {
        // Expected values measured with Pillow 13: `Image.open(png16).convert("RGB")`.
        let vals: [u16; 14] = [
            0, 1, 127, 128, 255, 256, 383, 384, 32767, 32768, 65280, 65407, 65408, 65535,
        ];
        let high_byte = [0u8, 0, 0, 0, 0, 1, 1, 1, 127, 128, 255, 255, 255, 255];
        let clipped = [
            0u8, 1, 127, 128, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255,
        ];
        let n = vals.len() as u32;

        let l16 = ImageBuffer::from_fn(n, 1, |x, _| Luma([vals[x as usize]]));
        let la16 = ImageBuffer::from_fn(n, 1, |x, _| LumaA([vals[x as usize], 1000]));
        let rgb16 = ImageBuffer::from_fn(n, 1, |x, _| Rgb([vals[x as usize]; 3]));
        let rgba16 = ImageBuffer::from_fn(n, 1, |x, _| {
            let v = vals[x as usize];
            Rgba([v, v, v, 1000])
        });
        let cases: [(DynamicImage, &[u8; 14]); 4] = [
            (DynamicImage::ImageLuma16(l16), &clipped),
            (DynamicImage::ImageLumaA16(la16), &high_byte),
            (DynamicImage::ImageRgb16(rgb16), &high_byte),
            (DynamicImage::ImageRgba16(rgba16), &high_byte),
        ];
        for (img, want) in cases {
            let kind = format!("{:?}", img.color());
            let rgb = to_rgb8_like_pil(img);
            let got: Vec<u8> = rgb.pixels().map(|p| p.0[0]).collect();
            assert_eq!(&got[..], &want[..], "{kind}");
            assert!(rgb.pixels().all(|p| p.0[0] == p.0[1] && p.0[1] == p.0[2]));
        }
    }

    #[test]
    fn eight_bit_alpha_is_dropped_and_grey_replicated() {
        let rgba = ImageBuffer::from_fn(2, 1, |x, _| Rgba([10 + x as u8, 20, 30, 0]));
        let rgb = to_rgb8_like_pil(DynamicImage::ImageRgba8(rgba));
        assert_eq!(rgb.as_raw(), &[10, 20, 30, 11, 20, 30]);
        let la = ImageBuffer::from_fn(1, 1, |_, _| LumaA([77u8, 0]));
        let rgb = to_rgb8_like_pil(DynamicImage::ImageLumaA8(la));
        assert_eq!(rgb.as_raw(), &[77, 77, 77]);
    }
}
