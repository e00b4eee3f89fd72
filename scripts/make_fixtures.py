#!/usr/bin/env python3
"""Build ongi's CLIP test fixtures, with Hugging Face `transformers` as the reference.

No model weights can be downloaded in ongi's environment, so the fixtures are
Hugging Face-format CLIP directories with *seeded random* weights (same file
layout as `openai/clip-vit-base-patch32`, so a real checkpoint loads the same
way) and reference embeddings computed by `transformers` on those weights.

With no arguments this (re)writes, under `tests/fixtures/` (see its README.md):

    tiny-clip/                      tiny random CLIPModel (quick_gelu, legacy
                                    argmax pooling: text eos_token_id = 2)
    tiny-clip-gelu/                 second tiny variant (gelu, eps 1e-6, 64 px,
                                    patch 16, eos_token_id 49407 pooling)
    tiny-clip.reference.json        image + text embeddings from transformers
    tiny-clip-gelu.reference.json
    pixels.reference.safetensors    CLIPImageProcessor (PIL) pixel_values, 224 px
    pixels64.reference.safetensors  the same for the 64 px preprocessor
    photos/                         the test photos (only built when missing,
                                    or with --rebuild-photos)

Other modes:

    --full [OUT_DIR]   full-size ViT-B/32-shaped random checkpoint in
                       OUT_DIR/vit-b32-random/ and OUT_DIR/vit-b32-random.reference.json
                       (default OUT_DIR: ~/.cache/ongi). Not committed (~600 MB).
    --onnx             with --full: also export the vision tower
                       (get_image_features) to OUT_DIR/vit-b32-random/vision.onnx
                       (best effort; checked with onnxruntime when installed).

Inputs it fetches:

    * OpenAI's CLIP BPE vocabulary `bpe_simple_vocab_16e6.txt.gz`: --bpe PATH, or
      by default `pip download --no-deps open-clip-torch==3.3.0` and read it
      out of the wheel.
    * Photos (only when building photos/): Debian's `mate-backgrounds` package,
      nature/*.jpg. --photos-src DIR points at an unpacked `.../mate/nature`
      directory; otherwise `apt-get download mate-backgrounds` + `dpkg -x` into a
      temp dir.

Everything is deterministic: fixed seeds for weights and for the corrupt file;
the reference computations are CPU f32; reruns are byte-identical (checked).
Regenerate with the pinned environment in scripts/requirements-fixtures.txt.
"""

from __future__ import annotations

import argparse
import gzip
import html
import json
import math
import os
import random
import shutil
import subprocess
import sys
import tempfile
import unicodedata
import zipfile
from pathlib import Path

import numpy as np
import PIL
import regex
import safetensors
import safetensors.torch
import tokenizers
import torch
import transformers
from PIL import Image, ImageOps
from transformers import CLIPConfig, CLIPModel, CLIPTokenizer

# In transformers 5.x `CLIPImageProcessor` is the torchvision ("fast") backend and
# `CLIPImageProcessorPil` the PIL/NumPy one (the old "slow" processor). We want the
# PIL one: it resizes with Pillow's bicubic on uint8, which is what ongi matches.
# In transformers 4.x the PIL one is `CLIPImageProcessor` itself.
try:
    from transformers import CLIPImageProcessorPil as PilClipImageProcessor
except ImportError:  # transformers 4.x
    from transformers import CLIPImageProcessor as PilClipImageProcessor

REPO_ROOT = Path(__file__).resolve().parent.parent
FIXTURES = REPO_ROOT / "tests" / "fixtures"
PHOTOS = FIXTURES / "photos"

OPEN_CLIP_VERSION = "3.3.0"
BPE_IN_WHEEL = "open_clip/bpe_simple_vocab_16e6.txt.gz"
CONTEXT_LENGTH = 77

# CLIP's normalisation constants (OPENAI_CLIP_MEAN / OPENAI_CLIP_STD).
CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]

# ---------------------------------------------------------------------------
# Text prompts: edge cases for the tokenizer and the text tower.
# ---------------------------------------------------------------------------
LONG_PROMPT = (
    "a very long caption that keeps going: a family of four standing on a windy beach at sunset, "
    "two children holding a red kite, a golden retriever running through the shallow waves, "
    "seagulls overhead, footprints in the wet sand, a lighthouse on the cliffs in the distance, "
    "warm orange light on everyone's faces, and a picnic blanket with sandwiches, fruit and "
    "lemonade that nobody has touched yet because the kite is far more interesting"
)
PROMPTS = [
    "a photo of a cat",                      # plain
    "  A PHOTO   of a\tDOG\n ",              # upper case, tab/newline/extra spaces
    "it's a dog's life!",                    # apostrophes ('s contraction), punctuation
    "3 kids, 12 balloons and 2024 candles",  # digits (CLIP splits numbers digit by digit)
    "a good photo",                          # CLIP-IQA prompts
    "a blurry photo",
    "가족 여행 사진",                          # Korean ("family trip photos")
    "a birthday cake 🎂 with candles",        # emoji (byte-level BPE)
    "café crème brûlée à Noël",              # precomposed accented letters
    "cafe\u0301 de\u0301cor",                # decomposed accents (NFC normaliser)
    "",                                      # empty: just BOS + EOS
    LONG_PROMPT,                             # > 77 tokens: truncated, last id is EOS
]

