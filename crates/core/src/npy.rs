//! Reading and writing NumPy `.npy` files (format versions 1–3, little-endian `f4` / `f8`,
//! C order), for exchanging tensors with numpy and PyTorch.

use std::path::{Path, PathBuf};

use burn::tensor::{DType, Device, Tensor, TensorData};

use crate::error::{Error, Result};
use crate::fs::write_atomic;

const MAGIC: &[u8] = b"\x93NUMPY";

/// The numbers of an array, in the precision they were stored in.
#[derive(Clone, Debug, PartialEq)]
pub enum NpyData {
    /// `<f4`
    F32(Vec<f32>),
    /// `<f8`
    F64(Vec<f64>),
}

/// An n-dimensional array read from, or to be written to, a `.npy` file.
#[derive(Clone, Debug, PartialEq)]
pub struct NpyArray {
    /// The shape (C order).
    pub shape: Vec<usize>,
    /// The values, row-major.
    pub data: NpyData,
}

impl NpyArray {
    /// An f64 array; fails if the number of values does not match the shape.
    pub fn from_f64(shape: Vec<usize>, values: Vec<f64>) -> Result<Self> {
        check_len(&shape, values.len())?;
        Ok(Self {
            shape,
            data: NpyData::F64(values),
        })
    }

    /// An f32 array; fails if the number of values does not match the shape.
    pub fn from_f32(shape: Vec<usize>, values: Vec<f32>) -> Result<Self> {
        check_len(&shape, values.len())?;
        Ok(Self {
            shape,
            data: NpyData::F32(values),
        })
    }

    /// The values as f64 (exact for both stored precisions).
    pub fn to_f64(&self) -> Vec<f64> {
        match &self.data {
            NpyData::F32(v) => v.iter().map(|&x| x as f64).collect(),
            NpyData::F64(v) => v.clone(),
        }
    }

    /// The stored precision as a burn dtype.
    pub fn dtype(&self) -> DType {
        match self.data {
            NpyData::F32(_) => DType::F32,
            NpyData::F64(_) => DType::F64,
        }
    }

    /// Reads a `.npy` file.
    pub fn read(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).map_err(|source| Error::Io {
            path: path.into(),
            source,
        })?;
        Self::from_bytes(&bytes).map_err(|e| match e {
            Error::Npy { reason, .. } => Error::Npy {
                path: path.into(),
                reason,
            },
            other => other,
        })
    }

    /// Writes a `.npy` file (version 1.0), atomically: a reader never sees half a file.
    pub fn write(&self, path: impl AsRef<Path>) -> Result<()> {
        write_atomic(path.as_ref(), &self.to_bytes())
    }

    /// Parses the bytes of a `.npy` file.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        let bad = |reason: String| Error::Npy {
            path: PathBuf::from("<memory>"),
            reason,
        };
        if bytes.len() < 10 || &bytes[..6] != MAGIC {
            return Err(bad("missing the \\x93NUMPY magic string".into()));
        }
        let (header_len, start) = match bytes[6] {
            1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
            2 | 3 if bytes.len() >= 12 => (
                u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
                12,
            ),
            v => return Err(bad(format!("unsupported format version {v}"))),
        };
        let header = bytes
            .get(start..start + header_len)
            .ok_or_else(|| bad("truncated header".into()))?;
        let header = std::str::from_utf8(header).map_err(|_| bad("header is not text".into()))?;
        let descr = dict_value(header, "descr").ok_or_else(|| bad("no 'descr' in header".into()))?;
        let fortran =
            dict_value(header, "fortran_order").ok_or_else(|| bad("no 'fortran_order' in header".into()))?;
        let shape = dict_value(header, "shape").ok_or_else(|| bad("no 'shape' in header".into()))?;
        if fortran.trim() != "False" {
            return Err(bad(
                "Fortran-ordered arrays are not supported; save with np.ascontiguousarray".into(),
            ));
        }
        let shape = parse_shape(shape).ok_or_else(|| bad(format!("cannot parse shape {shape}")))?;
        let count: usize = shape.iter().product();
        let body = &bytes[start + header_len..];
        let descr = descr.trim().trim_matches(|c| c == '\'' || c == '"');
        let data = match descr {
            "<f4" | "=f4" | "f4" => NpyData::F32(read_values(body, count, f32::from_le_bytes).map_err(bad)?),
            "<f8" | "=f8" | "f8" => NpyData::F64(read_values(body, count, f64::from_le_bytes).map_err(bad)?),
            other => {
                return Err(bad(format!(
                    "dtype '{other}' is not supported; convert with .astype(np.float32) or np.float64"
                )));
            }
        };
        Ok(Self { shape, data })
    }

    /// The bytes of a version-1.0 `.npy` file.
    pub fn to_bytes(&self) -> Vec<u8> {
        let descr = match self.data {
            NpyData::F32(_) => "<f4",
            NpyData::F64(_) => "<f8",
        };
        let shape = match self.shape.len() {
            1 => format!("({},)", self.shape[0]),
            _ => format!(
                "({})",
                self.shape
                    .iter()
                    .map(|d| d.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        };
        let mut header = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}");
        // Pad with spaces so that the data starts on a 64-byte boundary; end with '\n'.
        let unpadded = MAGIC.len() + 4 + header.len() + 1;
        header.push_str(&" ".repeat((64 - unpadded % 64) % 64));
        header.push('\n');
        let mut out = Vec::with_capacity(10 + header.len() + self.shape.iter().product::<usize>() * 8);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&[1, 0]);
        out.extend_from_slice(&(header.len() as u16).to_le_bytes());
        out.extend_from_slice(header.as_bytes());
        match &self.data {
            NpyData::F32(v) => v.iter().for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
            NpyData::F64(v) => v.iter().for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
        }
        out
    }

    /// A tensor of rank `D` on `device`, in `dtype` (`None`: the stored precision).
    ///
    /// Fails if the array does not have rank `D`.
    pub fn to_tensor<const D: usize>(&self, device: &Device, dtype: Option<DType>) -> Result<Tensor<D>> {
        if self.shape.len() != D {
            return Err(Error::Shape {
                what: "array from .npy".into(),
                expected: format!("rank {D}"),
                got: self.shape.clone(),
            });
        }
        let data = match &self.data {
            NpyData::F32(v) => TensorData::new(v.clone(), self.shape.clone()),
            NpyData::F64(v) => TensorData::new(v.clone(), self.shape.clone()),
        };
        Ok(Tensor::from_data(data, (device, dtype.unwrap_or(self.dtype()))))
    }

    /// The array of a tensor, f64 if the tensor is f64 and f32 otherwise.
    pub fn from_tensor<const D: usize>(tensor: &Tensor<D>) -> Self {
        let shape = tensor.dims().to_vec();
        let data = tensor.to_data();
        let data = if tensor.dtype() == DType::F64 {
            NpyData::F64(data.try_into_vec_as::<f64>().expect("float tensor"))
        } else {
            NpyData::F32(data.try_into_vec_as::<f32>().expect("float tensor"))
        };
        Self { shape, data }
    }
}

