//! SSD-MobileNetV1 face detector (512×512 input, 5118 anchors).

use std::path::Path;

use super::nhwc::{square_input, Conv, Crop, Depthwise, Map, Padding, RgbView};
use super::tfjs::WeightMap;
use crate::error::ModelError;

const INPUT: usize = 512;
const BATCH_NORM_EPSILON: f32 = 0.001;
const ANCHORS: usize = 5118;

/// A detection: score and box as fractions of the photo's width and height.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Detection {
    /// Face probability.
    pub score: f32,
    /// Left, top, width, height, each a fraction of the photo's size.
    pub rect: [f32; 4],
}

/// Convolution + folded batch-norm offset + ReLU6.
struct Pointwise(Conv);

impl Pointwise {
    fn load(
        map: &WeightMap,
        prefix: &str,
        k: usize,
        cin: usize,
        cout: usize,
    ) -> Result<Self, ModelError> {
        let filter = map.get(&format!("{prefix}/weights"), &[k, k, cin, cout])?;
        let offset = map.get(&format!("{prefix}/convolution_bn_offset"), &[cout])?;
        Ok(Self(Conv::new(
            k,
            cin,
            cout,
            &filter.values,
            offset.values.clone(),
        )?))
    }

    fn forward(&self, x: &Map, stride: usize) -> Result<Map, ModelError> {
        Ok(self.0.forward(x, stride, Padding::Same)?.relu6())
    }
}

struct ConvPair {
    depthwise: Depthwise,
    pointwise: Pointwise,
}

struct BoxPredictor {
    boxes: Conv,
    classes: Conv,
}

/// The network's weights.
pub struct FaceDetector {
    conv_0: Pointwise,
    pairs: Vec<ConvPair>,
    prediction: Vec<Pointwise>,
    predictors: Vec<BoxPredictor>,
    /// `[ANCHORS][4]` prior boxes.
    anchors: Vec<f32>,
}

impl FaceDetector {
    /// Loads `ssd_mobilenetv1_model` from `dir`.
    pub fn load(dir: &Path) -> Result<Self, ModelError> {
        let map = WeightMap::load(dir, "ssd_mobilenetv1_model")?;
        let conv_0 = Pointwise::load(&map, "MobilenetV1/Conv2d_0_pointwise", 3, 3, 32)?;
        let widths = [
            32, 64, 128, 128, 256, 256, 512, 512, 512, 512, 512, 512, 1024, 1024,
        ];
        let mut pairs = Vec::new();
        for idx in 1..=13 {
            let (cin, cout) = (widths[idx - 1], widths[idx]);
            let prefix = format!("MobilenetV1/Conv2d_{idx}_depthwise");
            let get = |name: &str| map.get(&format!("{prefix}/{name}"), &[cin]);
            let (gamma, beta, mean, variance) = (
                get("BatchNorm/gamma")?,
                get("BatchNorm/beta")?,
                get("BatchNorm/moving_mean")?,
                get("BatchNorm/moving_variance")?,
            );
            let filter = map.get(&format!("{prefix}/depthwise_weights"), &[3, 3, cin, 1])?;
            // Batch norm folds into the depthwise filter and a bias.
            let scale: Vec<f32> = gamma
                .values
                .iter()
                .zip(&variance.values)
                .map(|(g, v)| g / (v + BATCH_NORM_EPSILON).sqrt())
                .collect();
            let bias = beta
                .values
                .iter()
                .zip(&mean.values)
                .zip(&scale)
                .map(|((b, m), s)| b - m * s)
                .collect();
            let filter = filter
                .values
                .chunks_exact(cin)
                .flat_map(|tap| tap.iter().zip(&scale).map(|(w, s)| w * s))
                .collect();
            pairs.push(ConvPair {
                depthwise: Depthwise { k: 3, filter, bias },
                pointwise: Pointwise::load(
                    &map,
                    &format!("MobilenetV1/Conv2d_{idx}_pointwise"),
                    1,
                    cin,
                    cout,
                )?,
            });
        }
        let shapes = [
            (1, 1024, 256),
            (3, 256, 512),
            (1, 512, 128),
            (3, 128, 256),
            (1, 256, 128),
            (3, 128, 256),
            (1, 256, 64),
            (3, 64, 128),
        ];
        let prediction = shapes
            .iter()
            .enumerate()
            .map(|(idx, &(k, cin, cout))| {
                Pointwise::load(
                    &map,
                    &format!("Prediction/Conv2d_{idx}_pointwise"),
                    k,
                    cin,
                    cout,
                )
            })
            .collect::<Result<_, _>>()?;
        let inputs = [(512, 3), (1024, 6), (512, 6), (256, 6), (256, 6), (128, 6)];
        let predictors = inputs
            .iter()
            .enumerate()
            .map(|(idx, &(cin, anchors))| {
                let conv = |part: &str, per_anchor: usize| -> Result<Conv, ModelError> {
                    let prefix = format!("Prediction/BoxPredictor_{idx}/{part}");
                    let cout = anchors * per_anchor;
                    let filter = map.get(&format!("{prefix}/weights"), &[1, 1, cin, cout])?;
                    let bias = map.get(&format!("{prefix}/biases"), &[cout])?;
                    Conv::new(1, cin, cout, &filter.values, bias.values.clone())
                };
                Ok(BoxPredictor {
                    boxes: conv("BoxEncodingPredictor", 4)?,
                    classes: conv("ClassPredictor", 3)?,
                })
            })
            .collect::<Result<_, ModelError>>()?;
        let anchors = map
            .get("Output/extra_dim", &[1, ANCHORS, 4])?
            .values
            .clone();
        Ok(Self {
            conv_0,
            pairs,
            prediction,
            predictors,
            anchors,
        })
    }

