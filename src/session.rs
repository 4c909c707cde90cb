//! Layer 5, generation state: a [`Model`] owns the uploaded weights; a [`Session`] owns a KV cache, a position
//! and the two prebuilt step plans, and runs prefill (in chunks) and decode steps.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::gpu::ops;
use crate::gpu::plan::{GpuWeights, Plan, PlanShape};
use crate::gpu::replay::{Replay, ReplayIo};
use crate::gpu::{DeviceOptions, Gpu, Pipelines, StepParams};
use crate::model::{ModelConfig, ModelFiles};
use crate::tokenizer::Tokenizer;

/// Options for [`Model::load`].
#[derive(Debug, Clone)]
pub struct LoadOptions {
    pub device: DeviceOptions,
    /// Longest context (prompt + generated) a session supports; `None` = the model's max_position_embeddings
    /// capped at 8192.
    pub max_context: Option<usize>,
    /// Tokens per prefill step.
    pub prefill_chunk: usize,
}

/// Tokens per prefill step unless asked otherwise. 512 gives the prefill GEMMs enough workgroups to fill an
/// H100 (at 128, o_proj and down ran 64 workgroups on 132 SMs): 4,448 against 3,120 tok/s for a 512-token
/// prompt (docs/PERF.md, run 44). The activations of one chunk take about 130 MB for OpenChat-3.5.
pub const DEFAULT_PREFILL_CHUNK: usize = 512;

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            device: DeviceOptions::default(),
            max_context: None,
            prefill_chunk: DEFAULT_PREFILL_CHUNK,
        }
    }
}

/// A loaded model: validated files, weights on the GPU, compiled kernels.
pub struct Model {
    pub gpu: Arc<Gpu>,
    pub pipes: Arc<Pipelines>,
    pub files: ModelFiles,
    pub weights: Arc<GpuWeights>,
    pub tokenizer: Option<Tokenizer>,
    pub options: LoadOptions,
    max_context: usize,
}

fn check_options(options: &LoadOptions) -> Result<()> {
    if options.prefill_chunk == 0 {
        return Err(Error::InvalidArgument {
            name: "prefill_chunk".into(),
            value: "0".into(),
            reason: "must be at least 1".into(),
        });
    }
    Ok(())
}

impl Model {
    /// Loads a model directory laid out as a Hugging Face GPTQ repository. Every check on the files happens before
    /// any GPU work.
    pub fn load(path: impl AsRef<Path>, options: &LoadOptions) -> Result<Model> {
        let path = path.as_ref();
        let files = ModelFiles::open(path)?;
        let tokenizer = if path.join("tokenizer.json").exists() {
            Some(Tokenizer::from_dir(path)?)
        } else {
            None
        };
        check_options(options)?;
        let gpu = Gpu::new(&options.device)?;
        Self::from_parts(gpu, files, tokenizer, options)
    }

    /// Builds a model from already-opened files on an already-created device: the weight preparation and upload
    /// half of [`Model::load`], separate so callers (the benchmark) can time the phases apart.
    pub fn from_parts(
        gpu: Arc<Gpu>,
        files: ModelFiles,
        tokenizer: Option<Tokenizer>,
        options: &LoadOptions,
    ) -> Result<Model> {
        check_options(options)?;
        let max_context = options
            .max_context
            .unwrap_or(files.config.max_position_embeddings.min(8192))
            .min(files.config.max_position_embeddings);
        let pipes = Arc::new(Pipelines::new(gpu.clone()));
        let weights = Arc::new(GpuWeights::upload(&gpu, &files, max_context)?);
        Ok(Model {
            gpu,
            pipes,
            files,
            weights,
            tokenizer,
            options: options.clone(),
            max_context,
        })
    }

    pub fn config(&self) -> &ModelConfig {
        &self.files.config
    }

    /// Ids that end an answer: config.json's (and generation_config.json's) eos ids and the tokenizer's eos.
    pub fn stop_ids(&self) -> Vec<u32> {
        let mut ids = self.files.config.eos_token_ids.clone();
        if let Some(id) = self.tokenizer.as_ref().and_then(|t| t.eos_token_id()) {
            if !ids.contains(&id) {
                ids.push(id);
            }
        }
        ids
    }

