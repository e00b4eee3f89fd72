//! Themed categories: the original's representative-tag algorithm, step for step.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Constants of the categories algorithm; defaults are the original's pipeline.
///
/// Scores are f64 between the steps and compared with f64 constants, as the
/// original's Python floats are; the representativeness sums are f32, as its
/// tensors are.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CategoriesConfig {
    /// Tags kept per image (step 1).
    pub top_k: usize,
    /// A tag counts for an image only at this similarity or above (steps 1, 3
    /// and 4). The original's functions default to 0.21, but its pipeline
    /// calls them with 0.
    pub min_similarity: f64,
    /// Scores above τ count extra towards representativeness (step 2).
    pub tau: f64,
    /// Weight of the scores above τ (step 2).
    pub bonus: f32,
    /// Representative tags kept for the album (step 2).
    pub representative_tags: usize,
    /// Name of the group of images no representative tag fits.
    pub other_name: String,
    /// Per-tag factors (by tag name) applied to similarities at or below
    /// `min_similarity` before step 1. Empty, as in the original's pipeline.
    pub tag_boosts: BTreeMap<String, f32>,
    /// Parent tags (by name) of a tag. When set, each image's top tags are
    /// refined after step 1: a tag gives way to its parents (each scored the
    /// best of its current score, 0 and the tag's score − 0.001) and stays only
    /// when a parent is a requested concept. Parents must be among the
    /// request's tags; others are skipped. Empty, as in the original's pipeline.
    pub parents: BTreeMap<String, Vec<String>>,
}

impl Default for CategoriesConfig {
    fn default() -> Self {
        Self {
            top_k: 10,
            min_similarity: 0.0,
            tau: 0.28,
            bonus: 0.5,
            representative_tags: 5,
            other_name: "기타".into(),
            tag_boosts: BTreeMap::new(),
            parents: BTreeMap::new(),
        }
    }
}

/// One resulting group: a tag index (or `None` for the "other" group) and image indices.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Group {
    /// The tag, or `None` for the other group.
    pub tag: Option<usize>,
    /// Images in arrival order (see [`categorize`]).
    pub images: Vec<usize>,
}

/// An image's tags with their scores, best first.
type TopTags = Vec<(usize, f64)>;

/// Step 1: an image's top tags at or above the threshold, best first (ties keep tag order).
fn top_tags(sims: &[f32], cfg: &CategoriesConfig) -> TopTags {
    let mut tags: TopTags = sims
        .iter()
        .map(|&s| f64::from(s))
        .enumerate()
        .filter(|&(_, s)| s >= cfg.min_similarity)
        .collect();
    tags.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    tags.truncate(cfg.top_k);
    tags
}

/// The optional boosts: similarities at or below the threshold times the tag's factor.
fn boosted(sims: &[f32], boosts: &[Option<f32>], cfg: &CategoriesConfig) -> Vec<f32> {
    sims.iter()
        .zip(boosts)
        .map(|(&s, b)| match b {
            Some(f) if f64::from(s) <= cfg.min_similarity => s * f,
            _ => s,
        })
        .collect()
}

/// The optional parent refinement of one image's top tags, in the order the
/// original's dict keeps them: each tag is removed, then each of its parents
/// is (re)scored at the end of the list unless already present; the tag comes
/// back at the end when a parent is a requested concept.
fn refined(top: &TopTags, parents: &[Vec<usize>], concept_tag: &[bool]) -> TopTags {
    let mut out: TopTags = top.clone();
    for &(tag, score) in top {
        out.retain(|&(t, _)| t != tag);
        for &parent in &parents[tag] {
            if concept_tag[parent] {
                set_or_append(&mut out, tag, score);
            }
            let current = out
                .iter()
                .find(|&&(t, _)| t == parent)
                .map_or(0.0, |&(_, s)| s);
            set_or_append(&mut out, parent, current.max(score - 0.001));
        }
    }
    out
}

/// A dict assignment: replaces the value in place, or appends the key.
fn set_or_append(tags: &mut TopTags, tag: usize, score: f64) {
    match tags.iter_mut().find(|(t, _)| *t == tag) {
        Some(entry) => entry.1 = score,
        None => tags.push((tag, score)),
    }
}

