//! Text ↔ token ids, chat templates and streaming detokenization.
//!
//! The model's own `tokenizer.json` (HF `tokenizers`) is used as is, so ids match what transformers produces;
//! chat templates are rendered with minijinja set up like transformers' jinja environment (trim_blocks,
//! lstrip_blocks, loop controls, Python string methods, `raise_exception`), because a template that renders
//! differently by one space changes the prompt ids.

use std::fmt;
use std::path::Path;

use serde::Serialize;
use serde_json::{Map, Value};

use crate::error::{Error, Result};

/// OpenChat 3.5's template ("GPT4 Correct" condition), for tokenizers that ship none.
pub const OPENCHAT_TEMPLATE: &str = "{{ bos_token }}{% for message in messages %}\
{% if message['role'] == 'system' %}{{ message['content'] + '<|end_of_turn|>' }}\
{% else %}{{ 'GPT4 Correct ' + message['role'].title() + ': ' + message['content'] + '<|end_of_turn|>' }}\
{% endif %}{% endfor %}{% if add_generation_prompt %}{{ 'GPT4 Correct Assistant:' }}{% endif %}";

/// The token that marks the end of a turn in OpenChat models; its presence selects the built-in template.
const OPENCHAT_EOT: &str = "<|end_of_turn|>";

/// One chat turn.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ChatMessage {
    /// "system", "user" or "assistant".
    pub role: String,
    pub content: String,
}

impl ChatMessage {
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        ChatMessage {
            role: role.into(),
            content: content.into(),
        }
    }
    pub fn user(content: impl Into<String>) -> Self {
        Self::new("user", content)
    }
    pub fn system(content: impl Into<String>) -> Self {
        Self::new("system", content)
    }
    pub fn assistant(content: impl Into<String>) -> Self {
        Self::new("assistant", content)
    }
}

/// A model's tokenizer with its special tokens and chat template.
#[derive(Clone)]
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    bos_token: Option<String>,
    eos_token: Option<String>,
    unk_token: Option<String>,
    pad_token: Option<String>,
    chat_template: Option<String>,
}

impl fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tokenizer")
            .field("vocab_size", &self.vocab_size())
            .field("bos_token", &self.bos_token)
            .field("eos_token", &self.eos_token)
            .field("has_chat_template", &self.chat_template.is_some())
            .finish()
    }
}

fn tok_err(what: &str, e: impl fmt::Display) -> Error {
    Error::Tokenizer {
        reason: format!("{what}: {e}"),
    }
}

/// A special token in tokenizer_config.json: a plain string or an AddedToken object with `content`.
fn special_token(map: &Map<String, Value>, key: &str) -> Option<String> {
    match map.get(key)? {
        Value::String(s) => Some(s.clone()),
        Value::Object(o) => o.get("content")?.as_str().map(str::to_owned),
        _ => None,
    }
}

/// `chat_template` in tokenizer_config.json: a string, or a list of `{name, template}` (take "default").
fn config_template(map: &Map<String, Value>) -> Option<String> {
    match map.get("chat_template")? {
        Value::String(s) => Some(s.clone()),
        Value::Array(items) => items
            .iter()
            .filter_map(Value::as_object)
            .find(|o| o.get("name").and_then(Value::as_str) == Some("default"))
            .and_then(|o| o.get("template")?.as_str().map(str::to_owned)),
        _ => None,
    }
}

