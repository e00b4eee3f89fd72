//! Greyscale pixels exactly as OpenCV's `imdecode(bytes, IMREAD_GRAYSCALE)`
//! returns them: the duplicate hash and the blur test are defined on these.
//!
//! Each format goes grey its own way inside OpenCV: JPEG asks libjpeg for its
//! luma plane, PNG lets libpng convert with truncating 15-bit weights, WebP
//! converts decoded RGB with OpenCV's rounding 15-bit weights.

use image::{GrayImage, ImageFormat, RgbImage};

use super::decode::decode_image_with_limit;
use super::decoded::DecodedImage;
use super::jpeg::decode_jpeg_grey;
use super::PreprocessError;

/// The photo in greyscale as OpenCV decodes it, upright.
///
/// `decoded`, when it is this photo's full-size colour decode, saves decoding a
/// PNG or WebP twice (their grey is a function of the RGB pixels); a JPEG is
/// always decoded again, since libjpeg's luma is not recoverable from RGB.
pub fn decode_grey(
    bytes: &[u8],
    max_pixels: u64,
    decoded: Option<&DecodedImage>,
) -> Result<GrayImage, PreprocessError> {
    let format = image::guess_format(bytes)
        .map_err(|_| PreprocessError::UnrecognizedFormat { len: bytes.len() })?;
    if format == ImageFormat::Jpeg {
        return decode_jpeg_grey(bytes, max_pixels);
    }
    let owned;
    let rgb = match decoded {
        Some(d) if d.scale_denom == 1 => &d.image,
        _ => {
            owned = decode_image_with_limit(bytes, max_pixels)?;
            &owned
        }
    };
    Ok(match format {
        ImageFormat::Png => libpng_grey(rgb),
        _ => bt601_fixed15(rgb),
    })
}

/// The greyscale pixels the pixel features are computed on: the luma plane
/// the decode kept (taken out of `decoded`; see
/// [`decode_for_mode`](super::decode_for_mode): full size in exact and fast
/// mode, the decode's scale in reduced mode), else OpenCV's full-size
/// greyscale decode.
pub fn feature_grey(
    bytes: &[u8],
    max_pixels: u64,
    decoded: &mut DecodedImage,
) -> Result<GrayImage, PreprocessError> {
    match decoded.luma.take() {
        Some(luma) => Ok(luma),
        None => decode_grey(bytes, max_pixels, Some(decoded)),
    }
}

/// OpenCV's `cvtColor(…, RGB2GRAY)` for 8 bits: BT.601 weights in 15-bit fixed
/// point, rounded (checked pixel-exact against `cv2.cvtColor`).
pub(super) fn bt601_fixed15(rgb: &RgbImage) -> GrayImage {
    map_pixels(rgb, |r, g, b| {
        (r * 9798 + g * 19235 + b * 3735 + 16384) >> 15
    })
}

/// libpng's `png_set_rgb_to_gray(…, 0.299, 0.587)`, which OpenCV's PNG reader
/// asks for: weights `⌊0.299·2¹⁵⌋`, `⌊0.587·2¹⁵⌋` and the rest of 2¹⁵, the sum
/// truncated, and grey pixels (r = g = b) passed through unchanged.
fn libpng_grey(rgb: &RgbImage) -> GrayImage {
    map_pixels(rgb, |r, g, b| {
        if r == g && g == b {
            r
        } else {
            (r * 9797 + g * 19234 + b * 3737) >> 15
        }
    })
}

fn map_pixels(rgb: &RgbImage, f: impl Fn(u32, u32, u32) -> u32) -> GrayImage {
    let data = rgb
        .pixels()
        .map(|p| {
            let [r, g, b] = p.0.map(u32::from);
            // Every rule's weights sum to at most 2^15, so the value fits in u8.
            f(r, g, b) as u8
        })
        .collect();
    // One byte per pixel of an image of this size, so the buffer always fits.
    GrayImage::from_raw(rgb.width(), rgb.height(), data).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grey_rules_on_known_pixels() {
        let rgb = RgbImage::from_raw(3, 1, vec![255, 0, 0, 10, 200, 30, 77, 77, 77]).unwrap();
        // 255·9798/2^15 = 76.2 → 76 (rounded); 255·9797/2^15 = 76.24 → 76 (truncated)
        // (10·9798 + 200·19235 + 30·3735 + 16384) >> 15 = 124; libpng: 123.
        assert_eq!(bt601_fixed15(&rgb).into_raw(), vec![76, 124, 77]);
        assert_eq!(libpng_grey(&rgb).into_raw(), vec![76, 123, 77]);
    }
}
