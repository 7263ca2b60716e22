//! `.npz` archives (numpy's `savez` / `savez_compressed`): a zip file of `.npy` arrays. Only
//! what numpy writes is read — stored or deflated entries, with or without zip64 fields — which
//! is all reference statistics (pytorch-fid, ADM's evaluation suite) need.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;

use diffusion_core::npy::NpyArray;

use crate::error::{MetricsError, Result};

fn bad(path: &Path, reason: impl Into<String>) -> MetricsError {
    MetricsError::File {
        path: path.to_path_buf(),
        reason: format!("not a readable .npz archive: {}", reason.into()),
    }
}

fn u16_at(b: &[u8], at: usize) -> Option<u64> {
    Some(u16::from_le_bytes(b.get(at..at + 2)?.try_into().ok()?) as u64)
}

fn u32_at(b: &[u8], at: usize) -> Option<u64> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?) as u64)
}

fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

/// One entry of the central directory.
struct Entry {
    name: String,
    method: u64,
    compressed: u64,
    local_offset: u64,
}

/// Reads the central directory (zip64 sizes and offsets included).
fn entries(b: &[u8]) -> Option<Vec<Entry>> {
    let eocd = (0..=b.len().checked_sub(22)?)
        .rev()
        .find(|&i| b[i..i + 4] == [0x50, 0x4b, 0x05, 0x06])?;
    let mut count = u16_at(b, eocd + 10)?;
    let mut offset = u32_at(b, eocd + 16)?;
    if (count == 0xFFFF || offset == 0xFFFF_FFFF)
        && eocd >= 20
        && b[eocd - 20..eocd - 16] == [0x50, 0x4b, 0x06, 0x07]
    {
        let record = u64_at(b, eocd - 12)? as usize;
        count = u64_at(b, record + 32)?;
        offset = u64_at(b, record + 48)?;
    }
    let mut at = offset as usize;
    let mut out = Vec::new();
    for _ in 0..count {
        if b.get(at..at + 4)? != [0x50, 0x4b, 0x01, 0x02] {
            return None;
        }
        let method = u16_at(b, at + 10)?;
        let mut compressed = u32_at(b, at + 20)?;
        let uncompressed = u32_at(b, at + 24)?;
        let (name_len, extra_len, comment_len) = (
            u16_at(b, at + 28)? as usize,
            u16_at(b, at + 30)? as usize,
            u16_at(b, at + 32)? as usize,
        );
        let mut local_offset = u32_at(b, at + 42)?;
        let name = String::from_utf8_lossy(b.get(at + 46..at + 46 + name_len)?).into_owned();
        // The zip64 extra field lists, in order, only the fields that overflowed.
        let mut extra = at + 46 + name_len;
        let extra_end = extra + extra_len;
        while extra + 4 <= extra_end {
            let (id, size) = (u16_at(b, extra)?, u16_at(b, extra + 2)? as usize);
            if id == 1 {
                let mut field = extra + 4;
                if uncompressed == 0xFFFF_FFFF {
                    field += 8;
                }
                if compressed == 0xFFFF_FFFF {
                    compressed = u64_at(b, field)?;
                    field += 8;
                }
                if local_offset == 0xFFFF_FFFF {
                    local_offset = u64_at(b, field)?;
                }
            }
            extra += 4 + size;
        }
        out.push(Entry {
            name,
            method,
            compressed,
            local_offset,
        });
        at = extra_end + comment_len;
    }
    Some(out)
}

/// Every array of an `.npz` file, by name (without `.npy`).
pub fn read_npz(path: &Path) -> Result<BTreeMap<String, NpyArray>> {
    let b = std::fs::read(path).map_err(|e| MetricsError::File {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    let list = entries(&b).ok_or_else(|| bad(path, "no valid zip central directory"))?;
    let mut arrays = BTreeMap::new();
    for e in list {
        let at = e.local_offset as usize;
        if b.get(at..at + 4) != Some(&[0x50, 0x4b, 0x03, 0x04][..]) {
            return Err(bad(path, format!("entry `{}` has no local header", e.name)));
        }
        let (n, x) = (
            u16_at(&b, at + 26).unwrap_or(0) as usize,
            u16_at(&b, at + 28).unwrap_or(0) as usize,
        );
        let start = at + 30 + n + x;
        let data = b
            .get(start..start + e.compressed as usize)
            .ok_or_else(|| bad(path, format!("entry `{}` is truncated", e.name)))?;
        let bytes = match e.method {
            0 => data.to_vec(),
            8 => {
                let mut out = Vec::new();
                flate2::read::DeflateDecoder::new(data)
                    .read_to_end(&mut out)
                    .map_err(|err| bad(path, format!("entry `{}`: {err}", e.name)))?;
                out
            }
            m => {
                return Err(bad(
                    path,
                    format!("entry `{}` uses compression method {m}", e.name),
                ));
            }
        };
        let array =
            NpyArray::from_bytes(&bytes).map_err(|err| bad(path, format!("entry `{}`: {err}", e.name)))?;
        let name = e.name.strip_suffix(".npy").unwrap_or(&e.name).to_string();
        arrays.insert(name, array);
    }
    Ok(arrays)
}

/// Writes arrays as an uncompressed `.npz` (stored zip entries `name.npy`), atomically.
pub fn write_npz(path: &Path, arrays: &[(&str, NpyArray)]) -> Result<()> {
    let mut out = Vec::new();
    let mut central = Vec::new();
    for (name, array) in arrays {
        let data = array.to_bytes();
        let mut crc = flate2::Crc::new();
        crc.update(&data);
        let file_name = format!("{name}.npy");
        let offset = out.len() as u32;
        let size = u32::try_from(data.len())
            .map_err(|_| MetricsError::Shape(format!("array `{name}` is over 4 GiB")))?;
        let header = |sig: u32, central: bool| {
            let mut h = sig.to_le_bytes().to_vec();
            if central {
                h.extend(20u16.to_le_bytes()); // made by
            }
            h.extend(20u16.to_le_bytes()); // needed
            h.extend(0u16.to_le_bytes()); // flags
            h.extend(0u16.to_le_bytes()); // stored
            h.extend([0, 0, 0x21, 0]); // time 00:00, date 1980-01-01
            h.extend(crc.sum().to_le_bytes());
            h.extend(size.to_le_bytes());
            h.extend(size.to_le_bytes());
            h.extend((file_name.len() as u16).to_le_bytes());
            h.extend(0u16.to_le_bytes()); // extra
            if central {
                h.extend([0u8; 10]); // comment length, disk, internal and external attributes
                h.extend(offset.to_le_bytes());
            }
            h.extend(file_name.as_bytes());
            h
        };
        out.extend(header(0x0403_4b50, false));
        out.extend(&data);
        central.extend(header(0x0201_4b50, true));
    }
    let cd_offset = out.len() as u32;
    out.extend(&central);
    out.extend(0x0605_4b50u32.to_le_bytes());
    out.extend([0u8; 4]);
    out.extend((arrays.len() as u16).to_le_bytes());
    out.extend((arrays.len() as u16).to_le_bytes());
    out.extend((central.len() as u32).to_le_bytes());
    out.extend(cd_offset.to_le_bytes());
    out.extend(0u16.to_le_bytes());
    diffusion_core::fs::write_atomic(path, &out).map_err(|e| MetricsError::File {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}
