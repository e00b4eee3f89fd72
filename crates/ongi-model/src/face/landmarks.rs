//! 68-point face landmark network (112×112 input): four dense blocks of
//! depthwise-separable convolutions, then one fully connected layer.

use std::path::Path;

use super::nhwc::{dense, square_input, Conv, Crop, Depthwise, Map, Padding, RgbView};
use super::tfjs::WeightMap;
use super::MEAN_RGB;
use crate::error::ModelError;

const INPUT: usize = 112;

/// Depthwise 3×3 (no bias) then pointwise 1×1 with bias.
struct Separable {
    depthwise: Depthwise,
    pointwise: Conv,
}

impl Separable {
    fn load(map: &WeightMap, prefix: &str, cin: usize, cout: usize) -> Result<Self, ModelError> {
        let depthwise = map.get(&format!("{prefix}/depthwise_filter"), &[3, 3, cin, 1])?;
        let pointwise = map.get(&format!("{prefix}/pointwise_filter"), &[1, 1, cin, cout])?;
        let bias = map.get(&format!("{prefix}/bias"), &[cout])?;
        Ok(Self {
            depthwise: Depthwise {
                k: 3,
                filter: depthwise.values.clone(),
                bias: vec![0.0; cin],
            },
            pointwise: Conv::new(1, cin, cout, &pointwise.values, bias.values.clone())?,
        })
    }

    fn forward(&self, x: &Map, stride: usize) -> Result<Map, ModelError> {
        self.pointwise
            .forward(&self.depthwise.forward(x, stride), 1, Padding::Same)
    }
}

enum First {
    Conv(Conv),
    Separable(Separable),
}

struct DenseBlock {
    first: First,
    rest: [Separable; 3],
}

impl DenseBlock {
    fn forward(&self, x: &Map) -> Result<Map, ModelError> {
        let out1 = match &self.first {
            First::Conv(conv) => conv.forward(x, 2, Padding::Same)?,
            First::Separable(sep) => sep.forward(x, 2)?,
        }
        .relu();
        let out2 = self.rest[0].forward(&out1, 1)?;
        let in3 = out1.clone().add(&out2).relu();
        let out3 = self.rest[1].forward(&in3, 1)?;
        let sum3 = out1.add(&out2).add(&out3);
        let out4 = self.rest[2].forward(&sum3.clone().relu(), 1)?;
        Ok(sum3.add(&out4).relu())
    }
}

/// The network's weights.
pub struct LandmarkNet {
    blocks: Vec<DenseBlock>,
    fc_weights: Vec<f32>,
    fc_bias: Vec<f32>,
}

impl LandmarkNet {
    /// Loads `face_landmark_68_model` from `dir`.
    pub fn load(dir: &Path) -> Result<Self, ModelError> {
        let map = WeightMap::load(dir, "face_landmark_68_model")?;
        let widths = [3, 32, 64, 128, 256];
        let mut blocks = Vec::new();
        for b in 0..4 {
            let (cin, cout) = (widths[b], widths[b + 1]);
            let prefix = format!("dense{b}");
            let first = if b == 0 {
                let filter = map.get(&format!("{prefix}/conv0/filters"), &[3, 3, cin, cout])?;
                let bias = map.get(&format!("{prefix}/conv0/bias"), &[cout])?;
                First::Conv(Conv::new(
                    3,
                    cin,
                    cout,
                    &filter.values,
                    bias.values.clone(),
                )?)
            } else {
                First::Separable(Separable::load(
                    &map,
                    &format!("{prefix}/conv0"),
                    cin,
                    cout,
                )?)
            };
            let rest = [
                Separable::load(&map, &format!("{prefix}/conv1"), cout, cout)?,
                Separable::load(&map, &format!("{prefix}/conv2"), cout, cout)?,
                Separable::load(&map, &format!("{prefix}/conv3"), cout, cout)?,
            ];
            blocks.push(DenseBlock { first, rest });
        }
        Ok(Self {
            blocks,
            fc_weights: map.get("fc/weights", &[256, 136])?.values.clone(),
            fc_bias: map.get("fc/bias", &[136])?.values.clone(),
        })
    }

    /// The 68 landmarks of the face in `crop`, as fractions of the crop's
    /// width and height.
    pub(crate) fn landmarks(
        &self,
        photo: &RgbView<'_>,
        crop: Crop,
    ) -> Result<Vec<[f32; 2]>, ModelError> {
        let mut x = square_input(photo, crop, true, INPUT, |v, ch| (v - MEAN_RGB[ch]) / 255.0);
        for block in &self.blocks {
            x = block.forward(&x)?;
        }
        let pooled = x.avg_pool(7, 2);
        let out = dense(&pooled.data, &self.fc_weights, Some(&self.fc_bias));
        // The outputs are fractions of the padded square; undo the centring.
        let scale = INPUT as f32 / crop.w.max(crop.h) as f32;
        let (w, h) = (crop.w as f32 * scale, crop.h as f32 * scale);
        let pad_x = if w < h { (w - h).abs() / 2.0 } else { 0.0 };
        let pad_y = if h < w { (w - h).abs() / 2.0 } else { 0.0 };
        Ok(out
            .chunks_exact(2)
            .map(|p| {
                [
                    (p[0] * INPUT as f32 - pad_x) / w,
                    (p[1] * INPUT as f32 - pad_y) / h,
                ]
            })
            .collect())
    }
}
