//! GPU memory a model needs as wgptq lays it out, computed on the CPU without a device: the weight buffers of
//! [`super::plan::GpuWeights`] (prepared GPTQ codes with act-order padding rows, f16 scales, zero points when
//! they are not one constant, the u32 act-order permutation, f16 embedding and head, f32 norm weights, the RoPE
//! table), the KV cache and the activation buffers of one session ([`super::plan::Plan`]).
//!
//! Why here and not in `model/`: the sizes are the GPU layer's layout decisions (what [`crate::prep`] makes of a
//! GPTQ matrix, which projections [`crate::prep::concat_n`] fuses, buffer padding), so the estimate lives beside
//! the code that makes them and calls the same functions ([`crate::prep::row_order`],
//! [`crate::prep::zero_points`], [`crate::prep::FuseKey`], [`super::linear::gemv_splits`]). `tests/info.rs` checks
//! it byte for byte against the buffers a real load allocates.
//!
//! Two sources for the layout: [`LayoutSource::Checkpoint`] reads the small tensors that decide it (g_idx and
//! qzeros) exactly as preparation does; [`LayoutSource::Canonical`] derives it from quantize_config alone,
//! assuming what GPTQ quantizers write (act-order groups of exactly group_size rows, one permutation per input
//! shared by the projections that read it, constant zeros when `sym`), for checkpoints without data such as the
//! header-only synthetic ones of `wgptq info --synthetic`.

use serde::Serialize;

use super::context::Caps;
use super::kernels::{attention_splits, ss_blocks};
use super::linear::{gemv_splits, residual_gemv_choice};
use crate::error::{Error, Result};
use crate::model::{Linear, ModelConfig, ModelFiles, QuantConfig};
use crate::prep::{self, FuseKey, RowOrder};

/// Where the GPTQ layout (act-order padding and permutation, zero mode) is read from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LayoutSource {
    /// g_idx and qzeros of the checkpoint, as [`crate::prep::prepare_gptq`] reads them (exact).
    #[default]
    Checkpoint,
    /// quantize_config only (desc_act, sym): exact for checkpoints written by GPTQ quantizers.
    Canonical,
}

/// What to estimate for.
#[derive(Debug, Clone)]
pub struct EstimateOptions {
    /// Context the model is loaded for (`--max-context`): rows of the RoPE table and length of the KV cache;
    /// clamped to max_position_embeddings as [`crate::Model::load`] does.
    pub context: usize,
    /// Tokens per prefill step (activation rows; a sliding-window cache holds one chunk beyond the window).
    pub prefill_chunk: usize,
    pub layout: LayoutSource,
    /// The device's capabilities, which decide the decode split-K slabs; `None` = the most any device gets.
    pub caps: Option<Caps>,
}

impl Default for EstimateOptions {
    fn default() -> Self {
        EstimateOptions {
            context: 4096,
            prefill_chunk: crate::session::DEFAULT_PREFILL_CHUNK,
            layout: LayoutSource::Checkpoint,
            caps: None,
        }
    }
}

/// Weight bytes by kind (buffer sizes as allocated, padding included).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct WeightBytes {
    /// Packed GPTQ codes, act-order padding rows included.
    pub qweight: u64,
    /// f16 group scales.
    pub scales: u64,
    /// f16 zero points (only matrices whose zeros are not one constant).
    pub zeros: u64,
    /// u32 act-order permutations (one per fused matrix).
    pub perm: u64,
    /// f16 embedding, lm_head (none when tied) and unquantized linears.
    pub f16: u64,
    /// f32 RMSNorm weights.
    pub norms: u64,
    /// f32 (cos, sin) RoPE table, [context, head_dim / 2].
    pub rope: u64,
}

impl WeightBytes {
    pub fn total(&self) -> u64 {
        self.qweight + self.scales + self.zeros + self.perm + self.f16 + self.norms + self.rope
    }
}

