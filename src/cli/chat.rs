//! `wgptq chat`: an interactive conversation, or one answer per line of piped stdin. The KV cache is kept across
//! turns (see wgptq::chat), so a turn costs only its own tokens. Ctrl-C stops the answer being written, not the
//! program (at the prompt it exits); /reset, /system and /quit manage the conversation.

use std::io::{BufRead, IsTerminal, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use anyhow::{Context, Result};
use wgptq::chat::{Chat, Template};
use wgptq::Model;

use super::args::{DeviceArgs, SamplingArgs};

/// The model `wgptq chat` uses when none is given: the project's first target, main branch (4-bit, group 128).
pub const DEFAULT_MODEL: &str = "TheBloke/openchat_3.5-GPTQ";

#[derive(clap::Args, Debug)]
pub struct ChatArgs {
    /// Model directory, or a hub id owner/name[:branch] fetched into the Hugging Face cache.
    #[arg(long, default_value = DEFAULT_MODEL)]
    pub model: String,
    /// Hub branch, tag or commit (the same as `:branch` in --model).
    #[arg(long)]
    pub revision: Option<String>,
    /// Chat template: model, openchat, openchat-code, openchat-legacy, or a Jinja file.
    #[arg(long, default_value = "model")]
    pub template: String,
    /// System prompt (also settable in the chat with /system TEXT).
    #[arg(long)]
    pub system: Option<String>,
    /// Print prompt/answer token counts and speed after each answer (stderr).
    #[arg(long)]
    pub stats: bool,
    #[command(flatten)]
    pub sampling: SamplingArgs,
    #[command(flatten)]
    pub dev: DeviceArgs,
}

static GENERATING: AtomicBool = AtomicBool::new(false);
static STOP: AtomicBool = AtomicBool::new(false);

const HELP: &str = "commands: /reset (forget the conversation), /system TEXT (set the system prompt; empty clears), \
/quit; Ctrl-C stops an answer, Ctrl-D or /quit exits";

pub fn run(a: ChatArgs) -> Result<()> {
    let template = Template::from_name(&a.template)?;
    let dir = super::model_arg::resolve(&a.model, a.revision.as_deref())?;
    let model = Model::load(&dir, &a.dev.load_options())?;
    let opts = a.sampling.options(&model)?;
    let mut chat = Chat::new(&model, template)?;
    chat.set_system(a.system.clone());
    ctrlc::set_handler(|| {
        if GENERATING.load(Ordering::SeqCst) {
            STOP.store(true, Ordering::SeqCst);
        } else {
            std::process::exit(130);
        }
    })
    .context("installing the Ctrl-C handler")?;

    let interactive = std::io::stdin().is_terminal();
    if interactive {
        eprintln!(
            "wgptq chat: {} ({} tokens of context). {HELP}",
            dir.display(),
            model.max_context()
        );
    }
    let stdin = std::io::stdin();
    let mut stdout = std::io::stdout();
    let mut line = String::new();
    loop {
        if interactive {
            print!("> ");
            stdout.flush()?;
        }
        line.clear();
        if stdin.lock().read_line(&mut line)? == 0 {
            break;
        }
        let input = line.trim_end_matches(['\n', '\r']);
        if input.trim().is_empty() {
            continue;
        }
        if let Some(cmd) = input.strip_prefix('/') {
            let (name, arg) = cmd.split_once(' ').unwrap_or((cmd, ""));
            match name {
                "quit" | "exit" => break,
                "reset" => {
                    chat.reset();
                    eprintln!("(conversation cleared)");
                }
                "system" => {
                    chat.set_system(Some(arg.to_string()));
                    chat.reset();
                    eprintln!("(system prompt set; conversation cleared)");
                }
                "help" => eprintln!("{HELP}"),
                _ => eprintln!("unknown command /{name}; {HELP}"),
            }
            continue;
        }
        STOP.store(false, Ordering::SeqCst);
        GENERATING.store(true, Ordering::SeqCst);
        let t0 = Instant::now();
        let reply = chat.send(input, &opts, |piece| {
            let _ = stdout.write_all(piece.as_bytes());
            let _ = stdout.flush();
            !STOP.load(Ordering::SeqCst)
        });
        GENERATING.store(false, Ordering::SeqCst);
        println!();
        match reply {
            Ok(r) => {
                if a.stats {
                    let secs = t0.elapsed().as_secs_f64();
                    eprintln!(
                        "[prompt {} tokens ({} reused from the cache), answer {} tokens, {:.1} s, {:.1} tok/s, {:?}]",
                        r.prompt_tokens,
                        r.reused_tokens,
                        r.ids.len(),
                        secs,
                        r.ids.len() as f64 / secs.max(1e-9),
                        r.stop
                    );
                }
            }
            // A turn that cannot run (the context is full, say) leaves the conversation as it was.
            Err(e) if interactive => eprintln!("error: {e}; /reset starts over"),
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}
