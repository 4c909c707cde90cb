//! Multi-turn chat over one [`Session`]. Each turn re-renders the whole conversation with the chat template (so
//! the prompt is exactly what the template gives, as in HF `apply_chat_template`), then keeps the KV cache of the
//! longest prefix it shares with what the cache holds and prefills only the rest: a new turn costs its own tokens,
//! not the history's. Text is streamed UTF-8 safe and cut at stop strings, and what streams equals the reply.
//!
//! ```no_run
//! use wgptq::chat::{Chat, ChatOptions, Template};
//! use wgptq::{LoadOptions, Model};
//!
//! let model = Model::load("path/to/openchat_3.5-GPTQ", &LoadOptions::default())?;
//! let mut chat = Chat::new(&model, Template::Model)?;
//! let opts = ChatOptions::from_model(&model);
//! let reply = chat.send("Write a haiku about GPUs.", &opts, |piece| {
//!     print!("{piece}");
//!     true // false stops the answer
//! })?;
//! println!("\n[{} tokens, {:?}]", reply.ids.len(), reply.stop);
//! # Ok::<(), wgptq::Error>(())
//! ```

use crate::error::{Error, Result};
use crate::generate::{GenerateOptions, StopReason};
use crate::sampling::SamplingParams;
use crate::session::{Model, Session};
use crate::tokenizer::{ChatMessage, StreamDecoder, Tokenizer, OPENCHAT_TEMPLATE};

/// OpenChat's coding mode ("Code User: … Code Assistant:").
pub const OPENCHAT_CODE_TEMPLATE: &str = "{{ bos_token }}{% for message in messages %}\
{% if message['role'] == 'system' %}{{ message['content'] + '<|end_of_turn|>' }}\
{% else %}{{ 'Code ' + message['role'].title() + ': ' + message['content'] + '<|end_of_turn|>' }}\
{% endif %}{% endfor %}{% if add_generation_prompt %}{{ 'Code Assistant:' }}{% endif %}";

/// The form printed in TheBloke's GPTQ model card: "GPT4 User: {prompt}<|end_of_turn|>GPT4 Assistant:".
pub const OPENCHAT_LEGACY_TEMPLATE: &str = "{{ bos_token }}{% for message in messages %}\
{% if message['role'] == 'system' %}{{ message['content'] + '<|end_of_turn|>' }}\
{% else %}{{ 'GPT4 ' + message['role'].title() + ': ' + message['content'] + '<|end_of_turn|>' }}\
{% endif %}{% endfor %}{% if add_generation_prompt %}{{ 'GPT4 Assistant:' }}{% endif %}";

/// Which chat template renders the conversation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Template {
    /// The model's own (tokenizer_config.json `chat_template` or chat_template.jinja); OpenChat's "GPT4 Correct"
    /// form for OpenChat tokenizers without one.
    Model,
    /// "GPT4 Correct User: …<|end_of_turn|>GPT4 Correct Assistant:"
    OpenChat,
    /// "Code User: …<|end_of_turn|>Code Assistant:"
    OpenChatCode,
    /// "GPT4 User: …<|end_of_turn|>GPT4 Assistant:" (the GPTQ model card's prompt template)
    OpenChatLegacy,
    /// A Jinja template given by the user.
    Custom(String),
}

