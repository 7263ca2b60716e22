//! # diffusion-metrics
//!
//! Evaluation of generative models:
//!
//! - [`sliced_wasserstein`](mod@sliced_wasserstein): SW₂ between point clouds (low-dimensional data);
//! - [`mmd`]: the unbiased kernel MMD² (Gaussian kernel, median-heuristic bandwidth).

pub mod mmd;
pub mod sliced_wasserstein;

pub use mmd::mmd_squared;
pub use sliced_wasserstein::sliced_wasserstein;
