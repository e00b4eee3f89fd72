// The reference for ongi's face detection and embedding: face-api's own
// JavaScript (TensorFlow.js, WASM backend: no native download) run on
// photos, writing what it finds as JSON.
//
//   cd scripts/face-reference && npm ci
//   node reference.mjs MODEL_DIR OUT.json PHOTO.jpg...
//
// MODEL_DIR is laid out by scripts/fetch-face-models.sh. Per photo: its
// size and each face found by SSD-MobileNetV1 (score ≥ MIN_SCORE): score,
// box [x, y, width, height] in pixels, the 68 landmarks, and the 128-d
// descriptor of the face recognition net.
import { createRequire } from 'node:module';
import fs from 'node:fs';
import path from 'node:path';

const MIN_SCORE = 0.5;
const require = createRequire(import.meta.url);
const faceapi = require('@vladmandic/face-api/dist/face-api.node-wasm.js');
const jpeg = require('jpeg-js');

const [modelDir, out, ...photos] = process.argv.slice(2);
if (!modelDir || !out || photos.length === 0) {
  console.error('usage: node reference.mjs MODEL_DIR OUT.json PHOTO.jpg...');
  process.exit(2);
}
await faceapi.tf.setBackend('wasm');
await faceapi.tf.ready();
await faceapi.nets.ssdMobilenetv1.loadFromDisk(modelDir);
await faceapi.nets.faceLandmark68Net.loadFromDisk(modelDir);
await faceapi.nets.faceRecognitionNet.loadFromDisk(modelDir);

const round = (v, digits) => Number(v.toFixed(digits));
const results = [];
for (const photo of photos) {
  const decoded = jpeg.decode(fs.readFileSync(photo), { useTArray: true, formatAsRGBA: false });
  const input = faceapi.tf.tensor3d(decoded.data, [decoded.height, decoded.width, 3], 'int32');
  const started = Date.now();
  const faces = await faceapi
    .detectAllFaces(input, new faceapi.SsdMobilenetv1Options({ minConfidence: MIN_SCORE }))
    .withFaceLandmarks()
    .withFaceDescriptors();
  input.dispose();
  console.error(`${path.basename(photo)}: ${faces.length} faces, ${Date.now() - started} ms`);
  results.push({
    photo: path.basename(photo),
    width: decoded.width,
    height: decoded.height,
    faces: faces.map((f) => ({
      score: round(f.detection.score, 5),
      box: [f.detection.box.x, f.detection.box.y, f.detection.box.width, f.detection.box.height].map((v) => round(v, 2)),
      landmarks: f.landmarks.positions.map((p) => [round(p.x, 2), round(p.y, 2)]),
      descriptor: Array.from(f.descriptor, (v) => round(v, 6)),
    })),
  });
}
const versions = { 'face-api': faceapi.version, tfjs: faceapi.tf.version_core, backend: faceapi.tf.getBackend() };
fs.writeFileSync(out, JSON.stringify({ generator: 'scripts/face-reference/reference.mjs', versions, min_score: MIN_SCORE, photos: results }) + '\n');
