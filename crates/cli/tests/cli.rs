//! The `diffusion` command end to end, against the committed reference fixtures.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use diffusion_core::npy::NpyArray;
use serde_json::Value;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}

fn fixture(name: &str) -> Value {
    serde_json::from_str(&std::fs::read_to_string(fixtures().join(name)).unwrap()).unwrap()
}

fn run(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_diffusion"))
        .args(args)
        .output()
        .unwrap()
}

/// [`run`], which must succeed (its stderr is the failure message).
fn run_ok(args: &[&str]) -> Output {
    let result = run(args);
    assert!(
        result.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&result.stderr)
    );
    result
}

fn rows(v: &Value) -> (Vec<f64>, usize) {
    let rows = v.as_array().unwrap();
    (
        rows.iter()
            .flat_map(|r| r.as_array().unwrap().iter().map(|x| x.as_f64().unwrap()))
            .collect(),
        rows.len(),
    )
}

fn max_rel(a: &[f64], b: &[f64]) -> f64 {
    let scale = b.iter().fold(0.0f64, |m, x| m.max(x.abs()));
    a.iter().zip(b).fold(0.0f64, |m, (x, y)| m.max((x - y).abs())) / scale
}

struct Dir(PathBuf);

impl Dir {
    fn new(tag: &str) -> Self {
        let d = std::env::temp_dir().join(format!("diffusion-cli-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        Self(d)
    }
    fn path(&self, f: &str) -> String {
        self.0.join(f).to_str().unwrap().to_string()
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn case(name: &str) -> Value {
    fixture("samplers.json")["cases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no case {name}"))
        .clone()
}

/// Writes the oracle and a case's z; returns their paths.
fn inputs(dir: &Dir, case: &Value) -> (String, String) {
    let (z, n) = rows(&case["z"]);
    let z_path = dir.path("z.npy");
    NpyArray::from_f64(vec![n, z.len() / n], z)
        .unwrap()
        .write(&z_path)
        .unwrap();
    (
        fixtures().join("gmm2d.json").to_str().unwrap().to_string(),
        z_path,
    )
}

#[test]
fn samples_like_k_diffusion() {
    let dir = Dir::new("kd");
    for (name, sampler, extra) in [
        ("k-diffusion/dpmpp_2m/karras25", "dpmpp-2m", vec!["--steps", "25"]),
        ("k-diffusion/heun/karras10", "heun", vec!["--steps", "10"]),
        (
            "k-diffusion/lms/karras10",
            "lms",
            vec!["--steps", "10", "--order", "4"],
        ),
        ("k-diffusion/dpm_fast/nfe10", "dpm-fast", vec!["--nfe", "10"]),
        ("k-diffusion/dpm_adaptive/default", "dpm-adaptive", vec![]),
    ] {
        let c = case(name);
        let (oracle, z) = inputs(&dir, &c);
        let out = dir.path("x.npy");
        let mut args = vec![
            "sample",
            "--oracle",
            &oracle,
            "--init-noise",
            &z,
            "--out",
            &out,
            "--sampler",
            sampler,
        ];
        args.extend(extra);
        let result = run_ok(&args);
        let x = NpyArray::read(&out).unwrap().to_f64();
        let dev = max_rel(&x, &rows(&c["x_final"]).0);
        assert!(dev < 1e-7, "{name}: {dev:.2e}");
        let stderr = String::from_utf8_lossy(&result.stderr);
        assert!(stderr.contains(&format!("NFE {}", c["nfe"])), "{name}: {stderr}");
    }
}

#[test]
fn samples_like_a_diffusers_scheduler_config() {
    let dir = Dir::new("df");
    for name in [
        "diffusers/euler/eps/karras/N10",
        "diffusers/dpmsolver_multistep/eps/dpmsolver++/o3/N10",
        "diffusers/unipc/eps/bh2/N10",
        "diffusers/flow_match_euler/shift3/N10",
        "diffusers/ddim/eps/trailing/alpha_one_True/eta0/N10",
    ] {
        let c = case(name);
        let (oracle, z) = inputs(&dir, &c);
        let config = dir.path("scheduler_config.json");
        std::fs::write(&config, c["config"].to_string()).unwrap();
        let out = dir.path("x.npy");
        let steps = c["num_inference_steps"].to_string();
        run_ok(&[
            "sample",
            "--oracle",
            &oracle,
            "--init-noise",
            &z,
            "--out",
            &out,
            "--scheduler-config",
            &config,
            "--steps",
            &steps,
        ]);
        let dev = max_rel(&NpyArray::read(&out).unwrap().to_f64(), &rows(&c["x_final"]).0);
        assert!(dev < 1e-7, "{name}: {dev:.2e}");
        // f32 against diffusers' own float32 run.
        let result = run(&[
            "sample",
            "--oracle",
            &oracle,
            "--init-noise",
            &z,
            "--out",
            &out,
            "--scheduler-config",
            &config,
            "--steps",
            &steps,
            "--dtype",
            "f32",
        ]);
        assert!(result.status.success());
        let x = NpyArray::read(&out).unwrap();
        assert_eq!(x.dtype(), burn::tensor::DType::F32);
        let dev = max_rel(&x.to_f64(), &rows(&c["x_final_f32"]).0);
        assert!(dev < 1e-3, "{name} f32: {dev:.2e}");
    }
}

#[test]
fn schedule_prints_diffusers_fields() {
    let dir = Dir::new("sch");
    let all = fixture("schedules.json");
    let t = all["timesteps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["scheduler"] == "EulerDiscreteScheduler" && c["config"]["timestep_spacing"] == "leading")
        .unwrap();
    let mut config = t["config"].clone();
    config["_class_name"] = "EulerDiscreteScheduler".into();
    let path = dir.path("cfg.json");
    std::fs::write(&path, config.to_string()).unwrap();
    let steps = t["num_inference_steps"].to_string();
    let out = run_ok(&[
        "schedule",
        "--scheduler-config",
        &path,
        "--steps",
        &steps,
        "--json",
    ]);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    for key in [
        "betas",
        "alphas_cumprod",
        "timesteps",
        "sigmas",
        "init_noise_sigma",
    ] {
        assert!(!v[key].is_null(), "{key} missing");
    }
    let ours: Vec<f64> = v["sigmas"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect();
    let reference: Vec<f64> = t["sigmas"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect();
    assert!(max_rel(&ours, &reference) < 1e-12);
    assert!((v["init_noise_sigma"].as_f64().unwrap() - t["init_noise_sigma"].as_f64().unwrap()).abs() < 1e-9);
    let out = run(&[
        "schedule",
        "--sigmas",
        "karras:n=10,min=0.002,max=80,rho=7",
        "--json",
    ]);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let karras = &fixture("schedules.json")["karras"][0];
    let ours: Vec<f64> = v["sigmas"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect();
    let reference: Vec<f64> = karras["sigmas"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect();
    assert!(max_rel(&ours, &reference) < 1e-12);
}

#[test]
fn bad_input_is_one_message_exit_2_and_nothing_written() {
    let dir = Dir::new("bad");
    let c = case("k-diffusion/euler/karras10");
    let (oracle, z) = inputs(&dir, &c);
    let out = dir.path("never.npy");
    let wrong_shape = dir.path("wrong.npy");
    NpyArray::from_f64(vec![2, 3], vec![0.0; 6])
        .unwrap()
        .write(&wrong_shape)
        .unwrap();
    let bad_json = dir.path("bad.json");
    std::fs::write(&bad_json, "{\"weights\": [1.0], \"means\": [[0.0]]").unwrap();
    let bad_config = dir.path("cfg.json");
    std::fs::write(&bad_config, "{\"_class_name\": \"KarrasVeScheduler\"}").unwrap();
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["--sampler", "magic"], "unknown sampler `magic`"),
        (
            vec!["--sampler", "euler", "--eta", "1"],
            "--eta does not apply to --sampler euler",
        ),
        (
            vec!["--sampler", "euler", "--steps", "5", "--sigmas", "3,1,0"],
            "not both",
        ),
        (
            vec!["--sampler", "euler", "--sigmas", "karras:n=5"],
            "missing `min=`",
        ),
        (
            vec!["--sampler", "ddim", "--steps", "2000"],
            "2000 inference steps",
        ),
        (
            vec!["--scheduler-config", &bad_config, "--steps", "5"],
            "KarrasVeScheduler` is not supported",
        ),
        (
            vec!["--sampler", "euler", "--oracle-form", "vp-x"],
            "unknown --oracle-form",
        ),
        (vec![], "give --sampler NAME or --scheduler-config FILE"),
        (
            vec!["--sampler", "pc", "--sde", "vp", "--sigma-min", "0.1"],
            "VP and sub-VP use β",
        ),
        (
            vec!["--sampler", "pc", "--sde", "subvp", "--predictor", "ancestral"],
            "sub-VP",
        ),
        (
            vec!["--sampler", "pc", "--predictor", "leapfrog"],
            "unknown predictor",
        ),
        (vec!["--sampler", "euler", "--snr", "0.1"], "--snr does not apply"),
        (
            vec!["--sampler", "ald", "--sigma-min", "2", "--sigma-max", "1"],
            "0 < --sigma-min < --sigma-max",
        ),
    ];
    for (extra, message) in cases {
        let mut args = vec!["sample", "--oracle", &oracle, "--init-noise", &z, "--out", &out];
        args.extend(extra.iter().copied());
        let r = run(&args);
        let stderr = String::from_utf8_lossy(&r.stderr);
        assert_eq!(r.status.code(), Some(2), "{extra:?}: {stderr}");
        assert!(stderr.contains(message), "{extra:?}: {stderr}");
        assert!(!Path::new(&out).exists(), "{extra:?} wrote a file");
    }
    for (args, message) in [
        (
            vec![
                "sample",
                "--oracle",
                &oracle,
                "--init-noise",
                &wrong_shape,
                "--out",
                &out,
                "--sampler",
                "euler",
            ],
            "expected shape [n, 2]",
        ),
        (
            vec![
                "sample",
                "--oracle",
                &bad_json,
                "--init-noise",
                &z,
                "--out",
                &out,
                "--sampler",
                "euler",
            ],
            "bad.json",
        ),
        (
            vec![
                "sample",
                "--oracle",
                &oracle,
                "--init-noise",
                &z,
                "--out",
                &out,
                "--sampler",
                "euler",
                "--dtype",
                "f16",
            ],
            "expected f32 or f64",
        ),
    ] {
        let r = run(&args);
        let stderr = String::from_utf8_lossy(&r.stderr);
        assert_eq!(r.status.code(), Some(2), "{stderr}");
        assert!(stderr.contains(message), "{stderr}");
        assert!(!Path::new(&out).exists());
    }
}

#[test]
fn every_named_sampler_runs_and_flow_odes_reach_the_data() {
    let dir = Dir::new("all");
    let c = case("k-diffusion/euler/karras10");
    let (oracle, z) = inputs(&dir, &c);
    let out = dir.path("x.npy");
    for name in diffusion_cli::SAMPLER_NAMES {
        let mut args = vec![
            "sample",
            "--oracle",
            &oracle,
            "--init-noise",
            &z,
            "--out",
            &out,
            "--sampler",
            name,
            "--final-denoise",
        ];
        if name.starts_with("ode-") || name == "flow-euler" {
            args.extend(["--oracle-form", "flow"]);
        }
        if name == "ddpm" {
            args.extend(["--steps", "100"]);
        }
        if name == "em" {
            // Euler–Maruyama is first order in √h: it needs many steps.
            args.extend(["--steps", "500"]);
        }
        run_ok(&args);
        let x = NpyArray::read(&out).unwrap().to_f64();
        // Every sample lands near one of the three means (±2.5 of their spread).
        let means = [(-2.0, 0.0), (1.5, 1.5), (1.0, -2.0)];
        for p in x.chunks(2) {
            let near = means
                .iter()
                .any(|m| ((p[0] - m.0).powi(2) + (p[1] - m.1).powi(2)).sqrt() < 1.6);
            assert!(near, "{name}: sample {p:?} is far from every mode");
        }
    }
}

#[test]
fn a_score_sde_ve_scheduler_config_runs_the_pc_loop() {
    let dir = Dir::new("sdeve");
    let c = case("k-diffusion/euler/karras10");
    let (oracle, z) = inputs(&dir, &c);
    let config = dir.path("scheduler_config.json");
    let fx = fixture("score_sde.json");
    std::fs::write(&config, fx["score_sde_ve_scheduler"]["config"].to_string()).unwrap();
    let (a, b) = (dir.path("a.npy"), dir.path("b.npy"));
    let base = ["sample", "--oracle", &oracle, "--init-noise", &z, "--seed", "3"];
    let mut first = base.to_vec();
    first.extend(["--out", &a, "--scheduler-config", &config, "--steps", "50"]);
    let r = run_ok(&first);
    let stderr = String::from_utf8_lossy(&r.stderr);
    assert!(
        stderr.contains("depends on the rest of its batch") && stderr.contains("NFE 100"),
        "{stderr}"
    );
    // The same sampler by name: VE σ ∈ [0.01, 50], r = 0.15, N = 50.
    let mut second = base.to_vec();
    second.extend([
        "--out",
        &b,
        "--sampler",
        "pc",
        "--steps",
        "50",
        "--snr",
        "0.15",
        "--sigma-max",
        "50",
    ]);
    run_ok(&second);
    let (xa, xb) = (
        NpyArray::read(&a).unwrap().to_f64(),
        NpyArray::read(&b).unwrap().to_f64(),
    );
    assert_eq!(xa, xb, "the scheduler config and --sampler pc agree bit for bit");
}

#[test]
fn likelihood_matches_score_sde_and_its_estimators_agree() {
    let dir = Dir::new("ll");
    let fx = fixture("score_sde.json");
    let case = fx["likelihood"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "likelihood/VPSDE/tol=1e-9")
        .unwrap()
        .clone();
    let (x, n) = rows(&case["data"]);
    let data = dir.path("x.npy");
    NpyArray::from_f64(vec![n, 2], x).unwrap().write(&data).unwrap();
    let oracle = fixtures().join("gmm2d.json").to_str().unwrap().to_string();
    let out = dir.path("ll.npy");
    let reference: Vec<f64> = case["logp_nats"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    let base = [
        "likelihood",
        "--oracle",
        &oracle,
        "--data",
        &data,
        "--out",
        &out,
        "--sde",
        "vp",
    ];
    for (extra, tol) in [
        (vec!["--rtol", "1e-9", "--atol", "1e-9"], 1e-7),
        (vec!["--rtol", "1e-7", "--atol", "1e-7", "--exact-trace"], 1e-5),
        (vec!["--hutchinson", "256", "--seed", "1"], 0.1),
    ] {
        let mut args = base.to_vec();
        args.extend(extra.iter().copied());
        let r = run_ok(&args);
        let stdout = String::from_utf8_lossy(&r.stdout);
        assert!(stdout.contains("bits/dim"), "{stdout}");
        let ll = NpyArray::read(&out).unwrap().to_f64();
        let err = ll
            .iter()
            .zip(&reference)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f64::max);
        assert!(err < tol, "{extra:?}: log p off by {err:e}");
    }
    let bad = dir.path("bad.npy");
    NpyArray::from_f64(vec![2, 3], vec![0.0; 6])
        .unwrap()
        .write(&bad)
        .unwrap();
    for (extra, message) in [
        (vec!["--hutchinson", "0"], "at least 1 probe"),
        (vec!["--sigma-min", "0.1"], "VP and sub-VP use β"),
    ] {
        let never = dir.path("never.npy");
        let mut args = vec![
            "likelihood",
            "--oracle",
            &oracle,
            "--data",
            &data,
            "--out",
            &never,
            "--sde",
            "vp",
        ];
        args.extend(extra.iter().copied());
        let r = run(&args);
        assert_eq!(r.status.code(), Some(2));
        assert!(
            String::from_utf8_lossy(&r.stderr).contains(message),
            "{}",
            String::from_utf8_lossy(&r.stderr)
        );
        assert!(!Path::new(&never).exists());
    }
    let r = run(&["likelihood", "--oracle", &oracle, "--data", &bad, "--out", &out]);
    assert_eq!(r.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&r.stderr).contains("expected shape [n, 2]"));
}

#[test]
fn model_info_prints_exact_parameter_counts() {
    for (model, count) in [
        ("ddpm-cifar10", "35,746,307"),
        ("adm-imagenet64", "295,904,454"),
        ("dit-xl-2", "675,129,632"),
    ] {
        let r = run_ok(&["model-info", model]);
        let out = String::from_utf8_lossy(&r.stdout);
        assert!(out.contains(count), "{model}: {out}");
    }
    let folder = fixtures().join("backbones/unet_adm");
    let r = run(&["model-info", folder.to_str().unwrap()]);
    assert!(String::from_utf8_lossy(&r.stdout).contains("829,638"));
    let r = run(&["model-info", "unet-9000"]);
    assert_eq!(r.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&r.stderr).contains("unknown preset"));
}

#[test]
fn sampling_a_diffusers_model_folder_matches_the_pipeline() {
    let dir = Dir::new("model");
    let fx = fixture("backbones/ddim_pipeline.json");
    let config = dir.path("scheduler_config.json");
    std::fs::write(&config, fx["scheduler_config"].to_string()).unwrap();
    // The pipeline's initial noise, from its safetensors (F32, [2, 3, 16, 16]).
    let bytes = std::fs::read(fixtures().join("backbones/ddim_pipeline.safetensors")).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    let read = |name: &str| -> Vec<f64> {
        let o = header[name]["data_offsets"].as_array().unwrap();
        let (a, b) = (o[0].as_u64().unwrap() as usize, o[1].as_u64().unwrap() as usize);
        bytes[8 + n + a..8 + n + b]
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()) as f64)
            .collect()
    };
    let noise = dir.path("noise.npy");
    NpyArray::from_f64(vec![2, 3, 16, 16], read("init_noise"))
        .unwrap()
        .write(&noise)
        .unwrap();
    let (out, grid) = (dir.path("x.npy"), dir.path("grid.png"));
    let model = fixtures().join("backbones/unet_ddpm");
    run_ok(&[
        "sample",
        "--model",
        model.to_str().unwrap(),
        "--scheduler-config",
        &config,
        "--steps",
        "10",
        "--init-noise",
        &noise,
        "--out",
        &out,
        "--grid",
        &grid,
    ]);
    let x = NpyArray::read(&out).unwrap().to_f64();
    let want = read("x_final");
    let err = x
        .iter()
        .zip(&want)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f64::max);
    assert!(
        err < 1e-3,
        "DDIM through the command line differs from diffusers by {err}"
    );
    assert!(
        std::fs::metadata(&grid).unwrap().len() > 100,
        "the PNG grid is written"
    );
    // A named sampler on the same model, and the errors of bad combinations.
    run_ok(&[
        "sample",
        "--model",
        model.to_str().unwrap(),
        "--sampler",
        "dpmpp-2m",
        "--steps",
        "5",
        "--num-samples",
        "3",
        "--out",
        &out,
    ]);
    assert_eq!(NpyArray::read(&out).unwrap().shape, vec![3, 768]);
    for (extra, message) in [
        (
            vec!["--dtype", "f64", "--sampler", "ddim", "--num-samples", "2"],
            "models run in f32",
        ),
        (
            vec!["--num-samples", "2"],
            "give --sampler NAME or --scheduler-config FILE",
        ),
        (
            vec![
                "--sampler",
                "ddim",
                "--num-samples",
                "2",
                "--prediction",
                "banana",
            ],
            "--prediction",
        ),
    ] {
        let never = dir.path("never.npy");
        let mut args = vec!["sample", "--model", model.to_str().unwrap(), "--out", &never];
        args.extend(extra.iter().copied());
        let r = run(&args);
        assert_eq!(r.status.code(), Some(2), "{extra:?}");
        assert!(
            String::from_utf8_lossy(&r.stderr).contains(message),
            "{extra:?}: {}",
            String::from_utf8_lossy(&r.stderr)
        );
        assert!(!Path::new(&never).exists());
    }
}

/// `diffusion sample --model MODEL --sampler ddpm --steps STEPS --out OUT`.
fn ddpm_sample<'a>(model: &'a Path, steps: &'a str, out: &'a str) -> Vec<&'a str> {
    let model = model.to_str().unwrap();
    vec![
        "sample",
        "--model",
        model,
        "--sampler",
        "ddpm",
        "--steps",
        steps,
        "--out",
        out,
    ]
}

