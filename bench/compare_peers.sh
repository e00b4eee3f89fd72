#!/usr/bin/env bash
# Compare ongi's CLIP image tower (f32, bf16, int8 and the `auto` default) with
# PyTorch (f32, bf16 autocast), ONNX Runtime (f32, dynamic int8) and OpenVINO
# (f32, bf16), each with its cosine to PyTorch f32, and preprocessing with the
# Python (PIL + transformers) reference pipeline, in one run, as ratios.
#
#   bench/compare_peers.sh [--batch-sizes 1,16] [--threads 1,2] [--images 32]
#                          [--preprocess-images 8] [--rounds 3] [--no-preprocess]
#                          [--pipeline-images 64] [--no-pipeline] [--no-memory]
#
# The image tower is timed in --rounds rounds, each running every engine at
# every thread count in turn; the table shows each setting's median round.
#
# Preprocessing is timed for ongi's exact (PIL bit-exact) and fast
# (DCT-scaled JPEG decode, the default) paths against PIL + transformers and
# against OpenCV's reduced decode. End to end (photos/s from JPEG bytes to
# stored features) ongi's serving path runs against OpenCV + OpenVINO and
# the original's PIL + PyTorch. Then bench/serve_memory.sh
# measures `ongi serve`'s peak RSS (skip with --no-memory).
#
# Environment:
#   ONGI_BENCH_VENV    Python venv for the peers (default ~/.cache/ongi/bench-venv;
#                      created and pip-installed from bench/requirements.txt).
#                      Point it at an existing env with the pinned packages to
#                      skip the install (e.g. ONGI_BENCH_VENV=/work/pyenv).
#   ONGI_BENCH_PYTHON  interpreter used to create the venv (default python3)
#   ONGI_BENCH_TORCH_INDEX  optional extra pip index URL serving CPU-only torch
#                      wheels (default: none; torch comes from the default index)
#   ONGI_BENCH_CACHE   cache dir (default ~/.cache/ongi): vit-b32-random/ (the
#                      full-size random checkpoint + vision.onnx, built once by
#                      scripts/make_fixtures.py --full --onnx) and bench-photos/
#   ONGI_BENCH_PHOTO_SRC  directory of source JPEGs for the 12-MP photos (default
#                      /usr/share/backgrounds/mate/nature, from Debian's
#                      mate-backgrounds, which .ci/run installs; else
#                      tests/fixtures/photos)
#
# Each engine runs in its own process per thread count. Raw JSON lines are kept
# in a temp dir whose path is printed at the end.
set -euo pipefail

BATCH_SIZES=1,16
THREADS=1,2
IMAGES=32
PRE_IMAGES=8
DO_PRE=1
DO_PIPE=1
PIPE_IMAGES=64
DO_MEM=1
ROUNDS=3
while [[ $# -gt 0 ]]; do
    case "$1" in
        --batch-sizes) BATCH_SIZES=$2; shift 2 ;;
        --threads) THREADS=$2; shift 2 ;;
        --images) IMAGES=$2; shift 2 ;;
        --rounds) ROUNDS=$2; shift 2 ;;
        --preprocess-images) PRE_IMAGES=$2; shift 2 ;;
        --no-preprocess) DO_PRE=0; shift ;;
        --pipeline-images) PIPE_IMAGES=$2; shift 2 ;;
        --no-pipeline) DO_PIPE=0; shift ;;
        --no-memory) DO_MEM=0; shift ;;
        -h|--help) sed -n '2,34p' "$0"; exit 0 ;;
        *) echo "unknown argument: $1" >&2; exit 2 ;;
    esac
done

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CACHE=${ONGI_BENCH_CACHE:-$HOME/.cache/ongi}
VENV=${ONGI_BENCH_VENV:-$CACHE/bench-venv}
MODEL=$CACHE/vit-b32-random
PHOTOS=$CACHE/bench-photos
TORCH_INDEX=${ONGI_BENCH_TORCH_INDEX:-}
log() { echo "[compare_peers] $*" >&2; }

