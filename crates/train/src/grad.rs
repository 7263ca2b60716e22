//! Gradient bookkeeping of a step: the global L2 norm over every parameter, clipping to a
//! maximum norm as `torch.nn.utils.clip_grad_norm_` does (one factor for all parameters), and
//! summing the gradients of micro-batches.

use burn::module::{Module, ModuleVisitor, Param, ParamId};
use burn::optim::GradientsParams;
use burn::tensor::Tensor;

/// The parameter ids of a module.
struct Ids(Vec<(ParamId, usize)>);

impl ModuleVisitor for Ids {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        self.0.push((param.id, D));
    }
}

fn ids<M: Module>(model: &M) -> Vec<(ParamId, usize)> {
    let mut ids = Ids(Vec::new());
    model.visit(&mut ids);
    ids.0
}

/// Runs `$body` with `$d` bound to the parameter's rank as a constant (ranks 1 to 6).
macro_rules! with_rank {
    ($rank:expr, $d:ident => $body:block) => {
        match $rank {
            1 => {
                const $d: usize = 1;
                $body
            }
            2 => {
                const $d: usize = 2;
                $body
            }
            3 => {
                const $d: usize = 3;
                $body
            }
            4 => {
                const $d: usize = 4;
                $body
            }
            5 => {
                const $d: usize = 5;
                $body
            }
            _ => {
                const $d: usize = 6;
                $body
            }
        }
    };
}

/// Applies `f` to the gradient of every parameter of `model` (of any rank, seen flattened).
fn for_each_grad<M: Module>(
    grads: &mut GradientsParams,
    model: &M,
    mut f: impl FnMut(Tensor<1>) -> Option<Tensor<1>>,
) {
    for (id, rank) in ids(model) {
        with_rank!(rank, D => {
            if let Some(g) = grads.remove::<D>(id) {
                let shape = g.dims();
                let n = shape.iter().product::<usize>();
                match f(g.clone().reshape([n])) {
                    Some(new) => grads.register::<D>(id, new.reshape(shape)),
                    None => grads.register::<D>(id, g),
                }
            }
        })
    }
}

/// The global L2 norm of the gradients, √(Σ_params ‖g‖²).
pub fn grad_norm<M: Module>(grads: &mut GradientsParams, model: &M) -> f64 {
    let mut total: Option<Tensor<1>> = None;
    for_each_grad(grads, model, |g| {
        let sq = g.square().sum();
        total = Some(match total.take() {
            Some(t) => t + sq,
            None => sq,
        });
        None
    });
    total.map_or(0.0, |t| t.into_scalar::<f64>().sqrt())
}

/// Scales every gradient by `factor`.
pub fn scale_grads<M: Module>(grads: &mut GradientsParams, model: &M, factor: f64) {
    for_each_grad(grads, model, |g| Some(g.mul_scalar(factor)));
}

/// Clips the gradients to a global norm of at most `max_norm` (factor max_norm/(norm + 1e-6),
/// as PyTorch); returns the norm before clipping.
pub fn clip_grad_norm<M: Module>(grads: &mut GradientsParams, model: &M, max_norm: f64) -> f64 {
    let norm = grad_norm(grads, model);
    let factor = max_norm / (norm + 1e-6);
    if factor < 1.0 {
        scale_grads(grads, model, factor);
    }
    norm
}

/// Adds the gradients of `other` into `acc` (micro-batch accumulation), on the device of the
/// gradients already in `acc` (the shards of a data-parallel step come from other devices).
pub fn accumulate<M: Module>(acc: &mut GradientsParams, mut other: GradientsParams, model: &M) {
    for (id, rank) in ids(model) {
        with_rank!(rank, D => {
            if let Some(g) = other.remove::<D>(id) {
                let sum = match acc.remove::<D>(id) {
                    Some(a) => {
                        let device = a.device();
                        a + g.to_device(&device)
                    }
                    None => g,
                };
                acc.register::<D>(id, sum);
            }
        })
    }
}