impl Template {
    /// Names accepted by [`Template::from_name`].
    pub const NAMES: [&'static str; 4] = ["model", "openchat", "openchat-code", "openchat-legacy"];

    /// A built-in template by name, or a Jinja file when `name` is a path to one.
    pub fn from_name(name: &str) -> Result<Template> {
        Ok(match name {
            "model" => Template::Model,
            "openchat" => Template::OpenChat,
            "openchat-code" => Template::OpenChatCode,
            "openchat-legacy" => Template::OpenChatLegacy,
            path if std::path::Path::new(path).is_file() => {
                Template::Custom(std::fs::read_to_string(path).map_err(|e| Error::Io {
                    path: path.into(),
                    source: e,
                })?)
            }
            other => {
                return Err(Error::InvalidArgument {
                    name: "template".into(),
                    value: other.into(),
                    reason: format!(
                        "not a built-in template ({}) nor a Jinja file",
                        Template::NAMES.join(", ")
                    ),
                })
            }
        })
    }

    /// The Jinja source, or `None` for the model's own (resolved by the tokenizer).
    fn source(&self) -> Option<&str> {
        match self {
            Template::Model => None,
            Template::OpenChat => Some(OPENCHAT_TEMPLATE),
            Template::OpenChatCode => Some(OPENCHAT_CODE_TEMPLATE),
            Template::OpenChatLegacy => Some(OPENCHAT_LEGACY_TEMPLATE),
            Template::Custom(s) => Some(s),
        }
    }

    /// Renders `messages` (with the assistant prompt when `add_generation_prompt`).
    pub fn render(
        &self,
        tok: &Tokenizer,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
    ) -> Result<String> {
        match self.source() {
            None => tok.render_chat(messages, add_generation_prompt),
            Some(src) => tok.render_chat_with(src, messages, add_generation_prompt),
        }
    }
}

/// Streams generated ids as text: UTF-8 safe (see [`StreamDecoder`]) and cut before the first stop string, with
/// any text that might be the start of a stop string held back until it is known not to be.
#[derive(Debug, Default)]
pub struct TextStream {
    dec: StreamDecoder,
    stops: Vec<String>,
    /// Decoded text not yet emitted (a possible stop-string prefix).
    held: String,
    /// Everything emitted.
    text: String,
    stopped: bool,
}

impl TextStream {
    pub fn new(stop_strings: &[String]) -> Self {
        TextStream {
            dec: StreamDecoder::new().skip_special_tokens(true),
            stops: stop_strings
                .iter()
                .filter(|s| !s.is_empty())
                .cloned()
                .collect(),
            ..Default::default()
        }
    }

    /// Adds one id; returns the text that can be shown now. After a stop string, [`TextStream::stopped`] is true
    /// and further ids are ignored.
    pub fn push(&mut self, tok: &Tokenizer, id: u32) -> Result<String> {
        if self.stopped {
            return Ok(String::new());
        }
        let piece = self.dec.push(tok, id)?;
        Ok(self.take(piece, false))
    }

    /// The text still held at the end of generation.
    pub fn finish(&mut self, tok: &Tokenizer) -> Result<String> {
        if self.stopped {
            return Ok(String::new());
        }
        let rest = self.dec.finish(tok)?;
        Ok(self.take(rest, true))
    }

    pub fn stopped(&self) -> bool {
        self.stopped
    }

    /// All text emitted so far (the reply, without the stop string).
    pub fn text(&self) -> &str {
        &self.text
    }

    fn take(&mut self, piece: String, end: bool) -> String {
        self.held.push_str(&piece);
        let cut = self
            .stops
            .iter()
            .filter_map(|s| self.held.find(s.as_str()))
            .min();
        let emit_to = if let Some(at) = cut {
            self.stopped = true;
            at
        } else if end {
            self.held.len()
        } else {
            // Hold the longest tail that is a proper prefix of some stop string.
            let keep = self
                .stops
                .iter()
                .flat_map(|s| {
                    (1..s.len())
                        .rev()
                        .filter(|&n| s.is_char_boundary(n))
                        .map(move |n| &s[..n])
                })
                .filter(|p| self.held.ends_with(p))
                .map(|p| p.len())
                .max()
                .unwrap_or(0);
            self.held.len() - keep
        };
        let out: String = self.held[..emit_to].to_string();
        self.held.drain(..emit_to);
        if self.stopped {
            self.held.clear();
        }
        self.text.push_str(&out);
        out
    }
}

/// Settings of one chat (or generate) answer.
#[derive(Debug, Clone)]
pub struct ChatOptions {
    pub generate: GenerateOptions,
    /// The answer ends before the first of these strings (not included).
    pub stop_strings: Vec<String>,
}

impl ChatOptions {
    /// The model's defaults: generation_config.json's sampling (see [`SamplingParams::from_defaults`]), its eos
    /// ids and the tokenizer's, at most `max_new_tokens` from generation_config.json or 512.
    pub fn from_model(model: &Model) -> ChatOptions {
        let g = &model.files.generation;
        ChatOptions {
            generate: GenerateOptions {
                max_new_tokens: g.max_new_tokens.unwrap_or(512),
                sampling: SamplingParams::from_defaults(g),
                stop_ids: model.stop_ids(),
                top_logprobs: 0,
            },
            stop_strings: Vec::new(),
        }
    }
}

/// One answer.
#[derive(Debug, Clone)]
pub struct ChatReply {
    /// The answer's text (special tokens skipped, cut before a stop string).
    pub text: String,
    /// Generated ids (the stop id included when one ended the answer).
    pub ids: Vec<u32>,
    pub stop: StopReason,
    /// Prompt tokens of this turn, and how many of them the KV cache already held.
    pub prompt_tokens: usize,
    pub reused_tokens: usize,
}

/// A conversation with a model, keeping the KV cache across turns.
pub struct Chat<'m> {
    model: &'m Model,
    tok: &'m Tokenizer,
    session: Session,
    template: Template,
    system: Option<String>,
    messages: Vec<ChatMessage>,
    /// The ids whose keys and values the cache holds, positions 0..session.position().
    cached: Vec<u32>,
}

