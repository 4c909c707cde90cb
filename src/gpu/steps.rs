//! The op lists of the two step shapes, built once per session by [`super::plan::Plan`].
//!
//! Decode (one token) is bandwidth-bound, so its GPTQ matmuls are split-K GEMVs with fused prologues: RMSNorm
//! (the row's sum of squares comes in 32-column block sums `ss`, written by whoever last changed x) and SwiGLU;
//! their partial slabs are summed by the consumer (RoPE for q|k|v, the down GEMV's prologue for gate|up), and
//! for down by the GEMV's own residual epilogue (the last split of each column block adds them into x and
//! writes `ss`), so every dispatch is one the GPU has to wait for anyway. Where the device has f32 atomics
//! (and determinism was not asked for) every split of down adds into x itself instead, with no last-split tail,
//! and the next q|k|v sums its row's squares itself (`Epilogue::ResidualAtomic`, docs/PERF.md runs 75-77). o
//! runs without split-K where its rows fit one staging chunk (`linear::residual_gemv_shape`: that tail cost it
//! more than the split gave) and adds into x directly.
//! Per layer (6 dispatches, 7 with split attention): qkv, rope+kv, attention (+ combine), o+residual, gate|up,
//! down+residual. f16 linears fall back to `reduce_add` for the residual.
//! Prefill (a chunk of tokens) is compute-bound: tiled GEMMs with residual epilogues, act-order inputs gathered
//! into the prepared order first (the gathers apply RMSNorm on the way), SiLU·mul in down's prepared order
//! (gate|up's columns carry it, `prep::input_order`), and q|k|v split over K into slabs RoPE adds up, so its
//! small grid fills the GPU (docs/PERF.md, runs 62-67).

use super::context::Caps;
use super::kernels::{self, AttnShape, GatherOp};
use super::linear::{self, gemv_splits_tuned, Epilogue, GpuLinear, LinearMode, Prologue};
use super::ops::{Dispatch, Pipelines};
use super::plan::{Activations, GpuLayer, GpuWeights, PlanShape};
use crate::error::Result;

fn named(v: Vec<Dispatch>, op: &'static str) -> Vec<Dispatch> {
    v.into_iter().map(|d| d.named(op)).collect()
}

/// Split-K factors of the decode matmuls (the same for every layer: they depend on shapes only), and their GEMV
/// shapes where a `WGPTQ_DECODE_<OP>` measurement override names one (`None`: the device default).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecodeSplits {
    pub qkv: u32,
    pub o: u32,
    pub gate_up: u32,
    pub down: u32,
    pub tunes: DecodeTunes,
}

/// Per-op GEMV shapes (cols4, ksplit) of the decode matmuls.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DecodeTunes {
    pub qkv: Option<(u32, u32)>,
    pub o: Option<(u32, u32)>,
    pub gate_up: Option<(u32, u32)>,
    pub down: Option<(u32, u32)>,
}

fn group_splits(caps: &Caps, parts: &[(GpuLinear, u32)], tune: Option<(u32, u32)>) -> u32 {
    let mut kp = None;
    let mut n = 0;
    for (l, _) in parts {
        match l {
            GpuLinear::Gptq(g) if kp.is_none_or(|k| k == g.kp) => {
                kp = Some(g.kp);
                n += g.n;
            }
            _ => return 1,
        }
    }
    kp.map_or(1, |kp| gemv_splits_tuned(caps, kp, n, tune))
}

impl DecodeSplits {
    pub fn choose(caps: &Caps, w: &GpuWeights) -> Result<DecodeSplits> {
        let [qkv, o, gu, down] = ["QKV", "O", "GATE_UP", "DOWN"].map(linear::decode_override);
        let (qkv, o, gu, down) = (qkv?, o?, gu?, down?);
        let (qkv_t, o_t, gu_t, down_t) = (qkv.tune, o.tune, gu.tune, down.tune);
        let mut s = DecodeSplits {
            qkv: 1,
            o: 1,
            gate_up: 1,
            down: 1,
            tunes: DecodeTunes {
                qkv: qkv_t,
                o: o_t,
                gate_up: gu_t,
                down: down_t,
            },
        };
        for l in &w.layers {
            s.qkv = s.qkv.max(group_splits(caps, &l.qkv, qkv_t));
            s.gate_up = s.gate_up.max(group_splits(caps, &l.gate_up, gu_t));
        }
        let shapes = |f: fn(&GpuLayer) -> &GpuLinear| -> Vec<Option<(usize, usize)>> {
            w.layers.iter().map(|l| f(l).gptq_shape()).collect()
        };
        (s.tunes.o, s.o) = linear::residual_gemv_choice(caps, &shapes(|l| &l.o), o_t);
        (s.tunes.down, s.down) = linear::residual_gemv_choice(caps, &shapes(|l| &l.down), down_t);
        s.qkv = qkv.splits.unwrap_or(s.qkv);
        s.o = o.splits.unwrap_or(s.o);
        s.gate_up = gu.splits.unwrap_or(s.gate_up);
        s.down = down.splits.unwrap_or(s.down);
        Ok(s)
    }
}

