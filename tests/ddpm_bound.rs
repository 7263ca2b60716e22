//! The DDPM variational bound and Improved-DDPM machinery against openai/improved-diffusion
//! itself (`scripts/fixtures/improved_diffusion.py`, float64), against the exact
//! Gaussian-mixture likelihood, and against closed forms.

use burn::tensor::{DType, Tensor};
use diffusion_core::noise::{NoiseSource, SampleNoise};
use diffusion_core::tensor::{from_f64, to_f64};
use diffusion_ddpm::{
    DdpmLoss, Decoder, ForwardProcess, LossAwareTimesteps, LossType, ModelVariance, Posterior, Prediction,
    Respaced, Vlb, Weighting, space_timesteps,
};
use diffusion_samplers::{Ddpm, DiscreteModel, NoiseLevel, Sampler, VarianceType, successive_steps};
use diffusion_schedules::DiscreteSchedule;
use diffusion_tests::{
    assert_close, assert_close_floor, best_dtype, device, fixture, floats, gmm2d, tensor2,
};
use serde_json::Value;

const TOL: f64 = 1e-10;

fn id() -> Value {
    fixture("improved_diffusion.json")
}

/// The fixture's schedule by name (its own betas: improved-diffusion builds "linear" with
/// numpy's linspace scaled by 1000/T).
fn schedule(all: &Value, name: &str, t_len: u64) -> DiscreteSchedule {
    match all["tables"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["schedule"] == name && t["T"] == t_len)
    {
        Some(table) => DiscreteSchedule::from_betas(floats(&table["betas"])).unwrap(),
        None if name == "linear" => improved_linear(t_len as usize),
        None => panic!("no table {name} {t_len}"),
    }
}

/// x_start of the conventions: ((k·37) mod 256)/127.5 − 1, shaped [4, 3, 4, 4].
fn x_start(dtype: DType) -> Tensor<4> {
    let v: Vec<f64> = (0..192).map(|k| ((k * 37) % 256) as f64 / 127.5 - 1.0).collect();
    from_f64(v, [4, 3, 4, 4], &device(), dtype)
}

fn image(v: Vec<f64>, dtype: DType) -> Tensor<4> {
    from_f64(v, [4, 3, 4, 4], &device(), dtype)
}

/// The dummy network: ε̂ = 0.5 x_t + 0.001 t, and (learned range) v = tanh(x_t).
fn dummy(learned: bool) -> impl Fn(Tensor<4>, Tensor<1>) -> Tensor<4> {
    move |x: Tensor<4>, t: Tensor<1>| {
        let n = x.dims()[0];
        let eps = x.clone().mul_scalar(0.5) + t.mul_scalar(0.001).reshape([n, 1, 1, 1]);
        if learned {
            Tensor::cat(vec![eps, x.tanh()], 1)
        } else {
            eps
        }
    }
}

fn variance_of(name: &str) -> ModelVariance {
    match name {
        "LEARNED_RANGE" => ModelVariance::LearnedRange,
        "FIXED_SMALL" => ModelVariance::FixedSmall,
        "FIXED_LARGE" => ModelVariance::FixedLarge,
        other => panic!("{other}"),
    }
}

fn ints(v: &Value) -> Vec<usize> {
    floats(v).into_iter().map(|x| x as usize).collect()
}

fn per_sample(v: Vec<f64>) -> Vec<f64> {
    // A per-sample value (length 4) broadcast to the 192 elements of the batch.
    v.iter().flat_map(|&x| std::iter::repeat_n(x, 48)).collect()
}

fn f64_only() -> bool {
    best_dtype(&device()) == DType::F64
}

