//! People: the faces of an album's records clustered into persons.
//!
//! DBSCAN over the faces' cosine distances, then a check of each cluster's
//! spread: a small cluster's largest distance, a large one's mean distance,
//! must stay under a bound, or the cluster is dropped as unreliable.

use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};

use super::{dbscan, normalized};
use crate::features::FeatureRecord;

/// People constants.
///
/// The defaults are measured for the face-api recognition net's descriptors
/// (dlib's ResNet), whose cosine distances are small: between different
/// people 0.048–0.19 on the sample photos; between a face and a resized or
/// recompressed copy of it at most 0.03, a mirrored copy up to 0.11 (the
/// descriptor is not mirror-symmetric), so such copies join through chains
/// of closer faces. `eps` sits just under the closest two different people:
/// a person split in two is a smaller harm than two people merged. ArcFace
/// embeddings spread much wider; for those the original used `eps` 0.6, a
/// largest distance of 0.6 and a mean distance of 0.5.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PeopleConfig {
    /// Largest cosine distance between neighbouring faces (DBSCAN `eps`).
    pub eps: f32,
    /// DBSCAN `min_samples` (the face itself included).
    pub min_samples: usize,
    /// Clusters with fewer faces than this are checked by their largest
    /// pairwise distance, larger ones by their mean pairwise distance.
    pub small_cluster: usize,
    /// A small cluster's largest pairwise cosine distance must be below this.
    pub max_distance: f32,
    /// A large cluster's mean pairwise cosine distance must be below this.
    pub mean_distance: f32,
    /// Faces narrower or lower than this many pixels are left out.
    pub min_face_size: u32,
}

impl Default for PeopleConfig {
    fn default() -> Self {
        Self {
            eps: 0.045,
            min_samples: 2,
            small_cluster: 5,
            max_distance: 0.06,
            mean_distance: 0.04,
            min_face_size: 60,
        }
    }
}

/// One person: every face of theirs (a key repeats when one photo holds
/// them twice) and the representative face.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Person {
    /// The photo of each face, in album order.
    pub images: Vec<String>,
    /// The cluster's first face.
    pub representative_face: RepresentativeFace,
}

/// Where the representative face is.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RepresentativeFace {
    /// Its photo.
    pub image: String,
    /// `[x1, y1, x2, y2]` in pixels of the upright photo.
    pub bbox: [i32; 4],
}

/// The persons of an album, largest first (ties in album order). Records
/// without faces (`faces: None`) contribute none.
pub fn people(records: &[(String, FeatureRecord)], cfg: &PeopleConfig) -> Vec<Person> {
    let bbox = |(r, f): (usize, usize)| {
        records[r]
            .1
            .faces
            .as_ref()
            .map_or([0; 4], |faces| faces[f].bbox)
    };
    face_clusters(records, cfg)
        .into_iter()
        .map(|members| Person {
            images: members.iter().map(|&(r, _)| records[r].0.clone()).collect(),
            representative_face: RepresentativeFace {
                image: records[members[0].0].0.clone(),
                bbox: bbox(members[0]),
            },
        })
        .collect()
}

/// The clusters behind [`people`], as `(record index, face index)` pairs in
/// album order, largest cluster first.
pub fn face_clusters(
    records: &[(String, FeatureRecord)],
    cfg: &PeopleConfig,
) -> Vec<Vec<(usize, usize)>> {
    let min = cfg.min_face_size as i32;
    let faces: Vec<((usize, usize), Vec<f32>)> = records
        .iter()
        .enumerate()
        .flat_map(|(r, (_, record))| {
            record
                .faces
                .iter()
                .flatten()
                .enumerate()
                .filter(|(_, f)| f.bbox[2] - f.bbox[0] >= min && f.bbox[3] - f.bbox[1] >= min)
                .map(move |(i, f)| ((r, i), normalized(&f.embedding)))
        })
        .collect();
    let distances = cosine_distances(faces.iter().map(|f| f.1.as_slice()));
    let n = faces.len();
    let distance = |i: usize, j: usize| distances.get(i * n + j).copied().unwrap_or(f32::INFINITY);
    let labels = dbscan::dbscan(n, cfg.min_samples, |i, j| distance(i, j) <= cfg.eps);
    let mut clusters: Vec<Vec<usize>> = dbscan::clusters(&labels)
        .into_iter()
        .filter(|members| {
            let pairs: Vec<f32> = members
                .iter()
                .enumerate()
                .flat_map(|(a, &i)| members[a + 1..].iter().map(move |&j| distance(i, j)))
                .collect();
            if pairs.is_empty() {
                return false;
            }
            if members.len() < cfg.small_cluster {
                pairs.iter().copied().fold(0.0, f32::max) < cfg.max_distance
            } else {
                pairs.iter().sum::<f32>() / (pairs.len() as f32) < cfg.mean_distance
            }
        })
        .collect();
    // A stable sort keeps equal sizes in album order.
    clusters.sort_by_key(|members| std::cmp::Reverse(members.len()));
    clusters
        .into_iter()
        .map(|members| members.into_iter().map(|i| faces[i].0).collect())
        .collect()
}

