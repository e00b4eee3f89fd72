//! JPEG decoding with libjpeg-turbo's decoder, set up the way Pillow sets it up.
//!
//! Rust JPEG decoders differ from libjpeg-turbo (which PIL uses) by a few levels on
//! many pixels: zune-jpeg's fancy chroma upsampling rounds twice where libjpeg-turbo
//! rounds once, which alone costs more embedding cosine than the parity bar allows
//! (0.99999). So JPEGs go through libjpeg-turbo's own C code, vendored by `mozjpeg`
//! (a libjpeg-turbo fork whose decoder is unchanged), with Pillow's defaults:
//! `JDCT_ISLOW`, fancy upsampling and block smoothing on (libjpeg's defaults, which
//! Pillow keeps outside draft mode), output RGB for 1- and 3-component images and
//! CMYK for 4-component ones. libjpeg-turbo's SIMD kernels are built when `nasm`
//! is present and chosen at run time from CPUID; they are bit-exact with the C
//! paths (the PIL and OpenCV parity tests pass with either), so they change speed only.
//!
//! Errors: libjpeg reports fatal errors through `error_exit`, which must not return.
//! Ours unwinds (the C sources are built with `-fexceptions`, and the callbacks are
//! `extern "C-unwind"`) with a [`LibjpegFailure`] payload that [`decode_jpeg`]
//! catches. Warnings about damaged data, which libjpeg would skip over (painting the
//! rest grey), are escalated the same way; see [`warning_is_fatal`].

use std::ffi::{c_char, c_int};
use std::panic::{self, AssertUnwindSafe};

use image::metadata::Orientation;
use image::{GrayImage, RgbImage};
use mozjpeg::{ColorSpace, DctMethod, Decompress, Marker};
use mozjpeg_sys::{jpeg_common_struct, jpeg_error_mgr};

use super::decoded::{oriented_source_box, scale_denom_for, DecodedImage, Luma, MinDecodeSize};
use super::orient::{orient_grey, orient_rgb, ycc_to_upright_rgb};
use super::PreprocessError;
use one_pass::Planes;

mod one_pass;

// With panic=abort, libjpeg's error exit would abort the whole server on the first
// corrupt upload instead of failing that one image.
#[cfg(panic = "abort")]
compile_error!("JPEG decoding reports libjpeg errors by unwinding; build with panic = \"unwind\"");

/// libjpeg's `JMSG_LENGTH_MAX`: the buffer size `format_message` may write into.
const JMSG_LENGTH_MAX: usize = 200;

/// APP1 payload prefix of an EXIF block.
const EXIF_PREFIX: &[u8] = b"Exif\0\0";
/// APP1 payload prefix of an XMP packet.
const XMP_PREFIX: &[u8] = b"http://ns.adobe.com/xap/1.0/\0";

/// Why a JPEG was refused (the `reason` of [`PreprocessError::Decode`]).
#[derive(Debug, thiserror::Error)]
enum JpegError {
    /// libjpeg gave up, or met damaged data (message from libjpeg).
    #[error("{0}")]
    Libjpeg(String),
    /// The header declares more pixels than the caller allows.
    #[error("image is {width}x{height} = {pixels} pixels, more than the limit of {max_pixels}")]
    TooLarge {
        width: usize,
        height: usize,
        pixels: u64,
        max_pixels: u64,
    },
    /// A component layout Pillow cannot open either.
    #[error("cannot handle {0}-component JPEG images")]
    Components(usize),
    /// The wrapper reported an I/O-style error (e.g. no image in the stream).
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// Some other panic inside the decoder or its wrapper.
    #[error("decoder panicked: {0}")]
    Panic(String),
}

/// The unwinding payload of a libjpeg error; caught in [`decode_jpeg`].
struct LibjpegFailure(String);

