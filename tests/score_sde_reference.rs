//! The score crate against score_sde (Song et al. 2021), NCSN / NCSNv2 and diffusers'
//! ScoreSdeVeScheduler, run by `scripts/fixtures/score_sde.py` with the mixture oracle's
//! exact score and replayed noise (`tests/fixtures/score_sde.json`).

use burn::tensor::{DType, Device, Tensor};
use diffusion_core::tensor::to_f64;
use diffusion_samplers::{GaussianMixture, Sampler, SdeSystem};
use diffusion_score::{
    AnnealedLangevin, Corrector, DenoiserScore, Likelihood, PcSampler, Predictor, ProbabilityFlowOde,
    Quantization, ReverseSde, ScoreFn, ScoreSdeVeConfig, Sde, SdeKind, bits_per_dim,
};
use diffusion_tests::{assert_close, best_dtype, device, fixture, floats, gmm2d, matrix, replay, tensor2};
use serde_json::Value;

fn data() -> Value {
    fixture("score_sde.json")
}

/// f64 on flex/ndarray (tight), f32 on wgpu.
fn tol(dtype: DType, f64_tol: f64) -> f64 {
    if dtype == DType::F64 { f64_tol } else { 2e-4 }
}

/// Compares whole runs relative to the largest reference value (a sampler's f32 error is
/// absolute, so samples near 0 would fail an elementwise relative test).
#[track_caller]
fn assert_run_close(what: &str, ours: &[f64], reference: &[f64], tol: f64) {
    let dev = diffusion_core::tensor::max_rel_deviation(ours, reference);
    assert!(dev <= tol, "{what}: deviation {dev:.3e} > {tol:.1e}");
}

fn sde_of(class: &str, params: &Value) -> Sde {
    let p = |k: &str| params[k].as_f64().unwrap_or_else(|| panic!("param {k}"));
    let n = params["N"].as_u64().expect("N") as usize;
    match class {
        "VPSDE" => Sde::vp(p("beta_min"), p("beta_max"), n),
        "subVPSDE" => Sde::subvp(p("beta_min"), p("beta_max"), n),
        "VESDE" => Sde::ve(p("sigma_min"), p("sigma_max"), n),
        other => panic!("unknown SDE {other}"),
    }
}

fn tensor(v: &Value, device: &Device, dtype: DType) -> Tensor<2> {
    let (values, n) = matrix(v);
    tensor2(values, n, device, dtype)
}

fn gmm() -> GaussianMixture {
    gmm2d()
}

