//! Loading diffusers model folders: a `config.json` of `UNet2DModel`, `UNet2DConditionModel`
//! or `DiTTransformer2DModel` mapped onto our configurations (every option we do not
//! reproduce is refused by name), and `diffusion_pytorch_model.safetensors` read through
//! burn-store with PyTorch's layouts adapted (Linear transposed, norm weight/bias as
//! gamma/beta) and diffusers' tensor names mapped onto ours. A tensor missing from the file,
//! one the model does not have, or one of the wrong shape is an error that names it.

use std::path::{Path, PathBuf};

use burn::module::Module;
use burn::store::{KeyRemapper, ModuleSnapshot, PyTorchToBurnAdapter, SafetensorsStore};
use burn::tensor::Device;
use serde_json::Value;

use crate::dit::{DiT, DiTConfig};
use crate::unet::{DownBlockKind, Heads, Resampling, UNet, UNetConfig, UpBlockKind};

/// A diffusers model folder that could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// A file could not be read.
    #[error("cannot read {path}: {reason}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The configuration names a class or an option value we do not reproduce.
    #[error("{path}: {message}")]
    Unsupported {
        /// The configuration file.
        path: PathBuf,
        /// What and why.
        message: String,
    },
    /// The weights do not fit the architecture.
    #[error("{path}: the weights do not fit the configuration:{details}")]
    Mismatch {
        /// The weights file.
        path: PathBuf,
        /// Missing, unexpected and misshapen tensors, one per line.
        details: String,
    },
}

/// A model described by a diffusers `config.json`.
#[derive(Clone, Debug, PartialEq)]
pub enum DiffusersConfig {
    /// `UNet2DModel` or `UNet2DConditionModel`.
    UNet(UNetConfig),
    /// `DiTTransformer2DModel`.
    DiT(DiTConfig),
}

/// Reads `dir/config.json`.
pub fn read_config(dir: &Path) -> Result<DiffusersConfig, LoadError> {
    let path = dir.join("config.json");
    let text = std::fs::read_to_string(&path).map_err(|e| LoadError::Io {
        path: path.clone(),
        reason: e.to_string(),
    })?;
    let json: Value = serde_json::from_str(&text).map_err(|e| LoadError::Io {
        path: path.clone(),
        reason: format!("not JSON: {e}"),
    })?;
    parse_config(&json).map_err(|message| LoadError::Unsupported { path, message })
}

/// Maps a diffusers configuration (as JSON) onto ours.
pub fn parse_config(json: &Value) -> Result<DiffusersConfig, String> {
    match json["_class_name"].as_str() {
        Some("UNet2DModel") => unet_config(json, false).map(DiffusersConfig::UNet),
        Some("UNet2DConditionModel") => unet_config(json, true).map(DiffusersConfig::UNet),
        Some("DiTTransformer2DModel") => dit_config(json).map(DiffusersConfig::DiT),
        Some(other) => Err(format!(
            "`_class_name` is `{other}`; supported: UNet2DModel, UNet2DConditionModel, DiTTransformer2DModel"
        )),
        None => Err("no `_class_name`: not a diffusers model config".into()),
    }
}

/// A typed view of the JSON fields, with the key in every error.
struct Fields<'a>(&'a Value);

