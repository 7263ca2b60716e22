//! Every experiment binary runs end to end on tiny settings and writes its run folder.

use std::process::Command;

fn run(bin: &str, args: &[&str]) -> std::process::Output {
    Command::new(bin)
        .args(args)
        .output()
        .expect("the experiment binary runs")
}

/// The run folder's `metrics.json`.
fn metrics_of(out: &std::path::Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(out.join("metrics.json")).unwrap()).unwrap()
}

/// Every one of `files` exists under `out` (`what` names the run in the failure).
fn assert_written(out: &std::path::Path, files: &[&str], what: &str) {
    for file in files {
        assert!(out.join(file).exists(), "{what}: {file} missing");
    }
}

/// `bin --smoke --out OUT --set S…` followed by `extra`, which must succeed.
fn smoke_ok(bin: &str, out: &std::path::Path, sets: &[&str], extra: &[&str]) -> std::process::Output {
    let mut args = vec!["--smoke", "--out", out.to_str().unwrap()];
    for set in sets {
        args.extend(["--set", set]);
    }
    args.extend(extra);
    run_ok(bin, &args)
}

/// [`run`], which must succeed (its stderr is the failure message).
fn run_ok(bin: &str, args: &[&str]) -> std::process::Output {
    let result = run(bin, args);
    assert!(
        result.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&result.stderr)
    );
    result
}

#[test]
fn toy2d_writes_its_run_folder() {
    let out = std::env::temp_dir().join(format!("toy2d-smoke-{}", std::process::id()));
    run_ok(
        env!("CARGO_BIN_EXE_toy2d"),
        &[
            "--out",
            out.to_str().unwrap(),
            "--set",
            "train.steps=20",
            "--set",
            "train.log_every=10",
            "--set",
            "sample.steps=20",
            "--set",
            "sample.num_samples=64",
            "--set",
            "eval.reference_size=64",
            "--set",
            "data.name=checkerboard",
        ],
    );
    assert_written(
        &out,
        &[
            "config.toml",
            "loss.csv",
            "loss.png",
            "samples.npy",
            "samples.png",
            "metrics.json",
        ],
        "",
    );
    let metrics = metrics_of(&out);
    assert_eq!(metrics["nfe"], 20);
    assert!(metrics["sliced_wasserstein"].as_f64().unwrap().is_finite());
    let config = std::fs::read_to_string(out.join("config.toml")).unwrap();
    assert!(
        config.contains("checkerboard") && config.contains("steps = 20"),
        "{config}"
    );
    std::fs::remove_dir_all(&out).unwrap();
}

#[test]
fn bad_options_are_one_clear_error() {
    let out = std::env::temp_dir().join(format!("toy2d-bad-{}", std::process::id()));
    for (args, message) in [
        (vec!["--set", "train.stepz=5"], "unknown key `stepz`"),
        (vec!["--set", "train.steps=many"], "expected a integer"),
        (vec!["--set", "data.name=circles"], "unknown 2-D data set"),
        (vec!["--backend", "tpu"], "unknown backend"),
        (vec!["--set", "sample.sampler=euler"], "expected ddpm or ddim"),
    ] {
        let mut all = vec!["--out", out.to_str().unwrap(), "--set", "train.steps=1"];
        all.extend(args);
        let result = run(env!("CARGO_BIN_EXE_toy2d"), &all);
        let stderr = String::from_utf8_lossy(&result.stderr);
        assert!(!result.status.success(), "{all:?} succeeded");
        assert!(stderr.contains(message), "{all:?}: {stderr}");
    }
    let _ = std::fs::remove_dir_all(&out);
}

