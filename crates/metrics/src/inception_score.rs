//! Inception Score (Salimans et al. 2016): exp E_x KL(p(y|x) ‖ p(y)), computed on each of
//! `splits` consecutive chunks of the samples with p(y) the chunk's mean prediction; reported as
//! the mean and the standard deviation over chunks.

use crate::error::{MetricsError, Result};

/// Row-wise softmax of `n × classes` logits.
pub fn softmax_rows(logits: &[f64], classes: usize) -> Vec<f64> {
    logits
        .chunks_exact(classes)
        .flat_map(|row| {
            let max = row.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let exp: Vec<f64> = row.iter().map(|v| (v - max).exp()).collect();
            let total: f64 = exp.iter().sum();
            exp.into_iter().map(move |e| e / total)
        })
        .collect()
}

/// The Inception Score of class probabilities (`n × classes`, rows summing to 1) over
/// `splits` chunks: (mean, standard deviation with ddof `ddof`).
pub fn inception_score(probs: &[f64], classes: usize, splits: usize, ddof: usize) -> Result<(f64, f64)> {
    if classes == 0 || !probs.len().is_multiple_of(classes) || splits == 0 || probs.len() / classes < splits {
        return Err(MetricsError::Shape(format!(
            "the Inception Score needs n × {classes} probabilities with n ≥ splits ({splits})"
        )));
    }
    let n = probs.len() / classes;
    let scores: Vec<f64> = (0..splits)
        .map(|k| {
            let (lo, hi) = (k * n / splits, (k + 1) * n / splits);
            let rows: Vec<&[f64]> = probs[lo * classes..hi * classes].chunks_exact(classes).collect();
            let marginal: Vec<f64> = (0..classes)
                .map(|c| rows.iter().map(|r| r[c]).sum::<f64>() / rows.len() as f64)
                .collect();
            let kl: f64 = rows
                .iter()
                .map(|r| {
                    r.iter()
                        .zip(&marginal)
                        .filter(|(p, _)| **p > 0.0)
                        .map(|(p, q)| p * (p.ln() - q.ln()))
                        .sum::<f64>()
                })
                .sum::<f64>()
                / rows.len() as f64;
            kl.exp()
        })
        .collect();
    let mean = scores.iter().sum::<f64>() / splits as f64;
    let var = scores.iter().map(|s| (s - mean).powi(2)).sum::<f64>() / (splits - ddof.min(splits - 1)) as f64;
    Ok((mean, var.sqrt()))
}