impl Fields<'_> {
    fn get(&self, key: &str) -> Option<&Value> {
        self.0.get(key).filter(|v| !v.is_null())
    }

    fn usize(&self, key: &str) -> Result<usize, String> {
        self.get(key)
            .and_then(Value::as_u64)
            .map(|v| v as usize)
            .ok_or_else(|| format!("`{key}` must be a non-negative integer"))
    }

    fn usize_or(&self, key: &str, default: usize) -> Result<usize, String> {
        if self.get(key).is_none() {
            Ok(default)
        } else {
            self.usize(key)
        }
    }

    fn opt_usize(&self, key: &str) -> Result<Option<usize>, String> {
        if self.get(key).is_none() {
            Ok(None)
        } else {
            self.usize(key).map(Some)
        }
    }

    fn f64_or(&self, key: &str, default: f64) -> Result<f64, String> {
        match self.get(key) {
            None => Ok(default),
            Some(v) => v.as_f64().ok_or_else(|| format!("`{key}` must be a number")),
        }
    }

    fn bool_or(&self, key: &str, default: bool) -> Result<bool, String> {
        match self.get(key) {
            None => Ok(default),
            Some(v) => v
                .as_bool()
                .ok_or_else(|| format!("`{key}` must be true or false")),
        }
    }

    fn str_or<'b>(&'b self, key: &str, default: &'b str) -> Result<&'b str, String> {
        match self.get(key) {
            None => Ok(default),
            Some(v) => v.as_str().ok_or_else(|| format!("`{key}` must be a string")),
        }
    }

    fn strings(&self, key: &str) -> Result<Vec<String>, String> {
        self.get(key)
            .and_then(Value::as_array)
            .and_then(|a| a.iter().map(|v| v.as_str().map(String::from)).collect())
            .ok_or_else(|| format!("`{key}` must be a list of strings"))
    }

    fn usizes(&self, key: &str) -> Result<Vec<usize>, String> {
        self.get(key)
            .and_then(Value::as_array)
            .and_then(|a| a.iter().map(|v| v.as_u64().map(|x| x as usize)).collect())
            .ok_or_else(|| format!("`{key}` must be a list of integers"))
    }

    /// Refuses a value other than the one we reproduce.
    fn expect(&self, key: &str, allowed: &[Value]) -> Result<(), String> {
        match self.get(key) {
            None => Ok(()),
            Some(v) if allowed.contains(v) => Ok(()),
            Some(v) => Err(format!("`{key}` = {v} is not supported (supported: {allowed:?})")),
        }
    }
}

