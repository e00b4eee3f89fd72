#!/usr/bin/env python3
"""Peer measurements for bench/compare_peers.sh (PyTorch, ONNX Runtime, PIL).

Subcommands (each prints JSON lines on stdout, logs on stderr):

  model --engine ENGINE --model DIR --threads T --batch-sizes 1,16 --images N
        [--reference-dir DIR]
        Times the CLIP image tower on the same deterministic synthetic pixels
        `ongi-bench` uses (splitmix64 in [0,1), normalised with the model's
        mean/std), after a warm-up, with exactly T compute threads. ENGINE:
        torch (transformers `get_image_features`, f32), torch-bf16 (the same
        under CPU bf16 autocast), ort (DIR/vision.onnx, f32), ort-int8
        (onnxruntime `quantize_dynamic`, int8 weights), ov / ov-bf16
        (OpenVINO with INFERENCE_PRECISION_HINT f32 / bf16). With
        --reference-dir, torch stores its outputs there and every other
        engine reports its worst cosine to them.
        One process per thread count: the caller starts one per T.
  cosine --jsonl F --features DIR --reference-dir DIR
        Adds the cosine to PyTorch f32 to ongi's JSON lines.
  preprocess --model DIR --images N FILE...
        Times the Python reference pipeline on files read into memory first:
        PIL open + EXIF transpose + convert('RGB') + transformers' PIL-based
        CLIPImageProcessor from DIR. Single thread.
  preprocess-cv --model DIR --images N FILE...
        Times the pipeline a Python user would assemble with OpenCV on the
        same files: imdecode(IMREAD_REDUCED_COLOR_4) (libjpeg's 1/4 DCT
        scaling, EXIF applied) + INTER_AREA resize of the short side to the
        crop + centre crop + normalise to CHW f32. Single thread.
  pipeline --engine cv-ov|original --model DIR --threads T --images N
        [--batch-size 16] [--features] FILE...
        Photos/s end to end from JPEG bytes in memory to image features,
        on T CPUs (the process is pinned to T of them): a pool of T decode
        threads feeds batches to the model on T compute threads. cv-ov:
        the preprocess-cv pipeline feeding OpenVINO (DIR/vision.onnx) at
        its best precision here; original: PIL + transformers'
        CLIPImageProcessor feeding PyTorch f32, as the original server
        ran. --features adds, per photo, what ongi's records also hold:
        OpenCV's greyscale decode, img_hash pHash and the blur variance.
  photos --out DIR --count K SRC...
        Writes K 4000x3000 quality-90 JPEGs (12 MP) upscaled from SRC images.
  table --ongi F [--ongi F...] --peer F [--peer F...] [--ongi-pre F --py-pre F]
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
    """Same values as ongi's `synthetic_pixels` (crates/ongi-bench/src/tower.rs)."""
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


# Engines of the `model` subcommand: name -> (label, precision).
ENGINES = {
    "torch": ("PyTorch", "f32"),
    "torch-bf16": ("PyTorch autocast", "bf16"),
    "ort": ("ONNX Runtime", "f32"),
    "ort-int8": ("ONNX Runtime quantize_dynamic", "int8"),
    "ov": ("OpenVINO", "f32"),
    "ov-bf16": ("OpenVINO", "bf16"),
}


