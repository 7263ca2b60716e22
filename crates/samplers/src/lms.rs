//! Linear multistep (Adams–Bashforth in σ) on the probability-flow ODE (Karras et al.
//! 2022, §3; k-diffusion's `sample_lms`): x_{i+1} = xᵢ + Σⱼ cⱼ d_{i−j}, where cⱼ integrates
//! the Lagrange basis polynomial of σ_{i−j} over [σᵢ, σᵢ₊₁].

use burn::tensor::Tensor;
use diffusion_core::noise::NoiseSource;

use crate::denoiser::{Counted, Denoiser};
use crate::sampler::{Observer, SampleError, SampleOutput, Sampler};
use crate::ve::{VeGrid, to_d};

/// Linear multistep of order up to 4 (ramping up from 1 over the first steps). NFE: one
/// per step.
#[derive(Clone, Debug, PartialEq)]
pub struct Lms {
    /// The noise levels.
    pub grid: VeGrid,
    /// The order, 1 to 4.
    pub order: usize,
}

impl Lms {
    /// LMS of `order` (clamped to 1 ..= 4) on `grid`.
    pub fn new(grid: impl Into<VeGrid>, order: usize) -> Self {
        Self {
            grid: grid.into(),
            order: order.clamp(1, 4),
        }
    }
}

/// ∫_{σᵢ}^{σᵢ₊₁} ∏_{k≠j, k<order} (τ − σ_{i−k})/(σ_{i−j} − σ_{i−k}) dτ, exactly: the
/// integrand is a polynomial of degree < 4, which 4-point Gauss–Legendre integrates exactly.
pub fn lms_coefficient(order: usize, sigmas: &[f64], i: usize, j: usize) -> f64 {
    const NODES: [f64; 4] = [
        -0.861_136_311_594_052_6,
        -0.339_981_043_584_856_3,
        0.339_981_043_584_856_3,
        0.861_136_311_594_052_6,
    ];
    const WEIGHTS: [f64; 4] = [
        0.347_854_845_137_453_86,
        0.652_145_154_862_546_1,
        0.652_145_154_862_546_1,
        0.347_854_845_137_453_86,
    ];
    assert!(
        order <= i + 1 && order <= 4,
        "order {order} too high for step {i}"
    );
    let basis = |tau: f64| -> f64 {
        (0..order)
            .filter(|&k| k != j)
            .map(|k| (tau - sigmas[i - k]) / (sigmas[i - j] - sigmas[i - k]))
            .product()
    };
    let (a, b) = (sigmas[i], sigmas[i + 1]);
    let (mid, half) = (0.5 * (a + b), 0.5 * (b - a));
    NODES
        .iter()
        .zip(WEIGHTS)
        .map(|(&u, w)| w * basis(mid + half * u))
        .sum::<f64>()
        * half
}

impl Sampler for Lms {
    fn init_noise_sigma(&self) -> f64 {
        self.grid.init_noise_sigma()
    }

    fn sample_observed(
        &self,
        denoiser: &dyn Denoiser,
        mut x: Tensor<2>,
        _noise: &mut dyn NoiseSource,
        observer: Observer<'_>,
    ) -> Result<SampleOutput, SampleError> {
        let counted = Counted::new(denoiser);
        let sigmas = self.grid.sigmas();
        let mut history: Vec<Tensor<2>> = Vec::with_capacity(self.order);
        for i in 0..self.grid.steps() {
            let denoised = counted.denoise(x.clone(), self.grid.level(i));
            if history.len() == self.order {
                history.remove(0);
            }
            history.push(to_d(x.clone(), sigmas[i], denoised));
            let order = (i + 1).min(self.order);
            for (j, d) in history.iter().rev().enumerate() {
                x = x + d.clone().mul_scalar(lms_coefficient(order, sigmas, i, j));
            }
            observer(i, &x);
        }
        Ok(SampleOutput {
            x,
            nfe: counted.nfe(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn coefficients_are_adams_bashforth_on_even_grids() {
        // On an evenly spaced grid with step h the coefficients are h times the classical
        // Adams–Bashforth weights: 1; 3/2, −1/2; 23/12, −16/12, 5/12; 55/24, −59/24, 37/24, −9/24.
        let s: Vec<f64> = (0..8).map(|k| 10.0 - k as f64).collect();
        let h = -1.0;
        let expect: [&[f64]; 4] = [
            &[1.0],
            &[1.5, -0.5],
            &[23.0 / 12.0, -16.0 / 12.0, 5.0 / 12.0],
            &[55.0 / 24.0, -59.0 / 24.0, 37.0 / 24.0, -9.0 / 24.0],
        ];
        for (order, weights) in (1..=4).zip(expect) {
            for (j, w) in weights.iter().enumerate() {
                let c = lms_coefficient(order, &s, 4, j);
                assert!((c - h * w).abs() < 1e-13, "order {order} j {j}: {c}");
            }
        }
    }
}