/// Decodes a JPEG to upright RGB8 as `Image.open` → `exif_transpose` →
/// `convert("RGB")` does, refusing images of more than `max_pixels` pixels before
/// allocating anything for them.
///
/// With `min_size`, libjpeg decodes at 1/2, 1/4 or 1/8 scale in the DCT domain
/// when the reduced image still keeps that size (see [`scale_denom_for`]);
/// without it the output is PIL's, bit for bit.
///
/// With a `luma`, [`DecodedImage::luma`] also holds the luma plane where the
/// file codes its pixels as YCbCr or grey (nearly every photo): one decode
/// then serves the model and the pixel features. [`Luma::Full`] keeps it at
/// full size and, when the image is to be reduced, reduces the colour from
/// the same full-size pass (see [`one_pass`]).
pub(super) fn decode_jpeg(
    bytes: &[u8],
    max_pixels: u64,
    min_size: Option<MinDecodeSize>,
    luma: Luma,
) -> Result<DecodedImage, PreprocessError> {
    guarded(|| match luma {
        Luma::No => decode_unwinding(bytes, max_pixels, min_size, false),
        Luma::AtScale => decode_unwinding(bytes, max_pixels, min_size, true),
        Luma::Full => match one_pass::decode(bytes, max_pixels, min_size)? {
            Planes::Decoded(decoded) => Ok(decoded),
            // At full size the colour decode's own luma is the full-size one.
            Planes::FullSize => decode_unwinding(bytes, max_pixels, None, true),
            // The features will decode their greyscale copy themselves.
            Planes::Unsuited => decode_unwinding(bytes, max_pixels, min_size, false),
        },
    })
}

/// The photo as OpenCV's `imdecode(bytes, IMREAD_GRAYSCALE)` returns it: libjpeg's
/// own greyscale output at full size (the luma plane, `JDCT_ISLOW`; no chroma is
/// decoded), turned upright by the EXIF orientation only (OpenCV reads no XMP).
/// The pixel features are defined on exactly these pixels.
pub(super) fn decode_jpeg_grey(
    bytes: &[u8],
    max_pixels: u64,
) -> Result<GrayImage, PreprocessError> {
    guarded(|| decode_grey_unwinding(bytes, max_pixels))
}

/// Runs a libjpeg decode, turning its unwinding error exits into errors.
fn guarded<T>(decode: impl FnOnce() -> Result<T, JpegError>) -> Result<T, PreprocessError> {
    // Everything libjpeg touched is dropped inside the closure (its `Drop` calls
    // `jpeg_destroy_decompress`, valid after an error exit), so nothing observes
    // half-updated state afterwards and asserting unwind safety is sound.
    let outcome = panic::catch_unwind(AssertUnwindSafe(decode));
    let result = outcome.unwrap_or_else(|payload| {
        Err(match payload.downcast::<LibjpegFailure>() {
            Ok(failure) => JpegError::Libjpeg(failure.0),
            Err(payload) => JpegError::Panic(
                payload
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_else(|| "unknown payload".to_owned()),
            ),
        })
    });
    result.map_err(|e| PreprocessError::Decode {
        format: "JPEG".to_owned(),
        reason: e.to_string(),
    })
}

/// Opens a JPEG for decoding and checks its header size against `max_pixels`.
fn open_checked(bytes: &[u8], max_pixels: u64) -> Result<Decompress<&[u8]>, JpegError> {
    // Only APP1 is needed (EXIF and XMP); saving nothing else keeps memory bounded.
    let dec = Decompress::builder()
        .with_err(error_mgr())
        .with_markers(&[Marker::APP(1)])
        .from_mem(bytes)?;
    // The bomb check uses the full header size, whatever scale is decoded.
    let (width, height) = dec.size();
    let pixels = (width as u64).saturating_mul(height as u64);
    if pixels > max_pixels {
        return Err(JpegError::TooLarge {
            width,
            height,
            pixels,
            max_pixels,
        });
    }
    Ok(dec)
}

/// The greyscale decode proper; libjpeg errors leave it by unwinding.
fn decode_grey_unwinding(bytes: &[u8], max_pixels: u64) -> Result<GrayImage, JpegError> {
    let mut dec = open_checked(bytes, max_pixels)?;
    let components = dec.components().len();
    let orientation = exif_orientation(&dec);
    dec.dct_method(DctMethod::IntegerSlow);
    dec.do_block_smoothing(true);
    let grey = match components {
        1 | 3 => {
            let mut started = dec.grayscale()?;
            let data: Vec<u8> = started.read_scanlines()?;
            let (w, h) = (started.width(), started.height());
            started.finish()?;
            GrayImage::from_raw(to_u32(w)?, to_u32(h)?, data).ok_or_else(short_output)?
        }
        // CMYK: the full-size colour decode's RGB (already upright), then
        // OpenCV's weights.
        4 => {
            drop(dec);
            let rgb = decode_unwinding(bytes, max_pixels, None, false)?.image;
            return Ok(super::grey::bt601_fixed15(&rgb));
        }
        n => return Err(JpegError::Components(n)),
    };
    Ok(orient_grey(grey, orientation))
}

