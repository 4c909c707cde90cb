//! `wgptq bench`: benchmark a model directory, or a synthetic GPTQ checkpoint generated on the spot with exact
//! OpenChat-3.5 shapes (so the numbers mean something on machines without the real weights). Prints the report
//! table; `--json FILE` also writes the typed report for scripts and CI.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use wgptq::bench::{self, BenchOptions};
use wgptq::synthetic::{self, SyntheticSpec, WriteOptions};
use wgptq::DeviceOptions;

use super::args::SyntheticArgs;

/// Arguments of `wgptq bench`.
#[derive(clap::Args, Debug, Clone)]
pub struct BenchArgs {
    /// Model to benchmark: a directory (a Hugging Face GPTQ layout) or a hub id owner/name[:branch].
    #[arg(
        long,
        value_name = "DIR|ID",
        required_unless_present = "synthetic",
        conflicts_with = "synthetic"
    )]
    pub model: Option<String>,
    /// Hub branch, tag or commit of --model.
    #[arg(long, requires = "model")]
    pub revision: Option<String>,
    #[command(flatten)]
    pub synth: SyntheticArgs,
    /// Synthetic: keep the generated model in DIR (default: a temporary directory removed afterwards).
    #[arg(long, value_name = "DIR", conflicts_with = "model")]
    pub save: Option<PathBuf>,
    /// Synthetic: copy tokenizer.json (and its config files) from DIR into the generated model.
    #[arg(long, value_name = "DIR", conflicts_with = "model")]
    pub tokenizer_from: Option<PathBuf>,
    /// Prompt lengths whose prefill is timed (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "512")]
    pub prompt_lens: Vec<usize>,
    /// Context lengths at which decode is timed (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "16,4096")]
    pub contexts: Vec<usize>,
    /// Greedy decode steps per timed run.
    #[arg(long, default_value_t = 64)]
    pub decode_tokens: usize,
    /// Timed runs per measurement; the median is reported.
    #[arg(long, default_value_t = 5)]
    pub runs: usize,
    /// Untimed runs before the timed ones.
    #[arg(long, default_value_t = 1)]
    pub warmup: usize,
    /// Tokens per prefill step.
    #[arg(long, default_value_t = wgptq::session::DEFAULT_PREFILL_CHUNK)]
    pub prefill_chunk: usize,
    /// Per-op GPU time of one decode step at each context and of the first prefill chunk (needs timestamp
    /// queries).
    #[arg(long)]
    pub profile: bool,
    /// Also write the report as JSON to FILE ("-" prints JSON to stdout instead of the table).
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// Adapter to use: index or part of its name (see `wgptq info`).
    #[arg(long)]
    pub device: Option<String>,
    /// Only adapters of this backend (default: all, or the WGPU_BACKEND environment variable).
    #[arg(long, value_parser = clap::builder::PossibleValuesParser::new(wgptq::gpu::context::BACKENDS))]
    pub backend: Option<String>,
    /// Use the workgroup-memory kernels even where the adapter has subgroups.
    #[arg(long)]
    pub no_subgroups: bool,
    /// Keep the prefill on the portable f32 GEMM even where the adapter has matrix units.
    #[arg(long)]
    pub no_matrix_units: bool,
    /// Bit-identical results from run to run (decode adds the residual in a fixed order instead of with f32
    /// atomics).
    #[arg(long)]
    pub deterministic: bool,
    /// Record every decode step through wgpu, even on Vulkan (where by default steps replay command buffers
    /// recorded once): measures the host encode time the replay saves.
    #[arg(long)]
    pub no_replay: bool,
    /// Seed of the synthetic weights and of the random prompt token ids.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Also time a grid-wide barrier among N workgroups of 64 threads (spin-waits on a storage atomic: what a
    /// persistent kernel would pay per phase). All N must be resident on the GPU at once, or it hangs; the SM
    /// (compute unit) count is a safe N
    #[arg(long, value_name = "N")]
    pub grid_barrier: Option<u32>,
}

