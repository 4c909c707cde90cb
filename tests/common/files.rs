//! Model-directory fixtures: temp dirs, a safetensors writer, and golden-file access.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use serde_json::Value;
use wgptq::model::Checkpoint;

/// A directory under the system temp dir, removed on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("wgptq-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create temp dir");
        TempDir(dir)
    }
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// One tensor as stored in a safetensors file.
#[derive(Debug, Clone)]
pub struct RawTensor {
    pub name: String,
    pub dtype: String,
    pub shape: Vec<usize>,
    pub data: Vec<u8>,
}

/// A model directory from shared/models.
pub fn model_dir(name: &str) -> PathBuf {
    super::shared_dir().join("models").join(name)
}

pub const TINY: &str = "tiny-mistral-swa-gptq4";
pub const SMOLLM: &str = "smollm2-135m-gptq-4bit-128g-actorder";

/// Copies the config, tokenizer and checkpoint files of a shared model into a fresh temp dir (made writable).
pub fn copy_model(name: &str) -> TempDir {
    let src = model_dir(name);
    let tmp = TempDir::new(name);
    for entry in std::fs::read_dir(&src).expect("read model dir") {
        let path = entry.expect("dir entry").path();
        let file = path.file_name().expect("file name").to_owned();
        if file == "golden.json" || file == "verification.json" {
            continue;
        }
        let dst = tmp.path().join(&file);
        std::fs::copy(&path, &dst).expect("copy model file");
        let mut perm = std::fs::metadata(&dst).expect("metadata").permissions();
        #[allow(clippy::permissions_set_readonly_false)]
        perm.set_readonly(false);
        std::fs::set_permissions(&dst, perm).expect("make writable");
    }
    tmp
}

/// All tensors of `dir`'s checkpoint, sorted by name.
pub fn read_tensors(dir: &Path) -> Vec<RawTensor> {
    let (ck, index) = Checkpoint::open(dir).expect("open checkpoint");
    let mut out: Vec<RawTensor> = index
        .tensors
        .values()
        .map(|t| RawTensor {
            name: t.name.clone(),
            dtype: t.dtype.name().to_owned(),
            shape: t.shape.clone(),
            data: ck.bytes(t).to_vec(),
        })
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

/// Writes a safetensors file (header padded to 8 bytes, tensors in the given order).
pub fn write_safetensors(path: &Path, tensors: &[RawTensor]) {
    let mut header = serde_json::Map::new();
    header.insert("__metadata__".into(), serde_json::json!({"format": "pt"}));
    let mut offset = 0usize;
    for t in tensors {
        header.insert(
            t.name.clone(),
            serde_json::json!({
                "dtype": t.dtype,
                "shape": t.shape,
                "data_offsets": [offset, offset + t.data.len()],
            }),
        );
        offset += t.data.len();
    }
    let mut json = serde_json::to_vec(&Value::Object(header)).expect("header json");
    while json.len() % 8 != 0 {
        json.push(b' ');
    }
    let mut bytes = Vec::with_capacity(8 + json.len() + offset);
    bytes.extend_from_slice(&(json.len() as u64).to_le_bytes());
    bytes.extend_from_slice(&json);
    for t in tensors {
        bytes.extend_from_slice(&t.data);
    }
    std::fs::write(path, bytes).expect("write safetensors");
}

/// Reads `dir/model.safetensors`, lets `edit` change the tensor list, and writes it back.
pub fn edit_tensors(dir: &Path, edit: impl FnOnce(&mut Vec<RawTensor>)) {
    let mut tensors = read_tensors(dir);
    edit(&mut tensors);
    write_safetensors(&dir.join("model.safetensors"), &tensors);
}

/// The tensor called `name` in a list being edited.
pub fn tensor_mut<'a>(tensors: &'a mut [RawTensor], name: &str) -> &'a mut RawTensor {
    tensors
        .iter_mut()
        .find(|t| t.name == name)
        .unwrap_or_else(|| panic!("fixture has no tensor {name}"))
}

/// Reads `dir/<file>` as JSON, lets `edit` change it, and writes it back.
pub fn edit_json(dir: &Path, file: &str, edit: impl FnOnce(&mut Value)) {
    let path = dir.join(file);
    let mut v: Value = serde_json::from_str(&std::fs::read_to_string(&path).expect("read json"))
        .expect("parse json");
    edit(&mut v);
    std::fs::write(&path, serde_json::to_string_pretty(&v).expect("json")).expect("write json");
}

/// A model's golden.json.
pub fn golden(name: &str) -> Value {
    let path = model_dir(name).join("golden.json");
    serde_json::from_str(&std::fs::read_to_string(&path).expect("read golden.json"))
        .expect("parse golden.json")
}

/// A JSON array of integers as u32 ids.
pub fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .expect("id array")
        .iter()
        .map(|x| x.as_u64().expect("id") as u32)
        .collect()
}

/// A JSON `[[id, logit], ...]` list.
pub fn id_logits(v: &Value) -> Vec<(u32, f32)> {
    v.as_array()
        .expect("top-k array")
        .iter()
        .map(|p| {
            (
                p[0].as_u64().expect("id") as u32,
                p[1].as_f64().expect("logit") as f32,
            )
        })
        .collect()
}