impl Tokenizer {
    /// Loads `dir/tokenizer.json`, with special tokens and the chat template from `dir/tokenizer_config.json`
    /// and `dir/chat_template.jinja` (which wins, as in transformers) when present.
    pub fn from_dir(dir: &Path) -> Result<Tokenizer> {
        let json_path = dir.join("tokenizer.json");
        if !json_path.is_file() {
            return Err(Error::io(
                &json_path,
                std::io::Error::new(std::io::ErrorKind::NotFound, "tokenizer.json not found"),
            ));
        }
        let inner = tokenizers::Tokenizer::from_file(&json_path)
            .map_err(|e| tok_err(&format!("cannot load {}", json_path.display()), e))?;

        let cfg_path = dir.join("tokenizer_config.json");
        let cfg = crate::model::config::read_optional_json_object(&cfg_path)?.unwrap_or_default();
        let jinja_path = dir.join("chat_template.jinja");
        let chat_template = if jinja_path.is_file() {
            Some(std::fs::read_to_string(&jinja_path).map_err(|e| Error::io(&jinja_path, e))?)
        } else {
            config_template(&cfg)
        };

        let mut tok = Tokenizer {
            inner,
            bos_token: special_token(&cfg, "bos_token"),
            eos_token: special_token(&cfg, "eos_token"),
            unk_token: special_token(&cfg, "unk_token"),
            pad_token: special_token(&cfg, "pad_token"),
            chat_template: None,
        };
        if let Some(t) = chat_template {
            tok.set_chat_template(t)?;
        }
        Ok(tok)
    }

    /// Replaces the chat template (checked for syntax now, so rendering later fails only on content).
    pub fn set_chat_template(&mut self, template: impl Into<String>) -> Result<()> {
        let template = template.into();
        template_env()
            .template_from_str(&template)
            .map_err(template_err)?;
        self.chat_template = Some(template);
        Ok(())
    }

    /// Encodes `text`. `add_special_tokens` adds what the tokenizer's post-processor adds (BOS for Llama/Mistral
    /// tokenizers); use `false` for text rendered from a chat template, which already contains it.
    pub fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>> {
        let enc = self
            .inner
            .encode(text, add_special_tokens)
            .map_err(|e| tok_err("encode", e))?;
        Ok(enc.get_ids().to_vec())
    }

    /// Decodes ids to text, keeping special tokens (lossless: what transformers' `decode` gives by default).
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.decode_with(ids, false)
    }

    /// Decodes ids to text, optionally dropping special tokens such as `</s>` or `<|end_of_turn|>`.
    pub fn decode_with(&self, ids: &[u32], skip_special_tokens: bool) -> Result<String> {
        self.inner
            .decode(ids, skip_special_tokens)
            .map_err(|e| tok_err("decode", e))
    }

    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    /// Number of ids, added tokens included.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    pub fn bos_token(&self) -> Option<&str> {
        self.bos_token.as_deref()
    }

    pub fn eos_token(&self) -> Option<&str> {
        self.eos_token.as_deref()
    }

    pub fn bos_token_id(&self) -> Option<u32> {
        self.bos_token.as_deref().and_then(|t| self.token_to_id(t))
    }

    pub fn eos_token_id(&self) -> Option<u32> {
        self.eos_token.as_deref().and_then(|t| self.token_to_id(t))
    }

    /// The model's chat template, if it ships one.
    pub fn chat_template(&self) -> Option<&str> {
        self.chat_template.as_deref()
    }

    /// The underlying HF tokenizer.
    pub fn inner(&self) -> &tokenizers::Tokenizer {
        &self.inner
    }

    /// Renders `messages` with the model's chat template; a tokenizer without one but with OpenChat's
    /// `<|end_of_turn|>` token gets [`OPENCHAT_TEMPLATE`].
    pub fn render_chat(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
    ) -> Result<String> {
        let template = match &self.chat_template {
            Some(t) => t.as_str(),
            None if self.token_to_id(OPENCHAT_EOT).is_some() => OPENCHAT_TEMPLATE,
            None => {
                return Err(Error::Template {
                    reason: "the tokenizer has no chat_template (tokenizer_config.json or chat_template.jinja); \
                             pass a template or use a raw prompt"
                        .into(),
                })
            }
        };
        self.render_chat_with(template, messages, add_generation_prompt)
    }

    /// Renders `messages` with an explicit template (for example [`OPENCHAT_TEMPLATE`]).
    pub fn render_chat_with(
        &self,
        template: &str,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
    ) -> Result<String> {
        let env = template_env();
        let tmpl = env.template_from_str(template).map_err(template_err)?;
        let ctx = minijinja::context! {
            messages => messages,
            add_generation_prompt => add_generation_prompt,
            bos_token => self.bos_token.as_deref().unwrap_or(""),
            eos_token => self.eos_token.as_deref().unwrap_or(""),
            unk_token => self.unk_token.as_deref().unwrap_or(""),
            pad_token => self.pad_token.as_deref().unwrap_or(""),
        };
        tmpl.render(ctx).map_err(template_err)
    }

    /// Renders a chat and encodes it without adding special tokens (the template supplies BOS if it wants one).
    pub fn encode_chat(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
    ) -> Result<Vec<u32>> {
        let text = self.render_chat(messages, add_generation_prompt)?;
        self.encode(&text, false)
    }
}

