#!/usr/bin/env python3
"""Reference answers of the original AI server's algorithms, for ongi's differential tests.

Runs the original's duplicate, blur, quality, category and score algorithms as
its code does them (reimplemented here from what that code does, with the same
libraries: opencv-contrib-python, scikit-learn, numpy), on

* the fixture photos, edited copies of some of them (made here and committed),
  synthetic greyscale patterns ongi rebuilds exactly, and the real photos of
  Debian's mate-backgrounds when present;
* a synthetic album of embeddings, tag prompt embeddings, quality prompt pairs
  and a linear score head (committed), for the album answers.

Writes tests/fixtures/original/{pixels.json,album.json,edited/*.jpg}.

    python3 -m pip install -r scripts/requirements-original.txt
    python3 scripts/make_original_reference.py [--mate DIR]
"""

import argparse
import json
import os
from pathlib import Path

import cv2
import numpy as np
from sklearn.cluster import DBSCAN

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures"
OUT = FIXTURES / "original"

# Photos that get edited copies, and the edits (the kinds a duplicate finder meets).
EDIT_SOURCES = ["landscape_dune.jpg", "landscape_ladybird.jpg", "portrait_yellowflower.jpg",
                "grey_wood.jpg", "exif_orientation6_twowings.jpg"]


def edits(img):
    h, w = img.shape[:2]
    c = max(1, int(round(min(h, w) * 0.03)))
    rot = cv2.getRotationMatrix2D((w / 2, h / 2), 3.0, 1.0)
    return {
        "recompress": (img, 40),
        "resize": (cv2.resize(img, (int(w * 0.6), int(h * 0.6)), interpolation=cv2.INTER_AREA), 90),
        "crop": (img[c:h - c, c:w - c], 90),
        "bright": (cv2.convertScaleAbs(img, alpha=1.0, beta=25), 90),
        "rotate": (cv2.warpAffine(img, rot, (w, h), borderMode=cv2.BORDER_REFLECT), 90),
        "blur": (cv2.GaussianBlur(img, (0, 0), 1.5), 90),
        "flip": (cv2.flip(img, 1), 90),
    }


def make_edited():
    out = OUT / "edited"
    out.mkdir(parents=True, exist_ok=True)
    for name in EDIT_SOURCES:
        img = cv2.imread(str(FIXTURES / "photos" / name), cv2.IMREAD_COLOR)
        for kind, (e, q) in edits(img).items():
            path = out / f"{Path(name).stem}__{kind}.jpg"
            cv2.imwrite(str(path), e, [cv2.IMWRITE_JPEG_QUALITY, q])


def synth(w, h):
    """A pattern both sides build exactly: ((x*x + 3*y) ^ (5*x + y*y)) % 256."""
    y, x = np.mgrid[0:h, 0:w].astype(np.int64)
    return (((x * x + 3 * y) ^ (5 * x + y * y)) % 256).astype(np.uint8)


SYNTH_SIZES = [(640, 480), (600, 400), (900, 600), (200, 133), (97, 301), (1000, 37),
               (32, 32), (33, 31), (20, 12), (4000, 3000), (301, 299), (1, 40)]

HASHER = cv2.img_hash.PHash_create()


def pixel_reference(grey):
    """The original's pHash (cv2.img_hash) and blur test (quality.py) of a grey image."""
    h, w = grey.shape
    phash = HASHER.compute(grey).reshape(-1).tobytes().hex()
    scale = 300 / max(h, w)
    size = (max(1, int(w * scale)), max(1, int(h * scale)))  # the original raises on 0
    var = float(cv2.Laplacian(cv2.resize(grey, size, interpolation=cv2.INTER_AREA), cv2.CV_64F).var())
    return {"width": w, "height": h, "phash": phash, "laplacian_var": var, "blurry": var < 80.0}


