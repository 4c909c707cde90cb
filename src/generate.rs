//! The generation loop over a [`Session`]: prefill, then decode until a stop condition, streaming each token to
//! a callback. Greedy decoding without logprobs stays on the GPU (argmax there; only the id comes back).

use crate::error::Result;
use crate::sampling::{top_logprobs, Sampler, SamplingParams};
use crate::session::Session;

/// What to generate.
#[derive(Debug, Clone)]
pub struct GenerateOptions {
    pub max_new_tokens: usize,
    pub sampling: SamplingParams,
    /// Generation stops after any of these ids (included in the output).
    pub stop_ids: Vec<u32>,
    /// Report the k most likely tokens (log-softmax of raw logits) for every step; 0 = off.
    pub top_logprobs: usize,
}

/// One generated token.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenStep {
    pub id: u32,
    /// (id, logprob) of the most likely tokens before any sampling transform; empty unless requested.
    pub top: Vec<(u32, f32)>,
}

/// Why generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    /// A stop id (eos / end-of-turn) was generated.
    Eos,
    MaxTokens,
    /// The session's context is full.
    ContextEnd,
    /// The callback asked to stop.
    Stopped,
    /// A stop string appeared in the text (see [`crate::chat::TextStream`]).
    StopString,
}

/// The result of [`Session::generate`].
#[derive(Debug, Clone)]
pub struct Generation {
    pub prompt_ids: Vec<u32>,
    pub steps: Vec<TokenStep>,
    pub stop: StopReason,
}

impl Generation {
    pub fn ids(&self) -> Vec<u32> {
        self.steps.iter().map(|s| s.id).collect()
    }
}

impl Session {
    /// Prefills `prompt` (appended to what the session already holds) and generates. `on_token` sees each token
    /// as it is chosen and returns `false` to stop.
    pub fn generate(
        &mut self,
        prompt: &[u32],
        opts: &GenerateOptions,
        mut on_token: impl FnMut(&TokenStep) -> bool,
    ) -> Result<Generation> {
        let mut sampler = Sampler::new(opts.sampling)?;
        let gpu_greedy = opts.sampling.is_greedy()
            && opts.top_logprobs == 0
            && opts.sampling.repetition_penalty == 1.0;
        let mut history: Vec<u32> = prompt.to_vec();
        let mut steps = Vec::new();
        if opts.max_new_tokens == 0 {
            self.prefill(prompt)?;
            return Ok(Generation {
                prompt_ids: prompt.to_vec(),
                steps,
                stop: StopReason::MaxTokens,
            });
        }
        let logits = self.prefill(prompt)?;
        if gpu_greedy {
            // The first id comes from the prefill logits; the rest stay on the GPU, pipelined.
            let first = crate::sampling::argmax(&logits);
            let mut stop = StopReason::MaxTokens;
            let mut emit = |id: u32, stop: &mut StopReason| -> bool {
                let step = TokenStep {
                    id,
                    top: Vec::new(),
                };
                let go_on = on_token(&step);
                steps.push(step);
                if opts.stop_ids.contains(&id) {
                    *stop = StopReason::Eos;
                    false
                } else if steps.len() >= opts.max_new_tokens {
                    *stop = StopReason::MaxTokens;
                    false
                } else if !go_on {
                    *stop = StopReason::Stopped;
                    false
                } else {
                    true
                }
            };
            if emit(first, &mut stop) {
                if self.position() >= self.max_positions() {
                    stop = StopReason::ContextEnd;
                } else {
                    let remaining = opts.max_new_tokens - 1;
                    let produced =
                        self.decode_greedy_stream(first, remaining, |id| Ok(emit(id, &mut stop)))?;
                    if produced < remaining && stop == StopReason::MaxTokens {
                        stop = StopReason::ContextEnd;
                    }
                }
            }
            return Ok(Generation {
                prompt_ids: prompt.to_vec(),
                steps,
                stop,
            });
        }
        let mut logits = logits;
        let stop = loop {
            let step = TokenStep {
                id: sampler.sample(&logits, &history),
                top: top_logprobs(&logits, opts.top_logprobs),
            };
            let id = step.id;
            history.push(id);
            let go_on = on_token(&step);
            steps.push(step);
            if opts.stop_ids.contains(&id) {
                break StopReason::Eos;
            }
            if steps.len() >= opts.max_new_tokens {
                break StopReason::MaxTokens;
            }
            if !go_on {
                break StopReason::Stopped;
            }
            if self.position() >= self.max_positions() {
                break StopReason::ContextEnd;
            }
            logits = self.decode(id)?;
        };
        Ok(Generation {
            prompt_ids: prompt.to_vec(),
            steps,
            stop,
        })
    }
}
