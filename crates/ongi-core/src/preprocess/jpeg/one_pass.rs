//! The fast decode that also feeds the pixel features: one full-size pass of
//! libjpeg into its raw component planes, reduced to the model's scale while
//! each band of rows is still in cache.
//!
//! `raw_data_out` hands out each component's `JDCT_ISLOW` samples at its own
//! sampling, before upsampling and colour conversion. The luma plane is then
//! libjpeg's greyscale output bit for bit, so the features see OpenCV's
//! pixels; the colour image is every plane averaged over the boxes of one
//! reduced pixel, then converted as libjpeg converts YCbCr. One entropy decode
//! per photo instead of two (a reduced colour decode and a full-size greyscale
//! one) is what this saves.
//!
//! libjpeg is driven through `mozjpeg_sys` here, not the `mozjpeg` wrapper:
//! the wrapper reads raw data only all at once, and reducing each band of
//! rows right after libjpeg writes it, rather than re-reading 12 MB of luma
//! from memory afterwards, is what makes the pass cheap.

use image::{GrayImage, RgbImage};
use mozjpeg::{ColorSpace, CompInfo};
use mozjpeg_sys::{
    jpeg_decompress_struct, jpeg_error_mgr, JSAMPARRAY_MUT, JSAMPROW_MUT, J_DCT_METHOD,
};

use super::super::decoded::{oriented_source_box, scale_denom_for, DecodedImage, MinDecodeSize};
use super::super::orient::{orient_grey, orient_rgb};
use super::super::planes::{box_reduce, interleave3, packed_rows, Plane, MAX_BOX};
use super::{
    error_mgr, exif_orientation, open_checked, orientation, short_output, to_u32, upright_size,
    JpegError,
};

/// What [`decode`] made of a JPEG.
pub(super) enum Planes {
    /// The full-size luma and the colour reduced from the same pass.
    Decoded(DecodedImage),
    /// The image is decoded at full size anyway.
    FullSize,
    /// Not YCbCr or grey, or sampled so that the chroma boxes would not be
    /// whole samples.
    Unsuited,
}

/// One component as the pass lays it out.
struct Component {
    /// One box of the colour image in this component's samples.
    fx: usize,
    fy: usize,
    /// Bytes per row (whole 8×8 blocks) and valid samples per row.
    stride: usize,
    width: usize,
    /// Valid rows in all, and rows per iMCU row.
    height: usize,
    band: usize,
}

/// One box of the colour image in the samples of a component sampled
/// `(h, v)` of `(max_h, max_v)`: `(fx, fy)`.
fn component_box(h: i32, v: i32, max_h: i32, max_v: i32, denom: i32) -> Option<(usize, usize)> {
    let whole = h > 0 && v > 0 && (denom * h) % max_h == 0 && (denom * v) % max_v == 0;
    let (fx, fy) = whole.then(|| (denom * h / max_h, denom * v / max_v))?;
    let fits = |f: i32| (1..=MAX_BOX as i32).contains(&f);
    (fits(fx) && fits(fy)).then_some((fx as usize, fy as usize))
}

/// Every component's layout at scale 1/`denom`, and the largest vertical
/// sampling factor; `None` where a box would not be whole samples or the
/// luma is not coded at full resolution (then it is not the greyscale output).
fn layout(
    infos: &[CompInfo],
    width: usize,
    height: usize,
    denom: u32,
) -> Option<(Vec<Component>, i32)> {
    let max_h = infos.iter().map(|c| c.h_samp_factor).max()?;
    let max_v = infos.iter().map(|c| c.v_samp_factor).max()?;
    let comps = infos
        .iter()
        .map(|ci| {
            let (fx, fy) = component_box(
                ci.h_samp_factor,
                ci.v_samp_factor,
                max_h,
                max_v,
                denom as i32,
            )?;
            Some(Component {
                fx,
                fy,
                stride: ci.width_in_blocks as usize * 8,
                // libjpeg's `downsampled_width` and `_height`.
                width: (width * ci.h_samp_factor as usize).div_ceil(max_h as usize),
                height: (height * ci.v_samp_factor as usize).div_ceil(max_v as usize),
                band: ci.v_samp_factor as usize * 8,
            })
        })
        .collect::<Option<Vec<_>>>()?;
    let d = denom as usize;
    (comps.first().map(|k| (k.fx, k.fy)) == Some((d, d))).then_some((comps, max_v))
}