#[test]
fn posterior_tables_match() {
    let all = id();
    for table in all["tables"].as_array().unwrap() {
        let s = DiscreteSchedule::from_betas(floats(&table["betas"])).unwrap();
        let p = Posterior::new(&s);
        let name = format!("{} T={}", table["schedule"], table["T"]);
        assert_close(
            &format!("{name} ᾱ"),
            s.alphas_cumprod(),
            &floats(&table["alphas_cumprod"]),
            1e-14,
        );
        assert_close(
            &format!("{name} ᾱ_prev"),
            &p.alphas_cumprod_prev,
            &floats(&table["alphas_cumprod_prev"]),
            1e-14,
        );
        assert_close(
            &format!("{name} β̃"),
            &p.variance,
            &floats(&table["posterior_variance"]),
            1e-12,
        );
        let log_ref = floats(&table["posterior_log_variance_clipped"]);
        if log_ref.iter().all(|v| v.is_finite()) {
            assert_close(
                &format!("{name} ln β̃ clipped"),
                &p.log_variance_clipped,
                &log_ref,
                1e-12,
            );
        }
        assert_close(
            &format!("{name} c₁"),
            &p.mean_coef_x0,
            &floats(&table["posterior_mean_coef1"]),
            1e-12,
        );
        assert_close(
            &format!("{name} c₂"),
            &p.mean_coef_xt,
            &floats(&table["posterior_mean_coef2"]),
            1e-12,
        );
    }
    // Our linear and cosine schedules agree with improved-diffusion's construction.
    let ours = DiscreteSchedule::linear(1000, 1e-4, 0.02).unwrap();
    assert_close(
        "linear betas",
        ours.betas(),
        &floats(&all["tables"][0]["betas"]),
        1e-14,
    );
    let cos = DiscreteSchedule::cosine(1000).unwrap();
    let reference = &all["tables"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["schedule"] == "cosine" && t["T"] == 1000)
        .unwrap()["betas"];
    assert_close("cosine betas", cos.betas(), &floats(reference), 1e-12);
}

#[test]
fn kl_and_decoder_likelihood_match() {
    let all = id();
    let device = device();
    let dtype = best_dtype(&device);
    let tol = if f64_only() { 1e-12 } else { 1e-5 };
    let t1 = |v: &Value| from_f64(floats(v), [floats(v).len()], &device, dtype);
    let kl = &all["normal_kl"]["elementwise"];
    let ours = diffusion_ddpm::vlb::normal_kl(
        t1(&kl["mean1"]),
        t1(&kl["logvar1"]),
        t1(&kl["mean2"]),
        t1(&kl["logvar2"]),
    );
    assert_close_floor("normal_kl", &to_f64(&ours), &floats(&kl["output"]), tol, 1.0);
    let cdf = &all["approx_standard_normal_cdf"];
    // 1 + tanh(u) for u ≪ 0 and log Φ near 1 cancel: held absolutely near zero.
    assert_close_floor(
        "cdf",
        &to_f64(&diffusion_ddpm::vlb::approx_standard_normal_cdf(t1(&cdf["x"]))),
        &floats(&cdf["output"]),
        tol,
        1.0,
    );
    let d = &all["discretized_gaussian_log_likelihood"];
    let ours = diffusion_ddpm::vlb::discretized_gaussian_log_likelihood(
        t1(&d["x"]),
        t1(&d["means"]),
        t1(&d["log_scales"]),
    );
    // The log of a tiny CDF difference amplifies the last ulps of tanh (torch's vs ours).
    assert_close_floor(
        "discretised log-likelihood",
        &to_f64(&ours),
        &floats(&d["output"]),
        if f64_only() { 1e-10 } else { 1e-4 },
        1.0,
    );
}

