//! The `wgptq` command line: `generate` (one prompt, streamed or as JSON), `bench` (the benchmark runner) and
//! `info` (what a model is and what it needs). Errors are one clear line and a non-zero exit.

use std::io::Write;

mod cli;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use wgptq::model::{Linear, ModelFiles};
use wgptq::tokenizer::{ChatMessage, StreamDecoder};
use wgptq::{DeviceOptions, GenerateOptions, LoadOptions, Model, SamplingParams};

#[derive(Parser)]
#[command(
    name = "wgptq",
    version,
    about = "GPTQ Mistral/Llama inference on any GPU (wgpu)"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Args, Clone)]
struct DeviceArgs {
    /// Adapter to use: index or part of its name (see `wgptq info`).
    #[arg(long)]
    device: Option<String>,
    /// Longest context (prompt + answer) in tokens; default: the model's limit, at most 8192.
    #[arg(long)]
    max_context: Option<usize>,
    /// Tokens per prefill step.
    #[arg(long, default_value_t = 128)]
    prefill_chunk: usize,
}

impl DeviceArgs {
    fn load_options(&self) -> LoadOptions {
        LoadOptions {
            device: DeviceOptions {
                adapter: self.device.clone(),
                ..DeviceOptions::default()
            },
            max_context: self.max_context,
            prefill_chunk: self.prefill_chunk,
        }
    }
}

#[derive(Subcommand)]
enum Command {
    /// Generate a completion for one prompt.
    Generate {
        /// Model directory (laid out as a Hugging Face GPTQ repository), or a hub id owner/name[:branch]
        /// fetched into the Hugging Face cache.
        #[arg(long)]
        model: String,
        /// Hub branch, tag or commit (the same as `:branch` in --model).
        #[arg(long)]
        revision: Option<String>,
        #[arg(long)]
        prompt: String,
        /// Maximum new tokens.
        #[arg(short = 'n', long = "max-tokens", default_value_t = 256)]
        max_tokens: usize,
        /// 0 = greedy.
        #[arg(long, default_value_t = 0.0)]
        temperature: f32,
        /// 0 = off.
        #[arg(long, default_value_t = 0)]
        top_k: usize,
        #[arg(long, default_value_t = 1.0)]
        top_p: f32,
        #[arg(long, default_value_t = 1.0)]
        repeat_penalty: f32,
        #[arg(long)]
        seed: Option<u64>,
        /// Feed the prompt as is (with BOS) instead of through the chat template.
        #[arg(long)]
        no_template: bool,
        /// Print one JSON object: prompt_ids, generated_ids, text (and top_logprobs).
        #[arg(long)]
        json: bool,
        /// With --json: the K most likely tokens and their logprobs for every generated step.
        #[arg(long, default_value_t = 0)]
        top_logprobs: usize,
        #[command(flatten)]
        dev: DeviceArgs,
    },
    /// Measure load time, prefill and decode speed, bandwidth against the adapter's own ceiling, and (with
    /// --profile) the time of every op.
    Bench(Box<cli::bench::BenchArgs>),
    /// Describe a model (architecture, quantization, memory needs) and the adapters found.
    Info {
        /// Model directory or hub id owner/name[:branch].
        #[arg(long)]
        model: Option<String>,
        /// Hub branch, tag or commit.
        #[arg(long, requires = "model")]
        revision: Option<String>,
        /// Context length for the KV-cache estimate.
        #[arg(long, default_value_t = 4096)]
        context: usize,
    },
}

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_env("WGPTQ_LOG"))
        .with_writer(std::io::stderr)
        .init();
    if let Err(e) = run(Cli::parse()) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Generate {
            model,
            revision,
            prompt,
            max_tokens,
            temperature,
            top_k,
            top_p,
            repeat_penalty,
            seed,
            no_template,
            json,
            top_logprobs,
            dev,
        } => {
            let sampling = SamplingParams {
                temperature,
                top_k,
                top_p,
                repetition_penalty: repeat_penalty,
                seed,
            };
            sampling.validate()?;
            if top_logprobs > 0 && !json {
                bail!("--top-logprobs needs --json");
            }
            let model = cli::model_arg::resolve(&model, revision.as_deref())?;
            let m = Model::load(&model, &dev.load_options())?;
            let tok = m
                .tokenizer
                .as_ref()
                .with_context(|| format!("{} has no tokenizer.json", model.display()))?;
            let prompt_ids = if no_template {
                tok.encode(&prompt, true)?
            } else {
                tok.encode_chat(&[ChatMessage::user(prompt.clone())], true)?
            };
            let mut stop_ids = m.config().eos_token_ids.clone();
            stop_ids.extend(tok.eos_token_id());
            let opts = GenerateOptions {
                max_new_tokens: max_tokens,
                sampling,
                stop_ids,
                top_logprobs,
            };
            let mut session = m.session(false)?;
            let mut stream = StreamDecoder::new().skip_special_tokens(true);
            let mut stdout = std::io::stdout();
            let mut stream_err = None;
            let out = session.generate(&prompt_ids, &opts, |step| {
                if !json {
                    match stream.push(tok, step.id) {
                        Ok(piece) => {
                            let _ = stdout.write_all(piece.as_bytes());
                            let _ = stdout.flush();
                        }
                        Err(e) => stream_err = Some(e),
                    }
                }
                true
            })?;
            if let Some(e) = stream_err {
                return Err(e.into());
            }
            let text = tok.decode_with(&out.ids(), true)?;
            if json {
                let mut obj = serde_json::json!({
                    "prompt_ids": out.prompt_ids,
                    "generated_ids": out.ids(),
                    "text": text,
                    "stop": format!("{:?}", out.stop),
                });
                if top_logprobs > 0 {
                    obj["top_logprobs"] = out
                        .steps
                        .iter()
                        .map(|s| {
                            s.top
                                .iter()
                                .map(|(id, lp)| serde_json::json!({"id": id, "logprob": lp}))
                                .collect::<Vec<_>>()
                        })
                        .collect();
                }
                println!("{obj}");
            } else {
                let rest = stream.finish(tok)?;
                println!("{rest}");
            }
            Ok(())
        }
        Command::Bench(args) => cli::bench::run(*args),
        Command::Info {
            model,
            revision,
            context,
        } => {
            println!("adapters:");
            for (i, (a, f)) in wgptq::gpu::context::list_adapters().iter().enumerate() {
                println!(
                    "  [{i}] {} ({:?}, {:?}, {}); features: {f:?}",
                    a.name, a.backend, a.device_type, a.driver_info
                );
            }
            if let Some(model) = model {
                let dir = cli::model_arg::resolve(&model, revision.as_deref())?;
                info(&ModelFiles::open(&dir)?, context);
            }
            Ok(())
        }
    }
}