/// GPU memory of a model and one session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MemoryEstimate {
    /// Context after clamping to the model's limit.
    pub context: usize,
    pub prefill_chunk: usize,
    /// KV cache positions per layer: the context, or window + one prefill chunk for sliding-window models.
    pub kv_slots: usize,
    pub weights: WeightBytes,
    /// Every weight buffer, shared by all sessions of the model.
    pub weights_bytes: u64,
    /// f16 keys and values of every layer, per session.
    pub kv_cache_bytes: u64,
    /// Activation and decode-partial buffers, per session (host-visible readback buffers excluded).
    pub activations_bytes: u64,
    /// weights + KV cache + activations: one model with one session.
    pub total_bytes: u64,
}

/// A storage buffer's allocated size: wgptq keeps at least 16 bytes, wgpu rounds to 4.
fn buf(len: usize) -> u64 {
    (len.max(16) as u64).next_multiple_of(4)
}

/// The context [`crate::Model::load`] gives a model asked for `requested` (`None` = its limit, at most 8192).
pub fn effective_context(config: &ModelConfig, requested: Option<usize>) -> usize {
    requested
        .unwrap_or(config.max_position_embeddings.min(8192))
        .min(config.max_position_embeddings)
}

/// KV cache slots of a session ([`crate::Model::session`]'s rule): a sliding-window cache needs the window plus
/// one chunk (a chunk's keys must not overwrite keys its own earlier queries still see), capped at the context.
pub fn kv_slots(config: &ModelConfig, context: usize, prefill_chunk: usize) -> usize {
    let chunk = prefill_chunk.min(context);
    match config.sliding_window {
        Some(w) if w + chunk < context => w + chunk,
        _ => context,
    }
}

/// Bytes of the f16 KV cache: layers × (K, V) × slots × kv_heads × head_dim × 2.
pub fn kv_cache_bytes(config: &ModelConfig, slots: usize) -> u64 {
    (config.num_layers * 2) as u64 * buf(slots * config.num_kv_heads * config.head_dim * 2)
}

/// A GPTQ matrix as prepared for the GPU, without its data.
#[derive(Debug, Clone, PartialEq)]
struct GptqLayout {
    bits: u32,
    k: usize,
    n: usize,
    kp: usize,
    group_rows: usize,
    groups: usize,
    zero_buf: bool,
    zero_const: f32,
    perm: Option<Vec<u32>>,
}

impl GptqLayout {
    fn fuse_key(&self) -> FuseKey<'_> {
        FuseKey {
            bits: self.bits,
            k: self.k,
            kp: self.kp,
            group_rows: self.group_rows,
            groups: self.groups,
            perm: self.perm.as_deref(),
            zero_buf: self.zero_buf,
            zero_const: self.zero_const,
        }
    }

    /// The buffers of [`super::linear::upload_gptq`].
    fn add_bytes(&self, w: &mut WeightBytes) {
        let pf = 32 / self.bits as usize;
        w.qweight += buf(self.kp / pf * self.n * 4);
        w.scales += buf(self.groups * self.n * 2);
        if self.zero_buf {
            w.zeros += buf(self.groups * self.n * 2);
        }
        if self.perm.is_some() {
            w.perm += buf(self.kp * 4);
        }
    }
}

enum LinearLayout {
    Gptq(GptqLayout),
    F16 { k: usize, n: usize },
}

impl LinearLayout {
    fn add_bytes(&self, w: &mut WeightBytes) {
        match self {
            LinearLayout::Gptq(g) => g.add_bytes(w),
            LinearLayout::F16 { k, n } => w.f16 += buf(k * n * 2),
        }
    }

    /// (prepared rows, columns) of a GPTQ matrix, for the split-K choice.
    fn gptq_shape(&self) -> Option<(usize, usize)> {
        match self {
            LinearLayout::Gptq(g) => Some((g.kp, g.n)),
            LinearLayout::F16 { .. } => None,
        }
    }
}

/// The g_idx a GPTQ quantizer writes: with act-order, groups of exactly `group_size` rows in an order other than
/// the identity (the reverse stands for any such permutation: the layout depends only on the group sizes);
/// without, row / group_size.
fn canonical_g_idx(k: usize, groups: usize, quant: &QuantConfig) -> Vec<i32> {
    let gs = quant.group_size.unwrap_or(k).max(1);
    let last = groups.saturating_sub(1);
    (0..k)
        .map(|row| {
            let pos = if quant.desc_act { k - 1 - row } else { row };
            (pos / gs).min(last) as i32
        })
        .collect()
}

