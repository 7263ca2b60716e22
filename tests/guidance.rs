//! Guidance on the exact class-conditional mixture: with a class per group of components, the
//! noisy classifier p(c | x_σ) and every conditional denoiser are closed forms.

use burn::tensor::DType;
use burn::tensor::{Int, Tensor};
use diffusion_core::noise::NoiseSource;
use diffusion_core::noise::SampleNoise;
use diffusion_core::tensor::to_f64;
use diffusion_metrics::sliced_wasserstein;
use diffusion_samplers::{
    ClassifierFree, ClassifierGuidance, Denoiser, EdmSampler, GaussianMixture, NoiseLevel, OdeMethod,
    Sampler, VeGrid,
};
use diffusion_schedules::SigmaGrid;
use diffusion_tests::{best_dtype, device, gmm2d, tensor2};

fn f64_only() -> bool {
    best_dtype(&device()) == DType::F64
}

/// The fixture's mixture with its components split into two classes.
fn classes(m: &GaussianMixture) -> Vec<Vec<usize>> {
    let k = m.components();
    vec![(0..k / 2).collect(), (k / 2..k).collect()]
}

/// ∇ₓ log p(c | x) of the exact classifier, by reverse-mode autodiff of its log-probability.
fn classifier_grad(
    m: &GaussianMixture,
    classes: &[Vec<usize>],
    c: usize,
) -> impl Fn(Tensor<2>, NoiseLevel) -> Tensor<2> {
    move |x: Tensor<2>, level: NoiseLevel| {
        let input = x.clone().without_autodiff().autodiff().require_grad();
        let lp = m.class_log_posterior(input.clone(), level, classes);
        let [n, _] = lp.dims();
        let pick = Tensor::<2, Int>::from_data(
            burn::tensor::TensorData::new(vec![c as i64; n], [n, 1]),
            &lp.device(),
        );
        let grads = lp.gather(1, pick).sum().backward();
        input.grad(&grads).expect("x is on the tape")
    }
}

fn max_abs(a: &Tensor<2>, b: &Tensor<2>) -> f64 {
    to_f64(a)
        .iter()
        .zip(to_f64(b))
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f64::max)
}

fn levels() -> Vec<NoiseLevel> {
    vec![
        NoiseLevel::ve(0.05),
        NoiseLevel::ve(0.7),
        NoiseLevel::ve(4.0),
        NoiseLevel::vp(0.3),
    ]
}

fn points(n: usize, scale: f64) -> Tensor<2> {
    let device = device();
    let dtype = best_dtype(&device);
    let z = SampleNoise::range(17, 0..n as u64).normal(n, 2);
    tensor2(z.iter().map(|v| v * scale).collect(), n, &device, dtype)
}

#[test]
fn classifier_guidance_at_scale_one_is_the_exact_conditional_model() {
    let m = gmm2d();
    let groups = classes(&m);
    let tol = if f64_only() { 1e-9 } else { 2e-3 };
    for c in 0..2 {
        let conditional = m.restricted(&groups[c]).unwrap();
        let guided = ClassifierGuidance {
            base: &m,
            grad_log_p: classifier_grad(&m, &groups, c),
            scale: 1.0,
        };
        for level in levels() {
            let x = points(64, 1.0 + level.ve_sigma());
            let err = max_abs(&guided.denoise(x.clone(), level), &conditional.denoise(x, level));
            assert!(err < tol, "class {c} at {level:?}: {err}");
        }
    }
    // The classes' posteriors sum to one.
    let x = points(16, 2.0);
    let lp = to_f64(&m.class_log_posterior(x, NoiseLevel::ve(0.5), &groups));
    for row in lp.chunks(2) {
        assert!((row[0].exp() + row[1].exp() - 1.0).abs() < if f64_only() { 1e-12 } else { 1e-5 });
    }
    assert!(m.restricted(&[]).is_err());
}

