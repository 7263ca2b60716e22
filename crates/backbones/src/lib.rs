//! # diffusion-backbones
//!
//! Denoising networks. Each takes a batch of noisy inputs and one conditioning scalar per
//! sample (a timestep, or c_noise(σ)) and returns a prediction of the same shape; the
//! `diffusion-samplers` wrappers turn it into a denoiser.
//!
//! - [`mlp`]: a residual MLP for low-dimensional data;
//! - [`dit`]: the diffusion transformer (adaLN-Zero, class labels with a null class);
//! - [`diffusers`]: diffusers model folders (config and safetensors weights) loaded into them;
//! - [`unet`]: the DDPM / ADM U-Net and the cross-attention U-Net of latent diffusion, built
//!   from [`resnet`] blocks, [`attention`] and [`transformer`] layers;
//! - [`embedding`]: sinusoidal embeddings of a continuous scalar;
//! - [`init`]: reproducible, backend-independent parameter initialisation.

pub mod attention;
pub mod diffusers;
pub mod dit;
pub mod embedding;
pub mod init;
pub mod mlp;
pub mod ops;
pub mod resnet;
pub mod transformer;
pub mod unet;

pub use dit::{DiT, DiTConfig, DiTSize};
pub use init::SeededInit;
pub use mlp::{Mlp, MlpConfig};
pub use unet::{Conditioning, UNet, UNetConfig};
