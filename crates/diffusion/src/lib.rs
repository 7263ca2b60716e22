//! # diffusion
//!
//! diffusion-lab in one dependency: research components for diffusion, score-based and
//! flow-matching generative models on burn, re-exported crate by crate.
//!
//! | module | crate | what |
//! |---|---|---|
//! | [`core`] | `diffusion-core` | devices, precision, seeded noise, `.npy`, errors |
//! | [`schedules`] | `diffusion-schedules` | noise schedules, grids, conversions |
//! | [`ddpm`] | `diffusion-ddpm` | forward process, parameterisations, losses |
//! | [`samplers`] | `diffusion-samplers` | the denoiser interface and the samplers |
//! | [`score`] | `diffusion-score` | SDEs, score matching, Langevin and PC sampling, likelihoods |
//! | [`flow`] | `diffusion-flow` | flow matching, OT couplings, rectified flow, reflow |
//! | [`backbones`] | `diffusion-backbones` | denoising networks |
//! | [`data`] | `diffusion-data` | data sets |
//! | [`train`] | `diffusion-train` | the training loop |
//! | [`metrics`] | `diffusion-metrics` | evaluation |
//! | [`viz`] | `diffusion-viz` | figures |
//!
//! Enable a backend with a feature of this crate (`flex`, `ndarray`, `wgpu`, `cuda`) and
//! open its device with [`core::DeviceSpec`].

pub use diffusion_backbones as backbones;
pub use diffusion_core as core;
pub use diffusion_core::burn;
pub use diffusion_data as data;
pub use diffusion_ddpm as ddpm;
pub use diffusion_flow as flow;
pub use diffusion_metrics as metrics;
pub use diffusion_samplers as samplers;
pub use diffusion_schedules as schedules;
pub use diffusion_score as score;
pub use diffusion_train as train;
pub use diffusion_viz as viz;
