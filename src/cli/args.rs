//! Flags shared by the subcommands that load a model and generate (`generate`, `chat`): the device, the context,
//! and sampling. Sampling flags are optional so that generation_config.json's defaults apply where none is given,
//! as in HF `generate()`.

use anyhow::{Context, Result};
use wgptq::chat::ChatOptions;
use wgptq::synthetic::{self, SyntheticSpec};
use wgptq::{DeviceOptions, LoadOptions, Model};

#[derive(clap::Args, Clone, Debug)]
pub struct DeviceArgs {
    /// Adapter to use: index or part of its name (see `wgptq info`).
    #[arg(long)]
    pub device: Option<String>,
    /// Only adapters of this backend (default: all, or the WGPU_BACKEND environment variable).
    #[arg(long, value_parser = clap::builder::PossibleValuesParser::new(wgptq::gpu::context::BACKENDS))]
    pub backend: Option<String>,
    /// Longest context (prompt + answer) in tokens; default: the model's limit, at most 8192.
    #[arg(long)]
    pub max_context: Option<usize>,
    /// Tokens per prefill step.
    #[arg(long, default_value_t = wgptq::session::DEFAULT_PREFILL_CHUNK)]
    pub prefill_chunk: usize,
    /// Keep the prefill on the portable f32 GEMM even where the adapter has matrix units (cooperative matrices).
    #[arg(long)]
    pub no_matrix_units: bool,
    /// Bit-identical results from run to run (decode adds the residual in a fixed order instead of with f32
    /// atomics; a little slower).
    #[arg(long)]
    pub deterministic: bool,
    /// Record every decode step through wgpu, even on Vulkan (where by default steps replay command buffers
    /// recorded once, which costs the host far less per token).
    #[arg(long)]
    pub no_replay: bool,
}

impl DeviceArgs {
    pub fn load_options(&self) -> LoadOptions {
        LoadOptions {
            device: DeviceOptions {
                adapter: self.device.clone(),
                backend: self.backend.clone(),
                no_matrix_units: self.no_matrix_units,
                deterministic: self.deterministic,
                no_replay: self.no_replay,
                ..DeviceOptions::default()
            },
            max_context: self.max_context,
            prefill_chunk: self.prefill_chunk,
        }
    }
}

#[derive(clap::Args, Clone, Debug)]
pub struct SamplingArgs {
    /// Maximum new tokens per answer (default: generation_config.json's max_new_tokens, else 512).
    #[arg(short = 'n', long = "max-tokens")]
    pub max_tokens: Option<usize>,
    /// Sampling temperature; 0 = greedy (default: generation_config.json: greedy unless do_sample).
    #[arg(long, allow_hyphen_values = true)]
    pub temperature: Option<f32>,
    /// Keep the K most likely tokens; 0 = off (default with sampling: generation_config.json's, else 50).
    #[arg(long, allow_hyphen_values = true)]
    pub top_k: Option<i64>,
    /// Keep the smallest set of tokens whose probability reaches P, in (0, 1].
    #[arg(long, allow_hyphen_values = true)]
    pub top_p: Option<f32>,
    /// Repetition penalty over prompt and answer (HF semantics); 1 = off.
    #[arg(long, allow_hyphen_values = true)]
    pub repeat_penalty: Option<f32>,
    /// Seed of the sampler: the same seed, prompt and settings give the same answer.
    #[arg(long)]
    pub seed: Option<u64>,
    /// End the answer before this string (repeatable).
    #[arg(long = "stop", value_name = "TEXT")]
    pub stop: Vec<String>,
}

impl SamplingArgs {
    /// The model's defaults with these flags applied; every value is checked (one clear error otherwise).
    pub fn options(&self, model: &Model) -> Result<ChatOptions> {
        let mut o = ChatOptions::from_model(model);
        // The flags override generation_config.json, and the result is read as HF reads it: a temperature
        // above 0 asks for sampling (with its other defaults, top-k 50), 0 for greedy.
        let mut g = model.files.generation.clone();
        if let Some(t) = self.temperature {
            g.do_sample = Some(t > 0.0);
            g.temperature = Some(t);
        }
        if let Some(k) = self.top_k {
            if k < 0 {
                anyhow::bail!("invalid argument `top_k` = {k}: must be >= 0 (0 = off)");
            }
            g.top_k = Some(k as usize);
        }
        g.top_p = self.top_p.or(g.top_p);
        g.repetition_penalty = self.repeat_penalty.or(g.repetition_penalty);
        let s = &mut o.generate.sampling;
        *s = wgptq::SamplingParams::from_defaults(&g);
        // Values that greedy decoding ignores are still checked: a bad flag is an error either way.
        s.temperature = self.temperature.unwrap_or(s.temperature);
        s.top_p = g.top_p.unwrap_or(s.top_p);
        s.seed = self.seed;
        s.validate()?;
        if let Some(n) = self.max_tokens {
            o.generate.max_new_tokens = n;
        }
        o.stop_strings = self.stop.clone();
        Ok(o)
    }
}

/// A synthetic checkpoint with a preset's exact shapes (`bench` generates its weights, `info` only its header).
#[derive(clap::Args, Clone, Debug)]
pub struct SyntheticArgs {
    /// A synthetic GPTQ checkpoint with this preset's exact shapes instead of a model: openchat-3.5 or tiny.
    #[arg(long, value_name = "PRESET", value_parser = parse_preset)]
    pub synthetic: Option<String>,
    /// Synthetic: bits per weight, 4 or 8 [default: 4].
    #[arg(long, requires = "synthetic", conflicts_with = "model", value_parser = parse_bits)]
    pub bits: Option<u32>,
    /// Synthetic: GPTQ group size, or -1 for one group per column [default: 128].
    #[arg(long, requires = "synthetic", conflicts_with = "model", allow_hyphen_values = true, value_parser = parse_group_size)]
    pub group_size: Option<i64>,
    /// Synthetic: act-order (desc_act) g_idx, a random permutation shared by q/k/v and by gate/up.
    #[arg(long, requires = "synthetic", conflicts_with = "model")]
    pub act_order: bool,
}

impl SyntheticArgs {
    /// The spec asked for (`None` without --synthetic), validated.
    pub fn spec(&self) -> Result<Option<SyntheticSpec>> {
        let Some(preset) = &self.synthetic else {
            return Ok(None);
        };
        let base =
            SyntheticSpec::preset(preset).with_context(|| format!("unknown preset {preset}"))?;
        let spec = SyntheticSpec {
            bits: self.bits.unwrap_or(4),
            group_size: match self.group_size.unwrap_or(128) {
                -1 => None,
                g => Some(g as usize),
            },
            act_order: self.act_order,
            ..base
        };
        spec.validate()?;
        Ok(Some(spec))
    }
}

fn parse_preset(s: &str) -> std::result::Result<String, String> {
    match SyntheticSpec::preset(s) {
        Some(_) => Ok(s.to_string()),
        None => Err(format!(
            "unknown preset; expected one of {}",
            synthetic::PRESETS.join(", ")
        )),
    }
}

fn parse_bits(s: &str) -> std::result::Result<u32, String> {
    match s.parse::<u32>() {
        Ok(b @ (4 | 8)) => Ok(b),
        _ => Err("expected 4 or 8".into()),
    }
}

fn parse_group_size(s: &str) -> std::result::Result<i64, String> {
    match s.parse::<i64>() {
        Ok(g) if g == -1 || g > 0 => Ok(g),
        _ => Err("expected a positive group size (32, 64, 128, ...) or -1".into()),
    }
}