/// A jinja environment matching transformers' `_compile_jinja_template`.
fn template_env() -> minijinja::Environment<'static> {
    let mut env = minijinja::Environment::new();
    env.set_trim_blocks(true);
    env.set_lstrip_blocks(true);
    env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
    env.add_function(
        "raise_exception",
        |msg: String| -> std::result::Result<String, minijinja::Error> {
            Err(minijinja::Error::new(
                minijinja::ErrorKind::InvalidOperation,
                msg,
            ))
        },
    );
    env
}

fn template_err(e: minijinja::Error) -> Error {
    // minijinja's Display omits the cause chain (e.g. the message given to raise_exception); include it.
    let mut reason = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        reason.push_str(": ");
        reason.push_str(&s.to_string());
        source = s.source();
    }
    Error::Template { reason }
}

/// Turns a stream of ids into text pieces without ever emitting half a UTF-8 character.
///
/// Decodes a short window (the last emitted tokens plus the new ones) rather than the whole sequence, so each step
/// costs O(1); the window keeps one already-emitted token as context because SentencePiece decoders strip the
/// leading space of the first token they see. Output is held back while it ends in U+FFFD, which is what a
/// multi-byte character split across byte-fallback tokens decodes to until its last byte arrives.
#[derive(Debug, Clone, Default)]
pub struct StreamDecoder {
    ids: Vec<u32>,
    /// Start of the context window (tokens whose text was already emitted).
    prefix_offset: usize,
    /// End of what has been emitted.
    read_offset: usize,
    skip_special_tokens: bool,
}

impl StreamDecoder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Drop special tokens from the text (default: keep them, like [`Tokenizer::decode`]).
    pub fn skip_special_tokens(mut self, skip: bool) -> Self {
        self.skip_special_tokens = skip;
        self
    }

    /// All ids pushed so far.
    pub fn ids(&self) -> &[u32] {
        &self.ids
    }

    /// Adds one id and returns the text it completes (possibly empty).
    pub fn push(&mut self, tok: &Tokenizer, id: u32) -> Result<String> {
        self.ids.push(id);
        self.emit(tok, false)
    }

    /// Returns whatever is still held back (an incomplete character decodes as U+FFFD).
    pub fn finish(&mut self, tok: &Tokenizer) -> Result<String> {
        self.emit(tok, true)
    }

    fn emit(&mut self, tok: &Tokenizer, force: bool) -> Result<String> {
        let skip = self.skip_special_tokens;
        let prefix = tok.decode_with(&self.ids[self.prefix_offset..self.read_offset], skip)?;
        let full = tok.decode_with(&self.ids[self.prefix_offset..], skip)?;
        let complete = !full.ends_with('\u{FFFD}') || force;
        if full.len() > prefix.len() && complete && full.is_char_boundary(prefix.len()) {
            let piece = full[prefix.len()..].to_owned();
            self.prefix_offset = self.read_offset;
            self.read_offset = self.ids.len();
            Ok(piece)
        } else {
            Ok(String::new())
        }
    }
}
