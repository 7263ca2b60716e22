//! The U-Net family: DDPM (Ho et al. 2020), ADM (Dhariwal & Nichol 2021) and the
//! latent-diffusion U-Net with cross-attention (Rombach et al. 2022), architecturally equal to
//! diffusers' `UNet2DModel` / `UNet2DConditionModel` so that their checkpoints load.

pub mod config;
pub mod model;

pub use config::{ConfigError, DownBlockKind, Heads, Resampling, UNetConfig, UpBlockKind};
pub use model::{
    AttentionLayer, Conditioning, DownLevel, InputError, MidBlock, Resampler, TimeEmbedding, UNet, UpLevel,
};
