//! `wgptq generate`: one prompt, the answer streamed to stdout (or one JSON object with ids and logprobs, which
//! the PyTorch comparison in scripts/ reads).

use std::io::Write;

use anyhow::{bail, Context, Result};
use wgptq::chat::{Template, TextStream};
use wgptq::tokenizer::ChatMessage;
use wgptq::Model;

use super::args::{DeviceArgs, SamplingArgs};

#[derive(clap::Args, Debug)]
pub struct GenerateArgs {
    /// Model directory (laid out as a Hugging Face GPTQ repository), or a hub id owner/name[:branch] fetched
    /// into the Hugging Face cache.
    #[arg(long)]
    pub model: String,
    /// Hub branch, tag or commit (the same as `:branch` in --model).
    #[arg(long)]
    pub revision: Option<String>,
    #[arg(long)]
    pub prompt: String,
    /// Chat template: model, openchat, openchat-code, openchat-legacy, or a Jinja file.
    #[arg(long, default_value = "model")]
    pub template: String,
    /// Feed the prompt as is (with BOS) instead of through the chat template.
    #[arg(long, conflicts_with = "template")]
    pub no_template: bool,
    /// Print one JSON object: prompt_ids, generated_ids, text (and top_logprobs).
    #[arg(long)]
    pub json: bool,
    /// With --json: the K most likely tokens and their logprobs for every generated step.
    #[arg(long, default_value_t = 0)]
    pub top_logprobs: usize,
    #[command(flatten)]
    pub sampling: SamplingArgs,
    #[command(flatten)]
    pub dev: DeviceArgs,
}

pub fn run(a: GenerateArgs) -> Result<()> {
    if a.top_logprobs > 0 && !a.json {
        bail!("--top-logprobs needs --json");
    }
    let template = Template::from_name(&a.template)?;
    let dir = super::model_arg::resolve(&a.model, a.revision.as_deref())?;
    let m = Model::load(&dir, &a.dev.load_options())?;
    let mut opts = a.sampling.options(&m)?;
    opts.generate.top_logprobs = a.top_logprobs;
    let tok = m
        .tokenizer
        .as_ref()
        .with_context(|| format!("{} has no tokenizer.json", dir.display()))?;
    let prompt_ids = if a.no_template {
        tok.encode(&a.prompt, true)?
    } else {
        let text = template.render(tok, &[ChatMessage::user(a.prompt.clone())], true)?;
        tok.encode(&text, false)?
    };
    let mut session = m.session(false)?;
    let mut stream = TextStream::new(&opts.stop_strings);
    let mut stdout = std::io::stdout();
    let mut stream_err = None;
    let out = session.generate(&prompt_ids, &opts.generate, |step| {
        match stream.push(tok, step.id) {
            Ok(piece) => {
                if !a.json {
                    let _ = stdout.write_all(piece.as_bytes());
                    let _ = stdout.flush();
                }
            }
            Err(e) => stream_err = Some(e),
        }
        stream_err.is_none() && !stream.stopped()
    })?;
    if let Some(e) = stream_err {
        return Err(e.into());
    }
    let rest = stream.finish(tok)?;
    if a.json {
        let mut obj = serde_json::json!({
            "prompt_ids": out.prompt_ids,
            "generated_ids": out.ids(),
            "text": stream.text(),
            "stop": format!("{:?}", if stream.stopped() { wgptq::StopReason::StopString } else { out.stop }),
        });
        if a.top_logprobs > 0 {
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
        println!("{rest}");
    }
    Ok(())
}
