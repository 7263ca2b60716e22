//! # diffusion-samplers
//!
//! Every sampler written once, against one interface: a [`Denoiser`] D(x, σ) ≈ E[x₀ | x].
//! Whatever a model predicts (ε, x₀, v, a score, a flow velocity), it is wrapped as a
//! denoiser (e.g. [`DiscreteModel`]) and any sampler samples from it.
//!
//! - [`level`]: the noise level (α, σ) of x = α x₀ + σ ε;
//! - [`denoiser`]: the interface, an evaluation counter and model wrappers;
//! - [`vp_step`]: the generalised DDIM step shared by the VP samplers;
//! - [`ddim`], [`ddpm`]: DDIM(η) and DDPM ancestral sampling;
//! - [`oracle`]: the Gaussian-mixture oracle, an exact model in every form.

pub mod ddim;
pub mod ddpm;
pub mod denoiser;
pub mod level;
pub mod oracle;
pub mod sampler;
pub mod vp_step;

pub use ddim::Ddim;
pub use ddpm::{Ddpm, VarianceType};
pub use denoiser::{Counted, Denoiser, DiscreteModel};
pub use level::NoiseLevel;
pub use oracle::{GaussianMixture, TimestepInterpolation};
pub use sampler::{SampleOutput, Sampler};
pub use vp_step::{VpStep, successive_steps};
