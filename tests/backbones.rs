//! The backbones against diffusers: forward parity of random-weight `UNet2DModel` (DDPM and
//! ADM style), `UNet2DConditionModel` and `DiTTransformer2DModel` folders written by
//! `scripts/fixtures/backbones.py`, exact parameter counts of the published presets, and
//! clear errors for weights that do not fit.

use std::path::PathBuf;

use burn::tensor::{DType, Int, Tensor, TensorData};
use diffusion_backbones::diffusers::{DiffusersModel, LoadError, load_model};
use diffusion_backbones::{Conditioning, DiTConfig, DiTSize};
use diffusion_core::tensor::{max_rel_deviation, to_f64};
use diffusion_tests::{device, fixture_path, read_safetensors};

fn folder(name: &str) -> PathBuf {
    fixture_path("backbones").join(name)
}

fn float4(t: &diffusion_tests::SafeTensor, device: &burn::tensor::Device) -> Tensor<4> {
    let s = &t.shape;
    Tensor::from_data(
        TensorData::new(
            t.values.iter().map(|v| *v as f32).collect::<Vec<f32>>(),
            [s[0], s[1], s[2], s[3]],
        ),
        (device, DType::F32),
    )
}

fn float1(t: &diffusion_tests::SafeTensor, device: &burn::tensor::Device) -> Tensor<1> {
    Tensor::from_data(
        TensorData::new(
            t.values.iter().map(|v| *v as f32).collect::<Vec<f32>>(),
            [t.values.len()],
        ),
        (device, DType::F32),
    )
}

fn labels(t: &diffusion_tests::SafeTensor, device: &burn::tensor::Device) -> Tensor<1, Int> {
    Tensor::from_data(
        TensorData::new(
            t.values.iter().map(|v| *v as i64).collect::<Vec<i64>>(),
            [t.values.len()],
        ),
        device,
    )
}

#[test]
fn diffusers_models_load_and_reproduce_their_outputs() {
    let device = device();
    for name in ["unet_ddpm", "unet_adm", "unet_cond", "dit"] {
        let io = read_safetensors(&folder(name).join("io.safetensors"));
        let (_, model) = load_model(&folder(name), &device).unwrap_or_else(|e| panic!("{name}: {e}"));
        let x = float4(&io["sample"], &device);
        let t = float1(&io["timestep"], &device);
        let out = match model {
            DiffusersModel::UNet(unet) => {
                let cond = Conditioning {
                    class_labels: io.get("class_labels").map(|l| labels(l, &device)),
                    context: io.get("encoder_hidden_states").map(|c| {
                        let s = &c.shape;
                        Tensor::from_data(
                            TensorData::new(
                                c.values.iter().map(|v| *v as f32).collect::<Vec<f32>>(),
                                [s[0], s[1], s[2]],
                            ),
                            (&device, DType::F32),
                        )
                    }),
                };
                unet.forward(x, t, &cond)
            }
            DiffusersModel::DiT(dit) => dit.forward(x, t, labels(&io["class_labels"], &device)),
        };
        let reference = &io["output"];
        assert_eq!(out.dims().to_vec(), reference.shape, "{name}: output shape");
        let dev = max_rel_deviation(&to_f64(&out), &reference.values);
        eprintln!("{name}: max relative deviation from diffusers {dev:.2e}");
        assert!(dev <= 1e-4, "{name}: deviation {dev:.3e} from diffusers' output");
    }
}

#[test]
fn preset_parameter_counts_are_exact() {
    let fx: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(folder("presets.json")).unwrap()).unwrap();
    let mut checked = 0;
    for preset in fx["presets"].as_array().unwrap() {
        let name = preset["name"].as_str().unwrap();
        let mut json = preset["config_kwargs"].clone();
        json["_class_name"] = preset["class"].clone();
        let want = preset["num_parameters"].as_u64().unwrap() as usize;
        let ours = match diffusion_backbones::diffusers::parse_config(&json) {
            Ok(diffusion_backbones::diffusers::DiffusersConfig::UNet(c)) => c.num_params(),
            Ok(diffusion_backbones::diffusers::DiffusersConfig::DiT(c)) => c.num_params(),
            Err(e) if name.contains("imagenet128") => {
                // Four fixed heads at every width: a count-only entry in diffusers' terms.
                eprintln!("{name}: {e}");
                continue;
            }
            Err(e) => panic!("{name}: {e}"),
        };
        assert_eq!(ours, want, "{name}");
        checked += 1;
    }
    assert!(checked >= 17, "{checked} presets checked");
    // The original DiT counts (its fixed position table included): XL/2 675,129,632, S/2
    // 32,963,360 (Peebles & Xie: 675M, 33M).
    assert_eq!(
        DiTConfig::paper(DiTSize::XL, 2).original_param_count(),
        675_129_632
    );
    assert_eq!(DiTConfig::paper(DiTSize::S, 2).original_param_count(), 32_963_360);
    assert_eq!(
        DiTConfig::paper(DiTSize::B, 4).original_param_count(),
        130_475_648
    );
}

