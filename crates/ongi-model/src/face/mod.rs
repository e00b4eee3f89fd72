//! Face detection, landmarks and descriptors with the face-api networks
//! (TF.js weights): SSD-MobileNetV1 finds faces, a 68-point landmark net
//! places eyes and mouth, and a ResNet turns the face square those define
//! into a 128-d descriptor. Each step reproduces the reference library's
//! geometry (padding, resizing, box clipping) so descriptors agree with it.

mod detector;
mod landmarks;
mod nhwc;
mod recognition;
mod tfjs;

use std::path::Path;

pub use detector::{Detection, FaceDetector};
pub use landmarks::LandmarkNet;
pub use nhwc::RgbView;
pub use recognition::{RecognitionNet, DESCRIPTOR_LEN};

use crate::error::ModelError;
use nhwc::Crop;

/// The training mean the landmark and recognition nets subtract (RGB, 0–255).
const MEAN_RGB: [f32; 3] = [122.782, 117.001, 104.298];

/// How the landmarks place the face square the descriptor is computed on.
const ALIGN_X: f32 = 0.5;
const ALIGN_Y: f32 = 0.43;
const ALIGN_SCALE: f32 = 0.45;

/// What to keep of the detector's output.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FaceOptions {
    /// Detections scoring at or below this are dropped.
    pub min_score: f32,
    /// At most this many faces per photo (the best ones): bounds the cost.
    pub max_faces: usize,
}

impl Default for FaceOptions {
    fn default() -> Self {
        Self {
            min_score: 0.5,
            max_faces: 100,
        }
    }
}

/// One face found in a photo, in the photo's pixel frame.
#[derive(Debug, Clone, PartialEq)]
pub struct Face {
    /// Detector score.
    pub score: f32,
    /// Left, top, width, height in pixels (may reach past the photo's edge).
    pub bbox: [f32; 4],
    /// The 68 landmarks in pixels (jaw 0–16, brows 17–26, nose 27–35,
    /// eyes 36–47, mouth 48–67).
    pub landmarks: Vec<[f32; 2]>,
    /// The 128-d descriptor (not normalised).
    pub descriptor: Vec<f32>,
}

/// The three networks.
pub struct FaceModels {
    detector: FaceDetector,
    landmarks: LandmarkNet,
    recognition: RecognitionNet,
}

impl FaceModels {
    /// Loads the three models from a directory laid out by
    /// `scripts/fetch-face-models.sh`.
    pub fn load(dir: &Path) -> Result<Self, ModelError> {
        Ok(Self {
            detector: FaceDetector::load(dir)?,
            landmarks: LandmarkNet::load(dir)?,
            recognition: RecognitionNet::load(dir)?,
        })
    }

    /// Every face in the photo, best first.
    pub fn faces(
        &self,
        photo: &RgbView<'_>,
        options: &FaceOptions,
    ) -> Result<Vec<Face>, ModelError> {
        if photo.pixels.len() != photo.width * photo.height * 3 {
            return Err(ModelError::Input(format!(
                "{} bytes for a {}×{} RGB photo",
                photo.pixels.len(),
                photo.width,
                photo.height
            )));
        }
        let (width, height) = (photo.width as f32, photo.height as f32);
        let mut faces = Vec::new();
        for detection in self
            .detector
            .detect(photo, options.min_score, options.max_faces)?
        {
            let [x, y, w, h] = detection.rect;
            let bbox = [x * width, y * height, w * width, h * height];
            let Some(crop) = clip(photo, bbox) else {
                continue;
            };
            let relative = self.landmarks.landmarks(photo, crop)?;
            let landmarks: Vec<[f32; 2]> = relative
                .iter()
                .map(|p| {
                    [
                        p[0] * crop.w as f32 + bbox[0],
                        p[1] * crop.h as f32 + bbox[1],
                    ]
                })
                .collect();
            let Some(square) = clip(photo, align(&landmarks, crop)) else {
                continue;
            };
            faces.push(Face {
                score: detection.score,
                bbox,
                descriptor: self.recognition.descriptor(photo, square)?,
                landmarks,
            });
        }
        Ok(faces)
    }
}

/// The box clipped to the photo and floored to whole pixels; `None` when
/// nothing is left.
fn clip(photo: &RgbView<'_>, [x, y, w, h]: [f32; 4]) -> Option<Crop> {
    let (cx, cy) = (x.max(0.0), y.max(0.0));
    let cw = (x + w - cx).min(photo.width as f32 - cx);
    let ch = (y + h - cy).min(photo.height as f32 - cy);
    let (cx, cy, cw, ch) = (cx.floor(), cy.floor(), cw.floor(), ch.floor());
    if !(cw >= 1.0 && ch >= 1.0) {
        return None;
    }
    let crop = Crop {
        x: cx as usize,
        y: cy as usize,
        w: cw as usize,
        h: ch as usize,
    };
    (crop.x + crop.w <= photo.width && crop.y + crop.h <= photo.height).then_some(crop)
}

/// The face square from the eye and mouth centres: its side is the mean
/// eye-to-mouth distance over 0.45, placed around their centroid.
fn align(landmarks: &[[f32; 2]], crop: Crop) -> [f32; 4] {
    let centre = |points: &[[f32; 2]]| {
        let n = points.len() as f32;
        let (sx, sy) = points
            .iter()
            .fold((0.0, 0.0), |(sx, sy), p| (sx + p[0], sy + p[1]));
        [sx / n, sy / n]
    };
    let centres = [
        centre(&landmarks[36..42]),
        centre(&landmarks[42..48]),
        centre(&landmarks[48..68]),
    ];
    let mouth = centres[2];
    let dist = |p: [f32; 2]| ((mouth[0] - p[0]).powi(2) + (mouth[1] - p[1]).powi(2)).sqrt();
    let size = ((dist(centres[0]) + dist(centres[1])) / 2.0 / ALIGN_SCALE).floor();
    let reference = centre(&centres);
    let x = (reference[0] - ALIGN_X * size).max(0.0).floor();
    let y = (reference[1] - ALIGN_Y * size).max(0.0).floor();
    // The reference library bounds the square by the detection crop's size
    // offset by the square's corner.
    [
        x,
        y,
        size.min(crop.w as f32 + x),
        size.min(crop.h as f32 + y),
    ]
}
