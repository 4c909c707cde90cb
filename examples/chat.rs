//! Streams a chat answer from a GPTQ model: `cargo run --release --example chat -- MODEL "your question"`, where
//! MODEL is a local directory or a hub id such as `TheBloke/openchat_3.5-GPTQ` (downloaded into the HF cache).

use std::io::Write;

use wgptq::chat::{Chat, ChatOptions, Template};
use wgptq::hub::{self, HubOptions};
use wgptq::{LoadOptions, Model};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let model = args
        .next()
        .unwrap_or_else(|| "TheBloke/openchat_3.5-GPTQ".into());
    let question = args
        .next()
        .unwrap_or_else(|| "What is GPTQ, in two sentences?".into());
    let dir = hub::resolve_model(&model, None, &HubOptions::from_env()?)?;
    let model = Model::load(&dir, &LoadOptions::default())?;
    let mut chat = Chat::new(&model, Template::Model)?;
    let opts = ChatOptions::from_model(&model);
    let reply = chat.send(&question, &opts, |piece| {
        print!("{piece}");
        std::io::stdout().flush().is_ok()
    })?;
    println!(
        "\n[{} tokens, stopped by {:?}]",
        reply.ids.len(),
        reply.stop
    );
    Ok(())
}
