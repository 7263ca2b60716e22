//! Data parallelism on one machine (burn's multi-device support): the batch is split into
//! equal shards, each device computes the gradients of its shard on its own replica (`fork`)
//! in its own thread, and the gradients are summed on the first device, where the optimiser
//! steps once. With each shard's mean loss weighted by 1/n, the sum is the gradient of the
//! whole batch's mean loss, so the step equals the single-device step on the whole batch
//! (up to the order of floating-point sums).

use burn::module::Module;
use burn::optim::{GradientsParams, ModuleOptimizer};
use burn::tensor::{Device, Tensor};

use crate::config::ComputePrecision;
use crate::grad::accumulate;
use crate::trainer::cast_copy;

/// The loss of one batch split into `shards` (one per device, in order) and the gradients of
/// `weight` × that loss with respect to `model`'s parameters, summed on the first device.
///
/// `loss(replica, shard, device)` returns the mean loss of `shard` computed with `replica` on
/// the autodiff `device`; the shards must have equal sizes, as the batch loss is their mean.
/// With one device the model itself is used, with no thread and no copy. Under
/// [`ComputePrecision::Bf16`] each replica computes with a bf16 copy of its weights.
///
/// # Panics
/// If the number of shards differs from the number of devices, or a worker panics.
pub fn sharded_gradients<M, S>(
    model: &M,
    devices: &[Device],
    shards: Vec<S>,
    precision: ComputePrecision,
    weight: f64,
    loss: &(impl Fn(&M, S, &Device) -> Tensor<1> + Sync),
) -> (f64, GradientsParams)
where
    M: Module + Send,
    S: Send,
{
    assert_eq!(shards.len(), devices.len(), "one shard per device");
    let n = devices.len() as f64;
    // The loss value and the gradients of one shard on `replica` (a leaf model on `device`).
    let gradients_of = |replica: &M, shard: S, device: &Device| {
        let compute = match precision {
            ComputePrecision::F32 => None,
            ComputePrecision::Bf16 => Some(cast_copy(replica, precision.dtype())),
        };
        let l = loss(compute.as_ref().unwrap_or(replica), shard, device);
        let value = l.clone().detach().into_scalar::<f64>();
        let grads = GradientsParams::from_grads(l.mul_scalar(weight / n).backward(), replica);
        (value, grads)
    };
    if devices.len() == 1 {
        let device = model
            .devices()
            .first()
            .cloned()
            .unwrap_or_else(|| devices[0].clone().autodiff());
        let shard = shards.into_iter().next().expect("one shard");
        return gradients_of(model, shard, &device);
    }
    let results: Vec<(f64, GradientsParams)> = std::thread::scope(|scope| {
        let handles: Vec<_> = devices
            .iter()
            .zip(shards)
            .map(|(device, shard)| {
                let replica = model.clone();
                let gradients_of = &gradients_of;
                scope.spawn(move || {
                    let ad = device.clone().autodiff();
                    let replica = replica.fork(&ad);
                    gradients_of(&replica, shard, &ad)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("a gradient worker panicked"))
            .collect()
    });
    let mut total = 0.0;
    let mut sum = GradientsParams::new();
    for (value, grads) in results {
        total += value / n;
        accumulate(&mut sum, grads, model);
    }
    (total, sum)
}

/// One optimiser step of `model` over `devices`: `loss(replica, shard, device)` returns the
/// mean loss of shard `shard` (0-based, shards of equal size); the step is the single-device
/// step on the mean of the shards' losses.
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
    let shards = (0..devices.len()).collect();
    let (_, grads) = sharded_gradients(&model, devices, shards, ComputePrecision::F32, 1.0, &loss);
    optim.step(lr, model, grads)
}