# --- 1. Python venv with the pinned peers ----------------------------------
PY=$VENV/bin/python
if ! "$PY" -c 'import torch, transformers, onnx, onnxruntime, openvino, cv2, PIL, numpy, safetensors, regex, tokenizers' 2>/dev/null; then
    if [[ ! -x $PY ]]; then
        log "creating venv $VENV"
        mkdir -p "$(dirname "$VENV")"
        "${ONGI_BENCH_PYTHON:-python3}" -m venv "$VENV"
        "$PY" -m pip install --upgrade pip >&2
    fi
    TORCH_PIN=$(grep -E '^torch==' "$REPO/bench/requirements.txt")
    if [[ -n $TORCH_INDEX ]]; then
        log "installing $TORCH_PIN (CPU wheel from $TORCH_INDEX)"
        "$PY" -m pip install --retries 1 --timeout 20 --index-url "$TORCH_INDEX" "$TORCH_PIN" >&2 \
            || log "CPU wheel install failed; falling back to PyPI's torch"
    fi
    log "installing bench/requirements.txt"
    "$PY" -m pip install -r "$REPO/bench/requirements.txt" >&2
fi
# Report any drift from the pins (not fatal: the numbers are ratios in one run).
"$PY" - "$REPO/bench/requirements.txt" <<'EOF' >&2 || true
import sys, importlib.metadata as md
for line in open(sys.argv[1]):
    line = line.split("#")[0].strip()
    if "==" in line:
        name, want = line.split("==")
        try:
            have = md.version(name)
        except md.PackageNotFoundError:
            have = "missing"
        if have.split("+")[0] != want:
            print(f"[compare_peers] warning: {name} {have} (pinned {want})")
EOF

# --- 2. full-size random ViT-B/32 checkpoint + vision.onnx, built once -------
if [[ -f $MODEL/model.safetensors && -f $MODEL/config.json && -f $MODEL/preprocessor_config.json && -f $MODEL/vision.onnx ]]; then
    log "using cached $MODEL"
else
    log "building $MODEL (scripts/make_fixtures.py --full $CACHE --onnx)"
    (cd "$REPO" && "$PY" scripts/make_fixtures.py --full "$CACHE" --onnx) >&2
    [[ -f $MODEL/vision.onnx ]] || { log "vision.onnx was not produced"; exit 1; }
fi

# --- 3. ongi, release -------------------------------------------------------
log "cargo build --release -p ongi-bench"
(cd "$REPO" && cargo build --release -p ongi-bench) >&2
ONGI_BENCH=$REPO/target/release/ongi-bench

WORK=$(mktemp -d "${TMPDIR:-/tmp}/ongi-compare.XXXXXX")
log "raw results in $WORK"
log "load before: $(uptime)"

# --- 4. ongi and its peers, interleaved: one process per engine per thread
# count, ROUNDS times over; the table takes each setting's median, so a
# slow spell of the machine hits every engine alike instead of one.
# ongi runs at every precision it has (`auto` is what `ongi serve` picks
# here; its row is labelled with what that resolved to); the peers at
# theirs. PyTorch f32 runs first in each round: its outputs are the
# reference every other row's cosine is measured against.
PEERS=(torch torch-bf16 ort ort-int8 ov ov-bf16)
ONGI_DTYPES=(auto f32 bf16 int8)
REFS=$WORK/reference
for e in "${PEERS[@]}"; do : > "$WORK/peer-$e.jsonl"; done
for d in "${ONGI_DTYPES[@]}"; do : > "$WORK/ongi-$d.jsonl"; done
IFS=, read -r -a TLIST <<< "$THREADS"
for round in $(seq 1 "$ROUNDS"); do
    for t in "${TLIST[@]}"; do
        for engine in "${PEERS[@]}"; do
            log "round $round/$ROUNDS: $engine, $t thread(s)"
            "$PY" "$REPO/bench/peers.py" model --engine "$engine" --model "$MODEL" --threads "$t" \
                --batch-sizes "$BATCH_SIZES" --images "$IMAGES" --reference-dir "$REFS" \
                >> "$WORK/peer-$engine.jsonl"
        done
        for d in "${ONGI_DTYPES[@]}"; do
            log "round $round/$ROUNDS: ongi --dtype $d, $t thread(s)"
            "$ONGI_BENCH" --model "$MODEL" --batch-sizes "$BATCH_SIZES" --threads "$t" \
                --images "$IMAGES" --dtype "$d" --json --save-features "$WORK/features-$d" \
                > "$WORK/ongi-$d.round.jsonl"
            "$PY" "$REPO/bench/peers.py" cosine --jsonl "$WORK/ongi-$d.round.jsonl" \
                --features "$WORK/features-$d" --reference-dir "$REFS" >> "$WORK/ongi-$d.jsonl"
        done
    done
done

