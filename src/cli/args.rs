//! Flags shared by the subcommands that load a model and generate (`generate`, `chat`): the device, the context,
//! and sampling. Sampling flags are optional so that generation_config.json's defaults apply where none is given,
//! as in HF `generate()`.

use anyhow::Result;
use wgptq::chat::ChatOptions;
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
    #[arg(long, default_value_t = 128)]
    pub prefill_chunk: usize,
}

impl DeviceArgs {
    pub fn load_options(&self) -> LoadOptions {
        LoadOptions {
            device: DeviceOptions {
                adapter: self.device.clone(),
                backend: self.backend.clone(),
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
        let s = &mut o.generate.sampling;
        if let Some(t) = self.temperature {
            // Asking for a temperature asks for sampling: HF's other defaults (top-k 50) come with it.
            if s.is_greedy() && t > 0.0 {
                s.top_k = model.files.generation.top_k.unwrap_or(50);
                s.top_p = model.files.generation.top_p.unwrap_or(1.0);
            }
            s.temperature = t;
        }
        if let Some(k) = self.top_k {
            if k < 0 {
                anyhow::bail!("invalid argument `top_k` = {k}: must be >= 0 (0 = off)");
            }
            s.top_k = k as usize;
        }
        if let Some(p) = self.top_p {
            s.top_p = p;
        }
        if let Some(r) = self.repeat_penalty {
            s.repetition_penalty = r;
        }
        s.seed = self.seed;
        s.validate()?;
        if let Some(n) = self.max_tokens {
            o.generate.max_new_tokens = n;
        }
        o.stop_strings = self.stop.clone();
        Ok(o)
    }
}
