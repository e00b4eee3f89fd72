#!/usr/bin/env python3
"""Peer measurements for bench/compare_peers.sh (PyTorch, ONNX Runtime, PIL).

Subcommands (each prints JSON lines on stdout, logs on stderr):

  model --engine torch|ort --model DIR --threads T --batch-sizes 1,16 --images N
        Times the CLIP image tower (transformers `CLIPModel.get_image_features`,
        or DIR/vision.onnx with onnxruntime) on the same deterministic synthetic
        pixels `ongi bench` uses (splitmix64 in [0,1), normalised with the
        model's mean/std), f32, after a warm-up, with exactly T compute threads.
        One process per thread count: the caller starts one per T.
  preprocess --model DIR --images N FILE...
        Times the Python reference pipeline on files read into memory first:
        PIL open + EXIF transpose + convert('RGB') + transformers' PIL-based
        CLIPImageProcessor from DIR. Single thread.
  photos --out DIR --count K SRC...
        Writes K 4000x3000 quality-90 JPEGs (12 MP) upscaled from SRC images.
  table --ongi F --torch F --ort F [--ongi-pre F --py-pre F]
        Prints the comparison table from the JSON-lines files.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import resource
import sys
import time
from pathlib import Path


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def pin_threads(t: int) -> None:
    # Must happen before numpy/torch/onnxruntime are imported.
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = str(t)
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def synthetic_pixels(batch: int, size: int, mean, std):
    """Same values as ongi's `synthetic_pixels` (router/src/bench.rs)."""
    import numpy as np

    n = batch * 3 * size * size
    seed = np.uint64(0x0123_4567_89AB_CDEF ^ batch)
    with np.errstate(over="ignore"):
        i = np.arange(1, n + 1, dtype=np.uint64)
        z = seed + i * np.uint64(0x9E37_79B9_7F4A_7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58_476D_1CE4_E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D0_49BB_1331_11EB)
        z ^= z >> np.uint64(31)
    u = (z >> np.uint64(40)).astype(np.float32) / np.float32(1 << 24)
    x = u.reshape(batch, 3, size, size)
    m = np.asarray(mean, dtype=np.float32).reshape(1, 3, 1, 1)
    s = np.asarray(std, dtype=np.float32).reshape(1, 3, 1, 1)
    return np.ascontiguousarray((x - m) / s, dtype=np.float32)


def cmd_model(args) -> None:
    pin_threads(args.threads)
    import numpy as np  # noqa: F401

    model_dir = Path(args.model)
    pre = json.loads((model_dir / "preprocessor_config.json").read_text())
    crop = pre.get("crop_size", {})
    size = int(crop.get("height", 224)) if isinstance(crop, dict) else int(crop)
    mean, std = pre["image_mean"], pre["image_std"]
    t = args.threads

    if args.engine == "torch":
        import torch
        from transformers import CLIPModel

        try:
            from transformers.utils import logging as hf_logging
            hf_logging.disable_progress_bar()
        except Exception:  # noqa: BLE001
            pass
        torch.set_num_threads(t)
        try:
            torch.set_num_interop_threads(1)
        except RuntimeError:
            pass
        model = CLIPModel.from_pretrained(str(model_dir), torch_dtype=torch.float32).eval()
        version = f"torch {torch.__version__}"

        def run(x):
            with torch.no_grad():
                out = model.get_image_features(pixel_values=torch.from_numpy(x))
                return getattr(out, "pooler_output", out)
    else:
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.intra_op_num_threads = t
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        onnx_path = model_dir / "vision.onnx"
        sess = ort.InferenceSession(str(onnx_path), sess_options=so,
                                    providers=["CPUExecutionProvider"])
        in_name = sess.get_inputs()[0].name
        version = f"onnxruntime {ort.__version__}"

        def run(x):
            return sess.run(None, {in_name: x})[0]

    log(f"[{args.engine}] {version}, {t} thread(s)")
    for b in args.batch_sizes:
        x = synthetic_pixels(b, size, mean, std)
        for _ in range(args.warmup):
            run(x)
        batches = math.ceil(args.images / b)
        c0 = time.process_time()
        t0 = time.perf_counter()
        for _ in range(batches):
            run(x)
        wall = time.perf_counter() - t0
        cpu = time.process_time() - c0
        images = batches * b
        r = {
            "engine": args.engine,
            "version": version,
            "batch_size": b,
            "threads": t,
            "images": images,
            "images_per_sec": images / wall,
            "ms_per_image": 1000.0 * wall / images,
            "cpu_avg_pct": 100.0 * cpu / wall,
            "peak_rss_mb": peak_rss_mb(),
        }
        print(json.dumps(r), flush=True)
        log(f"[{args.engine}] threads {t} batch {b}: {r['images_per_sec']:.2f} img/s")