fn attn_shape(w: &GpuWeights, shape: PlanShape) -> AttnShape {
    let c = &w.config;
    AttnShape {
        n_heads: c.num_heads as u32,
        n_kv: c.num_kv_heads as u32,
        head_dim: c.head_dim as u32,
        slots: shape.slots as u32,
        window: c.sliding_window.unwrap_or(0) as u32,
    }
}

/// `norm → projections` in decode: fused into each GEMV's prologue when the whole group is GPTQ (writing split-K
/// slabs into `out`), else a separate RMSNorm into `xn` and plain matmuls into slab 0 of `out`.
#[allow(clippy::too_many_arguments)]
fn decode_normed(
    d: &mut Vec<Dispatch>,
    pipes: &Pipelines,
    b: &Activations,
    parts: &[(GpuLinear, u32)],
    norm: &wgpu::Buffer,
    eps: f32,
    hidden: u32,
    out: &wgpu::Buffer,
    out_stride: u32,
    splits: u32,
    tune: Option<(u32, u32)>,
    ss_valid: bool,
    op: &'static str,
) -> Result<()> {
    let fuse = parts.iter().all(|(l, _)| matches!(l, GpuLinear::Gptq(_)));
    if !fuse {
        d.push(
            kernels::rmsnorm(pipes, &b.step, &b.x, norm, &b.xn, hidden, eps, 1)?.named("rmsnorm"),
        );
    }
    for (lin, col0) in parts {
        let mut m = LinearMode::new(1, false, out_stride);
        m.y_col0 = *col0;
        m.tune = tune;
        let (x, pro) = if fuse {
            m.splits = splits;
            (
                &b.x,
                Prologue::RmsNorm {
                    weight: norm,
                    ss: &b.ss,
                    // After an atomic residual nothing wrote the block sums: the GEMV sums its row itself.
                    ss_blocks: if ss_valid {
                        kernels::ss_blocks(hidden)
                    } else {
                        0
                    },
                    eps,
                },
            )
        } else {
            (&b.xn, Prologue::None)
        };
        d.extend(named(
            linear::linear_dispatches(pipes, &b.step, lin, x, out, &b.dummy, m, pro)?,
            op,
        ));
    }
    Ok(())
}