/// A class-conditional U-Net (diffusers' ADM-style fixture, 10 classes) samples only with a
/// label it has; an unconditional one takes none.
#[test]
fn class_labels_are_checked_against_the_model() {
    let dir = Dir::new("labels");
    let out = dir.path("x.npy");
    let sample = |model: &str, label: Option<&str>| {
        let model = fixtures().join("backbones").join(model);
        let mut args = ddpm_sample(&model, "2", &out);
        args.extend(["--num-samples", "2"]);
        if let Some(k) = label {
            args.extend(["--class-label", k]);
        }
        run(&args)
    };
    for (model, label, message) in [
        ("unet_adm", None, "give --class-label K, 0 ≤ K < 10"),
        ("unet_adm", Some("10"), "the model has labels 0 … 9"),
        ("unet_ddpm", Some("0"), "not class-conditional"),
    ] {
        let r = sample(model, label);
        assert_eq!(r.status.code(), Some(2), "{model} {label:?}");
        let stderr = String::from_utf8_lossy(&r.stderr);
        assert!(stderr.contains(message), "{model} {label:?}: {stderr}");
        assert!(!Path::new(&out).exists());
    }
    let r = sample("unet_adm", Some("3"));
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    assert_eq!(NpyArray::read(&out).unwrap().shape, vec![2, 768]);
}

