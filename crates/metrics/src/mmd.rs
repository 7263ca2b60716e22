//! Maximum mean discrepancy (Gretton et al. 2012, eq. 3): the unbiased estimate of
//! MMD²(P, Q) = E k(x, x′) + E k(y, y′) − 2 E k(x, y) with a Gaussian kernel
//! k(x, y) = exp(−‖x − y‖²/(2h²)), whose bandwidth h defaults to the median heuristic (the
//! median distance between points of the pooled sample).

/// The unbiased MMD² between point clouds `a` (`n_a × dim`) and `b` (`n_b × dim`) with the
/// Gaussian kernel of bandwidth `bandwidth` (`None`: the median heuristic). It is 0 in
/// expectation when both come from one distribution, so it can be slightly negative.
///
/// # Panics
/// If a cloud has fewer than two points or its length is not a multiple of `dim`.
pub fn mmd_squared(a: &[f64], b: &[f64], dim: usize, bandwidth: Option<f64>) -> f64 {
    assert!(
        dim > 0 && a.len().is_multiple_of(dim) && b.len().is_multiple_of(dim),
        "point clouds must be n × dim"
    );
    let (xa, xb): (Vec<&[f64]>, Vec<&[f64]>) = (a.chunks_exact(dim).collect(), b.chunks_exact(dim).collect());
    assert!(
        xa.len() >= 2 && xb.len() >= 2,
        "MMD needs at least two points per cloud"
    );
    let h = bandwidth.unwrap_or_else(|| median_distance(&xa, &xb));
    let gamma = 1.0 / (2.0 * h * h);
    let k = |x: &[f64], y: &[f64]| (-gamma * sq_dist(x, y)).exp();
    let within = |s: &[&[f64]]| {
        let mut sum = 0.0;
        for i in 0..s.len() {
            for j in i + 1..s.len() {
                sum += k(s[i], s[j]);
            }
        }
        2.0 * sum / (s.len() * (s.len() - 1)) as f64
    };
    let mut cross = 0.0;
    for x in &xa {
        for y in &xb {
            cross += k(x, y);
        }
    }
    within(&xa) + within(&xb) - 2.0 * cross / (xa.len() * xb.len()) as f64
}

fn sq_dist(x: &[f64], y: &[f64]) -> f64 {
    x.iter().zip(y).map(|(a, b)| (a - b) * (a - b)).sum()
}

/// The median pairwise distance of the pooled points (over at most 1000 of them, taken
/// evenly, so that the heuristic stays cheap and deterministic).
fn median_distance(a: &[&[f64]], b: &[&[f64]]) -> f64 {
    let pooled: Vec<&[f64]> = a.iter().chain(b).copied().collect();
    let stride = pooled.len().div_ceil(1000).max(1);
    let pts: Vec<&[f64]> = pooled.into_iter().step_by(stride).collect();
    let mut d: Vec<f64> = Vec::with_capacity(pts.len() * pts.len() / 2);
    for i in 0..pts.len() {
        for j in i + 1..pts.len() {
            d.push(sq_dist(pts[i], pts[j]).sqrt());
        }
    }
    d.sort_by(f64::total_cmp);
    let m = d[d.len() / 2];
    if m > 0.0 { m } else { 1.0 }
}

#[cfg(test)]
mod tests {
    use super::*;
    use diffusion_core::noise::{fill_normal, sample_rng};

    fn gaussian(n: usize, mean: f64, seed: u64) -> Vec<f64> {
        let mut rng = sample_rng(seed, 1);
        let mut v = vec![0.0; n];
        fill_normal(&mut rng, &mut v);
        v.iter().map(|x| x + mean).collect()
    }

    #[test]
    fn matches_the_closed_form_for_two_gaussians() {
        // 1-D N(0,1) vs N(μ,1) with bandwidth h: E k(x,x′) = E k(y,y′) = h/√(h² + 2) and
        // E k(x,y) = h/√(h² + 2) · exp(−μ²/(2(h² + 2))).
        let (h, mu) = (1.0, 1.0);
        let a = gaussian(3000, 0.0, 1);
        let b = gaussian(3000, mu, 2);
        let c = h / (h * h + 2.0f64).sqrt();
        let exact = 2.0 * c * (1.0 - (-mu * mu / (2.0 * (h * h + 2.0))).exp());
        let est = mmd_squared(&a, &b, 1, Some(h));
        assert!((est - exact).abs() < 0.01, "{est} vs {exact}");
    }

    #[test]
    fn is_near_zero_for_one_distribution() {
        let a = gaussian(1000, 0.0, 3);
        let b = gaussian(1000, 0.0, 4);
        assert!(mmd_squared(&a, &b, 2, None).abs() < 5e-3);
    }
}