fn layout(files: &ModelFiles, lin: &Linear, source: LayoutSource) -> LinearLayout {
    let Linear::Gptq {
        qzeros,
        scales,
        g_idx,
        k,
        n,
        quant,
        ..
    } = lin
    else {
        return LinearLayout::F16 {
            k: lin.k(),
            n: lin.n(),
        };
    };
    let (k, n) = (*k, *n);
    let groups = scales.numel() / n.max(1);
    let (order, zero_const, zero_buf) = match source {
        LayoutSource::Checkpoint => {
            let ck = &files.checkpoint;
            let g: Option<Vec<i32>> = g_idx.as_ref().map(|t| bytemuck::cast_vec(ck.words(t)));
            let zvals = prep::zero_points(&ck.words(qzeros), n, groups, quant);
            let (zero_const, zero_buf) = prep::zero_mode(&zvals);
            (
                prep::row_order(g.as_deref(), k, groups, quant),
                zero_const,
                zero_buf,
            )
        }
        LayoutSource::Canonical => {
            let g = g_idx.as_ref().map(|_| canonical_g_idx(k, groups, quant));
            let zero_const = (1u32 << (quant.bits - 1)) as f32;
            (
                prep::row_order(g.as_deref(), k, groups, quant),
                zero_const,
                !quant.sym,
            )
        }
    };
    let RowOrder {
        kp,
        group_rows,
        perm,
    } = order;
    LinearLayout::Gptq(GptqLayout {
        bits: quant.bits,
        k,
        n,
        kp,
        group_rows,
        groups,
        zero_buf,
        zero_const,
        perm,
    })
}

/// Projections reading one input as the planner uploads them (`upload_fused`): one matrix when all are GPTQ and
/// [`crate::prep::concat_n`] would fuse them, else each on its own.
fn fused(parts: Vec<LinearLayout>) -> Vec<LinearLayout> {
    let gptq: Vec<&GptqLayout> = parts
        .iter()
        .filter_map(|p| match p {
            LinearLayout::Gptq(g) => Some(g),
            LinearLayout::F16 { .. } => None,
        })
        .collect();
    if let Some(first) = gptq.first().filter(|_| gptq.len() == parts.len()) {
        let key = first.fuse_key();
        if gptq.iter().all(|g| g.fuse_key().fuses_with(&key)) {
            let n = gptq.iter().map(|g| g.n).sum();
            return vec![LinearLayout::Gptq(GptqLayout {
                n,
                ..(*first).clone()
            })];
        }
    }
    parts
}

/// Split-K slabs of a decode GEMV group ([`super::steps::DecodeSplits`]): 1 unless every part is GPTQ with the
/// same prepared rows.
fn group_splits(caps: Option<&Caps>, parts: &[LinearLayout]) -> usize {
    let mut kp = None;
    let mut n = 0;
    for p in parts {
        match p.gptq_shape() {
            Some((pk, pn)) if kp.is_none_or(|k| k == pk) => {
                kp = Some(pk);
                n += pn;
            }
            _ => return 1,
        }
    }
    kp.map_or(1, |kp| splits(caps, kp, n))
}

fn splits(caps: Option<&Caps>, kp: usize, n: usize) -> usize {
    match caps {
        Some(c) => gemv_splits(c, kp, n) as usize,
        // gemv_splits' bounds: at most 16, at least 256 rows per split.
        None => (kp / 256).clamp(1, 16),
    }
}