# ---------------------------------------------------------------------------
# Model variants.
# ---------------------------------------------------------------------------
# The text config of openai/clip-vit-base-patch32 carries bos 0 / pad 1 / eos 2
# (pre-PR#24773 values). transformers keeps `eos_token_id == 2` as the switch for
# the legacy pooling (argmax over the input ids, i.e. the position of the
# highest id = <|endoftext|> 49407). NB: transformers 5.x changed the *default*
# CLIPTextConfig.eos_token_id to 49407, so we set 0/1/2 explicitly to stay in the
# real checkpoint's configuration.
LEGACY_SPECIAL_IDS = dict(bos_token_id=0, pad_token_id=1, eos_token_id=2)

MODELS = {
    "tiny-clip": dict(
        seed=1234,
        image_size=224,
        grid_token_embedding=True,
        config=dict(
            vision_config=dict(
                image_size=224, patch_size=32, hidden_size=64, num_hidden_layers=2,
                num_attention_heads=4, intermediate_size=256, hidden_act="quick_gelu",
                projection_dim=32,
            ),
            text_config=dict(
                vocab_size=49408, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                intermediate_size=128, max_position_embeddings=77, hidden_act="quick_gelu",
                projection_dim=32, **LEGACY_SPECIAL_IDS,
            ),
            projection_dim=32,
        ),
        pixels_file="pixels.reference.safetensors",
    ),
    "tiny-clip-gelu": dict(
        seed=5678,
        image_size=64,
        grid_token_embedding=True,
        config=dict(
            vision_config=dict(
                image_size=64, patch_size=16, hidden_size=64, num_hidden_layers=2,
                num_attention_heads=4, intermediate_size=256, hidden_act="gelu",
                layer_norm_eps=1e-6, projection_dim=24,
            ),
            text_config=dict(
                vocab_size=49408, hidden_size=16, num_hidden_layers=2, num_attention_heads=4,
                intermediate_size=64, max_position_embeddings=77, hidden_act="gelu",
                layer_norm_eps=1e-6, projection_dim=24,
                # Non-legacy pooling: first position whose id == eos_token_id.
                bos_token_id=49406, pad_token_id=1, eos_token_id=49407,
            ),
            projection_dim=24,
        ),
        pixels_file="pixels64.reference.safetensors",
    ),
}

# Full-size ViT-B/32 (the shapes of openai/clip-vit-base-patch32 = CLIPConfig()
# defaults: vision 768 x 12 layers x 12 heads, patch 32; text 512 x 12 x 8;
# projection 512; quick_gelu), with the real checkpoint's special ids.
FULL_MODEL = dict(
    name="vit-b32-random",
    seed=4242,
    image_size=224,
    config=dict(text_config=dict(**LEGACY_SPECIAL_IDS)),
)

# ---------------------------------------------------------------------------
# Photos (sources are Debian mate-backgrounds nature/*.jpg photographs).
# ---------------------------------------------------------------------------
# name -> (source file, kind, extra)
PHOTO_SPECS = [
    ("landscape_dune.jpg", "Dune.jpg", "landscape", {}),
    ("landscape_ladybird.jpg", "LadyBird.jpg", "landscape", {}),
    ("landscape_storm_progressive.jpg", "Storm.jpg", "landscape", {"progressive": True}),
    ("landscape_meadow_444.jpg", "GreenMeadow.jpg", "landscape", {"subsampling": 0}),
    ("portrait_yellowflower.jpg", "YellowFlower.jpg", "portrait", {}),
    ("rgb_garden.png", "Garden.jpg", "png", {}),
    ("lossless_freshflower.webp", "FreshFlower.jpg", "webp", {}),
    ("rgba_aqua.png", "Aqua.jpg", "rgba", {}),
    ("grey_wood.jpg", "Wood.jpg", "grey", {}),
    ("small_raindrops_180x120.png", "RainDrops.jpg", "small", {}),
    ("exif_orientation6_twowings.jpg", "TwoWings.jpg", "exif", {"orientation": 6}),
    ("exif_orientation3_blinds.jpg", "Blinds.jpg", "exif", {"orientation": 3}),
]
CORRUPT_NAME = "corrupt.jpg"
CORRUPT_SEED = 99
EXIF_ORIENTATION_TAG = 0x0112


def log(msg: str) -> None:
    print(msg, flush=True)


# ===========================================================================
# 1. Tokenizer
# ===========================================================================