fn info(f: &ModelFiles, context: usize) {
    let c = &f.config;
    println!("model: {}", f.dir.display());
    println!(
        "  architecture: {:?}, {} layers, hidden {}, intermediate {}, heads {}/{} (head_dim {}), vocab {}",
        c.arch, c.num_layers, c.hidden_size, c.intermediate_size, c.num_heads, c.num_kv_heads, c.head_dim, c.vocab_size
    );
    println!(
        "  rope_theta {}, rms_norm_eps {}, sliding_window {:?}, max positions {}, tied embeddings {}",
        c.rope_theta, c.rms_norm_eps, c.sliding_window, c.max_position_embeddings, c.tie_word_embeddings
    );
    match &f.quant {
        Some(q) => println!(
            "  quantization: GPTQ {}-bit, group size {}, act-order {}, sym {}, format {:?}",
            q.bits,
            q.group_size.map_or("-1".to_string(), |g| g.to_string()),
            q.desc_act,
            q.sym,
            q.format
        ),
        None => println!("  quantization: none (f16)"),
    }
    let size = |t: &wgptq::model::TensorRef| t.end - t.start;
    let w = &f.weights;
    let mut params = c.vocab_size * c.hidden_size; // embedding
    let mut bytes = size(&w.embed) + size(&w.final_norm);
    for (name, l) in w.linears() {
        if name == "lm_head" && c.tie_word_embeddings {
            continue; // the embedding, counted above
        }
        params += l.k() * l.n();
        bytes += match l {
            Linear::F16 { weight, .. } => size(weight),
            Linear::Gptq {
                qweight,
                qzeros,
                scales,
                g_idx,
                ..
            } => size(qweight) + size(qzeros) + size(scales) + g_idx.as_ref().map_or(0, size),
        };
    }
    for l in &w.layers {
        bytes += size(&l.input_norm) + size(&l.post_norm);
    }
    let slots = c.sliding_window.map_or(context, |w| w.min(context));
    let kv = c.num_layers * slots * c.num_kv_heads * c.head_dim * 2 * 2;
    println!("  parameters: {:.2} B", params as f64 / 1e9);
    println!(
        "  weights on disk / in VRAM: {:.2} GiB",
        bytes as f64 / (1u64 << 30) as f64
    );
    println!(
        "  KV cache at context {context}: {:.2} GiB (f16)",
        kv as f64 / (1u64 << 30) as f64
    );
}
