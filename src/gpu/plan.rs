//! Layer 3, the planner: uploads the weights once and fixes, per step shape (decode = 1 token, prefill = a chunk
//! of tokens), every buffer, bind group, pipeline and workgroup count. A step then only writes the 16-byte
//! [`StepParams`] block (and token ids) and replays its dispatch list in one compute pass and one submit.

use std::sync::Arc;

use half::f16;
use wgpu::util::DeviceExt;

use super::context::Gpu;
use super::kernels;
use super::linear::{self, GpuF16, GpuLinear};
use super::ops::{Dispatch, Pipelines};
use super::steps;
use crate::error::{Error, Result};
use crate::model::{Linear, ModelConfig, ModelFiles};
use crate::prep::{self, GptqTensors, PreparedGptq};

/// One decoder layer on the GPU.
pub struct GpuLayer {
    /// [hidden] f32
    pub input_norm: wgpu::Buffer,
    /// [hidden] f32
    pub post_norm: wgpu::Buffer,
    /// q|k|v, fused into one matrix where their layouts agree; (linear, first output column)
    pub qkv: Vec<(GpuLinear, u32)>,
    pub o: GpuLinear,
    /// gate|up, fused where possible
    pub gate_up: Vec<(GpuLinear, u32)>,
    pub down: GpuLinear,
}

/// All weights on the GPU, shared by every session of a model.
pub struct GpuWeights {
    pub config: ModelConfig,
    /// Embedding rows [vocab, hidden] f16 in chunks (buffer, first row, rows).
    pub embed: Vec<(wgpu::Buffer, usize, usize)>,
    pub layers: Vec<GpuLayer>,
    /// [hidden] f32
    pub final_norm: wgpu::Buffer,
    pub lm_head: GpuLinear,
    /// [max_positions, head_dim / 2] (cos, sin) f32
    pub rope: wgpu::Buffer,
    pub max_positions: usize,
    /// Bytes of weights a decode step reads (for the roofline).
    pub decode_bytes: u64,
}

fn prepared(files: &ModelFiles, lin: &Linear) -> Result<Option<PreparedGptq>> {
    let Linear::Gptq {
        qweight,
        qzeros,
        scales,
        g_idx,
        k,
        n,
        quant,
        ..
    } = lin
    else {
        return Ok(None);
    };
    let ck = &files.checkpoint;
    let qw = ck.words(qweight);
    let qz = ck.words(qzeros);
    let sc = ck.halfs(scales);
    let gi: Option<Vec<i32>> = g_idx.as_ref().map(|g| bytemuck::cast_vec(ck.words(g)));
    Ok(Some(prep::prepare_gptq(
        &GptqTensors {
            qweight: &qw,
            qzeros: &qz,
            scales: &sc,
            g_idx: gi.as_deref(),
            k: *k,
            n: *n,
        },
        quant,
    )))
}

fn upload_linear(gpu: &Gpu, files: &ModelFiles, label: &str, lin: &Linear) -> Result<GpuLinear> {
    match lin {
        Linear::F16 { weight, k, n } => Ok(GpuLinear::F16(linear::upload_f16(
            gpu,
            label,
            files.checkpoint.bytes(weight),
            *n,
            *k,
        )?)),
        Linear::Gptq { .. } => {
            let p = prepared(files, lin)?.ok_or_else(|| Error::Gpu {
                op: label.into(),
                reason: "GPTQ linear without tensors".into(),
            })?;
            Ok(GpuLinear::Gptq(linear::upload_gptq(gpu, label, &p)?))
        }
    }
}

