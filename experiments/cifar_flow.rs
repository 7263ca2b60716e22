//! `cifar-flow`: OT-CFM and rectified flow on CIFAR-10 (Tong et al. 2023; Liu et al. 2022). The pipeline is `diffusion_experiments::image`; the settings are
//! `experiments/configs/cifar-flow.toml` (see docs/experiments.md).

fn main() {
    diffusion_experiments::image::image_main(
        "cifar-flow",
        "OT-CFM and rectified flow on CIFAR-10 (Tong et al. 2023; Liu et al. 2022)",
        include_str!("configs/cifar-flow.toml"),
    );
}