    /// Longest context a session of this model supports.
    pub fn max_context(&self) -> usize {
        self.max_context
    }

    /// A new session with its own KV cache. `all_logits` makes prefill return logits for every prompt token.
    pub fn session(&self, all_logits: bool) -> Result<Session> {
        let c = &self.files.config;
        let chunk = self.options.prefill_chunk.min(self.max_context);
        // A sliding-window cache needs the window plus one chunk: a chunk's keys must not overwrite keys its own
        // earlier queries still see.
        let slots = match c.sliding_window {
            Some(w) if w + chunk < self.max_context => w + chunk,
            _ => self.max_context,
        };
        let shape = PlanShape {
            chunk,
            slots,
            max_positions: self.max_context,
            all_logits,
        };
        let plan = Plan::new(&self.gpu, &self.pipes, &self.weights, shape)?;
        let vocab = c.vocab_size;
        let rows = if all_logits { chunk } else { 1 };
        let staging = self.gpu.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("logits readback"),
            size: (rows * vocab * 4) as u64,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        // One readback buffer per decode step in flight (see `decode_greedy_stream`).
        let id_staging = (0..DECODE_DEPTH)
            .map(|_| {
                // Mapped at creation (and so initialised, as far as wgpu knows): wgpu zero-fills a buffer's
                // uninitialised bytes when it maps them, which would wipe an id the Vulkan replay copied there.
                let b = self.gpu.device.create_buffer(&wgpu::BufferDescriptor {
                    label: Some("token readback"),
                    size: 16,
                    usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                    mapped_at_creation: true,
                });
                b.unmap();
                b
            })
            .collect::<Vec<_>>();
        let replay = if self.gpu.caps.replay {
            // WGPTQ_REPLAY_PREFILL=0 records prefill chunks through wgpu, WGPTQ_REPLAY_FED=0 host-fed decode
            // steps (measurements).
            let prefill = std::env::var("WGPTQ_REPLAY_PREFILL").map_or(true, |v| v != "0");
            let fed = std::env::var("WGPTQ_REPLAY_FED").map_or(true, |v| v != "0");
            let io = ReplayIo {
                fed,
                step: &plan.bufs.step,
                out_ids: &plan.bufs.out_ids,
                readback: &id_staging,
                prefill: prefill.then_some(&plan.prefill[..]),
            };
            // wgpu zero-fills a buffer lazily, before the first of its own submissions that uses it: it would
            // not for the replay's (counters left as found), and would later wipe what the replay wrote (a
            // prefilled KV cache). Cleared through wgpu now, every session buffer counts as initialised.
            let mut enc = self.gpu.device.create_command_encoder(&Default::default());
            let kv = plan.bufs.kv.iter().flat_map(|(k, v)| [k, v]);
            for b in plan.bufs.buffers().into_iter().chain(kv) {
                enc.clear_buffer(b, 0, None);
            }
            self.gpu.submit([enc.finish()]);
            let kernels = self.pipes.replay_kernels()?;
            let replay = Replay::new(kernels, &plan.decode_lists(), &io).map_err(|e| match e {
                Error::Gpu { op, reason } => Error::Gpu {
                    op,
                    reason: format!(
                        "{reason}; --no-replay (WGPTQ_REPLAY=0) records every step through wgpu instead"
                    ),
                },
                other => other,
            })?;
            Some(replay)
        } else {
            None
        };
        Ok(Session {
            gpu: self.gpu.clone(),
            replay,
            plan,
            vocab,
            pos: 0,
            staging,
            id_staging,
            last_encode: Duration::ZERO,
            encode_total: Duration::ZERO,
        })
    }
}

/// Greedy decode steps kept in flight: the host records step n + 1 while the GPU runs step n.
const DECODE_DEPTH: usize = 2;

/// A greedy step in flight: submitted through wgpu, or a replayed recording of decode list `.0`.
enum Pending {
    Wgpu(wgpu::SubmissionIndex),
    Replayed(usize),
}

/// What a step reads back.
enum Readback {
    /// Logits of `rows` rows.
    Logits(usize),
    /// The GPU argmax token.
    Token,
}

