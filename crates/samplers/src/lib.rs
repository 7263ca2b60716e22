//! # diffusion-samplers
//!
//! Every sampler written once, against one interface: a [`Denoiser`] D(x, σ) ≈ E[x₀ | x].
//! Whatever a model predicts (ε, x₀, v, a score, a flow velocity), it is wrapped as a
//! denoiser (e.g. [`DiscreteModel`]) and any sampler samples from it.
//!
//! - [`level`]: the noise level (α, σ) of x = α x₀ + σ ε;
//! - [`denoiser`]: the interface, an evaluation counter and model wrappers;
//! - [`oracle`]: the Gaussian-mixture oracle, an exact model in every form;
//! - VP samplers on discrete timesteps: [`ddpm`], [`ddim`] (sharing [`vp_step`]),
//!   [`ddim_inversion`];
//! - σ-grid samplers on the VE probability-flow ODE ([`ve`]): [`edm`] (Euler, Heun, DPM-2,
//!   with churn), [`ancestral`] (Euler, DPM-2, DPM-Solver++(2S) ancestral), [`lms`],
//!   [`dpm_multistep`] (DPM-Solver(++) multistep of orders 1–3, ODE and SDE, in k-diffusion's
//!   and diffusers' conventions), [`dpm_solver`] (DPM-Solver fast and
//!   adaptive), all built on [`single_step`];
//! - divergences by autodiff, exact or Hutchinson ([`divergence`]), and log-densities by
//!   the instantaneous change of variables ([`cnf`]);
//! - ODE integration: [`ode`] (Euler, midpoint, Heun, RK4, Dormand–Prince) and
//!   [`pf_ode`] (the probability-flow ODE in σ or flow time; diffusers' flow-matching
//!   Euler), with the flow views of [`flow`];
//! - [`sde`]: SDEs and Euler–Maruyama, with the reverse VE SDE as a sampler;
//! - [`pndm`] (PRK/PLMS) and [`unipc`] (UniPC bh1/bh2 predictor–corrector);
//! - guidance and editing: [`guidance`] (classifier and classifier-free guidance as
//!   denoisers), [`cfg_pp`] (CFG++), [`inpaint`] (replacement and RePaint),
//!   [`smc_inpaint`] (SMCDiff, exact as particles grow), [`sdedit`];
//! - [`edm_precond`]: EDM's preconditioned denoiser and training objective;
//! - [`diffusers`]: a diffusers `scheduler_config.json` mapped onto these samplers, exactly.

pub mod ancestral;
pub mod cfg_pp;
pub mod cnf;
pub mod ddim;
pub mod ddim_inversion;
pub mod ddpm;
pub mod denoiser;
pub mod diffusers;
pub mod divergence;
pub mod dpm_multistep;
pub mod dpm_solver;
pub mod edm;
pub mod edm_precond;
pub mod flow;
pub mod guidance;
pub mod inpaint;
pub mod level;
pub mod lms;
pub mod ode;
pub mod oracle;
pub mod pf_ode;
pub mod pndm;
pub mod sampler;
pub mod sde;
pub mod sdedit;
pub mod single_step;
pub mod smc_inpaint;
pub mod unipc;
pub mod ve;
pub mod vp_step;

pub use ancestral::AncestralSampler;
pub use cfg_pp::CfgPlusPlus;
pub use cnf::{DivergenceField, LogDensityChange, integrate_log_density};
pub use ddim::Ddim;
pub use ddim_inversion::{DdimInversion, InversionEval, InversionStep};
pub use ddpm::{Ddpm, VarianceType};
pub use denoiser::{Clipped, Counted, Denoiser, DiscreteModel, model_timestep};
pub use diffusers::{DiffusersError, DiffusersScheduler, ModelForm, Plan, SchedulerClass, StepOptions};
pub use divergence::{Probe, exact_divergence, hutchinson_divergence, vector_jacobian};
pub use dpm_multistep::{DpmAlgorithm, DpmDialect, DpmMultistep, SolverType};
pub use dpm_solver::{DpmSolverAdaptive, DpmSolverFast};
pub use edm::EdmSampler;
pub use edm_precond::{EdmDenoiser, EdmLoss, EdmPreconditioning};
pub use flow::{FlowConvention, FlowModel, velocity};
pub use guidance::{ClassifierFree, ClassifierGuidance, NoisyClassifier, batched_cfg, grad_log_prob_of};
pub use inpaint::{KnownRegion, RePaint, UndoRule, repaint_path};
pub use level::NoiseLevel;
pub use lms::Lms;
pub use ode::{Dopri5, FixedStep, OdeError, OdeStats, OdeSystem};
pub use oracle::{GaussianMixture, TimestepInterpolation};
pub use pf_ode::{FlowMatchEuler, FlowTime, OdeSampler, OdeSolver, ProbabilityFlow};
pub use pndm::Pndm;
pub use sampler::{Observer, SampleError, SampleOutput, Sampler, WithClippedDenoiser};
pub use sde::{EulerMaruyama, ReverseVeSde, SdeSystem, euler_maruyama_step};
pub use sdedit::{img2img_timesteps, noise_to};
pub use single_step::OdeMethod;
pub use smc_inpaint::SmcInpainting;
pub use unipc::{UniPc, UniPcVariant};
pub use ve::{Churn, InVpCoordinates, VeGrid, ancestral_step};
pub use vp_step::{VpStep, successive_steps};
