//! `cifar-ddpm`: DDPM on CIFAR-10 (Ho et al. 2020). The pipeline is `diffusion_experiments::image`; the settings are
//! `experiments/configs/cifar-ddpm.toml` (see docs/experiments.md).

fn main() {
    diffusion_experiments::image::image_main(
        "cifar-ddpm",
        "DDPM on CIFAR-10 (Ho et al. 2020)",
        include_str!("configs/cifar-ddpm.toml"),
    );
}