#[test]
fn bound_terms_match_for_every_variance_type() {
    let all = id();
    let dtype = best_dtype(&device());
    let tol = if f64_only() { TOL } else { 2e-3 };
    let noise = image(floats(&all["terms"]["noise"]), dtype);
    for case in all["terms"]["cases"].as_array().unwrap() {
        let s = schedule(
            &all,
            case["schedule"].as_str().unwrap(),
            case["T"].as_u64().unwrap(),
        );
        let t = ints(&case["t"]);
        let what = format!("{} t={:?}", case["schedule"], t);
        let forward = ForwardProcess::new(s);
        let x_t = forward.sample(x_start(dtype), noise.clone(), &t).unwrap();
        assert_close(&format!("{what} x_t"), &to_f64(&x_t), &floats(&case["x_t"]), tol);
        let q = Posterior::new(forward.schedule());
        let mean = q.mean(x_start(dtype), x_t.clone(), &t).unwrap();
        assert_close(
            &format!("{what} q mean"),
            &to_f64(&mean),
            &floats(&case["q_posterior"]["mean"]),
            tol,
        );
        for var in ["LEARNED_RANGE", "FIXED_SMALL", "FIXED_LARGE"] {
            let variance = variance_of(var);
            let vlb = Vlb::new(forward.clone(), Prediction::Epsilon, variance);
            let n = 4;
            let t_tensor = from_f64(t.iter().map(|&v| v as f64).collect(), [n], &device(), dtype);
            let out = dummy(variance.is_learned())(x_t.clone(), t_tensor);
            let step = vlb.reverse_step(out, x_t.clone(), &t, false).unwrap();
            let p = &case["p_mean_variance"];
            assert_close(
                &format!("{what} {var} mean"),
                &to_f64(&step.mean),
                &floats(&p["mean"]),
                tol,
            );
            assert_close(
                &format!("{what} {var} x̂₀"),
                &to_f64(&step.x0),
                &floats(&p["pred_xstart"]),
                tol,
            );
            let log_var = floats(&p[var]["log_variance"]);
            let log_var = if log_var.len() == 4 {
                per_sample(log_var)
            } else {
                log_var
            };
            assert_close(
                &format!("{what} {var} ln Σ"),
                &to_f64(&step.log_variance),
                &log_var,
                tol,
            );
            let vb = vlb.term(&step, x_start(dtype), x_t.clone(), &t).unwrap();
            assert_close(
                &format!("{what} {var} L_t"),
                &to_f64(&vb),
                &floats(&case["vb_bpd"][var]),
                tol,
            );
        }
    }
}

#[test]
fn training_losses_match() {
    let all = id();
    let dtype = best_dtype(&device());
    let tol = if f64_only() { TOL } else { 2e-3 };
    let noise = image(floats(&all["training_losses"]["noise"]), dtype);
    for case in all["training_losses"]["cases"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let t_len = case["T"].as_u64().unwrap();
        let s = schedule(&all, case["schedule"].as_str().unwrap(), t_len);
        let forward = ForwardProcess::new(s);
        let prediction = match case["model_mean_type"].as_str().unwrap() {
            "EPSILON" => Prediction::Epsilon,
            "START_X" => Prediction::Sample,
            other => panic!("{other}"),
        };
        let variance = variance_of(case["model_var_type"].as_str().unwrap());
        let t_len = t_len as f64;
        let loss_type = match (case["loss_type"].as_str().unwrap(), variance.is_learned()) {
            ("MSE", false) => LossType::Simple,
            ("MSE", true) => LossType::Hybrid { lambda: 1.0 / t_len },
            ("RESCALED_MSE", true) => LossType::Hybrid { lambda: 0.001 },
            ("KL" | "RESCALED_KL", _) => LossType::Vlb,
            other => panic!("{other:?}"),
        };
        let loss = DdpmLoss {
            vlb: Vlb::new(forward, prediction, variance),
            loss_type,
            weighting: Weighting::Uniform,
        };
        let t = ints(&case["t"]);
        let terms = loss
            .terms(dummy(variance.is_learned()), x_start(dtype), &t, noise.clone())
            .unwrap();
        let reference = &case["terms"];
        let ours_loss = match case["loss_type"].as_str().unwrap() {
            // improved-diffusion's KL returns L_t; ours is T·L_t (RESCALED_KL).
            "KL" => to_f64(&terms.loss).iter().map(|v| v / t_len).collect(),
            _ => to_f64(&terms.loss),
        };
        assert_close(
            &format!("{name} loss"),
            &ours_loss,
            &floats(&reference["loss"]),
            tol,
        );
        if let Some(mse) = &terms.mse {
            assert_close(
                &format!("{name} mse"),
                &to_f64(mse),
                &floats(&reference["mse"]),
                tol,
            );
        }
        if !reference["vb"].is_null() {
            // improved-diffusion reports vb already multiplied by the hybrid weight λT.
            let weight = match loss_type {
                LossType::Hybrid { lambda } => lambda * t_len,
                _ => 1.0,
            };
            let ours: Vec<f64> = to_f64(terms.vb.as_ref().unwrap())
                .iter()
                .map(|v| v * weight)
                .collect();
            assert_close(&format!("{name} vb"), &ours, &floats(&reference["vb"]), tol);
        }
    }
}