fn to_u32(v: usize) -> Result<u32, JpegError> {
    u32::try_from(v).map_err(|_| JpegError::Libjpeg("size overflows u32".into()))
}

fn short_output() -> JpegError {
    JpegError::Libjpeg("libjpeg returned fewer pixels than declared".into())
}

/// The decode proper; libjpeg errors leave it by unwinding.
fn decode_unwinding(
    bytes: &[u8],
    max_pixels: u64,
    min_size: Option<MinDecodeSize>,
    want_luma: bool,
) -> Result<DecodedImage, JpegError> {
    let mut dec = open_checked(bytes, max_pixels)?;
    let (width, height) = dec.size();
    // Pillow's modes by component count: 1 → L, 3 → RGB, 4 → CMYK, else refused.
    let components = dec.components().len();
    let cmyk = match components {
        1 | 3 => false,
        4 => true,
        n => return Err(JpegError::Components(n)),
    };
    let orientation = orientation(&dec);

    // libjpeg's defaults, which Pillow keeps (it changes them only in draft mode);
    // set explicitly because the pixels depend on them.
    dec.dct_method(DctMethod::IntegerSlow);
    dec.do_fancy_upsampling(true);
    dec.do_block_smoothing(true);
    // The shorter and longer sides are the same before and after EXIF rotation, so
    // the header size decides the scale. Denominator 1 leaves libjpeg's scaling untouched, so
    // the exact path stays PIL's.
    let (full_w, full_h) = (to_u32(width)?, to_u32(height)?);
    let denom = min_size.map_or(1, |min| scale_denom_for(full_w, full_h, min));
    if denom > 1 {
        // mozjpeg's `scale(n)` means n/8.
        dec.scale((8 / denom) as u8);
    }

    // L → RGB in Pillow replicates the grey value, as libjpeg's gray → RGB does.
    // CMYK: Pillow asks libjpeg for CMYK (it converts YCCK) and reads it as Adobe's
    // inverted CMYK ("CMYK;I").
    // The luma comes with the colour where libjpeg's RGB is a function of
    // the planes it decodes: YCbCr asked for as such and converted here as
    // libjpeg converts it, or grey, which libjpeg replicates into RGB.
    let source = dec.color_space();
    let as_ycc = want_luma && source == ColorSpace::JCS_YCbCr;
    // The luma is EXIF-oriented only, as OpenCV's greyscale decode is.
    let luma_orientation = (as_ycc || want_luma && source == ColorSpace::JCS_GRAYSCALE)
        .then(|| exif_orientation(&dec));
    let mut started = if cmyk {
        dec.to_colorspace(ColorSpace::JCS_CMYK)?
    } else if as_ycc {
        dec.to_colorspace(ColorSpace::JCS_YCbCr)?
    } else {
        dec.rgb()?
    };
    let mut data: Vec<u8> = started.read_scanlines()?;
    let (out_w, out_h) = (started.width(), started.height());
    // Reads up to EOI, so a file cut anywhere (even just its EOI marker) is an
    // error, as in Pillow.
    started.finish()?;

    let (w, h) = (to_u32(out_w)?, to_u32(out_h)?);
    // The colour's own Y plane is the luma whenever the EXIF orientation is
    // the colour's (no XMP orientation overriding it): one plane turned, not two.
    let luma_of_colour = as_ycc && luma_orientation == Some(orientation);
    let mut luma = match luma_orientation {
        Some(exif_only) if !luma_of_colour => {
            // Y (or the grey value) is the first of each pixel's three bytes.
            let plane = data.iter().step_by(3).copied().collect();
            let plane = GrayImage::from_raw(w, h, plane).ok_or_else(short_output)?;
            Some(orient_grey(plane, exif_only))
        }
        _ => None,
    };
    let image = if as_ycc {
        let (rgb, y) = ycc_to_upright_rgb(data, w, h, orientation).ok_or_else(short_output)?;
        if luma_of_colour {
            luma = Some(y);
        }
        rgb
    } else {
        if cmyk {
            inverted_cmyk_to_rgb_in_place(&mut data);
        }
        let img = RgbImage::from_raw(w, h, data).ok_or_else(short_output)?;
        orient_rgb(img, orientation)
    };
    // The reduced image covers whole 8×8 blocks, so its last column and row may
    // reach past the picture; the box says where the picture itself lies.
    let source_box = oriented_source_box(
        (full_w as f32 / denom as f32, full_h as f32 / denom as f32),
        (w as f32, h as f32),
        orientation,
    );
    let (width, height) = upright_size(full_w, full_h, orientation);
    Ok(DecodedImage {
        image,
        width,
        height,
        scale_denom: denom,
        source_box,
        luma,
    })
}