def load_engine(engine: str, model_dir: Path, t: int):
    """Returns (run(x) -> features as a numpy array, version string)."""
    if engine.startswith("torch"):
        import contextlib

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
        bf16 = engine == "torch-bf16"

        def run(x):
            ctx = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
            with torch.no_grad(), ctx:
                out = model.get_image_features(pixel_values=torch.from_numpy(x))
                out = getattr(out, "pooler_output", out)
                return out.float().numpy()
        return run, f"torch {torch.__version__}"
    onnx_path = model_dir / "vision.onnx"
    if engine.startswith("ort"):
        import onnxruntime as ort

        if engine == "ort-int8":
            # Dynamic quantisation as a user would apply it: int8 weights
            # (per tensor), activations quantised per call. Built once.
            q_path = model_dir / "vision.int8.onnx"
            if not q_path.exists():
                from onnxruntime.quantization import QuantType, quantize_dynamic

                log(f"[{engine}] quantize_dynamic -> {q_path}")
                quantize_dynamic(str(onnx_path), str(q_path), weight_type=QuantType.QInt8)
            onnx_path = q_path
        so = ort.SessionOptions()
        so.intra_op_num_threads = t
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        sess = ort.InferenceSession(str(onnx_path), sess_options=so,
                                    providers=["CPUExecutionProvider"])
        in_name = sess.get_inputs()[0].name
        return (lambda x: sess.run(None, {in_name: x})[0]), f"onnxruntime {ort.__version__}"
    import openvino as ov

    core = ov.Core()
    hint = "bf16" if engine == "ov-bf16" else "f32"
    compiled = core.compile_model(str(onnx_path), "CPU", {
        "INFERENCE_NUM_THREADS": t,
        "NUM_STREAMS": 1,
        "PERFORMANCE_HINT": "LATENCY",
        "INFERENCE_PRECISION_HINT": hint,
    })
    # What OpenVINO actually runs (it falls back to f32 where the CPU has no bf16).
    hint_now = compiled.get_property("INFERENCE_PRECISION_HINT")
    actual = hint_now.get_type_name() if hasattr(hint_now, "get_type_name") else str(hint_now)
    request = compiled.create_infer_request()

    def run(x):
        return request.infer([x])[0].copy()
    return run, f"openvino {ov.__version__} (runs {actual})"


def cosine_rows(a, b) -> float:
    """The worst cosine between matching rows of two [n, d] arrays."""
    import numpy as np

    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    num = (a * b).sum(axis=1)
    den = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return float((num / den).min())


def cmd_model(args) -> None:
    pin_threads(args.threads)
    import numpy as np

    model_dir = Path(args.model)
    pre = json.loads((model_dir / "preprocessor_config.json").read_text())
    crop = pre.get("crop_size", {})
    size = int(crop.get("height", 224)) if isinstance(crop, dict) else int(crop)
    mean, std = pre["image_mean"], pre["image_std"]
    t = args.threads
    run, version = load_engine(args.engine, model_dir, t)
    label, precision = ENGINES[args.engine]
    refs = Path(args.reference_dir) if args.reference_dir else None

    log(f"[{args.engine}] {version}, {t} thread(s)")
    for b in args.batch_sizes:
        x = synthetic_pixels(b, size, mean, std)
        out = run(x)
        for _ in range(args.warmup - 1):
            run(x)
        # Accuracy: the worst cosine to PyTorch f32 on this batch (the torch
        # engine writes the reference; the others read it).
        cosine = None
        if refs is not None:
            ref = refs / f"torch_f32_b{b}.npy"
            if args.engine == "torch":
                refs.mkdir(parents=True, exist_ok=True)
                np.save(ref, out)
                cosine = 1.0
            elif ref.exists():
                cosine = cosine_rows(out, np.load(ref))
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
            "label": label,
            "precision": precision,
            "version": version,
            "batch_size": b,
            "threads": t,
            "images": images,
            "images_per_sec": images / wall,
            "ms_per_image": 1000.0 * wall / images,
            "cpu_avg_pct": 100.0 * cpu / wall,
            "peak_rss_mb": peak_rss_mb(),
            "cosine": cosine,
        }
        print(json.dumps(r), flush=True)
        log(f"[{args.engine}] threads {t} batch {b}: {r['images_per_sec']:.2f} img/s, cosine {cosine}")


def cmd_cosine(args) -> None:
    """Adds the cosine to PyTorch f32 to ongi's JSON lines (ongi bench
    --save-features wrote its outputs as raw little-endian f32)."""
    import numpy as np

    refs = Path(args.reference_dir)
    for line in Path(args.jsonl).read_text().splitlines():
        if not line.startswith("{"):
            continue
        r = json.loads(line)
        feats = Path(args.features) / f"b{r['batch_size']}_t{r['threads']}.f32"
        ref = refs / f"torch_f32_b{r['batch_size']}.npy"
        if feats.exists() and ref.exists():
            want = np.load(ref)
            got = np.fromfile(feats, dtype="<f4").reshape(want.shape)
            r["cosine"] = cosine_rows(got, want)
        print(json.dumps(r))


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



