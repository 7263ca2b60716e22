//! `cifar-improved`: Improved DDPM on CIFAR-10 (Nichol & Dhariwal 2021). The pipeline is `diffusion_experiments::image`; the settings are
//! `experiments/configs/cifar-improved.toml` (see docs/experiments.md).

fn main() {
    diffusion_experiments::image::image_main(
        "cifar-improved",
        "Improved DDPM on CIFAR-10 (Nichol & Dhariwal 2021)",
        include_str!("configs/cifar-improved.toml"),
    );
}