#[test]
fn sde_coefficients_kernels_and_discretisations_match_score_sde() {
    let (device, fx) = (device(), data());
    let dtype = best_dtype(&device);
    let sdes = &fx["sdes"];
    let oracle = gmm();
    for class in ["VPSDE", "subVPSDE", "VESDE"] {
        let case = &sdes[class];
        let sde = sde_of(class, &case["params"]);
        let x = tensor(&sdes["x"], &device, dtype);
        let prior = to_f64(&sde.prior_log_prob(tensor(&sdes["z"], &device, dtype)));
        assert_close(
            &format!("{class} prior"),
            &prior,
            &floats(&case["prior_logp_z"]),
            tol(dtype, 1e-13),
        );
        for at in case["at"].as_array().unwrap() {
            let t = at["t"].as_f64().unwrap();
            let what = |q: &str| format!("{class} t={t} {q}");
            assert_eq!(
                sde.timestep(t),
                at["timestep_index"].as_u64().unwrap() as usize,
                "{}",
                what("index")
            );
            let drift = to_f64(&SdeSystem::drift(&sde, x.clone(), t));
            assert_run_close(&what("drift"), &drift, &matrix(&at["drift"]).0, tol(dtype, 1e-13));
            let g = floats(&at["diffusion"])[0];
            // score_sde's 1 − e^{…} in the sub-VP g and in σ cancels at small t (ours use
            // expm1), so these agree to 1e-10 there.
            assert_close(&what("diffusion"), &[sde.diffusion(t)], &[g], 1e-10);
            let (alpha, std) = sde.marginal(t);
            assert_close(&what("std"), &[std], &[floats(&at["std"])[0]], 1e-10);
            assert_close(&what("alpha"), &[alpha], &[floats(&at["alpha"])[0]], 1e-13);
            let (f, big_g) = sde.discretize(x.clone(), t);
            assert_run_close(
                &what("discretize f"),
                &to_f64(&f),
                &matrix(&at["discretize"]["f"]).0,
                tol(dtype, 1e-10),
            );
            assert_close(
                &what("discretize G"),
                &[big_g],
                &[floats(&at["discretize"]["G"])[0]],
                1e-10,
            );
            // The oracle's score in the D-form loses digits where σ(t) is tiny (sub-VP at
            // t = 1e-5 has σ = 1e-6); score_sde's fixture used the ε-form.
            let score = DenoiserScore::new(&oracle, &sde);
            let unit = if dtype == DType::F64 { 1e-16 } else { 1e-7 };
            let score_tol = (100.0 * unit / (std * std)).max(tol(dtype, 1e-9));
            let s = to_f64(&score.score(x.clone(), t));
            assert_run_close(&what("score"), &s, &matrix(&at["score"]).0, score_tol);
            let reverse = to_f64(&ReverseSde::new(&sde, &score).drift(x.clone(), t));
            assert_run_close(
                &what("reverse drift"),
                &reverse,
                &matrix(&at["reverse"]["sde"]["drift"]).0,
                score_tol,
            );
            let pf = to_f64(&diffusion_samplers::OdeSystem::derivative(
                &ProbabilityFlowOde::new(&sde, &score),
                x.clone(),
                t,
            ));
            assert_run_close(
                &what("pf drift"),
                &pf,
                &matrix(&at["reverse_pf"]["sde"]["drift"]).0,
                score_tol,
            );
        }
    }
}

fn predictor_of(class: &str) -> Predictor {
    match class {
        "EulerMaruyamaPredictor" => Predictor::EulerMaruyama,
        "ReverseDiffusionPredictor" => Predictor::ReverseDiffusion,
        "AncestralSamplingPredictor" => Predictor::Ancestral,
        "NonePredictor" => Predictor::None,
        other => panic!("unknown predictor {other}"),
    }
}

fn corrector_of(class: &str) -> Corrector {
    match class {
        "LangevinCorrector" => Corrector::Langevin,
        "AnnealedLangevinDynamics" => Corrector::AnnealedLangevin,
        "NoneCorrector" => Corrector::None,
        other => panic!("unknown corrector {other}"),
    }
}

fn sde_by_name(fx: &Value, name: &str) -> Sde {
    sde_of(name, &fx["sdes"][name]["params"])
}

#[test]
fn predictors_match_score_sde_step_by_step() {
    let (device, fx) = (device(), data());
    let dtype = best_dtype(&device);
    let oracle = gmm();
    let mut compared = 0;
    for case in fx["predictors"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let class = case["sde"].as_str().unwrap();
        let mut sampler = PcSampler::new(sde_by_name(&fx, class));
        sampler.predictor = predictor_of(case["class"].as_str().unwrap());
        sampler.corrector = Corrector::None;
        sampler.probability_flow = case["probability_flow"].as_bool().unwrap();
        if !case["error"].is_null() {
            // score_sde raises for sub-VP ancestral sampling (we refuse it too) and for
            // Euler–Maruyama on the probability flow (a score_sde bug; ours integrates it).
            if sampler.predictor == Predictor::Ancestral {
                assert!(sampler.validate().is_err(), "{name}: should be refused");
            }
            continue;
        }
        let t = case["t"].as_f64().unwrap();
        let x = tensor(&case["x"], &device, dtype);
        let score = DenoiserScore::new(&oracle, &sampler.sde);
        let (out, mean) = sampler.predict(&score, x, t, &mut replay(&case["noise"]));
        assert_close(
            &format!("{name} x_mean"),
            &to_f64(&mean),
            &matrix(&case["x_mean"]).0,
            tol(dtype, 1e-10),
        );
        assert_close(
            &format!("{name} x"),
            &to_f64(&out),
            &matrix(&case["x_out"]).0,
            tol(dtype, 1e-10),
        );
        compared += 1;
    }
    assert_eq!(compared, 22, "predictor cases compared");
}

