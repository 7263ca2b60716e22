//! Devices and floating-point precision, chosen at run time.
//!
//! burn 0.22 has no backend type parameter: the backend that runs an op is the one that
//! owns the tensor's [`Device`]. A binary therefore names its backend in a string
//! (`--backend flex|ndarray|wgpu|cuda[:index]`, or `DIFFUSION_BACKEND` in tests), and this
//! module turns the string into a device, refusing clearly when the backend was not
//! compiled in or the device does not exist.

use std::fmt;
use std::str::FromStr;

use burn::tensor::{DType, Device, FloatDType};

use crate::error::{Error, Result};

/// The environment variable the test suite reads to choose its backend.
pub const BACKEND_ENV: &str = "DIFFUSION_BACKEND";

/// The burn backends a diffusion-lab binary can be built with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BackendKind {
    /// burn-flex: the pure-Rust, multi-threaded CPU backend (the default).
    Flex,
    /// burn-ndarray: the older CPU backend (deprecated upstream, kept as a swap target).
    NdArray,
    /// wgpu through CubeCL: Vulkan, Metal or DirectX GPUs, or Mesa's software Vulkan driver.
    Wgpu,
    /// CUDA through CubeCL.
    Cuda,
}

impl BackendKind {
    /// Every backend we know of, compiled in or not.
    pub const ALL: [BackendKind; 4] = [Self::Flex, Self::NdArray, Self::Wgpu, Self::Cuda];

    /// The name used on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Self::Flex => "flex",
            Self::NdArray => "ndarray",
            Self::Wgpu => "wgpu",
            Self::Cuda => "cuda",
        }
    }

    /// Whether this backend was compiled into the running binary.
    pub fn is_compiled(self) -> bool {
        match self {
            Self::Flex => cfg!(feature = "flex"),
            Self::NdArray => cfg!(feature = "ndarray"),
            Self::Wgpu => cfg!(feature = "wgpu"),
            Self::Cuda => cfg!(feature = "cuda"),
        }
    }

    /// Whether this backend computes correctly in `precision`.
    ///
    /// wgpu devices may report f64 support, yet f64 `exp` and `log` return wrong values on
    /// Mesa's lavapipe (measured: a Gaussian-mixture log-density off by 30 nats), so f64 is
    /// refused there; flex, ndarray and cuda compute in f64 correctly.
    pub fn computes_in(self, precision: Precision) -> bool {
        precision == Precision::F32 || self != Self::Wgpu
    }

    /// The backends compiled into the running binary.
    pub fn compiled() -> Vec<BackendKind> {
        Self::ALL.into_iter().filter(|b| b.is_compiled()).collect()
    }
}

impl fmt::Display for BackendKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for BackendKind {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        Self::ALL
            .into_iter()
            .find(|b| b.name() == s.trim().to_ascii_lowercase())
            .ok_or_else(|| Error::UnknownBackend { name: s.into() })
    }
}

/// A backend and, for multi-device backends, a device index: `flex`, `wgpu`, `cuda:1`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct DeviceSpec {
    /// The backend.
    pub backend: BackendKind,
    /// The device index (`None`: the backend's default device).
    pub index: Option<usize>,
}

impl Default for DeviceSpec {
    /// `flex`, the default backend.
    fn default() -> Self {
        Self {
            backend: BackendKind::Flex,
            index: None,
        }
    }
}

impl fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.index {
            Some(i) => write!(f, "{}:{i}", self.backend),
            None => write!(f, "{}", self.backend),
        }
    }
}

impl FromStr for DeviceSpec {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        let (name, index) = match s.split_once(':') {
            Some((name, idx)) => {
                let index = idx.trim().parse::<usize>().map_err(|_| {
                    Error::invalid(
                        "device index",
                        format!("`{idx}` in `{s}` is not a non-negative integer"),
                    )
                })?;
                (name, Some(index))
            }
            None => (s, None),
        };
        Ok(Self {
            backend: name.parse()?,
            index,
        })
    }
}

impl DeviceSpec {
    /// The spec named by the environment variable `var`, or flex when it is unset or empty.
    pub fn from_env(var: &str) -> Result<Self> {
        match std::env::var(var) {
            Ok(v) if !v.trim().is_empty() => v.parse(),
            _ => Ok(Self::default()),
        }
    }

    /// Opens the device (without autodiff; call `.autodiff()` on it to train).
    ///
    /// Fails with a clear message when the backend was not compiled in, when a
    /// single-device backend is given an index, or when the device does not exist.
    pub fn open(&self) -> Result<Device> {
        if !self.backend.is_compiled() {
            let compiled: Vec<_> = BackendKind::compiled().iter().map(|b| b.name()).collect();
            return Err(Error::BackendNotCompiled {
                requested: self.backend.name().into(),
                compiled: if compiled.is_empty() {
                    "none".into()
                } else {
                    compiled.join(", ")
                },
            });
        }
        match self.backend {
            BackendKind::Flex | BackendKind::NdArray => {
                if let Some(index) = self.index.filter(|&i| i != 0) {
                    return Err(Error::NoDeviceIndex {
                        backend: self.backend.name().into(),
                        index,
                    });
                }
                Ok(open_compiled(self.backend, 0))
            }
            BackendKind::Wgpu | BackendKind::Cuda => {
                let index = self.index.unwrap_or(0);
                let device = open_compiled(self.backend, index);
                probe(&device).map_err(|reason| Error::DeviceNotFound {
                    backend: self.backend.name().into(),
                    index,
                    found: 0,
                    hint: format!(
                        ": {reason}{}",
                        if self.backend == BackendKind::Wgpu {
                            " (on a machine without a GPU, install a software Vulkan driver: \
                             `apt-get install mesa-vulkan-drivers`)"
                        } else {
                            " (is the NVIDIA driver installed?)"
                        }
                    ),
                })?;
                Ok(device)
            }
        }
    }