impl<'m> Chat<'m> {
    pub fn new(model: &'m Model, template: Template) -> Result<Chat<'m>> {
        let tok = model.tokenizer.as_ref().ok_or_else(|| Error::Tokenizer {
            reason: format!(
                "{} has no tokenizer.json; chat needs one",
                model.files.dir.display()
            ),
        })?;
        // Fail now, not at the first turn, when the template cannot render.
        template.render(tok, &[ChatMessage::user("hi")], true)?;
        Ok(Chat {
            model,
            tok,
            session: model.session(false)?,
            template,
            system: None,
            messages: Vec::new(),
            cached: Vec::new(),
        })
    }

    /// Sets (or clears) the system prompt; the next turn re-renders the conversation with it.
    pub fn set_system(&mut self, system: Option<String>) {
        self.system = system.filter(|s| !s.trim().is_empty());
    }

    /// Forgets the conversation (the system prompt stays).
    pub fn reset(&mut self) {
        self.messages.clear();
    }

    pub fn messages(&self) -> &[ChatMessage] {
        &self.messages
    }

    pub fn model(&self) -> &Model {
        self.model
    }

    /// Sends a user message and generates the answer; `on_text` gets each piece of text as it is ready and
    /// returns `false` to stop. On error (for example a conversation longer than the context) the conversation
    /// is left as it was before the call.
    pub fn send(
        &mut self,
        user: &str,
        opts: &ChatOptions,
        mut on_text: impl FnMut(&str) -> bool,
    ) -> Result<ChatReply> {
        let mut msgs: Vec<ChatMessage> = self.system.iter().map(ChatMessage::system).collect();
        msgs.extend(self.messages.iter().cloned());
        msgs.push(ChatMessage::user(user));
        let text = self.template.render(self.tok, &msgs, true)?;
        let prompt = self.tok.encode(&text, false)?;
        let limit = self.session.max_positions();
        if prompt.len() >= limit {
            return Err(Error::ContextOverflow {
                tokens: prompt.len() + 1,
                limit,
            });
        }
        // Keep the cache of the shared prefix (at least one token is prefilled: its logits start the answer).
        let common = prompt
            .iter()
            .zip(&self.cached)
            .take_while(|(a, b)| a == b)
            .count()
            .min(prompt.len() - 1)
            .min(self.session.position());
        let reused = if self.session.truncate(common) {
            common
        } else {
            0
        };
        self.cached.truncate(reused);
        let mut stream = TextStream::new(&opts.stop_strings);
        let mut err = None;
        let tok = self.tok;
        let out = self
            .session
            .generate(&prompt[reused..], &opts.generate, |step| {
                match stream.push(tok, step.id) {
                    Ok(piece) => {
                        let go_on = piece.is_empty() || on_text(&piece);
                        go_on && !stream.stopped()
                    }
                    Err(e) => {
                        err = Some(e);
                        false
                    }
                }
            });
        let out = match out {
            Ok(o) => o,
            Err(e) => {
                // The cache may hold part of this turn: forget it rather than trust it.
                self.session.reset();
                self.cached.clear();
                return Err(e);
            }
        };
        if let Some(e) = err {
            return Err(e);
        }
        let rest = stream.finish(tok)?;
        if !rest.is_empty() {
            on_text(&rest);
        }
        let ids = out.ids();
        let mut all = prompt.clone();
        all.extend(&ids);
        self.cached = all[..self.session.position().min(all.len())].to_vec();
        let stop = if stream.stopped() {
            StopReason::StopString
        } else {
            out.stop
        };
        let reply = stream.text().to_string();
        self.messages.push(ChatMessage::user(user));
        // The template puts its own space after "Assistant:".
        self.messages
            .push(ChatMessage::assistant(reply.trim_start().to_string()));
        Ok(ChatReply {
            text: reply,
            ids,
            stop,
            prompt_tokens: prompt.len(),
            reused_tokens: reused,
        })
    }
}