#[test]
fn full_bound_in_bits_per_dim_matches_calc_bpd_loop() {
    let all = id();
    let dtype = best_dtype(&device());
    let tol = if f64_only() { TOL } else { 2e-3 };
    for case in all["calc_bpd_loop"].as_array().unwrap() {
        let prior_ref = floats(&case["prior_bpd"]);
        if floats(&case["total_bpd"]).iter().any(|v| !v.is_finite()) {
            // linear T = 20 reaches ᾱ = 0 and improved-diffusion's x̂₀ is NaN there.
            continue;
        }
        let t_len = case["T"].as_u64().unwrap();
        let forward = ForwardProcess::new(schedule(&all, case["schedule"].as_str().unwrap(), t_len));
        let vlb = Vlb::new(forward, Prediction::Epsilon, ModelVariance::LearnedRange);
        let noises: Vec<Value> = case["noise"].as_array().unwrap().clone();
        let noise_t = ints(&case["noise_t"]);
        let report = vlb
            .evaluate(dummy(true), x_start(dtype), |t| {
                let k = noise_t
                    .iter()
                    .position(|&nt| nt == t)
                    .expect("a noise for every t");
                image(floats(&noises[k]), dtype)
            })
            .unwrap();
        let what = format!("{} T={t_len}", case["schedule"]);
        // The prior KL (~1e-7 bits/dim) is a difference of O(1) terms: held to `tol` bits/dim.
        assert_close_floor(
            &format!("{what} total"),
            &to_f64(&report.total),
            &floats(&case["total_bpd"]),
            tol,
            1.0,
        );
        assert_close_floor(
            &format!("{what} prior"),
            &to_f64(&report.prior),
            &prior_ref,
            tol,
            1.0,
        );
        // Columns of improved-diffusion's vb / mse are t = T−1 … 0.
        for (key, ours) in [
            ("vb", &report.terms),
            ("xstart_mse", &report.x0_mse),
            ("mse", &report.eps_mse),
        ] {
            let rows = case[key].as_array().unwrap();
            for (i, row) in rows.iter().enumerate() {
                let reference = floats(row);
                let mine: Vec<f64> = (0..t_len as usize).rev().map(|t| to_f64(&ours[t])[i]).collect();
                assert_close_floor(&format!("{what} {key} sample {i}"), &mine, &reference, tol, 1.0);
            }
        }
    }
}