def duplicate_groups(hashes, names):
    """duplicate.py: Hamming matrix of the packed hashes, DBSCAN eps 10, groups in label order."""
    packed = np.array([np.frombuffer(bytes.fromhex(h), np.uint8) for h in hashes])
    xor = np.bitwise_xor(packed[:, None, :], packed[None, :, :])
    ham = np.unpackbits(xor, axis=-1).sum(axis=-1).astype(np.uint8)
    labels = DBSCAN(metric="precomputed", eps=10, min_samples=2).fit_predict(ham)
    groups = {}
    for i, label in enumerate(labels):
        if label != -1:
            groups.setdefault(int(label), []).append(names[i])
    return list(groups.values())


def photo_set(paths, base):
    entries, hashes, names = [], [], []
    for p in paths:
        grey = cv2.imdecode(np.fromfile(str(p), np.uint8), cv2.IMREAD_GRAYSCALE)
        if grey is None:
            continue
        name = str(p.relative_to(base))
        ref = pixel_reference(grey)
        entries.append({"file": name, **ref})
        hashes.append(ref["phash"])
        names.append(name)
    return {"photos": entries, "duplicates": duplicate_groups(hashes, names)}


# ---------------------------------------------------------------- album answers

def f32(x):
    return np.asarray(x, dtype=np.float32)


def normalize(v):
    v = f32(v)
    return v / np.linalg.norm(v, axis=-1, keepdims=True).astype(np.float32)


def categorize(sims, tags, threshold=0.0, k=10, tau=0.28, lam=0.5, top=5, other="기타",
               boosts=None, parents=None, concepts=()):
    """category.py's categorize_images on a precomputed [N, T] similarity matrix,
    with its optional tag boosts and parent refinement (both off in its pipeline)."""
    n_img, n_tag = sims.shape
    sims = sims.copy()
    for t, tag in enumerate(tags):  # apply_tag_boosts
        if boosts and tag in boosts:
            mask = sims[:, t] <= threshold
            sims[mask, t] = sims[mask, t] * np.float32(boosts[tag])
    topk = []
    for i in range(n_img):
        order = sorted(range(n_tag), key=lambda t: -float(sims[i, t]))[:k]
        topk.append([(tags[t], float(sims[i, t])) for t in order if float(sims[i, t]) >= threshold])
    if parents:  # refine_categories_by_parent
        refined = []
        for info in topk:
            d = dict(info)
            for tag, score in info:
                del d[tag]
                for parent in parents.get(tag, []):
                    if parent in concepts:
                        d[tag] = score
                    d[parent] = max(d.get(parent, 0), score - 0.001)
            refined.append([(t, float(s)) for t, s in d.items()])
        topk = refined

    def rep_scores(infos):
        s = np.zeros(n_tag, np.float32)
        b = np.zeros(n_tag, np.float32)
        for image_tags in infos:
            for tag, score in image_tags:
                t = tags.index(tag)
                s[t] = np.float32(s[t] + np.float32(score))
                if score > tau:
                    b[t] = np.float32(b[t] + np.float32(score))
        total = s + np.float32(lam) * b
        return sorted([(tags[t], float(total[t])) for t in range(n_tag)], key=lambda x: x[1], reverse=True)

    rep = {t for t, _ in rep_scores(topk)[:top]}
    first = {}
    for i, image_tags in enumerate(topk):
        for tag, score in image_tags:
            if tag in rep and score >= threshold:
                first.setdefault(tag, []).append(i)
                break
        else:
            first.setdefault(other, []).append(i)
    final = {}
    for cat, idx in first.items():
        if cat == other:
            final.setdefault(other, []).extend(idx)
            continue
        new_rep = rep_scores([topk[i] for i in idx])[0][0]
        if new_rep == cat:
            final.setdefault(cat, []).extend(idx)
            continue
        for i in idx:
            if any(t == new_rep and s >= threshold for t, s in topk[i]):
                final.setdefault(new_rep, []).append(i)
            else:
                final.setdefault(other, []).append(i)
    return [{"category": c, "images": idx} for c, idx in final.items() if idx]