#[test]
fn flow2d_writes_its_run_folder() {
    let out = std::env::temp_dir().join(format!("flow2d-smoke-{}", std::process::id()));
    run_ok(
        env!("CARGO_BIN_EXE_flow2d"),
        &[
            "--out",
            out.to_str().unwrap(),
            "--set",
            "train.steps=20",
            "--set",
            "train.log_every=10",
            "--set",
            "reflow.steps=10",
            "--set",
            "reflow.pairs=256",
            "--set",
            "reflow.solver_steps=4",
            "--set",
            "eval.steps=[1, 4]",
            "--set",
            "eval.num_samples=64",
            "--set",
            "eval.reference_size=64",
            "--set",
            "eval.trajectories=8",
        ],
    );
    assert_written(
        &out,
        &[
            "config.toml",
            "loss.csv",
            "metrics.json",
            "table.md",
            "sw_vs_steps.png",
            "trajectories.png",
            "reflow-pairs/x0.npy",
            "reflow-pairs/x1.npy",
        ],
        "",
    );
    let metrics = metrics_of(&out);
    for method in ["cfm", "ot-cfm", "rf2"] {
        let sw = &metrics["methods"][method]["sliced_wasserstein"];
        assert!(
            sw["1"].as_f64().unwrap().is_finite() && sw["4"].as_f64().unwrap().is_finite(),
            "{metrics}"
        );
    }
    std::fs::remove_dir_all(&out).unwrap();
}