    /// Faces scoring above `min_score`, best first, after non-maximum
    /// suppression at IoU 0.5, at most `max_results`.
    pub fn detect(
        &self,
        photo: &RgbView<'_>,
        min_score: f32,
        max_results: usize,
    ) -> Result<Vec<Detection>, ModelError> {
        if photo.width == 0 || photo.height == 0 {
            return Ok(Vec::new());
        }
        let whole = Crop {
            x: 0,
            y: 0,
            w: photo.width,
            h: photo.height,
        };
        // The photo is padded at the bottom/right to a square and scaled to 512.
        let x = square_input(photo, whole, false, INPUT, |v, _| v / 127.5 - 1.0);
        let (boxes, scores) = self.forward(&x)?;
        let kept = non_max_suppression(&boxes, &scores, max_results, 0.5, min_score);
        // Box coordinates are fractions of the padded square; rescale them to the photo.
        let long = photo.width.max(photo.height) as f64;
        let reshaped = |side: usize| (side as f64 * INPUT as f64 / long).round().max(1.0);
        let pad_x = (INPUT as f64 / reshaped(photo.width)) as f32;
        let pad_y = (INPUT as f64 / reshaped(photo.height)) as f32;
        Ok(kept
            .into_iter()
            .filter_map(|i| {
                let b = &boxes[i * 4..i * 4 + 4];
                let (top, bottom) = (b[0].max(0.0) * pad_y, b[2].min(1.0) * pad_y);
                let (left, right) = (b[1].max(0.0) * pad_x, b[3].min(1.0) * pad_x);
                (right > left && bottom > top).then_some(Detection {
                    score: scores[i],
                    rect: [left, top, right - left, bottom - top],
                })
            })
            .collect())
    }