/// Uploads projections that read the same input, fused along N when their layouts allow.
/// `col_order`: the output columns' order (column c = the checkpoint's column col_order[c]) where the consumer
/// reads them in that order (down's act-order, [`prep::input_order`]); the projections are then GPTQ.
fn upload_fused(
    gpu: &Gpu,
    files: &ModelFiles,
    label: &str,
    parts: &[(&str, &Linear)],
    col_order: Option<&[u32]>,
) -> Result<Vec<(GpuLinear, u32)>> {
    let all_gptq = parts.iter().all(|(_, l)| matches!(l, Linear::Gptq { .. }));
    if all_gptq {
        let preps = parts
            .iter()
            .map(|(_, l)| prepared(files, l).map(|p| p.into_iter().next()))
            .collect::<Result<Option<Vec<_>>>>()?;
        if let Some(mut preps) = preps {
            if let Some(order) = col_order {
                for p in &mut preps {
                    if !prep::permute_columns(p, order) {
                        return Err(Error::Gpu {
                            op: label.into(),
                            reason: format!(
                                "{} columns cannot take an order of {} (planner bug)",
                                p.n,
                                order.len()
                            ),
                        });
                    }
                }
            }
            let refs: Vec<&PreparedGptq> = preps.iter().collect();
            if let Some(cat) = prep::concat_n(&refs) {
                return Ok(vec![(
                    GpuLinear::Gptq(linear::upload_gptq(gpu, label, &cat)?),
                    0,
                )]);
            }
            let mut out = Vec::new();
            let mut col = 0u32;
            for ((name, _), p) in parts.iter().zip(&preps) {
                out.push((
                    GpuLinear::Gptq(linear::upload_gptq(gpu, &format!("{label}.{name}"), p)?),
                    col,
                ));
                col += p.n as u32;
            }
            return Ok(out);
        }
    }
    let mut out = Vec::new();
    let mut col = 0u32;
    for (name, l) in parts {
        out.push((
            upload_linear(gpu, files, &format!("{label}.{name}"), l)?,
            col,
        ));
        col += l.n() as u32;
    }
    Ok(out)
}

/// RoPE table as HF computes it: inv_freq in f32, freqs = pos * inv_freq in f32, cos/sin of that.
pub fn rope_table(head_dim: usize, theta: f32, positions: usize) -> Vec<[f32; 2]> {
    let half = head_dim / 2;
    let inv: Vec<f32> = (0..half)
        .map(|i| 1.0 / theta.powf((2 * i) as f32 / head_dim as f32))
        .collect();
    let mut t = Vec::with_capacity(positions * half);
    for pos in 0..positions {
        for f in &inv {
            let a = pos as f32 * f;
            t.push([a.cos(), a.sin()]);
        }
    }
    t
}

/// An f16 norm weight of the checkpoint, uploaded as f32.
fn upload_norm(
    gpu: &Gpu,
    files: &ModelFiles,
    label: &str,
    t: &crate::model::TensorRef,
) -> Result<wgpu::Buffer> {
    let v: Vec<f16> = files.checkpoint.halfs(t);
    linear::upload_f16_as_f32(gpu, label, &v)
}

/// Layer `i` of `files`, prepared and uploaded, and the bytes its matrices read per decoded token.
fn upload_layer(gpu: &Gpu, files: &ModelFiles, i: usize) -> Result<(GpuLayer, u64)> {
    let l = &files.weights.layers[i];
    let norm = |label: &str, t| upload_norm(gpu, files, label, t);
    let p = format!("layers.{i}");
    // down's act-order moves into gate|up's column order where it is a plain permutation and both
    // gate and up are GPTQ (prep::input_order).
    let down_prep = if l.gate_up_gptq() {
        prepared(files, &l.down)?
    } else {
        None
    };
    let down_order_vec = down_prep
        .as_ref()
        .and_then(prep::input_order)
        .map(<[u32]>::to_vec);
    let down_order = down_order_vec.as_deref();
    let layer = GpuLayer {
        input_norm: norm(&format!("{p}.input_norm"), &l.input_norm)?,
        post_norm: norm(&format!("{p}.post_norm"), &l.post_norm)?,
        qkv: upload_fused(
            gpu,
            files,
            &format!("{p}.qkv"),
            &[("q", &l.q), ("k", &l.k), ("v", &l.v)],
            None,
        )?,
        o: upload_linear(gpu, files, &format!("{p}.o"), &l.o)?,
        gate_up: upload_fused(
            gpu,
            files,
            &format!("{p}.gate_up"),
            &[("gate", &l.gate), ("up", &l.up)],
            down_order,
        )?,
        down: match down_prep {
            Some(mut d) => {
                if down_order.is_some() {
                    // gate|up's columns carry down's act-order: down reads its input as it comes.
                    d.perm = None;
                }
                GpuLinear::Gptq(linear::upload_gptq(gpu, &format!("{p}.down"), &d)?)
            }
            None => upload_linear(gpu, files, &format!("{p}.down"), &l.down)?,
        },
    };
    let bytes = layer.qkv.iter().map(|(l, _)| l.weight_bytes()).sum::<u64>()
        + layer.o.weight_bytes()
        + layer
            .gate_up
            .iter()
            .map(|(l, _)| l.weight_bytes())
            .sum::<u64>()
        + layer.down.weight_bytes();
    Ok((layer, bytes))
}

