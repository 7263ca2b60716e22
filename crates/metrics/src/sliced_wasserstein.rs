//! The sliced Wasserstein distance between two point clouds (Rabin et al. 2011; Bonneel
//! et al. 2015): SW₂(μ, ν)² = E_θ W₂²(θᵀμ, θᵀν) over directions θ uniform on the sphere,
//! estimated with `projections` random directions. Each 1-D W₂ compares the quantile
//! functions, evaluated at the midpoints (i + ½)/m of m = max(n_a, n_b) levels.

use diffusion_core::noise::{fill_normal, sample_rng};

/// SW₂ between point clouds `a` (`n_a × dim`, row-major) and `b` (`n_b × dim`).
///
/// The directions come from `seed`, so the estimate is deterministic.
///
/// # Panics
/// If a cloud is empty or its length is not a multiple of `dim`.
pub fn sliced_wasserstein(a: &[f64], b: &[f64], dim: usize, projections: usize, seed: u64) -> f64 {
    assert!(
        dim > 0 && a.len().is_multiple_of(dim) && b.len().is_multiple_of(dim),
        "point clouds must be n × dim"
    );
    assert!(!a.is_empty() && !b.is_empty(), "point clouds must not be empty");
    let mut rng = sample_rng(seed, 0);
    let mut theta = vec![0.0; dim];
    let mut total = 0.0;
    for _ in 0..projections {
        fill_normal(&mut rng, &mut theta);
        let norm = theta.iter().map(|t| t * t).sum::<f64>().sqrt();
        theta.iter_mut().for_each(|t| *t /= norm);
        let pa = project(a, &theta);
        let pb = project(b, &theta);
        total += wasserstein2_squared_1d(pa, pb);
    }
    (total / projections as f64).sqrt()
}

fn project(points: &[f64], theta: &[f64]) -> Vec<f64> {
    points
        .chunks_exact(theta.len())
        .map(|p| p.iter().zip(theta).map(|(x, t)| x * t).sum())
        .collect()
}

/// W₂² between two 1-D empirical distributions, through their quantile functions.
pub fn wasserstein2_squared_1d(a: Vec<f64>, b: Vec<f64>) -> f64 {
    wasserstein_1d_pow(a, b, 2.0)
}

/// W_p^p between two 1-D empirical distributions: the mean of |F_a⁻¹(u) − F_b⁻¹(u)|^p over the
/// midpoints u = (i + ½)/m of m = max(n_a, n_b) levels (for equal sizes, the sorted samples
/// matched in order). W₁ is `wasserstein_1d_pow(a, b, 1.0)`.
pub fn wasserstein_1d_pow(mut a: Vec<f64>, mut b: Vec<f64>, p: f64) -> f64 {
    a.sort_by(f64::total_cmp);
    b.sort_by(f64::total_cmp);
    let m = a.len().max(b.len());
    let quantile = |s: &[f64], u: f64| s[((u * s.len() as f64) as usize).min(s.len() - 1)];
    (0..m)
        .map(|i| {
            let u = (i as f64 + 0.5) / m as f64;
            (quantile(&a, u) - quantile(&b, u)).abs().powf(p)
        })
        .sum::<f64>()
        / m as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gaussian(n: usize, dim: usize, mean: f64, seed: u64) -> Vec<f64> {
        let mut rng = sample_rng(seed, 1);
        let mut v = vec![0.0; n * dim];
        fill_normal(&mut rng, &mut v);
        v.iter().map(|x| x + mean).collect()
    }

    #[test]
    fn shift_gives_its_projected_size() {
        // A shift by m·(1, …, 1) projects to m·Σθᵢ: E[(Σθᵢ)²] = 1 over the sphere, so
        // SW₂ = m·‖1‖/√dim = m exactly in expectation for any dim.
        let a = gaussian(4000, 3, 0.0, 1);
        let b: Vec<f64> = a.iter().map(|x| x + 0.5).collect();
        let sw = sliced_wasserstein(&a, &b, 3, 2000, 7);
        assert!((sw - 0.5).abs() < 0.02, "{sw}");
    }

    #[test]
    fn identical_clouds_are_at_zero_and_independent_ones_near_it() {
        let a = gaussian(2000, 2, 0.0, 1);
        assert_eq!(sliced_wasserstein(&a, &a, 2, 50, 0), 0.0);
        let b = gaussian(2000, 2, 0.0, 2);
        assert!(sliced_wasserstein(&a, &b, 2, 200, 0) < 0.08);
    }

    #[test]
    fn one_dimensional_w2_of_point_masses() {
        assert_eq!(wasserstein2_squared_1d(vec![0.0, 1.0], vec![2.0, 3.0]), 4.0);
        // Unequal sizes: {0} vs {0, 2}: the quantiles at 1/4 and 3/4 are (0, 0) and (0, 2).
        assert_eq!(wasserstein2_squared_1d(vec![0.0], vec![0.0, 2.0]), 2.0);
    }
}
