//! The simple DDPM objective, L_simple (Ho et al. 2020, eq. 14): the mean squared error
//! between the network's output at x_t = √ᾱ_t x₀ + √(1 − ᾱ_t) ε and its target (ε, x₀ or v).

use burn::tensor::Tensor;

use crate::error::{DdpmError, Result};
use crate::forward::ForwardProcess;
use crate::parameterization::Prediction;

/// Mean squared error over every element: ‖a − b‖² / numel.
pub fn mse<const D: usize>(a: Tensor<D>, b: Tensor<D>) -> Result<Tensor<1>> {
    check_same(&a, &b)?;
    Ok((a - b).square().mean())
}

/// Squared error averaged within each sample: `[n]`.
pub fn per_sample_mse<const D: usize>(a: Tensor<D>, b: Tensor<D>) -> Result<Tensor<1>> {
    check_same(&a, &b)?;
    let n = a.dims()[0];
    let diff = (a - b).square();
    let features = diff.shape().num_elements() / n.max(1);
    Ok(diff.reshape([n, features]).mean_dim(1).reshape([n]))
}

fn check_same<const D: usize>(a: &Tensor<D>, b: &Tensor<D>) -> Result<()> {
    if a.dims() != b.dims() {
        return Err(DdpmError::ShapeMismatch {
            what: "model output and target",
            left: a.dims().to_vec(),
            right: b.dims().to_vec(),
        });
    }
    Ok(())
}

/// L_simple for any network: draw x_t in closed form, ask the network for its prediction at
/// (x_t, t), and compare it with the target of the prediction type.
#[derive(Clone, Debug)]
pub struct SimpleLoss {
    /// The forward process.
    pub forward: ForwardProcess,
    /// What the network predicts.
    pub prediction: Prediction,
}

impl SimpleLoss {
    /// L_simple of a schedule and a prediction type.
    pub fn new(forward: ForwardProcess, prediction: Prediction) -> Self {
        Self { forward, prediction }
    }

    /// The loss of one batch: `x0` clean samples, `t` one timestep per sample, `noise` the ε
    /// of each sample. `model(x_t, t)` receives the timesteps as floats on x₀'s device.
    pub fn loss<const D: usize>(
        &self,
        model: impl FnOnce(Tensor<D>, Tensor<1>) -> Tensor<D>,
        x0: Tensor<D>,
        t: &[usize],
        noise: Tensor<D>,
    ) -> Result<Tensor<1>> {
        let x_t = self.forward.sample(x0.clone(), noise.clone(), t)?;
        let (alpha, sigma) = self.forward.coefficients(t)?;
        let t_float: Vec<f64> = t.iter().map(|&ti| ti as f64).collect();
        let t_tensor = diffusion_core::tensor::from_f64_like(t_float, [t.len()], &x0);
        let out = model(x_t, t_tensor);
        let target = self.prediction.target(x0, noise, &alpha, &sigma);
        mse(out, target)
    }
}
