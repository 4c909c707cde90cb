//! Parsed `config.json` / `quantize_config.json`: the only place architecture and quantization settings are
//! read, so every later layer sees typed, validated values instead of JSON.
//!
//! Settings the engine cannot honour (RoPE scaling, 2/3-bit GPTQ, Marlin repacking, ...) are rejected here,
//! once, with the file and the value named, rather than discovered as wrong output later.

use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use super::json::Fields;
pub(crate) use super::json::{read_json_object, read_optional_json_object};
use crate::error::{Error, Result};

/// Model family; both share one forward pass (Mistral adds the sliding window).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Arch {
    Llama,
    Mistral,
}

/// Architecture hyper-parameters, read from config.json.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelConfig {
    pub arch: Arch,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub rms_norm_eps: f32,
    pub rope_theta: f32,
    /// `None` when absent or null: plain causal attention.
    pub sliding_window: Option<usize>,
    pub max_position_embeddings: usize,
    pub tie_word_embeddings: bool,
    pub bos_token_id: Option<u32>,
    /// From config.json and generation_config.json (union, in that order, deduplicated).
    pub eos_token_ids: Vec<u32>,
}

/// Zero-point storage convention of the checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CheckpointFormat {
    /// AutoGPTQ / optimum "gptq": zero stored minus one.
    V1,
    /// GPTQModel "gptq_v2": zero stored as is.
    V2,
}

/// GPTQ settings shared by every quantized linear of the checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct QuantConfig {
    /// 4 or 8.
    pub bits: u32,
    /// `None` for group_size = -1 (one group over all of K).
    pub group_size: Option<usize>,
    pub desc_act: bool,
    pub sym: bool,
    pub format: CheckpointFormat,
}

impl QuantConfig {
    /// Values per packed u32 word.
    pub fn pack_factor(&self) -> usize {
        32 / self.bits as usize
    }
    /// Number of groups for a reduction dimension of `k`.
    pub fn num_groups(&self, k: usize) -> usize {
        match self.group_size {
            Some(g) => k.div_ceil(g),
            None => 1,
        }
    }
    /// The value added to a stored zero field to get the real zero point (1 for v1, 0 for v2).
    pub fn zero_offset(&self) -> u32 {
        match self.format {
            CheckpointFormat::V1 => 1,
            CheckpointFormat::V2 => 0,
        }
    }
}

/// Sampling defaults from generation_config.json (all optional).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GenerationDefaults {
    pub do_sample: Option<bool>,
    pub temperature: Option<f32>,
    pub top_k: Option<usize>,
    pub top_p: Option<f32>,
    pub repetition_penalty: Option<f32>,
    pub max_new_tokens: Option<usize>,
}

/// Where config.json lives in a model directory.
pub fn config_path(dir: &Path) -> PathBuf {
    dir.join("config.json")
}

/// Where generation_config.json lives in a model directory.
pub fn generation_config_path(dir: &Path) -> PathBuf {
    dir.join("generation_config.json")
}

fn unsupported(path: &Path, setting: &str, value: impl Into<String>, hint: &str) -> Error {
    Error::Unsupported {
        path: path.to_path_buf(),
        setting: setting.into(),
        value: value.into(),
        hint: hint.into(),
    }
}

impl ModelConfig {
    /// Reads `dir/config.json` (and eos ids from `dir/generation_config.json` when present).
    pub fn from_dir(dir: &Path) -> Result<ModelConfig> {
        let path = config_path(dir);
        let map = read_json_object(&path)?;
        let mut config = Self::from_json(&path, &map)?;

        let gen_path = generation_config_path(dir);
        if let Some(gen) = read_optional_json_object(&gen_path)? {
            let f = Fields {
                path: &gen_path,
                map: &gen,
                prefix: "",
            };
            for id in f.token_ids("eos_token_id")? {
                if !config.eos_token_ids.contains(&id) {
                    config.eos_token_ids.push(id);
                }
            }
        }
        Ok(config)
    }

