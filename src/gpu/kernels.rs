//! Builders for the non-linear ops (embedding, norm, RoPE + KV write, attention, SiLU·mul, argmax, stream).
//! Each mirrors its shader's `Params` block and binding list; shapes are checked here, on the host.

use bytemuck::{Pod, Zeroable};

use super::ops::{make_key, Dispatch, Pipelines};
use super::shader::Kernel;
use super::shader::KernelKey;
use crate::error::{Error, Result};

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct P4 {
    a: u32,
    b: u32,
    c: u32,
    d: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct RopeParams {
    n_heads: u32,
    n_kv: u32,
    head_dim: u32,
    slots: u32,
    qkv_splits: u32,
    cap: u32,
    _pad: [u32; 2],
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct ReduceParams {
    n: u32,
    splits: u32,
    cap: u32,
    blocks: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct NormParams {
    n: u32,
    eps: f32,
    _pad: [u32; 2],
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct AttnParams {
    n_heads: u32,
    n_kv: u32,
    head_dim: u32,
    slots: u32,
    window: u32,
    scale: f32,
    splits: u32,
    _pad: u32,
}

const EW_WG: u32 = 64;
/// Threads of a gather workgroup (one token row each).
const GATHER_WG: u32 = 256;
const ROW_WG: u32 = 256;

/// tokens [cap] → x [cap, hidden]; one dispatch per embedding chunk (row_start, rows, buffer).
pub fn embed(
    pipes: &Pipelines,
    step: &wgpu::Buffer,
    tokens: &wgpu::Buffer,
    chunks: &[(wgpu::Buffer, usize, usize)],
    x: &wgpu::Buffer,
    hidden: u32,
    capacity: u32,
) -> Result<Vec<Dispatch>> {
    let key = pipes.key(Kernel::Embed, EW_WG, &[]);
    chunks
        .iter()
        .map(|(buf, r0, rows)| {
            pipes.dispatch(
                key.clone(),
                &P4 {
                    a: hidden,
                    b: *r0 as u32,
                    c: *rows as u32,
                    d: 0,
                },
                step,
                &[tokens, buf, x],
                [(hidden / 2).div_ceil(EW_WG), capacity, 1],
                (hidden * 2 + hidden * 4) as u64,
            )
        })
        .collect()
}

/// x [cap, n] → y [cap, n] = rmsnorm(x) * weight.
#[allow(clippy::too_many_arguments)]
pub fn rmsnorm(
    pipes: &Pipelines,
    step: &wgpu::Buffer,
    x: &wgpu::Buffer,
    weight: &wgpu::Buffer,
    y: &wgpu::Buffer,
    n: u32,
    eps: f32,
    capacity: u32,
) -> Result<Dispatch> {
    pipes.dispatch(
        pipes.key(Kernel::RmsNorm, ROW_WG, &[]),
        &NormParams {
            n,
            eps,
            _pad: [0; 2],
        },
        step,
        &[x, weight, y],
        [capacity, 1, 1],
        (n * 12) as u64,
    )
}

/// Attention geometry shared by RoPE and attention.
#[derive(Debug, Clone, Copy)]
pub struct AttnShape {
    pub n_heads: u32,
    pub n_kv: u32,
    pub head_dim: u32,
    /// KV cache slots (slot = pos % slots).
    pub slots: u32,
    /// Sliding window, 0 = none.
    pub window: u32,
}

impl AttnShape {
    pub fn check(&self) -> Result<()> {
        let bad = |reason: String| {
            Err(Error::InvalidArgument {
                name: "attention shape".into(),
                value: format!("{self:?}"),
                reason,
            })
        };
        if self.head_dim % 4 != 0 || self.head_dim > 256 || self.head_dim == 0 {
            return bad("head_dim must be a multiple of 4 and at most 256".into());
        }
        if self.n_kv == 0 || self.n_heads % self.n_kv != 0 {
            return bad("num_attention_heads must be a multiple of num_key_value_heads".into());
        }
        Ok(())
    }
}

/// qkv [qkv_splits, cap, (H + 2 KV) d] (split-K slabs, summed) → q [cap, H d] (rotated), k/v caches at slot
/// pos % slots.
#[allow(clippy::too_many_arguments)]
pub fn rope_kv(
    pipes: &Pipelines,
    step: &wgpu::Buffer,
    qkv: &wgpu::Buffer,
    rope_table: &wgpu::Buffer,
    q: &wgpu::Buffer,
    k_cache: &wgpu::Buffer,
    v_cache: &wgpu::Buffer,
    s: AttnShape,
    capacity: u32,
    qkv_splits: u32,
) -> Result<Dispatch> {
    s.check()?;
    let threads = (s.n_heads + 2 * s.n_kv) * (s.head_dim / 4);
    pipes.dispatch(
        pipes.key(Kernel::Rope, EW_WG, &[]),
        &RopeParams {
            n_heads: s.n_heads,
            n_kv: s.n_kv,
            head_dim: s.head_dim,
            slots: s.slots,
            qkv_splits: qkv_splits.max(1),
            cap: capacity,
            _pad: [0; 2],
        },
        step,
        &[qkv, rope_table, q, k_cache, v_cache],
        [threads.div_ceil(EW_WG), capacity, 1],
        ((s.n_heads + 2 * s.n_kv) * s.head_dim * 4 * qkv_splits.max(1)
            + (s.n_heads * 4 + s.n_kv * 4) * s.head_dim) as u64,
    )
}

/// Columns per partial sum of squares in `ss` (reduce_add and the GEMV residual epilogue write them; the fused
/// RMSNorm prologue adds them up).
pub const SS_COLS: u32 = 32;

/// Partial sums of squares per row of `n` (the `ss` stride).
pub fn ss_blocks(n: u32) -> u32 {
    n.div_ceil(SS_COLS)
}

/// x [cap, n] += the `splits` slabs of `part` [splits, cap, n] (at most 16); ss [cap, ss_blocks(n)] = sums of x^2
/// per block of columns, for the next fused RMSNorm.
#[allow(clippy::too_many_arguments)]
pub fn reduce_add(
    pipes: &Pipelines,
    step: &wgpu::Buffer,
    part: &wgpu::Buffer,
    x: &wgpu::Buffer,
    ss: &wgpu::Buffer,
    n: u32,
    splits: u32,
    capacity: u32,
) -> Result<Dispatch> {
    if splits > 16 {
        return Err(Error::InvalidArgument {
            name: "reduce_add splits".into(),
            value: splits.to_string(),
            reason: "at most 16 partial slabs".into(),
        });
    }
    let blocks = ss_blocks(n);
    pipes.dispatch(
        pipes.key(Kernel::ReduceAdd, ROW_WG, &[]),
        &ReduceParams {
            n,
            splits,
            cap: capacity,
            blocks,
        },
        step,
        &[part, x, ss],
        [blocks, capacity, 1],
        (n * 4 * (splits + 2)) as u64,
    )
}

/// Attention workgroup size (keys per block).
pub const ATTN_WG: u32 = 256;

/// Keys per split of decode attention (`SPLIT_KEYS` in attention.wgsl: one block).
pub const ATTN_SPLIT_KEYS: u32 = ATTN_WG;

/// Splits allocated for decode attention (flash-decoding) over a cache of `slots` keys: one per 256 keys, so a
/// long context fills a large GPU; a step only runs the splits its keys need.
pub fn attention_splits(slots: u32) -> u32 {
    slots.div_ceil(ATTN_SPLIT_KEYS).max(1)
}

/// Query slots (8 threads each) and keys per tile of the prefill attention (attention_tile.wgsl); a slot serves
/// [`attention_tile_qt`] queries.
pub const ATTN_TILE_SLOTS: u32 = ATTN_WG / 8;
pub const ATTN_TILE_KEYS: u32 = 16;

/// Workgroup memory of the tiled prefill attention for `head_dim` with `qt` queries per slot (its arrays, as
/// attention_tile.wgsl declares them with or without subgroups, plus the prelude's reduction array).
pub fn attention_tile_bytes(head_dim: u32, subgroups: bool, qt: u32) -> u32 {
    let rows = head_dim / 4 + 1;
    let queries = ATTN_TILE_SLOTS * qt;
    let reductions = if subgroups {
        0
    } else {
        queries * ATTN_TILE_KEYS * 4 + 2 * ATTN_WG * 8
    };
    queries * rows * 16 + 2 * ATTN_TILE_KEYS * rows * 8 + reductions + ATTN_WG * 4
}

/// Queries per slot of the tiled prefill attention on this device: 2 where the tile fits the workgroup memory
/// (half the workgroup-memory reads per product), else 1; `None` where the tiled kernel does not apply (head_dim
/// not a multiple of 32 up to 128, or no tile fits): one workgroup per query and head (attention.wgsl) then.
pub fn attention_tile_qt(head_dim: u32, caps: &super::context::Caps) -> Option<u32> {
    if head_dim % 32 != 0 || head_dim > 128 {
        return None;
    }
    let sg = caps.subgroup_size.is_some();
    [2, 1]
        .into_iter()
        .find(|&qt| attention_tile_bytes(head_dim, sg, qt) <= caps.max_workgroup_storage)
}

/// Workgroup memory of the decode attention (attention.wgsl) for `head_dim` with `g` heads per workgroup: its
/// arrays with or without subgroups, plus the prelude's reduction array.
pub fn attention_bytes(head_dim: u32, subgroup: Option<u32>, g: u32) -> u32 {
    let red = match subgroup {
        Some(sg) if sg > 0 => ATTN_WG / sg * 16,
        _ => ATTN_WG * 16,
    };
    head_dim / 4 * g * 16 + ATTN_WG * 16 + ATTN_WG * g * 16 + red + ATTN_WG * 4
}

/// Query heads per workgroup of the split decode attention (`splits > 1`, past 256 keys): the most of 4, 2, 1
/// that divides the heads sharing a KV head and fits the workgroup memory, so each K and V row is read once for
/// that many heads. At 4096 context the cache reads dominate decode attention: 4 heads per workgroup decoded
/// 269-275 against 239-242 tok/s (H100, docs/PERF.md, run 71). Without splits (a short context, or a prefill
/// fallback) 1: there the step is latency-bound and 4 heads per workgroup cost 2 µs per call at 16 keys (a
/// quarter of the workgroups, 4 heads' reductions). `WGPTQ_ATTN_G=1|2|4` caps it (measurements).
pub fn attention_heads_per_wg(s: &AttnShape, caps: &super::context::Caps, splits: u32) -> u32 {
    let group = s.n_heads / s.n_kv.max(1);
    let most = std::env::var("WGPTQ_ATTN_G")
        .ok()
        .and_then(|v| v.parse::<u32>().ok())
        .unwrap_or(4)
        .min(if splits > 1 { 4 } else { 1 });
    [4, 2, 1]
        .into_iter()
        .find(|&g| {
            g <= most
                && group % g == 0
                && attention_bytes(s.head_dim, caps.subgroup_size, g) <= caps.max_workgroup_storage
        })
        .unwrap_or(1)
}

/// q [cap, H d], caches → out [cap, H d]. A prefill chunk (cap > 1, no split) whose head_dim fits takes the
/// tiled kernel ([`attention_tile_qt`]). With `splits > 1` the keys are split over workgroups writing
/// `partial` ([cap, H, splits, d + 2] f32), and a combine op writes `out`.
#[allow(clippy::too_many_arguments)]
pub fn attention(
    pipes: &Pipelines,
    step: &wgpu::Buffer,
    q: &wgpu::Buffer,
    k_cache: &wgpu::Buffer,
    v_cache: &wgpu::Buffer,
    out: &wgpu::Buffer,
    partial: &wgpu::Buffer,
    s: AttnShape,
    capacity: u32,
    splits: u32,
) -> Result<Vec<Dispatch>> {
    s.check()?;
    let kv_bytes = (s.slots * s.n_kv * s.head_dim * 4) as u64;
    let params = AttnParams {
        n_heads: s.n_heads,
        n_kv: s.n_kv,
        head_dim: s.head_dim,
        slots: s.slots,
        window: s.window,
        scale: 1.0 / (s.head_dim as f32).sqrt(),
        splits,
        _pad: 0,
    };
    let qt = attention_tile_qt(s.head_dim, &pipes.gpu.caps);
    if let (1, true, Some(qt)) = (splits, capacity > 1, qt) {
        let defs = [
            ("HD", s.head_dim),
            ("BK", ATTN_TILE_KEYS),
            ("QT", qt),
            ("QT2", (qt == 2) as u32),
        ];
        return Ok(vec![pipes.dispatch(
            pipes.key(Kernel::AttentionTile, ATTN_WG, &defs),
            &params,
            step,
            &[q, k_cache, v_cache, out],
            [s.n_heads, capacity.div_ceil(ATTN_TILE_SLOTS * qt), 1],
            kv_bytes,
        )?]);
    }
    let target = if splits > 1 { partial } else { out };
    let g = attention_heads_per_wg(&s, &pipes.gpu.caps, splits);
    let mut d = vec![pipes.dispatch(
        pipes.key(
            Kernel::Attention,
            ATTN_WG,
            &[("HD", s.head_dim), ("SPLIT", (splits > 1) as u32), ("G", g)],
        ),
        &params,
        step,
        &[q, k_cache, v_cache, target],
        [s.n_heads / g, capacity, splits],
        kv_bytes,
    )?];
    if splits > 1 {
        d.push(pipes.dispatch(
            pipes.key(Kernel::AttentionCombine, EW_WG, &[]),
            &P4 {
                a: s.n_heads,
                b: s.head_dim,
                c: splits,
                d: s.window,
            },
            step,
            &[partial, out],
            [s.n_heads, capacity, 1],
            (s.n_heads * splits * (s.head_dim + 2) * 4) as u64,
        )?);
    }
    Ok(d)
}

/// What an act-order gather computes on the way.
#[derive(Debug, Clone, Copy)]
pub enum GatherOp<'a> {
    /// out[t, k] = x[t, perm[k]].
    Plain,
    /// RMSNorm first: out[t, k] = x[t, perm[k]] · rsqrt(mean(x[t]²) + eps) · weight[perm[k]] (x [cap, x_stride],
    /// the row normalised whole): rmsnorm and the gather in one pass.
    Norm { weight: &'a wgpu::Buffer, eps: f32 },
    /// x is gate|up ([cap, 2 I], x_stride = 2 I, the value I) and out[t, k] = silu(gate[t, perm[k]]) ·
    /// up[t, perm[k]]: the down projection's act-order input in one pass (silu_mul and gather fused).
    SwiGlu(u32),
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct GatherParams {
    kp: u32,
    x_stride: u32,
    half: u32,
    span: u32,
    eps: f32,
    _pad: [u32; 3],
}

/// x [cap, x_stride] → out [cap, kp] with out[t, k] = op(x)[t, perm[k]] (0 where perm[k] = u32::MAX).
#[allow(clippy::too_many_arguments)]
pub fn gather(
    pipes: &Pipelines,
    step: &wgpu::Buffer,
    x: &wgpu::Buffer,
    perm: &wgpu::Buffer,
    out: &wgpu::Buffer,
    kp: u32,
    x_stride: u32,
    capacity: u32,
    op: GatherOp<'_>,
) -> Result<Dispatch> {
    let swiglu = matches!(op, GatherOp::SwiGlu(_));
    // Whole rows per workgroup for the plain gather, one element per thread for SwiGLU (shader header).
    let span = if swiglu { GATHER_WG } else { kp.max(1) };
    let (norm, weight, eps) = match op {
        GatherOp::Norm { weight, eps } => (1, weight, eps),
        _ => (0, &pipes.dummy_rw, 0.0),
    };
    pipes.dispatch(
        pipes.key(
            Kernel::Gather,
            GATHER_WG,
            &[("NORM", norm), ("SWIGLU", swiglu as u32)],
        ),
        &GatherParams {
            kp,
            x_stride,
            half: match op {
                GatherOp::SwiGlu(i) => i,
                _ => 0,
            },
            span,
            eps,
            _pad: [0; 3],
        },
        step,
        &[x, perm, out, weight],
        [kp.div_ceil(span), capacity, 1],
        (kp * if swiglu { 16 } else { 12 } + norm * x_stride * 8) as u64,
    )
}

/// gate_up [cap, 2 I] → act [cap, I].
pub fn silu_mul(
    pipes: &Pipelines,
    step: &wgpu::Buffer,
    gate_up: &wgpu::Buffer,
    act: &wgpu::Buffer,
    inter: u32,
    capacity: u32,
) -> Result<Dispatch> {
    let v4 = inter % 4 == 0;
    let vw = if v4 { 4 } else { 1 };
    pipes.dispatch(
        pipes.key(Kernel::SiluMul, EW_WG, &[("V4", v4 as u32)]),
        &P4 {
            a: inter,
            b: 0,
            c: 0,
            d: 0,
        },
        step,
        &[gate_up, act],
        [(inter / vw).div_ceil(EW_WG), capacity, 1],
        (inter * 12) as u64,
    )
}

/// logits [1, vocab] → tokens[0] and out[out_index].
pub fn argmax(
    pipes: &Pipelines,
    step: &wgpu::Buffer,
    logits: &wgpu::Buffer,
    tokens: &wgpu::Buffer,
    out: &wgpu::Buffer,
    vocab: u32,
    out_index: u32,
) -> Result<Dispatch> {
    pipes.dispatch(
        pipes.key(Kernel::Argmax, ROW_WG, &[]),
        &P4 {
            a: vocab,
            b: out_index,
            c: 0,
            d: 0,
        },
        step,
        &[logits, tokens, out],
        [1, 1, 1],
        (vocab * 4) as u64,
    )
}

/// Streaming read of `src` (bandwidth ceiling); `threads` must be a multiple of 256.
pub fn stream(
    pipes: &Pipelines,
    step: &wgpu::Buffer,
    src: &wgpu::Buffer,
    dst: &wgpu::Buffer,
    n_vec4: u32,
    threads: u32,
) -> Result<Dispatch> {
    let wg = 256;
    let groups = threads / wg;
    let (gx, gy) = if groups > 65535 {
        (65535, groups.div_ceil(65535))
    } else {
        (groups, 1)
    };
    pipes.dispatch(
        pipes.key(Kernel::Stream, wg, &[]),
        &P4 {
            a: n_vec4,
            b: gx * gy * wg,
            c: 0,
            d: 0,
        },
        step,
        &[src, dst],
        [gx, gy, 1],
        n_vec4 as u64 * 16,
    )
}

/// Workgroup size of [`grid_barrier`].
pub const GRID_BARRIER_WG: u32 = 64;

/// `iters` grid-wide barriers among `workgroups` workgroups spinning on `bar` ([2] u32, zero before and after):
/// the benchmark runner's measurement of a persistent kernel's phase boundary. Every workgroup must be resident
/// at once, or the dispatch never ends.
pub fn grid_barrier(
    pipes: &Pipelines,
    step: &wgpu::Buffer,
    bar: &wgpu::Buffer,
    workgroups: u32,
    iters: u32,
) -> Result<Dispatch> {
    pipes.dispatch(
        pipes.key(Kernel::GridBarrier, GRID_BARRIER_WG, &[]),
        &P4 {
            a: iters,
            b: 0,
            c: 0,
            d: 0,
        },
        step,
        &[bar],
        [workgroups, 1, 1],
        0,
    )
}

/// Every variant the builders of this module can produce.
pub fn variants(sg: Option<u32>) -> Vec<KernelKey> {
    let mut v = vec![
        make_key(Kernel::Embed, EW_WG, sg, &[]),
        make_key(Kernel::RmsNorm, ROW_WG, sg, &[]),
        make_key(Kernel::Rope, EW_WG, sg, &[]),
        make_key(Kernel::SiluMul, EW_WG, sg, &[("V4", 0)]),
        make_key(Kernel::SiluMul, EW_WG, sg, &[("V4", 1)]),
        make_key(Kernel::Argmax, ROW_WG, sg, &[]),
        make_key(Kernel::ReduceAdd, ROW_WG, sg, &[]),
        make_key(Kernel::Stream, 256, sg, &[]),
        make_key(Kernel::GridBarrier, GRID_BARRIER_WG, sg, &[]),
        make_key(Kernel::Advance, 1, sg, &[]),
        make_key(Kernel::Gather, GATHER_WG, sg, &[("NORM", 0), ("SWIGLU", 0)]),
        make_key(Kernel::Gather, GATHER_WG, sg, &[("NORM", 1), ("SWIGLU", 0)]),
        make_key(Kernel::Gather, GATHER_WG, sg, &[("NORM", 0), ("SWIGLU", 1)]),
    ];
    // Every head_dim AttnShape::check accepts.
    for hd in (4..=256u32).step_by(4) {
        // heads per workgroup: 1 without splits, up to 4 with (attention_heads_per_wg)
        for (split, g) in [(0, 1), (1, 1), (1, 2), (1, 4)] {
            let defs = [("HD", hd), ("SPLIT", split), ("G", g)];
            v.push(make_key(Kernel::Attention, ATTN_WG, sg, &defs));
        }
    }
    for hd in (32..=128u32).step_by(32) {
        for qt in [1, 2] {
            let defs = [
                ("HD", hd),
                ("BK", ATTN_TILE_KEYS),
                ("QT", qt),
                ("QT2", (qt == 2) as u32),
            ];
            v.push(make_key(Kernel::AttentionTile, ATTN_WG, sg, &defs));
        }
    }
    v.push(make_key(Kernel::AttentionCombine, EW_WG, sg, &[]));
    v
}
