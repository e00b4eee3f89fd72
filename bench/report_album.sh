#!/usr/bin/env bash
# Times `ongi analyze --html` on a 300-photo album: once cold (embeds every
# photo and makes the thumbnails in the same pass), then twice from the warm
# store (the report alone), and prints the page's size.
#
#   bench/report_album.sh [--photos N] [--model DIR]
#
# Photos: N JPEGs of 1600x1200, random crops of Debian's mate-backgrounds
# (installed by scripts/test-deps) or of tests/fixtures/photos, made once into
# $ONGI_BENCH_CACHE/report-album-N with the bench venv's Pillow
# (bench/compare_peers.sh creates it; ONGI_BENCH_VENV points elsewhere).
# Model: the full-size random ViT-B/32 that compare_peers.sh builds when it
# exists, else the tiny fixture model.
set -euo pipefail

N=300
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CACHE=${ONGI_BENCH_CACHE:-$HOME/.cache/ongi}
MODEL=$CACHE/vit-b32-random
[[ -f $MODEL/model.safetensors ]] || MODEL=$REPO/tests/fixtures/tiny-clip
while [[ $# -gt 0 ]]; do
    case "$1" in
        --photos) N=$2; shift 2 ;;
        --model) MODEL=$2; shift 2 ;;
        -h|--help) sed -n '2,14p' "$0"; exit 0 ;;
        *) echo "unknown argument: $1" >&2; exit 2 ;;
    esac
done
VENV=${ONGI_BENCH_VENV:-$CACHE/bench-venv}
PY=$VENV/bin/python
[[ -x $PY ]] || PY=python3
"$PY" -c 'import PIL' 2>/dev/null || { echo "Pillow missing for $PY: run bench/compare_peers.sh once or set ONGI_BENCH_VENV" >&2; exit 1; }

ALBUM=$CACHE/report-album-$N
if [[ $(ls "$ALBUM" 2>/dev/null | wc -l) -ne $N ]]; then
    SRC=/usr/share/backgrounds/mate/nature
    compgen -G "$SRC/*.jpg" > /dev/null || SRC=$REPO/tests/fixtures/photos
    rm -rf "$ALBUM" && mkdir -p "$ALBUM"
    "$PY" - "$SRC" "$ALBUM" "$N" <<'EOF'
import glob, random, sys
from PIL import Image, ImageEnhance
src, out, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
files = [f for f in sorted(glob.glob(src + "/*.jpg")) if "corrupt" not in f]
rng = random.Random(7)
for i in range(n):
    im = Image.open(files[i % len(files)]).convert("RGB")
    w, h = im.size
    cw, ch = int(w * rng.uniform(0.5, 1.0)), int(h * rng.uniform(0.5, 1.0))
    x, y = rng.randint(0, w - cw), rng.randint(0, h - ch)
    im = im.crop((x, y, x + cw, y + ch)).resize((1600, 1200))
    im = ImageEnhance.Brightness(im).enhance(rng.uniform(0.7, 1.3))
    im.save(f"{out}/photo_{i:04d}.jpg", quality=88)
EOF
fi

(cd "$REPO" && cargo build --release -p ongi) >&2
ONGI=$REPO/target/release/ongi
WORK=$(mktemp -d "${TMPDIR:-/tmp}/ongi-report.XXXXXX")
run() {
    local start end
    start=$(date +%s.%N)
    "$ONGI" analyze --model "$MODEL" --store "$WORK/features.redb" --html "$WORK/$1.html" "$ALBUM" > /dev/null 2> "$WORK/$1.log"
    end=$(date +%s.%N)
    awk -v a="$start" -v b="$end" 'BEGIN { print b - a }'
}
cold=$(run cold)
warm1=$(run warm1)
warm2=$(run warm2)
size=$(stat -c %s "$WORK/warm2.html")
echo "CPU: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(nproc) CPUs; model $(basename "$MODEL"); $N photos of 1600x1200"
printf "cold (embed + thumbnails + report): %6.2f s\n" "$cold"
printf "warm store, report only:           %6.2f s, %6.2f s  (target < 2 s: %.2fx of the budget)\n" "$warm1" "$warm2" "$(awk -v w="$warm2" 'BEGIN { print w / 2 }')"
printf "page size:                         %6.2f MB (target < 5 MB: %.2fx of the budget)\n" "$(awk -v s="$size" 'BEGIN { print s / 1e6 }')" "$(awk -v s="$size" 'BEGIN { print s / 5e6 }')"
echo "pages and logs: $WORK"
