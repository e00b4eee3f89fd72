//! Themed categories: the original's representative-tag algorithm, step for step.

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
/// in the images' top tags plus `bonus` × the sum of those above τ, each sum
/// accumulated in f32 and combined at the end, as the original computes it.
fn representativeness(
    top: &[Vec<(usize, f32)>],
    images: &[usize],
    n_tags: usize,
    cfg: &CategoriesConfig,
) -> Vec<f32> {
    let mut sum = vec![0.0f32; n_tags];
    let mut above = vec![0.0f32; n_tags];
    for &i in images {
        for &(t, s) in &top[i] {
            sum[t] += s;
            if s > cfg.tau {
                above[t] += s;
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
/// `sims[i][t]` is the similarity of image `i` to tag `t` (mean cosine over
/// the tag's prompts). Every image ends up in exactly one group.
///
/// 1. per image, its `top_k` tags with similarity ≥ `min_similarity`, best first;
/// 2. the album's `representative_tags` best tags by [`representativeness`];
/// 3. each image joins the first of its top tags that is representative, else
///    the other group;
/// 4. per group (other excepted), the best tag over its images is found again;
///    where it differs from the group's tag, each image moves to it if it is
///    among the image's top tags, else to the other group.
///
/// Groups come in the order their first image arrived in step 4 (the order of
/// the original's dictionaries): step 3's groups in the order of their first
/// image, each image appended as it is moved. Images keep that arrival order,
/// so a group can list a later image before an earlier one, as the original does.
pub fn categorize(sims: &[Vec<f32>], n_tags: usize, cfg: &CategoriesConfig) -> Vec<Group> {
    let all: Vec<usize> = (0..sims.len()).collect();
    let top: Vec<Vec<(usize, f32)>> = sims.iter().map(|s| top_tags(s, cfg)).collect();
    let mut representative = ranked(&representativeness(&top, &all, n_tags, cfg));
    representative.truncate(cfg.representative_tags);

    let mut first = OrderedGroups::default();
    for (i, tags) in top.iter().enumerate() {
        let tag = tags
            .iter()
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
            let moved = top[i].iter().any(|&(t, _)| t == best).then_some(best);
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
        let groups = categorize(&sims, 3, &cfg());
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
        let groups = categorize(&sims, 3, &cfg);
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
