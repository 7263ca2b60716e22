//! EDM's preconditioned denoiser and its training objective (Karras et al. 2022, Table 1 and
//! §5):
//!
//! D_θ(x; σ) = c_skip(σ) x + c_out(σ) F_θ(c_in(σ) x; c_noise(σ)),
//!
//! c_skip = σ_d²/(σ² + σ_d²), c_out = σ σ_d/√(σ² + σ_d²), c_in = 1/√(σ² + σ_d²),
//! c_noise = ¼ ln σ, so that the network's input and its training target have unit variance
//! at every σ. Training draws ln σ ~ N(P_mean, P_std²) and minimises
//! λ(σ) ‖D_θ(y + σ n; σ) − y‖² with λ = (σ² + σ_d²)/(σ σ_d)², which makes the effective weight
//! of F_θ's error 1 at every σ.

use burn::tensor::Tensor;
use diffusion_core::tensor::from_f64_like;

use crate::denoiser::Denoiser;
use crate::level::NoiseLevel;

/// EDM's preconditioning for data of standard deviation σ_d.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct EdmPreconditioning {
    /// σ_data (0.5 for images in [−1, 1]).
    pub sigma_data: f64,
}

impl Default for EdmPreconditioning {
    fn default() -> Self {
        Self { sigma_data: 0.5 }
    }
}

impl EdmPreconditioning {
    /// (c_skip, c_out, c_in, c_noise) at σ.
    pub fn coefficients(&self, sigma: f64) -> (f64, f64, f64, f64) {
        let sd = self.sigma_data;
        let total = sigma * sigma + sd * sd;
        (
            sd * sd / total,
            sigma * sd / total.sqrt(),
            1.0 / total.sqrt(),
            sigma.ln() / 4.0,
        )
    }

    /// λ(σ) = (σ² + σ_d²)/(σ σ_d)².
    pub fn loss_weight(&self, sigma: f64) -> f64 {
        let sd = self.sigma_data;
        (sigma * sigma + sd * sd) / (sigma * sd).powi(2)
    }

    /// D_θ(x; σ) for per-sample σ, with `net(c_in x, c_noise)`; `x` `[n, d]` in VE coordinates.
    pub fn denoise<F>(&self, net: &F, x: Tensor<2>, sigmas: &[f64]) -> Tensor<2>
    where
        F: Fn(Tensor<2>, Tensor<1>) -> Tensor<2>,
    {
        let n = x.dims()[0];
        let (mut skip, mut out, mut input, mut noise) = (vec![], vec![], vec![], vec![]);
        for &s in sigmas {
            let (a, b, c, d) = self.coefficients(s);
            skip.push(a);
            out.push(b);
            input.push(c);
            noise.push(d);
        }
        let like = x.clone();
        let column = |v: Vec<f64>| from_f64_like(v, [n, 1], &like);
        let f = net(x.clone() * column(input), from_f64_like(noise, [n], &like));
        x * column(skip) + f * column(out)
    }
}

/// A network F_θ preconditioned as EDM's denoiser.
pub struct EdmDenoiser<F> {
    /// F_θ(c_in x, c_noise).
    pub net: F,
    /// The preconditioning.
    pub precond: EdmPreconditioning,
}

impl<F> Denoiser for EdmDenoiser<F>
where
    F: Fn(Tensor<2>, Tensor<1>) -> Tensor<2>,
{
    fn denoise(&self, x: Tensor<2>, level: NoiseLevel) -> Tensor<2> {
        let n = x.dims()[0];
        let x_ve = x.div_scalar(level.alpha);
        self.precond.denoise(&self.net, x_ve, &vec![level.ve_sigma(); n])
    }
}

/// EDM's training objective: log-normal σ and the λ(σ)-weighted denoising error.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct EdmLoss {
    /// The preconditioning (σ_d).
    pub precond: EdmPreconditioning,
    /// P_mean of ln σ (−1.2).
    pub p_mean: f64,
    /// P_std of ln σ (1.2).
    pub p_std: f64,
}

impl Default for EdmLoss {
    fn default() -> Self {
        Self {
            precond: EdmPreconditioning::default(),
            p_mean: -1.2,
            p_std: 1.2,
        }
    }
}

impl EdmLoss {
    /// σ for each standard normal draw z: exp(P_mean + P_std z).
    pub fn sigmas(&self, z: &[f64]) -> Vec<f64> {
        z.iter().map(|z| (self.p_mean + self.p_std * z).exp()).collect()
    }

    /// The loss of a batch: clean `y` `[n, d]`, per-sample `sigmas`, noise n `[n, d]`; the
    /// mean over samples and features of λ(σ) (D_θ(y + σ n; σ) − y)².
    pub fn loss<F>(&self, net: &F, y: Tensor<2>, sigmas: &[f64], noise: Tensor<2>) -> Tensor<1>
    where
        F: Fn(Tensor<2>, Tensor<1>) -> Tensor<2>,
    {
        let n = y.dims()[0];
        let like = y.clone();
        let column = |v: Vec<f64>| from_f64_like(v, [n, 1], &like);
        let noisy = y.clone() + noise * column(sigmas.to_vec());
        let denoised = self.precond.denoise(net, noisy, sigmas);
        let weights = column(sigmas.iter().map(|&s| self.precond.loss_weight(s)).collect());
        ((denoised - y).square() * weights).mean()
    }
}