def cmd_preprocess(args) -> None:
    pin_threads(1)
    from PIL import Image, ImageOps

    try:
        from transformers import CLIPImageProcessorPil as Proc
    except ImportError:  # older transformers: the PIL processor has this name
        from transformers import CLIPImageProcessor as Proc
    import transformers

    proc = Proc.from_pretrained(str(args.model))
    files = [Path(f).read_bytes() for f in args.files]
    if not files:
        sys.exit("preprocess: no files")

    def one(data: bytes):
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            rgb = ImageOps.exif_transpose(im).convert("RGB")
        return proc(images=rgb, return_tensors="np")["pixel_values"]

    r = timed_per_file(one, files, args.images, args.warmup)
    r = {
        "mode": "preprocess",
        "engine": f"PIL {Image.__version__} + transformers {transformers.__version__} {Proc.__name__}",
        **r,
        "peak_rss_mb": peak_rss_mb(),
    }
    print(json.dumps(r), flush=True)


def timed_per_file(one, files, images: int, warmup: int) -> dict:
    """Runs `one` over `files` (cycling) `warmup` times untimed, then
    max(images, len(files)) times timed; wall and CPU figures."""
    for i in range(warmup):
        one(files[i % len(files)])
    n = max(images, len(files))
    c0 = time.process_time()
    t0 = time.perf_counter()
    for i in range(n):
        one(files[i % len(files)])
    wall = time.perf_counter() - t0
    cpu = time.process_time() - c0
    return {
        "files": len(files),
        "images": n,
        "images_per_sec": n / wall,
        "ms_per_image": 1000.0 * wall / n,
        "cpu_avg_pct": 100.0 * cpu / wall,
    }


def cmd_pixels(args) -> None:
    """The original's per-photo pixel work, one OpenCV thread: a greyscale decode,
    the img_hash pHash and the blur measure (decoded once; the original decoded
    each photo once per route)."""
    import cv2
    import numpy as np

    cv2.setNumThreads(1)
    hasher = cv2.img_hash.PHash_create()
    files = [np.frombuffer(Path(f).read_bytes(), np.uint8) for f in args.files]

    def one(buf):
        grey = cv2.imdecode(buf, cv2.IMREAD_GRAYSCALE)
        hasher.compute(grey)
        h, w = grey.shape
        scale = 300 / max(h, w)
        small = cv2.resize(grey, (int(w * scale), int(h * scale)), interpolation=cv2.INTER_AREA)
        return cv2.Laplacian(small, cv2.CV_64F).var()

    print(json.dumps({
        "mode": "pixels",
        "engine": f"OpenCV {cv2.__version__} imdecode(GRAYSCALE) + img_hash PHash + INTER_AREA + Laplacian",
        **timed_per_file(one, files, args.images, args.warmup),
    }), flush=True)


def cmd_photos(args) -> None:
    from PIL import Image

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    srcs = sorted(Path(s) for s in args.src)
    if not srcs:
        sys.exit("photos: no source images")
    W, H = 4000, 3000
    for k in range(args.count):
        dst = out / f"photo12mp_{k:02d}.jpg"
        if dst.exists():
            continue
        src = srcs[k % len(srcs)]
        with Image.open(src) as im:
            im = im.convert("RGB")
            # centre-crop to 4:3, then upscale to 4000x3000
            w, h = im.size
            if w * 3 > h * 4:
                cw, ch = h * 4 // 3, h
            else:
                cw, ch = w, w * 3 // 4
            left, top = (w - cw) // 2, (h - ch) // 2
            im = im.crop((left, top, left + cw, top + ch)).resize((W, H), Image.Resampling.BICUBIC)
            im.save(dst, "JPEG", quality=90)
        log(f"  wrote {dst} from {src.name}")


def read_jsonl(path: str | None) -> list[dict]:
    if not path or not os.path.exists(path):
        return []
    rows = []
    for line in Path(path).read_text().splitlines():
        line = line.strip()
        if line.startswith("{"):
            rows.append(json.loads(line))
    return rows


