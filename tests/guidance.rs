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
    move |x: Tensor<2>, level: NoiseLevel| m.class_log_posterior_grad(x, level, classes, c)
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

#[test]
fn cfg_plus_plus_renoises_with_the_unconditional_estimate() {
    use diffusion_samplers::{CfgPlusPlus, Ddim, successive_steps};
    use diffusion_schedules::{DiscreteSchedule, TimestepSpacing, timesteps};
    let m = gmm2d();
    let groups = classes(&m);
    let cond = m.restricted(&groups[1]).unwrap();
    let schedule = DiscreteSchedule::linear(1000, 1e-4, 0.02).unwrap();
    let steps = successive_steps(
        &schedule,
        &timesteps(1000, 50, TimestepSpacing::Leading, 1).unwrap(),
    );
    let tol = if f64_only() { 1e-10 } else { 1e-4 };
    let n = 400;
    let x = points(n, 1.0);
    let mut noise = SampleNoise::range(0, 0..n as u64);
    let ddim = |d: &dyn Denoiser| {
        Ddim::new(steps.clone(), 0.0)
            .sample(d, x.clone(), &mut SampleNoise::range(0, 0..n as u64))
            .unwrap()
            .x
    };
    let pp = |uncond: &dyn Denoiser, c: &dyn Denoiser, lambda: f64, noise: &mut SampleNoise| {
        CfgPlusPlus {
            steps: steps.clone(),
            uncond,
            lambda,
        }
        .sample(c, x.clone(), noise)
    };
    // λ = 0 is unconditional DDIM; equal models are DDIM whatever λ.
    assert!(max_abs(&pp(&m, &cond, 0.0, &mut noise).unwrap().x, &ddim(&m)) < tol);
    assert!(max_abs(&pp(&cond, &cond, 0.7, &mut noise).unwrap().x, &ddim(&cond)) < tol);

    // One step on Gaussians, against the closed form of Algorithm 1: x̂₀ from the guided
    // denoiser, the direction from the unconditional one. For N(μ, s²I),
    // D(x) = μ + α s² (x − α μ)/(α² s² + σ²).
    let (mu_u, mu_c, s) = (0.5, -1.0, 0.7);
    let gauss = |mu: f64| GaussianMixture::new(vec![1.0], vec![vec![mu, mu]], vec![s]).unwrap();
    let (gu, gc) = (gauss(mu_u), gauss(mu_c));
    let step = steps[10];
    let (a, a_prev) = (step.alpha_bar.sqrt(), step.alpha_bar_prev.sqrt());
    let sigma = (1.0 - step.alpha_bar).sqrt();
    let d = |mu: f64, x: f64| mu + a * s * s * (x - a * mu) / (a * a * s * s + sigma * sigma);
    let lambda = 0.6;
    let x1 = points(8, 1.0);
    let expected: Vec<f64> = to_f64(&x1)
        .into_iter()
        .map(|xi| {
            let (du, dc) = (d(mu_u, xi), d(mu_c, xi));
            let guided = du + lambda * (dc - du);
            a_prev * guided + (1.0 - a_prev * a_prev).sqrt() * (xi - a * du) / sigma
        })
        .collect();
    let one = CfgPlusPlus {
        steps: vec![step],
        uncond: &gu,
        lambda,
    }
    .sample(&gc, x1, &mut SampleNoise::range(0, 0..8))
    .unwrap();
    let err = to_f64(&one.x)
        .iter()
        .zip(&expected)
        .map(|(p, q)| (p - q).abs())
        .fold(0.0, f64::max);
    assert!(err < tol, "one step: {err}");
    assert_eq!(one.nfe, 2);

    // λ = 1 lands in the condition's class (exact classifier at the data end), with 2 NFE a step.
    let noise_init = SampleNoise::range(9, 0..n as u64).normal_tensor(n, 2, &device(), best_dtype(&device()));
    let out = CfgPlusPlus {
        steps: steps.clone(),
        uncond: &m,
        lambda: 1.0,
    }
    .sample(&cond, noise_init, &mut noise)
    .unwrap();
    assert_eq!(out.nfe, 2 * steps.len());
    let post = to_f64(&m.class_log_posterior(out.x, NoiseLevel::ve(0.01), &groups));
    let in_class = post.chunks(2).filter(|r| r[1].exp() > 0.5).count() as f64 / n as f64;
    assert!(in_class > 0.97, "{in_class}");
    assert!(
        pp(&m, &cond, 1.5, &mut noise)
            .unwrap_err()
            .to_string()
            .contains("[0, 1]")
    );
}

