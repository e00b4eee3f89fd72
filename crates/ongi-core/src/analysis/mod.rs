//! Album analysis from cached feature records: duplicates, quality, categories,
//! highlight scores and people. Nothing here touches pixels.

pub mod categories;
pub mod dbscan;
pub mod people;
pub mod quality;
pub mod score;
pub mod taxonomy;

use std::collections::HashMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::features::{hamming, FeatureRecord};
use categories::CategoriesConfig;
use people::PeopleConfig;
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
    /// Face clustering into persons.
    pub people: PeopleConfig,
}

impl AnalysisConfig {
    /// Reads a JSON config file.
    pub fn from_file(path: &Path) -> Result<Self, AnalysisError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| AnalysisError::Config(format!("{}: {e}", path.display())))?;
        ongi_model::config::from_json(&text)
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
    /// The score head does not fit the model.
    #[error("score head: {0}")]
    ScoreHead(String),
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

/// Longest search query accepted, in bytes: CLIP reads 77 tokens at most,
/// so longer text only adds cache keys, not meaning.
pub const MAX_QUERY_BYTES: usize = 1000;

/// A search query as it will be embedded (surrounding whitespace trimmed),
/// or why it cannot be.
pub fn search_query(text: &str) -> Result<&str, String> {
    let query = text.trim();
    if query.is_empty() {
        return Err("query must not be empty".into());
    }
    if query.len() > MAX_QUERY_BYTES {
        return Err(format!(
            "query is {} bytes long; at most {MAX_QUERY_BYTES} are accepted",
            query.len()
        ));
    }
    Ok(query)
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

/// The photos ranked by cosine between their embedding and `query` (a
/// normalised text embedding), best first, ties in input order; at most
/// `top_k`.
pub fn search(
    records: &[(String, FeatureRecord)],
    query: &[f32],
    top_k: usize,
) -> Vec<(String, f32)> {
    let mut ranked: Vec<(String, f32)> = records
        .iter()
        .map(|(k, r)| (k.clone(), dot(&normalized(&r.embedding), query)))
        .collect();
    // A stable sort keeps equal scores in input order.
    ranked.sort_by(|a, b| b.1.total_cmp(&a.1));
    ranked.truncate(top_k);
    ranked
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
    /// Every prompt the analyzer scores with: the quality and aesthetic
    /// pairs and the taxonomy's tag prompts, sorted, each once.
    pub fn prompts_needed(taxonomy: &Taxonomy) -> Vec<String> {
        let mut wanted: Vec<String> = quality::IQA_PROMPTS
            .iter()
            .chain(score::AESTHETIC_PROMPTS.iter())
            .flat_map(|(p, n)| [p.to_string(), n.to_string()])
            .collect();
        wanted.extend(taxonomy.all_prompts().into_iter().map(str::to_string));
        wanted.sort();
        wanted.dedup();
        wanted
    }

    /// The analyzer over `prompts`: the normalised text embedding of every
    /// prompt of [`Analyzer::prompts_needed`].
    pub fn new(
        config: AnalysisConfig,
        quality: QualityConfig,
        taxonomy: Taxonomy,
        score_head: Option<ScoreHead>,
        prompts: HashMap<String, Vec<f32>>,
    ) -> Result<Self, AnalysisError> {
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

    /// The quality thresholds in use.
    pub fn quality_config(&self) -> &QualityConfig {
        &self.quality
    }

    fn prompt(&self, text: &str) -> &[f32] {
        // Every prompt used below is among those `new` was given.
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

    /// The persons of an album (see [`people::people`]).
    pub fn people(&self, records: &[(String, FeatureRecord)]) -> Vec<people::Person> {
        people::people(records, &self.config.people)
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

#[cfg(test)]
mod tests {

    #[test]
    fn config_file_errors_name_the_field() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("analysis.json");
        std::fs::write(&path, r#"{"quality": {"laplacian_threshold": "x"}}"#).unwrap();
        let err = AnalysisConfig::from_file(&path).unwrap_err().to_string();
        assert!(err.contains("analysis.json"), "{err}");
        assert!(err.contains("field `quality.laplacian_threshold`"), "{err}");
        std::fs::write(&path, r#"{"quality": null, "duplicates": {}}"#).unwrap();
        assert_eq!(
            AnalysisConfig::from_file(&path).unwrap(),
            AnalysisConfig::default()
        );
    }

    use super::*;

    fn record(embedding: Vec<f32>) -> FeatureRecord {
        FeatureRecord {
            embedding,
            phash: 0,
            laplacian_var: 0.0,
            width: 1,
            height: 1,
            faces: None,
        }
    }

    #[test]
    fn search_ranks_by_cosine_keeps_ties_in_order_and_truncates() {
        let records: Vec<(String, FeatureRecord)> = [
            ("a", vec![0.0, 2.0]),
            ("b", vec![3.0, 0.0]),
            ("c", vec![1.0, 1.0]),
            ("d", vec![5.0, 0.0]),
            ("e", vec![0.0, 0.0]),
        ]
        .into_iter()
        .map(|(k, e)| (k.to_string(), record(e)))
        .collect();
        let ranked = search(&records, &[1.0, 0.0], 10);
        let keys: Vec<&str> = ranked.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, ["b", "d", "c", "a", "e"]);
        assert!((ranked[2].1 - std::f32::consts::FRAC_1_SQRT_2).abs() < 1e-6);
        assert_eq!(search(&records, &[1.0, 0.0], 2).len(), 2);
        assert!(search(&[], &[1.0, 0.0], 3).is_empty());
    }

    #[test]
    fn search_queries_are_trimmed_and_bounded() {
        assert_eq!(search_query("  a cat \n"), Ok("a cat"));
        assert!(search_query(" \t ").is_err());
        assert!(search_query(&"x".repeat(MAX_QUERY_BYTES)).is_ok());
        let err = search_query(&"x".repeat(MAX_QUERY_BYTES + 1)).unwrap_err();
        assert!(err.contains("at most 1000"), "{err}");
    }
}