    /// Parses an already-read config.json object; `path` is only used in error messages.
    pub fn from_json(path: &Path, map: &Map<String, Value>) -> Result<ModelConfig> {
        let f = Fields {
            path,
            map,
            prefix: "",
        };
        let arch = parse_arch(&f)?;

        if let Some(act) = f.opt_str("hidden_act")? {
            if act != "silu" {
                return Err(unsupported(
                    path,
                    "hidden_act",
                    act,
                    "Llama/Mistral MLPs use silu",
                ));
            }
        }
        for field in ["attention_bias", "mlp_bias"] {
            if f.opt_bool(field)? == Some(true) {
                return Err(unsupported(
                    path,
                    field,
                    "true",
                    "wgptq supports bias-free Llama/Mistral linears",
                ));
            }
        }

        let hidden_size = f.req_size("hidden_size")?;
        let num_heads = f.req_size("num_attention_heads")?;
        let num_kv_heads = match f.opt_usize("num_key_value_heads")? {
            Some(0) => return Err(f.err("num_key_value_heads", "must be greater than zero")),
            Some(n) => n,
            None => num_heads,
        };
        if num_heads % num_kv_heads != 0 {
            return Err(f.err(
                "num_key_value_heads",
                format!("{num_kv_heads} does not divide num_attention_heads = {num_heads}"),
            ));
        }
        let head_dim = match f.opt_usize("head_dim")? {
            Some(0) => return Err(f.err("head_dim", "must be greater than zero")),
            Some(d) => d,
            None => {
                if hidden_size % num_heads != 0 {
                    return Err(f.err(
                        "head_dim",
                        format!(
                            "absent, and hidden_size {hidden_size} is not divisible by \
                             num_attention_heads {num_heads}"
                        ),
                    ));
                }
                hidden_size / num_heads
            }
        };
        if head_dim % 2 != 0 {
            return Err(f.err(
                "head_dim",
                format!("{head_dim} is odd; rotary embeddings need an even head_dim"),
            ));
        }

        let rope_theta = parse_rope(&f)?;
        let sliding_window = match arch {
            // HF's Llama attention has no sliding window, whatever the config says.
            Arch::Llama => None,
            Arch::Mistral => match f.opt_usize("sliding_window")? {
                Some(0) => return Err(f.err("sliding_window", "must be greater than zero")),
                w => w,
            },
        };
        let default_max_pos = match arch {
            Arch::Llama => 2048,
            Arch::Mistral => 4096 * 32,
        };
        let max_position_embeddings = f
            .opt_usize("max_position_embeddings")?
            .unwrap_or(default_max_pos);
        let rms_norm_eps = f.opt_f64("rms_norm_eps")?.unwrap_or(1e-6);
        if !(rms_norm_eps > 0.0 && rms_norm_eps.is_finite()) {
            return Err(f.err(
                "rms_norm_eps",
                format!("must be positive, found {rms_norm_eps}"),
            ));
        }
        let bos_token_id = match f.token_ids("bos_token_id")?.as_slice() {
            [] => None,
            [id] => Some(*id),
            _ => return Err(f.err("bos_token_id", "expected a single token id, found a list")),
        };

        Ok(ModelConfig {
            arch,
            vocab_size: f.req_size("vocab_size")?,
            hidden_size,
            intermediate_size: f.req_size("intermediate_size")?,
            num_layers: f.req_size("num_hidden_layers")?,
            num_heads,
            num_kv_heads,
            head_dim,
            rms_norm_eps: rms_norm_eps as f32,
            rope_theta,
            sliding_window,
            max_position_embeddings,
            tie_word_embeddings: f.opt_bool("tie_word_embeddings")?.unwrap_or(false),
            bos_token_id,
            eos_token_ids: dedup(f.token_ids("eos_token_id")?),
        })
    }

    /// Query heads that share one key/value head.
    pub fn group_size(&self) -> usize {
        self.num_heads / self.num_kv_heads
    }
    /// Width of the concatenated query heads.
    pub fn q_dim(&self) -> usize {
        self.num_heads * self.head_dim
    }
    /// Width of the concatenated key (or value) heads.
    pub fn kv_dim(&self) -> usize {
        self.num_kv_heads * self.head_dim
    }
}

