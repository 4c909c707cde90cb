//! `wgptq info`: the adapters found and which one `--device` selects, and, given a model (a directory, a hub id,
//! or a synthetic preset whose exact tensor shapes need no download), its architecture, quantization, parameter
//! count, size on disk and the GPU memory it needs at `--context` ([`wgptq::gpu::memory::estimate`]).
//!
//! Nothing here creates a GPU device: the adapter choice and its capabilities come from
//! [`wgptq::gpu::context::choose_adapter`] (the selection `Gpu::new` uses), so `info` answers on machines whose
//! GPU is busy or missing. `--json` prints one object with the same content for scripts.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use wgptq::gpu::context::{self, AdapterChoice};
use wgptq::gpu::memory::{self, EstimateOptions, LayoutSource, MemoryEstimate};
use wgptq::model::{CheckpointFormat, ModelFiles};
use wgptq::synthetic::{self, SyntheticSpec, WriteOptions};
use wgptq::DeviceOptions;

use super::args::SyntheticArgs;

/// Arguments of `wgptq info`.
#[derive(clap::Args, Debug, Clone)]
pub struct InfoArgs {
    /// Model directory or hub id owner/name[:branch]; without one (or --synthetic) only the adapters are listed.
    #[arg(long, value_name = "DIR|ID", conflicts_with = "synthetic")]
    pub model: Option<String>,
    /// Hub branch, tag or commit of --model.
    #[arg(long, requires = "model")]
    pub revision: Option<String>,
    /// Describe a synthetic checkpoint (nothing is downloaded, no weight data is generated).
    #[command(flatten)]
    pub synth: SyntheticArgs,
    /// Context (tokens) the memory estimate is for, as `--max-context` of generate/chat.
    #[arg(long, default_value_t = 4096)]
    pub context: usize,
    /// Tokens per prefill step, as in generate/chat.
    #[arg(long, default_value_t = wgptq::session::DEFAULT_PREFILL_CHUNK)]
    pub prefill_chunk: usize,
    /// Adapter the estimate is for: index or part of its name; default: wgpu's high-performance choice.
    #[arg(long)]
    pub device: Option<String>,
    /// Only adapters of this backend (default: all, or the WGPU_BACKEND environment variable).
    #[arg(long, value_parser = clap::builder::PossibleValuesParser::new(wgptq::gpu::context::BACKENDS))]
    pub backend: Option<String>,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}

/// A model described by `info`, with where it came from.
struct Described {
    source: String,
    layout: LayoutSource,
    files: ModelFiles,
    estimate: MemoryEstimate,
}

/// A directory removed when dropped (the header-only synthetic checkpoint).
struct TempModel(PathBuf);

impl Drop for TempModel {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn spec_name(preset: &str, s: &SyntheticSpec) -> String {
    format!(
        "synthetic {preset}, {}-bit, group size {}, act-order {}",
        s.bits,
        s.group_size.map_or("-1".into(), |g| g.to_string()),
        yes_no(s.act_order)
    )
}

fn describe(args: &InfoArgs, choice: &AdapterChoice) -> Result<Option<Described>> {
    let opts = |layout| EstimateOptions {
        context: args.context,
        prefill_chunk: args.prefill_chunk,
        layout,
        caps: choice.caps.clone(),
    };
    if let (Some(preset), Some(spec)) = (&args.synth.synthetic, args.synth.spec()?) {
        // A header-only checkpoint (a sparse file of the full length): the real loader validates the exact
        // tensors, and their sizes are those of a written one. It has no data, so the layout is the canonical one.
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let dir = std::env::temp_dir().join(format!("wgptq-info-{}-{nanos}", std::process::id()));
        let tmp = TempModel(dir);
        let header_only = WriteOptions {
            header_only: true,
            ..Default::default()
        };
        synthetic::write_model(&spec, &tmp.0, &header_only)
            .with_context(|| format!("writing a header-only checkpoint to {}", tmp.0.display()))?;
        let files = ModelFiles::open(&tmp.0)?;
        let estimate = memory::estimate(&files, &opts(LayoutSource::Canonical))?;
        return Ok(Some(Described {
            source: spec_name(preset, &spec),
            layout: LayoutSource::Canonical,
            files,
            estimate,
        }));
    }
    let Some(model) = &args.model else {
        return Ok(None);
    };
    let dir = super::model_arg::resolve(model, args.revision.as_deref())?;
    let files = ModelFiles::open(&dir)?;
    let estimate = memory::estimate(&files, &opts(LayoutSource::Checkpoint))?;
    Ok(Some(Described {
        source: dir.display().to_string(),
        layout: LayoutSource::Checkpoint,
        files,
        estimate,
    }))
}

/// Runs `wgptq info`.
pub fn run(args: InfoArgs) -> Result<()> {
    let device = DeviceOptions {
        adapter: args.device.clone(),
        backend: args.backend.clone(),
        ..DeviceOptions::default()
    };
    let choice = context::choose_adapter(&device);
    let described = describe(&args, &choice)?;
    if args.json {
        println!("{}", to_json(&args, &choice, described.as_ref()));
    } else {
        print_adapters(&args, &choice);
        if let Some(d) = &described {
            print_model(d);
        }
    }
    // An explicit --device that matches nothing is an error (generate and chat would fail the same way); with
    // the default choice, no adapter only means the estimate assumes no device.
    if let (Some(sel), Err(e)) = (&args.device, &choice.selected) {
        bail!("--device {sel}: {e}");
    }
    Ok(())
}

fn yes_no(b: bool) -> &'static str {
    if b {
        "yes"
    } else {
        "no"
    }
}