/// libjpeg's decompressor over `bytes`; destroyed on drop (also when an
/// error exit unwinds through it).
struct RawDecoder<'a> {
    cinfo: Box<jpeg_decompress_struct>,
    // Referenced by `cinfo.common.err`; declared after `cinfo`, so it outlives it.
    _err: Box<jpeg_error_mgr>,
    _bytes: std::marker::PhantomData<&'a [u8]>,
}

impl<'a> RawDecoder<'a> {
    /// Reads the header and starts a full-size raw decode (`JDCT_ISLOW`,
    /// block smoothing on, as every other decode here).
    fn start(bytes: &'a [u8]) -> Self {
        let mut err = Box::new(error_mgr());
        // SAFETY: all-zero is a valid `jpeg_decompress_struct` (integers and
        // nullable pointers); `jpeg_CreateDecompress` initialises it.
        let mut cinfo: Box<jpeg_decompress_struct> = Box::new(unsafe { std::mem::zeroed() });
        cinfo.common.err = &mut *err;
        // SAFETY: `cinfo` is zeroed with its error manager set, as libjpeg
        // requires; `bytes` outlives the decoder (the lifetime `'a`). From here
        // on `Drop` destroys it, which is valid in every state.
        unsafe { mozjpeg_sys::jpeg_create_decompress(&mut *cinfo) };
        let mut dec = Self {
            cinfo,
            _err: err,
            _bytes: std::marker::PhantomData,
        };
        let c = &mut *dec.cinfo;
        // SAFETY: as above; errors unwind out of these calls to `guarded`.
        unsafe {
            mozjpeg_sys::jpeg_mem_src(c, bytes.as_ptr(), bytes.len() as _);
            mozjpeg_sys::jpeg_read_header(c, 1);
        }
        c.dct_method = J_DCT_METHOD::JDCT_ISLOW;
        c.do_block_smoothing = 1;
        c.raw_data_out = 1;
        // SAFETY: the header is read and the parameters set.
        unsafe { mozjpeg_sys::jpeg_start_decompress(c) };
        dec
    }
}

impl Drop for RawDecoder<'_> {
    fn drop(&mut self) {
        // SAFETY: created in `start`; destroying is valid after an error exit.
        unsafe { mozjpeg_sys::jpeg_destroy_decompress(&mut self.cinfo) };
    }
}