def cmd_table(args) -> None:
    def index(rows):
        # Several rounds per setting: keep the median round (by images/s).
        by_key: dict = {}
        for r in rows:
            by_key.setdefault((r["threads"], r["batch_size"]), []).append(r)
        return {k: sorted(v, key=lambda r: r["images_per_sec"])[(len(v) - 1) // 2]
                for k, v in by_key.items()}

    ongi, ort_, pt = index(read_jsonl(args.ongi)), index(read_jsonl(args.ort)), index(read_jsonl(args.torch))
    keys = sorted(set(ongi) | set(ort_) | set(pt))

    def ips(d, k):
        return d[k]["images_per_sec"] if k in d else None

    def f(v, w=10, p=2):
        return f"{v:>{w}.{p}f}" if v is not None else f"{'-':>{w}}"

    def ratio(a, b):
        return a / b if a is not None and b else None

    print("CLIP ViT-B/32 image tower, f32, random weights, synthetic inputs: images/second")
    for d, name in ((ort_, "ORT"), (pt, "PyTorch")):
        if d:
            print(f"  {name}: {next(iter(d.values())).get('version', '')}")
    print(f"{'threads':>7} {'batch':>5} {'ongi':>10} {'ORT':>10} {'PyTorch':>10} {'ongi/ORT':>9} {'ongi/PT':>9}"
          f" {'ongi CPU%':>9} {'ORT CPU%':>9} {'PT CPU%':>9}")
    for k in keys:
        o, r, p = ips(ongi, k), ips(ort_, k), ips(pt, k)
        cpu = [d[k].get("cpu_avg_pct") if k in d else None for d in (ongi, ort_, pt)]
        print(f"{k[0]:>7} {k[1]:>5} {f(o)} {f(r)} {f(p)} {f(ratio(o, r), 8)}x {f(ratio(o, p), 8)}x"
              f" {f(cpu[0], 9, 0)} {f(cpu[1], 9, 0)} {f(cpu[2], 9, 0)}")

    op, pp = read_jsonl(args.ongi_pre), read_jsonl(args.py_pre)
    if op or pp:
        print()
        print("Preprocessing 12-MP JPEGs (decode + EXIF + resize + crop + normalise), 1 thread, files in memory")
        if pp:
            print(f"  Python: {pp[0].get('engine', '')}")
        p = pp[0] if pp else {}
        # One ongi line per decode mode (exact: bit-exact with PIL; fast: DCT-scaled).
        rows = [(f"ongi {r.get('decode', '')}".strip(), r) for r in op] or [("ongi", {})]
        rows.append(("Python", p))
        print(f"{'engine':>11} {'files':>5} {'images':>6} {'img/s':>8} {'ms/img':>8} {'CPU%':>6}")
        for name, r in rows:
            if r:
                print(f"{name:>11} {r['files']:>5} {r['images']:>6} {r['images_per_sec']:>8.2f}"
                      f" {r['ms_per_image']:>8.1f} {r['cpu_avg_pct']:>6.0f}")
            else:
                print(f"{name:>11}  (not measured)")
        if p:
            for name, r in rows[:-1]:
                if r:
                    print(f"{name}/Python: {r['images_per_sec'] / p['images_per_sec']:.2f}x")


def csv_ints(s: str) -> list[int]:
    return [int(x) for x in s.split(",") if x.strip()]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)

    m = sub.add_parser("model")
    m.add_argument("--engine", choices=["torch", "ort"], required=True)
    m.add_argument("--model", required=True)
    m.add_argument("--threads", type=int, required=True)
    m.add_argument("--batch-sizes", type=csv_ints, default=[1, 16])
    m.add_argument("--images", type=int, default=32)
    m.add_argument("--warmup", type=int, default=1, help="untimed warm-up batches per setting")
    m.set_defaults(func=cmd_model)

    p = sub.add_parser("preprocess")
    p.add_argument("--model", required=True)
    p.add_argument("--images", type=int, default=8)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("files", nargs="+")
    p.set_defaults(func=cmd_preprocess)

    px = sub.add_parser("pixels")
    px.add_argument("--images", type=int, default=8)
    px.add_argument("--warmup", type=int, default=1)
    px.add_argument("files", nargs="+")
    px.set_defaults(func=cmd_pixels)

    ph = sub.add_parser("photos")
    ph.add_argument("--out", required=True)
    ph.add_argument("--count", type=int, default=4)
    ph.add_argument("src", nargs="+")
    ph.set_defaults(func=cmd_photos)

    t = sub.add_parser("table")
    for a in ("--ongi", "--torch", "--ort", "--ongi-pre", "--py-pre"):
        t.add_argument(a)
    t.set_defaults(func=cmd_table)

    args = ap.parse_args()
    args.func(args)


if __name__ == "__main__":
    main()
