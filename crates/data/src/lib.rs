//! # diffusion-data
//!
//! Data for diffusion experiments:
//!
//! - [`toy2d`]: the standard 2-D toy distributions, seeded and per-sample reproducible.

pub mod toy2d;

pub use toy2d::Toy2d;
