//! GGUF (v2 and v3) header, metadata and tensor directory.
//!
//! Layout: magic `GGUF`, version (u32), tensor count and metadata count (u64), the metadata
//! key/value pairs, the tensor infos (name, dims innermost first, type, offset), then the tensor
//! data from the next multiple of `general.alignment` (default 32). Every read is bounds
//! checked: a truncated or corrupt file gives an error naming the offset and what was being
//! read, never a panic.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::types::GgmlType;
use crate::error::ModelError;

/// A metadata value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    U64(u64),
    I64(i64),
    F32(f32),
    F64(f64),
    Bool(bool),
    String(String),
    Array(Vec<Value>),
}

impl Value {
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Value::U8(v) => Some(v as u64),
            Value::U16(v) => Some(v as u64),
            Value::U32(v) => Some(v as u64),
            Value::U64(v) => Some(v),
            Value::I8(v) if v >= 0 => Some(v as u64),
            Value::I16(v) if v >= 0 => Some(v as u64),
            Value::I32(v) if v >= 0 => Some(v as u64),
            Value::I64(v) if v >= 0 => Some(v as u64),
            _ => None,
        }
    }
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            // The shortest decimal that round-trips the f32 (1e-5, not 9.99999974e-6).
            Value::F32(v) => Some(v.to_string().parse().unwrap_or(v as f64)),
            Value::F64(v) => Some(v),
            _ => self.as_u64().map(|v| v as f64),
        }
    }
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }
    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            Value::Bool(b) => Some(b),
            _ => None,
        }
    }
    pub fn as_array(&self) -> Option<&[Value]> {
        match self {
            Value::Array(a) => Some(a),
            _ => None,
        }
    }
}

/// Where one tensor lies in the file.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorInfo {
    pub name: String,
    /// Dimensions, innermost (contiguous) first, as ggml stores them.
    pub dims: Vec<u64>,
    pub ty: GgmlType,
    /// Byte offset from the start of the tensor data section.
    pub offset: u64,
}

impl TensorInfo {
    pub fn num_elements(&self) -> u64 {
        self.dims.iter().product()
    }
    /// Shape in row-major order (outermost first), as PyTorch and safetensors see it.
    pub fn shape(&self) -> Vec<usize> {
        self.dims.iter().rev().map(|&d| d as usize).collect()
    }
}

/// A parsed GGUF file over its bytes (memory-mapped or in memory).
pub struct GgufFile<B: AsRef<[u8]>> {
    pub path: PathBuf,
    pub version: u32,
    pub metadata: BTreeMap<String, Value>,
    pub tensors: Vec<TensorInfo>,
    pub data_offset: usize,
    bytes: B,
}

struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
    path: &'a Path,
}

/// Limits that keep a corrupt header from asking for absurd allocations.
const MAX_STRING: u64 = 1 << 26;
const MAX_ARRAY: u64 = 1 << 28;
const MAX_DIMS: u32 = 8;

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], ModelError> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.buf.len());
        match end {
            Some(end) => {
                let s = &self.buf[self.pos..end];
                self.pos = end;
                Ok(s)
            }
            None => Err(ModelError::format(
                self.path,
                format!(
                    "truncated file: {n} bytes of {what} at offset {} but the file has {}",
                    self.pos,
                    self.buf.len()
                ),
            )),
        }
    }
    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N], ModelError> {
        let s = self.take(N, what)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }
    fn u32(&mut self, what: &str) -> Result<u32, ModelError> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }
    fn u64(&mut self, what: &str) -> Result<u64, ModelError> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }
    fn string(&mut self, what: &str) -> Result<String, ModelError> {
        let n = self.u64(what)?;
        if n > MAX_STRING {
            return Err(ModelError::format(
                self.path,
                format!("{what}: string length {n} at offset {} is absurd", self.pos),
            ));
        }
        let b = self.take(n as usize, what)?;
        String::from_utf8(b.to_vec()).map_err(|_| {
            ModelError::format(
                self.path,
                format!("{what}: invalid UTF-8 at offset {}", self.pos),
            )
        })
    }
    fn value(&mut self, ty: u32, key: &str, depth: u32) -> Result<Value, ModelError> {
        Ok(match ty {
            0 => Value::U8(self.array::<1>(key)?[0]),
            1 => Value::I8(self.array::<1>(key)?[0] as i8),
            2 => Value::U16(u16::from_le_bytes(self.array(key)?)),
            3 => Value::I16(i16::from_le_bytes(self.array(key)?)),
            4 => Value::U32(self.u32(key)?),
            5 => Value::I32(i32::from_le_bytes(self.array(key)?)),
            6 => Value::F32(f32::from_le_bytes(self.array(key)?)),
            7 => Value::Bool(self.array::<1>(key)?[0] != 0),
            8 => Value::String(self.string(key)?),
            9 if depth == 0 => {
                let elem = self.u32(key)?;
                let n = self.u64(key)?;
                if n > MAX_ARRAY || n > (self.buf.len() - self.pos) as u64 {
                    return Err(ModelError::format(
                        self.path,
                        format!("metadata `{key}`: array of {n} elements cannot fit the file"),
                    ));
                }
                let mut v = Vec::with_capacity(n as usize);
                for _ in 0..n {
                    v.push(self.value(elem, key, depth + 1)?);
                }
                Value::Array(v)
            }
            10 => Value::U64(self.u64(key)?),
            11 => Value::I64(i64::from_le_bytes(self.array(key)?)),
            12 => Value::F64(f64::from_le_bytes(self.array(key)?)),
            _ => {
                return Err(ModelError::format(
                    self.path,
                    format!("metadata `{key}`: unknown value type {ty}"),
                ))
            }
        })
    }
}

