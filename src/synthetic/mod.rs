//! Synthetic GPTQ checkpoints: a real v1 GPTQ model directory (config.json, quantize_config.json,
//! generation_config.json, model.safetensors, optionally a tokenizer) with random weights and any shape.
//!
//! Why: the benchmark must run at the exact OpenChat-3.5 shapes on machines that cannot download the real
//! checkpoint, and must exercise the real loading path (files → validation → preparation → upload), not a
//! shortcut. Random codes cost the kernels exactly what real codes cost, so decode speed is representative.
//!
//! The safetensors file is written streaming (header first, then tensor data in pieces of at most
//! [`PIECE_BYTES`]) so a 4 GB checkpoint never sits in memory. Data is generated in [`BLOCK_BYTES`] blocks, each
//! from its own seeded RNG, so the output depends only on the spec and seed, never on the thread count.
//!
//! Values are realistic rather than zero: embeddings and the head ≈ N(0, 0.02), norms ≈ 1, uniform q-codes,
//! symmetric zeros (stored z − 1, v1), scales ≈ 0.01·U[0.5, 1.5] for 4-bit (scaled down by 15/255 for 8-bit so the
//! dequantized weight spread is the same), and act-order g_idx from a random permutation shared by q/k/v and by
//! gate/up, as real act-order checkpoints have.

mod fill;

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::Serialize;
use serde_json::{json, Value};

use crate::error::{Error, Result};
use crate::model::Dtype;
use fill::Fill;

/// Bytes generated from one RNG stream (the unit of determinism and of parallel work).
pub const BLOCK_BYTES: usize = 1 << 20;
/// Largest piece of tensor data generated before it is written.
pub const PIECE_BYTES: usize = 64 << 20;

/// Names accepted by [`SyntheticSpec::preset`].
pub const PRESETS: [&str; 2] = ["openchat-3.5", "tiny"];

/// Shape and quantization of a synthetic Mistral GPTQ model.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SyntheticSpec {
    pub layers: usize,
    pub hidden: usize,
    pub intermediate: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub vocab: usize,
    pub sliding_window: Option<usize>,
    pub max_position_embeddings: usize,
    pub rope_theta: f64,
    pub rms_norm_eps: f64,
    /// 4 or 8.
    pub bits: u32,
    /// `None` = group_size -1 (one group over all of K).
    pub group_size: Option<usize>,
    pub act_order: bool,
    pub seed: u64,
}

impl Default for SyntheticSpec {
    fn default() -> Self {
        Self::openchat_3_5()
    }
}

impl SyntheticSpec {
    /// OpenChat-3.5 (Mistral-7B) shapes, 4-bit g128 act-order like TheBloke's main branch.
    pub fn openchat_3_5() -> Self {
        SyntheticSpec {
            layers: 32,
            hidden: 4096,
            intermediate: 14336,
            heads: 32,
            kv_heads: 8,
            vocab: 32002,
            sliding_window: Some(4096),
            max_position_embeddings: 8192,
            rope_theta: 10000.0,
            rms_norm_eps: 1e-5,
            bits: 4,
            group_size: Some(128),
            act_order: true,
            seed: 0,
        }
    }

    /// A two-layer model for tests (OpenChat's vocabulary and context, so the OpenChat tokenizer and the default
    /// benchmark contexts fit it).
    pub fn tiny() -> Self {
        SyntheticSpec {
            layers: 2,
            hidden: 128,
            intermediate: 256,
            heads: 4,
            kv_heads: 2,
            sliding_window: Some(32),
            group_size: Some(32),
            ..Self::openchat_3_5()
        }
    }

    /// A preset by name (see [`PRESETS`]).
    pub fn preset(name: &str) -> Option<Self> {
        match name.to_ascii_lowercase().as_str() {
            "openchat-3.5" | "openchat_3.5" | "openchat" | "mistral-7b" => {
                Some(Self::openchat_3_5())
            }
            "tiny" => Some(Self::tiny()),
            _ => None,
        }
    }

    pub fn head_dim(&self) -> usize {
        self.hidden / self.heads.max(1)
    }

    fn bad(&self, name: &str, value: impl ToString, reason: &str) -> Error {
        Error::InvalidArgument {
            name: format!("synthetic {name}"),
            value: value.to_string(),
            reason: reason.into(),
        }
    }

