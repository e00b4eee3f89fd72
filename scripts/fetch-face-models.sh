#!/usr/bin/env bash
# Lays out the face models of @vladmandic/face-api (real trained networks,
# TF.js weight manifests + binary shards, MIT licence) and its six sample
# group photos in DIR, fetched from the npm registry with `npm pack`:
#   DIR/<model>-weights_manifest.json, DIR/<model>.bin  (five face models)
#   DIR/samples/sample1.jpg … sample6.jpg
# Idempotent: a no-op once DIR holds this version.
set -euo pipefail
dir=${1:?usage: scripts/fetch-face-models.sh DIR}
package=@vladmandic/face-api
version=1.7.15
[ -f "$dir/.face-api-$version" ] && exit 0
command -v npm >/dev/null || { echo "fetch-face-models: npm is not on PATH" >&2; exit 1; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
(cd "$tmp" && npm pack --silent "$package@$version" >/dev/null)
tar xzf "$tmp"/*.tgz -C "$tmp"
mkdir -p "$dir/samples"
for model in ssd_mobilenetv1_model tiny_face_detector_model face_landmark_68_model \
  face_landmark_68_tiny_model face_recognition_model; do
  cp "$tmp/package/model/$model-weights_manifest.json" "$tmp/package/model/$model.bin" "$dir/"
done
cp "$tmp"/package/demo/sample[1-6].jpg "$dir/samples/"
cp "$tmp/package/LICENSE" "$dir/LICENSE.face-api"
touch "$dir/.face-api-$version"
echo "face models of $package $version in $dir" >&2