#[test]
fn respacing_matches_spaced_diffusion() {
    let all = id();
    for case in all["respacing"].as_array().unwrap() {
        let spec = match &case["section_counts"] {
            Value::String(s) => s.clone(),
            Value::Array(a) => a.iter().map(|v| v.to_string()).collect::<Vec<_>>().join(","),
            other => panic!("{other}"),
        };
        let base = schedule(
            &all,
            case["schedule"].as_str().unwrap(),
            case["T"].as_u64().unwrap(),
        );
        let keep = space_timesteps(base.len(), &spec).unwrap();
        assert_eq!(keep, ints(&case["use_timesteps"]), "{spec}");
        let r = Respaced::new(&base, &keep).unwrap();
        assert_eq!(r.timestep_map, ints(&case["timestep_map"]));
        assert_close(
            &format!("{spec} betas"),
            r.schedule.betas(),
            &floats(&case["betas"]),
            1e-12,
        );
    }
    // A spaced model is called with the original timesteps: the terms of SpacedDiffusion.
    let dtype = best_dtype(&device());
    let tol = if f64_only() { TOL } else { 2e-3 };
    for case in all["spaced_terms"].as_array().unwrap() {
        let spec = match &case["section_counts"] {
            Value::String(s) => s.clone(),
            Value::Array(a) => a.iter().map(|v| v.to_string()).collect::<Vec<_>>().join(","),
            other => panic!("{other}"),
        };
        let base = schedule(
            &all,
            case["schedule"].as_str().unwrap(),
            case["T"].as_u64().unwrap(),
        );
        let r = Respaced::new(&base, &space_timesteps(base.len(), &spec).unwrap()).unwrap();
        let map = r.timestep_map.clone();
        let vlb = Vlb::new(
            ForwardProcess::new(r.schedule.clone()),
            Prediction::Epsilon,
            ModelVariance::LearnedRange,
        );
        let t = ints(&case["t"]);
        let x_t = vlb
            .forward
            .sample(x_start(dtype), image(floats(&case["noise"]), dtype), &t)
            .unwrap();
        let model_t: Vec<f64> = t.iter().map(|&k| map[k] as f64).collect();
        assert_eq!(model_t, floats(&case["model_t"]));
        let out = dummy(true)(x_t.clone(), from_f64(model_t, [4], &device(), dtype));
        let step = vlb.reverse_step(out, x_t.clone(), &t, false).unwrap();
        assert_close(
            &format!("{spec} spaced mean"),
            &to_f64(&step.mean),
            &floats(&case["mean"]),
            tol,
        );
        assert_close(
            &format!("{spec} spaced ln Σ"),
            &to_f64(&step.log_variance),
            &floats(&case["log_variance"]),
            tol,
        );
        let vb = vlb.term(&step, x_start(dtype), x_t, &t).unwrap();
        assert_close(
            &format!("{spec} spaced L_t"),
            &to_f64(&vb),
            &floats(&case["vb_bpd"]),
            tol,
        );
    }
}

#[test]
fn loss_aware_sampler_matches() {
    let all = id();
    let r = &all["resampler"];
    let mut s = LossAwareTimesteps::with_options(
        r["T"].as_u64().unwrap() as usize,
        r["history_per_term"].as_u64().unwrap() as usize,
        r["uniform_prob"].as_f64().unwrap(),
    );
    for (i, u) in r["updates"].as_array().unwrap().iter().enumerate() {
        s.update(&ints(&u["ts"]), &floats(&u["losses"]));
        assert_eq!(s.warmed_up(), u["warmed_up"].as_bool().unwrap(), "update {i}");
        assert_close(
            &format!("weights after update {i}"),
            &s.weights(),
            &floats(&u["weights"]),
            1e-12,
        );
    }
}

/// improved-diffusion's "linear" schedule for T steps: β evenly spaced (numpy) from
/// 1e-4 · 1000/T to 0.02 · 1000/T.
fn improved_linear(t_len: usize) -> DiscreteSchedule {
    let scale = 1000.0 / t_len as f64;
    DiscreteSchedule::from_betas(diffusion_schedules::numeric::linspace_numpy(
        scale * 1e-4,
        scale * 0.02,
        t_len,
    ))
    .unwrap()
}

