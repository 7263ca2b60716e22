//! The published architectures by name, with their exact parameter counts (checked against
//! diffusers and the original implementations in the tests):
//!
//! | preset | model | parameters |
//! |---|---|---:|
//! | `ddpm-cifar10` | Ho et al. 2020, CIFAR-10 (google/ddpm-cifar10-32) | 35,746,307 |
//! | `ddpm-256` | Ho et al. 2020, CelebA-HQ / LSUN 256² | 113,673,219 |
//! | `adm-cifar10` | Improved DDPM CIFAR-10 (L_hybrid, learned Σ; ADM's lineage) | 52,546,438 |
//! | `adm-imagenet64` | ADM ImageNet 64², class-conditional | 295,904,454 |
//! | `adm-imagenet128` | ADM ImageNet 128², class-conditional | 421,529,606 |
//! | `adm-imagenet256` | ADM ImageNet 256², class-conditional | 553,838,086 |
//! | `dit-{s,b,l,xl}-{2,4,8}` | Peebles & Xie 2023 (e.g. DiT-XL/2: 675,129,632 with its fixed position table) | |

use crate::checkpoint::ModelConfig;
use crate::dit::{DiTConfig, DiTSize};
use crate::unet::{DownBlockKind as D, Heads, Resampling, UNetConfig, UpBlockKind as U};

/// The names [`preset`] knows.
pub const PRESET_NAMES: [&str; 18] = [
    "ddpm-cifar10",
    "ddpm-256",
    "adm-cifar10",
    "adm-imagenet64",
    "adm-imagenet128",
    "adm-imagenet256",
    "dit-s-2",
    "dit-s-4",
    "dit-s-8",
    "dit-b-2",
    "dit-b-4",
    "dit-b-8",
    "dit-l-2",
    "dit-l-4",
    "dit-l-8",
    "dit-xl-2",
    "dit-xl-4",
    "dit-xl-8",
];

/// An unknown preset name.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("unknown preset `{0}`; known: {list}", list = PRESET_NAMES.join(", "))]
pub struct UnknownPreset(pub String);

/// The DDPM U-Net: additive time conditioning, one attention head, conv resampling with
/// DDPM's one-sided padding, sines first with frequency shift 1.
fn ddpm(
    sample_size: usize,
    block_out_channels: Vec<usize>,
    down: Vec<D>,
    up: Vec<U>,
    dropout: f64,
) -> UNetConfig {
    UNetConfig {
        sample_size,
        in_channels: 3,
        out_channels: 3,
        block_out_channels,
        layers_per_block: 2,
        down_blocks: down,
        up_blocks: up,
        heads: Heads::Single,
        mid_attention: true,
        norm_num_groups: 32,
        norm_eps: 1e-6,
        attn_norm_num_groups: None,
        flip_sin_to_cos: false,
        freq_shift: 1.0,
        scale_shift: false,
        resample: Resampling::Conv,
        downsample_padding: 0,
        num_class_embeds: None,
        cross_attention_dim: None,
        transformer_depth: 1,
        dropout,
        seed: 0,
    }
}

/// The ADM U-Net (scale-shift conditioning, 64-channel heads, learned Σ); the class-conditional
/// ImageNet models resample with residual blocks (`resblock_updown`).
fn adm(
    sample_size: usize,
    channels: Vec<usize>,
    layers: usize,
    attention: &[bool],
    classes: Option<usize>,
) -> UNetConfig {
    let resblock = classes.is_some();
    let down = attention.iter().map(|&a| match (a, resblock) {
        (true, _) => D::Attn,
        (false, true) => D::ResnetDown,
        (false, false) => D::Plain,
    });
    let up = attention.iter().rev().map(|&a| match (a, resblock) {
        (true, _) => U::Attn,
        (false, true) => U::ResnetUp,
        (false, false) => U::Plain,
    });
    UNetConfig {
        sample_size,
        in_channels: 3,
        out_channels: 6,
        block_out_channels: channels,
        layers_per_block: layers,
        down_blocks: down.collect(),
        up_blocks: up.collect(),
        heads: Heads::Width(64),
        mid_attention: true,
        norm_num_groups: 32,
        norm_eps: 1e-5,
        attn_norm_num_groups: Some(32),
        flip_sin_to_cos: true,
        freq_shift: 0.0,
        scale_shift: true,
        resample: if resblock {
            Resampling::Resnet
        } else {
            Resampling::Conv
        },
        downsample_padding: 1,
        num_class_embeds: classes,
        cross_attention_dim: None,
        transformer_depth: 1,
        dropout: 0.0,
        seed: 0,
    }
}

/// The architecture of a published model.
pub fn preset(name: &str) -> Result<ModelConfig, UnknownPreset> {
    let unet = |c| Ok(ModelConfig::Unet(c));
    match name.to_ascii_lowercase().replace(['/', '_'], "-").as_str() {
        "ddpm-cifar10" => unet(ddpm(
            32,
            vec![128, 256, 256, 256],
            vec![D::Plain, D::Attn, D::Plain, D::Plain],
            vec![U::Plain, U::Plain, U::Attn, U::Plain],
            0.1,
        )),
        "ddpm-256" | "ddpm-celebahq-256" | "ddpm-lsun-256" => unet(ddpm(
            256,
            vec![128, 128, 256, 256, 512, 512],
            vec![D::Plain, D::Plain, D::Plain, D::Plain, D::Attn, D::Plain],
            vec![U::Plain, U::Attn, U::Plain, U::Plain, U::Plain, U::Plain],
            0.0,
        )),
        "adm-cifar10" | "iddpm-cifar10" => {
            let mut c = adm(32, vec![128, 256, 256, 256], 3, &[false, true, true, false], None);
            c.dropout = 0.3;
            unet(c)
        }
        "adm-imagenet64" => unet(adm(
            64,
            vec![192, 384, 576, 768],
            3,
            &[false, true, true, true],
            Some(1000),
        )),
        "adm-imagenet128" => {
            let mut c = adm(
                128,
                vec![256, 256, 512, 768, 1024],
                2,
                &[false, false, true, true, true],
                Some(1000),
            );
            c.heads = Heads::Count(4);
            unet(c)
        }
        "adm-imagenet256" => unet(adm(
            256,
            vec![256, 256, 512, 512, 1024, 1024],
            2,
            &[false, false, false, true, true, true],
            Some(1000),
        )),
        other => {
            let dit = other.strip_prefix("dit-").and_then(|rest| {
                let (size, patch) = rest.split_once('-')?;
                let size = match size {
                    "s" => DiTSize::S,
                    "b" => DiTSize::B,
                    "l" => DiTSize::L,
                    "xl" => DiTSize::XL,
                    _ => return None,
                };
                let patch: usize = patch.parse().ok().filter(|p| [2, 4, 8].contains(p))?;
                Some(DiTConfig::paper(size, patch))
            });
            dit.map(ModelConfig::Dit)
                .ok_or_else(|| UnknownPreset(name.to_string()))
        }
    }
}
