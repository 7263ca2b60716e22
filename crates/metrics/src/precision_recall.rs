//! Improved precision and recall (Kynkäänniemi et al. 2019): each set's manifold is the union
//! of balls around its points with radius the distance to the k-th nearest neighbour within the
//! set. Precision is the share of generated points inside the real manifold, recall the share
//! of real points inside the generated one.

use crate::error::{MetricsError, Result};

fn sq_dist(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| (x - y).powi(2)).sum()
}

/// The squared k-NN radius of every row (the k-th smallest distance to another row).
fn radii(rows: &[&[f64]], k: usize) -> Vec<f64> {
    rows.iter()
        .enumerate()
        .map(|(i, a)| {
            let mut d: Vec<f64> = rows
                .iter()
                .enumerate()
                .filter(|(j, _)| *j != i)
                .map(|(_, b)| sq_dist(a, b))
                .collect();
            d.sort_by(f64::total_cmp);
            d[k - 1]
        })
        .collect()
}

/// The share of `queries` that lie in some ball of `support` (radii squared).
fn coverage(support: &[&[f64]], radii: &[f64], queries: &[&[f64]]) -> f64 {
    let inside = queries
        .iter()
        .filter(|q| support.iter().zip(radii).any(|(s, r)| sq_dist(q, s) <= *r))
        .count();
    inside as f64 / queries.len() as f64
}

/// (precision, recall) of `fake` against `real` (`n × dim` rows) with neighbourhood size `k`.
pub fn precision_recall(real: &[f64], fake: &[f64], dim: usize, k: usize) -> Result<(f64, f64)> {
    if dim == 0 || !real.len().is_multiple_of(dim) || !fake.len().is_multiple_of(dim) {
        return Err(MetricsError::Shape(format!("features must be n × {dim}")));
    }
    let (r, f): (Vec<&[f64]>, Vec<&[f64]>) =
        (real.chunks_exact(dim).collect(), fake.chunks_exact(dim).collect());
    if k == 0 || r.len() <= k || f.len() <= k {
        return Err(MetricsError::Shape(format!(
            "k-NN manifolds with k = {k} need more than k points in each set"
        )));
    }
    let (rr, rf) = (radii(&r, k), radii(&f, k));
    Ok((coverage(&r, &rr, &f), coverage(&f, &rf, &r)))
}
