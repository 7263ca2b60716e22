//! # diffusion-backbones
//!
//! Denoising networks. Each takes a batch of noisy inputs and one conditioning scalar per
//! sample (a timestep, or c_noise(σ)) and returns a prediction of the same shape; the
//! `diffusion-samplers` wrappers turn it into a denoiser.
//!
//! - [`mlp`]: a residual MLP for low-dimensional data;
//! - [`embedding`]: sinusoidal embeddings of a continuous scalar;
//! - [`init`]: reproducible, backend-independent parameter initialisation.

pub mod embedding;
pub mod init;
pub mod mlp;

pub use init::SeededInit;
pub use mlp::{Mlp, MlpConfig};
