//! Memory-mapped safetensors (single file or sharded with an index). Tensors are described by [`TensorRef`]
//! (a byte range validated against the file) so nothing is copied until weight preparation needs it.
//!
//! The header is parsed here rather than by the safetensors crate so that every defect (a truncated file, an
//! offset past the end, a byte count that disagrees with the shape) becomes a typed error naming the file and
//! the tensor, before any byte of weight data is touched.

use std::collections::HashMap;
use std::fmt;
use std::fs::File;
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::error::{Error, Result};

/// Element type of a checkpoint tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Dtype {
    F16,
    BF16,
    F32,
    I32,
}

impl Dtype {
    pub fn size(self) -> usize {
        match self {
            Dtype::F16 | Dtype::BF16 => 2,
            Dtype::F32 | Dtype::I32 => 4,
        }
    }

    /// The safetensors spelling ("F16", "I32", ...).
    pub fn name(self) -> &'static str {
        match self {
            Dtype::F16 => "F16",
            Dtype::BF16 => "BF16",
            Dtype::F32 => "F32",
            Dtype::I32 => "I32",
        }
    }

    fn parse(s: &str) -> Option<Dtype> {
        match s {
            "F16" => Some(Dtype::F16),
            "BF16" => Some(Dtype::BF16),
            "F32" => Some(Dtype::F32),
            "I32" => Some(Dtype::I32),
            _ => None,
        }
    }
}

impl fmt::Display for Dtype {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Element size of safetensors dtypes the engine never uses, so their byte ranges can still be checked.
fn other_dtype_size(s: &str) -> Option<usize> {
    match s {
        "BOOL" | "U8" | "I8" | "F8_E4M3" | "F8_E5M2" | "F8_E8M0" => Some(1),
        "U16" | "I16" => Some(2),
        "U32" => Some(4),
        "U64" | "I64" | "F64" => Some(8),
        _ => None,
    }
}

/// A tensor inside one of the checkpoint files; `start..end` is checked against the file length at open.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorRef {
    pub name: String,
    /// Index into the checkpoint's file list.
    pub file: usize,
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    /// Absolute byte range in the file.
    pub start: usize,
    pub end: usize,
}

impl TensorRef {
    /// Number of elements.
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
}

/// A tensor whose dtype the engine has no use for: kept so that asking for it gives a dtype error rather than
/// "missing tensor".
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OtherTensor {
    pub dtype: String,
    pub shape: Vec<usize>,
}

/// Every tensor of the checkpoint, by name.
#[derive(Debug, Clone, Default)]
pub struct TensorIndex {
    pub tensors: HashMap<String, TensorRef>,
    pub other_dtypes: HashMap<String, OtherTensor>,
}

impl TensorIndex {
    /// The tensor `name`, `Ok(None)` if absent, or a dtype error if it exists with a dtype wgptq cannot use.
    pub fn get(&self, name: &str) -> Result<Option<&TensorRef>> {
        if let Some(t) = self.tensors.get(name) {
            return Ok(Some(t));
        }
        match self.other_dtypes.get(name) {
            Some(o) => Err(Error::TensorDtype {
                name: name.into(),
                got: o.dtype.clone(),
                want: "one of F16, BF16, F32, I32".into(),
            }),
            None => Ok(None),
        }
    }

    /// Whether a tensor of that name exists, whatever its dtype.
    pub fn contains(&self, name: &str) -> bool {
        self.tensors.contains_key(name) || self.other_dtypes.contains_key(name)
    }

    pub fn len(&self) -> usize {
        self.tensors.len() + self.other_dtypes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The open checkpoint files.
pub struct Checkpoint {
    pub files: Vec<(PathBuf, memmap2::Mmap)>,
}

impl fmt::Debug for Checkpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.files.iter().map(|(p, m)| (p, m.len())))
            .finish()
    }
}

