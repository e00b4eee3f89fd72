//! Highlight scores: a trained head over the normalised embedding, or zero-shot prompts.

use std::path::Path;

/// Aesthetic prompt pairs (positive, negative) for the zero-shot score.
pub const AESTHETIC_PROMPTS: [(&str, &str); 4] = [
    ("a beautiful photo", "an ugly photo"),
    ("a high quality photo", "a low quality photo"),
    ("a well composed photo", "a badly composed photo"),
    (
        "a stunning professional photograph",
        "a dull amateur snapshot",
    ),
];

/// CLIP's logit scale (exp of the trained `logit_scale`, capped at 100): sharpens
/// the zero-shot softmax so scores spread over the range instead of sitting at 0.5.
const ZERO_SHOT_LOGIT_SCALE: f32 = 100.0;

/// Why a score head could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ScoreHeadError {
    /// The file could not be read.
    #[error("score head {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The file is not a usable safetensors head.
    #[error("score head {path}: {reason}")]
    Invalid {
        /// The file.
        path: String,
        /// What is wrong.
        reason: String,
    },
}

#[derive(Debug)]
struct Linear {
    weight: Vec<f32>,
    bias: Vec<f32>,
    inputs: usize,
    outputs: usize,
}

/// A trained score head: linear layers applied in order to the L2-normalised
/// embedding, ending in one output. This is the LAION aesthetic predictor's
/// shape (`layers.0`, `layers.2`, … `nn.Linear`s with dropout between and no
/// activation) and covers a single `weight`/`bias` linear regressor too.
#[derive(Debug)]
pub struct ScoreHead {
    layers: Vec<Linear>,
}

impl ScoreHead {
    /// Loads a head from a safetensors file (f32, f16 or bf16 tensors).
    pub fn from_file(path: &Path) -> Result<Self, ScoreHeadError> {
        let shown = path.display().to_string();
        let invalid = |reason: String| ScoreHeadError::Invalid {
            path: shown.clone(),
            reason,
        };
        let bytes = std::fs::read(path).map_err(|source| ScoreHeadError::Io {
            path: shown.clone(),
            source,
        })?;
        let tensors =
            safetensors::SafeTensors::deserialize(&bytes).map_err(|e| invalid(e.to_string()))?;
        // Layer prefixes ordered by their numeric index ("layers.0" < "layers.2" < "layers.10").
        let mut prefixes: Vec<String> = tensors
            .names()
            .iter()
            .filter_map(|n| n.strip_suffix("weight").map(str::to_string))
            .collect();
        prefixes.sort_by_key(|p| {
            let index: Option<u64> = p
                .trim_end_matches('.')
                .rsplit('.')
                .next()
                .and_then(|s| s.parse().ok());
            (index, p.clone())
        });
        if prefixes.is_empty() {
            return Err(invalid("no `*weight` tensors".into()));
        }
        let mut layers = Vec::new();
        for prefix in prefixes {
            let weight_name = format!("{prefix}weight");
            let bias_name = format!("{prefix}bias");
            let weight = tensors
                .tensor(&weight_name)
                .map_err(|e| invalid(e.to_string()))?;
            let shape = weight.shape().to_vec();
            let (outputs, inputs) = match shape.as_slice() {
                [o, i] => (*o, *i),
                [i] => (1, *i),
                _ => {
                    return Err(invalid(format!(
                        "{weight_name} has shape {shape:?}, expected [out, in]"
                    )))
                }
            };
            let bias = match tensors.tensor(&bias_name) {
                Ok(b) => to_f32(&b).map_err(|r| invalid(format!("{bias_name}: {r}")))?,
                Err(_) => vec![0.0; outputs],
            };
            if bias.len() != outputs {
                return Err(invalid(format!(
                    "{bias_name} has {} values, expected {outputs}",
                    bias.len()
                )));
            }
            if let Some(prev) = layers.last().map(|l: &Linear| l.outputs) {
                if prev != inputs {
                    return Err(invalid(format!(
                        "{weight_name} takes {inputs} inputs but the previous layer gives {prev}"
                    )));
                }
            }
            layers.push(Linear {
                weight: to_f32(&weight).map_err(|r| invalid(format!("{weight_name}: {r}")))?,
                bias,
                inputs,
                outputs,
            });
        }
        if layers.last().map(|l| l.outputs) != Some(1) {
            return Err(invalid("the last layer must have one output".into()));
        }
        Ok(Self { layers })
    }

    /// Size of the embedding the head expects.
    pub fn input_dim(&self) -> usize {
        self.layers.first().map_or(0, |l| l.inputs)
    }

    /// The score of one L2-normalised embedding.
    pub fn score(&self, embedding: &[f32]) -> f32 {
        let mut x = embedding.to_vec();
        for layer in &self.layers {
            x = (0..layer.outputs)
                .map(|o| {
                    let row = &layer.weight[o * layer.inputs..(o + 1) * layer.inputs];
                    layer.bias[o] + row.iter().zip(&x).map(|(w, v)| w * v).sum::<f32>()
                })
                .collect();
        }
        x.first().copied().unwrap_or(0.0)
    }
}