/// The decode step (one token; see the module docs).
pub fn decode(
    pipes: &Pipelines,
    w: &GpuWeights,
    b: &Activations,
    shape: PlanShape,
    splits: &DecodeSplits,
    attn_splits: u32,
) -> Result<Vec<Dispatch>> {
    let c = &w.config;
    let step = &b.step;
    let h = c.hidden_size as u32;
    let eps = c.rms_norm_eps;
    let qkv_n = ((c.num_heads + 2 * c.num_kv_heads) * c.head_dim) as u32;
    let inter = c.intermediate_size as u32;
    let attn = attn_shape(w, shape);
    let mut d = kernels::embed(pipes, step, &b.tokens, &w.embed, &b.x, h, 1)?;
    d.push(kernels::reduce_add(pipes, step, &b.res_part, &b.x, &b.ss, h, 0, 1)?.named("norm_sums"));
    // Whether `ss` holds the block sums of squares of the current x (see `residual_linear`).
    let mut ss_valid = true;
    for (i, l) in w.layers.iter().enumerate() {
        let (kc, vc) = &b.kv[i];
        let s_qkv = if l.qkv.iter().all(|(l, _)| matches!(l, GpuLinear::Gptq(_))) {
            splits.qkv
        } else {
            1
        };
        decode_normed(
            &mut d,
            pipes,
            b,
            &l.qkv,
            &l.input_norm,
            eps,
            h,
            &b.qkv_part,
            qkv_n,
            s_qkv,
            splits.tunes.qkv,
            ss_valid,
            "qkv",
        )?;
        d.push(kernels::rope_kv(
            pipes,
            step,
            &b.qkv_part,
            &w.rope,
            &b.q,
            kc,
            vc,
            attn,
            1,
            s_qkv,
        )?);
        d.extend(kernels::attention(
            pipes,
            step,
            &b.q,
            kc,
            vc,
            &b.attn,
            &b.attn_part,
            attn,
            1,
            attn_splits,
        )?);
        // o: split-K slabs into res_part, added to x by reduce_add (which also gives the post-norm's factor).
        let s_o = if matches!(l.o, GpuLinear::Gptq(_)) {
            splits.o
        } else {
            1
        };
        let mut m = LinearMode::new(1, false, h);
        m.splits = s_o;
        m.tune = splits.tunes.o;
        ss_valid = residual_linear(&mut d, pipes, b, &l.o, &b.attn, m, Prologue::None, "o_proj")?;
        // The SwiGLU prologue of a GPTQ down adds up split-K gate|up slabs; any f16 matmul here means no split.
        let down_gptq = matches!(l.down, GpuLinear::Gptq(_));
        let s_gu = if down_gptq
            && l.gate_up
                .iter()
                .all(|(l, _)| matches!(l, GpuLinear::Gptq(_)))
        {
            splits.gate_up
        } else {
            1
        };
        decode_normed(
            &mut d,
            pipes,
            b,
            &l.gate_up,
            &l.post_norm,
            eps,
            h,
            &b.gu_part,
            2 * inter,
            s_gu,
            splits.tunes.gate_up,
            ss_valid,
            "gate_up",
        )?;
        // down: the SwiGLU prologue adds up the gate|up slabs; its own slabs go through reduce_add.
        let s_down = if down_gptq { splits.down } else { 1 };
        let (down_x, pro, x_splits) = if down_gptq {
            (&b.gu_part, Prologue::SwiGlu, s_gu)
        } else {
            d.push(kernels::silu_mul(
                pipes, step, &b.gu_part, &b.act, inter, 1,
            )?);
            (&b.act, Prologue::None, 1)
        };
        let mut m = LinearMode::new(1, false, h);
        m.splits = s_down;
        m.x_splits = x_splits;
        m.tune = splits.tunes.down;
        ss_valid = residual_linear(&mut d, pipes, b, &l.down, down_x, m, pro, "down")?;
    }
    head(&mut d, pipes, w, b, 1, true)?;
    Ok(d)
}

/// `x += input Wᵀ` in decode. Returns whether it left the block sums of squares of the new x in `ss` for the
/// next fused RMSNorm: a GPTQ matmul does in its epilogue (the last split-K workgroup of each column block adds
/// the slabs up, or the only one without split-K), an f16 one writes slabs that `reduce_add` adds. A GPTQ matmul
/// with split-K on a device with f32 atomics adds every split into x itself instead (no last-split tail: down
/// 1,138 → 948 µs per token on the H100, docs/PERF.md runs 75-76) and leaves `ss` stale.
#[allow(clippy::too_many_arguments)]
fn residual_linear(
    d: &mut Vec<Dispatch>,
    pipes: &Pipelines,
    b: &Activations,
    lin: &GpuLinear,
    input: &wgpu::Buffer,
    m: LinearMode,
    pro: Prologue,
    op: &'static str,
) -> Result<bool> {
    let h = m.y_stride;
    // WGPTQ_FUSE_RESIDUAL=0 plans reduce_add instead (benchmarking the difference).
    let fuse = std::env::var("WGPTQ_FUSE_RESIDUAL").map_or(true, |v| v != "0");
    if fuse && matches!(lin, GpuLinear::Gptq(_)) {
        let atomic = pipes.gpu.caps.float_atomics && m.splits > 1;
        let epi = if atomic {
            Epilogue::ResidualAtomic { x: &b.x }
        } else {
            Epilogue::Residual {
                x: &b.x,
                ss: &b.ss,
                counters: &b.counters,
            }
        };
        d.extend(named(
            linear::linear_dispatches_epi(
                pipes,
                &b.step,
                lin,
                input,
                &b.res_part,
                &b.dummy,
                m,
                pro,
                epi,
            )?,
            op,
        ));
        Ok(!atomic)
    } else {
        d.extend(named(
            linear::linear_dispatches(pipes, &b.step, lin, input, &b.res_part, &b.dummy, m, pro)?,
            op,
        ));
        d.push(
            kernels::reduce_add(pipes, &b.step, &b.res_part, &b.x, &b.ss, h, m.splits, 1)?
                .named("residual"),
        );
        Ok(true)
    }
}