    /// Checks that the engine (and GPTQ packing) can represent this shape.
    pub fn validate(&self) -> Result<()> {
        if self.bits != 4 && self.bits != 8 {
            return Err(self.bad("bits", self.bits, "must be 4 or 8"));
        }
        let pf = (32 / self.bits) as usize;
        for (name, v) in [
            ("layers", self.layers),
            ("heads", self.heads),
            ("kv_heads", self.kv_heads),
            ("vocab", self.vocab),
            ("max_position_embeddings", self.max_position_embeddings),
        ] {
            if v == 0 {
                return Err(self.bad(name, v, "must be at least 1"));
            }
        }
        if self.hidden % self.heads != 0 || self.head_dim() % 4 != 0 {
            return Err(self.bad(
                "hidden",
                self.hidden,
                "hidden / heads must be a multiple of 4",
            ));
        }
        if self.heads % self.kv_heads != 0 {
            return Err(self.bad("kv_heads", self.kv_heads, "must divide heads"));
        }
        let kv_dim = self.kv_heads * self.head_dim();
        for (name, v) in [
            ("hidden", self.hidden),
            ("intermediate", self.intermediate),
            ("kv dim", kv_dim),
        ] {
            if v == 0 || v % pf != 0 || v % 8 != 0 {
                return Err(self.bad(
                    name,
                    v,
                    &format!("must be a positive multiple of 8 and of {pf}"),
                ));
            }
        }
        if let Some(g) = self.group_size {
            if g == 0 {
                return Err(self.bad("group_size", g, "must be positive, or -1 for one group"));
            }
        }
        if self.sliding_window == Some(0) {
            return Err(self.bad("sliding_window", 0, "must be positive or absent"));
        }
        if !(self.rope_theta > 0.0 && self.rms_norm_eps > 0.0) {
            return Err(self.bad(
                "rope_theta/rms_norm_eps",
                self.rope_theta,
                "must be positive",
            ));
        }
        Ok(())
    }

    fn group_size_json(&self) -> i64 {
        self.group_size.map_or(-1, |g| g as i64)
    }

    /// The GPTQ settings object (shared by config.json's `quantization_config` and quantize_config.json).
    pub fn quantize_config_json(&self) -> Value {
        json!({
            "bits": self.bits,
            "group_size": self.group_size_json(),
            "damp_percent": 0.1,
            "desc_act": self.act_order,
            "static_groups": false,
            "sym": true,
            "true_sequential": true,
            "model_name_or_path": null,
            "model_file_base_name": "model",
            "quant_method": "gptq",
            "checkpoint_format": "gptq",
        })
    }

    /// config.json of a MistralForCausalLM with a GPTQ `quantization_config`.
    pub fn config_json(&self) -> Value {
        json!({
            "architectures": ["MistralForCausalLM"],
            "model_type": "mistral",
            "bos_token_id": 1,
            "eos_token_id": 32000,
            "hidden_act": "silu",
            "hidden_size": self.hidden,
            "initializer_range": 0.02,
            "intermediate_size": self.intermediate,
            "max_position_embeddings": self.max_position_embeddings,
            "num_attention_heads": self.heads,
            "num_hidden_layers": self.layers,
            "num_key_value_heads": self.kv_heads,
            "rms_norm_eps": self.rms_norm_eps,
            "rope_theta": self.rope_theta,
            "sliding_window": self.sliding_window,
            "tie_word_embeddings": false,
            "torch_dtype": "float16",
            "use_cache": true,
            "vocab_size": self.vocab,
            "quantization_config": self.quantize_config_json(),
        })
    }

    pub fn generation_config_json(&self) -> Value {
        json!({ "_from_model_config": true, "bos_token_id": 1, "eos_token_id": 32000 })
    }
}

/// One tensor of the checkpoint: name, dtype and shape, in file order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TensorInfo {
    pub name: String,
    #[serde(serialize_with = "ser_dtype")]
    pub dtype: Dtype,
    pub shape: Vec<usize>,
}

fn ser_dtype<S: serde::Serializer>(d: &Dtype, s: S) -> std::result::Result<S::Ok, S::Error> {
    s.serialize_str(d.name())
}

impl TensorInfo {
    pub fn bytes(&self) -> u64 {
        self.shape.iter().product::<usize>() as u64 * self.dtype.size() as u64
    }
}