#[test]
fn correctors_match_score_sde_batch_coupled_and_per_sample() {
    let (device, fx) = (device(), data());
    let dtype = best_dtype(&device);
    let oracle = gmm();
    let mut compared = 0;
    for case in fx["correctors"].as_array().unwrap() {
        if !case["error"].is_null() {
            continue; // score_sde's sub-VP correctors crash (no `alphas`); ours use 1 − β_i
        }
        let name = case["name"].as_str().unwrap();
        let mut sampler = PcSampler::new(sde_by_name(&fx, case["sde"].as_str().unwrap()));
        sampler.predictor = Predictor::None;
        sampler.corrector = corrector_of(case["class"].as_str().unwrap());
        sampler.snr = case["snr"].as_f64().unwrap();
        sampler.corrector_steps = case["n_steps"].as_u64().unwrap() as usize;
        sampler.batch_norms = case["batch_coupled"].as_bool().unwrap();
        let t = case["t"].as_f64().unwrap();
        let x = tensor(&case["x"], &device, dtype);
        let score = DenoiserScore::new(&oracle, &sampler.sde);
        let (out, mean) = sampler.correct(&score, x.clone(), t, &mut replay(&case["noise"]));
        assert_close(
            &format!("{name} x"),
            &to_f64(&out),
            &matrix(&case["x_out"]).0,
            tol(dtype, 1e-10),
        );
        assert_close(
            &format!("{name} x_mean"),
            &to_f64(&mean),
            &matrix(&case["x_mean"]).0,
            tol(dtype, 1e-10),
        );
        if sampler.batch_norms {
            sampler.batch_norms = false;
            let (out, _) = sampler.correct(&score, x, t, &mut replay(&case["noise"]));
            let rowwise = matrix(&case["x_out_rowwise"]).0;
            assert_close(
                &format!("{name} per sample"),
                &to_f64(&out),
                &rowwise,
                tol(dtype, 1e-10),
            );
        }
        compared += 1;
    }
    assert_eq!(compared, 10, "corrector cases compared");
}

#[test]
fn pc_samplers_match_score_sde_end_to_end() {
    let (device, fx) = (device(), data());
    let dtype = best_dtype(&device);
    let oracle = gmm();
    for case in fx["pc_sampler"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let sampler = PcSampler {
            sde: sde_of(case["sde"].as_str().unwrap(), &case["params"]),
            predictor: predictor_of(case["predictor"].as_str().unwrap()),
            corrector: corrector_of(case["corrector"].as_str().unwrap()),
            snr: case["snr"].as_f64().unwrap(),
            corrector_steps: case["n_steps"].as_u64().unwrap() as usize,
            eps: case["eps"].as_f64().unwrap(),
            denoise: case["denoise"].as_bool().unwrap(),
            probability_flow: case["probability_flow"].as_bool().unwrap(),
            batch_norms: true,
        };
        assert_close(
            &format!("{name} times"),
            &sampler.times(),
            &floats(&case["timesteps"]),
            1e-15,
        );
        let x = tensor(&case["x_init"], &device, dtype);
        let traj = &case["trajectory"];
        let steps: Vec<u64> = traj["step"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s.as_u64().unwrap())
            .collect();
        let mut seen = Vec::new();
        let out = sampler
            .sample_observed(&oracle, x, &mut replay(&case["noise"]), &mut |i, x| {
                if steps.contains(&(i as u64 + 1)) {
                    seen.push(to_f64(x));
                }
            })
            .unwrap();
        for (k, x) in seen.iter().enumerate() {
            let reference = matrix(&traj["x"][k + 1]).0;
            assert_run_close(
                &format!("{name} step {}", steps[k + 1]),
                x,
                &reference,
                tol(dtype, 1e-9),
            );
        }
        assert_run_close(
            &format!("{name} final"),
            &to_f64(&out.x),
            &matrix(&case["x_final"]).0,
            tol(dtype, 1e-9),
        );
        assert_eq!(
            out.nfe as u64,
            case["score_evals"].as_u64().unwrap(),
            "{name}: evaluations"
        );
    }
}