/// Final norm, lm_head (the step's last row, or every row) and, for the last row, the GPU argmax.
fn head(
    d: &mut Vec<Dispatch>,
    pipes: &Pipelines,
    w: &GpuWeights,
    b: &Activations,
    cap: u32,
    last_only: bool,
) -> Result<()> {
    let c = &w.config;
    let h = c.hidden_size as u32;
    let v = c.vocab_size as u32;
    d.push(
        kernels::rmsnorm(
            pipes,
            &b.step,
            &b.x,
            &w.final_norm,
            &b.xn,
            h,
            c.rms_norm_eps,
            cap,
        )?
        .named("final_norm"),
    );
    let mut m = LinearMode::new(cap, false, v);
    m.last_only = last_only;
    d.extend(named(
        linear::linear_dispatches(
            pipes,
            &b.step,
            &w.lm_head,
            &b.xn,
            &b.logits,
            &b.dummy,
            m,
            Prologue::None,
        )?,
        "lm_head",
    ));
    if last_only {
        d.push(kernels::argmax(
            pipes, &b.step, &b.logits, &b.tokens, &b.out_ids, v, 0,
        )?);
    }
    Ok(())
}

/// The prefill step (a chunk of tokens): GEMMs, separate RMSNorm and SiLU·mul, residual epilogues.
pub fn prefill(
    pipes: &Pipelines,
    w: &GpuWeights,
    b: &Activations,
    shape: PlanShape,
) -> Result<Vec<Dispatch>> {
    let c = &w.config;
    let step = &b.step;
    let cap = shape.chunk.max(1) as u32;
    let h = c.hidden_size as u32;
    let eps = c.rms_norm_eps;
    let qkv_n = ((c.num_heads + 2 * c.num_kv_heads) * c.head_dim) as u32;
    let inter = c.intermediate_size as u32;
    let attn = attn_shape(w, shape);
    /// What a prefill linear reads.
    enum Input<'a> {
        /// x itself; act-order gathers it into `scratch` (a buffer free at this point of the layer), so the
        /// GEMM's loads are coalesced.
        Plain(&'a wgpu::Buffer, &'a wgpu::Buffer),
        /// RMSNorm(x) with `weight`: applied by the act-order gathers themselves where every part has one,
        /// else written to `xn` first and read as `Plain(xn, scratch)`.
        Normed {
            x: &'a wgpu::Buffer,
            weight: &'a wgpu::Buffer,
            eps: f32,
            /// row length of x (the hidden size)
            n: u32,
            xn: &'a wgpu::Buffer,
            scratch: &'a wgpu::Buffer,
        },
        /// silu(gate) · up of gate|up ([cap, 2 I]), made in `act` ([cap, I]): by the act-order gather itself
        /// where the prepared rows fit `act`, by silu_mul otherwise.
        SwiGlu(&'a wgpu::Buffer, &'a wgpu::Buffer, u32),
    }
    #[allow(clippy::too_many_arguments)]
    fn linears<'a>(
        d: &mut Vec<Dispatch>,
        pipes: &Pipelines,
        b: &Activations,
        cap: u32,
        parts: &[(&'a GpuLinear, u32)],
        input: Input<'_>,
        y: &wgpu::Buffer,
        stride: u32,
        add: bool,
        splits: u32,
        op: &'static str,
    ) -> Result<()> {
        // The act-order permutation of a part whose prepared rows fit the scratch buffer.
        // (`WGPTQ_NO_GATHER=op+op`: those ops' GEMMs gather through perm themselves; measurements)
        let own =
            std::env::var("WGPTQ_NO_GATHER").is_ok_and(|v| v.split([',', '+']).any(|o| o == op));
        let gathered = |lin: &'a GpuLinear, scratch: &wgpu::Buffer| match lin {
            GpuLinear::Gptq(g) if !own && g.kp as u64 <= scratch.size() / 4 / cap as u64 => {
                g.perm.as_ref().map(|p| (p, g))
            }
            _ => None,
        };
        let (src, target, how) = match input {
            Input::Plain(x, scratch) => (x, scratch, GatherOp::Plain),
            Input::Normed {
                x,
                weight,
                eps,
                n,
                xn,
                scratch,
            } => {
                if parts.iter().all(|(l, _)| gathered(l, scratch).is_some()) {
                    (x, scratch, GatherOp::Norm { weight, eps })
                } else {
                    d.push(kernels::rmsnorm(
                        pipes, &b.step, x, weight, xn, n, eps, cap,
                    )?);
                    (xn, scratch, GatherOp::Plain)
                }
            }
            Input::SwiGlu(gate_up, act, inter) => (gate_up, act, GatherOp::SwiGlu(inter)),
        };
        for (lin, col0) in parts {
            let mut m = LinearMode::new(cap, true, stride);
            m.y_col0 = *col0;
            m.add = add;
            m.splits = splits;
            let x = match (gathered(lin, target), how) {
                (Some((perm, g)), how) => {
                    let x_stride = match how {
                        GatherOp::SwiGlu(i) => 2 * i,
                        _ => g.k as u32,
                    };
                    d.push(
                        kernels::gather(
                            pipes,
                            &b.step,
                            src,
                            perm,
                            target,
                            g.kp as u32,
                            x_stride,
                            cap,
                            how,
                        )?
                        .named(op),
                    );
                    m.pre_permuted = true;
                    target
                }
                (None, GatherOp::SwiGlu(inter)) => {
                    d.push(kernels::silu_mul(pipes, &b.step, src, target, inter, cap)?);
                    target
                }
                (None, _) => src,
            };
            d.extend(named(
                linear::linear_dispatches(pipes, &b.step, lin, x, y, &b.dummy, m, Prologue::None)?,
                op,
            ));
        }
        Ok(())
    }
    // q|k|v split over K on the matrix units (linear::prefill_qkv_splits), its slabs in gate_up's buffer, which is
    // free until the gate|up GEMM.
    let m = LinearMode::new(cap, true, qkv_n);
    let qkv_splits = w
        .layers
        .iter()
        .flat_map(|l| &l.qkv)
        .map(|(lin, _)| match lin {
            GpuLinear::Gptq(g) if linear::coop_choice(pipes, g, &m).ok().flatten().is_some() => {
                linear::prefill_qkv_splits(g.kp)
            }
            _ => 1,
        })
        .min()
        .unwrap_or(1);
    let slab_bytes = u64::from(cap) * u64::from(qkv_n) * 4;
    let qkv_splits = if qkv_splits > 1 && b.gate_up.size() >= u64::from(qkv_splits) * slab_bytes {
        qkv_splits
    } else {
        1
    };
    let qkv_out = if qkv_splits > 1 { &b.gate_up } else { &b.qkv };
    fn refs(parts: &[(GpuLinear, u32)]) -> Vec<(&GpuLinear, u32)> {
        parts.iter().map(|(l, c)| (l, *c)).collect()
    }
    let mut d = kernels::embed(pipes, step, &b.tokens, &w.embed, &b.x, h, cap)?;
    for (i, l) in w.layers.iter().enumerate() {
        let (kc, vc) = &b.kv[i];
        linears(
            &mut d,
            pipes,
            b,
            cap,
            &refs(&l.qkv),
            Input::Normed {
                x: &b.x,
                weight: &l.input_norm,
                eps,
                n: h,
                xn: &b.xn,
                scratch: &b.act,
            },
            qkv_out,
            qkv_n,
            false,
            qkv_splits,
            "qkv",
        )?;
        d.push(kernels::rope_kv(
            pipes, step, qkv_out, &w.rope, &b.q, kc, vc, attn, cap, qkv_splits,
        )?);
        d.extend(kernels::attention(
            pipes,
            step,
            &b.q,
            kc,
            vc,
            &b.attn,
            &b.attn_part,
            attn,
            cap,
            1,
        )?);
        linears(
            &mut d,
            pipes,
            b,
            cap,
            &[(&l.o, 0)],
            Input::Plain(&b.attn, &b.act),
            &b.x,
            h,
            true,
            1,
            "o_proj",
        )?;
        linears(
            &mut d,
            pipes,
            b,
            cap,
            &refs(&l.gate_up),
            Input::Normed {
                x: &b.x,
                weight: &l.post_norm,
                eps,
                n: h,
                xn: &b.xn,
                scratch: &b.act,
            },
            &b.gate_up,
            2 * inter,
            false,
            1,
            "gate_up",
        )?;
        linears(
            &mut d,
            pipes,
            b,
            cap,
            &[(&l.down, 0)],
            Input::SwiGlu(&b.gate_up, &b.act, inter),
            &b.x,
            h,
            true,
            1,
            "down",
        )?;
    }
    head(&mut d, pipes, w, b, cap, !shape.all_logits)?;
    Ok(d)
}
