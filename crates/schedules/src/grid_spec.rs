//! A σ grid written as text, for command lines and configuration files:
//! `karras:n=10,min=0.002,max=80,rho=7`, `exponential:n=10,min=0.002,max=80`,
//! `polyexponential:n=10,min=0.002,max=80,rho=1`, `vp:n=10,beta_d=19.9,beta_min=0.1,eps_s=1e-3`,
//! or an explicit list `80,20,5,1,0`.

use std::collections::BTreeMap;
use std::str::FromStr;

use crate::error::{Result, ScheduleError};
use crate::grids::SigmaGrid;

/// A parsed grid specification.
#[derive(Clone, Debug, PartialEq)]
pub enum GridSpec {
    /// [`SigmaGrid::karras`] (ρ defaults to 7).
    Karras {
        /// Levels before the appended 0.
        n: usize,
        /// σ_min.
        min: f64,
        /// σ_max.
        max: f64,
        /// ρ.
        rho: f64,
    },
    /// [`SigmaGrid::exponential`].
    Exponential {
        /// Levels before the appended 0.
        n: usize,
        /// σ_min.
        min: f64,
        /// σ_max.
        max: f64,
    },
    /// [`SigmaGrid::polyexponential`] (ρ defaults to 1).
    Polyexponential {
        /// Levels before the appended 0.
        n: usize,
        /// σ_min.
        min: f64,
        /// σ_max.
        max: f64,
        /// ρ.
        rho: f64,
    },
    /// [`SigmaGrid::vp`] (defaults β_d = 19.9, β_min = 0.1, ε_s = 1e-3).
    Vp {
        /// Levels before the appended 0.
        n: usize,
        /// β_d.
        beta_d: f64,
        /// β_min.
        beta_min: f64,
        /// ε_s.
        eps_s: f64,
    },
    /// Explicit values.
    List(Vec<f64>),
}

fn bad(spec: &str, reason: impl Into<String>) -> ScheduleError {
    ScheduleError::param("sigma grid", format!("`{spec}`: {}", reason.into()))
}

impl FromStr for GridSpec {
    type Err = ScheduleError;

    fn from_str(spec: &str) -> Result<Self> {
        let spec = spec.trim();
        let Some((kind, args)) = spec.split_once(':') else {
            let values: std::result::Result<Vec<f64>, _> =
                spec.split(',').map(|v| v.trim().parse::<f64>()).collect();
            return values.map(GridSpec::List).map_err(|_| {
                bad(
                    spec,
                    "expected karras:…, exponential:…, polyexponential:…, vp:… or a comma-separated list of numbers",
                )
            });
        };
        let mut map = BTreeMap::new();
        for pair in args.split(',').filter(|p| !p.trim().is_empty()) {
            let (k, v) = pair
                .split_once('=')
                .ok_or_else(|| bad(spec, format!("`{pair}` is not key=value")))?;
            let v: f64 = v
                .trim()
                .parse()
                .map_err(|_| bad(spec, format!("`{v}` is not a number")))?;
            map.insert(k.trim().to_string(), v);
        }
        let allowed: &[&str] = match kind {
            "karras" | "polyexponential" => &["n", "min", "max", "rho"],
            "exponential" => &["n", "min", "max"],
            "vp" => &["n", "beta_d", "beta_min", "eps_s"],
            other => return Err(bad(spec, format!("unknown grid `{other}`"))),
        };
        if let Some(k) = map.keys().find(|k| !allowed.contains(&k.as_str())) {
            return Err(bad(
                spec,
                format!("unknown key `{k}` (allowed: {})", allowed.join(", ")),
            ));
        }
        let get = |k: &str, default: Option<f64>| -> Result<f64> {
            map.get(k)
                .copied()
                .or(default)
                .ok_or_else(|| bad(spec, format!("missing `{k}=`")))
        };
        let n = get("n", None)?;
        if n < 1.0 || n.fract() != 0.0 {
            return Err(bad(spec, format!("n = {n} must be a positive integer")));
        }
        let n = n as usize;
        Ok(match kind {
            "karras" => GridSpec::Karras {
                n,
                min: get("min", None)?,
                max: get("max", None)?,
                rho: get("rho", Some(7.0))?,
            },
            "exponential" => GridSpec::Exponential {
                n,
                min: get("min", None)?,
                max: get("max", None)?,
            },
            "polyexponential" => GridSpec::Polyexponential {
                n,
                min: get("min", None)?,
                max: get("max", None)?,
                rho: get("rho", Some(1.0))?,
            },
            _ => GridSpec::Vp {
                n,
                beta_d: get("beta_d", Some(19.9))?,
                beta_min: get("beta_min", Some(0.1))?,
                eps_s: get("eps_s", Some(1e-3))?,
            },
        })
    }
}

impl GridSpec {
    /// The grid.
    pub fn build(&self) -> Result<SigmaGrid> {
        match *self {
            Self::Karras { n, min, max, rho } => SigmaGrid::karras(n, min, max, rho),
            Self::Exponential { n, min, max } => SigmaGrid::exponential(n, min, max),
            Self::Polyexponential { n, min, max, rho } => SigmaGrid::polyexponential(n, min, max, rho),
            Self::Vp {
                n,
                beta_d,
                beta_min,
                eps_s,
            } => SigmaGrid::vp(n, beta_d, beta_min, eps_s),
            Self::List(ref v) => SigmaGrid::new(v.clone()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_form() {
        let g: GridSpec = "karras:n=10,min=0.002,max=80".parse().unwrap();
        assert_eq!(
            g,
            GridSpec::Karras {
                n: 10,
                min: 0.002,
                max: 80.0,
                rho: 7.0
            }
        );
        assert_eq!(g.build().unwrap().len(), 11);
        assert!(matches!(
            "vp:n=5".parse::<GridSpec>().unwrap(),
            GridSpec::Vp { n: 5, .. }
        ));
        assert_eq!(
            "3, 1, 0".parse::<GridSpec>().unwrap(),
            GridSpec::List(vec![3.0, 1.0, 0.0])
        );
        let e = "exponential:n=4,min=0.1,max=10"
            .parse::<GridSpec>()
            .unwrap()
            .build()
            .unwrap();
        assert!((e.sigmas()[1] - 10f64.powf(1.0 / 3.0)).abs() < 1e-12);
    }

    #[test]
    fn errors_say_what_is_wrong() {
        for (spec, message) in [
            ("karras:n=10,min=0.002", "missing `max=`"),
            ("karras:n=10,min=0.002,max=80,sigma=3", "unknown key `sigma`"),
            ("karras:n=ten", "not a number"),
            ("linear:n=4", "unknown grid `linear`"),
            ("karras:n=0,min=1,max=2", "positive integer"),
            ("1, x", "comma-separated list"),
        ] {
            let err = spec.parse::<GridSpec>().unwrap_err().to_string();
            assert!(err.contains(message), "{spec}: {err}");
        }
        assert!("1,2".parse::<GridSpec>().unwrap().build().is_err());
    }
}
