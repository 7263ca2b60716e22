//! Data parallelism on one machine (burn's multi-device support): the batch is split into
//! shards, each device computes the gradients of its shard on its own replica (`fork`) in its
//! own thread, and the optimiser sums them and steps once (`step_multi`). With the loss of each
//! shard weighted by its share of the batch, the step equals the single-device step on the
//! whole batch.

use burn::module::Module;
use burn::optim::{GradientsParams, ModuleOptimizer, MultiGradientsParams};
use burn::tensor::{Device, Tensor};

/// One optimiser step of `model` over `shards` (one per device, in order): `loss(replica,
/// shard, device)` returns the loss of shard `shard` already weighted by its share of the batch.
pub fn data_parallel_step<M>(
    model: M,
    optim: &mut ModuleOptimizer,
    lr: f64,
    devices: &[Device],
    loss: impl Fn(&M, usize, &Device) -> Tensor<1> + Sync,
) -> M
where
    M: Module + Send,
{
    let grads = std::thread::scope(|scope| {
        let handles: Vec<_> = devices
            .iter()
            .enumerate()
            .map(|(shard, device)| {
                let replica = model.clone();
                let loss = &loss;
                scope.spawn(move || {
                    let ad = device.clone().autodiff();
                    let replica = replica.fork(&ad);
                    let l = loss(&replica, shard, &ad);
                    (GradientsParams::from_grads(l.backward(), &replica), ad)
                })
            })
            .collect();
        MultiGradientsParams {
            grads: handles
                .into_iter()
                .map(|h| h.join().expect("a gradient worker panicked"))
                .collect(),
        }
    });
    optim.step_multi(lr, model, grads)
}
