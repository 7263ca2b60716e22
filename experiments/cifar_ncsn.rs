//! `cifar-ncsn`: NCSNv2 on CIFAR-10 (Song & Ermon 2020). The pipeline is `diffusion_experiments::image`; the settings are
//! `experiments/configs/cifar-ncsn.toml` (see docs/experiments.md).

fn main() {
    diffusion_experiments::image::image_main(
        "cifar-ncsn",
        "NCSNv2 on CIFAR-10 (Song & Ermon 2020)",
        include_str!("configs/cifar-ncsn.toml"),
    );
}