fn feature_names(f: wgpu::Features) -> Vec<&'static str> {
    [
        (wgpu::Features::SUBGROUP, "SUBGROUP"),
        (wgpu::Features::TIMESTAMP_QUERY, "TIMESTAMP_QUERY"),
        (
            wgpu::Features::TIMESTAMP_QUERY_INSIDE_PASSES,
            "TIMESTAMP_QUERY_INSIDE_PASSES",
        ),
        (wgpu::Features::SHADER_F16, "SHADER_F16"),
        (
            wgpu::Features::EXPERIMENTAL_COOPERATIVE_MATRIX,
            "EXPERIMENTAL_COOPERATIVE_MATRIX",
        ),
    ]
    .into_iter()
    .filter(|(x, _)| f.contains(*x))
    .map(|(_, name)| name)
    .collect()
}

fn format_name(f: CheckpointFormat) -> &'static str {
    match f {
        CheckpointFormat::V1 => "v1 (gptq)",
        CheckpointFormat::V2 => "v2 (gptq_v2)",
    }
}

/// Binary units, as GPU memory is sold (GiB = 2³⁰ bytes).
pub fn gib(bytes: u64) -> String {
    let b = bytes as f64;
    const K: f64 = 1024.0;
    if bytes == 0 {
        "0".into()
    } else if b >= K * K * K {
        format!("{:.2} GiB", b / (K * K * K))
    } else if b >= K * K {
        format!("{:.1} MiB", b / (K * K))
    } else {
        format!("{:.1} KiB", b / K)
    }
}

/// Decimal units, as the Hugging Face hub lists file sizes (GB = 10⁹ bytes).
pub fn gb(bytes: u64) -> String {
    let b = bytes as f64;
    if b >= 1e9 {
        format!("{:.2} GB", b / 1e9)
    } else if b >= 1e6 {
        format!("{:.1} MB", b / 1e6)
    } else {
        format!("{:.1} kB", b / 1e3)
    }
}

/// A count with three significant digits and a unit: 7.24 B, 135 M, 4.23 M, 960 K.
pub fn count(n: u64) -> String {
    let (v, unit) = match n as f64 {
        x if x >= 1e9 => (x / 1e9, " B"),
        x if x >= 1e6 => (x / 1e6, " M"),
        x if x >= 1e3 => (x / 1e3, " K"),
        x => return format!("{x}"),
    };
    match v {
        v if v >= 100.0 => format!("{v:.0}{unit}"),
        v if v >= 10.0 => format!("{v:.1}{unit}"),
        v => format!("{v:.2}{unit}"),
    }
}

fn print_adapters(args: &InfoArgs, choice: &AdapterChoice) {
    if choice.adapters.is_empty() {
        println!("adapters: none found");
    } else {
        println!("adapters:");
    }
    for (i, (a, f)) in choice.adapters.iter().enumerate() {
        let features = feature_names(*f);
        println!(
            "  [{i}] {} ({:?}, {:?}, {} {}); features: {}",
            a.name,
            a.backend,
            a.device_type,
            a.driver,
            a.driver_info,
            if features.is_empty() {
                "none".to_string()
            } else {
                features.join(", ")
            }
        );
    }
    let how = match &args.device {
        Some(sel) => format!("--device {sel}"),
        None => "wgpu's high-performance choice; --device NAME|INDEX picks another".into(),
    };
    match &choice.selected {
        Ok(i) => println!("device: [{i}] {} ({how})", choice.adapters[*i].0.name),
        Err(e) => println!("device: none ({how}): {e}"),
    }
    if let Some(c) = &choice.caps {
        println!(
            "prefill: {}",
            if c.coop_matrix {
                "matrix units (cooperative matrices, f16 inputs, f32 sums)"
            } else {
                "portable f32 GEMM (no 16x16x16 f16/f32 cooperative matrices with 32-wide subgroups here)"
            }
        );
        println!(
            "decode residual: {}",
            if c.float_atomics {
                "f32 atomics (fastest; --deterministic adds in a fixed order)"
            } else {
                "fixed order (no f32 atomics here, or --deterministic)"
            }
        );
        println!(
            "decode steps: {}",
            if c.replay_unchecked {
                "replayed from Vulkan command buffers recorded once, their pipelines without robustBufferAccess's \
                 checks (--no-replay records each through wgpu)"
            } else if c.replay {
                "replayed from Vulkan command buffers recorded once (--no-replay records each through wgpu)"
            } else {
                "recorded through wgpu each step (replay needs Vulkan; or --no-replay / WGPTQ_REPLAY=0)"
            }
        );
    }
}