impl GpuWeights {
    pub fn upload(gpu: &Gpu, files: &ModelFiles, max_positions: usize) -> Result<GpuWeights> {
        let cfg = files.config.clone();
        let w = &files.weights;
        let ck = &files.checkpoint;
        let embed = linear::upload_f16(
            gpu,
            "embed",
            ck.bytes(&w.embed),
            cfg.vocab_size,
            cfg.hidden_size,
        )?
        .chunks;
        // Layers are read, repacked and uploaded a few at a time: one after another they took 7.3 s of the
        // H100 host's load of OpenChat-3.5 (docs/PERF.md), each mostly on one thread. Each in flight holds its
        // host copies (a few hundred MB for a 7B layer): two at once, up to four with 16 cores or more.
        let ids: Vec<usize> = (0..w.layers.len()).collect();
        let threads = (crate::parallel::cores() / 4).clamp(2, 4);
        let built = crate::parallel::map(&ids, threads, |&i| upload_layer(gpu, files, i))?;
        let mut decode_bytes = 0u64;
        let mut layers = Vec::with_capacity(built.len());
        for (layer, bytes) in built {
            decode_bytes += bytes;
            layers.push(layer);
        }
        // Tied embeddings: the lm_head reads the embedding buffers, no second copy.
        let lm_head = match (&w.lm_head, cfg.tie_word_embeddings) {
            (Linear::F16 { weight, .. }, true) if *weight == w.embed => GpuLinear::F16(GpuF16 {
                k: cfg.hidden_size,
                n: cfg.vocab_size,
                chunks: embed.clone(),
            }),
            (l, _) => upload_linear(gpu, files, "lm_head", l)?,
        };
        decode_bytes += lm_head.weight_bytes();
        let rope = rope_table(cfg.head_dim, cfg.rope_theta, max_positions);
        let rope = gpu.storage_init("rope", bytemuck::cast_slice(&rope))?;
        Ok(GpuWeights {
            final_norm: upload_norm(gpu, files, "final_norm", &w.final_norm)?,
            config: cfg,
            embed,
            layers,
            lm_head,
            rope,
            max_positions,
            decode_bytes,
        })
    }
}

/// Buffers a session owns.
pub struct Activations {
    pub step: wgpu::Buffer,
    /// [capacity] u32
    pub tokens: wgpu::Buffer,
    /// [capacity, hidden] f32 residual stream
    pub x: wgpu::Buffer,
    /// [capacity, hidden] f32 normed
    pub xn: wgpu::Buffer,
    /// [capacity, (H + 2 KV) d] f32
    pub qkv: wgpu::Buffer,
    /// [capacity, H d] f32
    pub q: wgpu::Buffer,
    /// [capacity, H d] f32
    pub attn: wgpu::Buffer,
    /// [1, H, splits, d + 2] f32 decode attention partials (flash-decoding)
    pub attn_part: wgpu::Buffer,
    /// Decode split-K partial slabs: [S_qkv, 1, (H + 2 KV) d], [S_gu, 1, 2 I], [max(S_o, S_down), 1, hidden] f32
    pub qkv_part: wgpu::Buffer,
    pub gu_part: wgpu::Buffer,
    pub res_part: wgpu::Buffer,
    /// [capacity, ss_blocks(hidden)] f32: block sums of x^2 (the fused RMSNorm prologue's input)
    pub ss: wgpu::Buffer,
    /// [hidden / 4] u32: split-K arrival counters of the decode residual epilogue (zero between dispatches)
    pub counters: wgpu::Buffer,
    /// [capacity, 2 I] f32
    pub gate_up: wgpu::Buffer,
    /// [capacity, I] f32
    pub act: wgpu::Buffer,
    /// [logit_rows, vocab] f32
    pub logits: wgpu::Buffer,
    /// [1] u32 greedy token of the step
    pub out_ids: wgpu::Buffer,
    /// Per layer (k, v): [slots, KV, d / 2] u32 (f16 pairs)
    pub kv: Vec<(wgpu::Buffer, wgpu::Buffer)>,
    /// Bound where a kernel variant reads nothing.
    pub dummy: wgpu::Buffer,
}