def fetch_bpe(bpe_arg: str | None, tmp: Path) -> bytes:
    """Return the gzipped BPE merges file (bytes)."""
    if bpe_arg:
        return Path(bpe_arg).read_bytes()
    log(f"downloading open-clip-torch=={OPEN_CLIP_VERSION} wheel (for its BPE vocabulary)")
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
         "-d", str(tmp), f"open-clip-torch=={OPEN_CLIP_VERSION}"],
        check=True,
    )
    wheels = sorted(tmp.glob("open_clip_torch-*.whl"))
    if not wheels:
        raise SystemExit("pip download did not produce an open_clip_torch wheel")
    with zipfile.ZipFile(wheels[0]) as zf:
        return zf.read(BPE_IN_WHEEL)


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2 / CLIP byte -> printable unicode char table (256 entries)."""
    bs = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
          + list(range(ord("®"), ord("ÿ") + 1)))
    cs = bs[:]
    n = 0
    for b in range(2 ** 8):
        if b not in bs:
            bs.append(b)
            cs.append(2 ** 8 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs]))


def build_vocab_and_merges(bpe_gz: bytes) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Exactly OpenAI CLIP's `SimpleTokenizer` vocabulary (= HF's vocab.json):
    256 byte chars, the same with `</w>`, 48894 merges, then the two specials."""
    lines = gzip.decompress(bpe_gz).decode("utf-8").split("\n")
    merges = [tuple(m.split()) for m in lines[1:49152 - 256 - 2 + 1]]
    vocab = list(bytes_to_unicode().values())
    vocab = vocab + [v + "</w>" for v in vocab]
    vocab += ["".join(m) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    assert len(vocab) == 49408 and len(set(vocab)) == 49408, len(vocab)
    return {t: i for i, t in enumerate(vocab)}, merges


class OpenAIClipBPE:
    """Independent re-implementation of OpenAI's `simple_tokenizer.py` (as in
    openai/CLIP and open_clip) used to cross-check the HF tokenizer.json.
    Differences from the original: `ftfy.fix_text` is replaced by NFC
    normalisation (what fix_text does to the clean prompts used here)."""

    def __init__(self, vocab: dict[str, int], merges: list[tuple[str, str]]):
        self.encoder = vocab
        self.byte_encoder = bytes_to_unicode()
        self.bpe_ranks = {m: i for i, m in enumerate(merges)}
        self.pat = regex.compile(
            r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""",
            regex.IGNORECASE,
        )

    def bpe(self, token: str) -> list[str]:
        word = tuple(token[:-1]) + (token[-1] + "</w>",)
        while len(word) > 1:
            pairs = {(word[i], word[i + 1]) for i in range(len(word) - 1)}
            best = min(pairs, key=lambda p: self.bpe_ranks.get(p, math.inf))
            if best not in self.bpe_ranks:
                break
            first, second = best
            new_word, i = [], 0
            while i < len(word):
                if i < len(word) - 1 and word[i] == first and word[i + 1] == second:
                    new_word.append(first + second)
                    i += 2
                else:
                    new_word.append(word[i])
                    i += 1
            word = tuple(new_word)
        return list(word)

    def encode(self, text: str, context_length: int = CONTEXT_LENGTH) -> list[int]:
        text = unicodedata.normalize("NFC", text)
        text = html.unescape(html.unescape(text)).strip()
        text = " ".join(text.split()).strip().lower()
        ids = []
        for tok in regex.findall(self.pat, text):
            tok = "".join(self.byte_encoder[b] for b in tok.encode("utf-8"))
            ids.extend(self.encoder[t] for t in self.bpe(tok))
        ids = [self.encoder["<|startoftext|>"]] + ids + [self.encoder["<|endoftext|>"]]
        if len(ids) > context_length:  # open_clip: truncate, force EOT last
            ids = ids[:context_length]
            ids[-1] = self.encoder["<|endoftext|>"]
        return ids


def build_tokenizer(bpe_gz: bytes, out_dir: Path, with_vocab_files: bool) -> dict:
    """Write the HF tokenizer (tokenizer.json + tokenizer_config.json, and
    optionally vocab.json + merges.txt) to out_dir and verify it. Returns the
    tokenization of every prompt, for the summary."""
    vocab, merges = build_vocab_and_merges(bpe_gz)
    with tempfile.TemporaryDirectory() as td:
        src = Path(td)
        # vocab.json / merges.txt exactly as in openai/clip-vit-base-patch32.
        (src / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
        (src / "merges.txt").write_text(
            "#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n", encoding="utf-8")
        tok = CLIPTokenizer(vocab=str(src / "vocab.json"), merges=str(src / "merges.txt"),
                            model_max_length=CONTEXT_LENGTH)
        out_dir.mkdir(parents=True, exist_ok=True)
        tok.save_pretrained(str(out_dir))
        if with_vocab_files:
            shutil.copy(src / "vocab.json", out_dir / "vocab.json")
            shutil.copy(src / "merges.txt", out_dir / "merges.txt")
    # Re-serialise tokenizer.json without pretty-printing (same content, half the
    # bytes: 1.7 MB instead of 3.6 MB per model directory).
    tok_json = out_dir / "tokenizer.json"
    tokenizers.Tokenizer.from_file(str(tok_json)).save(str(tok_json), pretty=False)
    # transformers 5 writes loader bookkeeping into tokenizer_config.json; drop it.
    cfg_path = out_dir / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text())
    for k in ("is_local", "local_files_only"):
        cfg.pop(k, None)
    cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True, ensure_ascii=False) + "\n")

    return verify_tokenizer(out_dir, OpenAIClipBPE(vocab, merges))


def verify_tokenizer(model_dir: Path, openai_bpe: OpenAIClipBPE) -> dict:
    """The Rust side loads only tokenizer.json (tokenizers crate) and enables
    truncation to 77. Check that this alone gives the reference ids."""
    ref = CLIPTokenizer.from_pretrained(str(model_dir))
    assert ref.model_max_length == CONTEXT_LENGTH, ref.model_max_length
    raw = tokenizers.Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    raw.enable_truncation(max_length=CONTEXT_LENGTH)
    out = {}
    for text in PROMPTS:
        want = ref(text, truncation=True, max_length=CONTEXT_LENGTH)["input_ids"]
        got = raw.encode(text).ids
        if got != want:
            raise SystemExit(f"TOKENIZER MISMATCH (tokenizer.json vs CLIPTokenizer) for {text!r}:\n"
                             f"  tokenizer.json: {got}\n  CLIPTokenizer: {want}")
        oa = openai_bpe.encode(text)
        if oa != want:
            raise SystemExit(f"TOKENIZER MISMATCH (CLIPTokenizer vs OpenAI BPE) for {text!r}:\n"
                             f"  OpenAI: {oa}\n  CLIPTokenizer: {want}")
        assert want[0] == 49406 and want[-1] == 49407 and len(want) <= CONTEXT_LENGTH
        out[text] = want
    # Known ids (openai/clip-vit-base-patch32): "a photo of a cat".
    assert out["a photo of a cat"] == [49406, 320, 1125, 539, 320, 2368, 49407], out["a photo of a cat"]
    assert out[""] == [49406, 49407]
    assert len(out[LONG_PROMPT]) == CONTEXT_LENGTH
    assert len(openai_bpe.encode(LONG_PROMPT, context_length=10 ** 6)) > CONTEXT_LENGTH
    return out


# ===========================================================================
# 2. Photos
# ===========================================================================

def find_photo_sources(src_arg: str | None, tmp: Path) -> Path:
    if src_arg:
        return Path(src_arg)
    log("fetching Debian mate-backgrounds (apt-get download + dpkg -x)")
    subprocess.run(["apt-get", "download", "mate-backgrounds"], cwd=tmp, check=True)
    debs = sorted(tmp.glob("mate-backgrounds_*.deb"))
    if not debs:
        raise SystemExit("apt-get download mate-backgrounds produced no .deb")
    subprocess.run(["dpkg", "-x", str(debs[0]), str(tmp / "mate")], check=True)
    return tmp / "mate" / "usr" / "share" / "backgrounds" / "mate" / "nature"


def resize_long_side(im: Image.Image, long_side: int) -> Image.Image:
    w, h = im.size
    s = long_side / max(w, h)
    return im.resize((round(w * s), round(h * s)), Image.Resampling.LANCZOS)


def build_photos(src_dir: Path) -> None:
    """Derive every fixture photo from the mate nature photographs. Written
    without EXIF/ICC unless stated (PIL does not copy them by default)."""
    if PHOTOS.exists():
        shutil.rmtree(PHOTOS)
    PHOTOS.mkdir(parents=True)
    for name, src, kind, extra in PHOTO_SPECS:
        im = Image.open(src_dir / src)
        im = ImageOps.exif_transpose(im).convert("RGB")
        dst = PHOTOS / name
        if kind == "landscape":
            resize_long_side(im, 640).save(dst, "JPEG", quality=90, **extra)
        elif kind == "portrait":
            # centre 2:3 portrait crop, long side 640
            w, h = im.size
            cw = h * 2 // 3
            im = im.crop(((w - cw) // 2, 0, (w - cw) // 2 + cw, h))
            resize_long_side(im, 640).save(dst, "JPEG", quality=90)
        elif kind == "png":
            # short side 240: barely above 224, so the resize is a mild downscale
            resize_long_side(im, 384).save(dst, "PNG", optimize=True)
        elif kind == "webp":
            resize_long_side(im, 400).save(dst, "WEBP", lossless=True, quality=100, method=6)
        elif kind == "rgba":
            # RGB photo + a radial alpha (opaque centre, ~transparent corners).
            # Note: the reference pipeline does `.convert("RGB")`, which DROPS alpha
            # (it does not composite onto a background).
            im = resize_long_side(im, 384)
            w, h = im.size
            yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
            r = np.sqrt(((xx - w / 2) / (w / 2)) ** 2 + ((yy - h / 2) / (h / 2)) ** 2)
            alpha = np.clip(255 * (1.3 - r), 8, 255).astype(np.uint8)
            im = im.copy()
            im.putalpha(Image.fromarray(alpha, "L"))
            im.save(dst, "PNG", optimize=True)
        elif kind == "grey":
            resize_long_side(im, 640).convert("L").save(dst, "JPEG", quality=90)
        elif kind == "small":
            # 180x120: short side 120 < 224, so CLIP's resize upsamples.
            w, h = im.size
            cw = h * 3 // 2
            im = im.crop(((w - cw) // 2, 0, (w - cw) // 2 + cw, h))
            im.resize((180, 120), Image.Resampling.LANCZOS).save(dst, "PNG", optimize=True)
        elif kind == "exif":
            # Store the raw pixels rotated so that applying the EXIF orientation
            # yields the upright photo. exif_transpose applies, for orientation
            # 6: ROTATE_270 (90 deg clockwise), for 3: ROTATE_180. So the raw
            # pixels are the upright image rotated by the inverse.
            upright = resize_long_side(im, 640)
            orientation = extra["orientation"]
            inverse = {6: Image.Transpose.ROTATE_90, 3: Image.Transpose.ROTATE_180,
                       8: Image.Transpose.ROTATE_270}[orientation]
            raw = upright.transpose(inverse)
            exif = Image.Exif()
            exif[EXIF_ORIENTATION_TAG] = orientation
            raw.save(dst, "JPEG", quality=90, exif=exif.tobytes())
            # Check: decoding + exif_transpose gives back the upright photo.
            back = ImageOps.exif_transpose(Image.open(dst)).convert("RGB")
            assert back.size == upright.size, (back.size, upright.size)
            diff = np.abs(np.asarray(back, np.float32) - np.asarray(upright, np.float32)).mean()
            assert diff < 4.0, f"{name}: orientation round trip differs by {diff}"
        else:
            raise AssertionError(kind)
    write_corrupt_jpeg(PHOTOS / "landscape_dune.jpg", PHOTOS / CORRUPT_NAME)


def write_corrupt_jpeg(src: Path, dst: Path) -> None:
    """A JPEG that no decoder can read: a real file's SOI + headers, cut inside
    the header segments and followed by seeded garbage (no SOS, no EOI)."""
    data = src.read_bytes()
    rng = random.Random(CORRUPT_SEED)
    garbage = bytes(rng.randrange(256) for _ in range(1024))
    dst.write_bytes(data[:300] + garbage)
    try:
        with Image.open(dst) as im:
            im.load()
    except Exception as e:  # noqa: BLE001 - any failure is what we want
        log(f"  {CORRUPT_NAME}: PIL fails as intended ({type(e).__name__}: {e})")
        return
    raise SystemExit(f"{dst} unexpectedly decodes with PIL")


def photo_files() -> list[Path]:
    files = [PHOTOS / name for name, *_ in PHOTO_SPECS]
    missing = [f for f in files if not f.exists()]
    if missing:
        raise SystemExit(f"missing photos: {missing} (run with --rebuild-photos)")
    return files


def load_photo(path: Path) -> Image.Image:
    """The reference decode: PIL, EXIF orientation applied, then RGB (alpha dropped)."""
    with Image.open(path) as im:
        im.load()
        return ImageOps.exif_transpose(im).convert("RGB")


# ===========================================================================
# 3. Models
# ===========================================================================

def randomize_(model: CLIPModel, seed: int, grid_token_embedding: bool = False) -> None:
    """Re-initialise every parameter with seeded noise scaled so activations stay
    O(1) through the network and every parameter matters: LayerNorm gammas/betas
    and all biases are non-trivial (default init leaves them at 1/0, which would
    hide a loader that forgets them), and the class embedding does not dominate
    the image features (with the default init all photos embed almost alike)."""
    g = torch.Generator().manual_seed(seed)

    def randn(shape):
        return torch.randn(shape, generator=g, dtype=torch.float32)

    with torch.no_grad():
        for name, p in model.named_parameters():  # deterministic module order
            if name == "logit_scale":
                continue
            if "layer_norm" in name or "layrnorm" in name or "layernorm" in name:
                p.copy_((1.0 if name.endswith("weight") else 0.0) + 0.2 * randn(p.shape))
            elif name.endswith("class_embedding"):
                p.copy_(0.5 * randn(p.shape))
            elif name.endswith("position_embedding.weight"):
                p.copy_(0.5 * randn(p.shape))
            elif name.endswith("token_embedding.weight"):
                t = randn(p.shape)
                if grid_token_embedding:
                    # Committed tiny fixtures: snap the (49408 x hidden) table to
                    # multiples of 1/256 so git can compress it (~45% instead of
                    # ~93% of its size). Still f32, still random.
                    t = torch.round(t * 256.0) / 256.0
                p.copy_(t)
            elif name.endswith(".bias"):
                p.copy_(0.1 * randn(p.shape))
            elif p.dim() >= 2:  # Linear / Conv2d weights: ~ 1/sqrt(fan_in)
                fan_in = p[0].numel()
                p.copy_(randn(p.shape) / math.sqrt(fan_in))
            else:
                raise AssertionError(f"unhandled parameter {name} {tuple(p.shape)}")


def write_preprocessor(model_dir: Path, image_size: int) -> None:
    proc = PilClipImageProcessor(
        do_resize=True, size={"shortest_edge": image_size}, resample=3,  # PIL.Image.BICUBIC
        do_center_crop=True, crop_size={"height": image_size, "width": image_size},
        do_rescale=True, rescale_factor=1 / 255, do_normalize=True,
        image_mean=CLIP_MEAN, image_std=CLIP_STD, do_convert_rgb=True,
    )
    proc.save_pretrained(str(model_dir))
    cfg = json.loads((model_dir / "preprocessor_config.json").read_text())
    assert cfg["size"] == {"shortest_edge": image_size} and cfg["resample"] == 3, cfg
    assert cfg["crop_size"] == {"height": image_size, "width": image_size}, cfg


def build_model_dir(name: str, spec: dict, model_dir: Path, bpe_gz: bytes,
                    with_vocab_files: bool) -> None:
    if model_dir.exists():
        shutil.rmtree(model_dir)
    model_dir.mkdir(parents=True)
    torch.manual_seed(spec["seed"])
    config = CLIPConfig(**spec["config"])
    model = CLIPModel(config).to(torch.float32).eval()
    randomize_(model, spec["seed"], grid_token_embedding=spec.get("grid_token_embedding", False))
    model.save_pretrained(str(model_dir))  # transformers 5 always writes safetensors
    assert (model_dir / "model.safetensors").exists(), os.listdir(model_dir)
    build_tokenizer(bpe_gz, model_dir, with_vocab_files)
    write_preprocessor(model_dir, spec["image_size"])
    cfg = json.loads((model_dir / "config.json").read_text())
    want_eos = spec["config"]["text_config"].get("eos_token_id")
    assert cfg["text_config"]["eos_token_id"] == want_eos, cfg["text_config"]
    log(f"  wrote {model_dir} ({human(dir_size(model_dir))})")


# ===========================================================================
# 4. References
# ===========================================================================

def f32_list(t: torch.Tensor) -> list[float]:
    """Floats whose shortest decimal form parses back to the exact f32 values."""
    arr = t.detach().cpu().numpy().astype(np.float32).ravel()
    return [float(np.format_float_positional(x, unique=True, trim="-")) for x in arr]


def compute_reference(name: str, model_dir: Path, photos: list[Path], out_json: Path,
                      pixels_out: Path | None) -> dict:
    model = CLIPModel.from_pretrained(str(model_dir), attn_implementation="eager",
                                      dtype=torch.float32).eval()
    proc = PilClipImageProcessor.from_pretrained(str(model_dir))
    # Make sure this is the PIL/NumPy processor (Pillow bicubic), not torchvision.
    assert getattr(proc, "backend", "pil") == "pil", type(proc)
    assert "Torchvision" not in type(proc).__name__ and "Fast" not in type(proc).__name__, type(proc)
    tok = CLIPTokenizer.from_pretrained(str(model_dir))
    size = model.config.vision_config.image_size

    images, pixels = [], {}
    with torch.no_grad():
        for path in photos:
            rel = path.relative_to(FIXTURES).as_posix()
            pv = proc(images=load_photo(path), return_tensors="pt")["pixel_values"]
            assert pv.shape == (1, 3, size, size) and pv.dtype == torch.float32, pv.shape
            pixels[rel] = pv[0].contiguous()
            emb = model.get_image_features(pixel_values=pv)
            # transformers 5: get_*_features return a ModelOutput whose
            # pooler_output is the projected embedding (4.x returned the tensor).
            emb = getattr(emb, "pooler_output", emb)[0]
            images.append({"file": rel, "embedding": f32_list(emb)})
        texts = []
        for text in PROMPTS:
            ids = tok(text, truncation=True, max_length=CONTEXT_LENGTH)["input_ids"]
            emb = model.get_text_features(input_ids=torch.tensor([ids], dtype=torch.long))
            emb = getattr(emb, "pooler_output", emb)[0]
            texts.append({"text": text, "input_ids": ids, "embedding": f32_list(emb)})

    check_not_degenerate(name, images, texts)
    report_sensitivity(name, model, model_dir, photos, images)
    cross_check_sdpa(model_dir, photos[0], PROMPTS[0], images[0], texts[0], proc, tok)

    ref = {
        "model": name,
        "generator": {
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "pillow": PIL.__version__,
            "tokenizers": tokenizers.__version__,
            "numpy": np.__version__,
        },
        "images": images,
        "texts": texts,
    }
    out_json.write_text(json.dumps(ref, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    log(f"  wrote {out_json} ({human(out_json.stat().st_size)})")
    if pixels_out is not None:
        # One metadata key only: safetensors writes the metadata map in hash
        # order, so several keys would make the file bytes vary between runs.
        safetensors.torch.save_file(
            pixels, str(pixels_out),
            metadata={"producer": f"scripts/make_fixtures.py ({type(proc).__name__})"})
        log(f"  wrote {pixels_out} ({human(pixels_out.stat().st_size)})")
    return ref


def cosine_matrix(vectors: list[list[float]]) -> np.ndarray:
    m = np.asarray(vectors, dtype=np.float64)
    m /= np.linalg.norm(m, axis=1, keepdims=True)
    return m @ m.T


def check_not_degenerate(name: str, images: list[dict], texts: list[dict]) -> None:
    """Embeddings of different inputs must differ clearly, otherwise a parity
    test at cosine 0.99999 would not notice a wrong image/text path."""
    # Random towers mostly respond to colour statistics, so similar-coloured
    # photos (two green leaf close-ups) embed alike; require distinct inputs to
    # stay distinguishable and the set as a whole to be spread out.
    for kind, items in (("image", images), ("text", texts)):
        vecs = [it["embedding"] for it in items]
        assert all(np.isfinite(v).all() and np.linalg.norm(v) > 1e-3 for v in vecs), kind
        c = cosine_matrix(vecs)
        off = c[~np.eye(len(c), dtype=bool)]
        log(f"  {name}: {kind} pairwise cosine min {off.min():+.3f} mean {off.mean():+.3f} "
            f"max {off.max():+.3f}")
        if off.max() > 0.995 or off.mean() > 0.9:
            raise SystemExit(f"{name}: degenerate {kind} embeddings (pairwise cosine max "
                             f"{off.max():.4f}, mean {off.mean():.4f})")


def report_sensitivity(name, model, model_dir, photos, images) -> None:
    """Informational: how much would a wrong resize filter (bilinear instead of
    bicubic) or +-1 level pixel noise move the embeddings? Random towers are
    smooth, so these are small; resize parity is therefore best tested on the
    pixel references, and the embeddings test the network itself."""
    proc_bilinear = PilClipImageProcessor.from_pretrained(str(model_dir), resample=2)
    proc = PilClipImageProcessor.from_pretrained(str(model_dir))
    g = torch.Generator().manual_seed(7)
    cos_filter, cos_noise = [], []
    with torch.no_grad():
        for path, ref in zip(photos, images):
            im = load_photo(path)
            want = torch.tensor(ref["embedding"])
            pv_b = proc_bilinear(images=im, return_tensors="pt")["pixel_values"]
            pv = proc(images=im, return_tensors="pt")["pixel_values"]
            noise = torch.randint(-1, 2, pv.shape, generator=g).float() / 255.0
            noise = noise / torch.tensor(CLIP_STD).view(1, 3, 1, 1)
            for pv2, acc in ((pv_b, cos_filter), (pv + noise, cos_noise)):
                got = model.get_image_features(pixel_values=pv2)
                got = getattr(got, "pooler_output", got)[0]
                acc.append(torch.nn.functional.cosine_similarity(got, want, dim=0).item())
    log(f"  {name}: cosine to reference with bilinear resize {min(cos_filter):.7f}..{max(cos_filter):.7f}; "
        f"with +-1 level pixel noise {min(cos_noise):.7f}..{max(cos_noise):.7f}")


def cross_check_sdpa(model_dir, photo, text, image_ref, text_ref, proc, tok) -> None:
    """Sanity: the default attention kernel (sdpa) agrees with eager."""
    model = CLIPModel.from_pretrained(str(model_dir), attn_implementation="sdpa").eval()
    with torch.no_grad():
        pv = proc(images=load_photo(photo), return_tensors="pt")["pixel_values"]
        a = model.get_image_features(pixel_values=pv)
        a = getattr(a, "pooler_output", a)[0]
        ids = torch.tensor([tok(text, truncation=True, max_length=CONTEXT_LENGTH)["input_ids"]])
        b = model.get_text_features(input_ids=ids)
        b = getattr(b, "pooler_output", b)[0]
    for got, want in ((a, image_ref["embedding"]), (b, text_ref["embedding"])):
        want = torch.tensor(want)
        cos = torch.nn.functional.cosine_similarity(got, want, dim=0).item()
        assert cos > 0.99999, f"eager vs sdpa cosine {cos}"


# ===========================================================================
# 5. ONNX (optional)
# ===========================================================================

class _VisionTower(torch.nn.Module):
    def __init__(self, model: CLIPModel):
        super().__init__()
        self.model = model

    def forward(self, pixel_values):
        out = self.model.get_image_features(pixel_values=pixel_values)
        return getattr(out, "pooler_output", out)


def export_onnx(model_dir: Path, photos: list[Path], reference: dict) -> None:
    """Export get_image_features (pixel_values [N,3,224,224] -> image_embeds
    [N,512]) with the TorchScript-based exporter; check it with onnxruntime when
    that is installed. Best effort: failures are reported, not fatal."""
    model = CLIPModel.from_pretrained(str(model_dir), attn_implementation="eager").eval()
    tower = _VisionTower(model).eval()
    proc = PilClipImageProcessor.from_pretrained(str(model_dir))
    example = proc(images=load_photo(photos[0]), return_tensors="pt")["pixel_values"]
    dst = model_dir / "vision.onnx"
    try:
        with torch.no_grad():
            torch.onnx.export(
                tower, (example,), str(dst), input_names=["pixel_values"],
                output_names=["image_embeds"],
                dynamic_axes={"pixel_values": {0: "batch"}, "image_embeds": {0: "batch"}},
                opset_version=17, dynamo=False,
            )
    except Exception as e:  # noqa: BLE001
        log(f"  --onnx: export failed, skipped ({type(e).__name__}: {e})")
        return
    log(f"  wrote {dst} ({human(dst.stat().st_size)})")
    try:
        import onnxruntime as ort
    except ImportError:
        log("  --onnx: onnxruntime not installed; vision.onnx not checked")
        return
    sess = ort.InferenceSession(str(dst), providers=["CPUExecutionProvider"])
    got = torch.from_numpy(sess.run(None, {"pixel_values": example.numpy()})[0][0])
    want = torch.tensor(reference["images"][0]["embedding"])
    cos = torch.nn.functional.cosine_similarity(got, want, dim=0).item()
    log(f"  --onnx: onnxruntime vs transformers cosine {cos:.8f}")
    assert cos > 0.99999, cos


# ===========================================================================
# helpers + main
# ===========================================================================

def dir_size(p: Path) -> int:
    return sum(f.stat().st_size for f in p.rglob("*") if f.is_file())


def human(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def describe_photos() -> list[str]:
    rows = []
    for f in sorted(PHOTOS.iterdir()):
        try:
            with Image.open(f) as im:
                o = im.getexif().get(EXIF_ORIENTATION_TAG)
                rows.append(f"  photos/{f.name:34s} {im.format:5s} {im.mode:5s} "
                            f"{im.size[0]}x{im.size[1]}"
                            + (f" EXIF orientation {o}" if o else "")
                            + f"  {human(f.stat().st_size)}")
        except Exception:  # noqa: BLE001
            rows.append(f"  photos/{f.name:34s} (undecodable)  {human(f.stat().st_size)}")
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bpe", help="path to bpe_simple_vocab_16e6.txt.gz (default: from the open-clip-torch wheel)")
    ap.add_argument("--photos-src", help="directory with mate-backgrounds nature/*.jpg")
    ap.add_argument("--rebuild-photos", action="store_true", help="rebuild tests/fixtures/photos")
    ap.add_argument("--full", nargs="?", const="~/.cache/ongi", metavar="OUT_DIR",
                    help="write the full-size ViT-B/32-shaped random model to OUT_DIR (default ~/.cache/ongi)")
    ap.add_argument("--onnx", action="store_true", help="with --full: also export vision.onnx")
    args = ap.parse_args()

    torch.set_num_threads(max(1, min(4, os.cpu_count() or 1)))
    torch.manual_seed(0)
    np.random.seed(0)
    random.seed(0)

    with tempfile.TemporaryDirectory() as td:
        tmp = Path(td)
        bpe_gz = fetch_bpe(args.bpe, tmp)

        if args.full:
            out = Path(os.path.expanduser(args.full))
            out.mkdir(parents=True, exist_ok=True)
            name = FULL_MODEL["name"]
            model_dir = out / name
            log(f"[full] building {model_dir}")
            build_model_dir(name, FULL_MODEL, model_dir, bpe_gz, with_vocab_files=True)
            photos = photo_files()
            ref = compute_reference(name, model_dir, photos, out / f"{name}.reference.json", None)
            if args.onnx:
                export_onnx(model_dir, photos, ref)
            log("\nsummary:")
            log(f"  {model_dir}: {human(dir_size(model_dir))}")
            log(f"  {out / (name + '.reference.json')}: {len(photos)} images, {len(PROMPTS)} texts")
            return

        # Photos are committed inputs: keep them unless asked (or missing).
        expected = [PHOTOS / n for n, *_ in PHOTO_SPECS] + [PHOTOS / CORRUPT_NAME]
        if args.rebuild_photos or not all(p.exists() for p in expected):
            log("[photos] building tests/fixtures/photos")
            build_photos(find_photo_sources(args.photos_src, tmp))
        photos = photo_files()

        summary_tokens = None
        for name, spec in MODELS.items():
            model_dir = FIXTURES / name
            log(f"[model] {name}")
            build_model_dir(name, spec, model_dir, bpe_gz, with_vocab_files=False)
            summary_tokens = verify_tokenizer(model_dir, OpenAIClipBPE(*build_vocab_and_merges(bpe_gz)))
            compute_reference(name, model_dir, photos, FIXTURES / f"{name}.reference.json",
                              FIXTURES / spec["pixels_file"])

    log("\nsummary:")
    log(f"  generator: torch {torch.__version__}, transformers {transformers.__version__}, "
        f"pillow {PIL.__version__}, tokenizers {tokenizers.__version__}")
    log("  photos:")
    for row in describe_photos():
        log(row)
    log("  tokenization (tokenizer.json == CLIPTokenizer == OpenAI BPE):")
    for text, ids in summary_tokens.items():
        shown = ids if len(ids) <= 16 else ids[:8] + ["..."] + ids[-4:]
        log(f"    {text[:40]!r:44s} {len(ids):2d} ids {shown}")
    total = dir_size(FIXTURES)
    log(f"  tests/fixtures total: {human(total)}")
    for p in sorted(FIXTURES.iterdir()):
        log(f"    {p.name:34s} {human(dir_size(p) if p.is_dir() else p.stat().st_size)}")


if __name__ == "__main__":
    main()
