//! The Fréchet distance between Gaussians fitted to features (Heusel et al. 2017, eq. 6) —
//! FID when the features are Inception-v3's pool3 activations:
//!
//! d² = ‖μ₁ − μ₂‖² + tr(Σ₁ + Σ₂ − 2 (Σ₁ Σ₂)^{1/2}).
//!
//! The trace of the square root is computed stably from symmetric eigenproblems only:
//! tr (Σ₁Σ₂)^{1/2} = Σᵢ √λᵢ with λᵢ the eigenvalues of the positive semi-definite
//! Σ₁^{1/2} Σ₂ Σ₁^{1/2} (which is similar to Σ₁Σ₂), so singular covariances (fewer samples
//! than dimensions) need no regularising offset and nothing goes complex.

use std::path::Path;

use diffusion_core::npy::NpyArray;
use nalgebra::{DMatrix, DVector, SymmetricEigen};

use crate::error::{MetricsError, Result};
use crate::npz;

/// Mean and covariance of a set of features (pytorch-fid's `mu`, `sigma`).
#[derive(Clone, Debug, PartialEq)]
pub struct FeatureStats {
    /// μ, length d.
    pub mu: Vec<f64>,
    /// Σ, `d × d` row-major, normalised by n − 1 (`np.cov`).
    pub sigma: Vec<f64>,
    /// The number of features they summarise (0 when read from a file that does not say).
    pub count: usize,
}

impl FeatureStats {
    /// The statistics of `n × dim` features (row-major).
    pub fn from_features(features: &[f64], dim: usize) -> Result<Self> {
        if dim == 0 || !features.len().is_multiple_of(dim) || features.len() / dim < 2 {
            return Err(MetricsError::Shape(format!(
                "feature statistics need at least two rows of {dim} values, got {} values",
                features.len()
            )));
        }
        let n = features.len() / dim;
        let x = DMatrix::from_row_slice(n, dim, features);
        let mu = x.row_mean();
        let centred = DMatrix::from_fn(n, dim, |i, j| x[(i, j)] - mu[j]);
        let cov = centred.transpose() * &centred / (n as f64 - 1.0);
        Ok(Self {
            mu: mu.iter().copied().collect(),
            sigma: row_major(&cov),
            count: n,
        })
    }

    /// The dimension d.
    pub fn dim(&self) -> usize {
        self.mu.len()
    }

    /// Reads `mu` and `sigma` from a `.npz` file (pytorch-fid's and ADM's reference-statistics
    /// format; compressed or not).
    pub fn read_npz(path: &Path) -> Result<Self> {
        let arrays = npz::read_npz(path)?;
        let get = |name: &str| {
            arrays.get(name).ok_or_else(|| MetricsError::File {
                path: path.to_path_buf(),
                reason: format!(
                    "no array `{name}` (it holds {:?}); FID statistics need `mu` and `sigma`",
                    arrays.keys().collect::<Vec<_>>()
                ),
            })
        };
        let (mu, sigma) = (get("mu")?, get("sigma")?);
        let d = mu.shape.iter().product::<usize>();
        if mu.shape.len() != 1 || sigma.shape != [d, d] {
            return Err(MetricsError::File {
                path: path.to_path_buf(),
                reason: format!(
                    "mu {:?} and sigma {:?} are not [d] and [d, d]",
                    mu.shape, sigma.shape
                ),
            });
        }
        Ok(Self {
            mu: mu.to_f64(),
            sigma: sigma.to_f64(),
            count: 0,
        })
    }

    /// Writes `mu` and `sigma` (float64) as an uncompressed `.npz` that numpy reads.
    pub fn write_npz(&self, path: &Path) -> Result<()> {
        let d = self.dim();
        let arrays = [
            ("mu", NpyArray::from_f64(vec![d], self.mu.clone())),
            ("sigma", NpyArray::from_f64(vec![d, d], self.sigma.clone())),
        ];
        let arrays: Vec<(&str, NpyArray)> = arrays
            .into_iter()
            .map(|(k, a)| a.map(|a| (k, a)).map_err(|e| MetricsError::Shape(e.to_string())))
            .collect::<Result<_>>()?;
        npz::write_npz(path, &arrays)
    }
}

fn row_major(m: &DMatrix<f64>) -> Vec<f64> {
    m.transpose().as_slice().to_vec()
}

/// The symmetric square root of a symmetric positive semi-definite matrix (negative eigenvalues
/// from rounding are clamped to 0).
fn sqrt_psd(m: DMatrix<f64>) -> DMatrix<f64> {
    let eig = SymmetricEigen::new(m);
    let roots = DVector::from_iterator(
        eig.eigenvalues.len(),
        eig.eigenvalues.iter().map(|&l| l.max(0.0).sqrt()),
    );
    &eig.eigenvectors * DMatrix::from_diagonal(&roots) * eig.eigenvectors.transpose()
}

/// tr (Σ₁ Σ₂)^{1/2} of two covariance matrices (`d × d`, row-major).
pub fn trace_sqrt_product(sigma1: &[f64], sigma2: &[f64], dim: usize) -> f64 {
    let symmetric = |s: &[f64]| {
        let m = DMatrix::from_row_slice(dim, dim, s);
        (&m + m.transpose()) * 0.5
    };
    let root1 = sqrt_psd(symmetric(sigma1));
    let inner = &root1 * symmetric(sigma2) * &root1;
    let inner = (&inner + inner.transpose()) * 0.5;
    SymmetricEigen::new(inner)
        .eigenvalues
        .iter()
        .map(|&l| l.max(0.0).sqrt())
        .sum()
}

/// The Fréchet distance d² between two feature statistics (FID on Inception features).
pub fn frechet_distance(a: &FeatureStats, b: &FeatureStats) -> Result<f64> {
    let d = a.dim();
    if b.dim() != d || a.sigma.len() != d * d || b.sigma.len() != d * d {
        return Err(MetricsError::Shape(format!(
            "statistics of dimension {} and {} cannot be compared",
            a.dim(),
            b.dim()
        )));
    }
    let mean_term: f64 = a.mu.iter().zip(&b.mu).map(|(x, y)| (x - y).powi(2)).sum();
    let trace = |s: &[f64]| (0..d).map(|i| s[i * d + i]).sum::<f64>();
    Ok(mean_term + trace(&a.sigma) + trace(&b.sigma) - 2.0 * trace_sqrt_product(&a.sigma, &b.sigma, d))
}