/// The one-pass decode; libjpeg errors leave it by unwinding.
pub(super) fn decode(
    bytes: &[u8],
    max_pixels: u64,
    min_size: Option<MinDecodeSize>,
) -> Result<Planes, JpegError> {
    // The header, the size check and the orientations, through the same
    // wrapper as every other decode; the pass itself below.
    let dec = open_checked(bytes, max_pixels)?;
    let (width, height) = dec.size();
    let (full_w, full_h) = (to_u32(width)?, to_u32(height)?);
    let denom = min_size.map_or(1, |min| scale_denom_for(full_w, full_h, min));
    if denom == 1 {
        return Ok(Planes::FullSize);
    }
    let space = dec.color_space();
    let grey = dec.components().len() == 1 && space == ColorSpace::JCS_GRAYSCALE;
    let ycc = dec.components().len() == 3 && space == ColorSpace::JCS_YCbCr;
    if !(grey || ycc) {
        return Ok(Planes::Unsuited);
    }
    // The layout, from the header alone: an unsuited file is passed on before
    // libjpeg decodes anything (a progressive one, all of it, at start).
    let Some((comps, max_v)) = layout(dec.components(), width, height, denom) else {
        return Ok(Planes::Unsuited);
    };
    let colour_orientation = orientation(&dec);
    let luma_orientation = exif_orientation(&dec);
    drop(dec);

    let mut raw = RawDecoder::start(bytes);
    let c = &mut *raw.cinfo;
    let same_header = (c.image_width as usize, c.image_height as usize) == (width, height)
        && (c.output_width, c.output_height) == (c.image_width, c.image_height)
        && c.num_components as usize == comps.len()
        && c.max_v_samp_factor == max_v;
    if !same_header {
        return Ok(Planes::Unsuited);
    }
    let d = denom as usize;
    let lines = max_v as usize * 8;
    let imcu_rows = height.div_ceil(lines);
    let (ow, oh) = (width.div_ceil(d), height.div_ceil(d));
    // Output rows per iMCU row, the same for every component (lines / d).
    let band_out = lines / d;

    // The luma is written in place into its final buffer: rows below the
    // picture (the last iMCU row's padding) land in its spare capacity and
    // only the picture's rows, all of which libjpeg writes, become its length.
    let luma_stride = comps[0].stride;
    let mut luma: Vec<u8> = Vec::with_capacity(luma_stride * imcu_rows * lines);
    let luma_base = luma.spare_capacity_mut().as_mut_ptr().cast::<u8>();
    // Chroma: one band each, reused.
    let mut bands: Vec<Vec<u8>> = comps[1..]
        .iter()
        .map(|k| vec![0u8; k.stride * k.band])
        .collect();
    let mut reduced: Vec<Vec<u8>> = comps.iter().map(|_| vec![0u8; ow * oh]).collect();
    let mut rows: [[JSAMPROW_MUT; 32]; 3] = [[std::ptr::null_mut(); 32]; 3];
    for band in 0..imcu_rows {
        let y0 = band * lines;
        for (r, ptr) in rows[0].iter_mut().enumerate().take(lines) {
            // SAFETY: `y0 + r < imcu_rows * lines` rows of `luma_stride` bytes
            // are allocated.
            *ptr = unsafe { luma_base.add((y0 + r) * luma_stride) };
        }
        for ((k, buf), ptrs) in comps[1..].iter().zip(&mut bands).zip(&mut rows[1..]) {
            for (r, ptr) in ptrs.iter_mut().enumerate().take(k.band) {
                *ptr = buf[r * k.stride..].as_mut_ptr();
            }
        }
        let mut planes: [JSAMPARRAY_MUT; 3] = [
            rows[0].as_mut_ptr(),
            rows[1].as_mut_ptr(),
            rows[2].as_mut_ptr(),
        ];
        // SAFETY: one row pointer per line of every component's band, each
        // `stride` bytes long (whole blocks, as libjpeg writes them).
        let got = unsafe { mozjpeg_sys::jpeg_read_raw_data(c, planes.as_mut_ptr(), lines as u32) };
        if got as usize != lines {
            return Err(JpegError::Libjpeg(
                "libjpeg returned a short band of raw rows".into(),
            ));
        }
        let out_rows = band_out.min(oh - band * band_out);
        let out = band * band_out * ow..(band * band_out + out_rows) * ow;
        for (i, k) in comps.iter().enumerate() {
            let first = band * k.band;
            let valid = k.band.min(k.height.saturating_sub(first));
            let data: &[u8] = if i == 0 {
                // SAFETY: libjpeg has just written these `valid` rows (every
                // row of the picture is written), and nothing else aliases them.
                unsafe {
                    std::slice::from_raw_parts(luma_base.add(first * k.stride), valid * k.stride)
                }
            } else {
                &bands[i - 1]
            };
            let plane = Plane {
                data,
                stride: k.stride,
                width: k.width,
                height: valid,
            };
            box_reduce(&plane, k.fx, k.fy, &mut reduced[i][out.clone()], ow)
                .ok_or_else(short_output)?;
        }
    }
    // SAFETY: the picture's `height` rows of `luma_stride` bytes were written.
    unsafe { luma.set_len(luma_stride * height) };
    // Reads up to EOI, as every other decode does.
    // SAFETY: every scanline has been read.
    unsafe { mozjpeg_sys::jpeg_finish_decompress(c) };
    drop(raw);

    let rgb = match reduced.as_slice() {
        [y, cb, cr] => super::super::ycc::ycc_planes_to_rgb(y, cb, cr),
        [y] => interleave3(y, y, y),
        _ => return Ok(Planes::Unsuited),
    };
    let (w32, h32) = (to_u32(ow)?, to_u32(oh)?);
    let img = RgbImage::from_raw(w32, h32, rgb).ok_or_else(short_output)?;
    let img = orient_rgb(img, colour_orientation);

    let luma = packed_rows(luma, luma_stride, width, height);
    let luma = GrayImage::from_raw(full_w, full_h, luma).ok_or_else(short_output)?;
    let luma = orient_grey(luma, luma_orientation);

    let source_box = oriented_source_box(
        (full_w as f32 / denom as f32, full_h as f32 / denom as f32),
        (w32 as f32, h32 as f32),
        colour_orientation,
    );
    let (width, height) = upright_size(full_w, full_h, colour_orientation);
    Ok(Planes::Decoded(DecodedImage {
        image: img,
        width,
        height,
        scale_denom: denom,
        source_box,
        luma: Some(luma),
    }))
}