impl Activations {
    /// Every buffer of the session except the KV cache (for memory accounting).
    pub fn buffers(&self) -> [&wgpu::Buffer; 18] {
        [
            &self.step,
            &self.tokens,
            &self.x,
            &self.xn,
            &self.qkv,
            &self.q,
            &self.attn,
            &self.attn_part,
            &self.qkv_part,
            &self.gu_part,
            &self.res_part,
            &self.ss,
            &self.counters,
            &self.gate_up,
            &self.act,
            &self.logits,
            &self.out_ids,
            &self.dummy,
        ]
    }

    /// Bytes of those buffers.
    pub fn activation_bytes(&self) -> u64 {
        self.buffers().iter().map(|b| b.size()).sum()
    }

    /// Bytes of the KV cache.
    pub fn kv_bytes(&self) -> u64 {
        self.kv.iter().map(|(k, v)| k.size() + v.size()).sum()
    }
}

/// Sizes fixed at plan time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlanShape {
    /// Prefill chunk capacity (tokens per prefill step).
    pub chunk: usize,
    /// KV cache slots per layer.
    pub slots: usize,
    /// Highest position + 1 the session can reach.
    pub max_positions: usize,
    /// Prefill computes logits for every token (tests, scoring) instead of the last one.
    pub all_logits: bool,
}

/// The dispatch lists of one session.
pub struct Plan {
    pub shape: PlanShape,
    pub bufs: Activations,
    /// Decode step: ends with the lm_head (logits row 0) and the GPU argmax.
    pub decode: Vec<Dispatch>,
    /// The decode step for positions whose keys fit one attention split: attention writes its output directly,
    /// without the split partials and the combine op (32 fewer dispatches for OpenChat). `None` when the cache
    /// has only one split anyway.
    pub decode_short: Option<Vec<Dispatch>>,
    /// Sliding window of the attention (0 = none).
    window: usize,
    /// Prefill chunk: ends with the lm_head (and argmax of the last row unless all_logits).
    pub prefill: Vec<Dispatch>,
}