/// Largest JSON header accepted; the format's reference implementation uses the same bound.
const MAX_HEADER_BYTES: u64 = 100 << 20;

impl Checkpoint {
    /// Size of the checkpoint files (every shard) on disk.
    pub fn file_bytes(&self) -> u64 {
        self.files.iter().map(|(_, m)| m.len() as u64).sum()
    }

    /// Raw little-endian bytes of a tensor.
    pub fn bytes(&self, t: &TensorRef) -> &[u8] {
        &self.files[t.file].1[t.start..t.end]
    }
    /// Tensor as u32 words (i32 reinterpreted), copied so alignment does not matter.
    pub fn words(&self, t: &TensorRef) -> Vec<u32> {
        bytemuck::pod_collect_to_vec(self.bytes(t))
    }
    /// f16 tensor as raw f16 values.
    pub fn halfs(&self, t: &TensorRef) -> Vec<half::f16> {
        bytemuck::pod_collect_to_vec(self.bytes(t))
    }
    /// f16 tensor widened to f32.
    pub fn f16_to_f32(&self, t: &TensorRef) -> Vec<f32> {
        self.bytes(t)
            .chunks_exact(2)
            .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect()
    }

    /// Finds, maps and indexes the checkpoint of the model in `dir`.
    ///
    /// Looks for `model.safetensors`, then `model.safetensors.index.json` (sharded), then the
    /// `model_file_base_name` of the GPTQ config, then a lone `*.safetensors` file.
    pub fn open(dir: &Path) -> Result<(Checkpoint, TensorIndex)> {
        let files = find_files(dir)?;
        let mut checkpoint = Checkpoint { files: Vec::new() };
        let mut index = TensorIndex::default();
        for (path, expected) in files {
            let file_idx = checkpoint.files.len();
            let (mmap, header) = map_and_parse(&path)?;
            let before = index.len();
            for entry in header {
                if let Some(exp) = &expected {
                    if !exp.contains(&entry.name) {
                        // A tensor the index does not list for this shard: harmless, but it must not shadow
                        // the shard the index names.
                        continue;
                    }
                }
                let name = entry.name.clone();
                if index.contains(&name) {
                    return Err(Error::Safetensors {
                        path: path.clone(),
                        reason: format!("tensor `{name}` appears in more than one file"),
                    });
                }
                match entry.dtype {
                    Ok(dtype) => {
                        index.tensors.insert(
                            name.clone(),
                            TensorRef {
                                name,
                                file: file_idx,
                                dtype,
                                shape: entry.shape,
                                start: entry.start,
                                end: entry.end,
                            },
                        );
                    }
                    Err(dtype) => {
                        index.other_dtypes.insert(
                            name,
                            OtherTensor {
                                dtype,
                                shape: entry.shape,
                            },
                        );
                    }
                }
            }
            if let Some(exp) = &expected {
                if let Some(missing) = exp.iter().find(|n| !index.contains(n)) {
                    return Err(Error::Safetensors {
                        path: path.clone(),
                        reason: format!(
                            "the shard index places tensor `{missing}` in this file, but it is not there"
                        ),
                    });
                }
            }
            tracing::debug!(
                path = %path.display(),
                tensors = index.len() - before,
                "mapped safetensors file"
            );
            checkpoint.files.push((path, mmap));
        }
        Ok((checkpoint, index))
    }
}