/// The photo's full size once `orientation` is applied.
fn upright_size(w: u32, h: u32, orientation: Orientation) -> (u32, u32) {
    match orientation {
        Orientation::Rotate90
        | Orientation::Rotate270
        | Orientation::Rotate90FlipH
        | Orientation::Rotate270FlipH => (h, w),
        _ => (w, h),
    }
}

/// An error manager whose exits unwind instead of calling `exit()`.
fn error_mgr() -> jpeg_error_mgr {
    // SAFETY: `jpeg_error_mgr` is plain C data (integers, raw and nullable function
    // pointers), for which all-zero is valid; `jpeg_std_error` then fills it in.
    let mut err: jpeg_error_mgr = unsafe { std::mem::zeroed() };
    // SAFETY: `err` is a valid, exclusively borrowed error manager.
    unsafe { mozjpeg_sys::jpeg_std_error(&mut err) };
    err.error_exit = Some(error_exit);
    err.emit_message = Some(emit_message);
    err
}

/// libjpeg's fatal-error hook: unwinds to [`decode_jpeg`] with the message.
extern "C-unwind" fn error_exit(cinfo: &mut jpeg_common_struct) {
    // SAFETY: as in `emit_message`, `err` is our live error manager.
    let code = unsafe { cinfo.err.as_ref() }.map(|err| err.msg_code);
    let msg = if code == Some(mozjpeg_sys::JERR_FILE_READ) {
        // The in-memory reader fails only when libjpeg skips past the end of the
        // data (a marker segment longer than the file); "Input file read error"
        // would suggest an I/O problem.
        "Premature end of JPEG file (inside a marker segment)".to_owned()
    } else {
        format_message(cinfo)
    };
    // `resume_unwind` skips the panic hook: a bad upload is not worth a backtrace.
    panic::resume_unwind(Box::new(LibjpegFailure(msg)));
}

/// libjpeg's message hook: warnings (level -1) about damaged data become errors,
/// others are counted and ignored like libjpeg's default (traces are dropped).
extern "C-unwind" fn emit_message(cinfo: &mut jpeg_common_struct, msg_level: c_int) {
    if msg_level >= 0 {
        return;
    }
    // SAFETY: libjpeg calls this only with `err` pointing at the manager installed
    // by `error_mgr`, which the `Decompress` owns for its whole life.
    let Some(err) = (unsafe { cinfo.err.as_mut() }) else {
        return;
    };
    err.num_warnings += 1;
    if warning_is_fatal(err.msg_code) {
        error_exit(cinfo);
    }
}