impl Plan {
    pub fn new(
        gpu: &Arc<Gpu>,
        pipes: &Pipelines,
        w: &GpuWeights,
        shape: PlanShape,
    ) -> Result<Plan> {
        let c = &w.config;
        let cap = shape.chunk.max(1);
        let (h, hd) = (c.hidden_size, c.head_dim);
        let qkv_n = (c.num_heads + 2 * c.num_kv_heads) * hd;
        let f32s = |n: usize| (n * 4) as u64;
        let logit_rows = if shape.all_logits { cap } else { 1 };
        let mut kv = Vec::with_capacity(w.layers.len());
        let kv_bytes = (shape.slots * c.num_kv_heads * hd * 2) as u64;
        for i in 0..w.layers.len() {
            kv.push((
                gpu.storage(&format!("layers.{i}.k_cache"), kv_bytes)?,
                gpu.storage(&format!("layers.{i}.v_cache"), kv_bytes)?,
            ));
        }
        let splits = steps::DecodeSplits::choose(&gpu.caps, w)?;
        let bufs = Activations {
            // Storage too: the Vulkan replay advances the position on the GPU (src/gpu/replay/).
            step: gpu
                .device
                .create_buffer_init(&wgpu::util::BufferInitDescriptor {
                    label: Some("step"),
                    contents: &[0u8; 16],
                    usage: wgpu::BufferUsages::UNIFORM
                        | wgpu::BufferUsages::STORAGE
                        | wgpu::BufferUsages::COPY_DST,
                }),
            tokens: gpu.storage("tokens", (cap * 4) as u64)?,
            x: gpu.storage("x", f32s(cap * h))?,
            xn: gpu.storage("xn", f32s(cap * h))?,
            qkv: gpu.storage("qkv", f32s(cap * qkv_n))?,
            q: gpu.storage("q", f32s(cap * c.num_heads * hd))?,
            attn: gpu.storage("attn", f32s(cap * c.num_heads * hd))?,
            attn_part: gpu.storage(
                "attn_part",
                f32s(
                    c.num_heads * kernels::attention_splits(shape.slots as u32) as usize * (hd + 2),
                ),
            )?,
            qkv_part: gpu.storage("qkv_part", f32s(splits.qkv as usize * qkv_n))?,
            gu_part: gpu.storage(
                "gu_part",
                f32s(splits.gate_up as usize * 2 * c.intermediate_size),
            )?,
            res_part: gpu.storage("res_part", f32s(splits.o.max(splits.down) as usize * h))?,
            ss: gpu.storage("ss", f32s(cap * kernels::ss_blocks(h as u32) as usize))?,
            counters: gpu.storage("counters", f32s(h / 4))?,
            gate_up: gpu.storage("gate_up", f32s(cap * 2 * c.intermediate_size))?,
            act: gpu.storage("act", f32s(cap * c.intermediate_size))?,
            logits: gpu.storage("logits", f32s(logit_rows * c.vocab_size))?,
            out_ids: gpu.storage("out_ids", 16)?,
            kv,
            dummy: gpu.storage("dummy", 16)?,
        };
        let attn_splits = kernels::attention_splits(shape.slots as u32);
        // WGPTQ_SHORT_DECODE=0 keeps the split list at every position (benchmarking the difference).
        let short = std::env::var("WGPTQ_SHORT_DECODE").map_or(true, |v| v != "0");
        // The lists first, then their kernels compiled together on every core.
        let (decode, decode_short, prefill) = pipes.deferred(|| {
            let decode = steps::decode(pipes, w, &bufs, shape, &splits, attn_splits)?;
            let decode_short = if attn_splits > 1 && short {
                Some(steps::decode(pipes, w, &bufs, shape, &splits, 1)?)
            } else {
                None
            };
            Ok((
                decode,
                decode_short,
                steps::prefill(pipes, w, &bufs, shape)?,
            ))
        })?;
        // WGPTQ_ABLATE=op[+op...] leaves those ops out of the decode and prefill lists: a measurement tool (what
        // an op costs in place, docs/PERF.md); the tokens it produces are meaningless.
        let (decode, decode_short, prefill) = match std::env::var("WGPTQ_ABLATE") {
            Ok(ops) => {
                let keep = |list: Vec<Dispatch>| -> Vec<Dispatch> {
                    list.into_iter()
                        .filter(|d| !ops.split([',', '+']).any(|o| o == d.op))
                        .collect()
                };
                (keep(decode), decode_short.map(keep), keep(prefill))
            }
            Err(_) => (decode, decode_short, prefill),
        };
        Ok(Plan {
            shape,
            bufs,
            decode,
            decode_short,
            window: c.sliding_window.unwrap_or(0),
            prefill,
        })
    }

    /// Sliding window of the attention (0 = none).
    pub fn window(&self) -> usize {
        self.window
    }

    /// The decode dispatch list for a step at position `pos` (whose keys are those of positions ≤ pos inside
    /// the sliding window).
    pub fn decode_list(&self, pos: usize) -> &[Dispatch] {
        match (self.decode_list_index(pos), &self.decode_short) {
            (1, Some(short)) => short,
            _ => &self.decode,
        }
    }

    /// The decode lists in the order [`Plan::decode_list_index`] numbers them: `decode`, then `decode_short`
    /// where there is one.
    pub fn decode_lists(&self) -> Vec<&[Dispatch]> {
        let mut lists = vec![&self.decode[..]];
        lists.extend(self.decode_short.as_deref());
        lists
    }

    /// Which of [`Plan::decode_lists`] the step at `pos` takes: 1 (`decode_short`) where there is one and
    /// the step's keys fit one attention split, else 0.
    pub fn decode_list_index(&self, pos: usize) -> usize {
        let keys = if self.window > 0 {
            (pos + 1).min(self.window)
        } else {
            pos + 1
        };
        usize::from(self.decode_short.is_some() && keys <= kernels::ATTN_SPLIT_KEYS as usize)
    }
}
