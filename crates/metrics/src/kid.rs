//! Kernel Inception Distance (Bińkowski et al. 2018): the unbiased MMD² between feature sets
//! under the cubic polynomial kernel k(x, y) = (xᵀy / d + 1)³, averaged over random subsets of
//! equal size (as torch-fidelity and the original implementation compute it).

use diffusion_core::noise::sample_rng;
use rand::RngExt;

use crate::error::{MetricsError, Result};

fn kernel(x: &[f64], y: &[f64]) -> f64 {
    let dot: f64 = x.iter().zip(y).map(|(a, b)| a * b).sum();
    (dot / x.len() as f64 + 1.0).powi(3)
}

/// The unbiased polynomial-kernel MMD² of two equally sized sets of `dim`-dimensional rows:
/// (Σ_{i≠j} k(xᵢ,xⱼ) + Σ_{i≠j} k(yᵢ,yⱼ)) / (m(m − 1)) − 2 Σ_{i,j} k(xᵢ,yⱼ) / m².
pub fn polynomial_mmd(x: &[&[f64]], y: &[&[f64]]) -> f64 {
    let m = x.len() as f64;
    let within = |s: &[&[f64]]| -> f64 {
        let mut total = 0.0;
        for i in 0..s.len() {
            for j in 0..s.len() {
                if i != j {
                    total += kernel(s[i], s[j]);
                }
            }
        }
        total
    };
    let cross: f64 = x
        .iter()
        .map(|a| y.iter().map(|b| kernel(a, b)).sum::<f64>())
        .sum();
    (within(x) + within(y)) / (m * (m - 1.0)) - 2.0 * cross / (m * m)
}

/// KID of the subsets given by `subsets` (pairs of row index lists into `a` and `b`):
/// the mean and the standard deviation (population, ddof 0) of their MMD².
pub fn kid_of_subsets(
    a: &[f64],
    b: &[f64],
    dim: usize,
    subsets: &[(Vec<usize>, Vec<usize>)],
) -> Result<(f64, f64)> {
    check(a, b, dim)?;
    let (ra, rb): (Vec<&[f64]>, Vec<&[f64]>) = (a.chunks_exact(dim).collect(), b.chunks_exact(dim).collect());
    let mut values = Vec::with_capacity(subsets.len());
    for (ia, ib) in subsets {
        if ia.len() != ib.len() || ia.len() < 2 {
            return Err(MetricsError::Shape(
                "KID subsets must have equal sizes of at least 2".into(),
            ));
        }
        values.push(polynomial_mmd(&pick(&ra, ia)?, &pick(&rb, ib)?));
    }
    let mean = values.iter().sum::<f64>() / values.len() as f64;
    let var = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / values.len() as f64;
    Ok((mean, var.sqrt()))
}

/// KID over `subsets` random subsets of `subset_size` rows of each set (drawn without
/// replacement, seeded): mean and standard deviation.
pub fn kid(
    a: &[f64],
    b: &[f64],
    dim: usize,
    subsets: usize,
    subset_size: usize,
    seed: u64,
) -> Result<(f64, f64)> {
    check(a, b, dim)?;
    let (na, nb) = (a.len() / dim, b.len() / dim);
    if subset_size < 2 || subset_size > na.min(nb) || subsets == 0 {
        return Err(MetricsError::Shape(format!(
            "KID subsets of {subset_size} rows need 2 ≤ size ≤ {} (the smaller set) and at least one subset",
            na.min(nb)
        )));
    }
    let draw = |n: usize, stream: u64| {
        let mut rng = sample_rng(seed, stream);
        let mut idx: Vec<usize> = (0..n).collect();
        for i in 0..subset_size {
            let j = rng.random_range(i..n);
            idx.swap(i, j);
        }
        idx.truncate(subset_size);
        idx
    };
    let chosen: Vec<(Vec<usize>, Vec<usize>)> = (0..subsets as u64)
        .map(|s| (draw(na, 2 * s), draw(nb, 2 * s + 1)))
        .collect();
    kid_of_subsets(a, b, dim, &chosen)
}

/// The rows at `idx`.
fn pick<'a>(rows: &[&'a [f64]], idx: &[usize]) -> Result<Vec<&'a [f64]>> {
    idx.iter()
        .map(|&i| {
            rows.get(i)
                .copied()
                .ok_or_else(|| MetricsError::Shape(format!("row {i} out of range")))
        })
        .collect()
}

fn check(a: &[f64], b: &[f64], dim: usize) -> Result<()> {
    if dim == 0 || !a.len().is_multiple_of(dim) || !b.len().is_multiple_of(dim) {
        return Err(MetricsError::Shape(format!("features must be n × {dim}")));
    }
    Ok(())
}