/// E[L_vlb] of the exact 2-D mixture denoiser as an ε-network with a continuous Gaussian
/// decoder, in nats per sample, and its Monte Carlo standard error. With `optimal_variance`
/// the reverse variance is the exact Σ*_t = β̃_t + c₁² tr Cov[x₀ | x_t]/d (Bao et al. 2022),
/// otherwise β̃_t.
fn oracle_bound(t_len: usize, n: usize, optimal_variance: bool) -> (f64, f64, f64) {
    let device = device();
    let dtype = best_dtype(&device);
    let gm = gmm2d();
    let x0 = tensor2(gm.sample_host(21, 0..n as u64), n, &device, dtype);
    let nll = -to_f64(&gm.log_prob(x0.clone(), NoiseLevel::ve(0.0)))
        .iter()
        .sum::<f64>()
        / n as f64;
    let schedule = improved_linear(t_len);
    let posterior = Posterior::new(&schedule);
    let variance = if optimal_variance {
        ModelVariance::Learned
    } else {
        ModelVariance::FixedSmall
    };
    let vlb = Vlb::new(
        ForwardProcess::new(schedule.clone()),
        Prediction::Epsilon,
        variance,
    )
    .with_decoder(Decoder::Gaussian);
    let model = |x: Tensor<2>, t: Tensor<1>| {
        let t = to_f64(&t)[0] as usize;
        let level = NoiseLevel::vp(schedule.alphas_cumprod()[t]);
        let eps = gm.predict(x.clone(), level, Prediction::Epsilon);
        if !optimal_variance {
            return eps;
        }
        let c1 = posterior.mean_coef_x0[t];
        let log_var = gm
            .posterior_trace_cov(x, level)
            .mul_scalar(c1 * c1 / 2.0)
            .add_scalar(posterior.variance[t])
            .clamp_min(1e-300)
            .log();
        let head = log_var.reshape([n, 1]).repeat_dim(1, 2);
        Tensor::cat(vec![eps, head], 1)
    };
    let report = vlb
        .evaluate(model, x0, |t| {
            SampleNoise::range(1000 + t as u64, 0..n as u64).normal_tensor(n, 2, &device, dtype)
        })
        .unwrap();
    // Bits per dimension × d × ln 2 = nats per sample.
    let per_sample: Vec<f64> = to_f64(&report.total)
        .iter()
        .map(|b| b * 2.0 * std::f64::consts::LN_2)
        .collect();
    let mean = per_sample.iter().sum::<f64>() / n as f64;
    let var = per_sample.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1) as f64;
    (mean, (var / n as f64).sqrt(), nll)
}

#[test]
fn oracle_bound_is_above_the_exact_nll_and_tightens_with_t() {
    // With the fixed small variance β̃ the bound stays above −log p by a gap that shrinks with
    // T but not to 0: near t = 0 each step multiplies the SNR by a constant factor, where β̃
    // is far below the true reverse variance. With the exact reverse variance the bound meets
    // the exact negative log-likelihood.
    let slow = diffusion_tests::is_slow_backend();
    let n = if slow { 256 } else { 1024 };
    let ts: &[usize] = if slow { &[50, 200] } else { &[50, 200, 1000] };
    let mut gaps = Vec::new();
    for &t_len in ts {
        let (bound, se, nll) = oracle_bound(t_len, n, false);
        assert!(
            bound > nll + 3.0 * se,
            "T={t_len}: bound {bound:.4} ± {se:.4} not above the NLL {nll:.4}"
        );
        gaps.push(bound - nll);
    }
    assert!(
        gaps.windows(2).all(|w| w[1] < w[0]),
        "the gap does not shrink with T: {gaps:?}"
    );
    let t_len = *ts.last().unwrap();
    let (coarse, _, _) = oracle_bound(50, n, true);
    let (bound, se, nll) = oracle_bound(t_len, n, true);
    assert!(
        (bound - nll).abs() < 4.0 * se + 0.01,
        "T={t_len}: optimal-variance bound {bound:.4} ± {se:.4} vs NLL {nll:.4}"
    );
    assert!(
        coarse - nll > bound - nll - 2.0 * se,
        "T=50 should be looser: {coarse:.4} vs {bound:.4}"
    );
}