#[test]
fn classifier_free_guidance_interpolates_rescales_and_respects_its_interval() {
    let m = gmm2d();
    let groups = classes(&m);
    let cond = m.restricted(&groups[0]).unwrap();
    let negative = m.restricted(&groups[1]).unwrap();
    let tol = if f64_only() { 1e-12 } else { 1e-4 };
    for level in levels() {
        let x = points(32, 1.0 + level.ve_sigma());
        let dc = cond.denoise(x.clone(), level);
        let du = m.denoise(x.clone(), level);
        // w = 1 is the conditional model, w = 0 the unconditional one, w = 3 extrapolates.
        assert!(
            max_abs(
                &ClassifierFree::new(&cond, &m, 1.0).denoise(x.clone(), level),
                &dc
            ) < tol
        );
        assert!(
            max_abs(
                &ClassifierFree::new(&cond, &m, 0.0).denoise(x.clone(), level),
                &du
            ) < tol
        );
        let w3 = ClassifierFree::new(&cond, &m, 3.0).denoise(x.clone(), level);
        assert!(max_abs(&w3, &(du.clone() + (dc.clone() - du.clone()).mul_scalar(3.0))) < tol);
        // A negative condition replaces the unconditional model.
        let neg = ClassifierFree::new(&cond, &negative, 2.0).denoise(x.clone(), level);
        let dn = negative.denoise(x.clone(), level);
        assert!(max_abs(&neg, &(dn.clone() + (dc.clone() - dn).mul_scalar(2.0))) < tol);
        // Rescale φ = 1: the guided ε has the conditional ε's per-sample std (Bessel-corrected).
        let mut rescaled = ClassifierFree::new(&cond, &m, 5.0);
        rescaled.rescale = 1.0;
        let d = rescaled.denoise(x.clone(), level);
        let eps = |d: Tensor<2>| diffusion_samplers::denoiser::eps_from_x0(x.clone(), d, &level);
        let std = |t: Tensor<2>| {
            to_f64(&t)
                .chunks(2)
                .map(|r| ((r[0] - r[1]).powi(2) / 2.0).sqrt())
                .collect::<Vec<_>>()
        };
        for (a, b) in std(eps(d)).iter().zip(std(eps(dc.clone()))) {
            assert!((a - b).abs() < 1e3 * tol * b.max(1.0), "{a} vs {b}");
        }
        // Outside the interval the conditional model alone.
        let mut interval = ClassifierFree::new(&cond, &m, 4.0);
        interval.interval = Some((10.0, 20.0));
        assert!(max_abs(&interval.denoise(x.clone(), level), &dc) < tol);
        interval.interval = Some((0.0, 100.0));
        let plain = ClassifierFree::new(&cond, &m, 4.0).denoise(x.clone(), level);
        assert!(max_abs(&interval.denoise(x, level), &plain) < tol);
    }
}

#[test]
fn guided_sampling_at_scale_one_samples_the_conditional_mixture() {
    let m = gmm2d();
    let groups = classes(&m);
    let conditional = m.restricted(&groups[1]).unwrap();
    let device = device();
    let dtype = best_dtype(&device);
    let n = 1000;
    let sampler = EdmSampler::new(
        VeGrid::new(SigmaGrid::karras(40, 0.002, 80.0, 7.0).unwrap()),
        OdeMethod::Heun,
    );
    let cfg = ClassifierFree::new(&conditional, &m, 1.0);
    let guided = ClassifierGuidance {
        base: &m,
        grad_log_p: classifier_grad(&m, &groups, 1),
        scale: 1.0,
    };
    let exact = conditional.sample_host(5, 0..n as u64);
    let fresh = conditional.sample_host(6, 0..n as u64);
    let floor = sliced_wasserstein(&fresh, &exact, 2, 256, 1);
    for (name, model) in [
        ("cfg", &cfg as &dyn Denoiser),
        ("classifier", &guided as &dyn Denoiser),
    ] {
        let mut noise = SampleNoise::range(9, 0..n as u64);
        let x = noise.normal_tensor(n, 2, &device, dtype).mul_scalar(80.0);
        let out = sampler.sample(&model, x, &mut noise).unwrap();
        let sw = sliced_wasserstein(&to_f64(&out.x), &exact, 2, 256, 1);
        assert!(sw < 2.0 * floor + 0.02, "{name}: SW {sw} vs floor {floor}");
    }
}