impl<B: AsRef<[u8]>> GgufFile<B> {
    /// Parses the header of `bytes` (the whole file).
    pub fn parse(path: &Path, bytes: B) -> Result<Self, ModelError> {
        let buf = bytes.as_ref();
        let mut c = Cursor { buf, pos: 0, path };
        let magic = c.array::<4>("magic")?;
        if &magic != b"GGUF" {
            return Err(ModelError::format(
                path,
                format!("bad magic {magic:02x?}: not a GGUF file"),
            ));
        }
        let version = c.u32("version")?;
        if !(2..=3).contains(&version) {
            return Err(ModelError::format(
                path,
                format!("GGUF version {version} is not supported (2 and 3 are)"),
            ));
        }
        let n_tensors = c.u64("tensor count")?;
        let n_kv = c.u64("metadata count")?;
        if n_tensors > 1 << 20 || n_kv > 1 << 20 {
            return Err(ModelError::format(
                path,
                format!("absurd header: {n_tensors} tensors, {n_kv} metadata entries"),
            ));
        }
        let mut metadata = BTreeMap::new();
        for _ in 0..n_kv {
            let key = c.string("metadata key")?;
            let ty = c.u32(&key)?;
            let v = c.value(ty, &key, 0)?;
            metadata.insert(key, v);
        }
        let mut tensors = Vec::with_capacity(n_tensors as usize);
        for _ in 0..n_tensors {
            let name = c.string("tensor name")?;
            let n_dims = c.u32(&name)?;
            if n_dims == 0 || n_dims > MAX_DIMS {
                return Err(ModelError::tensor(
                    path,
                    &name,
                    format!("{n_dims} dimensions"),
                ));
            }
            let dims = (0..n_dims)
                .map(|_| c.u64(&name))
                .collect::<Result<Vec<_>, _>>()?;
            if dims
                .iter()
                .try_fold(1u64, |acc, &d| acc.checked_mul(d))
                .is_none_or(|n| n > buf.len() as u64 * 8)
            {
                return Err(ModelError::tensor(
                    path,
                    &name,
                    format!("dimensions {dims:?} cannot fit the file"),
                ));
            }
            let raw_ty = c.u32(&name)?;
            let ty = GgmlType::from_u32(raw_ty).ok_or_else(|| {
                ModelError::tensor(path, &name, format!("unknown tensor type {raw_ty}"))
            })?;
            let offset = c.u64(&name)?;
            tensors.push(TensorInfo {
                name,
                dims,
                ty,
                offset,
            });
        }
        let align = match metadata.get("general.alignment") {
            Some(v) => v.as_u64().filter(|a| a.is_power_of_two()).ok_or_else(|| {
                ModelError::format(path, "general.alignment is not a power of two")
            })?,
            None => 32,
        } as usize;
        let data_offset = c.pos.div_ceil(align) * align;
        let file = GgufFile {
            path: path.to_path_buf(),
            version,
            metadata,
            tensors,
            data_offset,
            bytes,
        };
        for t in &file.tensors {
            file.tensor_bytes(t)?;
        }
        Ok(file)
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        self.metadata.get(key)
    }

    /// A metadata value that must be there.
    pub fn require(&self, key: &str) -> Result<&Value, ModelError> {
        self.get(key)
            .ok_or_else(|| ModelError::format(&self.path, format!("metadata key `{key}` missing")))
    }

    pub fn require_u64(&self, key: &str) -> Result<u64, ModelError> {
        self.require(key)?.as_u64().ok_or_else(|| {
            ModelError::format(&self.path, format!("metadata `{key}` is not an integer"))
        })
    }

    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.tensors.iter().find(|t| t.name == name)
    }

    /// The raw bytes of one tensor, checked against the file's length.
    pub fn tensor_bytes(&self, t: &TensorInfo) -> Result<&[u8], ModelError> {
        let n = t.num_elements();
        let bad = |p: String| ModelError::tensor(&self.path, &t.name, p);
        if !n.is_multiple_of(t.ty.block_elems() as u64) {
            return Err(bad(format!(
                "{n} elements is not a whole number of {:?} blocks",
                t.ty
            )));
        }
        let len = n / t.ty.block_elems() as u64 * t.ty.block_bytes() as u64;
        let start = (self.data_offset as u64).saturating_add(t.offset);
        let buf = self.bytes.as_ref();
        match start.checked_add(len) {
            Some(end) if end <= buf.len() as u64 => Ok(&buf[start as usize..end as usize]),
            _ => Err(bad(format!(
                "data at {start}..{} lies beyond the end of the file ({} bytes): truncated file",
                start.saturating_add(len),
                buf.len()
            ))),
        }
    }
}
