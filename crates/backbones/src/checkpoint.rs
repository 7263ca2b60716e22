//! Our own model folders: `model.json` (the architecture) beside the weights as burnpack
//! (`model.bpk`, burn's native format) or safetensors (`model.safetensors`, our tensor names).
//! Files are written atomically (a temporary file renamed into place), so an interrupted save
//! leaves the previous checkpoint intact. [`load_folder`] also reads diffusers folders.

use std::path::{Path, PathBuf};

use burn::module::Module;
use burn::store::{ModuleSnapshot, SafetensorsStore};
use burn::tensor::{Device, Tensor};
use serde::{Deserialize, Serialize};

use crate::backbone::{Backbone, Conditioning};
use crate::diffusers::{self, DiffusersConfig, DiffusersModel, LoadError};
use crate::dit::{DiT, DiTConfig};
use crate::mlp::{Mlp, MlpConfig};
use crate::unet::{UNet, UNetConfig};

/// An architecture, as stored in `model.json`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "architecture", rename_all = "snake_case")]
pub enum ModelConfig {
    /// A residual MLP.
    Mlp(MlpConfig),
    /// A U-Net.
    Unet(UNetConfig),
    /// A DiT.
    Dit(DiTConfig),
}

impl ModelConfig {
    /// The network, initialised from its seed.
    pub fn init(&self, device: &Device) -> Model {
        match self {
            Self::Mlp(c) => Model::Mlp(c.init(device)),
            Self::Unet(c) => Model::Unet(c.init(device)),
            Self::Dit(c) => Model::Dit(c.init(device)),
        }
    }
}

/// Any of our networks.
// Networks are held once and moved rarely; boxing the variants would only add indirection.
#[allow(clippy::large_enum_variant)]
#[derive(Module, Debug)]
pub enum Model {
    /// A residual MLP.
    Mlp(Mlp),
    /// A U-Net.
    Unet(UNet),
    /// A DiT.
    Dit(DiT),
}

impl Backbone for Model {
    fn sample_shape(&self) -> Vec<usize> {
        match self {
            Self::Mlp(m) => m.sample_shape(),
            Self::Unet(m) => m.sample_shape(),
            Self::Dit(m) => m.sample_shape(),
        }
    }

    fn output_factor(&self) -> usize {
        match self {
            Self::Mlp(m) => m.output_factor(),
            Self::Unet(m) => m.output_factor(),
            Self::Dit(m) => m.output_factor(),
        }
    }

    fn forward_flat(&self, x: Tensor<2>, noise_cond: Tensor<1>, cond: &Conditioning) -> Tensor<2> {
        match self {
            Self::Mlp(m) => m.forward_flat(x, noise_cond, cond),
            Self::Unet(m) => m.forward_flat(x, noise_cond, cond),
            Self::Dit(m) => m.forward_flat(x, noise_cond, cond),
        }
    }
}

/// The weight file format of our folders.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WeightFormat {
    /// burn's burnpack (`model.bpk`).
    #[default]
    Burnpack,
    /// safetensors (`model.safetensors`).
    Safetensors,
}

impl WeightFormat {
    /// The weight file's name.
    pub fn file_name(self) -> &'static str {
        match self {
            Self::Burnpack => "model.bpk",
            Self::Safetensors => "model.safetensors",
        }
    }
}

fn io(path: &Path, e: impl std::fmt::Display) -> LoadError {
    LoadError::Io {
        path: path.to_path_buf(),
        reason: e.to_string(),
    }
}

/// Writes `dir/model.json` and the weights, each atomically.
pub fn save_folder(
    dir: &Path,
    config: &ModelConfig,
    model: &Model,
    format: WeightFormat,
) -> Result<(), LoadError> {
    std::fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
    let weights = dir.join(format.file_name());
    match format {
        WeightFormat::Safetensors => {
            let mut store = SafetensorsStore::from_bytes(None);
            model.save_into(&mut store).map_err(|e| io(&weights, e))?;
            let bytes = store.get_bytes().map_err(|e| io(&weights, e))?;
            diffusion_core::fs::write_atomic(&weights, &bytes).map_err(|e| io(&weights, e))?;
        }
        WeightFormat::Burnpack => {
            let tmp = temporary(&weights);
            model.clone().save_file(&tmp).map_err(|e| io(&weights, e))?;
            // save_file may append the extension; find what it wrote.
            let written = if tmp.exists() {
                tmp.clone()
            } else {
                tmp.with_extension("bpk")
            };
            std::fs::rename(&written, &weights).map_err(|e| io(&weights, e))?;
        }
    }
    let json = serde_json::to_vec_pretty(config).map_err(|e| io(dir, e))?;
    diffusion_core::fs::write_atomic(&dir.join("model.json"), &json).map_err(|e| io(dir, e))
}

fn temporary(path: &Path) -> PathBuf {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("weights");
    path.with_file_name(format!(".{name}.tmp-{}", std::process::id()))
}

/// A loaded model folder, ours or diffusers'.
#[derive(Debug)]
pub struct LoadedModel {
    /// Its architecture.
    pub config: ModelConfig,
    /// The network.
    pub model: Model,
}

/// Loads a model folder: ours (`model.json` with `model.bpk` or `model.safetensors`) or a
/// diffusers one (`config.json` with `diffusion_pytorch_model.safetensors`).
pub fn load_folder(dir: &Path, device: &Device) -> Result<LoadedModel, LoadError> {
    if dir.join("model.json").exists() {
        let path = dir.join("model.json");
        let text = std::fs::read_to_string(&path).map_err(|e| io(&path, e))?;
        let config: ModelConfig = serde_json::from_str(&text).map_err(|e| LoadError::Unsupported {
            path: path.clone(),
            message: e.to_string(),
        })?;
        let model = config.init(device);
        let model = load_weights_of(model, dir)?;
        return Ok(LoadedModel { config, model });
    }
    if dir.join("config.json").exists() {
        let (config, model) = diffusers::load_model(dir, device)?;
        return Ok(match (config, model) {
            (DiffusersConfig::UNet(c), DiffusersModel::UNet(m)) => LoadedModel {
                config: ModelConfig::Unet(c),
                model: Model::Unet(*m),
            },
            (DiffusersConfig::DiT(c), DiffusersModel::DiT(m)) => LoadedModel {
                config: ModelConfig::Dit(c),
                model: Model::Dit(*m),
            },
            _ => unreachable!("the model follows its configuration"),
        });
    }
    Err(LoadError::Io {
        path: dir.to_path_buf(),
        reason: "neither model.json (ours) nor config.json (diffusers) is in this folder".into(),
    })
}

fn load_weights_of(model: Model, dir: &Path) -> Result<Model, LoadError> {
    let bpk = dir.join(WeightFormat::Burnpack.file_name());
    if bpk.exists() {
        return model.try_load_file(&bpk).map_err(|e| io(&bpk, e));
    }
    let st = dir.join(WeightFormat::Safetensors.file_name());
    if !st.exists() {
        return Err(io(dir, "no model.bpk or model.safetensors beside model.json"));
    }
    let mut model = model;
    let mut store = SafetensorsStore::from_file(&st)
        .allow_partial(true)
        .validate(false);
    let result = model.load_from(&mut store).map_err(|e| io(&st, e))?;
    let details = crate::diffusers::mismatch_details(&result);
    if details.is_empty() {
        Ok(model)
    } else {
        Err(LoadError::Mismatch { path: st, details })
    }
}