/// Step 2: representativeness of every tag over `images`: the f32 sum of its
/// scores in the images' top tags plus `bonus` × the f32 sum of those above τ.
fn representativeness(
    top: &[TopTags],
    images: &[usize],
    n_tags: usize,
    cfg: &CategoriesConfig,
) -> Vec<f32> {
    let mut sum = vec![0.0f32; n_tags];
    let mut above = vec![0.0f32; n_tags];
    for &i in images {
        for &(t, s) in &top[i] {
            sum[t] += s as f32;
            if s > cfg.tau {
                above[t] += s as f32;
            }
        }
    }
    sum.iter()
        .zip(&above)
        .map(|(s, a)| s + cfg.bonus * a)
        .collect()
}

/// Every tag ranked by representativeness, best first; ties keep tag order
/// (a stable sort over all tags, as the original's `sorted`).
fn ranked(r: &[f32]) -> Vec<usize> {
    let mut tags: Vec<usize> = (0..r.len()).collect();
    tags.sort_by(|&a, &b| r[b].total_cmp(&r[a]));
    tags
}

/// Groups in the order their first image arrives, as the original's dicts keep them.
#[derive(Default)]
struct OrderedGroups(Vec<Group>);

impl OrderedGroups {
    fn push(&mut self, tag: Option<usize>, image: usize) {
        self.extend(tag, &[image]);
    }

    fn extend(&mut self, tag: Option<usize>, images: &[usize]) {
        match self.0.iter_mut().find(|g| g.tag == tag) {
            Some(g) => g.images.extend_from_slice(images),
            None => self.0.push(Group {
                tag,
                images: images.to_vec(),
            }),
        }
    }
}