/// One conversation's state on the GPU.
pub struct Session {
    gpu: Arc<Gpu>,
    /// The greedy decode steps recorded once as Vulkan command buffers (where [`crate::gpu::Caps::replay`]);
    /// declared before `plan`, so it is dropped (waiting for its submissions) before the buffers go.
    replay: Option<Replay>,
    plan: Plan,
    vocab: usize,
    pos: usize,
    staging: wgpu::Buffer,
    id_staging: Vec<wgpu::Buffer>,
    /// Host time of the last step spent writing its inputs, recording and submitting (not waiting).
    last_encode: Duration,
    /// Sum of `last_encode` over the session's life.
    encode_total: Duration,
}

impl Session {
    /// Tokens processed so far (the next token's position).
    pub fn position(&self) -> usize {
        self.pos
    }

    /// Forgets the conversation (the cache is overwritten as positions restart at 0).
    pub fn reset(&mut self) {
        self.pos = 0;
    }

    /// Keeps the first `pos` positions of the cache, so that a prompt sharing those tokens is prefilled only from
    /// there (the next chat turn). Returns `false` and keeps nothing (position 0) when a rolling sliding-window
    /// cache has already overwritten keys that position `pos` still attends to.
    pub fn truncate(&mut self, pos: usize) -> bool {
        let pos = pos.min(self.pos);
        let slots = self.plan.shape.slots;
        let window = self.plan.window();
        // Keys j in (pos - W, pos) survive unless a position written since (up to self.pos - 1) took their slot.
        let intact = slots >= self.plan.shape.max_positions
            || (window > 0 && self.pos - pos <= slots.saturating_sub(window));
        self.pos = if intact { pos } else { 0 };
        intact
    }

    pub fn max_positions(&self) -> usize {
        self.plan.shape.max_positions
    }

    /// The session's prebuilt plan (buffers and dispatch lists), for profilers and debugging.
    pub fn plan(&self) -> &Plan {
        &self.plan
    }

    /// The device the session runs on.
    pub fn gpu(&self) -> &Arc<Gpu> {
        &self.gpu
    }

    /// Host time the last step spent writing its inputs, recording its dispatches and submitting them,
    /// excluding the wait for the GPU and the readback.
    pub fn last_encode_time(&self) -> Duration {
        self.last_encode
    }

    /// Host time spent writing inputs, recording and submitting, summed over all steps so far.
    pub fn total_encode_time(&self) -> Duration {
        self.encode_total
    }

    /// Moves the position back to `pos` (≤ the current one) without touching the cache, so the benchmark can
    /// replay decode steps at one context length. Cache slots written after `pos` hold stale keys; with a
    /// rolling window some of those may alias slots still inside the window, which changes values, not timing.
    pub(crate) fn rewind(&mut self, pos: usize) {
        self.pos = pos.min(self.pos);
    }

    fn check_tokens(&self, tokens: &[u32]) -> Result<()> {
        if let Some(&bad) = tokens.iter().find(|&&t| t as usize >= self.vocab) {
            return Err(Error::InvalidArgument {
                name: "token id".into(),
                value: bad.to_string(),
                reason: format!("vocabulary has {} tokens", self.vocab),
            });
        }
        if self.pos + tokens.len() > self.plan.shape.max_positions {
            return Err(Error::ContextOverflow {
                tokens: self.pos + tokens.len(),
                limit: self.plan.shape.max_positions,
            });
        }
        Ok(())
    }