/// Warnings that mean the pixels are not what the file meant them to be.
///
/// Pillow refuses truncated files ("image file is truncated", also when only the
/// EOI marker is missing), which libjpeg reports as `JWRN_JPEG_EOF`. For detected
/// damage in the entropy-coded data (a scan ending early, a wrong restart marker,
/// a bad Huffman code in the slow decoding path, inconsistent progression) Pillow
/// silently returns libjpeg's partly grey image; we refuse those too,
/// deliberately: an embedding of a damaged photo is worse than a clear per-photo
/// error. Kept, as in Pillow: stray bytes before a marker (`JWRN_EXTRANEOUS_DATA`;
/// intact camera files have them, so it cannot tell damage apart), unknown JFIF
/// revisions and Adobe transform codes, and bad ICC markers (never read here).
/// Garbled scan data that libjpeg-turbo's fast Huffman path decodes without any
/// warning still decodes, to the same garbage as in Pillow.
fn warning_is_fatal(code: c_int) -> bool {
    // Codes below `JERR_BAD_CROP_SPEC` do not depend on the build's ABI or
    // arithmetic-coding options, so the -sys crate's constants are reliable.
    matches!(
        code,
        mozjpeg_sys::JWRN_JPEG_EOF
            | mozjpeg_sys::JWRN_HIT_MARKER
            | mozjpeg_sys::JWRN_HUFF_BAD_CODE
            | mozjpeg_sys::JWRN_MUST_RESYNC
            | mozjpeg_sys::JWRN_BOGUS_PROGRESSION
            | mozjpeg_sys::JWRN_NOT_SEQUENTIAL
    )
}

/// The current message, formatted by libjpeg (`format_message`).
fn format_message(cinfo: &mut jpeg_common_struct) -> String {
    // SAFETY: as in `emit_message`, `err` is our live error manager.
    let Some(err) = (unsafe { cinfo.err.as_ref() }) else {
        return "libjpeg error (no error manager)".to_owned();
    };
    let code = err.msg_code;
    let Some(format) = err.format_message else {
        return format!("libjpeg error code {code}");
    };
    // The binding declares the buffer as `&[u8; 80]`, but libjpeg writes up to
    // JMSG_LENGTH_MAX bytes, so pass a raw pointer to a buffer of that size.
    let mut buffer = [0u8; JMSG_LENGTH_MAX];
    // SAFETY: same C function, with the pointer parameter spelled as a raw pointer
    // (identical ABI); the buffer is JMSG_LENGTH_MAX bytes as libjpeg requires.
    unsafe {
        let format: unsafe extern "C-unwind" fn(&mut jpeg_common_struct, *mut c_char) =
            std::mem::transmute(format);
        format(cinfo, buffer.as_mut_ptr().cast());
    }
    let len = buffer.iter().position(|&b| b == 0).unwrap_or(buffer.len());
    String::from_utf8_lossy(&buffer[..len]).into_owned()
}

/// The EXIF orientation the way `ImageOps.exif_transpose` finds it.
///
/// Pillow concatenates the TIFF data of every `Exif` APP1 segment and falls back to
/// `tiff:Orientation` in the XMP packet (the last XMP APP1 segment) when the EXIF
/// data has no orientation. An unreadable EXIF block leaves the image as it is.
fn orientation<R>(dec: &Decompress<R>) -> Orientation {
    let mut exif: Option<Vec<u8>> = None;
    let mut xmp: Option<&[u8]> = None;
    for marker in dec.markers() {
        if marker.marker != Marker::APP(1) {
            continue;
        }
        if let Some(tiff) = marker.data.strip_prefix(EXIF_PREFIX) {
            exif.get_or_insert_with(Vec::new).extend_from_slice(tiff);
        } else if let Some(packet) = marker.data.strip_prefix(XMP_PREFIX) {
            xmp = Some(packet);
        }
    }
    exif.as_deref()
        .and_then(Orientation::from_exif_chunk)
        .or_else(|| {
            xmp.and_then(xmp_orientation)
                .and_then(Orientation::from_exif)
        })
        .unwrap_or(Orientation::NoTransforms)
}

/// The orientation OpenCV's `imdecode` applies: the first `Exif` APP1 segment's
/// tag only (no XMP fallback); unreadable means none.
fn exif_orientation<R>(dec: &Decompress<R>) -> Orientation {
    dec.markers()
        .filter(|m| m.marker == Marker::APP(1))
        .find_map(|m| m.data.strip_prefix(EXIF_PREFIX))
        .and_then(Orientation::from_exif_chunk)
        .unwrap_or(Orientation::NoTransforms)
}

