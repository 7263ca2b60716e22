//! Cascaded super-resolution: Lanczos resampling against Pillow (`scripts/fixtures/guidance.py`),
//! noise-conditioning augmentation, and a small super-resolution U-Net trained on shapes that
//! must use its low-resolution conditioning.

use burn::tensor::{DType, Int, Tensor, TensorData};
use diffusion_backbones::{Conditioning, ModelConfig, UNetConfig, preset};
use diffusion_core::noise::{NoiseSource, SampleNoise};
use diffusion_core::tensor::to_f64;
use diffusion_data::{lanczos_matrix, lanczos_resize, shapes};
use diffusion_ddpm::{
    ConditioningAugmentation, ForwardProcess, Prediction, SimpleLoss, UniformTimesteps, concat_conditioning,
    conditioned_network,
};
use diffusion_samplers::{Ddim, DiscreteModel, Sampler, successive_steps};
use diffusion_schedules::{DiscreteSchedule, TimestepSpacing, timesteps};
use diffusion_tests::{best_dtype, device, fixture, floats};
use diffusion_train::{TrainConfig, train};

#[test]
fn lanczos_resize_matches_pillow() {
    let device = device();
    let dtype = best_dtype(&device);
    for case in fixture("guidance.json")["lanczos"].as_array().unwrap() {
        let shape: Vec<usize> = case["shape"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as usize)
            .collect();
        let out: Vec<usize> = case["out"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as usize)
            .collect();
        let input = Tensor::<4>::from_data(
            TensorData::new(floats(&case["input"]), [1, shape[0], shape[1], shape[2]]),
            (&device, dtype),
        );
        let ours = to_f64(&lanczos_resize(input, out[0], out[1]));
        let reference = floats(&case["output"]);
        let err = ours
            .iter()
            .zip(&reference)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f64::max);
        // Pillow accumulates in f64 and stores the row pass in f32.
        let tol = if dtype == DType::F64 { 2e-7 } else { 2e-6 };
        assert!(err < tol, "{}: {err:.2e}", case["name"]);
    }
    // Every row of weights sums to one: constants are kept.
    for (i, o) in [(8, 16), (16, 8), (17, 5)] {
        for row in lanczos_matrix(i, o).chunks(i) {
            assert!((row.iter().sum::<f64>() - 1.0).abs() < 1e-12);
        }
    }
}

#[test]
fn conditioning_augmentation_noises_by_level() {
    let device = device();
    let dtype = best_dtype(&device);
    let schedule = DiscreteSchedule::linear(1000, 1e-4, 0.02).unwrap();
    let aug = ConditioningAugmentation::new(ForwardProcess::new(schedule.clone()), 250, 5).unwrap();
    assert_eq!(aug.levels(&[0.0, 0.5, 0.999_999]), vec![0, 125, 250]);
    assert_eq!((aug.bucket(0), aug.bucket(50), aug.bucket(250)), (0, 0, 4));
    let n = 4;
    let z = Tensor::<4>::ones([n, 3, 4, 4], (&device, dtype));
    let eps = Tensor::<4>::ones([n, 3, 4, 4], (&device, dtype)).mul_scalar(2.0);
    let out = to_f64(&aug.augment(z, &[0, 1, 100, 250], eps).unwrap());
    let ab = schedule.alphas_cumprod();
    for (i, s) in [0usize, 1, 100, 250].into_iter().enumerate() {
        let expected = if s == 0 {
            1.0
        } else {
            ab[s - 1].sqrt() + 2.0 * (1.0 - ab[s - 1]).sqrt()
        };
        assert!((out[i * 48] - expected).abs() < 1e-6, "level {s}");
    }
    assert!(ConditioningAugmentation::new(ForwardProcess::new(schedule.clone()), 2000, 4).is_err());
    assert!(ConditioningAugmentation::new(ForwardProcess::new(schedule), 10, 0).is_err());
}

/// 16×16 shapes, their 8×8 Lanczos reductions upsampled back to 16×16, in [−1, 1].
fn batch(seed: u64, range: std::ops::Range<u64>, device: &burn::tensor::Device) -> (Tensor<4>, Tensor<4>) {
    let set = shapes(seed, range, 16);
    let n = set.len();
    let values: Vec<f32> = set
        .pixels
        .iter()
        .map(|&b| diffusion_data::images::to_signed_unit(b))
        .collect();
    let hi = Tensor::<4>::from_data(TensorData::new(values, [n, 3, 16, 16]), (device, DType::F32));
    let low = lanczos_resize(lanczos_resize(hi.clone(), 8, 8), 16, 16);
    (hi, low)
}

/// A 2-level super-resolution U-Net for 16 × 16 RGB: input [x_t, z] (6 channels), ε out, the
/// augmentation level as one of 4 labels.
fn sr_unet() -> UNetConfig {
    let Ok(ModelConfig::Unet(base)) = preset("ddpm-cifar10") else {
        panic!("preset")
    };
    UNetConfig {
        sample_size: 16,
        in_channels: 6,
        out_channels: 3,
        block_out_channels: vec![16, 32],
        down_blocks: base.down_blocks[..2].to_vec(),
        up_blocks: base.up_blocks[2..].to_vec(),
        layers_per_block: 1,
        norm_num_groups: 8,
        attn_norm_num_groups: Some(8),
        num_class_embeds: Some(4),
        dropout: 0.0,
        ..base
    }
}