/// The memory `files` needs on the GPU for `opts`. Reads g_idx and qzeros with [`LayoutSource::Checkpoint`]
/// (a few MB of the mapped checkpoint); touches no codes, scales or embeddings.
pub fn estimate(files: &ModelFiles, opts: &EstimateOptions) -> Result<MemoryEstimate> {
    if opts.context == 0 {
        return Err(Error::InvalidArgument {
            name: "context".into(),
            value: "0".into(),
            reason: "must be at least 1".into(),
        });
    }
    let c = &files.config;
    let w = &files.weights;
    let context = effective_context(c, Some(opts.context));
    let chunk = opts.prefill_chunk.max(1).min(context);
    let slots = kv_slots(c, context, chunk);
    let caps = opts.caps.as_ref();

    let mut wb = WeightBytes::default();
    let (h, hd, inter) = (c.hidden_size, c.head_dim, c.intermediate_size);
    wb.f16 += buf(c.vocab_size * h * 2); // embedding
    wb.norms += buf(h * 4); // final norm
    wb.rope += buf(context * (hd / 2) * 8);
    let (mut s_qkv, mut s_gu) = (1, 1);
    let (mut o_shapes, mut down_shapes) = (Vec::new(), Vec::new());
    for l in &w.layers {
        wb.norms += 2 * buf(h * 4);
        let lay = |lin: &Linear| layout(files, lin, opts.layout);
        let qkv = fused(vec![lay(&l.q), lay(&l.k), lay(&l.v)]);
        let gate_up = fused(vec![lay(&l.gate), lay(&l.up)]);
        let (o, mut down) = (lay(&l.o), lay(&l.down));
        // The planner moves down's act-order into gate|up's columns (plan.rs, prep::input_order): no perm buffer.
        if let LinearLayout::Gptq(d) = &mut down {
            if l.gate_up_gptq() && prep::plain_order(d.perm.as_deref(), d.kp, d.k).is_some() {
                d.perm = None;
            }
        }
        for x in qkv.iter().chain(&gate_up).chain([&o, &down]) {
            x.add_bytes(&mut wb);
        }
        s_qkv = s_qkv.max(group_splits(caps, &qkv));
        s_gu = s_gu.max(group_splits(caps, &gate_up));
        o_shapes.push(o.gptq_shape());
        down_shapes.push(down.gptq_shape());
    }
    // The residual GEMVs' split-K factors as the planner chooses them (steps::DecodeSplits).
    let residual = |shapes: &[Option<(usize, usize)>]| match caps {
        Some(c) => residual_gemv_choice(c, shapes, None).1 as usize,
        None => shapes
            .iter()
            .flatten()
            .map(|&(kp, n)| splits(None, kp, n))
            .max()
            .unwrap_or(1),
    };
    let (s_o, s_down) = (residual(&o_shapes), residual(&down_shapes));
    // Tied embeddings: the head reads the embedding's buffers.
    let tied = matches!(&w.lm_head, Linear::F16 { weight, .. } if c.tie_word_embeddings && *weight == w.embed);
    if !tied {
        layout(files, &w.lm_head, opts.layout).add_bytes(&mut wb);
    }

    // The session's buffers, as Plan::new allocates them (all_logits off: one row of logits).
    let f32s = |n: usize| buf(n * 4);
    let qkv_n = (c.num_heads + 2 * c.num_kv_heads) * hd;
    let q_n = c.num_heads * hd;
    let activations = 16 // step uniform
        + buf(chunk * 4) // tokens
        + 2 * f32s(chunk * h) // x, xn
        + f32s(chunk * qkv_n)
        + 2 * f32s(chunk * q_n) // q, attn
        + f32s(c.num_heads * attention_splits(slots as u32) as usize * (hd + 2))
        + f32s(s_qkv * qkv_n)
        + f32s(s_gu * 2 * inter)
        + f32s(s_o.max(s_down) * h)
        + f32s(chunk * ss_blocks(h as u32) as usize)
        + f32s(h / 4) // residual epilogue counters
        + f32s(chunk * 2 * inter) // gate_up
        + f32s(chunk * inter) // act
        + f32s(c.vocab_size) // logits
        + 2 * buf(16); // out_ids, dummy

    let weights_bytes = wb.total();
    let kv = kv_cache_bytes(c, slots);
    Ok(MemoryEstimate {
        context,
        prefill_chunk: chunk,
        kv_slots: slots,
        weights: wb,
        weights_bytes,
        kv_cache_bytes: kv,
        activations_bytes: activations,
        total_bytes: weights_bytes + kv + activations,
    })
}
