//! `cifar-dit`: Class-conditional DiT-S/2 on CIFAR-10 with classifier-free guidance (Peebles & Xie 2023). The pipeline is `diffusion_experiments::image`; the settings are
//! `experiments/configs/cifar-dit.toml` (see docs/experiments.md).

fn main() {
    diffusion_experiments::image::image_main(
        "cifar-dit",
        "Class-conditional DiT-S/2 on CIFAR-10 with classifier-free guidance (Peebles & Xie 2023)",
        include_str!("configs/cifar-dit.toml"),
    );
}
