//! # diffusion-core
//!
//! The ground floor of diffusion-lab, shared by every other crate:
//!
//! - [`device`]: the backend (`flex`, `ndarray`, `wgpu`, `cuda`) and precision (`f32`, `f64`)
//!   chosen at run time, with clear errors for a backend that was not compiled in;
//! - [`noise`]: seeded noise where sample `i` of seed `s` is the same in any batch and on
//!   any backend, and the [`NoiseSource`](noise::NoiseSource) trait stochastic samplers take;
//! - [`npy`]: `.npy` files for exchange with numpy and PyTorch;
//! - [`tensor`]: host ↔ device helpers that keep the dtype of their inputs;
//! - [`fs`]: atomic file writes;
//! - [`Error`]: the error type.
//!
//! Backends are cargo features of this crate (`flex`, `ndarray`, `wgpu`, `cuda`), all off
//! by default so that libraries stay backend-free; binaries and tests turn them on.

pub mod device;
pub mod error;
pub mod fs;
pub mod noise;
pub mod npy;
pub mod tensor;

pub use burn;
pub use device::{BackendKind, DeviceSpec, Precision};
pub use error::{Error, Result};
