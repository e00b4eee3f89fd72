//! Low-quality photos: the Laplacian blur test and the CLIP-IQA dual threshold.

use serde::{Deserialize, Serialize};

/// The four CLIP-IQA prompt pairs, (positive, negative), in the original's order.
pub const IQA_PROMPTS: [(&str, &str); 4] = [
    ("a good photo", "a bad photo"),
    ("a sharp photo", "a blurry photo"),
    ("a clean photo", "a noisy photo"),
    ("a high contrast photo", "a low contrast photo"),
];

/// Quality thresholds; defaults are the original's ViT-B/32 values. Kept in f64
/// and compared in f64, as the original's Python floats are, so a score on the
/// threshold decides the same way.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct QualityConfig {
    /// A Laplacian variance below this is blurry.
    pub laplacian_threshold: f64,
    /// The sharp score must reach this.
    pub sharp_threshold: f64,
    /// `0.75·sharp + 0.25·good` must reach this.
    pub combined_threshold: f64,
}

impl Default for QualityConfig {
    fn default() -> Self {
        Self::VIT_B32
    }
}

impl QualityConfig {
    /// Thresholds the original used with ViT-B/32.
    pub const VIT_B32: Self = Self {
        laplacian_threshold: 80.0,
        sharp_threshold: 0.488,
        combined_threshold: 0.490,
    };
    /// Thresholds the original used with ViT-L/14.
    pub const VIT_L14: Self = Self {
        laplacian_threshold: 80.0,
        sharp_threshold: 0.483,
        combined_threshold: 0.486,
    };

    /// The original's thresholds for a model family, from the vision tower's shape:
    /// ViT-L/14 (width 1024, patch 14) or else ViT-B/32's.
    pub fn for_vision_tower(hidden_size: usize, patch_size: usize) -> Self {
        if hidden_size == 1024 && patch_size == 14 {
            Self::VIT_L14
        } else {
            Self::VIT_B32
        }
    }
}

/// CLIP-IQA scores of one photo: the positive prompt's softmax share per pair.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct IqaScores {
    /// "a good photo" vs "a bad photo".
    pub good: f32,
    /// "a sharp photo" vs "a blurry photo".
    pub sharp: f32,
    /// "a clean photo" vs "a noisy photo".
    pub clean: f32,
    /// "a high contrast photo" vs "a low contrast photo".
    pub contrast: f32,
}

/// Softmax share of the first of two raw cosine similarities (no logit scale, as the original).
pub fn positive_share(pos: f32, neg: f32) -> f32 {
    // 1 / (1 + e^(neg - pos)) == e^pos / (e^pos + e^neg), without overflow.
    1.0 / (1.0 + (neg - pos).exp())
}

/// IQA scores from the cosines of a normalised image embedding with the 8
/// normalised prompt embeddings, in [`IQA_PROMPTS`] order (pos, neg, pos, neg, …).
pub fn iqa_scores(cosines: &[f32; 8]) -> IqaScores {
    let s = |k: usize| positive_share(cosines[2 * k], cosines[2 * k + 1]);
    IqaScores {
        good: s(0),
        sharp: s(1),
        clean: s(2),
        contrast: s(3),
    }
}

/// The CLIP-IQA dual threshold: pass iff `sharp ≥ t1` and `0.75·sharp + 0.25·good ≥ t2`.
pub fn iqa_passes(scores: &IqaScores, cfg: &QualityConfig) -> bool {
    let (sharp, good) = (f64::from(scores.sharp), f64::from(scores.good));
    sharp >= cfg.sharp_threshold && (1.0 - 0.25) * sharp + 0.25 * good >= cfg.combined_threshold
}

/// The Laplacian test: pass iff the variance is at least the threshold.
pub fn laplacian_passes(variance: f32, cfg: &QualityConfig) -> bool {
    f64::from(variance) >= cfg.laplacian_threshold
}

/// A photo is low quality when either test fails.
pub fn is_low_quality(variance: f32, scores: &IqaScores, cfg: &QualityConfig) -> bool {
    !laplacian_passes(variance, cfg) || !iqa_passes(scores, cfg)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scores(good: f32, sharp: f32) -> IqaScores {
        IqaScores {
            good,
            sharp,
            clean: 0.5,
            contrast: 0.5,
        }
    }

    #[test]
    fn dual_threshold_edges() {
        let cfg = QualityConfig::default();
        // sharp at 0.488 passes the first test (combined 0.516 passes too): the
        // f32 score 0.488 is 0.48800000548 in f64, at least the f64 threshold
        assert!(iqa_passes(&scores(0.6, 0.488), &cfg));
        // the next f32 below it is under the threshold in f64, as in the
        // original (f32 scores compared with Python floats)
        let below = f32::from_bits(0.488f32.to_bits() - 1);
        assert!(!iqa_passes(&scores(0.6, below), &cfg));
        // just below the sharp threshold fails even with a high good score
        assert!(!iqa_passes(&scores(0.99, 0.4879), &cfg));
        // sharp passes but the combination falls short: 0.75*0.489 + 0.25*0.48 = 0.48675
        assert!(!iqa_passes(&scores(0.48, 0.489), &cfg));
        // combined exactly at the threshold passes, just below fails (values exact in binary)
        let halves = QualityConfig {
            laplacian_threshold: 80.0,
            sharp_threshold: 0.25,
            combined_threshold: 0.5,
        };
        assert!(iqa_passes(&scores(0.5, 0.5), &halves));
        assert!(!iqa_passes(&scores(0.4921875, 0.5), &halves));
        // ViT-L/14 thresholds are lower
        let l14 = QualityConfig::for_vision_tower(1024, 14);
        assert_eq!(l14, QualityConfig::VIT_L14);
        assert!(iqa_passes(&scores(0.5, 0.484), &l14));
        assert!(!iqa_passes(&scores(0.5, 0.484), &cfg));
    }

    #[test]
    fn laplacian_edge_and_union() {
        let cfg = QualityConfig::default();
        assert!(laplacian_passes(80.0, &cfg));
        assert!(!laplacian_passes(79.99, &cfg));
        let good = scores(0.6, 0.6);
        assert!(!is_low_quality(120.0, &good, &cfg));
        assert!(is_low_quality(10.0, &good, &cfg));
        assert!(is_low_quality(120.0, &scores(0.6, 0.3), &cfg));
    }

    #[test]
    fn softmax_of_raw_cosines() {
        assert!((positive_share(0.3, 0.3) - 0.5).abs() < 1e-7);
        // e^0.25 / (e^0.25 + e^0.2)
        let expected = 0.25f32.exp() / (0.25f32.exp() + 0.2f32.exp());
        assert!((positive_share(0.25, 0.2) - expected).abs() < 1e-6);
        let s = iqa_scores(&[0.3, 0.1, 0.2, 0.2, 0.0, 0.0, 0.1, 0.3]);
        assert!(s.good > 0.5 && (s.sharp - 0.5).abs() < 1e-7 && s.contrast < 0.5);
    }
}
