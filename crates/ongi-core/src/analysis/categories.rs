//! Themed categories: the original's representative-tag algorithm (SPEC §3), step for step.

use serde::{Deserialize, Serialize};

/// Constants of the categories algorithm; defaults are the original's.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CategoriesConfig {
    /// Tags kept per image (step 1).
    pub top_k: usize,
    /// Tags below this similarity are not kept for an image (step 1).
    pub min_similarity: f32,
    /// Scores above τ count extra towards representativeness (step 2).
    pub tau: f32,
    /// Weight of the scores above τ (step 2).
    pub bonus: f32,
    /// Representative tags kept for the album (step 2).
    pub representative_tags: usize,
    /// Name of the group of images no representative tag fits.
    pub other_name: String,
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
        }
    }
}

/// One resulting group: a tag index (or `None` for the "other" group) and image indices.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Group {
    /// The tag, or `None` for the other group.
    pub tag: Option<usize>,
    /// Images in input order.
    pub images: Vec<usize>,
}

/// Step 1: an image's top tags, best first (ties keep tag order), with their scores.
fn top_tags(sims: &[f32], cfg: &CategoriesConfig) -> Vec<(usize, f32)> {
    let mut tags: Vec<(usize, f32)> = sims
        .iter()
        .copied()
        .enumerate()
        .filter(|(_, s)| *s >= cfg.min_similarity)
        .collect();
    tags.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    tags.truncate(cfg.top_k);
    tags
}

/// Step 2: representativeness of every tag over `images`: the sum of its scores
/// in the images' top tags plus `bonus` × the sum of those above τ.
fn representativeness(
    top: &[Vec<(usize, f32)>],
    images: &[usize],
    n_tags: usize,
    cfg: &CategoriesConfig,
) -> Vec<f32> {
    let mut r = vec![0.0f32; n_tags];
    for &i in images {
        for &(t, s) in &top[i] {
            r[t] += s;
            if s > cfg.tau {
                r[t] += cfg.bonus * s;
            }
        }
    }
    r
}

/// Tags ranked by representativeness (ties keep tag order), only those that occur.
fn ranked(r: &[f32], top: &[Vec<(usize, f32)>], images: &[usize]) -> Vec<usize> {
    let mut present = vec![false; r.len()];
    for &i in images {
        for &(t, _) in &top[i] {
            present[t] = true;
        }
    }
    let mut tags: Vec<usize> = (0..r.len()).filter(|&t| present[t]).collect();
    tags.sort_by(|&a, &b| r[b].total_cmp(&r[a]).then(a.cmp(&b)));
    tags
}

/// Splits images into themed groups from their tag similarities.
///
/// `sims[i][t]` is the similarity of image `i` to tag `t` (mean cosine over
/// the tag's prompts). Every image ends up in exactly one group. Groups come
/// in the order of the album's representative tags, then tags introduced by
/// step 4 in tag order, then the other group; empty groups are dropped.
pub fn categorize(sims: &[Vec<f32>], n_tags: usize, cfg: &CategoriesConfig) -> Vec<Group> {
    let all: Vec<usize> = (0..sims.len()).collect();
    // 1. per image: top tags above the threshold
    let top: Vec<Vec<(usize, f32)>> = sims.iter().map(|s| top_tags(s, cfg)).collect();
    // 2. the album's representative tags
    let r = representativeness(&top, &all, n_tags, cfg);
    let mut representative = ranked(&r, &top, &all);
    representative.truncate(cfg.representative_tags);
    // 3. each image to the first of its top tags that is representative, else other
    let mut assigned: Vec<Option<usize>> = top
        .iter()
        .map(|tags| {
            tags.iter()
                .map(|&(t, _)| t)
                .find(|t| representative.contains(t))
        })
        .collect();
    // 4. per group, recompute the representative tag over its images; where it
    //    differs, move each image to it if it is among the image's top tags, else to other
    let groups_before = assigned.clone();
    for &tag in &representative {
        let members: Vec<usize> = all
            .iter()
            .copied()
            .filter(|&i| groups_before[i] == Some(tag))
            .collect();
        if members.is_empty() {
            continue;
        }
        let r = representativeness(&top, &members, n_tags, cfg);
        let Some(&best) = ranked(&r, &top, &members).first() else {
            continue;
        };
        if best != tag {
            for &i in &members {
                assigned[i] = top[i].iter().any(|&(t, _)| t == best).then_some(best);
            }
        }
    }
    // group in the documented order
    let mut order: Vec<usize> = representative.clone();
    let mut introduced: Vec<usize> = assigned
        .iter()
        .flatten()
        .copied()
        .filter(|t| !representative.contains(t))
        .collect();
    introduced.sort_unstable();
    introduced.dedup();
    order.extend(introduced);
    let mut groups: Vec<Group> = order
        .into_iter()
        .map(|t| Group {
            tag: Some(t),
            images: all
                .iter()
                .copied()
                .filter(|&i| assigned[i] == Some(t))
                .collect(),
        })
        .collect();
    groups.push(Group {
        tag: None,
        images: all
            .iter()
            .copied()
            .filter(|&i| assigned[i].is_none())
            .collect(),
    });
    groups.retain(|g| !g.images.is_empty());
    groups
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: usize = 0;
    const B: usize = 1;
    const C: usize = 2;

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
    /// → representative [A, B]. Step 3: B {0,1}, A {2,3,4,5,6}.
    /// Step 4, group A: R_A = 1.13 + 0.5·0.30 = 1.28 < R_C = 1.05 + 0.5·0.79 = 1.445 → C:
    /// 3, 4, 5 have C among their top tags → C; 2 and 6 do not → 기타.
    /// Group B: R_B = 0.95 + 0.475 = 1.425 > R_A = 0.75 + 0.375 = 1.125 → stays.
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
        let groups = categorize(&sims, 3, &cfg());
        assert_eq!(
            groups,
            vec![
                Group {
                    tag: Some(B),
                    images: vec![0, 1]
                },
                Group {
                    tag: Some(C),
                    images: vec![3, 4, 5]
                },
                Group {
                    tag: None,
                    images: vec![2, 6]
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
        // R: A = .30 + .15 + .12 = .57, B = .20 + .35 + .175 = .725 → [B, A]
        let groups = categorize(&sims, 3, &cfg);
        assert_eq!(
            groups,
            vec![
                Group {
                    tag: Some(B),
                    images: vec![2]
                },
                Group {
                    tag: Some(A),
                    images: vec![0]
                },
                Group {
                    tag: None,
                    images: vec![1]
                },
            ]
        );
    }

    #[test]
    fn every_image_exactly_once_and_empty_album() {
        assert!(categorize(&[], 3, &CategoriesConfig::default()).is_empty());
        let sims: Vec<Vec<f32>> = (0..20)
            .map(|i| {
                (0..7)
                    .map(|t| ((i * 7 + t * 3) % 11) as f32 / 20.0)
                    .collect()
            })
            .collect();
        let groups = categorize(&sims, 7, &CategoriesConfig::default());
        let mut seen: Vec<usize> = groups.iter().flat_map(|g| g.images.clone()).collect();
        seen.sort_unstable();
        assert_eq!(seen, (0..20).collect::<Vec<_>>());
    }
}