def cv_clip_input(cv2, np, buf, size: int, mean, std):
    """OpenCV reduced decode to a normalised [3, size, size] f32 crop."""
    bgr = cv2.imdecode(buf, cv2.IMREAD_REDUCED_COLOR_4)
    if bgr is None:
        raise ValueError("cannot decode")
    h, w = bgr.shape[:2]
    scale = size / min(h, w)
    nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
    small = cv2.resize(bgr, (nw, nh), interpolation=cv2.INTER_AREA)
    top, left = (nh - size) // 2, (nw - size) // 2
    crop = cv2.cvtColor(small[top:top + size, left:left + size], cv2.COLOR_BGR2RGB)
    x = (crop.astype(np.float32) * (1.0 / 255.0) - mean) / std
    return np.ascontiguousarray(x.transpose(2, 0, 1))


def cv_pixel_features(cv2, buf, hasher) -> float:
    """The original's per-photo pixel work: grey decode, pHash, blur variance."""
    grey = cv2.imdecode(buf, cv2.IMREAD_GRAYSCALE)
    hasher.compute(grey)
    h, w = grey.shape
    scale = 300 / max(h, w)
    small = cv2.resize(grey, (int(w * scale), int(h * scale)), interpolation=cv2.INTER_AREA)
    return cv2.Laplacian(small, cv2.CV_64F).var()


def model_norm(model_dir: Path):
    cfg = json.loads((Path(model_dir) / "preprocessor_config.json").read_text())
    crop = cfg.get("crop_size", 224)
    size = crop if isinstance(crop, int) else crop.get("height", 224)
    return size, cfg["image_mean"], cfg["image_std"]


def cmd_preprocess_cv(args) -> None:
    pin_threads(1)
    import cv2
    import numpy as np

    cv2.setNumThreads(1)
    size, mean, std = model_norm(args.model)
    mean = np.array(mean, np.float32)
    std = np.array(std, np.float32)
    files = [np.frombuffer(Path(f).read_bytes(), np.uint8) for f in args.files]
    r = timed_per_file(lambda b: cv_clip_input(cv2, np, b, size, mean, std), files,
                       args.images, args.warmup)
    print(json.dumps({
        "mode": "preprocess",
        "engine": f"OpenCV {cv2.__version__} IMREAD_REDUCED_COLOR_4 + INTER_AREA + crop + normalise",
        **r,
        "peak_rss_mb": peak_rss_mb(),
    }), flush=True)