    /// Opens the device and makes `precision` its default float type.
    ///
    /// This must happen before any tensor is created on the device: burn fixes a device's
    /// defaults at its first tensor. Libraries never rely on the default (they create
    /// tensors in the dtype of their inputs); binaries call this once at start-up.
    pub fn open_with(&self, precision: Precision) -> Result<Device> {
        let mut device = self.open()?;
        if !self.backend.computes_in(precision) || !device.supports_dtype(precision.dtype()) {
            return Err(Error::UnsupportedDtype {
                backend: self.backend.name().into(),
                dtype: precision.to_string(),
            });
        }
        if device.settings().float_dtype != precision.float_dtype() {
            device
                .configure(precision.float_dtype())
                .map_err(|e| Error::DeviceConfig {
                    backend: self.backend.name().into(),
                    reason: format!("{e:?}"),
                })?;
        }
        Ok(device)
    }
}

/// The device of a compiled-in backend (the caller has checked `is_compiled`). The last arm is
/// unreachable when every backend is compiled in.
#[allow(unused_variables, deprecated, unreachable_code, unreachable_patterns)]
fn open_compiled(backend: BackendKind, index: usize) -> Device {
    match backend {
        #[cfg(feature = "flex")]
        BackendKind::Flex => Device::flex(),
        #[cfg(feature = "ndarray")]
        BackendKind::NdArray => Device::ndarray(),
        #[cfg(feature = "wgpu")]
        BackendKind::Wgpu => {
            use burn::tensor::{DeviceKind, DeviceType};
            let listed = Device::enumerate(DeviceType::Wgpu).into_vec();
            match listed.into_iter().nth(index) {
                Some(device) => device,
                // A software adapter (lavapipe) is not listed but is the default device.
                None => Device::wgpu(DeviceKind::DefaultDevice),
            }
        }
        #[cfg(feature = "cuda")]
        BackendKind::Cuda => Device::cuda(index),
        _ => unreachable!("backend {backend} is not compiled in"),
    }
}

/// Runs one tiny op on the device, turning a backend panic into an error message.
fn probe(device: &Device) -> std::result::Result<(), String> {
    let device = device.clone();
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let outcome = std::panic::catch_unwind(move || {
        burn::tensor::Tensor::<1>::ones([1], &device)
            .into_data()
            .try_into_vec_as::<f32>()
            .ok()
    });
    std::panic::set_hook(previous);
    match outcome {
        Ok(Some(v)) if v == [1.0] => Ok(()),
        Ok(_) => Err("the device returned a wrong value for a trivial op".into()),
        Err(payload) => Err(payload
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "the backend failed to start".into())),
    }
}

/// Floating-point precision of a computation.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Precision {
    /// 32-bit floats: the default, and the only choice on wgpu.
    #[default]
    F32,
    /// 64-bit floats: for exact comparisons with reference implementations.
    F64,
}

impl Precision {
    /// The burn dtype.
    pub fn dtype(self) -> DType {
        match self {
            Self::F32 => DType::F32,
            Self::F64 => DType::F64,
        }
    }

    /// The burn float dtype (for device defaults).
    pub fn float_dtype(self) -> FloatDType {
        match self {
            Self::F32 => FloatDType::F32,
            Self::F64 => FloatDType::F64,
        }
    }

    /// The precision of a tensor's dtype (anything but f64 counts as f32).
    pub fn of(dtype: DType) -> Self {
        if dtype == DType::F64 { Self::F64 } else { Self::F32 }
    }
}

impl fmt::Display for Precision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::F32 => "f32",
            Self::F64 => "f64",
        })
    }
}

impl FromStr for Precision {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "f32" | "float32" => Ok(Self::F32),
            "f64" | "float64" => Ok(Self::F64),
            _ => Err(Error::UnknownDtype { name: s.into() }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_backend_and_index() {
        let spec: DeviceSpec = "cuda:1".parse().unwrap();
        assert_eq!(spec.backend, BackendKind::Cuda);
        assert_eq!(spec.index, Some(1));
        assert_eq!(spec.to_string(), "cuda:1");
        assert_eq!("WGPU".parse::<DeviceSpec>().unwrap().index, None);
    }

    #[test]
    fn rejects_unknown_names_clearly() {
        let err = "tpu".parse::<DeviceSpec>().unwrap_err().to_string();
        assert!(err.contains("unknown backend `tpu`"), "{err}");
        let err = "cuda:x".parse::<DeviceSpec>().unwrap_err().to_string();
        assert!(err.contains("not a non-negative integer"), "{err}");
        let err = "f16".parse::<Precision>().unwrap_err().to_string();
        assert!(err.contains("expected f32 or f64"), "{err}");
    }

    #[test]
    fn missing_backend_lists_the_compiled_ones() {
        // `cuda` is never compiled into the unit tests of this crate.
        let spec = DeviceSpec {
            backend: BackendKind::Cuda,
            index: None,
        };
        if !BackendKind::Cuda.is_compiled() {
            let err = spec.open().unwrap_err().to_string();
            assert!(err.contains("was not compiled into this binary"), "{err}");
            assert!(err.contains("--features cuda"), "{err}");
        }
    }
}