#[test]
fn diffusers_score_sde_ve_scheduler_is_the_pc_sampler() {
    let (device, fx) = (device(), data());
    let dtype = best_dtype(&device);
    let case = &fx["score_sde_ve_scheduler"];
    let config = ScoreSdeVeConfig::from_json(&case["config"].to_string()).unwrap();
    let steps = case["num_inference_steps"].as_u64().unwrap() as usize;
    let sampler = config.sampler(steps).unwrap();
    assert_close("timesteps", &sampler.times(), &floats(&case["timesteps"]), 1e-15);
    assert_close(
        "discrete sigmas",
        &sampler.sde.discrete_sigmas(),
        &floats(&case["discrete_sigmas"]),
        1e-14,
    );
    let sigmas: Vec<f64> = sampler
        .times()
        .iter()
        .map(|&t| sampler.sde.marginal(t).1)
        .collect();
    assert_close("sigmas", &sigmas, &floats(&case["sigmas"]), 1e-13);
    let index: Vec<f64> = sampler
        .times()
        .iter()
        .map(|&t| sampler.sde.timestep(t) as f64)
        .collect();
    assert_eq!(index, floats(&case["pred_index"]));
    assert_eq!(
        sampler.init_noise_sigma(),
        case["init_noise_sigma"].as_f64().unwrap()
    );
    let out = sampler
        .sample(
            &gmm(),
            tensor(&case["x_init"], &device, dtype),
            &mut replay(&case["noise"]),
        )
        .unwrap();
    assert_run_close(
        "prev_sample_mean",
        &to_f64(&out.x),
        &matrix(&case["prev_sample_mean"]).0,
        tol(dtype, 1e-9),
    );
    assert_eq!(out.nfe as u64, case["nfe"].as_u64().unwrap());
}