/// Splits images into themed groups from their tag similarities, step for step
/// as the original's `categorize_images`.
///
/// `sims[i][t]` is the similarity of image `i` to `tags[t]` (mean cosine over
/// the tag's prompts); `concepts` are the requested concepts' names (used by
/// the parent refinement only). Every image ends up in exactly one group.
///
/// 0. optional boosts ([`CategoriesConfig::tag_boosts`]);
/// 1. per image, its `top_k` tags with similarity ≥ `min_similarity`, best
///    first, then the optional parent refinement ([`CategoriesConfig::parents`]);
/// 2. the album's `representative_tags` best tags by its representativeness (Σ scores + bonus · Σ scores above τ);
/// 3. each image joins the first of its top tags that is representative and
///    scores ≥ `min_similarity`, else the other group;
/// 4. per group (other excepted), the best tag over its images is found again;
///    where it differs from the group's tag, each image moves to it if it is
///    among the image's top tags with a score ≥ `min_similarity`, else to the
///    other group.
///
/// Groups come in the order their first image arrived in step 4 (the order of
/// the original's dictionaries): step 3's groups in the order of their first
/// image, each image appended as it is moved. Images keep that arrival order,
/// so a group can list a later image before an earlier one, as the original does.
pub fn categorize(
    sims: &[Vec<f32>],
    tags: &[String],
    concepts: &[String],
    cfg: &CategoriesConfig,
) -> Vec<Group> {
    let n_tags = tags.len();
    let index = |name: &str| tags.iter().position(|t| t == name);
    let boosts: Vec<Option<f32>> = tags
        .iter()
        .map(|t| cfg.tag_boosts.get(t).copied())
        .collect();
    let parents: Vec<Vec<usize>> = tags
        .iter()
        .map(|t| {
            cfg.parents
                .get(t)
                .map(|ps| ps.iter().filter_map(|p| index(p)).collect())
                .unwrap_or_default()
        })
        .collect();
    let concept_tag: Vec<bool> = tags.iter().map(|t| concepts.contains(t)).collect();

    let all: Vec<usize> = (0..sims.len()).collect();
    let top: Vec<TopTags> = sims
        .iter()
        .map(|s| {
            let t = if cfg.tag_boosts.is_empty() {
                top_tags(s, cfg)
            } else {
                top_tags(&boosted(s, &boosts, cfg), cfg)
            };
            if cfg.parents.is_empty() {
                t
            } else {
                refined(&t, &parents, &concept_tag)
            }
        })
        .collect();
    let counts = |&(_, s): &(usize, f64)| s >= cfg.min_similarity;
    let mut representative = ranked(&representativeness(&top, &all, n_tags, cfg));
    representative.truncate(cfg.representative_tags);

    let mut first = OrderedGroups::default();
    for (i, tags) in top.iter().enumerate() {
        let tag = tags
            .iter()
            .filter(|e| counts(e))
            .map(|&(t, _)| t)
            .find(|t| representative.contains(t));
        first.push(tag, i);
    }

    let mut last = OrderedGroups::default();
    for group in first.0 {
        let Some(tag) = group.tag else {
            last.extend(None, &group.images);
            continue;
        };
        let r = representativeness(&top, &group.images, n_tags, cfg);
        let best = ranked(&r).first().copied().unwrap_or(tag);
        if best == tag {
            last.extend(Some(tag), &group.images);
            continue;
        }
        for &i in &group.images {
            let moved = top[i]
                .iter()
                .any(|e| e.0 == best && counts(e))
                .then_some(best);
            last.push(moved, i);
        }
    }
    last.0
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: usize = 0;
    const B: usize = 1;
    const C: usize = 2;

    fn names(n: usize) -> Vec<String> {
        (0..n).map(|t| format!("t{t}")).collect()
    }

    fn cfg() -> CategoriesConfig {
        CategoriesConfig {
            top_k: 2,
            representative_tags: 2,
            ..CategoriesConfig::default()
        }
    }

    /// Worked by hand (τ = 0.28, bonus 0.5, top 2 tags per image, 2 representative tags):
    /// top tags: 0 [B .50, A .40], 1 [B .45, A .35], 2 [A .30, B .29], 3 [C .40, A .20],
    /// 4 [C .39, A .21], 5 [A .27, C .26], 6 [A .15, B .10].
    /// Album R: A = 1.88 + 0.5·1.05 = 2.405, B = 1.34 + 0.5·1.24 = 1.96, C = 1.05 + 0.5·0.79 = 1.445
    /// → representative [A, B]. Step 3 (in order of first image): B {0,1}, A {2,3,4,5,6}.
    /// Step 4, group A: R_A = 1.13 + 0.5·0.30 = 1.28 < R_C = 1.05 + 0.5·0.79 = 1.445 → C:
    /// 3, 4, 5 have C among their top tags → C; 2 and 6 do not → 기타.
    /// Group B: R_B = 0.95 + 0.475 = 1.425 > R_A = 0.75 + 0.375 = 1.125 → stays.
    /// Order of arrival in step 4: B, then 기타 (image 2), then C (image 3).
    #[test]
    fn hand_derived_grouping_with_reclassification_and_other() {
        let sims = vec![
            vec![0.40, 0.50, 0.0],
            vec![0.35, 0.45, 0.0],
            vec![0.30, 0.29, 0.0],
            vec![0.20, 0.0, 0.40],
            vec![0.21, 0.0, 0.39],
            vec![0.27, 0.0, 0.26],
            vec![0.15, 0.10, 0.0],
        ];
        let groups = categorize(&sims, &names(3), &[], &cfg());
        assert_eq!(
            groups,
            vec![
                Group {
                    tag: Some(B),
                    images: vec![0, 1]
                },
                Group {
                    tag: None,
                    images: vec![2, 6]
                },
                Group {
                    tag: Some(C),
                    images: vec![3, 4, 5]
                },
            ]
        );
    }

    /// Without step 4 changes: every image goes to its first representative tag;
    /// an image whose tags all fall below the similarity threshold goes to 기타.
    #[test]
    fn threshold_and_first_representative_tag() {
        let cfg = CategoriesConfig {
            min_similarity: 0.1,
            ..cfg()
        };
        let sims = vec![
            vec![0.30, 0.20, 0.0],  // top [A, B] → A
            vec![0.05, 0.02, 0.08], // nothing ≥ 0.1 → other
            vec![0.12, 0.35, 0.0],  // top [B, A] → B
        ];
        // R: A = .30 + .15 + .12 = .57, B = .20 + .35 + .175 = .725 → [B, A];
        // groups in the order of their first image: A (0), other (1), B (2).
        let groups = categorize(&sims, &names(3), &[], &cfg);
        assert_eq!(
            groups,
            vec![
                Group {
                    tag: Some(A),
                    images: vec![0]
                },
                Group {
                    tag: None,
                    images: vec![1]
                },
                Group {
                    tag: Some(B),
                    images: vec![2]
                },
            ]
        );
    }

    #[test]
    fn every_image_exactly_once_and_empty_album() {
        assert!(categorize(&[], &names(3), &[], &CategoriesConfig::default()).is_empty());
        let sims: Vec<Vec<f32>> = (0..20)
            .map(|i| {
                (0..7)
                    .map(|t| ((i * 7 + t * 3) % 11) as f32 / 20.0)
                    .collect()
            })
            .collect();
        let groups = categorize(&sims, &names(7), &[], &CategoriesConfig::default());
        let mut seen: Vec<usize> = groups.iter().flat_map(|g| g.images.clone()).collect();
        seen.sort_unstable();
        assert_eq!(seen, (0..20).collect::<Vec<_>>());
    }
}
