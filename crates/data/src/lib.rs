//! # diffusion-data
//!
//! Data for diffusion experiments:
//!
//! - [`toy2d`]: the standard 2-D toy distributions, seeded and per-sample reproducible;
//! - [`cifar`], [`mnist`], [`folder`]: CIFAR-10/100 (binary format), MNIST and Fashion-MNIST
//!   (IDX), and folders of PNG/JPEG images, as [`ImageSet`]s;
//! - [`shapes`](mod@shapes): a built-in image set (discs, squares, triangles) generated on the fly;
//! - [`download`]: downloads on first use, checked against the published MD5s, with an error
//!   offline that says where to place the files;
//! - [`loader`]: deterministic shuffled batches with horizontal flips and scaling to [−1, 1],
//!   prepared on a background thread;
//! - [`resample`]: Lanczos resizing (Pillow's `LANCZOS`), the super-resolution baseline and the
//!   maker of low-resolution conditioning inputs.
//!
//! The Gaussian-mixture oracle (`diffusion_samplers::GaussianMixture`) samples itself.

pub mod cifar;
pub mod download;
pub mod error;
pub mod folder;
pub mod images;
pub mod loader;
pub mod mnist;
pub mod resample;
pub mod shapes;
pub mod toy2d;

pub use cifar::{Split, load_cifar10, load_cifar100};
pub use download::{RemoteFile, fetch, md5_file};
pub use error::DataError;
pub use folder::load_image_folder;
pub use images::ImageSet;
pub use loader::{DataLoader, HostBatch, LoaderConfig, Prefetch};
pub use mnist::{MnistKind, load_mnist, read_idx};
pub use resample::{lanczos_matrix, lanczos_resize, lanczos3};
pub use shapes::shapes;
pub use toy2d::Toy2d;
