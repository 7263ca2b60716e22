//! # diffusion-ddpm
//!
//! Denoising diffusion probabilistic models (Ho et al. 2020), usable with any backbone:
//!
//! - [`forward`]: q(x_t | x₀) in closed form on any discrete schedule;
//! - [`parameterization`]: ε, x₀, v and score predictions and the conversions between them
//!   (Tweedie's formula links the score to the denoiser);
//! - [`loss`]: the L_simple objective;
//! - [`timesteps`]: training timestep samplers.

pub mod error;
pub mod forward;
pub mod loss;
pub mod parameterization;
pub mod timesteps;

pub use error::DdpmError;
pub use forward::ForwardProcess;
pub use loss::SimpleLoss;
pub use parameterization::Prediction;
pub use timesteps::UniformTimesteps;