#[test]
fn counted_parameters_are_the_built_ones() {
    use burn::module::Module;
    let device = device();
    for name in ["unet_ddpm", "unet_adm", "unet_cond", "dit"] {
        let (config, model) = load_model(&folder(name), &device).unwrap();
        let (counted, built) = match (config, model) {
            (diffusion_backbones::diffusers::DiffusersConfig::UNet(c), DiffusersModel::UNet(m)) => {
                (c.num_params(), m.num_params())
            }
            (diffusion_backbones::diffusers::DiffusersConfig::DiT(c), DiffusersModel::DiT(m)) => {
                (c.num_params(), m.num_params())
            }
            _ => unreachable!(),
        };
        assert_eq!(counted, built, "{name}");
    }
}

#[test]
fn weights_that_do_not_fit_are_named() {
    let device = device();
    let dir = std::env::temp_dir().join(format!("backbone-mismatch-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    // The DDPM config with the ADM weights: every difference is listed.
    std::fs::copy(folder("unet_ddpm").join("config.json"), dir.join("config.json")).unwrap();
    std::fs::copy(
        folder("unet_adm").join("diffusion_pytorch_model.safetensors"),
        dir.join("diffusion_pytorch_model.safetensors"),
    )
    .unwrap();
    let err = load_model(&dir, &device).unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, LoadError::Mismatch { .. }), "{text}");
    assert!(
        text.contains("not in the model: class_embedding.weight"),
        "{text}"
    );
    // An unsupported option is refused by name.
    std::fs::write(
        dir.join("config.json"),
        std::fs::read_to_string(folder("unet_ddpm").join("config.json"))
            .unwrap()
            .replace("\"positional\"", "\"fourier\""),
    )
    .unwrap();
    let text = load_model(&dir, &device).unwrap_err().to_string();
    assert!(
        text.contains("time_embedding_type") && text.contains("fourier"),
        "{text}"
    );
    std::fs::remove_file(dir.join("diffusion_pytorch_model.safetensors")).unwrap();
    std::fs::copy(folder("unet_ddpm").join("config.json"), dir.join("config.json")).unwrap();
    let text = load_model(&dir, &device).unwrap_err().to_string();
    assert!(text.contains("no such file"), "{text}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn ddim_through_our_samplers_matches_diffusers_pipeline() {
    use diffusion_backbones::{Backbone, Model, load_folder};
    use diffusion_samplers::{DiffusersScheduler, DiscreteModel, ModelForm, StepOptions};
    let device = device();
    let loaded = load_folder(&folder("unet_ddpm"), &device).unwrap();
    let Model::Unet(unet) = &loaded.model else {
        panic!("a U-Net")
    };
    let fx: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture_path("backbones/ddim_pipeline.json")).unwrap())
            .unwrap();
    let io = read_safetensors(&fixture_path("backbones/ddim_pipeline.safetensors"));
    let scheduler = DiffusersScheduler::from_value(fx["scheduler_config"].clone()).unwrap();
    let ModelForm::Discrete(prediction) = scheduler.model_form().unwrap() else {
        panic!("ε model")
    };
    let plan = scheduler.plan(10, StepOptions::default()).unwrap();
    assert_eq!(
        plan.timesteps,
        fx["timesteps"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect::<Vec<_>>()
    );
    // Teacher-forced: the network's ε at every stored state of the pipeline.
    let shape = unet.sample_shape();
    let per = shape.iter().product::<usize>();
    let traj = &io["trajectory"].values;
    let eps_ref = &io["model_output"].values;
    for (k, &t) in plan.timesteps.iter().enumerate() {
        let state: Vec<f64> = if k == 0 {
            io["init_noise"].values.clone()
        } else {
            traj[(k - 1) * 2 * per..k * 2 * per].to_vec()
        };
        let x = Tensor::<2>::from_data(
            TensorData::new(state.iter().map(|v| *v as f32).collect::<Vec<f32>>(), [2, per]),
            (&device, DType::F32),
        );
        let tt = Tensor::<1>::from_data(TensorData::new(vec![t as f32; 2], [2]), (&device, DType::F32));
        let eps = to_f64(&unet.forward_flat(x, tt, &Conditioning::default()));
        let dev = max_rel_deviation(&eps, &eps_ref[k * 2 * per..(k + 1) * 2 * per]);
        assert!(dev <= 1e-4, "step {k} (t = {t}): ε deviates by {dev:.2e}");
    }
    // Free-running: our DDIM with diffusers' clip_sample, from the same noise.
    let model = DiscreteModel::new(
        |x, t| unet.forward_flat(x, t, &Conditioning::default()),
        scheduler.schedule().clone(),
        prediction,
    );
    let x = Tensor::<2>::from_data(
        TensorData::new(
            io["init_noise"]
                .values
                .iter()
                .map(|v| *v as f32)
                .collect::<Vec<f32>>(),
            [2, per],
        ),
        (&device, DType::F32),
    );
    let out = plan
        .sampler
        .sample(&model, x, &mut diffusion_core::noise::SampleNoise::range(0, 0..2))
        .unwrap();
    let ours = to_f64(&out.x);
    let reference = &io["x_final"].values;
    let err = ours
        .iter()
        .zip(reference)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f64::max);
    eprintln!("DDIM 10 steps: max |ours − diffusers| = {err:.2e} (f32 vs f64 diffusers: 1.35e-4)");
    assert!(err < 1e-3, "free-running DDIM differs by {err}");
    assert_eq!(out.nfe, 10);
}

