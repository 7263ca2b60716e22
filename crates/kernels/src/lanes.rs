//! Sums of f32 slices in 16 independent lanes, so that the loops vectorise (a single running
//! sum is a chain of dependent additions the compiler may not reorder), combined in f64.

/// Σ f(x_i).
#[inline(always)]
pub fn sum(x: &[f32], f: impl Fn(f32) -> f32) -> f64 {
    let mut lanes = [0.0f32; 16];
    let chunks = x.chunks_exact(16);
    let tail: f64 = chunks.remainder().iter().map(|&v| f(v) as f64).sum();
    for chunk in chunks {
        for (lane, &v) in lanes.iter_mut().zip(chunk) {
            *lane += f(v);
        }
    }
    lanes.iter().map(|&v| v as f64).sum::<f64>() + tail
}

/// Σ f(a_i, b_i).
#[inline(always)]
pub fn sum2(a: &[f32], b: &[f32], f: impl Fn(f32, f32) -> f32) -> f64 {
    let mut lanes = [0.0f32; 16];
    let (ca, cb) = (a.chunks_exact(16), b.chunks_exact(16));
    let tail: f64 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(&a, &b)| f(a, b) as f64)
        .sum();
    for (ca, cb) in ca.zip(cb) {
        for ((lane, &a), &b) in lanes.iter_mut().zip(ca).zip(cb) {
            *lane += f(a, b);
        }
    }
    lanes.iter().map(|&v| v as f64).sum::<f64>() + tail
}

#[cfg(test)]
mod tests {
    #[test]
    fn sums_match_f64() {
        let x: Vec<f32> = (0..1003).map(|k| (k as f32 * 0.37).sin()).collect();
        let want: f64 = x.iter().map(|&v| v as f64 * v as f64).sum();
        assert!((super::sum(&x, |v| v * v) - want).abs() < 1e-4);
        assert!((super::sum2(&x, &x, |a, b| a * b) - want).abs() < 1e-4);
    }
}
