//! A plain f32 forward pass on the CPU: the oracle the GPU kernels are checked against.
//!
//! It follows HF transformers' Llama/Mistral code line by line (gptq-mistral-facts §3) and favours being
//! obviously right over being fast: weights are dequantized once to f32, every token runs through the layers
//! one at a time, and nothing is fused. It is still quick enough for test-sized models (a 135M model decodes
//! in well under a second per token), and [`CpuModel::forward_traced`] exposes every intermediate vector so
//! a GPU debug mode can find the first op that drifts.

use half::f16;

use crate::error::{Error, Result};
use crate::model::{Checkpoint, Linear, ModelConfig, ModelFiles, QuantConfig};

/// Unpacks and dequantizes one GPTQ linear to W as [n, k] row-major:
/// `W[n, k] = scale[g, n] * (q(k, n) - z(g, n))`, `g = g_idx[k]` (or `k / group_size`), with the real zero
/// `z = stored + 1` for v1 checkpoints and `stored` for v2.
///
/// # Panics
/// If a slice is shorter than `k`, `n` and the quant settings imply, or a g_idx entry is out of range (both are
/// rejected when the model is opened).
pub fn dequantize_gptq(
    qweight: &[u32],
    qzeros: &[u32],
    scales: &[f16],
    g_idx: Option<&[i32]>,
    k: usize,
    n: usize,
    quant: &QuantConfig,
) -> Vec<f32> {
    let bits = quant.bits as usize;
    let pf = quant.pack_factor();
    let mask = (1u32 << bits) - 1;
    let groups = quant.num_groups(k);
    let gs = quant.group_size.unwrap_or(k).max(1);
    assert!(
        qweight.len() >= k / pf * n,
        "qweight too short for k={k}, n={n}"
    );
    assert!(
        qzeros.len() >= groups * (n / pf),
        "qzeros too short for {groups} groups"
    );
    assert!(
        scales.len() >= groups * n,
        "scales too short for {groups} groups"
    );
    if let Some(g) = g_idx {
        assert!(g.len() >= k, "g_idx too short for k={k}");
    }

    // Real zero point and scale per (group, column), in f32.
    let zero_offset = quant.zero_offset() as f32;
    let mut zeros = vec![0f32; groups * n];
    for g in 0..groups {
        for c in 0..n {
            let word = qzeros[g * (n / pf) + c / pf];
            let stored = (word >> (bits * (c % pf))) & mask;
            zeros[g * n + c] = stored as f32 + zero_offset;
        }
    }

    let mut w = vec![0f32; n * k];
    for row in 0..k {
        let g = match g_idx {
            Some(gi) => {
                let g = gi[row];
                assert!(
                    g >= 0 && (g as usize) < groups,
                    "g_idx[{row}] = {g} out of range"
                );
                g as usize
            }
            None => row / gs,
        };
        let shift = bits * (row % pf);
        let words = &qweight[(row / pf) * n..(row / pf + 1) * n];
        for (c, &word) in words.iter().enumerate() {
            let q = ((word >> shift) & mask) as f32;
            let s = scales[g * n + c].to_f32();
            w[c * k + row] = s * (q - zeros[g * n + c]);
        }
    }
    w
}

/// A linear layer as an f32 [n, k] matrix (plus bias), dequantized if GPTQ.
#[derive(Debug, Clone)]
pub struct DenseLinear {
    pub k: usize,
    pub n: usize,
    /// [n, k] row-major
    pub w: Vec<f32>,
    /// [n]
    pub bias: Option<Vec<f32>>,
}

