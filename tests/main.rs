//! Cross-crate integration tests. One binary, run on every backend:
//! `DIFFUSION_BACKEND=flex|ndarray|wgpu cargo test --release --workspace`.

mod adamw;
mod backbones;
mod data;
mod ddpm_bound;
mod diffusers_reference;
mod flow;
mod foundation;
mod guidance;
mod inpainting;
mod kdiffusion_reference;
mod kernels;
mod metrics;
mod ode;
mod oracle;
mod readme;
mod schedules_reference;
mod score;
mod score_sde_reference;
mod super_resolution;
mod train;
mod vp_samplers_reference;
