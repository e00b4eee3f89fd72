//! Faces in the embedding pass: the face models run on the pixels decoded
//! for CLIP, and their boxes and landmarks are mapped back to the upright,
//! full-size photo.

use std::path::Path;

use ongi_model::face::{FaceModels, FaceOptions, RgbView};
use ongi_model::ModelError;

use crate::features::FaceRecord;
use crate::preprocess::DecodedImage;

/// The face models and what to keep of their output.
pub struct FaceFinder {
    models: FaceModels,
    options: FaceOptions,
}

impl std::fmt::Debug for FaceFinder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FaceFinder")
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

impl FaceFinder {
    /// The longer side a reduced decode must keep for faces: the detector
    /// looks at 512 px, and a face 60 px wide in a 4000 px photo must still
    /// be 25 px wide or more for its descriptor.
    pub const MIN_LONG_SIDE: u32 = 1600;

    /// Loads the face models from `dir` (see `scripts/fetch-face-models.sh`).
    pub fn load(dir: &Path, options: FaceOptions) -> Result<Self, ModelError> {
        Ok(Self {
            models: FaceModels::load(dir)?,
            options,
        })
    }

    /// The faces of a decoded photo, best first, in the full-size frame.
    pub fn faces(&self, decoded: &DecodedImage) -> Result<Vec<FaceRecord>, ModelError> {
        let image = &decoded.image;
        let view = RgbView {
            width: image.width() as usize,
            height: image.height() as usize,
            pixels: image.as_raw(),
        };
        // A reduced decode covers `source_box` of its pixels; map back by it.
        let [x0, y0, x1, y1] = decoded.source_box;
        let sx = decoded.width as f32 / (x1 - x0).max(1.0);
        let sy = decoded.height as f32 / (y1 - y0).max(1.0);
        let to_full = |[x, y]: [f32; 2]| [(x - x0) * sx, (y - y0) * sy];
        Ok(self
            .models
            .faces(&view, &self.options)?
            .into_iter()
            .map(|face| {
                let [bx, by, bw, bh] = face.bbox;
                let [left, top] = to_full([bx, by]);
                let [right, bottom] = to_full([bx + bw, by + bh]);
                let clamp = |v: f32, max: u32| v.round().clamp(0.0, max as f32) as i32;
                FaceRecord {
                    score: face.score,
                    bbox: [
                        clamp(left, decoded.width),
                        clamp(top, decoded.height),
                        clamp(right, decoded.width),
                        clamp(bottom, decoded.height),
                    ],
                    landmarks: face.landmarks.into_iter().map(to_full).collect(),
                    embedding: face.descriptor,
                }
            })
            .collect())
    }
}
