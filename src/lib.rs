//! wgptq: GPTQ-quantized Mistral/Llama inference on any GPU through wgpu.
//!
//! Layers (data flows downward): [`model`] (files, config, validation) → [`prep`] (GPU weight layout) →
//! [`gpu`] (kernels, plan, execution) → [`session`] and [`generate`] (prefill/decode/sampling) → front ends.
//! [`hub`] turns a Hugging Face hub id into a model directory in the HF cache.
//!
//! ```no_run
//! use wgptq::{GenerateOptions, LoadOptions, Model, SamplingParams};
//! let model = Model::load("models/openchat_3.5-GPTQ", &LoadOptions::default())?;
//! let tok = model.tokenizer.as_ref().expect("tokenizer.json");
//! let prompt = tok.encode("GPT4 Correct User: Hi<|end_of_turn|>GPT4 Correct Assistant:", true)?;
//! let mut session = model.session(false)?;
//! let opts = GenerateOptions { max_new_tokens: 64, sampling: SamplingParams::default(),
//!                              stop_ids: model.config().eos_token_ids.clone(), top_logprobs: 0 };
//! let out = session.generate(&prompt, &opts, |step| { print!("{}", step.id); true })?;
//! println!("{}", tok.decode(&out.ids())?);
//! # Ok::<(), wgptq::Error>(())
//! ```

pub mod bench;
pub mod chat;
pub mod cpu_ref;
pub mod error;
pub mod generate;
pub mod gpu;
pub mod hub;
pub mod model;
pub mod parallel;
pub mod prep;
pub mod sampling;
pub mod session;
pub mod synthetic;
pub mod tokenizer;

pub use chat::{Chat, ChatOptions, ChatReply, Template, TextStream};
pub use error::{Error, Result};
pub use generate::{GenerateOptions, Generation, StopReason, TokenStep};
pub use gpu::DeviceOptions;
pub use sampling::SamplingParams;
pub use session::{LoadOptions, Model, Session};
