//! A stable identity for a model checkpoint, so cached features of one model
//! are never read for another.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use sha2::{Digest, Sha256};

use crate::preprocess::DecodeMode;

/// Bytes read from each of the sampled blocks of the weights file.
const BLOCK: u64 = 64 * 1024;
/// Number of blocks sampled across the weights file.
const SAMPLES: u64 = 32;

/// Identity of the checkpoint in `dir`: a hash of `config.json`, the
/// safetensors header (names, shapes, offsets), the file length and 32 blocks
/// sampled across the weights. Reading every byte of a 600 MB checkpoint at
/// each start would cost seconds; two checkpoints that agree on all of these
/// samples yet differ elsewhere are not a practical concern.
pub fn model_identity(dir: &Path) -> std::io::Result<String> {
    let mut hasher = Sha256::new();
    let dir = ongi_model::ModelDir::new(dir);
    hasher.update(std::fs::read(dir.config())?);
    let mut file = File::open(dir.weights())?;
    let len = file.metadata()?.len();
    hasher.update(len.to_le_bytes());
    let mut head = [0u8; 8];
    file.read_exact(&mut head)?;
    let header_len = u64::from_le_bytes(head).min(len);
    let mut header = vec![0u8; header_len as usize];
    file.read_exact(&mut header)?;
    hasher.update(&header);
    let mut block = vec![0u8; BLOCK as usize];
    for i in 0..SAMPLES {
        let offset = (len.saturating_sub(BLOCK)) * i / (SAMPLES - 1).max(1);
        file.seek(SeekFrom::Start(offset))?;
        let n = file.read(&mut block)?;
        hasher.update(&block[..n]);
    }
    let digest = hasher.finalize();
    let hex: String = digest.iter().take(8).map(|b| format!("{b:02x}")).collect();
    Ok(format!("clip-{hex}"))
}

/// The identity under which features computed in `mode` are cached: `id` itself
/// for exact decoding (the identity cached features always had), `id` + `-fast`
/// or `-reduced` for DCT-reduced decoding. Fast embeddings sit within cosine 0.995
/// of exact ones, not within the 0.99999 parity bar, and reduced records' pixel
/// features differ too, so no two modes share cache entries.
pub fn with_decode_mode(id: &str, mode: DecodeMode) -> String {
    match mode {
        DecodeMode::Exact => id.to_owned(),
        DecodeMode::Fast | DecodeMode::Reduced => format!("{id}-{}", mode.as_str()),
    }
}

/// The identity under which features computed at `precision` are cached:
/// `id` itself at f32, `id` + `-bf16` / `-int8` / `-f16` otherwise, so
/// records of different precisions never mix.
pub fn with_precision(id: &str, precision: ongi_model::Precision) -> String {
    match precision {
        ongi_model::Precision::F32 => id.to_owned(),
        p => format!("{id}-{}", p.name()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake_model(dir: &Path, config: &str, weights: &[u8]) {
        std::fs::write(dir.join("config.json"), config).unwrap();
        let mut bytes = 2u64.to_le_bytes().to_vec();
        bytes.extend_from_slice(b"{}");
        bytes.extend_from_slice(weights);
        std::fs::write(dir.join("model.safetensors"), bytes).unwrap();
    }

    #[test]
    fn identity_is_stable_and_changes_with_config_or_weights() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        let c = tempfile::tempdir().unwrap();
        fake_model(a.path(), "{\"x\":1}", &[1; 1000]);
        fake_model(b.path(), "{\"x\":2}", &[1; 1000]);
        fake_model(c.path(), "{\"x\":1}", &[2; 1000]);
        let ida = model_identity(a.path()).unwrap();
        assert_eq!(ida, model_identity(a.path()).unwrap());
        assert!(ida.starts_with("clip-") && ida.len() == 21);
        assert_ne!(ida, model_identity(b.path()).unwrap());
        assert_ne!(ida, model_identity(c.path()).unwrap());
        assert!(model_identity(&a.path().join("missing")).is_err());
    }

    #[test]
    fn decode_mode_separates_identities() {
        assert_eq!(with_decode_mode("clip-ab", DecodeMode::Exact), "clip-ab");
        assert_eq!(
            with_decode_mode("clip-ab", DecodeMode::Fast),
            "clip-ab-fast"
        );
        assert_eq!(
            with_decode_mode("clip-ab", DecodeMode::Reduced),
            "clip-ab-reduced"
        );
    }

    #[test]
    fn precision_separates_identities() {
        use ongi_model::Precision;
        assert_eq!(
            with_precision("clip-ab-fast", Precision::F32),
            "clip-ab-fast"
        );
        assert_eq!(
            with_precision("clip-ab-fast", Precision::Bf16),
            "clip-ab-fast-bf16"
        );
        assert_eq!(with_precision("clip-ab", Precision::Int8), "clip-ab-int8");
    }
}
