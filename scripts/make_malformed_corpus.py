#!/usr/bin/env python3
"""Writes the malformed-image corpus to tests/fixtures/malformed/ (issue 6, fuzzing/faults).

Every file is an input that a hostile or sloppy client could put in photo storage:
truncations at several points, zero bytes, wrong magic, corrupted Huffman tables and
PNG chunks, decompression bombs, huge or odd EXIF, and the legitimate-but-unusual
variants (CMYK, 16-bit, grey, grey+alpha, palette, RGBA, 1x1, 1x4000, progressive,
animated) that a decoder must handle correctly.

`manifest.json` lists each file with:

* `expected`: what ongi must do, `"ok"` (decode to the size below) or `"error"`
  (a per-image error, never a panic);
* `pil`: what the reference pipeline does (`PIL.Image.open` -> `ImageOps.exif_transpose`
  -> `convert("RGB")`), measured by this script; `expected` equals it unless `note`
  explains a deliberate, documented ongi policy that differs (pixel limit, unsupported
  formats, corrupt entropy data);
* for ok files, `width`/`height` after EXIF orientation and the per-channel `mean` of
  PIL's RGB pixels (the test allows a small tolerance: lossy WebP decoders differ).

Run from the repository root with Pillow + numpy (e.g. /work/pyenv/bin/python):

    python scripts/make_malformed_corpus.py [OUT_DIR]

Output is deterministic (fixed seeds, no timestamps) for a given Pillow version.
"""

import io
import json
import re
import struct
import sys
import warnings
import zlib
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

ROOT = Path(__file__).resolve().parent.parent
PHOTO = ROOT / "tests/fixtures/photos/landscape_ladybird.jpg"
ONGI_MAX_PIXELS = 100_000_000  # ongi_core::preprocess::DEFAULT_MAX_PIXELS

entries = []


def base_image(w=160, h=100, mode="RGB"):
    """A small natural photo (a fixture photo, resized) so the pixels are realistic."""
    im = Image.open(PHOTO).convert("RGB").resize((w, h), Image.Resampling.LANCZOS)
    return im.convert(mode) if mode != "RGB" else im


def enc(im, fmt, **kw):
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


