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
