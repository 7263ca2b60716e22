//! # diffusion-metrics
//!
//! Evaluation of generative models:
//!
//! - [`frechet`]: the Fréchet distance of feature statistics (FID), reference statistics in
//!   numpy's `.npz` format ([`npz`]);
//! - [`inception`]: pytorch-fid's Inception-v3 feature extractor (user-provided weights);
//! - [`kid`](mod@kid): Kernel Inception Distance;
//! - [`inception_score`](mod@inception_score): the Inception Score;
//! - [`precision_recall`](mod@precision_recall): improved precision and recall (k-NN manifolds);
//! - [`sliced_wasserstein`](mod@sliced_wasserstein): SW₂ between point clouds (low-dimensional data);
//! - [`mmd`]: the unbiased kernel MMD² (Gaussian kernel, median-heuristic bandwidth).

pub mod error;
pub mod frechet;
pub mod inception;
pub mod inception_score;
pub mod kid;
pub mod mmd;
pub mod npz;
pub mod precision_recall;
pub mod sliced_wasserstein;

pub use error::MetricsError;
pub use frechet::{FeatureStats, frechet_distance};
pub use inception_score::inception_score;
pub use kid::kid;
pub use mmd::mmd_squared;
pub use precision_recall::precision_recall;
pub use sliced_wasserstein::{sliced_wasserstein, wasserstein_1d_pow};
