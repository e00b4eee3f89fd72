//! Album analysis from cached feature records: duplicates, quality, categories
//! and highlight scores. Nothing here touches pixels.

pub mod categories;
pub mod dbscan;
pub mod quality;
pub mod score;
pub mod taxonomy;

use std::collections::HashMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::encoder::ClipTextEncoder;
use crate::features::{hamming, FeatureRecord};
use crate::store::{FeatureStore, StoreError};
use categories::CategoriesConfig;
use quality::QualityConfig;
use score::ScoreHead;
use taxonomy::{Taxonomy, TaxonomyError};

/// Duplicate-detection constants; defaults are the original's.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DuplicatesConfig {
    /// Largest pHash Hamming distance between neighbours (DBSCAN `eps`).
    pub eps: u32,
    /// DBSCAN `min_samples` (the point itself included).
    pub min_samples: usize,
    /// Second signal for burst shots: photos whose normalised CLIP embeddings
    /// have at least this cosine are neighbours too. Off (`null`) by default.
    pub clip_cosine: Option<f32>,
}

impl Default for DuplicatesConfig {
    fn default() -> Self {
        Self {
            eps: 10,
            min_samples: 2,
            clip_cosine: None,
        }
    }
}

/// Every analysis constant, loadable from a JSON file; absent fields keep the original's values.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AnalysisConfig {
    /// Duplicates (pHash DBSCAN, optional CLIP signal).
    pub duplicates: DuplicatesConfig,
    /// Quality thresholds; `null` picks the original's values for the model family.
    pub quality: Option<QualityConfig>,
    /// The categories algorithm.
    pub categories: CategoriesConfig,
}

impl AnalysisConfig {
    /// Reads a JSON config file.
    pub fn from_file(path: &Path) -> Result<Self, AnalysisError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| AnalysisError::Config(format!("{}: {e}", path.display())))?;
        serde_json::from_str(&text)
            .map_err(|e| AnalysisError::Config(format!("{}: {e}", path.display())))
    }
}