fn unet_config(json: &Value, conditional: bool) -> Result<UNetConfig, String> {
    let f = Fields(json);
    f.expect("act_fn", &["silu".into()])?;
    f.expect("center_input_sample", &[false.into()])?;
    f.expect("time_embedding_type", &["positional".into()])?;
    f.expect("class_embed_type", &[Value::Null])?;
    f.expect("mid_block_scale_factor", &[1.into(), 1.0.into()])?;
    f.expect("time_embedding_dim", &[Value::Null])?;
    for key in [
        "addition_embed_type",
        "encoder_hid_dim",
        "time_cond_proj_dim",
        "time_embedding_act_fn",
        "timestep_post_act",
        "num_attention_heads",
        "reverse_transformer_layers_per_block",
        "cross_attention_norm",
        "projection_class_embeddings_input_dim",
    ] {
        f.expect(key, &[Value::Null])?;
    }
    for key in [
        "use_linear_projection",
        "only_cross_attention",
        "upcast_attention",
        "dual_cross_attention",
    ] {
        f.expect(key, &[false.into()])?;
    }
    f.expect("conv_in_kernel", &[3.into()])?;
    f.expect("conv_out_kernel", &[3.into()])?;
    f.expect("transformer_layers_per_block", &[1.into()])?;
    f.expect("resnet_out_scale_factor", &[1.into(), 1.0.into()])?;
    f.expect("attention_type", &["default".into()])?;
    let scale_shift = match f.str_or("resnet_time_scale_shift", "default")? {
        "default" => false,
        "scale_shift" => true,
        other => {
            return Err(format!(
                "`resnet_time_scale_shift` = \"{other}\" is not supported"
            ));
        }
    };
    let resample = match (
        f.str_or("downsample_type", "conv")?,
        f.str_or("upsample_type", "conv")?,
    ) {
        ("conv", "conv") => Resampling::Conv,
        ("resnet", "resnet") => Resampling::Resnet,
        (d, u) => {
            return Err(format!(
                "downsample_type \"{d}\" with upsample_type \"{u}\" is not supported"
            ));
        }
    };
    let down_blocks = f
        .strings("down_block_types")?
        .iter()
        .map(|s| match s.as_str() {
            "DownBlock2D" => Ok(DownBlockKind::Plain),
            "AttnDownBlock2D" => Ok(DownBlockKind::Attn),
            "ResnetDownsampleBlock2D" => Ok(DownBlockKind::ResnetDown),
            "CrossAttnDownBlock2D" => Ok(DownBlockKind::CrossAttn),
            other => Err(format!("down block `{other}` is not supported")),
        })
        .collect::<Result<Vec<_>, _>>()?;
    let up_blocks = f
        .strings("up_block_types")?
        .iter()
        .map(|s| match s.as_str() {
            "UpBlock2D" => Ok(UpBlockKind::Plain),
            "AttnUpBlock2D" => Ok(UpBlockKind::Attn),
            "ResnetUpsampleBlock2D" => Ok(UpBlockKind::ResnetUp),
            "CrossAttnUpBlock2D" => Ok(UpBlockKind::CrossAttn),
            other => Err(format!("up block `{other}` is not supported")),
        })
        .collect::<Result<Vec<_>, _>>()?;
    let (heads, mid_attention, cross_attention_dim) = if conditional {
        f.expect("mid_block_type", &["UNetMidBlock2DCrossAttn".into()])?;
        // UNet2DConditionModel reads `attention_head_dim` as the number of heads (diffusers
        // issue #2011).
        let heads = f.usize_or("attention_head_dim", 8)?;
        (Heads::Count(heads), true, Some(f.usize("cross_attention_dim")?))
    } else {
        f.expect("mid_block_type", &["UNetMidBlock2D".into()])?;
        let heads = match f.opt_usize("attention_head_dim")? {
            None => Heads::Single,
            Some(width) => Heads::Width(width),
        };
        (heads, f.bool_or("add_attention", true)?, None)
    };
    let sample = match f.get("sample_size") {
        Some(Value::Array(a)) if a.len() == 2 && a[0] == a[1] => a[0].as_u64().unwrap_or(0) as usize,
        Some(Value::Array(_)) => return Err("`sample_size` must be square".into()),
        _ => f.usize("sample_size")?,
    };
    let config = UNetConfig {
        sample_size: sample,
        in_channels: f.usize("in_channels")?,
        out_channels: f.usize("out_channels")?,
        block_out_channels: f.usizes("block_out_channels")?,
        layers_per_block: f.usize_or("layers_per_block", 2)?,
        down_blocks,
        up_blocks,
        heads,
        mid_attention,
        norm_num_groups: f.usize_or("norm_num_groups", 32)?,
        norm_eps: f.f64_or("norm_eps", 1e-5)?,
        attn_norm_num_groups: f.opt_usize("attn_norm_num_groups")?,
        flip_sin_to_cos: f.bool_or("flip_sin_to_cos", true)?,
        freq_shift: f.f64_or("freq_shift", 0.0)?,
        scale_shift,
        resample,
        downsample_padding: f.usize_or("downsample_padding", 1)?,
        num_class_embeds: f.opt_usize("num_class_embeds")?,
        cross_attention_dim,
        transformer_depth: 1,
        dropout: f.f64_or("dropout", 0.0)?,
        seed: 0,
    };
    config.validate().map_err(|e| e.to_string())?;
    Ok(config)
}

fn dit_config(json: &Value) -> Result<DiTConfig, String> {
    let f = Fields(json);
    f.expect("norm_type", &["ada_norm_zero".into()])?;
    f.expect("activation_fn", &["gelu-approximate".into()])?;
    f.expect("attention_bias", &[true.into()])?;
    f.expect("norm_elementwise_affine", &[false.into()])?;
    f.expect("upcast_attention", &[false.into()])?;
    let heads = f.usize("num_attention_heads")?;
    let config = DiTConfig {
        input_size: f.usize("sample_size")?,
        patch_size: f.usize_or("patch_size", 2)?,
        in_channels: f.usize("in_channels")?,
        out_channels: f.usize_or("out_channels", f.usize("in_channels")?)?,
        hidden_size: heads * f.usize("attention_head_dim")?,
        depth: f.usize("num_layers")?,
        num_heads: heads,
        mlp_ratio: 4,
        num_classes: f.usize("num_embeds_ada_norm")?,
        class_dropout_prob: 0.0,
        mlp_norm_eps: f.f64_or("norm_eps", 1e-5)?,
        time_freq_shift: 1.0,
        per_block_conditioning: true,
        cross_attention_dim: None,
        seed: 0,
    };
    config.validate().map_err(|e| e.to_string())?;
    Ok(config)
}