    /// Writes the step's inputs, records its dispatch list (plus an optional copy for readback) in one compute
    /// pass and submits it; advances the position. Does not wait.
    fn submit_step(
        &mut self,
        prefill: bool,
        tokens: Option<&[u32]>,
        n: usize,
        copy: Option<(&wgpu::Buffer, &wgpu::Buffer, u64)>,
    ) -> Result<wgpu::SubmissionIndex> {
        let step = StepParams {
            n_tokens: n as u32,
            pos0: self.pos as u32,
            logits_row: if prefill && !self.plan.shape.all_logits {
                n as u32 - 1
            } else {
                0
            },
            _pad: 0,
        };
        let t0 = Instant::now();
        let q = &self.gpu.queue;
        q.write_buffer(&self.plan.bufs.step, 0, bytemuck::bytes_of(&step));
        if let Some(t) = tokens {
            q.write_buffer(&self.plan.bufs.tokens, 0, bytemuck::cast_slice(t));
        }
        let gpu = &self.gpu;
        let list = if prefill {
            &self.plan.prefill[..]
        } else {
            self.plan.decode_list(self.pos)
        };
        let replay = self.replay.as_ref().filter(|r| {
            if prefill {
                r.has_prefill()
            } else {
                r.has_fed()
            }
        });
        let index = if let Some(replay) = replay {
            // The recorded chunk or step: its inputs reach the queue first (an empty submit flushes wgpu's
            // writes), then the recording, then the readback copy in a wgpu submission of its own, which the
            // recording's closing barrier orders after it.
            // Without a readback nothing waits for this chunk by its index (the next step is ordered after it).
            let flushed = gpu.submit([]);
            if prefill {
                replay.submit_prefill()?;
            } else {
                replay.submit_fed(self.plan.decode_list_index(self.pos))?;
            }
            match copy {
                Some(_) => gpu.submit([ops::encode(gpu, "readback", [], copy)?]),
                None => flushed,
            }
        } else {
            let label = if prefill { "prefill" } else { "decode" };
            let cb = ops::encode(gpu, label, list, copy)?;
            gpu.scoped("step", || gpu.submit([cb]))?
        };
        self.last_encode = t0.elapsed();
        self.encode_total += self.last_encode;
        self.pos += n;
        Ok(index)
    }

    fn run_step(
        &mut self,
        prefill: bool,
        tokens: Option<&[u32]>,
        n: usize,
        readback: Readback,
    ) -> Result<Vec<u8>> {
        let (src, dst, size) = match readback {
            Readback::Logits(rows) => (
                self.plan.bufs.logits.clone(),
                self.staging.clone(),
                (rows * self.vocab * 4) as u64,
            ),
            Readback::Token => (
                self.plan.bufs.out_ids.clone(),
                self.id_staging[0].clone(),
                4,
            ),
        };
        self.submit_step(prefill, tokens, n, Some((&src, &dst, size)))?;
        self.gpu.map_and_read(&dst, size)
    }

    /// Greedy decoding on the GPU, pipelined: each step reads its input token from the previous step's GPU argmax,
    /// so step n + 1 is recorded and submitted while step n runs, and the ids come back asynchronously. On Vulkan
    /// every step after the first is a recorded one, submitted as it is (`crate::gpu::replay`).
    /// `first` is the input of the first step; `on_id` sees each generated id and returns `false` to stop.
    /// Returns the number of ids produced. Steps submitted ahead of a stop are discarded (the position is moved
    /// back; the cache slots they wrote lie beyond it and are overwritten later).
    pub fn decode_greedy_stream(
        &mut self,
        first: u32,
        max_steps: usize,
        mut on_id: impl FnMut(u32) -> Result<bool>,
    ) -> Result<usize> {
        self.check_tokens(&[first])?;
        let depth = self.id_staging.len();
        let mut inflight: std::collections::VecDeque<(usize, Pending)> =
            std::collections::VecDeque::new();
        let (mut submitted, mut produced) = (0usize, 0usize);
        let src = self.plan.bufs.out_ids.clone();
        loop {
            while inflight.len() < depth
                && submitted < max_steps
                && self.pos < self.plan.shape.max_positions
            {
                let slot = submitted % depth;
                let pending = match &self.replay {
                    // After the first step (which writes the input id and the position through wgpu), the
                    // recorded steps: each moves the position on by one on the GPU.
                    Some(replay) if submitted > 0 => {
                        let t0 = Instant::now();
                        let list = self.plan.decode_list_index(self.pos);
                        replay.submit(list, slot)?;
                        self.last_encode = t0.elapsed();
                        self.encode_total += self.last_encode;
                        self.pos += 1;
                        Pending::Replayed(list)
                    }
                    _ => {
                        let dst = self.id_staging[slot].clone();
                        let tokens = [first];
                        let input = (submitted == 0).then_some(&tokens[..]);
                        Pending::Wgpu(self.submit_step(false, input, 1, Some((&src, &dst, 4)))?)
                    }
                };
                inflight.push_back((slot, pending));
                submitted += 1;
            }
            let Some((slot, pending)) = inflight.pop_front() else {
                break;
            };
            // Only this step's submission: the next one keeps the GPU busy while the host reads and records.
            let after = match pending {
                Pending::Wgpu(index) => Some(index),
                Pending::Replayed(list) => {
                    if let Some(replay) = &self.replay {
                        replay.wait(list, slot)?;
                    }
                    // wgpu did not make the copy: with its fence waited for, map once wgpu's own work is done.
                    None
                }
            };
            let bytes = self
                .gpu
                .map_and_read_after(&self.id_staging[slot], 4, after)?;
            let id = u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
            if id as usize >= self.vocab {
                return Err(Error::Gpu {
                    op: "argmax".into(),
                    reason: "no finite logit (NaN or -inf everywhere)".into(),
                });
            }
            produced += 1;
            match on_id(id) {
                Ok(true) => {}
                Ok(false) => break,
                Err(e) => {
                    // The steps submitted ahead are discarded as on a stop.
                    self.pos -= inflight.len();
                    return Err(e);
                }
            }
        }
        self.pos -= inflight.len();
        Ok(produced)
    }