# --- 5. preprocessing: 12-MP JPEGs, ongi vs PIL + CLIPImageProcessor and
# vs OpenCV's reduced decode -------------------------------------------------
PRE_ARGS=()
if [[ $DO_PRE == 1 || $DO_PIPE == 1 ]]; then
    SRC=${ONGI_BENCH_PHOTO_SRC:-/usr/share/backgrounds/mate/nature}
    if ! compgen -G "$SRC/*.jpg" > /dev/null; then
        SRC=$REPO/tests/fixtures/photos
    fi
    # Only decodable, full-size landscape JPEGs of the fixtures make sense as sources.
    mapfile -t SRCS < <(ls "$SRC"/*.jpg | grep -v -e corrupt -e exif_ | head -n 4)
    log "12-MP photos in $PHOTOS (sources: $SRC)"
    "$PY" "$REPO/bench/peers.py" photos --out "$PHOTOS" --count 4 "${SRCS[@]}"
    mapfile -t PFILES < <(ls "$PHOTOS"/photo12mp_*.jpg)
fi
if [[ $DO_PRE == 1 ]]; then
    for mode in exact fast; do
        log "ongi-bench --preprocess --decode $mode (${#PFILES[@]} files, $PRE_IMAGES images)"
        "$ONGI_BENCH" --model "$MODEL" --preprocess "${PFILES[@]}" --images "$PRE_IMAGES" \
            --decode "$mode" --json >> "$WORK/ongi_pre.jsonl"
    done
    log "Python reference preprocessing"
    "$PY" "$REPO/bench/peers.py" preprocess --model "$MODEL" --images "$PRE_IMAGES" "${PFILES[@]}" \
        > "$WORK/py_pre.jsonl"
    log "OpenCV reduced-decode preprocessing"
    "$PY" "$REPO/bench/peers.py" preprocess-cv --model "$MODEL" --images "$PRE_IMAGES" "${PFILES[@]}" \
        > "$WORK/cv_pre.jsonl"
    PRE_ARGS=(--ongi-pre "$WORK/ongi_pre.jsonl" --py-pre "$WORK/py_pre.jsonl" --cv-pre "$WORK/cv_pre.jsonl")
fi

# --- 6. end to end: JPEG bytes -> stored features, per thread budget --------
# ongi through its serving path (default precision and decode workers;
# --decode fast, the default, and reduced) against OpenCV + OpenVINO (f32 and bf16 hints, with and without
# the pHash/blur work ongi's records also hold) and the original's PIL +
# PyTorch f32.
if [[ $DO_PIPE == 1 ]]; then
    : > "$WORK/pipeline.jsonl"
    log "ongi-bench --pipeline (${#PFILES[@]} files, $PIPE_IMAGES photos, threads $THREADS)"
    for mode in fast reduced; do
        "$ONGI_BENCH" --model "$MODEL" --pipeline "${PFILES[@]}" --threads "$THREADS" \
            --images "$PIPE_IMAGES" --decode "$mode" --json >> "$WORK/pipeline.jsonl"
    done
    for t in "${TLIST[@]}"; do
        for peer in "--engine cv-ov" "--engine cv-ov --ov-bf16" "--engine cv-ov --features" \
                    "--engine cv-ov --ov-bf16 --features" "--engine original --features"; do
            log "peers.py pipeline $peer, $t thread(s)"
            # shellcheck disable=SC2086
            "$PY" "$REPO/bench/peers.py" pipeline $peer --model "$MODEL" --threads "$t" \
                --images "$PIPE_IMAGES" "${PFILES[@]}" >> "$WORK/pipeline.jsonl"
        done
    done
    PRE_ARGS+=(--pipe "$WORK/pipeline.jsonl")
fi

log "load after: $(uptime)"
echo
TABLE_ARGS=()
for d in "${ONGI_DTYPES[@]}"; do TABLE_ARGS+=(--ongi "$WORK/ongi-$d.jsonl"); done
for e in "${PEERS[@]}"; do TABLE_ARGS+=(--peer "$WORK/peer-$e.jsonl"); done
"$PY" "$REPO/bench/peers.py" table "${TABLE_ARGS[@]}" "${PRE_ARGS[@]}"
echo
if [[ $DO_MEM == 1 ]]; then
    echo
    echo "ongi serve, peak RSS while embedding 16 12-MP photos (bench/serve_memory.sh)"
    ONGI_BENCH_CACHE=$CACHE "$REPO/bench/serve_memory.sh"
fi
echo
echo "machine: $(nproc) CPUs, $(uptime | sed 's/.*load/load/'); raw JSON lines: $WORK"