fn to_f32(t: &safetensors::tensor::TensorView<'_>) -> Result<Vec<f32>, String> {
    use safetensors::Dtype;
    let data = t.data();
    Ok(match t.dtype() {
        Dtype::F32 => data
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
        Dtype::F16 => data
            .chunks_exact(2)
            .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        Dtype::BF16 => data
            .chunks_exact(2)
            .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        other => return Err(format!("unsupported dtype {other:?}")),
    })
}

/// Zero-shot highlight score in [0, 10] from the cosines of a normalised
/// embedding with the normalised [`AESTHETIC_PROMPTS`] (pos, neg, pos, neg, …):
/// ten times the mean probability of the positive prompt of each pair.
pub fn zero_shot_score(cosines: &[f32]) -> f32 {
    let pairs = cosines.len() / 2;
    if pairs == 0 {
        return 0.0;
    }
    let sum: f32 = cosines
        .chunks_exact(2)
        .map(|c| 1.0 / (1.0 + (ZERO_SHOT_LOGIT_SCALE * (c[1] - c[0])).exp()))
        .sum();
    10.0 * sum / pairs as f32
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn write_head(path: &Path, tensors: &[(&str, Vec<usize>, Vec<f32>)]) {
        let bytes: Vec<(String, Vec<usize>, Vec<u8>)> = tensors
            .iter()
            .map(|(n, s, v)| {
                (
                    n.to_string(),
                    s.clone(),
                    v.iter().flat_map(|x| x.to_le_bytes()).collect(),
                )
            })
            .collect();
        let views: HashMap<String, safetensors::tensor::TensorView<'_>> = bytes
            .iter()
            .map(|(n, s, b)| {
                (
                    n.clone(),
                    safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), b)
                        .unwrap(),
                )
            })
            .collect();
        safetensors::serialize_to_file(views, None, path).unwrap();
    }

    #[test]
    fn linear_and_mlp_heads() {
        let dir = tempfile::tempdir().unwrap();
        let linear = dir.path().join("linear.safetensors");
        write_head(
            &linear,
            &[
                ("weight", vec![1, 3], vec![1.0, 2.0, 3.0]),
                ("bias", vec![1], vec![0.5]),
            ],
        );
        let head = ScoreHead::from_file(&linear).unwrap();
        assert_eq!(head.input_dim(), 3);
        assert!((head.score(&[1.0, 0.0, 1.0]) - 4.5).abs() < 1e-6);

        // LAION-style: layers.0 (3→2), layers.2 (2→1); numeric order, not text order
        let mlp = dir.path().join("mlp.safetensors");
        write_head(
            &mlp,
            &[
                (
                    "layers.0.weight",
                    vec![2, 3],
                    vec![1.0, 0.0, 0.0, 0.0, 1.0, 0.0],
                ),
                ("layers.0.bias", vec![2], vec![0.0, 1.0]),
                ("layers.2.weight", vec![1, 2], vec![2.0, 3.0]),
                ("layers.2.bias", vec![1], vec![-1.0]),
            ],
        );
        let head = ScoreHead::from_file(&mlp).unwrap();
        // x = [1, 2, 9] → [1, 3] → 2 + 9 - 1 = 10
        assert!((head.score(&[1.0, 2.0, 9.0]) - 10.0).abs() < 1e-6);
    }

    #[test]
    fn bad_heads_are_clear_errors() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("none.safetensors");
        assert!(ScoreHead::from_file(&missing)
            .unwrap_err()
            .to_string()
            .contains("none.safetensors"));
        let junk = dir.path().join("junk.safetensors");
        std::fs::write(&junk, b"not safetensors").unwrap();
        assert!(ScoreHead::from_file(&junk).is_err());
        let mismatched = dir.path().join("mismatch.safetensors");
        write_head(
            &mismatched,
            &[
                ("layers.0.weight", vec![2, 3], vec![0.0; 6]),
                ("layers.1.weight", vec![1, 4], vec![0.0; 4]),
            ],
        );
        let err = ScoreHead::from_file(&mismatched).unwrap_err().to_string();
        assert!(err.contains("layers.1.weight"), "{err}");
    }

    #[test]
    fn zero_shot_orders_by_preference() {
        let good = zero_shot_score(&[0.30, 0.25, 0.28, 0.24]);
        let bad = zero_shot_score(&[0.24, 0.29, 0.25, 0.27]);
        assert!(good > 5.0 && bad < 5.0 && good <= 10.0 && bad >= 0.0);
        assert!((zero_shot_score(&[0.2, 0.2]) - 5.0).abs() < 1e-5);
    }
}
