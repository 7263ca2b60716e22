//! # diffusion-metrics
//!
//! Evaluation of generative models:
//!
//! - [`sliced_wasserstein`](mod@sliced_wasserstein): SW₂ between point clouds (low-dimensional data).

pub mod sliced_wasserstein;

pub use sliced_wasserstein::sliced_wasserstein;
