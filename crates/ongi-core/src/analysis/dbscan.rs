//! DBSCAN over a precomputed neighbour relation, as scikit-learn runs it.
//!
//! Hand-written because the clustering must reproduce `sklearn.cluster.DBSCAN`
//! (metric="precomputed") label for label, including which cluster a border
//! point joins, and the relation here is a boolean predicate (Hamming ≤ eps,
//! optionally OR a CLIP-cosine test) rather than a metric space a crate expects.

/// Cluster labels: `Some(cluster)` or `None` for noise, in input order.
///
/// `neighbours(i, j)` must be symmetric; a point is its own neighbour.
/// A point is core when it has at least `min_samples` neighbours (itself
/// included), exactly as scikit-learn counts them.
pub fn dbscan(
    n: usize,
    min_samples: usize,
    neighbours: impl Fn(usize, usize) -> bool,
) -> Vec<Option<usize>> {
    let adjacency: Vec<Vec<usize>> = (0..n)
        .map(|i| (0..n).filter(|&j| i == j || neighbours(i, j)).collect())
        .collect();
    let core: Vec<bool> = adjacency.iter().map(|a| a.len() >= min_samples).collect();
    let mut labels: Vec<Option<usize>> = vec![None; n];
    let mut next = 0;
    // scikit-learn's dbscan_inner: depth-first expansion from each unlabelled core point.
    for start in 0..n {
        if labels[start].is_some() || !core[start] {
            continue;
        }
        let mut stack = vec![start];
        while let Some(i) = stack.pop() {
            if labels[i].is_none() {
                labels[i] = Some(next);
                if core[i] {
                    stack.extend(
                        adjacency[i]
                            .iter()
                            .copied()
                            .filter(|&v| labels[v].is_none()),
                    );
                }
            }
        }
        next += 1;
    }
    labels
}

/// Groups of indices per cluster, members in input order, noise dropped.
///
/// Groups come in the order of their first member (the original groups labels
/// in a dict filled in input order), which differs from label order when a
/// border point precedes its cluster's first core point.
pub fn clusters(labels: &[Option<usize>]) -> Vec<Vec<usize>> {
    let count = labels.iter().flatten().max().map_or(0, |m| m + 1);
    let mut groups = vec![Vec::new(); count];
    for (i, label) in labels.iter().enumerate() {
        if let Some(c) = label {
            groups[*c].push(i);
        }
    }
    groups.sort_by_key(|g| g.first().copied());
    groups
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Distances on a line: 0, 5, 12, 40, 48, 100 with eps 10 and min_samples 2.
    /// Neighbour pairs: (0,5) (5,12) (40,48). Points 0,1,2 form one cluster
    /// (chained through 1), 3,4 another, 5 is noise — what sklearn's
    /// `DBSCAN(eps=10, min_samples=2, metric="precomputed")` returns for this matrix.
    #[test]
    fn known_distance_matrix() {
        let x = [0i32, 5, 12, 40, 48, 100];
        let labels = dbscan(6, 2, |i, j| (x[i] - x[j]).abs() <= 10);
        assert_eq!(
            labels,
            vec![Some(0), Some(0), Some(0), Some(1), Some(1), None]
        );
        assert_eq!(clusters(&labels), vec![vec![0, 1, 2], vec![3, 4]]);
    }

    /// With min_samples 3, only points with two other neighbours are core; a
    /// border point joins the first cluster that reaches it (sklearn's order).
    #[test]
    fn border_points_and_min_samples() {
        // 0-1-2 chain: only 1 is core (neighbours 0,1,2). 3 is isolated.
        let x = [0i32, 8, 16, 100];
        let labels = dbscan(4, 3, |i, j| (x[i] - x[j]).abs() <= 10);
        assert_eq!(labels, vec![Some(0), Some(0), Some(0), None]);
        // With min_samples 4 and eps 8 on 0,1,2,10,18,19,20: cores are 2 and 4
        // only; point 3 (at 10) is a border point of both. sklearn expands
        // core 2 first, so 3 joins cluster 0 and cluster 1 is {4,5,6}.
        let x = [0i32, 1, 2, 10, 18, 19, 20];
        let labels = dbscan(7, 4, |i, j| (x[i] - x[j]).abs() <= 8);
        let expected = [0, 0, 0, 0, 1, 1, 1].map(Some).to_vec();
        assert_eq!(labels, expected);
    }

    #[test]
    fn empty_and_all_noise() {
        assert!(dbscan(0, 2, |_, _| true).is_empty());
        let labels = dbscan(3, 2, |_, _| false);
        assert_eq!(labels, vec![None; 3]);
        assert!(clusters(&labels).is_empty());
    }
}
