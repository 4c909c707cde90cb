//! The `wgptq` command line: `chat` (a conversation), `generate` (one prompt, streamed or as JSON), `bench` (the
//! benchmark runner) and `info` (what a model is and what it needs). Errors are one clear line and a non-zero exit.

mod cli;

use anyhow::Result;
use clap::{Parser, Subcommand};

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

#[derive(Subcommand)]
enum Command {
    /// Generate a completion for one prompt.
    Generate(Box<cli::generate::GenerateArgs>),
    /// Chat with a model (streamed; the KV cache is kept across turns). Default model: TheBloke/openchat_3.5-GPTQ.
    Chat(Box<cli::chat::ChatArgs>),
    /// Measure load time, prefill and decode speed, bandwidth against the adapter's own ceiling, and (with
    /// --profile) the time of every op.
    Bench(Box<cli::bench::BenchArgs>),
    /// Describe a model (architecture, quantization, memory needs) and the adapters found.
    Info(Box<cli::info::InfoArgs>),
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
        Command::Generate(args) => cli::generate::run(*args),
        Command::Chat(args) => cli::chat::run(*args),
        Command::Bench(args) => cli::bench::run(*args),
        Command::Info(args) => cli::info::run(*args),
    }
}