fn print_model(d: &Described) {
    let (c, f) = (&d.files.config, &d.files);
    println!("model: {}", d.source);
    println!(
        "  architecture   {:?}: {} layers, hidden {}, intermediate {}, heads {} / {} kv (head_dim {}), vocab {}",
        c.arch,
        c.num_layers,
        c.hidden_size,
        c.intermediate_size,
        c.num_heads,
        c.num_kv_heads,
        c.head_dim,
        c.vocab_size
    );
    println!(
        "  positions      max {}, sliding window {}, rope theta {}, rms_norm_eps {:e}, tied embeddings {}",
        c.max_position_embeddings,
        c.sliding_window.map_or("none".into(), |w| w.to_string()),
        c.rope_theta,
        c.rms_norm_eps,
        yes_no(c.tie_word_embeddings)
    );
    match &f.quant {
        Some(q) => println!(
            "  quantization   GPTQ {}-bit, group size {}, act-order (desc_act) {}, sym {}, checkpoint format {}",
            q.bits,
            q.group_size.map_or("-1".to_string(), |g| g.to_string()),
            yes_no(q.desc_act),
            yes_no(q.sym),
            format_name(q.format)
        ),
        None => println!("  quantization   none (f16)"),
    }
    println!("  parameters     {}", count(f.weights.parameter_count()));
    let disk = f.checkpoint.file_bytes();
    println!(
        "  on disk        {} ({}, {} safetensors file{})",
        gb(disk),
        gib(disk),
        f.checkpoint.files.len(),
        if f.checkpoint.files.len() == 1 {
            ""
        } else {
            "s"
        }
    );
    let m = &d.estimate;
    let w = &m.weights;
    println!(
        "GPU memory at context {} (prefill chunk {}, {} KV slots per layer{}):",
        m.context,
        m.prefill_chunk,
        m.kv_slots,
        match d.layout {
            LayoutSource::Checkpoint => "",
            LayoutSource::Canonical => "; layout from quantize_config",
        }
    );
    println!(
        "  weights        {:>10}  (codes {}, scales {}, zeros {}, act-order perm {}, f16 {}, norms {}, RoPE {})",
        gib(m.weights_bytes),
        gib(w.qweight),
        gib(w.scales),
        gib(w.zeros),
        gib(w.perm),
        gib(w.f16),
        gib(w.norms),
        gib(w.rope)
    );
    println!(
        "  KV cache       {:>10}  ({} layers × K,V × {} slots × {} kv heads × {} × f16)",
        gib(m.kv_cache_bytes),
        c.num_layers,
        m.kv_slots,
        c.num_kv_heads,
        c.head_dim
    );
    println!("  activations    {:>10}", gib(m.activations_bytes));
    println!("  total          {:>10}", gib(m.total_bytes));
}

/// An f32 as the f64 its shortest decimal spelling names (1e-5, not 9.999999747378752e-6).
fn decimal(x: f32) -> f64 {
    x.to_string().parse().unwrap_or(x as f64)
}

fn to_json(args: &InfoArgs, choice: &AdapterChoice, d: Option<&Described>) -> Value {
    let adapters: Vec<Value> = choice
        .adapters
        .iter()
        .enumerate()
        .map(|(i, (a, f))| {
            json!({
                "index": i,
                "name": a.name,
                "backend": format!("{:?}", a.backend),
                "device_type": format!("{:?}", a.device_type),
                "driver": a.driver,
                "driver_info": a.driver_info,
                "features": feature_names(*f),
            })
        })
        .collect();
    let model = d.map(|d| {
        let (c, f) = (&d.files.config, &d.files);
        json!({
            "source": d.source,
            "layout": match d.layout {
                LayoutSource::Checkpoint => "checkpoint",
                LayoutSource::Canonical => "canonical",
            },
            "architecture": {
                "type": format!("{:?}", c.arch),
                "layers": c.num_layers,
                "hidden": c.hidden_size,
                "intermediate": c.intermediate_size,
                "heads": c.num_heads,
                "kv_heads": c.num_kv_heads,
                "head_dim": c.head_dim,
                "vocab": c.vocab_size,
                "max_position_embeddings": c.max_position_embeddings,
                "sliding_window": c.sliding_window,
                "rope_theta": decimal(c.rope_theta),
                "rms_norm_eps": decimal(c.rms_norm_eps),
                "tie_word_embeddings": c.tie_word_embeddings,
            },
            "quantization": f.quant.map(|q| json!({
                "bits": q.bits,
                "group_size": q.group_size.map_or(-1, |g| g as i64),
                "act_order": q.desc_act,
                "sym": q.sym,
                "checkpoint_format": match q.format {
                    CheckpointFormat::V1 => "gptq",
                    CheckpointFormat::V2 => "gptq_v2",
                },
            })),
            "parameters": f.weights.parameter_count(),
            "disk_bytes": f.checkpoint.file_bytes(),
            "memory": d.estimate,
        })
    });
    json!({
        "adapters": adapters,
        "device": args.device,
        "selected": choice.selected.as_ref().ok(),
        "selection_error": choice.selected.as_ref().err(),
        "model": model,
    })
}
