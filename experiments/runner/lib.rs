//! The shared runner of the experiment binaries: command line, configuration, device and
//! run folder.
//!
//! Every experiment reads a committed TOML configuration (`experiments/configs/NAME.toml`,
//! embedded in the binary), optionally replaced by `--config FILE` and patched by
//! `--set key=value` (dotted keys, TOML values), and writes everything it produces into a
//! run folder (`--out DIR`, by default a new folder under `runs/`), starting with the
//! resolved configuration.

pub mod family;
pub mod image;
pub mod reflow;

use std::fmt::Display;
use std::path::{Path, PathBuf};

use burn::tensor::Device;
use clap::Parser;
use diffusion_core::{BackendKind, DeviceSpec, Precision};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// What can stop an experiment before it starts or while it writes its results.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// A bad `--config` file or `--set` value.
    #[error("configuration: {0}")]
    Config(String),
    /// The device could not be opened.
    #[error(transparent)]
    Device(#[from] diffusion_core::Error),
    /// A file of the run folder could not be written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The experiment itself failed.
    #[error("{0}")]
    Failed(String),
}

/// Shorthand for results of the runner.
pub type Result<T, E = RunError> = std::result::Result<T, E>;

/// The command-line options every experiment takes.
#[derive(Parser, Debug, Clone)]
pub struct CommonArgs {
    /// Backend and device: flex, ndarray, wgpu, cuda (optionally with `:index`).
    #[arg(long, default_value = "flex")]
    pub backend: DeviceSpec,
    /// Floating-point precision: f32 or f64 (f64 where the backend supports it).
    #[arg(long, default_value = "f32")]
    pub dtype: Precision,
    /// The run folder (default: a new folder under `runs/`).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// A TOML configuration replacing the experiment's committed one.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Override a configuration value: `--set train.steps=500` (repeatable; TOML values).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub overrides: Vec<String>,
    /// The seed of the run (overrides `seed` in the configuration).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Data-parallel training: a count N (N devices of `--backend` from its index on:
    /// `--backend cuda --devices 2` is `cuda:0,cuda:1`; on a CPU backend N workers share the
    /// one device) or a comma list (`cuda:0,cuda:1`). The batch is split evenly; the first
    /// device holds the model, optimiser and sampling.
    #[arg(long)]
    pub devices: Option<DeviceList>,
}

impl CommonArgs {
    /// Refuses `--devices` with more than one device, for experiment `name`, which does not
    /// train data-parallel (before its run folder is made).
    pub fn one_device(&self, name: &str) -> Result<()> {
        match self.devices.as_ref().map(|d| d.specs(&self.backend).len()) {
            None | Some(1) => Ok(()),
            Some(n) => Err(RunError::Config(format!(
                "--devices: {name} runs on one device, not {n}; data-parallel training is for \
                 the image experiments (shapes, cifar-*)"
            ))),
        }
    }
}

/// The devices of `--devices`: a count or a list of device specs.
#[derive(Clone, Debug, PartialEq)]
pub enum DeviceList {
    /// N devices of the `--backend` backend.
    Count(usize),
    /// These devices, in order.
    List(Vec<DeviceSpec>),
}

impl std::str::FromStr for DeviceList {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        if let Ok(n) = s.trim().parse::<usize>() {
            return match n {
                0 => Err("--devices 0: give at least one device".into()),
                n => Ok(Self::Count(n)),
            };
        }
        s.split(',')
            .map(|item| {
                item.parse::<DeviceSpec>()
                    .map_err(|e| format!("--devices {s}: {e}"))
            })
            .collect::<std::result::Result<Vec<_>, _>>()
            .map(Self::List)
    }
}

impl DeviceList {
    /// The device specs, with `backend` for a count.
    pub fn specs(&self, backend: &DeviceSpec) -> Vec<DeviceSpec> {
        match self {
            Self::List(specs) => specs.clone(),
            Self::Count(n) => (0..*n)
                .map(|i| DeviceSpec {
                    backend: backend.backend,
                    // CPU backends have one device, shared by the workers.
                    index: match backend.backend {
                        BackendKind::Flex | BackendKind::NdArray => None,
                        _ => Some(backend.index.unwrap_or(0) + i),
                    },
                })
                .collect(),
        }
    }
}