#[test]
fn batched_cfg_is_classifier_free_guidance_in_one_pass() {
    use diffusion_samplers::{DiscreteModel, batched_cfg};
    use diffusion_schedules::DiscreteSchedule;
    let device = device();
    let dtype = best_dtype(&device);
    // A label-dependent "network" with a variance head (4 features: 2 guided, 2 passed through).
    let calls = std::cell::Cell::new(0);
    let net = |x: Tensor<2>, t: Tensor<1>, labels: Tensor<1, Int>| {
        calls.set(calls.get() + 1);
        let [n, _] = x.dims();
        let l = labels.float().cast(x.dtype()).reshape([n, 1]);
        let t = t.reshape([n, 1]).div_scalar(1000.0);
        let eps = x.clone().mul(l.clone().add_scalar(1.0)).sub(t.clone()).tanh();
        let var = x.mul(l).add(t).sin();
        Tensor::cat(vec![eps, var], 1)
    };
    let n = 6;
    let labels = Tensor::<1, Int>::from_data(
        burn::tensor::TensorData::new(vec![0i64, 1, 2, 0, 1, 2], [n]),
        &device,
    );
    let schedule = DiscreteSchedule::linear(1000, 1e-4, 0.02).unwrap();
    let guided = batched_cfg(&net, labels.clone(), 5, 2.5, 2);
    let x = points(n, 1.5);
    let t = Tensor::<1>::from_data(
        burn::tensor::TensorData::new(vec![500.0f64; n], [n]),
        (&device, dtype),
    );
    let out = guided(x.clone(), t.clone());
    assert_eq!(calls.get(), 1, "one forward pass");
    assert_eq!(out.dims(), [n, 4]);
    // The same through two denoisers (means only) and ClassifierFree.
    let null = labels.clone().zeros_like().add_scalar(5);
    let mean = |l: Tensor<1, Int>| move |x: Tensor<2>, t: Tensor<1>| net(x, t, l.clone()).narrow(1, 0, 2);
    let cond = DiscreteModel::new(
        mean(labels.clone()),
        schedule.clone(),
        diffusion_ddpm::Prediction::Epsilon,
    );
    let uncond = DiscreteModel::new(mean(null), schedule.clone(), diffusion_ddpm::Prediction::Epsilon);
    let one = DiscreteModel::new(
        |x: Tensor<2>, t: Tensor<1>| guided(x, t).narrow(1, 0, 2),
        schedule.clone(),
        diffusion_ddpm::Prediction::Epsilon,
    );
    let level = NoiseLevel::vp(schedule.alphas_cumprod()[500]).with_timestep(500.0);
    let a = one.denoise(x.clone(), level);
    let b = ClassifierFree::new(&cond, &uncond, 2.5).denoise(x.clone(), level);
    let tol = if f64_only() { 1e-12 } else { 1e-4 };
    assert!(max_abs(&a, &b) < tol, "{}", max_abs(&a, &b));
    // The variance head is the conditional one.
    let var = net(x.clone(), t, labels).narrow(1, 2, 2);
    assert!(max_abs(&out.narrow(1, 2, 2), &var) < tol);
}

#[test]
fn sdedit_keeps_the_data_distribution_and_matches_diffusers_img2img_steps() {
    use diffusion_samplers::{
        Ddpm, DiscreteModel, TimestepInterpolation, img2img_timesteps, noise_to, successive_steps,
    };
    use diffusion_schedules::{DiscreteSchedule, TimestepSpacing, timesteps};
    // diffusers' img2img: 50 leading steps (offset 1) at strength 0.8 start at t = 781, 40 steps.
    let all = timesteps(1000, 50, TimestepSpacing::Leading, 1).unwrap();
    let kept = img2img_timesteps(&all, 0.8).unwrap();
    assert_eq!((kept.len(), kept[0], *kept.last().unwrap()), (40, 781, 1));
    assert_eq!(img2img_timesteps(&all, 1.0).unwrap(), all);
    assert!(img2img_timesteps(&all, 0.0).is_err() && img2img_timesteps(&all, 0.001).is_err());

    // On the exact model, perturbing data and denoising it again keeps the data distribution.
    let m = gmm2d();
    let device = device();
    let dtype = best_dtype(&device);
    let schedule = DiscreteSchedule::linear(1000, 1e-4, 0.02).unwrap();
    let net = m.discrete_model(
        &schedule,
        diffusion_ddpm::Prediction::Epsilon,
        TimestepInterpolation::Sigma,
    );
    let model = DiscreteModel::new(net, schedule.clone(), diffusion_ddpm::Prediction::Epsilon);
    let n = 1000;
    let steps = timesteps(1000, 200, TimestepSpacing::Trailing, 0).unwrap();
    let exact = m.sample_host(3, 0..n as u64);
    let fresh = m.sample_host(4, 0..n as u64);
    let floor = sliced_wasserstein(&fresh, &exact, 2, 256, 1);
    for strength in [0.3, 1.0] {
        let kept = img2img_timesteps(&steps, strength).unwrap();
        let guide = tensor2(m.sample_host(8, 0..n as u64), n, &device, dtype);
        let mut noise = SampleNoise::range(11, 0..n as u64);
        let x = noise_to(
            &schedule,
            guide,
            noise.normal_tensor(n, 2, &device, dtype),
            kept[0],
        );
        let out = Ddpm::new(successive_steps(&schedule, &kept))
            .sample(&model, x, &mut noise)
            .unwrap();
        let sw = sliced_wasserstein(&to_f64(&out.x), &exact, 2, 256, 1);
        assert!(
            sw < 2.0 * floor + 0.02,
            "strength {strength}: SW {sw} vs floor {floor}"
        );
    }
}