impl DenseLinear {
    /// Reads (and for GPTQ dequantizes) a linear from the checkpoint.
    pub fn load(checkpoint: &Checkpoint, linear: &Linear) -> DenseLinear {
        match linear {
            Linear::F16 { weight, k, n } => DenseLinear {
                k: *k,
                n: *n,
                w: checkpoint.f16_to_f32(weight),
                bias: None,
            },
            Linear::Gptq {
                qweight,
                qzeros,
                scales,
                g_idx,
                bias,
                k,
                n,
                quant,
            } => {
                let g: Option<Vec<i32>> = g_idx
                    .as_ref()
                    .map(|t| checkpoint.words(t).into_iter().map(|x| x as i32).collect());
                let w = dequantize_gptq(
                    &checkpoint.words(qweight),
                    &checkpoint.words(qzeros),
                    &checkpoint.halfs(scales),
                    g.as_deref(),
                    *k,
                    *n,
                    quant,
                );
                DenseLinear {
                    k: *k,
                    n: *n,
                    w,
                    bias: bias.as_ref().map(|b| checkpoint.f16_to_f32(b)),
                }
            }
        }
    }

    /// `y = W x (+ b)`.
    pub fn forward(&self, x: &[f32]) -> Vec<f32> {
        let mut y = matvec(&self.w, x, self.n, self.k);
        if let Some(b) = &self.bias {
            y.iter_mut().zip(b).for_each(|(y, b)| *y += b);
        }
        y
    }
}

/// `W x` for W [n, k] row-major.
pub fn matvec(w: &[f32], x: &[f32], n: usize, k: usize) -> Vec<f32> {
    debug_assert_eq!(w.len(), n * k);
    debug_assert_eq!(x.len(), k);
    w.chunks_exact(k).map(|row| dot(row, x)).collect()
}

/// Dot product with eight independent accumulators, so the compiler can vectorize it (a single f32
/// accumulator would force strictly sequential adds).
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    let mut sum: f32 = acc.iter().sum();
    for (x, y) in ra.iter().zip(rb) {
        sum += x * y;
    }
    sum
}

/// RMSNorm as HF computes it in f32: `x * rsqrt(mean(x²) + eps) * weight`.
pub fn rms_norm(x: &[f32], weight: &[f32], eps: f32) -> Vec<f32> {
    let mean_sq = x.iter().map(|v| v * v).sum::<f32>() / x.len() as f32;
    let inv = 1.0 / (mean_sq + eps).sqrt();
    x.iter().zip(weight).map(|(v, w)| v * inv * w).collect()
}

/// Rotary embedding of `heads` consecutive heads of size `head_dim` at absolute position `pos`, split-half
/// pairing (HF `rotate_half`): element i pairs with i + head_dim/2, frequency `theta^(-2i/head_dim)`.
pub fn apply_rope(x: &mut [f32], heads: usize, head_dim: usize, pos: usize, theta: f32) {
    let half = head_dim / 2;
    let (cos, sin): (Vec<f32>, Vec<f32>) = (0..half)
        .map(|i| {
            let inv_freq = 1.0 / (theta as f64).powf(2.0 * i as f64 / head_dim as f64);
            let angle = pos as f64 * inv_freq;
            (angle.cos() as f32, angle.sin() as f32)
        })
        .unzip();
    for h in 0..heads {
        let v = &mut x[h * head_dim..(h + 1) * head_dim];
        for i in 0..half {
            let (a, b) = (v[i], v[i + half]);
            v[i] = a * cos[i] - b * sin[i];
            v[i + half] = b * cos[i] + a * sin[i];
        }
    }
}

/// In-place numerically stable softmax.
pub fn softmax(x: &mut [f32]) {
    let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0.0;
    for v in x.iter_mut() {
        *v = (*v - max).exp();
        sum += *v;
    }
    x.iter_mut().for_each(|v| *v /= sum);
}

pub fn silu(x: f32) -> f32 {
    x / (1.0 + (-x).exp())
}

/// Where an intermediate vector was observed in [`CpuModel::forward_traced`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TracePoint {
    /// Absolute position of the token.
    pub pos: usize,
    /// Decoder layer, `None` for embedding, final norm and logits.
    pub layer: Option<usize>,
    /// One of: embed, attn_norm, q, k, v (q and k after RoPE), attn (concatenated heads before o_proj), o,
    /// resid_attn, mlp_norm, gate, up, act (silu(gate)*up), down, resid_mlp, final_norm, logits.
    pub op: &'static str,
}