/// A started run: its device, its folder and its resolved configuration.
pub struct Run<C> {
    /// The experiment's name.
    pub name: String,
    /// The device everything runs on (the first of `devices`).
    pub device: Device,
    /// The devices data-parallel training splits its batches over (`--devices`; by default
    /// the one `device`).
    pub devices: Vec<Device>,
    /// The precision of the run.
    pub precision: Precision,
    /// The resolved configuration.
    pub config: C,
    dir: PathBuf,
}

impl<C: Serialize + DeserializeOwned> Run<C> {
    /// Resolves the configuration (committed default, `--config`, `--set`, `--seed`), opens
    /// the device and creates the run folder with `config.toml` in it.
    pub fn start(name: &str, default_config: &str, args: &CommonArgs) -> Result<Self> {
        let text = match &args.config {
            Some(path) => std::fs::read_to_string(path).map_err(|source| RunError::Io {
                path: path.clone(),
                source,
            })?,
            None => default_config.to_string(),
        };
        let mut value: toml::Value = toml::from_str(&text)
            .map_err(|e| RunError::Config(format!("cannot parse the configuration: {e}")))?;
        for item in &args.overrides {
            apply_override(&mut value, item)?;
        }
        if let Some(seed) = args.seed {
            set_path(&mut value, "seed", toml::Value::Integer(seed as i64))?;
        }
        let config: C = value
            .clone()
            .try_into()
            .map_err(|e| RunError::Config(format!("{e}")))?;
        let specs = match &args.devices {
            Some(list) => list.specs(&args.backend),
            None => vec![args.backend],
        };
        let devices = specs
            .iter()
            .map(|spec| spec.open_with(args.dtype))
            .collect::<std::result::Result<Vec<_>, _>>()?;
        let device = devices[0].clone();
        let dir = match &args.out {
            Some(dir) => dir.clone(),
            None => default_run_dir(name),
        };
        std::fs::create_dir_all(&dir).map_err(|source| RunError::Io {
            path: dir.clone(),
            source,
        })?;
        let run = Self {
            name: name.into(),
            device,
            devices,
            precision: args.dtype,
            config,
            dir,
        };
        let resolved = toml::to_string_pretty(&run.config).map_err(|e| RunError::Config(e.to_string()))?;
        run.write_text("config.toml", &resolved)?;
        Ok(run)
    }
}

impl<C> Run<C> {
    /// The run folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// A path inside the run folder.
    pub fn path(&self, file: &str) -> PathBuf {
        self.dir.join(file)
    }

    /// Writes a text file into the run folder (atomically).
    pub fn write_text(&self, file: &str, text: &str) -> Result<()> {
        diffusion_core::fs::write_atomic(&self.path(file), text.as_bytes())
            .map_err(|e| RunError::Failed(e.to_string()))
    }

    /// Writes a value as pretty JSON into the run folder.
    pub fn write_json(&self, file: &str, value: &impl Serialize) -> Result<()> {
        let text = serde_json::to_string_pretty(value).map_err(|e| RunError::Failed(e.to_string()))?;
        self.write_text(file, &(text + "\n"))
    }

    /// Prints a line to the console, prefixed by the experiment's name.
    pub fn say(&self, message: impl Display) {
        println!("[{}] {message}", self.name);
    }
}

/// `runs/NAME-YYYYmmdd-HHMMSS` (UTC), with a numeric suffix if it exists already.
fn default_run_dir(name: &str) -> PathBuf {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(days as i64);
    let stamp = format!(
        "{y:04}{m:02}{d:02}-{:02}{:02}{:02}",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    );
    let base = PathBuf::from("runs").join(format!("{name}-{stamp}"));
    let mut dir = base.clone();
    let mut k = 1;
    while dir.exists() {
        dir = PathBuf::from(format!("{}-{k}", base.display()));
        k += 1;
    }
    dir
}