/// A generated model directory removed when dropped (unless it was asked to be kept).
struct Generated {
    dir: PathBuf,
    keep: bool,
}

impl Drop for Generated {
    fn drop(&mut self) {
        if !self.keep {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

fn describe(spec: &SyntheticSpec) -> String {
    format!(
        "{} layers, hidden {}, {}-bit {}{}",
        spec.layers,
        spec.hidden,
        spec.bits,
        spec.group_size
            .map_or("g-1".to_string(), |g| format!("g{g}")),
        if spec.act_order { " act-order" } else { "" }
    )
}

fn generate(args: &BenchArgs, preset: &str, spec: SyntheticSpec) -> Result<Generated> {
    let spec = SyntheticSpec {
        seed: args.seed,
        ..spec
    };
    let (dir, keep) = match &args.save {
        Some(d) => (d.clone(), true),
        None => {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.subsec_nanos());
            let name = format!("wgptq-bench-{}-{nanos}", std::process::id());
            (std::env::temp_dir().join(name), false)
        }
    };
    let guard = Generated { dir, keep };
    let bytes: u64 = synthetic::tensor_table(&spec)?
        .iter()
        .map(|t| t.bytes())
        .sum();
    eprintln!(
        "writing synthetic {preset} ({}) to {}: {:.2} GB",
        describe(&spec),
        guard.dir.display(),
        bytes as f64 / 1e9
    );
    let opts = WriteOptions {
        tokenizer_from: args.tokenizer_from.clone(),
        ..Default::default()
    };
    let w = synthetic::write_model(&spec, &guard.dir, &opts)
        .with_context(|| format!("writing the synthetic model to {}", guard.dir.display()))?;
    eprintln!("written in {:.1} s", w.seconds);
    Ok(guard)
}

/// Runs `wgptq bench`.
pub fn run(args: BenchArgs) -> Result<()> {
    let generated = match (args.synth.spec()?, &args.synth.synthetic) {
        (Some(spec), Some(preset)) => Some(generate(&args, preset, spec)?),
        _ if args.model.is_some() => None,
        _ => bail!("give --model DIR or --synthetic PRESET"),
    };
    let model_dir = match (&generated, &args.model) {
        (Some(g), _) => g.dir.clone(),
        (None, Some(m)) => super::model_arg::resolve(m, args.revision.as_deref())?,
        (None, None) => bail!("give --model DIR or --synthetic PRESET"),
    };
    let opts = BenchOptions {
        model_dir,
        prompt_lens: args.prompt_lens.clone(),
        contexts: args.contexts.clone(),
        decode_tokens: args.decode_tokens,
        runs: args.runs,
        warmup: args.warmup,
        profile: args.profile,
        prefill_chunk: args.prefill_chunk,
        device: DeviceOptions {
            adapter: args.device.clone(),
            no_subgroups: args.no_subgroups,
            backend: args.backend.clone(),
            no_matrix_units: args.no_matrix_units,
            deterministic: args.deterministic,
            no_replay: args.no_replay,
        },
        seed: args.seed,
        grid_barrier: args.grid_barrier,
    };
    let t0 = Instant::now();
    let report = bench::run_with_progress(&opts, |step| {
        eprintln!("[{:>7.1} s] {step}", t0.elapsed().as_secs_f64());
    })
    .with_context(|| format!("benchmarking {}", opts.model_dir.display()))?;
    drop(generated);
    match args.json.as_deref() {
        Some(p) if p == Path::new("-") => println!("{}", report.to_json()),
        Some(p) => {
            std::fs::write(p, report.to_json() + "\n")
                .with_context(|| format!("writing {}", p.display()))?;
            print!("{}", report.table());
            eprintln!("wrote {}", p.display());
        }
        None => print!("{}", report.table()),
    }
    Ok(())
}
