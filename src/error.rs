//! One error type for the whole library, with structured fields, so callers (and the CLI) can tell the user
//! what is wrong and what to do without parsing strings.

use std::path::PathBuf;

/// Every failure the library reports.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("{path}: malformed config: field `{field}`: {reason}")]
    Config {
        path: PathBuf,
        field: String,
        reason: String,
    },

    #[error("{path}: unsupported {setting} = {value}: {hint}")]
    Unsupported {
        path: PathBuf,
        setting: String,
        value: String,
        hint: String,
    },

    #[error("{path}: malformed safetensors file: {reason}")]
    Safetensors { path: PathBuf, reason: String },

    #[error("tensor `{name}` is missing from the checkpoint ({dir}); expected for {needed_for}")]
    MissingTensor {
        name: String,
        dir: PathBuf,
        needed_for: String,
    },

    #[error("tensor `{name}` has shape {got:?}, expected {want:?}")]
    TensorShape {
        name: String,
        got: Vec<usize>,
        want: Vec<usize>,
    },

    #[error("tensor `{name}` has dtype {got}, expected {want}")]
    TensorDtype {
        name: String,
        got: String,
        want: String,
    },

    #[error("tensor `{name}` is invalid: {reason}")]
    TensorValue { name: String, reason: String },

    #[error("tokenizer: {reason}")]
    Tokenizer { reason: String },

    #[error("chat template: {reason}")]
    Template { reason: String },

    #[error("no usable GPU adapter: {reason}")]
    NoAdapter { reason: String },

    #[error("GPU device limit: {what} needs {needed}, the adapter allows {limit}")]
    DeviceLimit {
        what: String,
        needed: u64,
        limit: u64,
    },

    #[error("GPU error in {op}: {reason}")]
    Gpu { op: String, reason: String },

    #[error("shader {shader}: {reason}")]
    Shader { shader: String, reason: String },

    #[error("invalid argument `{name}` = {value}: {reason}")]
    InvalidArgument {
        name: String,
        value: String,
        reason: String,
    },

    /// A model named by Hugging Face hub id could not be found, fetched or used from the cache; `reason` says
    /// what to do.
    #[error("model {model} (Hugging Face hub): {reason}")]
    Hub { model: String, reason: String },

    #[error(
        "the prompt needs {tokens} tokens but the context holds {limit} (prompt and answer together); shorten it \
         or load the model with a larger context (--max-context, up to the model's limit)"
    )]
    ContextOverflow { tokens: usize, limit: usize },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
}