#[test]
fn a_super_resolution_unet_learns_to_use_its_conditioning() {
    if !diffusion_tests::run_training_tests() {
        return;
    }
    let device = device().autodiff();
    let net = sr_unet().init(&device);
    let schedule = DiscreteSchedule::linear(1000, 1e-4, 0.02).unwrap();
    let forward = ForwardProcess::new(schedule.clone());
    let loss = SimpleLoss::new(forward.clone(), Prediction::Epsilon);
    let aug = ConditioningAugmentation::new(forward, 200, 4).unwrap();
    let labels = |levels: &[usize], device: &burn::tensor::Device| {
        let v: Vec<i64> = levels.iter().map(|&s| aug.bucket(s) as i64).collect();
        Tensor::<1, Int>::from_data(TensorData::new(v, [levels.len()]), device)
    };
    let bs = 8;
    let mut cfg = TrainConfig::new();
    cfg.steps = 120;
    cfg.lr = 2e-3;
    cfg.warmup_steps = 10;
    let (net, _) = train(
        net,
        &cfg,
        |net, step| {
            let s = step as u64;
            let (hi, low) = batch(1, s * bs as u64..(s + 1) * bs as u64, &device);
            let mut noise = SampleNoise::range(100 + s, 0..bs as u64);
            let levels = aug.levels(&noise.uniform(1));
            let eps_aug = noise
                .normal_tensor(bs, 768, &device, DType::F32)
                .reshape([bs, 3, 16, 16]);
            let cond = aug.augment(low, &levels, eps_aug).unwrap();
            let mut rng = diffusion_core::noise::sample_rng(5, s);
            let t = UniformTimesteps { num_timesteps: 1000 }.sample(&mut rng, bs);
            let eps = noise
                .normal_tensor(bs, 768, &device, DType::F32)
                .reshape([bs, 3, 16, 16]);
            let class = Conditioning {
                class_labels: Some(labels(&levels, &device)),
                context: None,
            };
            loss.loss(
                |x_t, t| net.forward(concat_conditioning(x_t, cond).unwrap(), t, &class),
                hi,
                &t,
                eps,
            )
            .unwrap()
        },
        |_| {},
    )
    .unwrap();

    // Held-out images at mid-range noise: the ε error with the right low-resolution input is
    // well below the error with another image's.
    let n = 32;
    let (hi, low) = batch(2, 0..n as u64, &device);
    let shuffled = low.clone().narrow(0, 1, n - 1);
    let shuffled = Tensor::cat(vec![shuffled, low.clone().narrow(0, 0, 1)], 0);
    let t = vec![400usize; n];
    let eps = SampleNoise::range(7, 0..n as u64)
        .normal_tensor(n, 768, &device, DType::F32)
        .reshape([n, 3, 16, 16]);
    let class = Conditioning {
        class_labels: Some(labels(&vec![0; n], &device)),
        context: None,
    };
    let eval = |cond: Tensor<4>| {
        to_f64(
            &loss
                .loss(
                    |x_t, t| net.forward(concat_conditioning(x_t, cond).unwrap(), t, &class),
                    hi.clone(),
                    &t,
                    eps.clone(),
                )
                .unwrap(),
        )[0]
    };
    let (right, wrong) = (eval(low), eval(shuffled));
    println!("ε-MSE at t = 400: with its own low-resolution image {right:.4}, with another's {wrong:.4}");
    assert!(right < 0.8 * wrong, "{right} vs {wrong}");

    assert!(concat_conditioning(hi.clone(), hi.narrow(2, 0, 8)).is_err());
}

#[test]
fn the_upscaler_samples_through_the_denoiser_interface() {
    let device = device();
    let net = sr_unet().init(&device);
    let schedule = DiscreteSchedule::linear(1000, 1e-4, 0.02).unwrap();
    let labels = |n: usize, device: &burn::tensor::Device| {
        Tensor::<1, Int>::from_data(TensorData::new(vec![0i64; n], [n]), device)
    };
    // The upscaler samples through the denoiser interface with any sampler (here DDIM with
    // x̂₀ clipped): an untrained network gives noise, so this checks the plumbing — shapes,
    // the conditioning concatenated at every call, values in range.
    let m = 8;
    let (_, low) = batch(3, 0..m as u64, &device);
    let inner = net;
    let zero = labels(m, &low.device());
    let network = conditioned_network(
        |input: Tensor<4>, t: Tensor<1>| {
            let class = Conditioning {
                class_labels: Some(zero.clone()),
                context: None,
            };
            inner.forward(input, t, &class)
        },
        low.clone(),
        3,
    );
    let denoiser = DiscreteModel::new(network, schedule.clone(), Prediction::Epsilon);
    let steps = successive_steps(
        &schedule,
        &timesteps(1000, 4, TimestepSpacing::Leading, 1).unwrap(),
    );
    let mut noise = SampleNoise::range(11, 0..m as u64);
    let x = noise.normal_tensor(m, 768, &low.device(), DType::F32);
    let mut ddim = Ddim::new(steps, 0.0);
    ddim.clip_sample = Some(diffusion_ddpm::X0Clip::Static { range: 1.0 });
    let out = ddim.sample(&denoiser, x, &mut noise).unwrap();
    let sr = out.x.reshape([m, 3, 16, 16]);
    assert_eq!(sr.dims(), [m, 3, 16, 16]);
    assert_eq!(out.nfe, 4);
    assert!(
        to_f64(&sr).iter().all(|v| v.abs() <= 1.0 + 1e-5),
        "DDIM with clipped x̂₀ ends in [−1, 1]"
    );
    let (hi, _) = batch(3, 0..2, &device);
    assert!(concat_conditioning(hi.clone(), hi.narrow(2, 0, 8)).is_err());
}