def album(seed=8, n=60, d=64, n_tags=30, prompts=4):
    rng = np.random.default_rng(seed)
    tag_dirs = normalize(rng.normal(size=(n_tags, d)))
    tag_prompts = normalize(tag_dirs[:, None, :] + 0.35 * rng.normal(size=(n_tags, prompts, d)) / np.sqrt(d))
    tags = [f"tag{t:02d}" for t in range(n_tags)]
    # Each photo leans on one or two tags, so similarities fall around CLIP's 0.15–0.35.
    weights = np.zeros((n, n_tags), np.float32)
    for i in range(n):
        main = rng.integers(0, 6)  # six popular tags, the rest rare
        weights[i, main] = rng.uniform(0.2, 0.45)
        weights[i, rng.integers(0, n_tags)] += rng.uniform(0.0, 0.3)
    emb = f32(weights @ tag_dirs + rng.normal(size=(n, d)) * 0.9 / np.sqrt(d)) * f32(rng.uniform(5, 20, (n, 1)))
    img = normalize(emb)
    # category.py: einsum over prompts, then the mean over them.
    sims = f32(np.einsum("nd,tpd->ntp", img, tag_prompts).mean(axis=-1))
    cats = categorize(sims, tags)
    # The same album with the functions' own 0.21 threshold, boosts and parents.
    options = {
        "min_similarity": 0.21,
        "tag_boosts": {"tag07": 1.3, "tag10": 1.5},
        "parents": {"tag06": ["tag00"], "tag07": ["tag01", "tag02"], "tag08": ["tag03"],
                    "tag12": ["tag04"], "tag13": ["tag05", "tag09"]},
        "concepts": ["tag02", "tag09"],
    }
    cats_options = categorize(sims, tags, threshold=options["min_similarity"], boosts=options["tag_boosts"],
                              parents=options["parents"], concepts=options["concepts"])
    # quality.py: softmax of the raw cosines of each pair, sharp (a) and good (b).
    fields = ["good", "sharp"]
    pair_dirs = normalize(rng.normal(size=(2, 2, d)))
    quality_text = normalize(pair_dirs + 0.02 * img.mean(axis=0))
    sharp_good = {}
    for f, field in enumerate(fields):
        sim = img @ quality_text[f].T
        e = np.exp(sim - sim.max(axis=1, keepdims=True))
        sharp_good[field] = (e / e.sum(axis=1, keepdims=True))[:, 0].astype(np.float32)
    low = []
    for i in range(n):
        a, b = float(sharp_good["sharp"][i]), float(sharp_good["good"][i])
        if not (a >= 0.488 and (1 - 0.25) * a + 0.25 * b >= 0.490):
            low.append(i)
    # highlight.py: a Linear(D → 1) head over the normalised embedding.
    w = f32(rng.normal(size=d) * 0.5)
    bias = np.float32(0.25)
    scores = (img @ w + bias).astype(np.float32)
    return {
        "embeddings": emb.tolist(),
        "tags": tags,
        "tag_prompts": tag_prompts.tolist(),
        "sims": sims.tolist(),
        "categories": cats,
        "category_options": options,
        "categories_with_options": cats_options,
        "quality_fields": fields,
        "quality_text": quality_text.tolist(),
        "quality_scores": {k: v.tolist() for k, v in sharp_good.items()},
        "low_quality": low,
        "score_weight": w.tolist(),
        "score_bias": float(bias),
        "scores": scores.tolist(),
    }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--mate", default="/usr/share/backgrounds/mate")
    ap.add_argument("--mate-count", type=int, default=16)
    args = ap.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    make_edited()
    photos = sorted(p for p in (FIXTURES / "photos").iterdir() if p.is_file())
    photos += sorted((OUT / "edited").iterdir())
    pixels = {
        "versions": {"opencv": cv2.__version__, "numpy": np.__version__},
        "fixtures": photo_set(photos, FIXTURES),
        "synthetic": [{"size": [w, h], **pixel_reference(synth(w, h))} for w, h in SYNTH_SIZES],
    }
    mate = Path(args.mate)
    if mate.is_dir():
        jpegs = sorted(p for p in mate.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg"))
        pixels["mate"] = photo_set(jpegs[: args.mate_count], mate)
    (OUT / "pixels.json").write_text(json.dumps(pixels, indent=1, ensure_ascii=False) + "\n")
    (OUT / "album.json").write_text(json.dumps(album(), ensure_ascii=False) + "\n")
    print("wrote", OUT)


if __name__ == "__main__":
    main()
