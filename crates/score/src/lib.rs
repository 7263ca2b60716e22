//! # diffusion-score
//!
//! Score-based generative modelling (Song & Ermon 2019; Song et al. 2021) on the
//! denoiser interface of `diffusion-samplers`: a score is s = (α D − x)/σ² (Tweedie).
//!
//! - [`sde`]: the VP, sub-VP and VE SDEs with their perturbation kernels, priors and
//!   discretisations; [`reverse`]: their reverse SDEs and probability-flow ODEs;
//! - [`score_fn`]: scores in SDE time, from any denoiser;
//! - [`objectives`]: explicit (Hyvärinen), sliced, denoising and continuous-time
//!   (likelihood-weighted) score matching;
//! - [`langevin`]: Langevin dynamics and NCSN's annealed Langevin sampler;
//! - [`pc`]: predictor–corrector sampling (reverse diffusion, Euler–Maruyama, ancestral
//!   predictors; Langevin correctors);
//! - [`likelihood`]: exact log-likelihoods through the probability-flow ODE, with exact or
//!   Hutchinson divergences; [`bpd`]: dequantisation and bits per dimension;
//! - [`ncsn`]: score networks as denoisers and NCSNv2's ladder and step-size rules;
//! - [`score_sde_ve`]: diffusers' `ScoreSdeVeScheduler` config as a [`PcSampler`].

pub mod bpd;
pub mod langevin;
pub mod likelihood;
pub mod ncsn;
pub mod objectives;
pub mod pc;
pub mod pc_conditional;
pub mod reverse;
pub mod score_fn;
pub mod score_sde_ve;
pub mod sde;

pub use bpd::{Quantization, bits_per_dim, dequantize};
pub use diffusion_samplers::Probe;
pub use langevin::{AnnealedLangevin, LangevinDynamics, geometric_sigmas, langevin_update, ve_score};
pub use likelihood::{
    DenoiserDivergence, Divergence, ExactTrace, HutchinsonTrace, Likelihood, LikelihoodError,
    LikelihoodOutput,
};
pub use ncsn::{ScoreModelDenoiser, ScoreOutput};
pub use objectives::{
    Reduction, ScoreModel, denoising_score_matching, explicit_score_matching, ladder_draw,
    sde_score_matching, sliced_score_matching,
};
pub use pc::{Corrector, PcSampler, Predictor};
pub use pc_conditional::ConditionalPc;
pub use reverse::{ProbabilityFlowOde, ReverseSde};
pub use score_fn::{DenoiserScore, ScoreFn};
pub use score_sde_ve::{ScoreSdeVeConfig, ScoreSdeVeError};
pub use sde::{Sde, SdeKind};