#[test]
fn a_noise_conditional_classifier_trained_by_the_objective_guides_sampling() {
    if !diffusion_tests::run_training_tests() {
        return;
    }
    use diffusion_backbones::MlpConfig;
    use diffusion_ddpm::{ForwardProcess, NoisyClassifierLoss, UniformTimesteps, cross_entropy};
    use diffusion_samplers::{DiscreteModel, NoisyClassifier, TimestepInterpolation};
    use diffusion_schedules::DiscreteSchedule;
    use diffusion_train::{TrainConfig, train};
    let m = gmm2d();
    let groups = classes(&m);
    let device = device().autodiff();
    let dtype = burn::tensor::DType::F32;
    let schedule = DiscreteSchedule::linear(1000, 1e-4, 0.02).unwrap();
    let objective = NoisyClassifierLoss::new(ForwardProcess::new(schedule.clone()));
    let net = MlpConfig::new(2)
        .with_out_dim(Some(2))
        .with_hidden(64)
        .with_blocks(2)
        .with_time_scale(1.0)
        .init(&device);
    // Labelled data: class 0 is component 0 (around x = −2, s = 0.3), class 1 the other two
    // (x ≥ 0.4 within 4 s): the first coordinate tells them apart.
    let class_of = |x: &[f64]| -> usize { usize::from(x[0] > -0.5) };
    let batch = 256;
    let mut config = TrainConfig::new();
    config.steps = 400;
    config.lr = 3e-3;
    config.warmup_steps = 20;
    let (net, log) = train(
        net,
        &config,
        |net, step| {
            let rows = m.sample_host(100 + step as u64, 0..batch as u64);
            let labels: Vec<usize> = rows.chunks(2).map(class_of).collect();
            let mut rng = diffusion_core::noise::sample_rng(7, step as u64);
            let t = UniformTimesteps { num_timesteps: 1000 }.sample(&mut rng, batch);
            let noise = SampleNoise::range(200 + step as u64, 0..batch as u64)
                .normal_tensor(batch, 2, &device, dtype);
            let x0 = tensor2(rows, batch, &device, dtype);
            objective
                .loss(|x, t| net.forward(x, t), x0, &labels, &t, noise)
                .unwrap()
        },
        |_| {},
    )
    .unwrap();
    let (first, last) = (log.first().unwrap().loss, log.last().unwrap().loss);
    // The loss cannot fall far: at large t the classes are indistinguishable (ln 2 nats).
    assert!(last < first, "loss {first} → {last}");

    // The trained classifier is close to the exact noisy classifier over the noise levels
    // that matter (mean KL over noisy samples).
    let classifier = NoisyClassifier {
        net: |x: Tensor<2>, t: Tensor<1>| net.forward(x, t),
        schedule: schedule.clone(),
        labels: vec![1],
    };
    let mut kl_total = 0.0;
    for t in [50usize, 200, 400, 600] {
        let ab = schedule.alphas_cumprod()[t];
        let level = NoiseLevel::vp(ab).with_timestep(t as f64);
        let x0 = tensor2(m.sample_host(999, 0..512), 512, &device, dtype);
        let z = SampleNoise::range(998, 0..512).normal_tensor(512, 2, &device, dtype);
        let x = x0.mul_scalar(ab.sqrt()) + z.mul_scalar((1.0 - ab).sqrt());
        let ours = to_f64(&classifier.log_probs(x.clone(), level));
        let exact = to_f64(&m.class_log_posterior(x, level, &groups));
        let kl: f64 = exact
            .chunks(2)
            .zip(ours.chunks(2))
            .map(|(p, q)| (0..2).map(|c| p[c].exp() * (p[c] - q[c])).sum::<f64>())
            .sum::<f64>()
            / 512.0;
        kl_total += kl;
        assert!(kl < 0.05, "t = {t}: KL(exact ‖ trained) = {kl}");
    }
    println!("mean KL(exact ‖ trained classifier) {:.4}", kl_total / 4.0);

    // Guiding the unconditional model with it puts the samples in class 1.
    let denoiser = DiscreteModel::new(
        m.discrete_model(
            &schedule,
            diffusion_ddpm::Prediction::Epsilon,
            TimestepInterpolation::Sigma,
        ),
        schedule.clone(),
        diffusion_ddpm::Prediction::Epsilon,
    );
    let guided = ClassifierGuidance {
        base: &denoiser,
        grad_log_p: |x: Tensor<2>, level: NoiseLevel| classifier.grad_log_prob(x, level),
        scale: 1.0,
    };
    let n = 300;
    let sampler = diffusion_samplers::Ddpm::new(diffusion_samplers::successive_steps(
        &schedule,
        &diffusion_schedules::timesteps(1000, 100, diffusion_schedules::TimestepSpacing::Leading, 1).unwrap(),
    ));
    let mut noise = SampleNoise::range(31, 0..n as u64);
    let x = noise.normal_tensor(n, 2, &device, dtype);
    let out = sampler.sample(&guided, x, &mut noise).unwrap();
    let rows = to_f64(&out.x);
    let share = rows.chunks(2).filter(|r| class_of(r) == 1).count() as f64 / n as f64;
    println!("classifier-guided samples in class 1: {share:.3} (prior mass 0.5)");
    assert!(share > 0.9, "{share}");

    // Bad labels are errors.
    let logits = Tensor::<2>::zeros([2, 3], (&device, dtype));
    assert!(cross_entropy(logits.clone(), &[0]).is_err());
    assert!(
        cross_entropy(logits.clone(), &[0, 3])
            .unwrap_err()
            .to_string()
            .contains("label 3")
    );
    let value = to_f64(&cross_entropy(logits, &[0, 2]).unwrap())[0];
    assert!(
        (value - 3f64.ln()).abs() < 1e-6,
        "uniform logits: ln 3, got {value}"
    );
}
