//! A decoded photo and the bounds of a DCT-reduced JPEG decode: the types
//! the format decoders produce and preprocessing consumes.

use image::metadata::Orientation;
use image::{GrayImage, RgbImage};

/// The least a reduced JPEG decode must keep (see [`scale_denom_for`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MinDecodeSize {
    /// Minimum shorter side, in pixels.
    pub shortest_edge: u32,
    /// Minimum longer side, in pixels.
    pub longest_edge: u32,
}

impl From<u32> for MinDecodeSize {
    /// A bound on the shorter side only.
    fn from(shortest_edge: u32) -> Self {
        Self {
            shortest_edge,
            longest_edge: 0,
        }
    }
}

/// libjpeg's scale denominator (1, 2, 4 or 8) for a `width × height` JPEG: the
/// smallest decode whose sides, rounded up as libjpeg rounds (`ceil(size /
/// denom)`), still reach both bounds of `min`.
pub fn scale_denom_for(width: u32, height: u32, min: impl Into<MinDecodeSize>) -> u32 {
    let min = min.into();
    let (short, long) = (width.min(height), width.max(height));
    [8, 4, 2]
        .into_iter()
        .find(|&d| short.div_ceil(d) >= min.shortest_edge && long.div_ceil(d) >= min.longest_edge)
        .unwrap_or(1)
}

/// Which luma plane a JPEG decode keeps beside the colour image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Luma {
    /// None.
    No,
    /// At the colour image's scale (one DCT-domain decode serves both).
    AtScale,
    /// At full size, the colour image reduced from the same pass.
    Full,
}

/// A decoded photo: upright RGB8, possibly reduced in the DCT domain.
#[derive(Debug, Clone, PartialEq)]
pub struct DecodedImage {
    /// Upright pixels, `scale_denom` times smaller than the photo (rounded up).
    pub image: RgbImage,
    /// Upright width of the photo at full size.
    pub width: u32,
    /// Upright height of the photo at full size.
    pub height: u32,
    /// libjpeg's scale denominator: 1 (full size), 2, 4 or 8.
    pub scale_denom: u32,
    /// Where the photo lies in `image` (x0, y0, x1, y1 in its pixel units): a
    /// reduced image covers whole 8×8 blocks, so its last column and row can reach
    /// past the photo's edge (the first ones after an EXIF flip). Pillow's `box`
    /// argument of `Image.resize`.
    pub source_box: [f32; 4],
    /// The JPEG's luma plane, when the decode was asked for it ([`Luma`]) and
    /// the file codes its pixels as YCbCr or grey: libjpeg's greyscale output
    /// at the decode's scale, or at full size (OpenCV's `IMREAD_GRAYSCALE`
    /// pixels) whatever the scale of `image`; turned upright by the EXIF
    /// orientation alone, as OpenCV does. `None` for other formats and for
    /// JPEGs stored as RGB or CMYK.
    pub luma: Option<GrayImage>,
}

impl DecodedImage {
    /// A full-size image (scale 1, the box is the whole image).
    pub fn full(image: RgbImage) -> Self {
        let (width, height) = image.dimensions();
        Self {
            image,
            width,
            height,
            scale_denom: 1,
            source_box: [0.0, 0.0, width as f32, height as f32],
            luma: None,
        }
    }
}

/// The box `[0, extent.0) × [0, extent.1)` of an image of `size` pixels after
/// `orientation` is applied to the image (as `DynamicImage::apply_orientation`).
pub(super) fn oriented_source_box(
    extent: (f32, f32),
    size: (f32, f32),
    orientation: Orientation,
) -> [f32; 4] {
    let (ex, ey) = extent;
    let (w, h) = size;
    // Each arm maps the rectangle's corners: a flipped axis measures from the far
    // edge, a transposed one swaps x and y.
    match orientation {
        Orientation::NoTransforms => [0.0, 0.0, ex, ey],
        Orientation::FlipHorizontal => [w - ex, 0.0, w, ey],
        Orientation::FlipVertical => [0.0, h - ey, ex, h],
        Orientation::Rotate180 => [w - ex, h - ey, w, h],
        // Clockwise: (x, y) → (h - y, x).
        Orientation::Rotate90 => [h - ey, 0.0, h, ex],
        // Counter-clockwise: (x, y) → (y, w - x).
        Orientation::Rotate270 => [0.0, w - ex, ey, w],
        // Transpose: (x, y) → (y, x).
        Orientation::Rotate90FlipH => [0.0, 0.0, ey, ex],
        // Anti-transpose: (x, y) → (h - y, w - x).
        Orientation::Rotate270FlipH => [h - ey, w - ex, h, w],
    }
}