def cmd_pipeline(args) -> None:
    t = args.threads
    # The thread budget is enforced, not just asked for: T CPUs in all.
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < t:
        sys.exit(f"pipeline: --threads {t} but only {len(cpus)} CPUs are available")
    os.sched_setaffinity(0, cpus[:t])
    pin_threads(t)
    import concurrent.futures as cf

    import cv2
    import numpy as np

    cv2.setNumThreads(1)
    size, mean, std = model_norm(args.model)
    data = [Path(f).read_bytes() for f in args.files]
    if not data:
        sys.exit("pipeline: no files")
    hasher = cv2.img_hash.PHash_create()
    # CPU seconds of each photo's decode and preprocessing, on its pool thread
    # (list.append is atomic under the GIL); the rest of the process's CPU is
    # the model's (its own threads and the batches' Python).
    decode_cpu = []
    if args.engine == "cv-ov":
        run, version = load_engine("ov-bf16" if args.ov_bf16 else "ov", Path(args.model), t)
        mean_a, std_a = np.array(mean, np.float32), np.array(std, np.float32)

        def one(b: bytes):
            c = time.thread_time()
            buf = np.frombuffer(b, np.uint8)
            x = cv_clip_input(cv2, np, buf, size, mean_a, std_a)
            if args.features:
                cv_pixel_features(cv2, buf, hasher)
            decode_cpu.append(time.thread_time() - c)
            return x
        engine = (f"OpenCV {cv2.__version__} reduced decode + {version}"
                  f" {'bf16' if args.ov_bf16 else 'f32'}")
    else:
        from PIL import Image, ImageOps
        try:
            from transformers import CLIPImageProcessorPil as Proc
        except ImportError:
            from transformers import CLIPImageProcessor as Proc
        proc = Proc.from_pretrained(str(args.model))
        run, version = load_engine("torch", Path(args.model), t)

        def one(b: bytes):
            c = time.thread_time()
            with Image.open(io.BytesIO(b)) as im:
                im.load()
                rgb = ImageOps.exif_transpose(im).convert("RGB")
            x = proc(images=rgb, return_tensors="np")["pixel_values"][0]
            if args.features:
                cv_pixel_features(cv2, np.frombuffer(b, np.uint8), hasher)
            decode_cpu.append(time.thread_time() - c)
            return x
        engine = f"PIL {Image.__version__} + CLIPImageProcessor + {version} f32"
    if args.features:
        engine += " + OpenCV grey decode, pHash, blur"

    def embed_all(n: int) -> None:
        batch = args.batch_size
        with cf.ThreadPoolExecutor(max_workers=t) as pool:
            futures = [pool.submit(one, data[i % len(data)]) for i in range(n)]
            for start in range(0, n, batch):
                xs = [f.result() for f in futures[start:start + batch]]
                run(np.stack(xs).astype(np.float32))

    embed_all(max(args.warmup, 1))
    n = max(args.images, len(data))
    decode_cpu.clear()
    c0 = time.process_time()
    t0 = time.perf_counter()
    embed_all(n)
    wall = time.perf_counter() - t0
    cpu = time.process_time() - c0
    decode_s = sum(decode_cpu)
    cores = {"decode_cpu_s": decode_s, "model_cpu_s": max(cpu - decode_s, 0.0),
             "busy": cpu / (wall * t)}
    # ongi-bench's rule: once the cores are full, the side using more of them.
    if cores["busy"] >= 0.9:
        bound = "cores: decode" if decode_s >= cores["model_cpu_s"] else "cores: model"
    else:
        bound = "not cores"
    if args.engine == "cv-ov":
        label = f"OpenCV reduced + OpenVINO {'bf16' if args.ov_bf16 else 'f32'}"
    else:
        label = "original: PIL + transformers + PyTorch f32"
    print(json.dumps({
        "mode": "pipeline",
        "label": label + (" + pHash/blur" if args.features else ""),
        "engine": engine,
        "threads": t,
        "features": bool(args.features),
        "files": len(data),
        "images": n,
        "images_per_sec": n / wall,
        "cpu_avg_pct": 100.0 * cpu / wall,
        "peak_rss_mb": peak_rss_mb(),
        "cores": cores,
        "bound": bound,
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


def cpu_line() -> str:
    """The CPU's model name and the flags that decide its matrix kernels."""
    model, flags = "unknown CPU", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and model == "unknown CPU":
                model = line.split(":", 1)[1].strip()
            elif line.startswith("flags") and not flags:
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    wanted = ["avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx_vnni",
              "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16", "amx_int8"]
    have = [f for f in wanted if f in flags]
    return f"CPU: {model}, {os.cpu_count()} CPUs; matrix flags: {' '.join(have) or 'none'}"


def cmd_table(args) -> None:
    def index(rows):
        # Several rounds per setting: keep the median round (by images/s).
        by_key: dict = {}
        for r in rows:
            by_key.setdefault((r["threads"], r["batch_size"]), []).append(r)
        return {k: sorted(v, key=lambda r: r["images_per_sec"])[(len(v) - 1) // 2]
                for k, v in by_key.items()}

    # ongi's rows: one file per precision (f32, and the default when it differs,
    # and int8); peers: one file per engine.
    ongi_rows = {}
    for path in args.ongi or []:
        rows = read_jsonl(path)
        if rows:
            precision = rows[0].get("precision") or "f32"
            default = "auto" in Path(path).name
            name = f"ongi default = {precision}" if default else f"ongi {precision}"
            ongi_rows[name] = index(rows)
    peer_rows = {}
    for path in args.peer or []:
        rows = read_jsonl(path)
        if rows:
            r0 = rows[0]
            peer_rows[f"{r0['label']} {r0['precision']}"] = index(rows)
    keys = sorted({k for d in (*ongi_rows.values(), *peer_rows.values()) for k in d})

    print(cpu_line())
    print("CLIP ViT-B/32 image tower, random weights, synthetic inputs: images/second;")
    print("cosine = worst cosine to PyTorch f32 over the batch; ratios against the fastest peer row")
    print("and the fastest f32 peer row at the same setting (median of rounds)")
    for d in peer_rows.values():
        r = next(iter(d.values()))
        print(f"  {r['label']} {r['precision']}: {r.get('version', '')}")
    for k in keys:
        print()
        print(f"threads {k[0]}, batch {k[1]}")
        peers_here = {n: d[k] for n, d in peer_rows.items() if k in d}
        best = max(peers_here.items(), key=lambda nv: nv[1]["images_per_sec"], default=None)
        f32 = {n: r for n, r in peers_here.items() if r["precision"] == "f32"}
        best32 = max(f32.items(), key=lambda nv: nv[1]["images_per_sec"], default=None)
        print(f"  {'engine':<38} {'img/s':>8} {'cosine':>9} {'CPU%':>5} {'vs best':>8} {'vs best f32':>11}")
        for name, r in [*((n, d[k]) for n, d in ongi_rows.items() if k in d), *peers_here.items()]:
            ips = r["images_per_sec"]
            cos = r.get("cosine")
            vb = f"{ips / best[1]['images_per_sec']:.2f}x" if best else "-"
            vf = f"{ips / best32[1]['images_per_sec']:.2f}x" if best32 else "-"
            print(f"  {name:<38} {ips:>8.2f} {cos if cos is None else f'{cos:.6f}':>9}"
                  f" {r.get('cpu_avg_pct', 0):>5.0f} {vb:>8} {vf:>11}")
        if best:
            print(f"  fastest peer: {best[0]}; fastest f32 peer: {best32[0] if best32 else '-'}")

    pipeline_table(read_jsonl(args.pipe))
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
        cv = read_jsonl(args.cv_pre)
        if cv:
            c = cv[0]
            print(f"  OpenCV: {c.get('engine', '')}: {c['images_per_sec']:.2f} img/s")
            for name, r in rows[:-1]:
                if r:
                    print(f"{name}/OpenCV: {r['images_per_sec'] / c['images_per_sec']:.2f}x")


def pipeline_table(rows) -> None:
    """End to end rows: ongi's (with its stage shares) and the peers', per thread budget."""
    if not rows:
        return
    print()
    print("End to end: 12-MP JPEG bytes in memory -> image features, photos/s; ratios to the")
    print("fastest peer with the same thread budget (ongi's records always hold pHash and blur)")
    for t in sorted({r["threads"] for r in rows}):
        here = [r for r in rows if r["threads"] == t]
        peers = [r for r in here if "stages" not in r]
        best = max(peers, key=lambda r: r["images_per_sec"], default=None)
        same = [r for r in peers if r.get("features")]
        best_same = max(same, key=lambda r: r["images_per_sec"], default=None)
        print(f"threads {t}")
        print(f"  {'pipeline':<60} {'photos/s':>8} {'CPU%':>5} {'vs best':>8} {'vs best w/ pHash':>16}"
              f"  bound (CPU s decode/model, or busy shares)")
        for r in here:
            if "stages" in r:
                st = r["stages"]
                name = (f"ongi --decode {r['decode']}, {r['decode_workers']} decode workers,"
                        f" {r['precision'].split(' ')[0]} + pHash/blur")
                cores = r.get("cores")
                if cores:
                    split = f"CPU {cores['decode_cpu_s']:.2f}/{cores['model_cpu_s']:.2f} s"
                else:
                    split = f"busy {st['decode_workers_busy']:.2f}/{st['model_busy']:.2f}"
                bound = f"{r['bound']} ({split})"
            else:
                name = r.get("label", r["engine"])
                cores = r.get("cores")
                bound = (f"{r['bound']} (CPU {cores['decode_cpu_s']:.2f}/{cores['model_cpu_s']:.2f} s)"
                         if cores else "")
            ips = r["images_per_sec"]
            vb = f"{ips / best['images_per_sec']:.2f}x" if best else "-"
            vs = f"{ips / best_same['images_per_sec']:.2f}x" if best_same else "-"
            print(f"  {name[:60]:<60} {ips:>8.2f} {r.get('cpu_avg_pct', 0):>5.0f} {vb:>8} {vs:>16}  {bound}")
    engines = {r.get("label", ""): r["engine"] for r in rows if "stages" not in r}
    for label, engine in engines.items():
        print(f"  {label}: {engine}")


def csv_ints(s: str) -> list[int]:
    return [int(x) for x in s.split(",") if x.strip()]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)

    m = sub.add_parser("model")
    m.add_argument("--engine", choices=sorted(ENGINES), required=True)
    m.add_argument("--reference-dir", help="where PyTorch f32's outputs are kept for the cosines")
    m.add_argument("--model", required=True)
    m.add_argument("--threads", type=int, required=True)
    m.add_argument("--batch-sizes", type=csv_ints, default=[1, 16])
    m.add_argument("--images", type=int, default=32)
    m.add_argument("--warmup", type=int, default=1, help="untimed warm-up batches per setting")
    m.set_defaults(func=cmd_model)

    # The Python reference and the OpenCV pipeline take the same arguments.
    for name, func in (("preprocess", cmd_preprocess), ("preprocess-cv", cmd_preprocess_cv)):
        p = sub.add_parser(name)
        p.add_argument("--model", required=True)
        p.add_argument("--images", type=int, default=8)
        p.add_argument("--warmup", type=int, default=1)
        p.add_argument("files", nargs="+")
        p.set_defaults(func=func)

    px = sub.add_parser("pixels")
    px.add_argument("--images", type=int, default=8)
    px.add_argument("--warmup", type=int, default=1)
    px.add_argument("files", nargs="+")
    px.set_defaults(func=cmd_pixels)

    pl = sub.add_parser("pipeline")
    pl.add_argument("--engine", choices=["cv-ov", "original"], required=True)
    pl.add_argument("--model", required=True)
    pl.add_argument("--threads", type=int, required=True)
    pl.add_argument("--images", type=int, default=32)
    pl.add_argument("--warmup", type=int, default=4, help="untimed warm-up photos")
    pl.add_argument("--batch-size", type=int, default=16)
    pl.add_argument("--features", action="store_true")
    pl.add_argument("--ov-bf16", action="store_true", help="cv-ov: OpenVINO's bf16 hint (else f32)")
    pl.add_argument("files", nargs="+")
    pl.set_defaults(func=cmd_pipeline)

    ph = sub.add_parser("photos")
    ph.add_argument("--out", required=True)
    ph.add_argument("--count", type=int, default=4)
    ph.add_argument("src", nargs="+")
    ph.set_defaults(func=cmd_photos)

    c = sub.add_parser("cosine")
    c.add_argument("--jsonl", required=True)
    c.add_argument("--features", required=True)
    c.add_argument("--reference-dir", required=True)
    c.set_defaults(func=cmd_cosine)

    t = sub.add_parser("table")
    t.add_argument("--ongi", action="append", help="ongi JSON lines (one file per precision)")
    t.add_argument("--peer", action="append", help="a peer's JSON lines (one file per engine)")
    for a in ("--ongi-pre", "--py-pre", "--cv-pre", "--pipe"):
        t.add_argument(a)
    t.set_defaults(func=cmd_table)

    args = ap.parse_args()
    args.func(args)


if __name__ == "__main__":
    main()