/// Checkpoint files of `dir`, each with the tensor names the shard index assigns to it (if sharded).
fn find_files(dir: &Path) -> Result<Vec<(PathBuf, Option<Vec<String>>)>> {
    let single = dir.join("model.safetensors");
    if single.is_file() {
        return Ok(vec![(single, None)]);
    }
    let index_path = dir.join("model.safetensors.index.json");
    if index_path.is_file() {
        return shards_from_index(dir, &index_path);
    }
    if let Some(base) = gptq_base_name(dir)? {
        let path = dir.join(format!("{base}.safetensors"));
        if path.is_file() {
            return Ok(vec![(path, None)]);
        }
    }
    let entries = std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))?;
    let mut found = Vec::new();
    let mut torch_bin = None;
    for entry in entries {
        let path = entry.map_err(|e| Error::io(dir, e))?.path();
        match path.extension().and_then(|e| e.to_str()) {
            Some("safetensors") => found.push(path),
            Some("bin" | "pt" | "pth") => torch_bin = Some(path),
            _ => {}
        }
    }
    found.sort();
    match found.len() {
        1 => Ok(vec![(found.remove(0), None)]),
        0 => match torch_bin {
            Some(bin) => Err(Error::Unsupported {
                path: bin.clone(),
                setting: "checkpoint file".into(),
                value: bin
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default(),
                hint: "wgptq reads safetensors only; convert the PyTorch pickle to safetensors".into(),
            }),
            None => Err(Error::io(
                dir,
                std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    "no *.safetensors checkpoint (expected model.safetensors or model.safetensors.index.json)",
                ),
            )),
        },
        n => Err(Error::Safetensors {
            path: dir.to_path_buf(),
            reason: format!(
                "{n} *.safetensors files but no model.safetensors.index.json saying which tensor is where"
            ),
        }),
    }
}

/// `model_file_base_name` from the GPTQ settings, if any file names one.
fn gptq_base_name(dir: &Path) -> Result<Option<String>> {
    use super::config::read_optional_json_object;
    let mut sources = Vec::new();
    if let Some(cfg) = read_optional_json_object(&dir.join("config.json"))? {
        if let Some(Value::Object(q)) = cfg.get("quantization_config") {
            sources.push(q.clone());
        }
    }
    for name in ["quantize_config.json", "quant_config.json"] {
        if let Some(q) = read_optional_json_object(&dir.join(name))? {
            sources.push(q);
        }
    }
    Ok(sources.iter().find_map(|q| {
        q.get("model_file_base_name")
            .and_then(Value::as_str)
            .map(str::to_owned)
    }))
}

fn shards_from_index(dir: &Path, index_path: &Path) -> Result<Vec<(PathBuf, Option<Vec<String>>)>> {
    let map = super::config::read_json_object(index_path)?;
    let bad = |reason: String| Error::Config {
        path: index_path.to_path_buf(),
        field: "weight_map".into(),
        reason,
    };
    let weight_map = map
        .get("weight_map")
        .and_then(Value::as_object)
        .ok_or_else(|| bad("missing or not an object".into()))?;
    let mut shards: Vec<(PathBuf, Option<Vec<String>>)> = Vec::new();
    let mut by_file: HashMap<String, usize> = HashMap::new();
    for (tensor, file) in weight_map {
        let file = file
            .as_str()
            .ok_or_else(|| bad(format!("entry for `{tensor}` is not a file name")))?;
        if file.contains('/') || file.contains('\\') || file == ".." {
            return Err(bad(format!(
                "shard `{file}` for `{tensor}` is not a plain file name"
            )));
        }
        let i = *by_file.entry(file.to_owned()).or_insert_with(|| {
            shards.push((dir.join(file), Some(Vec::new())));
            shards.len() - 1
        });
        if let Some(names) = &mut shards[i].1 {
            names.push(tensor.clone());
        }
    }
    if shards.is_empty() {
        return Err(bad("lists no tensors".into()));
    }
    shards.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(shards)
}

/// One header entry; `dtype` is `Err(name)` for dtypes the engine does not use.
struct HeaderEntry {
    name: String,
    dtype: std::result::Result<Dtype, String>,
    shape: Vec<usize>,
    start: usize,
    end: usize,
}

fn map_and_parse(path: &Path) -> Result<(memmap2::Mmap, Vec<HeaderEntry>)> {
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
    // SAFETY: the mapping is read-only and the engine never writes model files. Like every mmap-based
    // loader, this assumes no other process truncates the file while it is mapped.
    let mmap = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
    let header = parse_header(path, &mmap)?;
    Ok((mmap, header))
}