/// The proleptic Gregorian date of a day count since 1970-01-01 (H. Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// Applies `key=value` to a TOML table: dotted keys descend into tables, the value is parsed
/// as TOML (so `--set train.lr=3e-4`, `--set data.name="moons"` or `--set data.name=moons`).
pub fn apply_override(root: &mut toml::Value, item: &str) -> Result<()> {
    let (key, raw) = item
        .split_once('=')
        .ok_or_else(|| RunError::Config(format!("--set {item}: expected KEY=VALUE")))?;
    let parsed: toml::Value = toml::from_str::<toml::Table>(&format!("v = {raw}"))
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(raw.to_string()));
    set_path(root, key.trim(), parsed)
}

fn set_path(root: &mut toml::Value, key: &str, value: toml::Value) -> Result<()> {
    let mut node = root;
    let parts: Vec<&str> = key.split('.').collect();
    for (i, part) in parts.iter().enumerate() {
        let table = node.as_table_mut().ok_or_else(|| {
            RunError::Config(format!("--set {key}: `{}` is not a table", parts[..i].join(".")))
        })?;
        if i + 1 == parts.len() {
            match table.get(*part) {
                Some(old)
                    if old.type_str() != value.type_str() && !(old.is_float() && value.is_integer()) =>
                {
                    return Err(RunError::Config(format!(
                        "--set {key}: expected a {} (like {old}), got {value}",
                        old.type_str()
                    )));
                }
                Some(_) => {
                    let value = match (table.get(*part), value) {
                        (Some(old), toml::Value::Integer(i)) if old.is_float() => {
                            toml::Value::Float(i as f64)
                        }
                        (_, v) => v,
                    };
                    table.insert(part.to_string(), value);
                }
                None => {
                    let known: Vec<&String> = table.keys().collect();
                    return Err(RunError::Config(format!(
                        "--set {key}: unknown key `{part}` (known here: {known:?})"
                    )));
                }
            }
            return Ok(());
        }
        node = table
            .get_mut(*part)
            .ok_or_else(|| RunError::Config(format!("--set {key}: unknown section `{part}`")))?;
    }
    Ok(())
}

/// Runs an experiment's `main` body, printing an error and exiting with status 2 on failure.
pub fn exit_on_error(result: Result<()>) {
    if let Err(e) = result {
        eprintln!("error: {e}");
        std::process::exit(2);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overrides_descend_and_check_types() {
        let mut v: toml::Value =
            toml::from_str("seed = 1\n[train]\nlr = 0.001\nsteps = 10\nname = \"a\"").unwrap();
        apply_override(&mut v, "train.lr=3e-4").unwrap();
        apply_override(&mut v, "train.steps=20").unwrap();
        apply_override(&mut v, "train.name=moons").unwrap();
        apply_override(&mut v, "train.lr=1").unwrap(); // an integer where a float is expected
        assert_eq!(v["train"]["lr"].as_float(), Some(1.0));
        assert_eq!(v["train"]["steps"].as_integer(), Some(20));
        assert_eq!(v["train"]["name"].as_str(), Some("moons"));
        assert!(apply_override(&mut v, "train.steps=fast").is_err());
        assert!(
            apply_override(&mut v, "train.typo=1")
                .unwrap_err()
                .to_string()
                .contains("unknown key")
        );
        assert!(apply_override(&mut v, "nothing").is_err());
    }

    #[test]
    fn device_lists_are_counts_or_specs() {
        let flex: DeviceSpec = "flex".parse().unwrap();
        let cuda: DeviceSpec = "cuda:1".parse().unwrap();
        let two: DeviceList = "2".parse().unwrap();
        assert_eq!(two.specs(&flex), vec![flex, flex]);
        let on_cuda: Vec<String> = two.specs(&cuda).iter().map(|s| s.to_string()).collect();
        assert_eq!(on_cuda, ["cuda:1", "cuda:2"]);
        let list: DeviceList = "cuda:0, wgpu".parse().unwrap();
        let named: Vec<String> = list.specs(&flex).iter().map(|s| s.to_string()).collect();
        assert_eq!(named, ["cuda:0", "wgpu"]);
        assert!("0".parse::<DeviceList>().is_err());
        assert!("cuda:0,tpu".parse::<DeviceList>().unwrap_err().contains("tpu"));
    }

    #[test]
    fn dates_are_gregorian() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(20_537), (2026, 3, 25));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
    }
}
