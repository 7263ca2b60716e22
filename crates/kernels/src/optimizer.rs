//! AdamW (Loshchilov & Hutter 2019) as a burn optimiser, computed as PyTorch's
//! `torch.optim.AdamW` computes it: one pass per parameter tensor on flex ([`crate::adamw`]),
//! the same operations as tensor passes on every other backend. Its state is burn's
//! `AdamWState` (the step count and the raw moments), so checkpoints written with burn's `AdamW`
//! resume with this one and the other way round (to the rounding in which the two differ).

use burn::optim::{AdamWState, AdaptiveMomentumState, LearningRate, ModuleOptimizer, Optimizer};
use burn::tensor::{Device, Tensor};

use crate::adamw::AdamWStep;

/// AdamW's hyper-parameters, PyTorch's defaults by default (β₁ 0.9, β₂ 0.999, ε 1e-8, weight
/// decay 0.01).
///
/// No AMSGrad: a state of burn's `AdamW` with `amsgrad` resumes as plain AdamW, its running
/// maximum of v dropped. The scalars are rounded to f32 as PyTorch rounds them for f32
/// parameters, for parameters of any dtype.
///
/// burn's `AdamW` computes the same function but rounds its scalars to f32 before combining
/// them: 1 − β₂ becomes 0.00099998713 for β₂ = 0.999, and the second moment's increment is off
/// by 1.3e-5 relative to PyTorch's. This one rounds each scalar once from f64.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamW {
    /// β₁, the first moment's decay.
    pub beta_1: f64,
    /// β₂, the second moment's decay.
    pub beta_2: f64,
    /// ε, added to √v̂.
    pub epsilon: f64,
    /// λ, the decoupled weight decay (θ ← (1 − η λ) θ before the Adam update).
    pub weight_decay: f64,
}

impl Default for AdamW {
    fn default() -> Self {
        Self {
            beta_1: 0.9,
            beta_2: 0.999,
            epsilon: 1e-8,
            weight_decay: 0.01,
        }
    }
}

impl AdamW {
    /// The optimiser of a module's parameters (as burn's `AdamWConfig::init` gives one).
    pub fn init(self) -> ModuleOptimizer {
        ModuleOptimizer::from(self)
    }
}

/// Whether the kernel takes the step: the four tensors f32 on flex and of one shape.
#[cfg(feature = "flex")]
fn kernel_takes<const D: usize>(tensors: [&Tensor<D>; 4]) -> bool {
    let shape = tensors[0].shape();
    tensors
        .into_iter()
        .all(|x| crate::applies_to(x) && x.shape() == shape)
}

/// The step through the kernel where it takes the tensors, in tensor operations otherwise.
fn adamw_step<const D: usize>(
    s: AdamWStep,
    param: Tensor<D>,
    grad: Tensor<D>,
    m: Tensor<D>,
    v: Tensor<D>,
) -> [Tensor<D>; 3] {
    #[cfg(feature = "flex")]
    if kernel_takes([&param, &grad, &m, &v]) {
        let (param, m, v) = crate::route::adamw_step(param, grad, m, v, s);
        return [param, m, v];
    }
    composed(s, param, grad, m, v)
}

/// The same step in tensor operations: the kernel's, with the two multiply–adds rounded twice.
fn composed<const D: usize>(
    s: AdamWStep,
    param: Tensor<D>,
    grad: Tensor<D>,
    m: Tensor<D>,
    v: Tensor<D>,
) -> [Tensor<D>; 3] {
    let param = param.mul_scalar(s.keep);
    let m = if s.weight_1.abs() < 0.5 {
        m.clone() + (grad.clone() - m).mul_scalar(s.weight_1)
    } else {
        grad.clone() + (grad.clone() - m).mul_scalar(s.weight_1 - 1.0)
    };
    let v = v.mul_scalar(s.beta_2) + grad.clone().mul_scalar(s.weight_2) * grad;
    let denominator = v
        .clone()
        .sqrt()
        .div_scalar(s.root_correction_2)
        .add_scalar(s.epsilon);
    let param = param + m.clone().mul_scalar(s.neg_step_size) / denominator;
    [param, m, v]
}

impl Optimizer for AdamW {
    type State<const D: usize> = AdamWState<D>;