#[test]
fn sharded_sampling_reproduces_the_whole_run() {
    let dir = Dir::new("shards");
    let model = fixtures().join("backbones/unet_ddpm");
    let sample = |seeds: &str, shard: Option<&str>, out: &str| {
        let mut args = ddpm_sample(&model, "4", out);
        args.extend(["--seeds", seeds]);
        if let Some(s) = shard {
            args.extend(["--shard", s]);
        }
        run_ok(&args);
        NpyArray::read(out).unwrap()
    };
    let whole = sample("10-14", None, &dir.path("whole.npy"));
    assert_eq!(whole.shape, vec![5, 768]);
    let mut joined = Vec::new();
    for i in 0..3 {
        let part = sample(
            "10-14",
            Some(&format!("{i}/3")),
            &dir.path(&format!("part-{i}.npy")),
        );
        joined.extend(part.to_f64());
    }
    // Each sample's initial and ancestral noise are its own streams: the shards are the run
    // (up to the batch size's effect on the network's float sums).
    let err = max_rel(&joined, &whole.to_f64());
    assert!(err < 1e-4, "shards differ from the whole run by {err}");
    let r = run(&[
        "sample",
        "--model",
        model.to_str().unwrap(),
        "--sampler",
        "ddpm",
        "--seeds",
        "0-9",
        "--shard",
        "3/3",
        "--out",
        &dir.path("x.npy"),
    ]);
    assert_eq!(r.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&r.stderr).contains("0 ≤ I < N"));
}

