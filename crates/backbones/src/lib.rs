//! # diffusion-backbones
//!
//! Denoising networks. Each takes a batch of noisy inputs and one conditioning scalar per
//! sample (a timestep, or c_noise(σ)), optionally a class or a context, and returns a
//! prediction of the same shape: the [`Backbone`] trait. The `diffusion-samplers` wrappers turn
//! it into a denoiser.
//!
//! - [`mlp`]: a residual MLP for low-dimensional data;
//! - [`dit`]: the diffusion transformer (adaLN-Zero, class labels with a null class);
//! - [`presets`]: the published architectures by name, with exact parameter counts;
//! - [`checkpoint`]: our model folders (architecture + burnpack or safetensors weights);
//! - [`diffusers`]: diffusers model folders (config and safetensors weights) loaded into them;
//! - [`unet`]: the DDPM / ADM U-Net and the cross-attention U-Net of latent diffusion, built
//!   from [`resnet`] blocks, [`attention`] and [`transformer`] layers;
//! - [`embedding`]: sinusoidal embeddings of a continuous scalar;
//! - [`init`]: reproducible, backend-independent parameter initialisation.

pub mod attention;
pub mod backbone;
pub mod checkpoint;
pub mod diffusers;
pub mod dit;
pub mod embedding;
pub mod flops;
pub mod init;
pub mod mlp;
pub mod ops;
pub mod presets;
pub mod resnet;
pub mod transformer;
pub mod unet;

pub use backbone::{Backbone, Conditioning, drop_labels};
pub use checkpoint::{LoadedModel, Model, ModelConfig, WeightFormat, load_folder, save_folder};
pub use dit::{DiT, DiTConfig, DiTSize};
pub use init::SeededInit;
pub use mlp::{Mlp, MlpConfig};
pub use presets::{PRESET_NAMES, preset};
pub use unet::{UNet, UNetConfig};