struct Planned {
    info: TensorInfo,
    fill: Fill,
}

fn plan(spec: &SyntheticSpec) -> Result<Vec<Planned>> {
    spec.validate()?;
    let (h, i, v) = (spec.hidden, spec.intermediate, spec.vocab);
    let (q_dim, kv_dim) = (
        spec.heads * spec.head_dim(),
        spec.kv_heads * spec.head_dim(),
    );
    let pf = (32 / spec.bits) as usize;
    let zero_word = if spec.bits == 4 {
        0x7777_7777
    } else {
        0x7F7F_7F7F
    };
    let mut out = Vec::with_capacity(3 + spec.layers * 30);
    let mut push = |name: String, dtype: Dtype, shape: Vec<usize>, fill: Fill| {
        out.push(Planned {
            info: TensorInfo { name, dtype, shape },
            fill,
        })
    };
    push(
        "model.embed_tokens.weight".into(),
        Dtype::F16,
        vec![v, h],
        Fill::Normal,
    );
    for l in 0..spec.layers {
        let p = format!("model.layers.{l}");
        push(
            format!("{p}.input_layernorm.weight"),
            Dtype::F16,
            vec![h],
            Fill::Norm,
        );
        // (name, k, n, permutation shared by linears that read the same activations)
        let linears: [(&str, usize, usize, u64); 7] = [
            ("self_attn.q_proj", h, q_dim, 0),
            ("self_attn.k_proj", h, kv_dim, 0),
            ("self_attn.v_proj", h, kv_dim, 0),
            ("self_attn.o_proj", q_dim, h, 1),
            ("mlp.gate_proj", h, i, 2),
            ("mlp.up_proj", h, i, 2),
            ("mlp.down_proj", i, h, 3),
        ];
        for (j, (name, k, n, perm)) in linears.into_iter().enumerate() {
            if j == 4 {
                push(
                    format!("{p}.post_attention_layernorm.weight"),
                    Dtype::F16,
                    vec![h],
                    Fill::Norm,
                );
            }
            let groups = spec.group_size.map_or(1, |g| k.div_ceil(g));
            let perm = ((l as u64) << 8) | perm;
            push(
                format!("{p}.{name}.qweight"),
                Dtype::I32,
                vec![k / pf, n],
                Fill::Codes,
            );
            push(
                format!("{p}.{name}.qzeros"),
                Dtype::I32,
                vec![groups, n / pf],
                Fill::Const(zero_word),
            );
            push(
                format!("{p}.{name}.scales"),
                Dtype::F16,
                vec![groups, n],
                Fill::Scales,
            );
            push(
                format!("{p}.{name}.g_idx"),
                Dtype::I32,
                vec![k],
                Fill::GIdx { k, perm },
            );
        }
    }
    push("model.norm.weight".into(), Dtype::F16, vec![h], Fill::Norm);
    push(
        "lm_head.weight".into(),
        Dtype::F16,
        vec![v, h],
        Fill::Normal,
    );
    Ok(out)
}

/// The tensors the checkpoint of `spec` holds, in file order (a dry run: nothing is generated or written).
pub fn tensor_table(spec: &SyntheticSpec) -> Result<Vec<TensorInfo>> {
    Ok(plan(spec)?.into_iter().map(|p| p.info).collect())
}

/// A safetensors header for `tensors` stored back to back in that order: the 8-byte length, then the JSON padded
/// with spaces to a multiple of 8 bytes. Returns the header bytes and the length of the data section.
pub fn safetensors_header(tensors: &[TensorInfo]) -> Result<(Vec<u8>, u64)> {
    let mut map = serde_json::Map::new();
    map.insert("__metadata__".into(), json!({ "format": "pt" }));
    let mut offset = 0u64;
    for t in tensors {
        let end = offset + t.bytes();
        let entry =
            json!({ "dtype": t.dtype.name(), "shape": t.shape, "data_offsets": [offset, end] });
        if map.insert(t.name.clone(), entry).is_some() {
            return Err(Error::InvalidArgument {
                name: "tensor name".into(),
                value: t.name.clone(),
                reason: "appears twice".into(),
            });
        }
        offset = end;
    }
    let mut text = serde_json::to_vec(&Value::Object(map)).map_err(|e| Error::InvalidArgument {
        name: "safetensors header".into(),
        value: String::new(),
        reason: e.to_string(),
    })?;
    while text.len() % 8 != 0 {
        text.push(b' ');
    }
    let mut out = Vec::with_capacity(8 + text.len());
    out.extend_from_slice(&(text.len() as u64).to_le_bytes());
    out.extend_from_slice(&text);
    Ok((out, offset))
}