struct CpuLayer {
    input_norm: Vec<f32>,
    q: DenseLinear,
    k: DenseLinear,
    v: DenseLinear,
    o: DenseLinear,
    post_norm: Vec<f32>,
    gate: DenseLinear,
    up: DenseLinear,
    down: DenseLinear,
}

/// The whole model in f32 with a growing KV cache.
pub struct CpuModel {
    config: ModelConfig,
    /// [vocab, hidden]
    embed: Vec<f32>,
    layers: Vec<CpuLayer>,
    final_norm: Vec<f32>,
    /// `None` when tied: the embedding matrix is the head.
    lm_head: Option<DenseLinear>,
    /// Per layer: keys [pos, kv_heads * head_dim] after RoPE.
    k_cache: Vec<Vec<f32>>,
    /// Per layer: values [pos, kv_heads * head_dim].
    v_cache: Vec<Vec<f32>>,
    pos: usize,
}

impl CpuModel {
    /// Dequantizes every weight to f32 (about 4 bytes per parameter of memory).
    pub fn new(files: &ModelFiles) -> Result<CpuModel> {
        let ck = &files.checkpoint;
        let w = &files.weights;
        let layers = w
            .layers
            .iter()
            .map(|l| CpuLayer {
                input_norm: ck.f16_to_f32(&l.input_norm),
                q: DenseLinear::load(ck, &l.q),
                k: DenseLinear::load(ck, &l.k),
                v: DenseLinear::load(ck, &l.v),
                o: DenseLinear::load(ck, &l.o),
                post_norm: ck.f16_to_f32(&l.post_norm),
                gate: DenseLinear::load(ck, &l.gate),
                up: DenseLinear::load(ck, &l.up),
                down: DenseLinear::load(ck, &l.down),
            })
            .collect();
        let tied = matches!(&w.lm_head, Linear::F16 { weight, .. } if *weight == w.embed);
        let n_layers = files.config.num_layers;
        Ok(CpuModel {
            config: files.config.clone(),
            embed: ck.f16_to_f32(&w.embed),
            layers,
            final_norm: ck.f16_to_f32(&w.final_norm),
            lm_head: if tied {
                None
            } else {
                Some(DenseLinear::load(ck, &w.lm_head))
            },
            k_cache: vec![Vec::new(); n_layers],
            v_cache: vec![Vec::new(); n_layers],
            pos: 0,
        })
    }

    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    /// Tokens in the KV cache (the next token's position).
    pub fn position(&self) -> usize {
        self.pos
    }

    /// Empties the KV cache.
    pub fn reset(&mut self) {
        self.k_cache.iter_mut().for_each(Vec::clear);
        self.v_cache.iter_mut().for_each(Vec::clear);
        self.pos = 0;
    }

    /// Appends `tokens` to the context and returns the logits after each of them.
    pub fn forward(&mut self, tokens: &[u32]) -> Result<Vec<Vec<f32>>> {
        self.forward_traced(tokens, &mut |_, _| {})
    }

    /// [`forward`](Self::forward), calling `trace` with every intermediate vector.
    pub fn forward_traced(
        &mut self,
        tokens: &[u32],
        trace: &mut dyn FnMut(TracePoint, &[f32]),
    ) -> Result<Vec<Vec<f32>>> {
        let vocab = self.config.vocab_size;
        if let Some(&bad) = tokens.iter().find(|&&t| t as usize >= vocab) {
            return Err(Error::InvalidArgument {
                name: "token id".into(),
                value: bad.to_string(),
                reason: format!("vocabulary has {vocab} tokens"),
            });
        }
        Ok(tokens.iter().map(|&t| self.step(t, trace)).collect())
    }