    /// Runs the prompt through the model in chunks and returns the logits of its last token.
    pub fn prefill(&mut self, tokens: &[u32]) -> Result<Vec<f32>> {
        let rows = self.prefill_rows(tokens, false)?;
        rows.into_iter()
            .last()
            .ok_or_else(|| Error::InvalidArgument {
                name: "prompt".into(),
                value: "[]".into(),
                reason: "the prompt is empty".into(),
            })
    }

    /// Prefill returning the logits of every token (the session must be made with `all_logits`).
    pub fn prefill_all(&mut self, tokens: &[u32]) -> Result<Vec<Vec<f32>>> {
        self.prefill_rows(tokens, true)
    }

    fn prefill_rows(&mut self, tokens: &[u32], all: bool) -> Result<Vec<Vec<f32>>> {
        self.check_tokens(tokens)?;
        if all && !self.plan.shape.all_logits {
            return Err(Error::InvalidArgument {
                name: "all_logits".into(),
                value: "false".into(),
                reason: "prefill_all needs a session made with all_logits = true".into(),
            });
        }
        let chunk = self.plan.shape.chunk;
        let mut out = Vec::new();
        for (i, part) in tokens.chunks(chunk).enumerate() {
            let last = (i + 1) * chunk >= tokens.len();
            let rows = if self.plan.shape.all_logits {
                part.len()
            } else {
                1
            };
            if !all && !last {
                // Intermediate chunks only fill the cache: submit without waiting.
                self.submit_step(true, Some(part), part.len(), None)?;
                continue;
            }
            let bytes = self.run_step(true, Some(part), part.len(), Readback::Logits(rows))?;
            let f: Vec<f32> = bytemuck::pod_collect_to_vec(&bytes);
            let keep: Vec<Vec<f32>> = f.chunks(self.vocab).map(|r| r.to_vec()).collect();
            if all {
                out.extend(keep);
            } else {
                out.extend(keep.into_iter().last());
            }
        }
        Ok(out)
    }

    /// One decode step for `token`, returning the logits of the next position.
    pub fn decode(&mut self, token: u32) -> Result<Vec<f32>> {
        self.check_tokens(&[token])?;
        let bytes = self.run_step(false, Some(&[token]), 1, Readback::Logits(1))?;
        Ok(bytemuck::pod_collect_to_vec(&bytes))
    }

    /// One greedy decode step for `token`, sampled on the GPU; only the chosen id comes back.
    pub fn decode_greedy(&mut self, token: u32) -> Result<u32> {
        self.check_tokens(&[token])?;
        let bytes = self.run_step(false, Some(&[token]), 1, Readback::Token)?;
        let id = u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
        if id as usize >= self.vocab {
            return Err(Error::Gpu {
                op: "argmax".into(),
                reason: "no finite logit (NaN or -inf everywhere)".into(),
            });
        }
        Ok(id)
    }
}