#[test]
fn hybrid_loss_trains_the_variance_only_through_the_bound() {
    // The stop-gradient of Improved DDPM: the bound term of the hybrid loss reaches the
    // variance head but not the mean head; the pure bound reaches both.
    let device = device().autodiff();
    let dtype = DType::F32;
    let forward = ForwardProcess::new(DiscreteSchedule::linear(1000, 1e-4, 0.02).unwrap());
    let x0 = x_start(dtype).to_device(&device);
    let noise = image((0..192).map(|k| ((k as f64) * 0.37).sin()).collect(), dtype).to_device(&device);
    let t = [0, 3, 400, 999];
    for (loss_type, mean_grad_expected) in
        [(LossType::Hybrid { lambda: 0.001 }, false), (LossType::Vlb, true)]
    {
        let values: Vec<f32> = to_f64(&x0.clone().tanh()).into_iter().map(|v| v as f32).collect();
        let head = Tensor::<4>::from_data(burn::tensor::TensorData::new(values, [4, 3, 4, 4]), &device)
            .require_grad();
        let eps = Tensor::<4>::zeros([4, 3, 4, 4], &device)
            .add_scalar(0.1)
            .require_grad();
        let loss = DdpmLoss {
            vlb: Vlb::new(forward.clone(), Prediction::Epsilon, ModelVariance::LearnedRange),
            loss_type,
            weighting: Weighting::Uniform,
        };
        let (e, h) = (eps.clone(), head.clone());
        let terms = loss
            .terms(
                move |_x, _t| Tensor::cat(vec![e, h], 1),
                x0.clone(),
                &t,
                noise.clone(),
            )
            .unwrap();
        let grads = terms.vb.unwrap().sum().backward();
        let mean_grad = eps
            .grad(&grads)
            .map(|g| to_f64(&g).iter().map(|v| v.abs()).sum::<f64>())
            .unwrap_or(0.0);
        let head_grad = head
            .grad(&grads)
            .map(|g| to_f64(&g).iter().map(|v| v.abs()).sum::<f64>())
            .unwrap_or(0.0);
        assert!(head_grad > 0.0, "{loss_type:?}: no gradient on the variance head");
        assert_eq!(
            mean_grad > 0.0,
            mean_grad_expected,
            "{loss_type:?}: mean gradient {mean_grad}"
        );
    }
}

#[test]
fn weightings_and_errors() {
    let dtype = best_dtype(&device());
    let forward = ForwardProcess::new(DiscreteSchedule::linear(1000, 1e-4, 0.02).unwrap());
    let x0 = x_start(dtype);
    let noise = image((0..192).map(|k| ((k as f64) * 0.7).cos()).collect(), dtype);
    let t = [10, 200, 500, 900];
    let plain = DdpmLoss::simple(forward.clone(), Prediction::Epsilon);
    let base = to_f64(
        &plain
            .terms(dummy(false), x0.clone(), &t, noise.clone())
            .unwrap()
            .loss,
    );
    let min_snr = DdpmLoss {
        weighting: Weighting::MinSnr { gamma: 5.0 },
        ..plain.clone()
    };
    let weighted = to_f64(
        &min_snr
            .terms(dummy(false), x0.clone(), &t, noise.clone())
            .unwrap()
            .loss,
    );
    for (i, &ti) in t.iter().enumerate() {
        let ab = forward.schedule().alphas_cumprod()[ti];
        let snr = ab / (1.0 - ab);
        let expected = base[i] * snr.min(5.0) / snr;
        assert!(
            (weighted[i] - expected).abs() < 1e-9 * expected.abs().max(1.0),
            "t={ti}"
        );
    }
    // Bad input: a variance head is missing, shapes differ, t is outside the schedule.
    let learned = DdpmLoss::improved(forward.clone());
    let err = learned
        .terms(dummy(false), x0.clone(), &t, noise.clone())
        .unwrap_err()
        .to_string();
    assert!(err.contains("no variance head"), "{err}");
    let odd = |x: Tensor<4>, _t: Tensor<1>| x.narrow(1, 0, 2);
    assert!(
        plain
            .terms(odd, x0.clone(), &t, noise.clone())
            .unwrap_err()
            .to_string()
            .contains("shapes differ")
    );
    let err = plain
        .terms(dummy(false), x0, &[0, 1, 2, 1000], noise)
        .unwrap_err()
        .to_string();
    assert!(err.contains("timestep 1000 is outside"), "{err}");
}