def pil_outcome(data):
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            im = Image.open(io.BytesIO(data))
            im = ImageOps.exif_transpose(im)
            rgb = im.convert("RGB")
            rgb.load()
        arr = np.asarray(rgb, dtype=np.float64)
        return {
            "outcome": "ok",
            "width": rgb.width,
            "height": rgb.height,
            "mean": [round(float(arr[..., c].mean()), 3) for c in range(3)],
            # top-left quadrant: catches a wrong EXIF orientation, which keeps the mean
            "tl_mean": [
                round(float(arr[: max(1, rgb.height // 2), : max(1, rgb.width // 2), c].mean()), 3)
                for c in range(3)
            ],
        }
    except Exception as e:  # noqa: BLE001 - any failure is PIL's "error"
        reason = re.sub(r" <_io.BytesIO object at 0x[0-9a-f]+>", "", f"{type(e).__name__}: {e}")
        return {"outcome": "error", "reason": reason[:200]}


def add(name, data, expected=None, note=None, divergence=None):
    """Registers a file; `expected` overrides PIL's outcome (then `note` says why).

    `divergence` marks a known, reported difference where PIL's outcome is kept as
    `expected` but ongi does otherwise; the test prints these without failing.
    """
    pil = pil_outcome(data)
    entry = {"file": name, "expected": expected or pil["outcome"], "pil": pil["outcome"]}
    if expected and expected != pil["outcome"]:
        assert note, f"{name}: override without a note"
    if note:
        entry["note"] = note
    if divergence:
        entry["known_divergence"] = divergence
    if pil["outcome"] == "ok":
        entry.update(
            width=pil["width"], height=pil["height"], mean=pil["mean"], tl_mean=pil["tl_mean"]
        )
    else:
        entry["pil_reason"] = pil["reason"]
    entries.append((entry, data))


# ---------------------------------------------------------------- byte helpers
def png_chunk(kind, payload):
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(
        ">I", zlib.crc32(kind + payload) & 0xFFFFFFFF
    )


def png_raw(w, h, bit_depth, color_type, idat, extra=b""):
    ihdr = struct.pack(">IIBBBBB", w, h, bit_depth, color_type, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", ihdr)
        + extra
        + png_chunk(b"IDAT", idat)
        + png_chunk(b"IEND", b"")
    )


def png_chunks(data):
    """[(offset, length, kind)] of each chunk."""
    out, pos = [], 8
    while pos + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[pos : pos + 8])
        out.append((pos, length, kind))
        pos += 12 + length
    return out


def jpeg_segments(data):
    """[(offset, marker)] of each marker segment before the first SOS (inclusive)."""
    out, pos = [], 2
    while pos + 4 <= len(data):
        assert data[pos] == 0xFF
        marker = data[pos + 1]
        out.append((pos, marker))
        if marker == 0xDA:
            break
        (length,) = struct.unpack(">H", data[pos + 2 : pos + 4])
        pos += 2 + length
    return out


def exif_bytes(orientation=None, pad=0):
    exif = Image.Exif()
    if orientation is not None:
        exif[0x0112] = orientation
    if pad:
        exif[0x010E] = "x" * pad  # ImageDescription
    return exif.tobytes()


def app1(payload):
    return b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload


def insert_after_soi(jpeg, segment):
    return jpeg[:2] + segment + jpeg[2:]


def flip(data, at, mask=0xFF):
    b = bytearray(data)
    b[at] ^= mask
    return bytes(b)


def main():
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "tests/fixtures/malformed"
    out.mkdir(parents=True, exist_ok=True)
    for old in out.iterdir():
        old.unlink()

    rgb = base_image()
    jpg = enc(rgb, "JPEG", quality=85)
    prog = enc(rgb, "JPEG", quality=85, progressive=True)
    png = enc(rgb, "PNG")
    webp_lossy = enc(rgb, "WEBP", quality=80)
    webp_lossless = enc(rgb, "WEBP", lossless=True)

    # -- empty, tiny, wrong magic
    add("zero_byte.jpg", b"")
    add("one_byte.jpg", b"\xff")
    add("soi_only.jpg", b"\xff\xd8")
    add("text_named.jpg", b"this is not an image\n")
    add("wrong_magic_jpeg.jpg", b"\x00\x00" + jpg[2:])
    add("wrong_magic_png.png", b"\x89PNX\r\n\x1a\n" + png[8:])
    add("wrong_magic_webp.webp", webp_lossy[:8] + b"WEBQ" + webp_lossy[12:])
    add("png_named_jpg.jpg", png)  # content sniffing, not the extension, decides
    add(
        "gif.gif",
        enc(rgb.convert("P"), "GIF"),
        expected="error",
        note="ongi decodes JPEG, PNG and WebP only; PIL also opens GIF",
    )
    add(
        "bmp.bmp",
        enc(rgb, "BMP"),
        expected="error",
        note="ongi decodes JPEG, PNG and WebP only; PIL also opens BMP",
    )

    # -- truncations
    for frac in (0.1, 0.25, 0.5, 0.75, 0.95):
        cut = int(len(jpg) * frac)
        add(f"truncated_jpeg_{int(frac * 100):02d}pct.jpg", jpg[:cut])
    add("truncated_jpeg_header_20b.jpg", jpg[:20])
    add("truncated_jpeg_no_eoi.jpg", jpg[:-2])
    for frac in (0.3, 0.7):
        add(f"truncated_progressive_{int(frac * 100)}pct.jpg", prog[: int(len(prog) * frac)])
    add("truncated_png_signature.png", png[:8])
    add("truncated_png_ihdr.png", png[:20])
    for frac in (0.25, 0.5, 0.9):
        add(f"truncated_png_{int(frac * 100)}pct.png", png[: int(len(png) * frac)])
    add(
        "truncated_png_no_iend.png",
        png[:-12],
        divergence="every pixel is present, only IEND is missing: PIL decodes it, "
        "ongi (image/png crate) reports unexpected end of file",
    )
    for frac in (0.1, 0.5, 0.9):
        add(f"truncated_webp_lossy_{int(frac * 100)}pct.webp", webp_lossy[: int(len(webp_lossy) * frac)])
    add("truncated_webp_lossless_50pct.webp", webp_lossless[: len(webp_lossless) // 2])

    # -- corrupted JPEG structure
    segs = jpeg_segments(jpg)
    dht = [off for off, m in segs if m == 0xC4]
    sos = [off for off, m in segs if m == 0xDA][0]
    # counts of the first DHT claim far more codes than the segment holds
    add("jpeg_dht_counts_ff.jpg", jpg[: dht[0] + 5] + b"\xff" * 16 + jpg[dht[0] + 21 :])
    # all code-length counts zero: an empty table
    add("jpeg_dht_counts_zero.jpg", jpg[: dht[0] + 5] + b"\x00" * 16 + jpg[dht[0] + 21 :])
    # a DHT whose class/id byte names table 7 (only 0..3 exist)
    add("jpeg_dht_bad_index.jpg", flip(jpg, dht[0] + 4, 0x07))
    # every DHT segment removed (libjpeg falls back to the standard tables)
    no_dht = bytearray()
    pos = 0
    for off, m in segs:
        if m == 0xC4:
            no_dht += jpg[pos:off]
            (length,) = struct.unpack(">H", jpg[off + 2 : off + 4])
            pos = off + 2 + length
    no_dht += jpg[pos:]
    add("jpeg_dht_removed.jpg", bytes(no_dht))
    dqt = [off for off, m in segs if m == 0xDB][0]
    add("jpeg_dqt_bad_length.jpg", jpg[: dqt + 2] + b"\x00\x01" + jpg[dqt + 4 :])
    sof = [off for off, m in segs if m == 0xC0][0]
    add("jpeg_sof_zero_height.jpg", jpg[: sof + 5] + b"\x00\x00" + jpg[sof + 7 :])
    add("jpeg_sof_two_components.jpg", jpg[: sof + 9] + b"\x02" + jpg[sof + 10 :])
    # damaged entropy-coded data: libjpeg warns and paints garbage/grey
    mid = sos + (len(jpg) - sos) // 2
    garbled = bytearray(jpg)
    for i in range(mid, mid + 64):
        if garbled[i] != 0xFF and garbled[i] ^ 0x5A != 0xFF:
            garbled[i] ^= 0x5A
    # (libjpeg-turbo's fast Huffman path decodes this without a warning: garbage, as in PIL)
    add("jpeg_entropy_garbled.jpg", bytes(garbled))
    # a restart marker in a scan without restart intervals: libjpeg warns and resyncs
    add(
        "jpeg_scan_stray_rst_marker.jpg",
        jpg[:mid] + b"\xff\xd3" + jpg[mid:],
        expected="error",
        note="ongi escalates libjpeg's damaged-scan warnings to errors (jpeg.rs "
        "warning_is_fatal, deliberate); PIL returns the partly grey image",
    )
    add("jpeg_trailing_garbage.jpg", jpg + b"\x00garbage after EOI" * 10)

    # -- corrupted PNG chunks
    chunks = png_chunks(png)
    ihdr_off = chunks[0][0]
    add("png_ihdr_bad_crc.png", flip(png, ihdr_off + 8 + 13 + 3))
    idat_off, idat_len, _ = [c for c in chunks if c[2] == b"IDAT"][0]
    add(
        "png_idat_bad_crc.png",
        flip(png, idat_off + 8 + idat_len + 3),
        expected="error",
        note="the png crate verifies every chunk CRC; PIL skips IDAT CRCs. A refused "
        "damaged file matches ongi's JPEG policy",
    )
    add("png_idat_zlib_corrupt.png", flip(png, idat_off + 8 + idat_len // 2, 0x55))
    add(
        "png_chunk_length_huge.png",
        png[:idat_off] + b"\x7f\xff\xff\xf0" + png[idat_off + 4 :],
        expected="error",
        note="an IDAT claiming 2 GB in a small file is truncated; PIL decodes what is there",
    )
    add("png_bad_color_type.png", png_raw(4, 4, 8, 5, zlib.compress(b"\x00" * 20)))
    add("png_bad_bit_depth.png", png_raw(4, 4, 7, 2, zlib.compress(b"\x00" * 52)))
    add("png_zero_width.png", png_raw(0, 4, 8, 2, zlib.compress(b"")))
    add("png_idat_too_short.png", png_raw(64, 64, 8, 2, zlib.compress(b"\x00" * 100)))
    add(
        "png_unknown_critical_chunk.png",
        png[:idat_off] + png_chunk(b"ABCD", b"hello") + png[idat_off:],
        expected="error",
        note="the PNG spec requires refusing unknown critical chunks (the png crate "
        "does); PIL ignores them",
    )

    # -- decompression bombs: tiny files claiming huge images
    add("bomb_png_100k_x_100k.png", png_raw(100_000, 100_000, 8, 2, zlib.compress(b"\x00" * 1000)))
    add("bomb_jpeg_65k_x_65k.jpg", jpg[: sof + 5] + struct.pack(">HH", 65000, 65000) + jpg[sof + 9 :])
    # VP8L header: 14-bit width-1 and height-1 fields, 16384 x 16384 = 268 MP
    vp8l_bits = (16383) | (16383 << 14)
    vp8l = b"\x2f" + struct.pack("<I", vp8l_bits) + b"\x00" * 32
    add(
        "bomb_webp_16k_x_16k.webp",
        b"RIFF" + struct.pack("<I", 4 + 8 + len(vp8l)) + b"WEBP" + b"VP8L" + struct.pack("<I", len(vp8l)) + vp8l,
    )
    # real zlib bombs: every row filter 0 + zero pixels, compressed ~1000:1
    w = h = 8000  # 64 MP greyscale: under ongi's 100 MP cap, decodes for real
    add("bomb_png_zlib_64mp_grey.png", png_raw(w, h, 8, 0, zlib.compress(b"\x00" * ((w + 1) * h), 9)))
    w = h = 11000  # 121 MP: over ongi's cap, under PIL's 179 MP refusal (it only warns)
    add(
        "bomb_png_zlib_121mp_grey.png",
        png_raw(w, h, 8, 0, zlib.compress(b"\x00" * ((w + 1) * h), 9)),
        expected="error",
        note="over ongi's documented --max-image-pixels default (100 MP); "
        "PIL only warns between 89 and 179 MP",
    )

    # -- EXIF: huge, odd orientations, garbage
    body = jpg[2:]
    big = exif_bytes(orientation=6, pad=65000)
    assert len(big) + 2 <= 65535, len(big)
    # Exif.tobytes() already starts with b"Exif\0\0", the APP1 payload prefix
    add("exif_huge_64k_app1.jpg", b"\xff\xd8" + app1(big) + body)
    for o in range(1, 9):
        add(f"exif_orientation_{o}.jpg", b"\xff\xd8" + app1(exif_bytes(o)) + body)
    add("exif_orientation_0.jpg", b"\xff\xd8" + app1(exif_bytes(0)) + body)
    add("exif_orientation_9.jpg", b"\xff\xd8" + app1(exif_bytes(9)) + body)
    add(
        "exif_double_prefix_orientation_6.jpg",
        b"\xff\xd8" + app1(b"Exif\x00\x00" + exif_bytes(6)) + body,
        divergence="APP1 payload 'Exif\\0\\0Exif\\0\\0MM...' (a buggy writer): PIL still "
        "finds orientation 6, ongi (jpeg.rs orientation()) strips one prefix and ignores it",
    )
    add("exif_garbage_ifd.jpg", b"\xff\xd8" + app1(b"Exif\x00\x00MM\x00\x2a\xff\xff\xff\xf0" + b"\xab" * 40) + body)
    add("exif_truncated_ifd.jpg", b"\xff\xd8" + app1(exif_bytes(6)[:20]) + body)
    add("png_exif_orientation_6.png", enc(rgb, "PNG", exif=exif_bytes(6)))
    add("webp_exif_orientation_8.webp", enc(rgb, "WEBP", quality=80, exif=exif_bytes(8)))

    # -- legitimate but unusual variants
    add("cmyk.jpg", enc(rgb.convert("CMYK"), "JPEG", quality=90))
    add("grey.jpg", enc(rgb.convert("L"), "JPEG", quality=90))
    add("progressive.jpg", prog)
    add("jpeg_444.jpg", enc(rgb, "JPEG", quality=90, subsampling=0))
    add("jpeg_restart_markers.jpg", enc(rgb, "JPEG", quality=90, restart_marker_blocks=1))
    arr = np.asarray(rgb, dtype=np.uint16) * 257 + np.arange(160, dtype=np.uint16)[None, :, None]
    add("png16_rgb.png", png16(arr, alpha=False))
    add("png16_grey.png", png16(arr[..., :1], alpha=False))
    add("png16_rgba.png", png16(arr, alpha=True))
    add("png16_grey_alpha.png", png16(arr[..., :1], alpha=True))
    add("grey.png", enc(rgb.convert("L"), "PNG"))
    add("grey_alpha.png", enc(rgb.convert("LA"), "PNG"))
    add("palette.png", enc(rgb.convert("P", palette=Image.Palette.ADAPTIVE, colors=64), "PNG"))
    pal = rgb.convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    add("palette_trns.png", enc(pal, "PNG", transparency=3))
    add("bilevel_1bit.png", enc(rgb.convert("1"), "PNG"))
    rgba = rgb.convert("RGBA")
    rgba.putalpha(Image.linear_gradient("L").resize(rgb.size))
    add("rgba.png", enc(rgba, "PNG"))
    add("rgba.webp", enc(rgba, "WEBP", quality=80))
    add("rgba_lossless.webp", enc(rgba, "WEBP", lossless=True))
    add("interlaced.png", png_interlaced(rgb))
    add("one_by_one.jpg", enc(rgb.resize((1, 1)), "JPEG"))
    add("one_by_one.png", enc(rgb.resize((1, 1)), "PNG"))
    add("one_by_one.webp", enc(rgb.resize((1, 1)), "WEBP", lossless=True))
    tall = rgb.resize((1, 4000))
    wide = rgb.resize((4000, 1))
    add("tall_1x4000.png", enc(tall, "PNG"))
    add("wide_4000x1.png", enc(wide, "PNG"))
    add("tall_1x4000.jpg", enc(tall, "JPEG"))
    add("wide_4000x1.jpg", enc(wide, "JPEG"))
    frames = [rgb, rgb.transpose(Image.Transpose.FLIP_LEFT_RIGHT), rgb.rotate(180)]
    add("animated.webp", enc(frames[0], "WEBP", save_all=True, append_images=frames[1:], duration=100, loop=0, lossless=True))
    add("animated.png", enc(frames[0], "PNG", save_all=True, append_images=frames[1:], duration=100, loop=0))

    manifest = []
    total = 0
    for entry, data in entries:
        (out / entry["file"]).write_bytes(data)
        total += len(data)
        manifest.append(entry)
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1, ensure_ascii=False) + "\n")
    print(f"{len(manifest)} files, {total} bytes -> {out}")
    assert total < 2_000_000, total


def png16(arr, alpha):
    """16-bit PNG (grey or RGB, optionally with a gradient alpha) written by hand."""
    h, w, c = arr.shape
    a = np.broadcast_to((np.arange(w, dtype=np.uint16) * 400)[None, :, None], (h, w, 1))
    px = np.concatenate([arr, a], axis=2) if alpha else arr
    color_type = {1: 0, 2: 4, 3: 2, 4: 6}[px.shape[2]]
    raw = b"".join(b"\x00" + px[y].astype(">u2").tobytes() for y in range(h))
    return png_raw(w, h, 16, color_type, zlib.compress(raw, 9))


def png_interlaced(im):
    """Adam7-interlaced RGB PNG built by hand (Pillow cannot write interlaced PNGs)."""
    a = np.asarray(im)
    h, w, _ = a.shape
    passes = [(0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2)]
    raw = b""
    for x0, y0, dx, dy in passes:
        sub = a[y0::dy, x0::dx]
        if sub.size == 0:
            continue
        raw += b"".join(b"\x00" + row.tobytes() for row in sub)
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 1)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", ihdr)
        + png_chunk(b"IDAT", zlib.compress(raw, 9))
        + png_chunk(b"IEND", b"")
    )


if __name__ == "__main__":
    main()