/// Parses and validates the safetensors header of `data` (the whole file).
fn parse_header(path: &Path, data: &[u8]) -> Result<Vec<HeaderEntry>> {
    let err = |reason: String| Error::Safetensors {
        path: path.to_path_buf(),
        reason,
    };
    let file_len = data.len() as u64;
    let Some(len_bytes) = data.get(..8) else {
        return Err(err(format!(
            "file is {file_len} bytes, too short for the 8-byte header length"
        )));
    };
    let mut len8 = [0u8; 8];
    len8.copy_from_slice(len_bytes);
    let header_len = u64::from_le_bytes(len8);
    if header_len > MAX_HEADER_BYTES {
        return Err(err(format!(
            "header length {header_len} exceeds the {MAX_HEADER_BYTES}-byte limit (corrupt file?)"
        )));
    }
    if 8 + header_len > file_len {
        return Err(err(format!(
            "header length {header_len} runs past the end of the {file_len}-byte file (truncated?)"
        )));
    }
    let data_start = 8 + header_len as usize;
    let json: Value = serde_json::from_slice(&data[8..data_start])
        .map_err(|e| err(format!("header is not valid JSON: {e}")))?;
    let Value::Object(entries) = json else {
        return Err(err("header is not a JSON object".into()));
    };
    let data_len = data.len() - data_start;

    let mut out = Vec::with_capacity(entries.len());
    for (name, info) in entries {
        if name == "__metadata__" {
            continue;
        }
        let bad = |what: &str| err(format!("tensor `{name}`: {what}"));
        let info = info
            .as_object()
            .ok_or_else(|| bad("header entry is not an object"))?;
        let dtype_name = info
            .get("dtype")
            .and_then(Value::as_str)
            .ok_or_else(|| bad("missing `dtype`"))?;
        let shape = info
            .get("shape")
            .and_then(Value::as_array)
            .ok_or_else(|| bad("missing `shape`"))?
            .iter()
            .map(|d| d.as_u64().and_then(|d| usize::try_from(d).ok()))
            .collect::<Option<Vec<usize>>>()
            .ok_or_else(|| bad("`shape` is not a list of non-negative integers"))?;
        let offsets = info
            .get("data_offsets")
            .and_then(Value::as_array)
            .ok_or_else(|| bad("missing `data_offsets`"))?;
        let (start, end) = match offsets.as_slice() {
            [s, e] => match (s.as_u64(), e.as_u64()) {
                (Some(s), Some(e)) => (s, e),
                _ => return Err(bad("`data_offsets` are not integers")),
            },
            _ => return Err(bad("`data_offsets` must be [start, end]")),
        };
        if start > end {
            return Err(bad(&format!("data_offsets [{start}, {end}] are reversed")));
        }
        if end > data_len as u64 {
            return Err(bad(&format!(
                "data_offsets [{start}, {end}] run past the end of the data section ({data_len} bytes; \
                 file truncated?)"
            )));
        }
        let dtype = Dtype::parse(dtype_name).ok_or_else(|| dtype_name.to_owned());
        let elem = match dtype {
            Ok(d) => Some(d.size()),
            Err(_) => other_dtype_size(dtype_name),
        };
        if let Some(elem) = elem {
            let want = shape
                .iter()
                .try_fold(elem as u64, |acc, &d| acc.checked_mul(d as u64));
            if want != Some(end - start) {
                return Err(bad(&format!(
                    "shape {shape:?} of {dtype_name} needs {} bytes but data_offsets span {}",
                    want.map_or_else(|| "overflowing".to_string(), |w| w.to_string()),
                    end - start
                )));
            }
        }
        out.push(HeaderEntry {
            name,
            dtype,
            shape,
            start: data_start + start as usize,
            end: data_start + end as usize,
        });
    }
    Ok(out)
}