fn dedup(ids: Vec<u32>) -> Vec<u32> {
    let mut out = Vec::with_capacity(ids.len());
    for id in ids {
        if !out.contains(&id) {
            out.push(id);
        }
    }
    out
}

fn parse_arch(f: &Fields) -> Result<Arch> {
    let from_arch_name = |name: &str| match name {
        "LlamaForCausalLM" => Some(Arch::Llama),
        "MistralForCausalLM" => Some(Arch::Mistral),
        _ => None,
    };
    if let Some(v) = f.get("architectures") {
        let names = v
            .as_array()
            .ok_or_else(|| f.wrong_type("architectures", "an array of strings", v))?;
        if let Some(first) = names.first() {
            let name = first
                .as_str()
                .ok_or_else(|| f.wrong_type("architectures", "an array of strings", first))?;
            return from_arch_name(name).ok_or_else(|| {
                unsupported(
                    f.path,
                    "architectures",
                    name,
                    "wgptq runs LlamaForCausalLM and MistralForCausalLM",
                )
            });
        }
    }
    match f.opt_str("model_type")? {
        Some("llama") => Ok(Arch::Llama),
        Some("mistral") => Ok(Arch::Mistral),
        Some(other) => Err(unsupported(
            f.path,
            "model_type",
            other,
            "wgptq runs llama and mistral models",
        )),
        None => Err(f.err(
            "architectures",
            "neither `architectures` nor `model_type` is present",
        )),
    }
}

/// RoPE base frequency; any scaling scheme other than the default is rejected.
fn parse_rope(f: &Fields) -> Result<f32> {
    let check_type = |obj: &Map<String, Value>, field: &str| -> Result<()> {
        let sub = Fields {
            path: f.path,
            map: obj,
            prefix: "",
        };
        let ty = match sub.opt_str("rope_type")? {
            Some(t) => Some(t),
            None => sub.opt_str("type")?,
        };
        match ty {
            None | Some("default") => Ok(()),
            Some(other) => Err(unsupported(
                f.path,
                &format!("{field}.rope_type"),
                other,
                "only unscaled RoPE is implemented",
            )),
        }
    };
    if let Some(scaling) = f.opt_object("rope_scaling")? {
        check_type(scaling, "rope_scaling")?;
    }
    let mut theta = f.opt_f64("rope_theta")?;
    if let Some(params) = f.opt_object("rope_parameters")? {
        check_type(params, "rope_parameters")?;
        if theta.is_none() {
            let sub = Fields {
                path: f.path,
                map: params,
                prefix: "rope_parameters.",
            };
            theta = sub.opt_f64("rope_theta")?;
        }
    }
    let theta = theta.unwrap_or(10000.0);
    if !(theta > 0.0 && theta.is_finite()) {
        return Err(f.err("rope_theta", format!("must be positive, found {theta}")));
    }
    Ok(theta as f32)
}

impl QuantConfig {
    /// The GPTQ settings of the model in `dir`, or `None` when it is not quantized.
    ///
    /// Looks in config.json's `quantization_config` first, then quantize_config.json, then quant_config.json.
    pub fn from_dir(dir: &Path) -> Result<Option<QuantConfig>> {
        let cfg_path = config_path(dir);
        if let Some(map) = read_optional_json_object(&cfg_path)? {
            let f = Fields {
                path: &cfg_path,
                map: &map,
                prefix: "",
            };
            if let Some(q) = f.opt_object("quantization_config")? {
                return Self::from_json(&cfg_path, q, "quantization_config.").map(Some);
            }
        }
        for name in ["quantize_config.json", "quant_config.json"] {
            let path = dir.join(name);
            if let Some(map) = read_optional_json_object(&path)? {
                return Self::from_json(&path, &map, "").map(Some);
            }
        }
        Ok(None)
    }