#[test]
fn learned_variance_sampling_spans_the_fixed_ones() {
    // A variance head of −1 is β̃ (fixed small), +1 is β (fixed large), in the sampler.
    let device = device();
    let dtype = best_dtype(&device);
    let gm = gmm2d();
    let schedule = DiscreteSchedule::linear(1000, 1e-4, 0.02).unwrap();
    let keep = space_timesteps(1000, "ddim25").unwrap();
    let mut ts = keep.clone();
    ts.reverse();
    let steps = successive_steps(&schedule, &ts);
    let z: Vec<f64> = SampleNoise::range(3, 0..8).normal(8, 2);
    let run = |variance: VarianceType, head: Option<f64>| {
        let inner = gm.discrete_model(
            &schedule,
            Prediction::Epsilon,
            diffusion_samplers::TimestepInterpolation::LogSigma,
        );
        let model = move |x: Tensor<2>, t: Tensor<1>| {
            let eps = inner(x.clone(), t);
            match head {
                Some(h) => Tensor::cat(vec![eps.clone(), eps.zeros_like().add_scalar(h)], 1),
                None => eps,
            }
        };
        let mut d = DiscreteModel::new(model, schedule.clone(), Prediction::Epsilon);
        if head.is_some() {
            d = d.with_learned_variance();
        }
        let sampler = Ddpm {
            steps: steps.clone(),
            variance,
            clip_sample: None,
        };
        sampler
            .sample(
                &d,
                tensor2(z.clone(), 8, &device, dtype),
                &mut SampleNoise::range(4, 0..8),
            )
            .map(|o| to_f64(&o.x))
    };
    let tol = if dtype == DType::F64 { 1e-10 } else { 1e-4 };
    let small = run(VarianceType::FixedSmall, None).unwrap();
    let large = run(VarianceType::FixedLarge, None).unwrap();
    let learned_small = run(VarianceType::LearnedRange, Some(-1.0)).unwrap();
    let learned_large = run(VarianceType::LearnedRange, Some(1.0)).unwrap();
    assert!(diffusion_tests::max_rel_err(&learned_small, &small, 1.0) < tol);
    assert!(diffusion_tests::max_rel_err(&learned_large, &large, 1.0) < tol);
    let err = run(VarianceType::LearnedRange, None).unwrap_err().to_string();
    assert!(err.contains("no variance head"), "{err}");
}

#[test]
fn offset_noise_shifts_whole_channels() {
    let device = device();
    let dtype = best_dtype(&device);
    let noise = from_f64(vec![0.0; 2 * 3 * 2 * 2], [2, 3, 2, 2], &device, dtype);
    let offsets = from_f64(vec![1.0, 2.0, 3.0, -1.0, -2.0, -3.0], [2, 3], &device, dtype);
    let out = to_f64(&diffusion_ddpm::offset_noise(noise, offsets, 0.1));
    // Every element of channel c of sample i is 0.1 · offsets[i, c].
    for (k, v) in out.iter().enumerate() {
        let (i, c) = (k / 12, (k / 4) % 3);
        let expected = 0.1 * [1.0, 2.0, 3.0, -1.0, -2.0, -3.0][i * 3 + c];
        assert!((v - expected).abs() < 1e-6, "{k}: {v}");
    }
    // One offset per sample for flat data.
    let flat = from_f64(vec![0.0; 6], [2, 3], &device, dtype);
    let out = to_f64(&diffusion_ddpm::offset_noise(
        flat,
        from_f64(vec![1.0, -1.0], [2, 1], &device, dtype),
        1.0,
    ));
    assert_eq!(out, vec![1.0, 1.0, 1.0, -1.0, -1.0, -1.0]);
}