/// Options for [`write_model`].
#[derive(Debug, Clone, Default)]
pub struct WriteOptions {
    /// Directory to copy tokenizer.json, tokenizer_config.json and special_tokens_map.json from (the first is
    /// required there, the others are copied when present); `None` = no tokenizer.
    pub tokenizer_from: Option<PathBuf>,
    /// Generator threads; `None` = all available cores.
    pub threads: Option<usize>,
    /// Write the header and extend the file to its full length without data (a sparse file that reads as zeros):
    /// enough to open and validate the checkpoint without generating gigabytes.
    pub header_only: bool,
}

/// What [`write_model`] produced.
#[derive(Debug, Clone, Serialize)]
pub struct Written {
    pub dir: PathBuf,
    pub tensors: usize,
    /// Size of model.safetensors.
    pub safetensors_bytes: u64,
    pub seconds: f64,
}

/// Writes the model directory of `spec` into `dir` (created if missing; existing files are overwritten).
pub fn write_model(spec: &SyntheticSpec, dir: &Path, opts: &WriteOptions) -> Result<Written> {
    let t0 = Instant::now();
    let planned = plan(spec)?;
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let write_json = |name: &str, v: &Value| -> Result<()> {
        let path = dir.join(name);
        let text = serde_json::to_string_pretty(v).map_err(|e| Error::InvalidArgument {
            name: name.into(),
            value: String::new(),
            reason: e.to_string(),
        })?;
        std::fs::write(&path, text + "\n").map_err(|e| Error::io(&path, e))
    };
    write_json("config.json", &spec.config_json())?;
    write_json("quantize_config.json", &spec.quantize_config_json())?;
    write_json("generation_config.json", &spec.generation_config_json())?;
    if let Some(src) = &opts.tokenizer_from {
        copy_tokenizer(src, dir)?;
    }

    let infos: Vec<TensorInfo> = planned.iter().map(|p| p.info.clone()).collect();
    let (header, data_len) = safetensors_header(&infos)?;
    let path = dir.join("model.safetensors");
    let mut file = File::create(&path).map_err(|e| Error::io(&path, e))?;
    file.write_all(&header).map_err(|e| Error::io(&path, e))?;
    let total = header.len() as u64 + data_len;
    if opts.header_only {
        file.set_len(total).map_err(|e| Error::io(&path, e))?;
    } else {
        let threads = opts
            .threads
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
            .max(1);
        let items: Vec<(u64, Fill)> = planned.iter().map(|p| (p.info.bytes(), p.fill)).collect();
        fill::stream_data(spec, &items, threads, &mut file, &path)?;
    }
    Ok(Written {
        dir: dir.to_path_buf(),
        tensors: planned.len(),
        safetensors_bytes: total,
        seconds: t0.elapsed().as_secs_f64(),
    })
}

fn copy_tokenizer(src: &Path, dir: &Path) -> Result<()> {
    for (name, required) in [
        ("tokenizer.json", true),
        ("tokenizer_config.json", false),
        ("special_tokens_map.json", false),
    ] {
        let from = src.join(name);
        if !required && !from.exists() {
            continue;
        }
        let to = dir.join(name);
        std::fs::copy(&from, &to).map_err(|e| Error::io(&from, e))?;
        // Copies of read-only sources stay writable so the directory can be overwritten or removed later.
        if let Ok(meta) = std::fs::metadata(&to) {
            let mut perm = meta.permissions();
            if perm.readonly() {
                #[allow(clippy::permissions_set_readonly_false)]
                perm.set_readonly(false);
                let _ = std::fs::set_permissions(&to, perm);
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_is_aligned_and_contiguous() {
        let infos = tensor_table(&SyntheticSpec::tiny()).unwrap();
        let (h, len) = safetensors_header(&infos).unwrap();
        assert_eq!(h.len() % 8, 0);
        assert_eq!(len, infos.iter().map(|t| t.bytes()).sum::<u64>());
    }
}