    fn step(&mut self, token: u32, trace: &mut dyn FnMut(TracePoint, &[f32])) -> Vec<f32> {
        let c = &self.config;
        let (h, pos) = (c.hidden_size, self.pos);
        let at = |layer: Option<usize>, op: &'static str| TracePoint { pos, layer, op };
        let t = token as usize;
        let mut x = self.embed[t * h..(t + 1) * h].to_vec();
        trace(at(None, "embed"), &x);

        for (li, layer) in self.layers.iter().enumerate() {
            let l = Some(li);
            let xn = rms_norm(&x, &layer.input_norm, c.rms_norm_eps);
            trace(at(l, "attn_norm"), &xn);
            let mut q = layer.q.forward(&xn);
            let mut k = layer.k.forward(&xn);
            let v = layer.v.forward(&xn);
            apply_rope(&mut q, c.num_heads, c.head_dim, pos, c.rope_theta);
            apply_rope(&mut k, c.num_kv_heads, c.head_dim, pos, c.rope_theta);
            trace(at(l, "q"), &q);
            trace(at(l, "k"), &k);
            trace(at(l, "v"), &v);
            self.k_cache[li].extend_from_slice(&k);
            self.v_cache[li].extend_from_slice(&v);

            let attn = attention(c, &q, &self.k_cache[li], &self.v_cache[li], pos);
            trace(at(l, "attn"), &attn);
            let o = layer.o.forward(&attn);
            trace(at(l, "o"), &o);
            x.iter_mut().zip(&o).for_each(|(x, o)| *x += o);
            trace(at(l, "resid_attn"), &x);

            let xn = rms_norm(&x, &layer.post_norm, c.rms_norm_eps);
            trace(at(l, "mlp_norm"), &xn);
            let gate = layer.gate.forward(&xn);
            let up = layer.up.forward(&xn);
            trace(at(l, "gate"), &gate);
            trace(at(l, "up"), &up);
            let act: Vec<f32> = gate.iter().zip(&up).map(|(g, u)| silu(*g) * u).collect();
            trace(at(l, "act"), &act);
            let down = layer.down.forward(&act);
            trace(at(l, "down"), &down);
            x.iter_mut().zip(&down).for_each(|(x, d)| *x += d);
            trace(at(l, "resid_mlp"), &x);
        }

        let xn = rms_norm(&x, &self.final_norm, c.rms_norm_eps);
        trace(at(None, "final_norm"), &xn);
        let logits = match &self.lm_head {
            Some(head) => head.forward(&xn),
            None => matvec(&self.embed, &xn, c.vocab_size, h),
        };
        trace(at(None, "logits"), &logits);
        self.pos += 1;
        logits
    }
}

/// Causal (optionally sliding-window) grouped-query attention of one query position over the cache.
/// Query head `h` reads kv head `h / (heads / kv_heads)`; with a window W the keys are `pos - W < j <= pos`.
fn attention(c: &ModelConfig, q: &[f32], keys: &[f32], values: &[f32], pos: usize) -> Vec<f32> {
    let (d, kv_dim) = (c.head_dim, c.kv_dim());
    let first = match c.sliding_window {
        Some(w) => (pos + 1).saturating_sub(w),
        None => 0,
    };
    let scale = 1.0 / (d as f32).sqrt();
    let mut out = vec![0f32; c.q_dim()];
    let mut scores = vec![0f32; pos + 1 - first];
    for h in 0..c.num_heads {
        let kvh = h / c.group_size();
        let qh = &q[h * d..(h + 1) * d];
        for (s, j) in scores.iter_mut().zip(first..=pos) {
            let kj = &keys[j * kv_dim + kvh * d..j * kv_dim + (kvh + 1) * d];
            *s = dot(qh, kj) * scale;
        }
        softmax(&mut scores);
        let oh = &mut out[h * d..(h + 1) * d];
        for (p, j) in scores.iter().zip(first..=pos) {
            let vj = &values[j * kv_dim + kvh * d..j * kv_dim + (kvh + 1) * d];
            oh.iter_mut().zip(vj).for_each(|(o, v)| *o += p * v);
        }
    }
    out
}

/// Indices of the `k` largest values, largest first (ties: lower index first).
pub fn top_k(values: &[f32], k: usize) -> Vec<(usize, f32)> {
    let mut idx: Vec<usize> = (0..values.len()).collect();
    idx.sort_by(|&a, &b| values[b].total_cmp(&values[a]).then(a.cmp(&b)));
    idx.truncate(k);
    idx.into_iter().map(|i| (i, values[i])).collect()
}