    /// Decoded boxes `[ANCHORS][ymin, xmin, ymax, xmax]` and face scores.
    fn forward(&self, x: &Map) -> Result<(Vec<f32>, Vec<f32>), ModelError> {
        let mut out = self.conv_0.forward(x, 2)?;
        let mut conv11 = None;
        for (i, pair) in self.pairs.iter().enumerate() {
            let layer = i + 1;
            let stride = if [2, 4, 6, 12].contains(&layer) { 2 } else { 1 };
            out = pair
                .pointwise
                .forward(&pair.depthwise.forward(&out, stride).relu6(), 1)?;
            if layer == 11 {
                conv11 = Some(out.clone());
            }
        }
        let conv11 = conv11.ok_or_else(|| ModelError::Internal("no 11th layer".into()))?;
        let p = &self.prediction;
        let conv1 = p[1].forward(&p[0].forward(&out, 1)?, 2)?;
        let conv3 = p[3].forward(&p[2].forward(&conv1, 1)?, 2)?;
        let conv5 = p[5].forward(&p[4].forward(&conv3, 1)?, 2)?;
        let conv7 = p[7].forward(&p[6].forward(&conv5, 1)?, 2)?;
        let mut encodings = Vec::with_capacity(ANCHORS * 4);
        let mut classes = Vec::with_capacity(ANCHORS * 3);
        for (predictor, map) in self
            .predictors
            .iter()
            .zip([&conv11, &out, &conv1, &conv3, &conv5, &conv7])
        {
            encodings.extend(predictor.boxes.forward(map, 1, Padding::Same)?.data);
            classes.extend(predictor.classes.forward(map, 1, Padding::Same)?.data);
        }
        if encodings.len() != ANCHORS * 4 || classes.len() != ANCHORS * 3 {
            return Err(ModelError::Internal(format!(
                "{} box encodings for {ANCHORS} anchors",
                encodings.len() / 4
            )));
        }
        let mut boxes = Vec::with_capacity(ANCHORS * 4);
        for (anchor, e) in self.anchors.chunks_exact(4).zip(encodings.chunks_exact(4)) {
            let (size_y, size_x) = (anchor[2] - anchor[0], anchor[3] - anchor[1]);
            let (centre_y, centre_x) = (anchor[0] + size_y / 2.0, anchor[1] + size_x / 2.0);
            let half_y = (e[2] / 5.0).exp() * size_y / 2.0;
            let half_x = (e[3] / 5.0).exp() * size_x / 2.0;
            let y = e[0] / 10.0 * size_y + centre_y;
            let x = e[1] / 10.0 * size_x + centre_x;
            boxes.extend([y - half_y, x - half_x, y + half_y, x + half_x]);
        }
        let scores = classes
            .chunks_exact(3)
            .map(|c| 1.0 / (1.0 + (-c[1]).exp()))
            .collect();
        Ok((boxes, scores))
    }
}

fn iou(a: &[f32], b: &[f32]) -> f32 {
    let span = |v: &[f32]| {
        (
            v[0].min(v[2]),
            v[1].min(v[3]),
            v[0].max(v[2]),
            v[1].max(v[3]),
        )
    };
    let (ay0, ax0, ay1, ax1) = span(a);
    let (by0, bx0, by1, bx1) = span(b);
    let (area_a, area_b) = ((ay1 - ay0) * (ax1 - ax0), (by1 - by0) * (bx1 - bx0));
    if area_a <= 0.0 || area_b <= 0.0 {
        return 0.0;
    }
    let inter = (ay1.min(by1) - ay0.max(by0)).max(0.0) * (ax1.min(bx1) - ax0.max(bx0)).max(0.0);
    inter / (area_a + area_b - inter)
}

/// Greedy suppression: best first, a box is dropped when it overlaps a kept
/// one by more than `iou_threshold`.
fn non_max_suppression(
    boxes: &[f32],
    scores: &[f32],
    max_results: usize,
    iou_threshold: f32,
    min_score: f32,
) -> Vec<usize> {
    let mut candidates: Vec<usize> = (0..scores.len())
        .filter(|&i| scores[i] > min_score)
        .collect();
    candidates.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]));
    let mut kept: Vec<usize> = Vec::new();
    for c in candidates {
        if kept.len() >= max_results {
            break;
        }
        let own = &boxes[c * 4..c * 4 + 4];
        if kept
            .iter()
            .all(|&k| iou(own, &boxes[k * 4..k * 4 + 4]) <= iou_threshold)
        {
            kept.push(c);
        }
    }
    kept
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suppression_keeps_the_best_of_overlapping_boxes() {
        let boxes = [
            0.0, 0.0, 1.0, 1.0, 0.0, 0.05, 1.0, 1.05, 2.0, 2.0, 3.0, 3.0, 5.0, 5.0, 6.0, 6.0,
        ];
        let scores = [0.8, 0.9, 0.7, 0.4];
        assert_eq!(
            non_max_suppression(&boxes, &scores, 100, 0.5, 0.5),
            vec![1, 2]
        );
        assert_eq!(non_max_suppression(&boxes, &scores, 1, 0.5, 0.5), vec![1]);
        assert!((iou(&boxes[0..4], &boxes[4..8]) - 0.95 / 1.05).abs() < 1e-5);
    }
}