/// Pillow's `re.search(rb'tiff:Orientation(="|>)([0-9])', xmp)`.
fn xmp_orientation(xmp: &[u8]) -> Option<u8> {
    const KEY: &[u8] = b"tiff:Orientation";
    xmp.windows(KEY.len())
        .enumerate()
        .filter(|(_, w)| *w == KEY)
        .find_map(|(i, _)| match xmp.get(i + KEY.len()..)? {
            [b'=', b'"', d, ..] | [b'>', d, ..] if d.is_ascii_digit() => Some(d - b'0'),
            _ => None,
        })
}

/// Pillow's "CMYK;I" unpacking (255 - v) followed by `convert("RGB")` (`cmyk2rgb`:
/// `nk - MULDIV255(c, nk)` with `nk = 255 - k`), compacting 4 bytes per pixel to 3
/// in place.
fn inverted_cmyk_to_rgb_in_place(data: &mut Vec<u8>) {
    let pixels = data.len() / 4;
    for i in 0..pixels {
        let [c, m, y, k] = [0, 1, 2, 3].map(|j| 255 - u32::from(data[4 * i + j]));
        let nk = 255 - k;
        let channel = |v: u32| {
            let t = v * nk + 128;
            // nk ≥ MULDIV255(v, nk) for v ≤ 255, so no clipping is needed.
            (nk - (((t >> 8) + t) >> 8)) as u8
        };
        // Writing pixel i at 3i never clobbers unread input at 4j ≥ 4i.
        data[3 * i] = channel(c);
        data[3 * i + 1] = channel(m);
        data[3 * i + 2] = channel(y);
    }
    data.truncate(3 * pixels);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cmyk_conversion_follows_pillow() {
        // Pillow 13: Image.frombytes("CMYK", ..., inverted).convert("RGB"); the
        // stored bytes are Adobe-inverted, so stored 255 - C etc.
        #[rustfmt::skip]
        let cases: [([u8; 4], [u8; 3]); 5] = [
            ([255, 255, 255, 255], [255, 255, 255]), // no ink
            ([0, 0, 0, 0], [0, 0, 0]),               // all ink
            ([255, 255, 255, 0], [0, 0, 0]),         // black only
            ([155, 255, 55, 255], [155, 255, 55]),   // no black: 255 - C
            ([155, 255, 55, 155], [94, 155, 33]),
        ];
        for (stored, want) in cases {
            let mut data = stored.to_vec();
            inverted_cmyk_to_rgb_in_place(&mut data);
            assert_eq!(data, want, "stored {stored:?}");
        }
    }

    #[test]
    fn cmyk_conversion_matches_formula_exhaustively() {
        // Independent transcription of Pillow's Convert.c for every (c, k) pair.
        let mut data = Vec::with_capacity(256 * 256 * 4);
        for c in 0..=255u8 {
            for k in 0..=255u8 {
                data.extend_from_slice(&[c, 255 - c, c / 2, k]);
            }
        }
        let stored = data.clone();
        inverted_cmyk_to_rgb_in_place(&mut data);
        for (px, rgb) in stored.chunks_exact(4).zip(data.chunks_exact(3)) {
            let nk = i32::from(px[3]); // 255 - (255 - stored k)
            for ch in 0..3 {
                let c = 255 - i32::from(px[ch]);
                let t = c * nk + 128;
                let want = (nk - (((t >> 8) + t) >> 8)).clamp(0, 255);
                assert_eq!(i32::from(rgb[ch]), want, "{px:?}");
            }
        }
    }

    #[test]
    fn xmp_orientation_is_found_like_pillow_regex() {
        assert_eq!(xmp_orientation(br#"<x tiff:Orientation="6"/>"#), Some(6));
        assert_eq!(
            xmp_orientation(b"<tiff:Orientation>8</tiff:Orientation>"),
            Some(8)
        );
        // The first occurrence that matches the whole pattern wins.
        assert_eq!(
            xmp_orientation(br#"tiff:Orientation="x" tiff:Orientation="3""#),
            Some(3)
        );
        assert_eq!(xmp_orientation(b"tiff:Orientation=6"), None);
        assert_eq!(xmp_orientation(b"tiff:Orientation"), None);
        assert_eq!(xmp_orientation(b""), None);
    }
}
