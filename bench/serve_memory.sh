#!/usr/bin/env bash
# Peak RSS of `ongi serve` with the full-size ViT-B/32 checkpoint while it
# embeds one batch of 16 twelve-megapixel photos, against the budget: the
# weights' size at the served precision + 300 MB (f32: the checkpoint's size;
# bf16: half of it).
#
#   bench/serve_memory.sh [--decode fast|exact]... [--dtype D]... [--threads N] [--images N]
#
# Needs what bench/compare_peers.sh builds: ~/.cache/ongi/vit-b32-random/ and
# ~/.cache/ongi/bench-photos/*.jpg (ONGI_BENCH_CACHE moves both). Prints one
# line per decode mode: after-load RSS, peak RSS (VmHWM), the budget, and
# whether the peak is within it.
set -euo pipefail
cd "$(dirname "$0")/.."

MODES=()
DTYPES=()
THREADS=2
IMAGES=16
while [ $# -gt 0 ]; do
    case $1 in
        --decode) MODES+=("$2"); shift 2 ;;
        --dtype) DTYPES+=("$2"); shift 2 ;;
        --threads) THREADS=$2; shift 2 ;;
        --images) IMAGES=$2; shift 2 ;;
        -h|--help) sed -n '2,13p' "$0"; exit 0 ;;
        *) echo "unknown argument $1" >&2; exit 2 ;;
    esac
done
[ ${#MODES[@]} -gt 0 ] || MODES=(fast exact)
[ ${#DTYPES[@]} -gt 0 ] || DTYPES=(f32 bf16)

CACHE=${ONGI_BENCH_CACHE:-$HOME/.cache/ongi}
MODEL=$CACHE/vit-b32-random
PHOTOS=("$CACHE"/bench-photos/*.jpg)
[ -f "$MODEL/model.safetensors" ] || { echo "no $MODEL (run bench/compare_peers.sh once)" >&2; exit 1; }
[ -f "${PHOTOS[0]}" ] || { echo "no photos in $CACHE/bench-photos (run bench/compare_peers.sh once)" >&2; exit 1; }

cargo build --release -q -p ongi
ONGI=target/release/ongi
WORK=$(mktemp -d)
SERVER=""
cleanup() {
    [ -n "$SERVER" ] && kill "$SERVER" 2>/dev/null && wait "$SERVER" 2>/dev/null
    rm -rf "$WORK"
}
trap cleanup EXIT

# IMAGES distinct keys over the photos (the server de-duplicates keys, not bytes).
mkdir -p "$WORK/images"
keys=()
for i in $(seq 0 $((IMAGES - 1))); do
    src=${PHOTOS[$((i % ${#PHOTOS[@]}))]}
    cp "$src" "$WORK/images/photo_$i.jpg"
    keys+=("\"photo_$i.jpg\"")
done
body="{\"images\": [$(IFS=,; echo "${keys[*]}")]}"

weights=$(stat -c %s "$MODEL/model.safetensors")
kb() { awk -v k="$1" '$1 == k":" {print $2}' "/proc/$SERVER/status"; }
port=$((20000 + RANDOM % 20000))

printf '%-6s %-5s %8s %8s %12s %12s %12s %s\n' decode dtype threads images "after load" "peak RSS" budget "verdict (inference batches)"
for dtype in "${DTYPES[@]}"; do
for mode in "${MODES[@]}"; do
    case $dtype in
        bf16|f16|int8) budget=$((weights / 2 + 300 * 1000 * 1000)) ;;
        *) budget=$((weights + 300 * 1000 * 1000)) ;;
    esac
    rm -f "$WORK/store.redb"
    "$ONGI" serve --model "$MODEL" --images "$WORK/images" --store "$WORK/store.redb" \
        --bind "127.0.0.1:$port" --threads "$THREADS" --batch-size 16 --decode "$mode" \
        --dtype "$dtype" >"$WORK/serve-$mode.log" 2>&1 &
    SERVER=$!
    for _ in $(seq 1 600); do
        curl -fsS "http://127.0.0.1:$port/health/info" >/dev/null 2>&1 && break
        kill -0 "$SERVER" 2>/dev/null || { cat "$WORK/serve-$mode.log" >&2; exit 1; }
        sleep 0.1
    done
    loaded=$(($(kb VmRSS) * 1024))
    status=$(curl -sS -o "$WORK/reply.json" -w '%{http_code}' -H 'content-type: application/json' \
        -d "$body" "http://127.0.0.1:$port/api/albums/embedding")
    [ "$status" = 201 ] || { echo "embedding request: HTTP $status $(cat "$WORK/reply.json")" >&2; exit 1; }
    peak=$(($(kb VmHWM) * 1024))
    batches=$(curl -fsS "http://127.0.0.1:$port/metrics" |
        awk '$1 == "ongi_batch_size_count" {n=$2} $1 == "ongi_batch_size_sum" {s=$2}
             END {printf "%d batches, %d images", n, s}')
    kill "$SERVER"; wait "$SERVER" 2>/dev/null || true; SERVER=""
    verdict=$([ "$peak" -le "$budget" ] && echo "within" || echo "OVER")
    printf '%-6s %-5s %8s %8s %9.0f MB %9.0f MB %9.0f MB %s (%s)\n' \
        "$mode" "$dtype" "$THREADS" "$IMAGES" "$(bc -l <<<"$loaded/1000000")" "$(bc -l <<<"$peak/1000000")" \
        "$(bc -l <<<"$budget/1000000")" "$verdict" "$batches"
    port=$((port + 1))
done
done
printf 'budget = weights at the served precision (model.safetensors: %.0f MB at f32; half at bf16 and int8, whose values are packed as 16-bit lanes) + 300 MB; MB = 10^6 bytes\n' "$(bc -l <<<"$weights/1000000")"