/// diffusers' tensor names → ours, for U-Nets and DiTs.
fn remapper() -> KeyRemapper {
    KeyRemapper::from_patterns(vec![
        // nn.ModuleList indices of diffusers' attention output and feed-forward.
        (r"\.to_out\.0\.", ".to_out."),
        (r"\.ff\.net\.0\.proj\.", ".ff.proj."),
        (r"\.ff\.net\.2\.", ".ff.out."),
        // U-Net self-attention: the projections live in `attn`, the norm beside it.
        (r"(attentions\.\d+)\.group_norm\.", "$1.spatial.group_norm."),
        (
            r"(attentions\.\d+)\.(to_q|to_k|to_v|to_out)\.",
            "$1.spatial.attn.$2.",
        ),
        // U-Net spatial transformers.
        (
            r"(attentions\.\d+)\.(norm|proj_in|proj_out|transformer_blocks)\.",
            "$1.transformer.$2.",
        ),
        // Residual up/down samplers.
        (
            r"((?:down|up)samplers\.0)\.(norm1|conv1|time_emb_proj|norm2|conv2|conv_shortcut)\.",
            "$1.resnet.$2.",
        ),
        // DiT: the per-block embedders, the modulation and the patch embedding.
        (r"transformer_blocks\.(\d+)\.norm1\.emb\.", "embedders.$1."),
        (
            r"transformer_blocks\.(\d+)\.norm1\.linear\.",
            "transformer_blocks.$1.modulation.",
        ),
        (r"embedders\.(\d+)\.timestep_embedder\.", "embedders.$1.time."),
        (
            r"embedders\.(\d+)\.class_embedder\.embedding_table\.",
            "embedders.$1.classes.",
        ),
        (r"^pos_embed\.proj\.", "patch_embed."),
    ])
    .expect("the patterns are valid regular expressions")
}

/// What a weight file and a model disagree on: missing and unused tensors and shape errors,
/// one per line (empty when they fit).
pub(crate) fn mismatch_details(result: &burn::store::ApplyResult) -> String {
    let mut details = String::new();
    for (missing, _) in &result.missing {
        details.push_str(&format!("\n  missing from the file: {missing}"));
    }
    for unused in &result.unused {
        details.push_str(&format!("\n  not in the model: {unused}"));
    }
    for error in &result.errors {
        details.push_str(&format!("\n  {error}"));
    }
    details
}

/// Loads weights into `model` from a diffusers safetensors file, checking that every tensor
/// of the model is found with its shape and that the file has no others.
pub fn load_weights<M: Module + ModuleSnapshot>(model: &mut M, path: &Path) -> Result<(), LoadError> {
    if !path.exists() {
        return Err(LoadError::Io {
            path: path.to_path_buf(),
            reason: "no such file".into(),
        });
    }
    let mut store = SafetensorsStore::from_file(path)
        .with_from_adapter(PyTorchToBurnAdapter)
        .remap(remapper())
        .allow_partial(true)
        .validate(false);
    let result = model.load_from(&mut store).map_err(|e| LoadError::Io {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    let details = mismatch_details(&result);
    if details.is_empty() {
        Ok(())
    } else {
        Err(LoadError::Mismatch {
            path: path.to_path_buf(),
            details,
        })
    }
}

/// A model loaded from a diffusers folder.
#[derive(Debug)]
pub enum DiffusersModel {
    /// A U-Net.
    UNet(Box<UNet>),
    /// A DiT.
    DiT(Box<DiT>),
}

/// Loads `dir/config.json` and `dir/diffusion_pytorch_model.safetensors` onto `device`.
pub fn load_model(dir: &Path, device: &Device) -> Result<(DiffusersConfig, DiffusersModel), LoadError> {
    let config = read_config(dir)?;
    let weights = dir.join("diffusion_pytorch_model.safetensors");
    let model = match &config {
        DiffusersConfig::UNet(c) => {
            let mut m = c.init(device);
            load_weights(&mut m, &weights)?;
            DiffusersModel::UNet(Box::new(m))
        }
        DiffusersConfig::DiT(c) => {
            let mut m = c.init(device);
            load_weights(&mut m, &weights)?;
            DiffusersModel::DiT(Box::new(m))
        }
    };
    Ok((config, model))
}