/// `--smoke`: data in the real format, a few steps with checkpoints and grids, then a resume
/// that extends the run, sampling and the bound.
/// `ddpm`: the run exports a diffusers scheduler; `bpd`: it reports bits/dim (the DDPM bound,
/// or the probability-flow likelihood of score SDEs).
fn image_smoke(bin: &str, name: &str, ddpm: bool, bpd: bool) {
    let out = std::env::temp_dir().join(format!("{name}-smoke-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    smoke_ok(bin, &out, &["train.steps=2"], &[]);
    assert!(out.join("checkpoints/step-00000002").is_dir());
    let resumed = run(
        bin,
        &["--resume", out.to_str().unwrap(), "--set", "train.steps=4"],
    );
    let stderr = String::from_utf8_lossy(&resumed.stderr);
    let stdout = String::from_utf8_lossy(&resumed.stdout);
    assert!(resumed.status.success(), "{stderr}");
    assert!(
        format!("{stdout}{stderr}").contains("resumed at step 2"),
        "{stdout}{stderr}"
    );
    assert_written(
        &out,
        &[
            "config.toml",
            "metrics.jsonl",
            "loss.png",
            "samples.npy",
            "samples.png",
            "metrics.json",
            "samples/step-00000002.png",
            "samples/step-00000004.png",
            "checkpoints/step-00000004/state.json",
            "model/model.json",
            "model/model.safetensors",
        ],
        name,
    );
    // Only the DDPM family has a diffusers scheduler and the variational bound.
    assert_eq!(out.join("model/scheduler_config.json").exists(), ddpm, "{name}");
    let metrics = metrics_of(&out);
    assert_eq!(metrics["steps"], 4);
    // Only class-conditional models (here the DiT and shapes) sample with guidance.
    let guided = matches!(name, "cifar-dit" | "shapes");
    assert_eq!(metrics["guidance_scale"].is_null(), !guided, "{metrics}");
    assert_eq!(metrics["num_samples"], 6);
    if bpd {
        assert!(metrics["bits_per_dim"].as_f64().unwrap() > 0.0, "{metrics}");
    } else {
        assert!(metrics["bits_per_dim"].is_null(), "{metrics}");
    }
    assert!(metrics["final_loss"].as_f64().unwrap().is_finite());
    let log = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap();
    assert_eq!(
        log.lines().count(),
        4,
        "one record per step across the resume: {log}"
    );
    std::fs::remove_dir_all(&out).unwrap();
}

#[test]
fn cifar_ddpm_smoke_runs_the_whole_pipeline() {
    image_smoke(env!("CARGO_BIN_EXE_cifar-ddpm"), "cifar-ddpm", true, true);
}

#[test]
fn cifar_improved_smoke_runs_the_whole_pipeline() {
    image_smoke(env!("CARGO_BIN_EXE_cifar-improved"), "cifar-improved", true, true);
}

#[test]
fn shapes_smoke_runs_the_whole_pipeline() {
    image_smoke(env!("CARGO_BIN_EXE_shapes"), "shapes", false, false);
}

/// `model.class_conditional`: the U-Net gets a class table with a null row (3 shapes + 1) and
/// samples with classifier-free guidance, so the guidance scale changes what the same trained
/// weights draw (it could not if the labels did not reach the network).
#[test]
fn shapes_trains_a_class_conditional_unet_and_guides_it() {
    let samples = |scale: &str| {
        let out = std::env::temp_dir().join(format!("shapes-cfg-{scale}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&out);
        let guidance = format!("sample.guidance_scale={scale}");
        smoke_ok(
            env!("CARGO_BIN_EXE_shapes"),
            &out,
            &["train.steps=2", "model.class_conditional=true", &guidance],
            &[],
        );
        let model = std::fs::read_to_string(out.join("model/model.json")).unwrap();
        assert!(model.contains("\"num_class_embeds\": 4"), "{model}");
        let scale: f64 = scale.parse().unwrap();
        assert_eq!(metrics_of(&out)["guidance_scale"], scale);
        let drawn = std::fs::read(out.join("samples.npy")).unwrap();
        std::fs::remove_dir_all(&out).unwrap();
        drawn
    };
    let conditional = samples("1.0");
    assert_eq!(conditional, samples("1.0"), "a seeded run draws the same samples");
    assert_ne!(conditional, samples("3.0"), "guidance changes the samples");
}

#[test]
fn cifar_dit_smoke_runs_the_whole_pipeline() {
    image_smoke(env!("CARGO_BIN_EXE_cifar-dit"), "cifar-dit", true, true);
}

#[test]
fn cifar_ncsn_smoke_runs_the_whole_pipeline() {
    image_smoke(env!("CARGO_BIN_EXE_cifar-ncsn"), "cifar-ncsn", false, false);
}

#[test]
fn cifar_sde_smoke_runs_the_whole_pipeline() {
    image_smoke(env!("CARGO_BIN_EXE_cifar-sde"), "cifar-sde", false, true);
}

#[test]
fn cifar_edm_smoke_runs_the_whole_pipeline() {
    image_smoke(env!("CARGO_BIN_EXE_cifar-edm"), "cifar-edm", false, false);
}

#[test]
fn cifar_flow_smoke_runs_the_whole_pipeline() {
    image_smoke(env!("CARGO_BIN_EXE_cifar-flow"), "cifar-flow", false, true);
}

#[test]
fn image_experiments_check_their_configuration_before_training() {
    let out = std::env::temp_dir().join(format!("shapes-bad-{}", std::process::id()));
    let shapes = env!("CARGO_BIN_EXE_shapes");
    // (binary, --set overrides, what the error says)
    for (bin, sets, message) in [
        (
            shapes,
            vec!["diffusion.loss=\"simple\"", "sample.sampler=euler"],
            "expected ddpm or ddim",
        ),
        (
            shapes,
            vec!["diffusion.schedule=sigmoid"],
            "expected linear or cosine",
        ),
        (
            shapes,
            vec!["data.name=imagenet"],
            "expected cifar10, shapes or folder",
        ),
        (shapes, vec!["model.attention=[true]"], "one entry per level"),
        (
            shapes,
            vec!["diffusion.weighting=\"min-snr\""],
            "expected uniform, snr, min-snr-γ",
        ),
        (shapes, vec!["model.class_dropout=0.0"], "must lie in (0, 1)"),
        (
            shapes,
            vec!["sample.guidance_scale=-1.0"],
            "must be finite and ≥ 0",
        ),
        (
            shapes,
            vec!["model.preset=\"dit-s-2\"", "model.class_conditional=false"],
            "is a class-conditional DiT",
        ),
        (
            env!("CARGO_BIN_EXE_cifar-flow"),
            vec!["reflow.rounds=1", "model.class_conditional=true"],
            "needs an unconditional flow",
        ),
    ] {
        let mut all = vec!["--smoke", "--out", out.to_str().unwrap()];
        all.extend(sets.iter().flat_map(|s| ["--set", s]));
        let result = run(bin, &all);
        let stderr = String::from_utf8_lossy(&result.stderr);
        assert!(!result.status.success(), "{all:?} succeeded");
        assert!(stderr.contains(message), "{all:?}: {stderr}");
        assert!(
            !out.join("checkpoints").exists(),
            "{all:?} trained before failing"
        );
    }
    let _ = std::fs::remove_dir_all(&out);
}

#[test]
fn a_missing_data_set_says_where_to_get_it() {
    let out = std::env::temp_dir().join(format!("cifar-missing-{}", std::process::id()));
    let root = out.join("nowhere");
    let result = Command::new(env!("CARGO_BIN_EXE_cifar-ddpm"))
        .env("DIFFUSION_OFFLINE", "1")
        .args([
            "--out",
            out.to_str().unwrap(),
            "--set",
            format!("data.root=\"{}\"", root.display()).as_str(),
            "--set",
            "model.channels=[16, 32]",
            "--set",
            "model.attention=[false, true]",
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&result.stderr);
    assert!(!result.status.success());
    // The error names the URL, the path to place the archive at and its MD5.
    let archive = root.join("cifar-10-binary.tar.gz");
    for part in [
        "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz",
        archive.to_str().unwrap(),
        "c32a1d4ab5d03f1284b67883e8d87530",
    ] {
        assert!(stderr.contains(part), "{part} not in: {stderr}");
    }
    let _ = std::fs::remove_dir_all(&out);
}

#[test]
fn shapes_trains_in_bf16_mixed_precision() {
    let out = std::env::temp_dir().join(format!("shapes-bf16-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    smoke_ok(env!("CARGO_BIN_EXE_shapes"), &out, &["train.precision=bf16"], &[]);
    let metrics = metrics_of(&out);
    assert!(metrics["final_loss"].as_f64().unwrap().is_finite(), "{metrics}");
    std::fs::remove_dir_all(&out).unwrap();
}

#[test]
fn guidance2d_smoke_writes_its_run_folder() {
    let out = std::env::temp_dir().join(format!("guidance2d-smoke-{}", std::process::id()));
    run_ok(
        env!("CARGO_BIN_EXE_guidance2d"),
        &["--smoke", "--out", out.to_str().unwrap()],
    );
    assert_written(
        &out,
        &[
            "config.toml",
            "metrics.json",
            "table.md",
            "cfg.png",
            "classifier.png",
            "cfgpp.png",
            "inpainting.png",
        ],
        "",
    );
    let metrics = metrics_of(&out);
    for method in ["replacement", "RePaint", "SMCDiff"] {
        assert!(
            metrics["inpainting"][method]["w1_to_exact"]
                .as_f64()
                .unwrap()
                .is_finite(),
            "{metrics}"
        );
    }
    assert!(
        metrics["classifier_free"][1]["in_class"].as_f64().unwrap() > 0.9,
        "{metrics}"
    );
    std::fs::remove_dir_all(&out).unwrap();
}

/// The per-step losses of `metrics.jsonl`.
fn logged_losses(dir: &std::path::Path) -> Vec<f64> {
    logged(dir, "loss")
}

/// The per-step values of `key` in `metrics.jsonl`.
fn logged(dir: &std::path::Path, key: &str) -> Vec<f64> {
    std::fs::read_to_string(dir.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()[key]
                .as_f64()
                .unwrap()
        })
        .collect()
}

/// `--devices 2` splits each batch over two workers (here both on the test's CPU device):
/// every example keeps its noise, timestep and label dropout, so the run takes the
/// single-device run's steps — the losses of later steps depend on every earlier update.
fn data_parallel_matches_one_device(bin: &str, name: &str) {
    let dir = |tag: &str| std::env::temp_dir().join(format!("{name}-{tag}-{}", std::process::id()));
    let (mut losses, mut norms) = (Vec::new(), Vec::new());
    for (tag, devices) in [("one", None), ("two", Some("2"))] {
        let out = dir(tag);
        let _ = std::fs::remove_dir_all(&out);
        let extra = devices.map_or(vec![], |d| vec!["--devices", d]);
        smoke_ok(bin, &out, &["train.steps=5"], &extra);
        losses.push(logged_losses(&out));
        norms.push(logged(&out, "grad_norm"));
        std::fs::remove_dir_all(&out).unwrap();
    }
    assert_eq!(losses[0].len(), 5);
    let close = |one: &[f64], two: &[f64], rel: f64| {
        let ok = one.len() == two.len() && one.iter().zip(two).all(|(a, b)| (a - b).abs() <= rel * a.abs());
        assert!(ok, "{name}: {one:?} vs {two:?}");
    };
    // The gradient norms before clipping: the scale of the summed gradients, which AdamW hides.
    close(&norms[0], &norms[1], 1e-3);
    close(&losses[0], &losses[1], 1e-4);
    // The run is not trivially the same: the loss moves from step to step.
    assert!((losses[0][0] - losses[0][4]).abs() > 1e-3, "{:?}", losses[0]);
}

/// A run stopped after 2 steps and resumed to 4 takes the uninterrupted run's steps bit for
/// bit, dropout included (cifar-ddpm's 0.1: burn's dropout draws from the backend generator,
/// which the trainer re-seeds from (seed, step, micro-batch) before every micro-batch).
#[test]
fn a_resumed_run_with_dropout_is_the_uninterrupted_run() {
    let dir = |tag: &str| std::env::temp_dir().join(format!("resume-dropout-{tag}-{}", std::process::id()));
    let (whole, parts) = (dir("whole"), dir("parts"));
    for out in [&whole, &parts] {
        let _ = std::fs::remove_dir_all(out);
    }
    let smoke = |out: &std::path::Path, steps: &str| {
        smoke_ok(env!("CARGO_BIN_EXE_cifar-ddpm"), out, &[steps], &[]);
    };
    smoke(&whole, "train.steps=4");
    smoke(&parts, "train.steps=2");
    run_ok(
        env!("CARGO_BIN_EXE_cifar-ddpm"),
        &["--resume", parts.to_str().unwrap(), "--set", "train.steps=4"],
    );
    let (a, b) = (logged_losses(&whole), logged_losses(&parts));
    assert_eq!(a.len(), 4);
    assert_eq!(a, b, "per-step losses");
    // The final samples (fixed seeds, from the final EMA weights) are the same bytes.
    let samples = |out: &std::path::Path| std::fs::read(out.join("samples.npy")).unwrap();
    assert!(samples(&whole) == samples(&parts), "the samples differ");
    for out in [&whole, &parts] {
        std::fs::remove_dir_all(out).unwrap();
    }
}

#[test]
fn data_parallel_training_takes_the_single_device_steps() {
    data_parallel_matches_one_device(env!("CARGO_BIN_EXE_shapes"), "shapes-dp");
    data_parallel_matches_one_device(env!("CARGO_BIN_EXE_cifar-dit"), "dit-dp");
}

#[test]
fn devices_that_do_not_fit_are_refused() {
    let out = std::env::temp_dir().join(format!("dp-bad-{}", std::process::id()));
    let result = run(
        env!("CARGO_BIN_EXE_shapes"),
        &["--smoke", "--out", out.to_str().unwrap(), "--devices", "3"],
    );
    let stderr = String::from_utf8_lossy(&result.stderr);
    assert!(!result.status.success());
    assert!(
        stderr.contains("does not split evenly over 3 devices"),
        "{stderr}"
    );
    let _ = std::fs::remove_dir_all(&out);
    let result = run(
        env!("CARGO_BIN_EXE_toy2d"),
        &["--out", out.to_str().unwrap(), "--devices", "flex,flex"],
    );
    let stderr = String::from_utf8_lossy(&result.stderr);
    assert!(stderr.contains("toy2d runs on one device"), "{stderr}");
    assert!(!out.exists(), "no run folder is made for a refused run");
}

/// `cifar-flow` with one reflow round: pairs drawn from the trained flow and kept, the
/// 2-rectified flow trained from it with its own checkpoints, and a resumed run that reads the
/// pairs back and continues the round's training.
#[test]
fn cifar_flow_reflows_and_resumes_the_round() {
    let bin = env!("CARGO_BIN_EXE_cifar-flow");
    let out = std::env::temp_dir().join(format!("flow-reflow-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    let reflow = [
        "--set",
        "reflow.rounds=1",
        "--set",
        "reflow.pairs=8",
        "--set",
        "reflow.steps=2",
        "--set",
        "reflow.sampler=\"ode-euler\"",
        "--set",
        "reflow.sampler_steps=3",
        "--set",
        "reflow.straightness_steps=4",
    ];
    let mut args = vec![
        "--smoke",
        "--out",
        out.to_str().unwrap(),
        "--set",
        "diffusion.loss=\"cfm\"",
    ];
    args.extend(reflow);
    run_ok(bin, &args);
    assert_written(
        &out,
        &[
            "reflow-1/pairs/x0.npy",
            "reflow-1/pairs/x1.npy",
            "reflow-1/checkpoints/step-00000002",
        ],
        "",
    );
    let metrics = metrics_of(&out);
    let round = &metrics["reflow"][0];
    assert_eq!(round["steps"], 2, "{metrics}");
    assert!(
        round["straightness_after"].as_f64().unwrap().is_finite(),
        "{metrics}"
    );
    let resumed = run_ok(
        bin,
        &["--resume", out.to_str().unwrap(), "--set", "reflow.steps=3"],
    );
    let stdout = String::from_utf8_lossy(&resumed.stdout);
    assert!(
        stdout.contains("reflow 1: pairs read") && stdout.contains("reflow 1: resumed at step 2"),
        "{stdout}"
    );
    let metrics = metrics_of(&out);
    assert_eq!(metrics["reflow"][0]["steps"], 3, "{metrics}");
    // Training the base flow further makes the kept pairs stale: refused, not reused.
    let extended = run(
        bin,
        &["--resume", out.to_str().unwrap(), "--set", "train.steps=5"],
    );
    let stderr = String::from_utf8_lossy(&extended.stderr);
    assert!(!extended.status.success());
    assert!(stderr.contains("made from another flow"), "{stderr}");
    // Reflow is refused for a family that is not a flow, before training.
    let wrong = run(
        bin,
        &[
            "--smoke",
            "--out",
            out.join("wrong").to_str().unwrap(),
            "--set",
            "diffusion.loss=\"simple\"",
            "--set",
            "sample.sampler=\"ddpm\"",
            "--set",
            "reflow.rounds=1",
        ],
    );
    let stderr = String::from_utf8_lossy(&wrong.stderr);
    assert!(stderr.contains("reflow is for flow matching"), "{stderr}");
    assert!(!out.join("wrong/checkpoints").exists());
    std::fs::remove_dir_all(&out).unwrap();
}

/// `diffusion.weighting` reaches the DDPM objective: from the same weights, data and noise the
/// first step's loss is L_simple's under `uniform` and smaller under min-SNR-5, whose ε-space
/// weights min(SNR, 5)/SNR are at most 1.
#[test]
fn loss_weighting_reaches_the_objective() {
    let mut first = Vec::new();
    for weighting in ["uniform", "min-snr-5"] {
        let out = std::env::temp_dir().join(format!("shapes-{weighting}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&out);
        let set = format!("diffusion.weighting=\"{weighting}\"");
        let sets = [
            "train.steps=1",
            "diffusion.loss=\"simple\"",
            "sample.sampler=\"ddpm\"",
            &set,
        ];
        smoke_ok(env!("CARGO_BIN_EXE_shapes"), &out, &sets, &[]);
        first.push(logged_losses(&out)[0]);
        std::fs::remove_dir_all(&out).unwrap();
    }
    assert!(first[1] < 0.9 * first[0], "{first:?}");
}