    fn step<const D: usize>(
        &self,
        lr: LearningRate,
        tensor: Tensor<D>,
        grad: Tensor<D>,
        state: Option<Self::State<D>>,
    ) -> (Tensor<D>, Option<Self::State<D>>) {
        let (time, m, v) = match state {
            Some(s) => (s.momentum.time + 1, s.momentum.moment_1, s.momentum.moment_2),
            None => (1, tensor.zeros_like(), tensor.zeros_like()),
        };
        let step = AdamWStep::new(
            time,
            self.beta_1,
            self.beta_2,
            self.epsilon,
            self.weight_decay,
            lr,
        );
        let [param, m, v] = adamw_step(step, tensor, grad, m, v);
        let state = AdamWState::new(AdaptiveMomentumState::new(time, m, v));
        (param, Some(state))
    }

    fn to_device<const D: usize>(state: Self::State<D>, device: &Device) -> Self::State<D> {
        <burn::optim::AdamW as Optimizer>::to_device(state, device)
    }
}

#[cfg(all(test, feature = "flex"))]
mod tests {
    use burn::tensor::{Distribution, Tensor};

    use super::*;

    fn bits<const D: usize>(t: &Tensor<D>) -> Vec<u32> {
        t.to_data().iter::<f32>().map(f32::to_bits).collect()
    }

    /// max |a − b| / max(|b|, 10⁻³ max |b|).
    fn error(a: &Tensor<2>, b: &Tensor<2>) -> f32 {
        let (a, b) = (
            a.to_data().try_to_vec::<f32>().unwrap(),
            b.to_data().try_to_vec::<f32>().unwrap(),
        );
        let floor = 1e-3 * b.iter().fold(0.0f32, |m, x| m.max(x.abs()));
        a.iter()
            .zip(&b)
            .map(|(x, y)| (x - y).abs() / y.abs().max(floor))
            .fold(0.0, f32::max)
    }

    /// The kernel computes the composed tensor operations up to their two unfused multiply–adds:
    /// three steps on a parameter of two parallel chunks and part of a third, transposed (not
    /// contiguous) at first, with a transposed gradient, parameters written in place (step 3) or
    /// shared with a copy that must keep its values (step 2), a small β₁ (`lerp` from its other
    /// end) and weight decay.
    #[test]
    fn the_kernel_computes_the_composed_step() {
        let device = Device::flex();
        device.seed(7);
        let random = |shape: [usize; 2], scale: f64| {
            Tensor::<2>::random(shape, Distribution::Normal(0.0, scale), &device)
        };
        for (beta_1, weight_decay) in [(0.9, 0.0), (0.3, 0.05)] {
            // Transposed (and shared by the two states): the kernel first copies it contiguous.
            let param = random([300, 130], 1.0).transpose();
            let zeros = || param.zeros_like();
            let mut composed_state = [param.clone(), zeros(), zeros()];
            let mut fused_state = [param.clone(), zeros(), zeros()];
            for t in 1..=3 {
                let grad = random([300, 130], 10f64.powi(t - 2)).transpose();
                let step = AdamWStep::new(t as usize, beta_1, 0.99, 1e-8, weight_decay, 1e-3);
                let copy = (t == 2).then(|| fused_state[0].clone());
                let before = bits(&fused_state[0]);
                let [p, m, v] = fused_state;
                assert!(
                    kernel_takes([&p, &grad, &m, &v]),
                    "the kernel takes f32 tensors on flex"
                );
                let fused_next = adamw_step(step, p, grad.clone(), m, v);
                let [p, m, v] = composed_state;
                composed_state = composed(step, p, grad, m, v);
                if let Some(copy) = copy {
                    assert_eq!(bits(&copy), before, "step {t}: the copy kept its values");
                }
                for (k, name) in ["θ", "m", "v"].into_iter().enumerate() {
                    let err = error(&fused_next[k], &composed_state[k]);
                    assert!(
                        err < 1e-5,
                        "β₁ {beta_1}, λ {weight_decay}, step {t}: {name} differs by {err:e}"
                    );
                }
                assert_ne!(bits(&fused_next[0]), before, "step {t}: the parameters moved");
                fused_state = fused_next;
            }
        }
    }
}