    /// Parses one quantization settings object; `prefix` names its position in the file for errors.
    pub fn from_json(path: &Path, map: &Map<String, Value>, prefix: &str) -> Result<QuantConfig> {
        let f = Fields { path, map, prefix };
        let setting = |s: &str| format!("{prefix}{s}");

        if let Some(method) = f.opt_str("quant_method")? {
            if !method.eq_ignore_ascii_case("gptq") {
                return Err(unsupported(
                    path,
                    &setting("quant_method"),
                    method,
                    "wgptq loads GPTQ checkpoints only",
                ));
            }
        }
        if f.opt_bool("is_marlin_format")? == Some(true) {
            return Err(unsupported(
                path,
                &setting("is_marlin_format"),
                "true",
                "Marlin-repacked weights are not supported; use the plain GPTQ checkpoint",
            ));
        }

        let bits_field = if f.get("bits").is_some() || f.get("w_bit").is_none() {
            "bits"
        } else {
            "w_bit"
        };
        let bits = f
            .opt_i64(bits_field)?
            .ok_or_else(|| f.err("bits", "required field is missing"))?;
        if bits != 4 && bits != 8 {
            return Err(unsupported(
                path,
                "bits",
                bits.to_string(),
                "wgptq supports 4- and 8-bit GPTQ",
            ));
        }

        let gs_field = if f.get("group_size").is_some() || f.get("q_group_size").is_none() {
            "group_size"
        } else {
            "q_group_size"
        };
        let group_size = match f.opt_i64(gs_field)?.unwrap_or(-1) {
            -1 => None,
            g if g > 0 => Some(g as usize),
            g => {
                return Err(f.err(
                    gs_field,
                    format!("must be positive or -1 (one group), found {g}"),
                ))
            }
        };

        let format = parse_format(&f)?;
        Ok(QuantConfig {
            bits: bits as u32,
            group_size,
            desc_act: f.opt_bool("desc_act")?.unwrap_or(false),
            sym: f.opt_bool("sym")?.unwrap_or(true),
            format,
        })
    }
}

/// `checkpoint_format` (AutoGPTQ, legacy GPTQModel) and `format` (GPTQModel) name the zero-point convention.
fn parse_format(f: &Fields) -> Result<CheckpointFormat> {
    let mut found: Option<(&str, &str)> = None;
    for field in ["format", "checkpoint_format"] {
        if let Some(value) = f.opt_str(field)? {
            if let Some((prev_field, prev)) = found {
                if prev != value {
                    return Err(f.err(
                        field,
                        format!("`{value}` disagrees with {prev_field} = `{prev}`"),
                    ));
                }
            }
            found = Some((field, value));
        }
    }
    match found {
        None => Ok(CheckpointFormat::V1),
        Some((_, "gptq")) => Ok(CheckpointFormat::V1),
        Some((_, "gptq_v2")) => Ok(CheckpointFormat::V2),
        Some((field, other)) => Err(unsupported(
            f.path,
            &format!("{}{field}", f.prefix),
            other,
            "wgptq reads the plain GPTQ layouts `gptq` (v1) and `gptq_v2`",
        )),
    }
}

impl GenerationDefaults {
    /// Reads `dir/generation_config.json`; all defaults are `None` when the file is absent.
    pub fn from_dir(dir: &Path) -> Result<GenerationDefaults> {
        let path = generation_config_path(dir);
        let Some(map) = read_optional_json_object(&path)? else {
            return Ok(GenerationDefaults::default());
        };
        let f = Fields {
            path: &path,
            map: &map,
            prefix: "",
        };
        Ok(GenerationDefaults {
            do_sample: f.opt_bool("do_sample")?,
            temperature: f.opt_f64("temperature")?.map(|x| x as f32),
            top_k: f.opt_usize("top_k")?,
            top_p: f.opt_f64("top_p")?.map(|x| x as f32),
            repetition_penalty: f.opt_f64("repetition_penalty")?.map(|x| x as f32),
            max_new_tokens: f.opt_usize("max_new_tokens")?,
        })
    }
}
