//! `cifar-sde`: Score SDEs on CIFAR-10 (Song et al. 2021). The pipeline is `diffusion_experiments::image`; the settings are
//! `experiments/configs/cifar-sde.toml` (see docs/experiments.md).

fn main() {
    diffusion_experiments::image::image_main(
        "cifar-sde",
        "Score SDEs on CIFAR-10 (Song et al. 2021)",
        include_str!("configs/cifar-sde.toml"),
    );
}
