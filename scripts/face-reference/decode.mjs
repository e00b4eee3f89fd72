// Decodes JPEGs with jpeg-js, the decoder reference.mjs feeds face-api, and
// writes each as raw RGB (`OUT_DIR/NAME.WIDTHxHEIGHT.rgb`), so a test can run
// ongi's face models on exactly the reference's pixels.
//
//   node decode.mjs OUT_DIR PHOTO.jpg...
import { createRequire } from 'node:module';
import fs from 'node:fs';
import path from 'node:path';

const require = createRequire(import.meta.url);
const jpeg = require('jpeg-js');

const [outDir, ...photos] = process.argv.slice(2);
if (!outDir || photos.length === 0) {
  console.error('usage: node decode.mjs OUT_DIR PHOTO.jpg...');
  process.exit(2);
}
for (const photo of photos) {
  const d = jpeg.decode(fs.readFileSync(photo), { useTArray: true, formatAsRGBA: false });
  fs.writeFileSync(path.join(outDir, `${path.basename(photo)}.${d.width}x${d.height}.rgb`), d.data);
}