/// `1 - cos` between every pair of normalised vectors, row-major `n × n`,
/// as one matrix product (an album of thousands of faces has millions of
/// pairs). Empty when the vectors disagree in length.
fn cosine_distances<'a>(vectors: impl Iterator<Item = &'a [f32]>) -> Vec<f32> {
    let vectors: Vec<&[f32]> = vectors.collect();
    let n = vectors.len();
    let dim = vectors.first().map_or(0, |v| v.len());
    if n == 0 || vectors.iter().any(|v| v.len() != dim) {
        return Vec::new();
    }
    let flat: Vec<f32> = vectors.concat();
    let gram = Tensor::from_vec(flat, (n, dim), &Device::Cpu)
        .and_then(|u| u.matmul(&u.t()?))
        .and_then(|g| g.flatten_all()?.to_vec1::<f32>());
    match gram {
        Ok(gram) => gram.into_iter().map(|c| 1.0 - c).collect(),
        Err(_) => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::features::FaceRecord;

    fn record(faces: Vec<(Vec<f32>, i32)>) -> FeatureRecord {
        FeatureRecord {
            embedding: vec![],
            phash: 0,
            laplacian_var: 0.0,
            width: 1000,
            height: 1000,
            faces: Some(
                faces
                    .into_iter()
                    .map(|(embedding, x)| FaceRecord {
                        score: 0.9,
                        bbox: [x, 0, x + 100, 100],
                        landmarks: vec![],
                        embedding,
                    })
                    .collect(),
            ),
        }
    }

    /// A unit vector at `angle` radians in the first two dimensions:
    /// cosine distance between angles a and b is `1 - cos(a - b)`.
    fn at(angle: f32) -> Vec<f32> {
        vec![angle.cos(), angle.sin(), 0.0]
    }

    #[test]
    fn clusters_are_sorted_by_size_with_the_first_face_as_representative() {
        let cfg = PeopleConfig {
            eps: 0.01,
            max_distance: 0.02,
            ..PeopleConfig::default()
        };
        // Person A near angle 0 (three faces), person B near angle 1 (two
        // faces, one photo holding B twice), a stranger at angle 2.
        let records = vec![
            ("p1".to_string(), record(vec![(at(1.0), 0), (at(0.0), 200)])),
            (
                "p2".to_string(),
                record(vec![(at(0.05), 0), (at(2.0), 300)]),
            ),
            (
                "p3".to_string(),
                record(vec![(at(1.02), 0), (at(0.02), 500), (at(1.04), 700)]),
            ),
            ("p4".to_string(), record(vec![])),
        ];
        let people = people(&records, &cfg);
        let images: Vec<Vec<&str>> = people
            .iter()
            .map(|p| p.images.iter().map(String::as_str).collect())
            .collect();
        // B (p1, p3, p3) and A (p1, p2, p3) both have three faces: B's first face comes first.
        assert_eq!(images, vec![vec!["p1", "p3", "p3"], vec!["p1", "p2", "p3"]]);
        assert_eq!(
            people[0].representative_face,
            RepresentativeFace {
                image: "p1".into(),
                bbox: [0, 0, 100, 100]
            }
        );
        assert_eq!(
            people[1].representative_face,
            RepresentativeFace {
                image: "p1".into(),
                bbox: [200, 0, 300, 100]
            }
        );
    }

    #[test]
    fn spread_out_clusters_are_dropped() {
        // A chain 0, 0.12, 0.24: neighbours pairwise within eps (1 - cos 0.12 ≈ 0.0072)
        // but the ends are 0.0287 apart.
        let records = vec![(
            "a".to_string(),
            record(vec![(at(0.0), 0), (at(0.12), 200), (at(0.24), 400)]),
        )];
        let loose = PeopleConfig {
            eps: 0.008,
            max_distance: 0.03,
            ..PeopleConfig::default()
        };
        assert_eq!(people(&records, &loose).len(), 1);
        let strict = PeopleConfig {
            max_distance: 0.02,
            ..loose.clone()
        };
        assert!(people(&records, &strict).is_empty());
        // Five faces or more: judged by the mean distance instead.
        let five = vec![(
            "a".to_string(),
            record((0..5).map(|i| (at(i as f32 * 0.1), i * 200)).collect()),
        )];
        let by_mean = PeopleConfig {
            eps: 0.006,
            max_distance: 0.0,
            mean_distance: 0.03,
            ..PeopleConfig::default()
        };
        assert_eq!(people(&five, &by_mean)[0].images.len(), 5);
        assert!(people(
            &five,
            &PeopleConfig {
                mean_distance: 0.02,
                ..by_mean
            }
        )
        .is_empty());
    }

    #[test]
    fn small_faces_and_faceless_records_are_left_out() {
        let mut small = record(vec![(at(0.0), 0), (at(0.0), 200)]);
        if let Some(faces) = small.faces.as_mut() {
            faces[1].bbox = [200, 0, 259, 100];
        }
        let none = FeatureRecord {
            faces: None,
            ..record(vec![])
        };
        let records = vec![("a".to_string(), small), ("b".to_string(), none)];
        assert!(people(&records, &PeopleConfig::default()).is_empty());
        assert!(people(&[], &PeopleConfig::default()).is_empty());
    }
}
