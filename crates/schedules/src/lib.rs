//! # diffusion-schedules
//!
//! Noise schedules in f64, checked against diffusers and k-diffusion:
//!
//! - [`discrete`]: β tables (linear, scaled-linear, cosine, sigmoid, from βs or ᾱs), the
//!   zero-terminal-SNR rescale, and σ ↔ fractional timestep by log-σ interpolation;
//! - [`continuous`]: α(t), σ(t), λ(t), their derivatives and inverses for VP, sub-VP,
//!   cosine, VE, EDM and rectified flow;
//! - [`spacing`]: diffusers' `leading` / `trailing` / `linspace` inference timesteps;
//! - [`grids`]: σ grids (Karras, exponential, polyexponential, VP, log-SNR-uniform,
//!   time-uniform, custom) and the flow-matching time shift; [`grid_spec`] parses them from text;
//! - [`convert`]: ᾱ ↔ σ ↔ log-SNR ↔ (α, σ) ↔ flow time;
//! - [`numeric`]: numpy/PyTorch-exact `linspace`, `arange`, rounding and `interp`.
//!
//! Tables are plain `Vec<f64>`; [`DiscreteSchedule::alphas_cumprod_tensor`] moves one onto
//! a device in the dtype a computation needs.

pub mod continuous;
pub mod convert;
pub mod discrete;
pub mod error;
pub mod grid_spec;
pub mod grids;
pub mod numeric;
pub mod spacing;

pub use continuous::{ContinuousSchedule, CosineSchedule, Edm, RectifiedFlow, SubVp, VeGeometric, VpLinear};
pub use discrete::{BetaSchedule, DiscreteSchedule};
pub use error::ScheduleError;
pub use grid_spec::GridSpec;
pub use grids::{SigmaGrid, flow_match_sigmas, flow_time_shift};
pub use spacing::{TimestepSpacing, timesteps, timesteps_fractional};
