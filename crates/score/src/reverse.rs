//! The reverse-time SDE and the probability-flow ODE of a forward SDE (Song et al. 2021,
//! eqs. 6 and 13), in the SDE's own time t:
//!
//! - reverse SDE: dx = [f(x, t) − g(t)² ∇ₓ log p_t(x)] dt + g(t) dw̄;
//! - probability flow: dx/dt = f(x, t) − ½ g(t)² ∇ₓ log p_t(x), with the same marginals.

use burn::tensor::Tensor;
use diffusion_samplers::{OdeSystem, SdeSystem};

use crate::score_fn::ScoreFn;
use crate::sde::Sde;

impl SdeSystem for Sde {
    fn drift(&self, x: Tensor<2>, t: f64) -> Tensor<2> {
        Sde::drift(self, x, t)
    }

    fn diffusion(&self, t: f64) -> f64 {
        Sde::diffusion(self, t)
    }
}

/// The reverse-time SDE of `sde` given its score, integrated from T down to 0.
pub struct ReverseSde<'a> {
    sde: &'a Sde,
    score: &'a dyn ScoreFn,
}

impl<'a> ReverseSde<'a> {
    /// The reverse of `sde` with score `score`.
    pub fn new(sde: &'a Sde, score: &'a dyn ScoreFn) -> Self {
        Self { sde, score }
    }
}

impl SdeSystem for ReverseSde<'_> {
    /// f(x, t) − g(t)² s(x, t).
    fn drift(&self, x: Tensor<2>, t: f64) -> Tensor<2> {
        let g = self.sde.diffusion(t);
        self.sde.drift(x.clone(), t) - self.score.score(x, t).mul_scalar(g * g)
    }

    fn diffusion(&self, t: f64) -> f64 {
        self.sde.diffusion(t)
    }
}

/// The probability-flow ODE of `sde` given its score.
pub struct ProbabilityFlowOde<'a> {
    sde: &'a Sde,
    score: &'a dyn ScoreFn,
}

impl<'a> ProbabilityFlowOde<'a> {
    /// The probability flow of `sde` with score `score`.
    pub fn new(sde: &'a Sde, score: &'a dyn ScoreFn) -> Self {
        Self { sde, score }
    }
}

impl OdeSystem for ProbabilityFlowOde<'_> {
    /// f(x, t) − ½ g(t)² s(x, t).
    fn derivative(&self, x: Tensor<2>, t: f64) -> Tensor<2> {
        let g = self.sde.diffusion(t);
        self.sde.drift(x.clone(), t) - self.score.score(x, t).mul_scalar(0.5 * g * g)
    }
}
