//! Sampling by integrating the probability-flow ODE (Song et al. 2021, eq. 13) with the
//! generic integrators of [`crate::ode`], in the VE time σ or in flow time, and the
//! flow-matching Euler sampler of diffusers (SD3).

use burn::tensor::Tensor;
use diffusion_core::noise::NoiseSource;
use serde::{Deserialize, Serialize};

use crate::denoiser::{Counted, Denoiser};
use crate::flow::{FlowConvention, velocity};
use crate::level::NoiseLevel;
use crate::ode::{Dopri5, FixedStep, OdeError, OdeSystem};
use crate::sampler::{Observer, SampleError, SampleOutput, Sampler};

/// The time variable the probability-flow ODE is written in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FlowTime {
    /// VE noise level σ: dx/dσ = (x − D(x, σ))/σ (Karras et al. 2022, eq. 3).
    VeSigma,
    /// Time on the linear path in a convention: dx/dt = the path's velocity.
    Flow(FlowConvention),
}

/// The probability-flow ODE of a denoiser.
pub struct ProbabilityFlow<'a> {
    denoiser: &'a dyn Denoiser,
    time: FlowTime,
}

impl<'a> ProbabilityFlow<'a> {
    /// The ODE of `denoiser` in the time variable `time`.
    pub fn new(denoiser: &'a dyn Denoiser, time: FlowTime) -> Self {
        Self { denoiser, time }
    }
}

impl OdeSystem for ProbabilityFlow<'_> {
    fn derivative(&self, x: Tensor<2>, t: f64) -> Tensor<2> {
        match self.time {
            FlowTime::VeSigma => {
                let d = self.denoiser.denoise(x.clone(), NoiseLevel::ve(t));
                (x - d).div_scalar(t)
            }
            FlowTime::Flow(convention) => velocity(self.denoiser, x, convention.level(t), convention),
        }
    }
}

/// How an [`OdeSampler`] integrates.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OdeSolver {
    /// A fixed-step method over explicit times (first: the noise end).
    Fixed {
        /// The method.
        method: FixedStep,
        /// The times, in the direction of integration.
        times: Vec<f64>,
    },
    /// Adaptive Dormand–Prince 5(4) from `t0` to `t1`.
    Dopri5 {
        /// Tolerances and step control.
        options: Dopri5,
        /// The start (the noise end).
        t0: f64,
        /// The end.
        t1: f64,
    },
}

/// Sampling by integrating the probability-flow ODE of the denoiser.
#[derive(Clone, Debug, PartialEq)]
pub struct OdeSampler {
    /// The time variable.
    pub time: FlowTime,
    /// The integrator.
    pub solver: OdeSolver,
}

impl OdeSampler {
    /// Fixed-step integration over `times`.
    pub fn fixed(time: FlowTime, method: FixedStep, times: Vec<f64>) -> Self {
        Self {
            time,
            solver: OdeSolver::Fixed { method, times },
        }
    }

    /// Adaptive integration from `t0` to `t1`.
    pub fn dopri5(time: FlowTime, options: Dopri5, t0: f64, t1: f64) -> Self {
        Self {
            time,
            solver: OdeSolver::Dopri5 { options, t0, t1 },
        }
    }

    fn start(&self) -> f64 {
        match &self.solver {
            OdeSolver::Fixed { times, .. } => times[0],
            OdeSolver::Dopri5 { t0, .. } => *t0,
        }
    }
}

impl Sampler for OdeSampler {
    /// σ₀ in VE time; the noise coefficient at the start of the path in flow time.
    fn init_noise_sigma(&self) -> f64 {
        let t = self.start();
        match self.time {
            FlowTime::VeSigma => t,
            FlowTime::Flow(convention) => {
                let level = convention.level(t);
                level.sigma
            }
        }
    }

    fn sample_observed(
        &self,
        denoiser: &dyn Denoiser,
        x: Tensor<2>,
        _noise: &mut dyn NoiseSource,
        observer: Observer<'_>,
    ) -> Result<SampleOutput, SampleError> {
        let counted = Counted::new(denoiser);
        let system = ProbabilityFlow::new(&counted, self.time);
        let x = match &self.solver {
            OdeSolver::Fixed { method, times } => {
                let mut x = x;
                for (i, w) in times.windows(2).enumerate() {
                    x = method.step(&system, x, w[0], w[1] - w[0]);
                    observer(i, &x);
                }
                x
            }
            OdeSolver::Dopri5 { options, t0, t1 } => {
                let (x, _) = options
                    .integrate(&system, x, *t0, *t1)
                    .map_err(|e: OdeError| SampleError::Ode(e))?;
                observer(0, &x);
                x
            }
        };
        Ok(SampleOutput {
            x,
            nfe: counted.nfe(),
        })
    }
}

/// diffusers' `FlowMatchEulerDiscreteScheduler`: Euler steps of the data → noise flow
/// ODE dx/ds = E[ε − x₀ | x_s] over the noise fractions `sigmas` (ending at 0), the model
/// evaluated at `timesteps` (s · 1000).
#[derive(Clone, Debug, PartialEq)]
pub struct FlowMatchEuler {
    /// The noise fractions s, decreasing, ending at 0.
    pub sigmas: Vec<f64>,
    /// The model's timestep for each s but the last.
    pub timesteps: Vec<f64>,
}

impl Sampler for FlowMatchEuler {
    fn init_noise_sigma(&self) -> f64 {
        1.0
    }

    fn sample_observed(
        &self,
        denoiser: &dyn Denoiser,
        mut x: Tensor<2>,
        _noise: &mut dyn NoiseSource,
        observer: Observer<'_>,
    ) -> Result<SampleOutput, SampleError> {
        let counted = Counted::new(denoiser);
        for (i, w) in self.sigmas.windows(2).enumerate() {
            let level = NoiseLevel::flow(w[0]).with_timestep(self.timesteps[i]);
            let v = velocity(&counted, x.clone(), level, FlowConvention::DataToNoise);
            x = x + v.mul_scalar(w[1] - w[0]);
            observer(i, &x);
        }
        Ok(SampleOutput {
            x,
            nfe: counted.nfe(),
        })
    }
}
