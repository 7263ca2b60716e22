//! # diffusion-flow
//!
//! Flow matching (Lipman et al. 2023; Liu et al. 2022; Tong et al. 2023; Albergo &
//! Vanden-Eijnden 2023) on the denoiser interface of `diffusion-samplers`: a flow runs from
//! noise x₀ (t = 0) to data x₁ (t = 1), in torchcfm's convention.
//!
//! - [`path`]: conditional probability paths x_t = a x₁ + b x₀ + s ε and their velocities
//!   (linear, Lipman's OT path, trigonometric, diffusion schedules, any interpolant);
//! - [`coupling`]: independent, exact minibatch OT (Jonker–Volgenant) and entropic (Sinkhorn)
//!   couplings;
//! - [`cfm`]: conditional flow matching (I-CFM, OT-CFM, SB-CFM, Lipman's CFM, rectified flow);
//! - [`velocity`]: velocity fields, their integration, and the bridges to and from denoisers;
//! - [`reflow`]: reflow pairs, straightness, one-step distillation;
//! - [`likelihood`]: log-likelihoods by the instantaneous change of variables.

pub mod cfm;
pub mod coupling;
pub mod likelihood;
pub mod path;
pub mod reflow;
pub mod velocity;

pub use cfm::{CfmBatch, FlowMatcher, PlanSampling, cfm_loss, interpolant_batch, select_rows};
pub use coupling::{
    Coupling, CouplingError, SinkhornMethod, SinkhornOptions, assignment_cost, optimal_assignment,
    sample_plan, sinkhorn_plan, squared_distances,
};
pub use likelihood::{
    ClosedFormVelocityDivergence, ExactVelocityDivergence, FlowLikelihood, HutchinsonVelocityDivergence,
    flow_log_likelihood,
};
pub use path::{AffinePath, Coefficients, Interpolant, PathNoise};
pub use reflow::{ReflowPairs, distillation_loss, straightness};
pub use velocity::{
    DenoiserVelocity, FlowOde, VelocityDenoiser, VelocityField, VelocityModel, integrate_flow, path_level,
};
