//! TF.js layers-model weights: `<name>-weights_manifest.json` plus the binary
//! shards it lists, weights stored back to back in manifest order.
//!
//! Written here because no maintained Rust crate reads this format; it is a
//! JSON list and a byte concatenation, with optional affine uint8/uint16
//! quantisation (`value = q * scale + min`) or float16.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::error::ModelError;

#[derive(Deserialize)]
struct Group {
    paths: Vec<String>,
    weights: Vec<Entry>,
}

#[derive(Deserialize)]
struct Entry {
    name: String,
    shape: Vec<usize>,
    dtype: String,
    #[serde(default)]
    quantization: Option<Quantization>,
}

#[derive(Deserialize)]
struct Quantization {
    dtype: String,
    #[serde(default)]
    scale: f32,
    #[serde(default)]
    min: f32,
}

/// One weight, dequantised to f32 in TF's layout (filters `[kh, kw, in, out]`).
#[derive(Debug, Clone)]
pub(crate) struct Weight {
    pub shape: Vec<usize>,
    pub values: Vec<f32>,
}

/// All weights of one model, by their TF.js names.
pub(crate) struct WeightMap {
    path: PathBuf,
    weights: HashMap<String, Weight>,
}

impl WeightMap {
    /// Reads `dir/<model>-weights_manifest.json` and its shards.
    pub fn load(dir: &Path, model: &str) -> Result<Self, ModelError> {
        let path = dir.join(format!("{model}-weights_manifest.json"));
        let text = std::fs::read(&path).map_err(|source| ModelError::Io {
            path: path.clone(),
            source,
        })?;
        let groups: Vec<Group> =
            serde_json::from_slice(&text).map_err(|source| ModelError::ConfigJson {
                path: path.clone(),
                source,
            })?;
        let mut weights = HashMap::new();
        for group in groups {
            let mut bytes = Vec::new();
            for shard in &group.paths {
                // Shard names are plain file names next to the manifest.
                if shard.contains('/') || shard.contains("..") {
                    return Err(manifest_error(
                        &path,
                        "paths",
                        format!("bad shard name {shard:?}"),
                    ));
                }
                let shard_path = dir.join(shard);
                let mut data = std::fs::read(&shard_path).map_err(|source| ModelError::Io {
                    path: shard_path,
                    source,
                })?;
                bytes.append(&mut data);
            }
            let mut offset = 0;
            for entry in group.weights {
                let count: usize = entry.shape.iter().product();
                let (values, used) = decode(&entry, &bytes[offset.min(bytes.len())..], count)
                    .map_err(|message| ModelError::Tensor {
                        path: path.clone(),
                        name: entry.name.clone(),
                        message,
                    })?;
                offset += used;
                weights.insert(
                    entry.name,
                    Weight {
                        shape: entry.shape,
                        values,
                    },
                );
            }
        }
        Ok(Self { path, weights })
    }

    /// The weight `name`, checked to have `shape`.
    pub fn get(&self, name: &str, shape: &[usize]) -> Result<&Weight, ModelError> {
        let weight = self.weights.get(name).ok_or_else(|| ModelError::Tensor {
            path: self.path.clone(),
            name: name.to_string(),
            message: "missing".to_string(),
        })?;
        if weight.shape != shape {
            return Err(ModelError::Tensor {
                path: self.path.clone(),
                name: name.to_string(),
                message: format!("shape {:?}, expected {:?}", weight.shape, shape),
            });
        }
        Ok(weight)
    }
}

fn manifest_error(path: &Path, field: &str, message: String) -> ModelError {
    ModelError::Config {
        path: path.to_path_buf(),
        field: field.to_string(),
        message,
    }
}

/// Decodes `count` values from the front of `bytes`; returns them and the
/// bytes used.
fn decode(entry: &Entry, bytes: &[u8], count: usize) -> Result<(Vec<f32>, usize), String> {
    let take = |width: usize| -> Result<&[u8], String> {
        bytes
            .get(..count * width)
            .ok_or_else(|| format!("needs {} bytes, the shards end first", count * width))
    };
    match &entry.quantization {
        Some(q) => match q.dtype.as_str() {
            "uint8" => Ok((
                take(1)?
                    .iter()
                    .map(|&v| v as f32 * q.scale + q.min)
                    .collect(),
                count,
            )),
            "uint16" => Ok((
                take(2)?
                    .chunks_exact(2)
                    .map(|b| u16::from_le_bytes([b[0], b[1]]) as f32 * q.scale + q.min)
                    .collect(),
                count * 2,
            )),
            "float16" => Ok((
                take(2)?
                    .chunks_exact(2)
                    .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
                    .collect(),
                count * 2,
            )),
            other => Err(format!("unsupported quantisation {other}")),
        },
        None => match entry.dtype.as_str() {
            "float32" => Ok((
                take(4)?
                    .chunks_exact(4)
                    .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                    .collect(),
                count * 4,
            )),
            "int32" => Ok((
                take(4)?
                    .chunks_exact(4)
                    .map(|b| i32::from_le_bytes([b[0], b[1], b[2], b[3]]) as f32)
                    .collect(),
                count * 4,
            )),
            other => Err(format!("unsupported dtype {other}")),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_quantised_and_plain_weights_in_manifest_order() {
        let dir = std::env::temp_dir().join(format!("ongi-tfjs-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let manifest = r#"[{"paths": ["m.bin"], "weights": [
            {"name": "q", "shape": [3], "dtype": "float32",
             "quantization": {"dtype": "uint8", "scale": 0.5, "min": -1.0}},
            {"name": "f", "shape": [2], "dtype": "float32"}]}]"#;
        std::fs::write(dir.join("m-weights_manifest.json"), manifest).unwrap();
        let mut bin = vec![0u8, 2, 4];
        bin.extend(1.5f32.to_le_bytes());
        bin.extend((-2.0f32).to_le_bytes());
        std::fs::write(dir.join("m.bin"), bin).unwrap();
        let map = WeightMap::load(&dir, "m").unwrap();
        assert_eq!(map.get("q", &[3]).unwrap().values, vec![-1.0, 0.0, 1.0]);
        assert_eq!(map.get("f", &[2]).unwrap().values, vec![1.5, -2.0]);
        let wrong = map.get("f", &[3]).unwrap_err().to_string();
        assert!(wrong.contains("shape [2], expected [3]"), "{wrong}");
        std::fs::write(dir.join("m.bin"), [0u8, 2]).unwrap();
        let short = WeightMap::load(&dir, "m").err().unwrap().to_string();
        assert!(
            short.contains("tensor `q`") && short.contains("shards end"),
            "{short}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