/// The benchmarks build and run one iteration each, on the backend under test
/// (`DIFFUSION_BACKEND`, default flex); their speed is reported, never asserted.
#[test]
fn benchmarks_run_one_iteration() {
    let backend = std::env::var("DIFFUSION_BACKEND").unwrap_or_else(|_| "flex".into());
    let dir = Dir::new("bench");
    let json = dir.path("train.json");
    for args in [
        vec!["bench", "matmul", "--size", "64", "--iters", "1"],
        vec![
            "bench",
            "train",
            "--model",
            "dit-s-8",
            "--in-channels",
            "3",
            "--classes",
            "10",
            "--batch",
            "1",
            "--iters",
            "1",
            "--warmup",
            "0",
            "--json",
            json.as_str(),
        ],
        vec![
            "bench",
            "sample",
            "--model",
            "ddpm-cifar10",
            "--batch",
            "1",
            "--iters",
            "1",
            "--warmup",
            "0",
        ],
        vec![
            "bench",
            "samplers",
            "--steps",
            "4",
            "--batch",
            "2",
            "--features",
            "8",
            "--samplers",
            "ddim",
            "heun",
            "dpmpp-2m",
        ],
        vec!["bench", "kernels", "--batch", "1", "--iters", "1"],
    ] {
        let mut args = args;
        args.extend(["--backend", backend.as_str()]);
        let out = run_ok(&args);
        let stdout = String::from_utf8_lossy(&out.stdout);
        let expected = match args[1] {
            "kernels" => "conv 3×3 32→32",
            "samplers" => "ms/step",
            _ => "GFLOP/s",
        };
        assert!(stdout.contains(expected), "{stdout}");
    }
    let record: Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(record["iters"], 1);
    assert!(record["median_s"].as_f64().unwrap() > 0.0);
    // DiT-S/8 on 32×32×3: 16 tokens; its FLOP count is the configuration's.
    assert!(record["gflop_per_image"].as_f64().unwrap() > 0.0);
    let bad = run(&["bench", "train", "--model", "ddpm-cifar10", "--in-channels", "3"]);
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("DiT presets only"));
}