fn check_len(shape: &[usize], len: usize) -> Result<()> {
    let expected: usize = shape.iter().product();
    if expected != len {
        return Err(Error::invalid(
            "array",
            format!("shape {shape:?} holds {expected} values but {len} were given"),
        ));
    }
    Ok(())
}

/// The raw text of `key`'s value in a Python dict literal like
/// `{'descr': '<f4', 'fortran_order': False, 'shape': (3, 2), }`.
fn dict_value<'a>(header: &'a str, key: &str) -> Option<&'a str> {
    let at = header
        .find(&format!("'{key}'"))
        .or_else(|| header.find(&format!("\"{key}\"")))?;
    let rest = &header[at + key.len() + 2..];
    let rest = rest.trim_start().strip_prefix(':')?.trim_start();
    let end = if rest.starts_with('(') {
        rest.find(')')? + 1
    } else {
        rest.find([',', '}']).unwrap_or(rest.len())
    };
    Some(&rest[..end])
}

fn parse_shape(text: &str) -> Option<Vec<usize>> {
    let inner = text.trim().strip_prefix('(')?.strip_suffix(')')?;
    inner
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.trim_end_matches('L').parse().ok())
        .collect()
}

fn read_values<T, const N: usize>(
    body: &[u8],
    count: usize,
    convert: fn([u8; N]) -> T,
) -> std::result::Result<Vec<T>, String> {
    if body.len() < count * N {
        return Err(format!(
            "data is truncated: the shape needs {} bytes, the file has {}",
            count * N,
            body.len()
        ));
    }
    Ok(body[..count * N]
        .chunks_exact(N)
        .map(|c| convert(c.try_into().expect("chunk of N bytes")))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_both_precisions() {
        let a = NpyArray::from_f64(vec![2, 3], vec![1.0, -2.5, 3.25, 1e-300, f64::MAX, 0.0]).unwrap();
        assert_eq!(NpyArray::from_bytes(&a.to_bytes()).unwrap(), a);
        let b = NpyArray::from_f32(vec![4], vec![1.0, 2.0, 3.0, 4.5]).unwrap();
        assert_eq!(NpyArray::from_bytes(&b.to_bytes()).unwrap(), b);
        let header_end = a.to_bytes().iter().position(|&c| c == b'\n').unwrap() + 1;
        assert_eq!(header_end % 64, 0);
    }

    #[test]
    fn reads_bytes_written_by_numpy() {
        // np.save(f, np.array([[1, 2], [3, 4]], dtype=np.float32)) with numpy 1.26.
        let mut bytes =
            b"\x93NUMPY\x01\x00v\x00{'descr': '<f4', 'fortran_order': False, 'shape': (2, 2), }".to_vec();
        bytes.extend(std::iter::repeat_n(b' ', 128 - bytes.len() - 1));
        bytes.push(b'\n');
        for x in [1.0f32, 2.0, 3.0, 4.0] {
            bytes.extend_from_slice(&x.to_le_bytes());
        }
        let a = NpyArray::from_bytes(&bytes).unwrap();
        assert_eq!(a.shape, vec![2, 2]);
        assert_eq!(a.data, NpyData::F32(vec![1.0, 2.0, 3.0, 4.0]));
    }

    #[test]
    fn rejects_what_it_cannot_read() {
        let mut a = NpyArray::from_f64(vec![1], vec![1.0]).unwrap().to_bytes();
        let at = a.windows(3).position(|w| w == b"<f8").unwrap();
        a[at + 1] = b'i';
        let err = NpyArray::from_bytes(&a).unwrap_err().to_string();
        assert!(err.contains("'<i8' is not supported"), "{err}");
        let err = NpyArray::from_bytes(b"hello").unwrap_err().to_string();
        assert!(err.contains("magic"), "{err}");
        let mut short = NpyArray::from_f64(vec![3], vec![1.0, 2.0, 3.0])
            .unwrap()
            .to_bytes();
        short.truncate(short.len() - 1);
        let err = NpyArray::from_bytes(&short).unwrap_err().to_string();
        assert!(err.contains("truncated"), "{err}");
        assert!(NpyArray::from_f64(vec![2, 2], vec![1.0]).is_err());
    }
}