/// Why an analysis could not be answered.
#[derive(Debug, thiserror::Error)]
pub enum AnalysisError {
    /// A bad analysis configuration file.
    #[error("analysis config {0}")]
    Config(String),
    /// The taxonomy rejected the request (unknown concept) or failed to load.
    #[error(transparent)]
    Taxonomy(#[from] TaxonomyError),
    /// The text tower failed on the prompts.
    #[error("prompt embeddings: {0}")]
    Prompts(String),
    /// The score head does not fit the model.
    #[error("score head: {0}")]
    ScoreHead(String),
    /// The feature store failed.
    #[error("feature store: {0}")]
    Store(#[from] StoreError),
}

/// A tag scored against photos: its name and the mean of its normalised prompt embeddings.
struct TagVector {
    name: String,
    /// Mean of the normalised prompt embeddings: its dot product with a
    /// normalised image embedding is the mean cosine over the prompts.
    mean: Vec<f32>,
}

/// Answers the album questions from feature records; built once per model.
pub struct Analyzer {
    config: AnalysisConfig,
    quality: QualityConfig,
    taxonomy: Taxonomy,
    /// Normalised text embedding of every prompt used.
    prompts: HashMap<String, Vec<f32>>,
    score_head: Option<ScoreHead>,
}

/// Name under which a prompt's embedding is cached in the store (per model).
fn prompt_blob(prompt: &str) -> String {
    format!("prompt:v1:{prompt}")
}

/// L2-normalised copy of `v` (zero stays zero).
pub fn normalized(v: &[f32]) -> Vec<f32> {
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if norm > 0.0 {
        v.iter().map(|x| x / norm).collect()
    } else {
        v.to_vec()
    }
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// Duplicate groups as indices: DBSCAN over pHash Hamming distance ≤ `eps`
/// (or, when `clip_cosine` is set, normalised-embedding cosine ≥ it, with
/// `embeddings` then holding one normalised embedding per photo).
pub fn duplicate_groups(
    phashes: &[u64],
    embeddings: &[Vec<f32>],
    cfg: &DuplicatesConfig,
) -> Vec<Vec<usize>> {
    let labels = dbscan::dbscan(phashes.len(), cfg.min_samples, |i, j| {
        hamming(phashes[i], phashes[j]) <= cfg.eps
            || cfg
                .clip_cosine
                .is_some_and(|t| dot(&embeddings[i], &embeddings[j]) >= t)
    });
    dbscan::clusters(&labels)
}

impl Analyzer {
    /// Prepares the analyzer: prompt embeddings come from the store when
    /// cached for this model, else from the text tower (then cached), so they
    /// are computed once per model, never per request.
    pub async fn prepare(
        config: AnalysisConfig,
        quality: QualityConfig,
        taxonomy: Taxonomy,
        score_head: Option<ScoreHead>,
        text: &ClipTextEncoder,
        store: &dyn FeatureStore,
        model_id: &str,
    ) -> Result<Self, AnalysisError> {
        let mut wanted: Vec<String> = quality::IQA_PROMPTS
            .iter()
            .chain(score::AESTHETIC_PROMPTS.iter())
            .flat_map(|(p, n)| [p.to_string(), n.to_string()])
            .collect();
        wanted.extend(taxonomy.all_prompts().into_iter().map(str::to_string));
        wanted.sort();
        wanted.dedup();

        let mut prompts = HashMap::new();
        let mut missing = Vec::new();
        for prompt in &wanted {
            match store.get_blob(model_id, &prompt_blob(prompt)).await? {
                Some(bytes) if bytes.len() % 4 == 0 && !bytes.is_empty() => {
                    let v: Vec<f32> = bytes
                        .chunks_exact(4)
                        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                        .collect();
                    prompts.insert(prompt.clone(), v);
                }
                _ => missing.push(prompt.as_str()),
            }
        }
        if !missing.is_empty() {
            tracing::info!(prompts = missing.len(), "computing prompt embeddings");
            let rows = text.encode(&missing, 64).map_err(AnalysisError::Prompts)?;
            for (prompt, row) in missing.iter().zip(rows) {
                let v = normalized(&row);
                let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
                store
                    .put_blob(model_id, &prompt_blob(prompt), &bytes)
                    .await?;
                prompts.insert(prompt.to_string(), v);
            }
        }
        if let (Some(head), Some(any)) = (&score_head, prompts.values().next()) {
            if head.input_dim() != any.len() {
                return Err(AnalysisError::ScoreHead(format!(
                    "the head takes {} inputs but the model's embeddings have {}",
                    head.input_dim(),
                    any.len()
                )));
            }
        }
        Ok(Self {
            config,
            quality,
            taxonomy,
            prompts,
            score_head,
        })
    }

    /// The taxonomy in use.
    pub fn taxonomy(&self) -> &Taxonomy {
        &self.taxonomy
    }

    /// The quality thresholds in use.
    pub fn quality_config(&self) -> &QualityConfig {
        &self.quality
    }

    fn prompt(&self, text: &str) -> &[f32] {
        // Every prompt used below was embedded in `prepare`.
        self.prompts.get(text).map_or(&[], Vec::as_slice)
    }

    /// Groups of near-identical photos (singletons omitted), in input order.
    pub fn duplicates(&self, records: &[(String, FeatureRecord)]) -> Vec<Vec<String>> {
        let cfg = &self.config.duplicates;
        let phashes: Vec<u64> = records.iter().map(|(_, r)| r.phash).collect();
        let embeddings: Vec<Vec<f32>> = match cfg.clip_cosine {
            Some(_) => records
                .iter()
                .map(|(_, r)| normalized(&r.embedding))
                .collect(),
            None => Vec::new(),
        };
        duplicate_groups(&phashes, &embeddings, cfg)
            .into_iter()
            .map(|g| g.into_iter().map(|i| records[i].0.clone()).collect())
            .collect()
    }

    /// CLIP-IQA scores of one record.
    pub fn iqa(&self, record: &FeatureRecord) -> quality::IqaScores {
        let e = normalized(&record.embedding);
        let mut cosines = [0.0f32; 8];
        for (k, (pos, neg)) in quality::IQA_PROMPTS.iter().enumerate() {
            cosines[2 * k] = dot(&e, self.prompt(pos));
            cosines[2 * k + 1] = dot(&e, self.prompt(neg));
        }
        quality::iqa_scores(&cosines)
    }

    /// Keys of low-quality photos (either test fails), in input order.
    pub fn low_quality(&self, records: &[(String, FeatureRecord)]) -> Vec<String> {
        records
            .iter()
            .filter(|(_, r)| quality::is_low_quality(r.laplacian_var, &self.iqa(r), &self.quality))
            .map(|(k, _)| k.clone())
            .collect()
    }

    /// Themed groups `(category name, keys)`: every key exactly once.
    pub fn categories(
        &self,
        records: &[(String, FeatureRecord)],
        concepts: &[String],
    ) -> Result<Vec<(String, Vec<String>)>, AnalysisError> {
        let tags: Vec<TagVector> = self
            .taxonomy
            .tags_for(concepts)?
            .into_iter()
            .map(|tag| {
                let dim = self.prompt(&tag.prompts[0]).len();
                let mut mean = vec![0.0f32; dim];
                for p in &tag.prompts {
                    for (m, x) in mean.iter_mut().zip(self.prompt(p)) {
                        *m += x / tag.prompts.len() as f32;
                    }
                }
                TagVector {
                    name: tag.name.clone(),
                    mean,
                }
            })
            .collect();
        let sims: Vec<Vec<f32>> = records
            .iter()
            .map(|(_, r)| {
                let e = normalized(&r.embedding);
                tags.iter().map(|t| dot(&e, &t.mean)).collect()
            })
            .collect();
        let cfg = &self.config.categories;
        let names: Vec<String> = tags.iter().map(|t| t.name.clone()).collect();
        Ok(categories::categorize(&sims, &names, concepts, cfg)
            .into_iter()
            .map(|g| {
                let name = g
                    .tag
                    .map_or_else(|| cfg.other_name.clone(), |t| tags[t].name.clone());
                (
                    name,
                    g.images.into_iter().map(|i| records[i].0.clone()).collect(),
                )
            })
            .collect())
    }

    /// Highlight score of one photo: the trained head if configured, else zero-shot in [0, 10].
    pub fn score(&self, record: &FeatureRecord) -> f32 {
        let e = normalized(&record.embedding);
        match &self.score_head {
            Some(head) => head.score(&e),
            None => {
                let cosines: Vec<f32> = score::AESTHETIC_PROMPTS
                    .iter()
                    .flat_map(|(p, n)| [dot(&e, self.prompt(p)), dot(&e, self.prompt(n))])
                    .collect();
                score::zero_shot_score(&cosines)
            }
        }
    }
}
