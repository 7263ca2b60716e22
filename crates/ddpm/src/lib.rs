//! # diffusion-ddpm
//!
//! Denoising diffusion probabilistic models (Ho et al. 2020), usable with any backbone:
//!
//! - [`forward`]: q(x_t | x₀) in closed form on any discrete schedule;
//! - [`clip`]: static clipping and dynamic thresholding of x̂₀;
//! - [`parameterization`]: ε, x₀, v and score predictions and the conversions between them
//!   (Tweedie's formula links the score to the denoiser);
//! - [`posterior`]: q(x_{t−1} | x_t, x₀), its mean coefficients and (clipped) variance;
//! - [`variance`]: fixed and learned (Improved DDPM) reverse-step variances;
//! - [`loss`]: L_simple, the hybrid loss with its stop-gradient, the bound, offset noise;
//! - [`weighting`]: min-SNR-γ, P2, SNR and EDM weightings in any prediction space;
//! - [`vlb`]: the variational bound term by term, in bits per dimension;
//! - [`timesteps`]: uniform and loss-aware (importance) timestep samplers;
//! - [`respace`]: Improved DDPM's timestep respacing for faster sampling;
//! - [`classifier`]: the noisy-classifier objective of classifier guidance;
//! - [`super_resolution`]: cascaded super-resolution inputs with noise-conditioning augmentation.

pub mod classifier;
pub mod clip;
pub mod error;
pub mod forward;
pub mod loss;
pub mod parameterization;
pub mod posterior;
pub mod respace;
pub mod super_resolution;
pub mod timesteps;
pub mod variance;
pub mod vlb;
pub mod weighting;

pub use classifier::{NoisyClassifierLoss, cross_entropy};
pub use clip::X0Clip;
pub use error::DdpmError;
pub use forward::ForwardProcess;
pub use loss::{DdpmLoss, LossTerms, LossType, SimpleLoss, offset_noise};
pub use parameterization::Prediction;
pub use posterior::Posterior;
pub use respace::{Respaced, space_timesteps};
pub use super_resolution::{ConditioningAugmentation, concat_conditioning, conditioned_network};
pub use timesteps::{LossAwareTimesteps, TimestepSampler, UniformTimesteps};
pub use variance::{ModelVariance, split_variance_head};
pub use vlb::{Decoder, Vlb, VlbReport};
pub use weighting::Weighting;
