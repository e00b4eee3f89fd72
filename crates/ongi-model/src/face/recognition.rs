//! Face recognition ResNet (150×150 input, 128-d descriptor), the dlib
//! ResNet-34 variant: each convolution is followed by a per-channel scale.

use std::path::Path;

use super::nhwc::{dense, square_input, Conv, Crop, Map, Padding, RgbView};
use super::tfjs::WeightMap;
use super::MEAN_RGB;
use crate::error::ModelError;

const INPUT: usize = 150;
/// The descriptor's length.
pub const DESCRIPTOR_LEN: usize = 128;

/// Convolution, bias, then `x * scale + shift` per channel.
struct ScaledConv {
    conv: Conv,
    scale: Vec<f32>,
    shift: Vec<f32>,
}

impl ScaledConv {
    fn load(
        map: &WeightMap,
        prefix: &str,
        k: usize,
        cin: usize,
        cout: usize,
    ) -> Result<Self, ModelError> {
        let filter = map.get(&format!("{prefix}/conv/filters"), &[k, k, cin, cout])?;
        let bias = map.get(&format!("{prefix}/conv/bias"), &[cout])?;
        Ok(Self {
            conv: Conv::new(k, cin, cout, &filter.values, bias.values.clone())?,
            scale: map
                .get(&format!("{prefix}/scale/weights"), &[cout])?
                .values
                .clone(),
            shift: map
                .get(&format!("{prefix}/scale/biases"), &[cout])?
                .values
                .clone(),
        })
    }

    fn forward(&self, x: &Map, stride: usize, padding: Padding) -> Result<Map, ModelError> {
        Ok(self
            .conv
            .forward(x, stride, padding)?
            .affine(&self.scale, &self.shift))
    }
}

struct Residual {
    conv1: ScaledConv,
    conv2: ScaledConv,
    down: bool,
}

impl Residual {
    fn forward(&self, x: &Map) -> Result<Map, ModelError> {
        if !self.down {
            let out = self.conv1.forward(x, 1, Padding::Same)?.relu();
            return Ok(self.conv2.forward(&out, 1, Padding::Same)?.add(x).relu());
        }
        let out = self.conv1.forward(x, 2, Padding::Valid)?.relu();
        let out = self.conv2.forward(&out, 1, Padding::Same)?;
        // The shortcut is a 2×2 average pool; when its grid is larger than
        // the convolution's, the convolution gains a zero row and column, and
        // missing shortcut channels are zeros.
        let pooled = x.avg_pool(2, 2);
        let out = if (pooled.h, pooled.w) != (out.h, out.w) {
            out.pad_end(out.h + 1, out.w + 1, out.c)
        } else {
            out
        };
        let pooled = if pooled.c != out.c {
            pooled.pad_end(pooled.h, pooled.w, out.c)
        } else {
            pooled
        };
        if (pooled.h, pooled.w) != (out.h, out.w) {
            return Err(ModelError::Internal(format!(
                "shortcut {}×{} against {}×{}",
                pooled.h, pooled.w, out.h, out.w
            )));
        }
        Ok(pooled.add(&out).relu())
    }
}

/// The network's weights.
pub struct RecognitionNet {
    stem: ScaledConv,
    layers: Vec<Residual>,
    fc: Vec<f32>,
}

impl RecognitionNet {
    /// Loads `face_recognition_model` from `dir`.
    pub fn load(dir: &Path) -> Result<Self, ModelError> {
        let map = WeightMap::load(dir, "face_recognition_model")?;
        let stem = ScaledConv::load(&map, "conv32_down", 7, 3, 32)?;
        let plan: [(&str, usize, usize, bool); 14] = [
            ("conv32_1", 32, 32, false),
            ("conv32_2", 32, 32, false),
            ("conv32_3", 32, 32, false),
            ("conv64_down", 32, 64, true),
            ("conv64_1", 64, 64, false),
            ("conv64_2", 64, 64, false),
            ("conv64_3", 64, 64, false),
            ("conv128_down", 64, 128, true),
            ("conv128_1", 128, 128, false),
            ("conv128_2", 128, 128, false),
            ("conv256_down", 128, 256, true),
            ("conv256_1", 256, 256, false),
            ("conv256_2", 256, 256, false),
            ("conv256_down_out", 256, 256, true),
        ];
        let layers = plan
            .iter()
            .map(|&(name, cin, cout, down)| {
                Ok(Residual {
                    conv1: ScaledConv::load(&map, &format!("{name}/conv1"), 3, cin, cout)?,
                    conv2: ScaledConv::load(&map, &format!("{name}/conv2"), 3, cout, cout)?,
                    down,
                })
            })
            .collect::<Result<_, ModelError>>()?;
        Ok(Self {
            stem,
            layers,
            fc: map.get("fc", &[256, DESCRIPTOR_LEN])?.values.clone(),
        })
    }

    /// The descriptor of the face in `crop` (centred on a square, 150×150).
    pub(crate) fn descriptor(
        &self,
        photo: &RgbView<'_>,
        crop: Crop,
    ) -> Result<Vec<f32>, ModelError> {
        let x = square_input(photo, crop, true, INPUT, |v, ch| (v - MEAN_RGB[ch]) / 255.0);
        let mut out = self
            .stem
            .forward(&x, 2, Padding::Valid)?
            .relu()
            .max_pool(3, 2);
        for layer in &self.layers {
            out = layer.forward(&out)?;
        }
        Ok(dense(&out.mean(), &self.fc, None))
    }
}
