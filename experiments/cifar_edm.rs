//! `cifar-edm`: EDM on CIFAR-10 (Karras et al. 2022). The pipeline is `diffusion_experiments::image`; the settings are
//! `experiments/configs/cifar-edm.toml` (see docs/experiments.md).

fn main() {
    diffusion_experiments::image::image_main(
        "cifar-edm",
        "EDM on CIFAR-10 (Karras et al. 2022)",
        include_str!("configs/cifar-edm.toml"),
    );
}