#[test]
fn our_checkpoints_round_trip_in_both_formats() {
    use diffusion_backbones::{Backbone, ModelConfig, WeightFormat, load_folder, save_folder};
    let device = device();
    let loaded = load_folder(&folder("unet_adm"), &device).unwrap();
    let io = read_safetensors(&folder("unet_adm").join("io.safetensors"));
    let per: usize = loaded.model.sample_shape().iter().product();
    let x = Tensor::<2>::from_data(
        TensorData::new(
            io["sample"]
                .values
                .iter()
                .map(|v| *v as f32)
                .collect::<Vec<f32>>(),
            [2, per],
        ),
        (&device, DType::F32),
    );
    let t = float1(&io["timestep"], &device);
    let cond = Conditioning {
        class_labels: Some(labels(&io["class_labels"], &device)),
        context: None,
    };
    let before = to_f64(&loaded.model.forward_flat(x.clone(), t.clone(), &cond));
    for format in [WeightFormat::Burnpack, WeightFormat::Safetensors] {
        let dir = std::env::temp_dir().join(format!("ckpt-{format:?}-{}", std::process::id()));
        save_folder(&dir, &loaded.config, &loaded.model, format).unwrap();
        assert!(dir.join(format.file_name()).exists() && dir.join("model.json").exists());
        let back = load_folder(&dir, &device).unwrap();
        assert!(matches!(back.config, ModelConfig::Unet(_)));
        let after = to_f64(&back.model.forward_flat(x.clone(), t.clone(), &cond));
        assert_eq!(before, after, "{format:?}: outputs differ after a round trip");
        // No temporary files are left behind.
        let names: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert!(names.iter().all(|n| !n.contains(".tmp")), "{names:?}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

#[test]
fn named_presets_have_the_published_counts() {
    use diffusion_backbones::{ModelConfig, PRESET_NAMES, preset};
    let count = |name: &str| match preset(name).unwrap() {
        ModelConfig::Unet(c) => c.num_params(),
        ModelConfig::Dit(c) => c.original_param_count(),
        ModelConfig::Mlp(_) => unreachable!(),
    };
    for (name, want) in [
        ("ddpm-cifar10", 35_746_307),
        ("ddpm-256", 113_673_219),
        ("adm-cifar10", 52_546_438),
        ("adm-imagenet64", 295_904_454),
        ("adm-imagenet128", 421_529_606),
        ("adm-imagenet256", 553_838_086),
        ("dit-s-2", 32_963_360),
        ("DiT-S/8", 33_148_160),
        ("dit-b-2", 130_512_416),
        ("dit-l-4", 458_053_760),
        ("dit-xl-2", 675_129_632),
        ("dit-xl-8", 675_683_072),
    ] {
        assert_eq!(count(name), want, "{name}");
    }
    for name in PRESET_NAMES {
        assert!(preset(name).is_ok(), "{name}");
    }
    assert!(
        preset("dit-xxl-2")
            .unwrap_err()
            .to_string()
            .contains("ddpm-cifar10")
    );
}

#[test]
fn the_ddpm_cifar10_preset_builds_with_its_count() {
    use burn::module::Module;
    use diffusion_backbones::{ModelConfig, preset};
    if diffusion_tests::is_slow_backend() {
        return; // 36 M parameters drawn on the host and uploaded: quick on flex only
    }
    let ModelConfig::Unet(config) = preset("ddpm-cifar10").unwrap() else {
        unreachable!()
    };
    let device = device();
    let unet = config.init(&device);
    assert_eq!(unet.num_params(), 35_746_307);
    let x = Tensor::<4>::zeros([1, 3, 32, 32], (&device, DType::F32));
    let t = Tensor::<1>::from_data(TensorData::new(vec![10.0f32], [1]), (&device, DType::F32));
    assert_eq!(
        unet.forward(x, t, &Conditioning::default()).dims(),
        [1, 3, 32, 32]
    );
}

#[test]
fn dit_with_cross_attention_reads_its_context() {
    use burn::module::Module;
    use diffusion_backbones::{Backbone, drop_labels};
    let device = device();
    let config = DiTConfig {
        input_size: 8,
        patch_size: 2,
        in_channels: 4,
        out_channels: 4,
        hidden_size: 32,
        depth: 2,
        num_heads: 2,
        mlp_ratio: 4,
        num_classes: 10,
        class_dropout_prob: 0.1,
        mlp_norm_eps: 1e-6,
        time_freq_shift: 0.0,
        per_block_conditioning: false,
        cross_attention_dim: Some(12),
        seed: 3,
    };
    let mut dit = config.init(&device);
    assert_eq!(dit.num_params(), config.num_params());
    // adaLN-Zero starts at the zero function; give the zero layers random weights to see the
    // context.
    let random = |w: Tensor<2>, seed: u64| {
        use diffusion_core::noise::NoiseSource;
        let [r, c] = w.dims();
        burn::module::Param::from_tensor(
            diffusion_core::noise::SampleNoise::range(seed, 0..r as u64)
                .normal_tensor(r, c, &device, DType::F32)
                .mul_scalar(0.1),
        )
    };
    dit.proj_out_2.weight = random(dit.proj_out_2.weight.val(), 1);
    dit.proj_out_1.weight = random(dit.proj_out_1.weight.val(), 2);
    for (k, block) in dit.transformer_blocks.iter_mut().enumerate() {
        block.modulation.weight = random(block.modulation.weight.val(), 10 + k as u64);
    }
    let n = 2;
    let x = Tensor::<2>::from_data(
        TensorData::new(vec![0.5f32; n * 256], [n, 256]),
        (&device, DType::F32),
    );
    let t = Tensor::<1>::from_data(TensorData::new(vec![3.0f32, 700.0], [n]), (&device, DType::F32));
    let ctx = |v: f32| {
        Tensor::<3>::from_data(
            TensorData::new(vec![v; n * 5 * 12], [n, 5, 12]),
            (&device, DType::F32),
        )
    };
    let cond = |v: f32| Conditioning {
        class_labels: None,
        context: Some(ctx(v)),
    };
    let a = to_f64(&dit.forward_flat(x.clone(), t.clone(), &cond(0.0)));
    let b = to_f64(&dit.forward_flat(x, t, &cond(1.0)));
    assert_eq!(a.len(), n * 256);
    assert!(
        max_rel_deviation(&a, &b) > 1e-4,
        "the context must change the output"
    );
    assert_eq!(
        drop_labels(&[1, 2, 3], &[0.05, 0.5, 0.01], 0.1, 10),
        vec![10, 2, 10]
    );
}
