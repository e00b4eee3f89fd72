//! Image bytes → upright 8-bit RGB, the way the reference pipeline
//! (`PIL.Image.open` → `ImageOps.exif_transpose` → `convert("RGB")`) sees them.
//!
//! JPEGs go through libjpeg-turbo's decoder, the one PIL uses (see `jpeg.rs`);
//! PNG and WebP through the `image` crate, whose lossless output is PIL's.

use std::io::Cursor;

use image::metadata::Orientation;
use image::{DynamicImage, ImageDecoder, ImageError, ImageFormat, ImageReader, Limits, RgbImage};

use super::jpeg::decode_jpeg;
use super::PreprocessError;

/// Formats this build decodes (JPEG here, PNG and WebP through `image`'s features).
const SUPPORTED: &[ImageFormat] = &[ImageFormat::Jpeg, ImageFormat::Png, ImageFormat::WebP];

/// Largest image, in pixels (width × height as its header declares them), that
/// [`decode_image`] decodes: 100 MP covers full-resolution photos from nearly all
/// cameras and phones (not 200 MP phone modes) while the decoded RGB buffer stays
/// at 300 MB. Pillow warns above 89 MP and refuses above 179 MP.
pub const DEFAULT_MAX_PIXELS: u64 = 100_000_000;

/// Widest sample `image` decodes PNG/WebP to (RGBA16): bounds its allocations.
const MAX_BYTES_PER_PIXEL: u64 = 8;

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
    let format = image::guess_format(bytes)
        .map_err(|_| PreprocessError::UnrecognizedFormat { len: bytes.len() })?;
    if !SUPPORTED.contains(&format) {
        return Err(PreprocessError::UnsupportedFormat {
            format: format_name(format),
        });
    }
    if format == ImageFormat::Jpeg {
        return decode_jpeg(bytes, max_pixels);
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
    let mut img = DynamicImage::from_decoder(decoder).map_err(decode_err)?;
    if img.width() == 0 || img.height() == 0 {
        return Err(PreprocessError::Decode {
            format: name,
            reason: format!("image is {}x{} pixels", img.width(), img.height()),
        });
    }
    img.apply_orientation(orientation);
    Ok(to_rgb8_like_pil(img))
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
    use image::{ImageBuffer, Luma, LumaA, Rgb, Rgba};

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