#[test]
fn score_sde_ve_config_errors_are_clear() {
    let wrong = ScoreSdeVeConfig::from_json(r#"{"_class_name": "DDIMScheduler"}"#).unwrap_err();
    assert!(wrong.to_string().contains("DDIMScheduler"), "{wrong}");
    let bad = ScoreSdeVeConfig::from_json(r#"{"sigma_min": 5.0, "sigma_max": 1.0}"#).unwrap_err();
    assert!(bad.to_string().contains("sigma_min"), "{bad}");
    let steps = ScoreSdeVeConfig::default().sampler(1).unwrap_err();
    assert!(steps.to_string().contains("at least 2"), "{steps}");
    assert!(ScoreSdeVeConfig::from_json("{ not json").is_err());
}

#[test]
fn annealed_langevin_matches_ncsn_and_ncsnv2() {
    let (device, fx) = (device(), data());
    let dtype = best_dtype(&device);
    for case in fx["ald"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let denoise = case["denoise"].as_bool().unwrap();
        let sampler = AnnealedLangevin {
            sigmas: floats(&case["sigmas"]),
            steps_per_level: case["n_steps_each"].as_u64().unwrap() as usize,
            step_lr: case["step_lr"].as_f64().unwrap(),
            denoise,
        };
        let alphas: Vec<f64> = (0..sampler.sigmas.len()).map(|i| sampler.alpha(i)).collect();
        assert_close(
            &format!("{name} steps"),
            &alphas,
            &floats(&case["step_sizes"]),
            1e-14,
        );
        let out = sampler
            .sample(
                &gmm(),
                tensor(&case["x0"], &device, dtype),
                &mut replay(&case["noise"]),
            )
            .unwrap();
        assert_run_close(
            name,
            &to_f64(&out.x),
            &matrix(&case["x_final"]).0,
            tol(dtype, 1e-9),
        );
        assert_eq!(
            out.nfe as u64,
            case["nfe"].as_u64().unwrap(),
            "{name}: evaluations"
        );
    }
}

#[test]
fn likelihoods_match_score_sde_and_the_exact_density() {
    let (device, fx) = (device(), data());
    let dtype = best_dtype(&device);
    let oracle = gmm();
    for case in fx["likelihood"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let rtol = case["rtol"].as_f64().unwrap();
        if dtype != DType::F64 && rtol < 1e-6 {
            continue; // a 1e-9 tolerance is below f32's resolution
        }
        let mut likelihood = Likelihood::new(sde_of(case["sde"].as_str().unwrap(), &case["params"]));
        likelihood.eps = case["eps"].as_f64().unwrap();
        likelihood.solver.rtol = rtol;
        likelihood.solver.atol = case["atol"].as_f64().unwrap();
        let x = tensor(&case["data"], &device, dtype);
        let out = likelihood.evaluate(&oracle, x).unwrap();
        // Two RK45 implementations at the same tolerance agree to about the tolerance.
        let agree = if dtype == DType::F64 {
            (rtol * 30.0).max(1e-8)
        } else {
            2e-3
        };
        let abs = |a: &[f64], b: &[f64]| a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f64::max);
        let reference = floats(&case["logp_nats"]);
        assert!(
            abs(&out.log_prob, &reference) < agree,
            "{name}: log p {:?} vs {:?}",
            out.log_prob,
            reference
        );
        let delta = floats(&case["delta_logp"]);
        assert!(
            abs(&out.delta, &delta) < agree,
            "{name}: Δ {:?} vs {delta:?}",
            out.delta
        );
        // The ODE part is exact up to the tolerance: log p_T(x_T) + Δ = log p_ε(x).
        let latent_logp = to_f64(&oracle.log_prob(out.latent.clone(), level_at(&likelihood.sde, 1.0)));
        let exact = floats(&case["oracle"]["logp_eps"]);
        let composed: Vec<f64> = latent_logp.iter().zip(&out.delta).map(|(a, b)| a + b).collect();
        assert!(
            abs(&composed, &exact) < agree * 10.0,
            "{name}: {composed:?} vs exact {exact:?}"
        );
        // bits/dim with score_sde's offset (data on [0, 1]: 8 bits).
        let q = Quantization {
            bits: 8,
            centered: false,
        };
        let bpd: Vec<f64> = reference.iter().map(|&l| bits_per_dim(l, 2, q)).collect();
        assert_close(
            &format!("{name} bpd"),
            &bpd,
            &floats(&case["bpd_returned"]),
            1e-13,
        );
    }
}

fn level_at(sde: &Sde, t: f64) -> diffusion_samplers::NoiseLevel {
    let (alpha, sigma) = sde.marginal(t);
    diffusion_samplers::NoiseLevel {
        alpha,
        sigma,
        timestep: None,
    }
}

#[test]
fn every_sde_kind_parses() {
    for (name, kind) in [
        ("vp", SdeKind::Vp),
        ("subvp", SdeKind::SubVp),
        ("ve", SdeKind::Ve),
    ] {
        assert_eq!(name.parse::<SdeKind>().unwrap(), kind);
    }
    assert!("vx".parse::<SdeKind>().unwrap_err().contains("vp, subvp or ve"));
}
