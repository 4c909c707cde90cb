//! Layer 2, weight preparation: GPTQ tensors turned into the layout the kernels read. Pure CPU functions.
//!
//! Act-order is resolved here, once: the K rows are stably sorted by group (g_idx) so each group is a
//! contiguous run of `group_rows` rows and the kernels never look up g_idx per element; the permutation is kept
//! to gather the activations. Groups with fewer members than `group_rows` (arbitrary g_idx) are padded with
//! rows whose permutation entry is [`PAD`] (the kernels read x = 0 there). v1 zero points get their +1 here.

use half::f16;

use crate::model::{CheckpointFormat, QuantConfig};

/// Permutation entry of a padding row.
pub const PAD: u32 = u32::MAX;

/// A GPTQ matrix in kernel layout.
#[derive(Debug, Clone, PartialEq)]
pub struct PreparedGptq {
    pub bits: u32,
    /// Logical input size K (row stride of the activations).
    pub k: usize,
    /// Output size N.
    pub n: usize,
    /// Prepared rows (multiple of 32 / bits).
    pub kp: usize,
    /// Prepared rows per group; group g owns rows [g * group_rows, (g + 1) * group_rows) ∩ [0, kp).
    pub group_rows: usize,
    pub groups: usize,
    /// [kp / pack, n] packed codes, LSB first along K.
    pub qweight: Vec<u32>,
    /// [groups, n]
    pub scales: Vec<f16>,
    /// [groups, n] zero points, or `None` when every zero equals `zero_const`.
    pub zeros: Option<Vec<f16>>,
    pub zero_const: f32,
    /// [kp] prepared row → input index, `None` when the identity (no act-order reordering needed).
    pub perm: Option<Vec<u32>>,
}

/// Raw GPTQ tensors of one linear, as read from the checkpoint (shapes already validated).
pub struct GptqTensors<'a> {
    /// [k / pack, n]
    pub qweight: &'a [u32],
    /// [groups, n / pack]
    pub qzeros: &'a [u32],
    /// [groups, n]
    pub scales: &'a [f16],
    /// [k]; `None` = k / group_size
    pub g_idx: Option<&'a [i32]>,
    pub k: usize,
    pub n: usize,
}

fn code(words: &[u32], n: usize, bits: usize, k: usize, col: usize) -> u32 {
    let pf = 32 / bits;
    (words[(k / pf) * n + col] >> (bits * (k % pf))) & ((1u32 << bits) - 1)
}

/// Where the prepared rows of a GPTQ matrix come from: decided by g_idx alone (no codes needed), so the memory
/// estimate ([`crate::gpu::memory`]) and [`prepare_gptq`] cannot disagree.
#[derive(Debug, Clone, PartialEq)]
pub struct RowOrder {
    /// Prepared rows (multiple of 32 / bits).
    pub kp: usize,
    /// Prepared rows per group.
    pub group_rows: usize,
    /// [kp] prepared row → input index ([`PAD`] for padding), `None` when the identity.
    pub perm: Option<Vec<u32>>,
}

/// The row order of a matrix with `k` inputs in `groups` groups. `g_idx` values must lie in [0, groups).
pub fn row_order(g_idx: Option<&[i32]>, k: usize, groups: usize, quant: &QuantConfig) -> RowOrder {
    let pf = 32 / quant.bits as usize;
    let gs = quant.group_size.unwrap_or(k).max(1);
    let group_of = |row: usize| -> usize {
        match g_idx {
            Some(g) => g[row] as usize,
            None => (row / gs).min(groups.saturating_sub(1)),
        }
    };
    let identity = gs % pf == 0 && (0..k).all(|row| group_of(row) == row / gs);
    if identity {
        return RowOrder {
            kp: k,
            group_rows: gs,
            perm: None,
        };
    }
    // Stable counting sort of rows by group.
    let mut counts = vec![0usize; groups];
    for row in 0..k {
        counts[group_of(row)] += 1;
    }
    let group_rows = counts
        .iter()
        .map(|c| c.next_multiple_of(pf))
        .max()
        .unwrap_or(pf)
        .max(pf);
    let last = groups.saturating_sub(1);
    let kp = last * group_rows
        + counts
            .get(last)
            .map_or(0, |c| c.next_multiple_of(pf))
            .max(if groups == 0 { 0 } else { pf });
    let mut perm = vec![PAD; kp];
    let mut next: Vec<usize> = (0..groups).map(|g| g * group_rows).collect();
    for row in 0..k {
        let g = group_of(row);
        perm[next[g]] = row as u32;
        next[g] += 1;
    }
    RowOrder {
        kp,
        group_rows,
        perm: Some(perm),
    }
}

/// Real zero points [groups, n] of packed `qzeros` (+1 for v1, masked first as AutoGPTQ's qlinear_cuda does).
pub fn zero_points(qzeros: &[u32], n: usize, groups: usize, quant: &QuantConfig) -> Vec<f32> {
    let bits = quant.bits as usize;
    let pf = 32 / bits;
    let mut zvals = Vec::with_capacity(groups * n);
    for g in 0..groups {
        for col in 0..n {
            // qzeros are packed along N: word [g, col / pf], field (col % pf).
            let w = qzeros[g * (n / pf) + col / pf];
            let s = (w >> (bits * (col % pf))) & ((1u32 << bits) - 1);
            let z = match quant.format {
                CheckpointFormat::V1 => s + 1,
                CheckpointFormat::V2 => s,
            };
            zvals.push(z as f32);
        }
    }
    zvals
}

/// The zero value every group shares (the first one), and whether any differs from it (then the zeros need a
/// buffer).
pub fn zero_mode(zvals: &[f32]) -> (f32, bool) {
    let zero_const = zvals.first().copied().unwrap_or(0.0);
    (zero_const, zvals.iter().any(|&z| z != zero_const))
}

/// What decides whether prepared matrices fuse along N ([`concat_n`]), borrowed from a [`PreparedGptq`] or a
/// [`crate::gpu::memory`] layout.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FuseKey<'a> {
    pub bits: u32,
    pub k: usize,
    pub kp: usize,
    pub group_rows: usize,
    pub groups: usize,
    pub perm: Option<&'a [u32]>,
    pub zero_buf: bool,
    pub zero_const: f32,
}

impl FuseKey<'_> {
    /// Same prepared rows, groups, permutation and zero mode: one kernel can run both as one matrix.
    pub fn fuses_with(&self, o: &FuseKey<'_>) -> bool {
        self.bits == o.bits
            && self.k == o.k
            && self.kp == o.kp
            && self.group_rows == o.group_rows
            && self.groups == o.groups
            && self.perm == o.perm
            && self.zero_buf == o.zero_buf
            && (self.zero_buf || self.zero_const == o.zero_const)
    }
}

impl PreparedGptq {
    pub fn fuse_key(&self) -> FuseKey<'_> {
        FuseKey {
            bits: self.bits,
            k: self.k,
            kp: self.kp,
            group_rows: self.group_rows,
            groups: self.groups,
            perm: self.perm.as_deref(),
            zero_buf: self.zeros.is_some(),
            zero_const: self.zero_const,
        }
    }
}

/// Prepares one GPTQ matrix. `g_idx` values must already be validated to lie in [0, groups).
pub fn prepare_gptq(t: &GptqTensors<'_>, quant: &QuantConfig) -> PreparedGptq {
    let bits = quant.bits as usize;
    let pf = 32 / bits;
    let (k, n) = (t.k, t.n);
    let groups = t.scales.len() / n.max(1);

    let zvals = zero_points(t.qzeros, n, groups, quant);
    let (zero_const, zero_buf) = zero_mode(&zvals);
    let zeros = zero_buf.then(|| zvals.iter().map(|&z| f16::from_f32(z)).collect());

    let RowOrder {
        kp,
        group_rows,
        perm,
    } = row_order(t.g_idx, k, groups, quant);
    let Some(perm) = perm else {
        return PreparedGptq {
            bits: quant.bits,
            k,
            n,
            kp,
            group_rows,
            groups,
            qweight: t.qweight.to_vec(),
            scales: t.scales.to_vec(),
            zeros,
            zero_const,
            perm: None,
        };
    };

    // Repack codes row by row, in parallel over column ranges.
    let mut qweight = vec![0u32; (kp / pf) * n];
    let cols_per = n.div_ceil(crate::parallel::cores().min(16)).max(1);
    let starts: Vec<usize> = (0..n).step_by(cols_per).collect();
    let chunks = crate::parallel::map(&starts, starts.len(), |&c0| {
        let c1 = (c0 + cols_per).min(n);
        let width = c1 - c0;
        let mut out = vec![0u32; (kp / pf) * width];
        for (r, &src) in perm.iter().enumerate() {
            if src == PAD {
                continue;
            }
            let shift = bits * (r % pf);
            let orow = &mut out[(r / pf) * width..(r / pf + 1) * width];
            for (i, o) in orow.iter_mut().enumerate() {
                *o |= code(t.qweight, n, bits, src as usize, c0 + i) << shift;
            }
        }
        Ok::<_, std::convert::Infallible>((c0, out))
    });
    let chunks = match chunks {
        Ok(c) => c,
        Err(never) => match never {},
    };
    for (c0, out) in chunks {
        let width = out.len() / (kp / pf).max(1);
        for r in 0..kp / pf {
            qweight[r * n + c0..r * n + c0 + width]
                .copy_from_slice(&out[r * width..(r + 1) * width]);
        }
    }

    PreparedGptq {
        bits: quant.bits,
        k,
        n,
        kp,
        group_rows,
        groups,
        qweight,
        scales: t.scales.to_vec(),
        zeros,
        zero_const,
        perm: Some(perm),
    }
}

/// The act-order permutation of `p` when it is a bijection of the inputs (no padding rows): then whoever
/// produces this matrix's input can write it in the prepared order, and the matrix needs no gather. For the
/// down projection that producer is gate|up: its output columns permuted by this order ([`permute_columns`])
/// make silu(gate) · up come out in down's prepared order, so prefill's SwiGLU pass reads and writes
/// coalesced instead of gathering (3.7 ms of a 512-token chunk on the H100, docs/PERF.md), and the decode GEMV
/// stages it without index loads. `None` for identity orders and padded ones.
pub fn input_order(p: &PreparedGptq) -> Option<&[u32]> {
    plain_order(p.perm.as_deref(), p.kp, p.k)
}

/// [`input_order`] from a matrix's row order alone (the memory estimate has no codes).
pub fn plain_order(perm: Option<&[u32]>, kp: usize, k: usize) -> Option<&[u32]> {
    let perm = perm?;
    (kp == k && !perm.contains(&PAD)).then_some(perm)
}

/// Reorders the output columns of `p` in place: column c becomes old column `order[c]`. Returns false (nothing
/// changed) unless `order` is a permutation of 0..n.
pub fn permute_columns(p: &mut PreparedGptq, order: &[u32]) -> bool {
    let n = p.n;
    let mut seen = vec![false; n];
    let bijection = order.len() == n
        && order
            .iter()
            .all(|&c| (c as usize) < n && !std::mem::replace(&mut seen[c as usize], true));
    if !bijection || n == 0 {
        return false;
    }
    fn gather<T: Copy>(v: &[T], n: usize, order: &[u32]) -> Vec<T> {
        v.chunks_exact(n)
            .flat_map(|row| order.iter().map(|&c| row[c as usize]))
            .collect()
    }
    p.qweight = gather(&p.qweight, n, order);
    p.scales = gather(&p.scales, n, order);
    if let Some(z) = &p.zeros {
        p.zeros = Some(gather(z, n, order));
    }
    true
}

/// Concatenates matrices that read the same input along N (q|k|v, gate|up), so one dispatch computes them.
/// Returns `None` when their layouts differ (different g_idx, bits or zero mode): they then run separately.
pub fn concat_n(parts: &[&PreparedGptq]) -> Option<PreparedGptq> {
    let first = parts.first()?;
    let key = first.fuse_key();
    let same = parts.iter().all(|p| p.fuse_key().fuses_with(&key));
    if !same {
        return None;
    }
    let n: usize = parts.iter().map(|p| p.n).sum();
    let rows = first.kp / (32 / first.bits as usize);
    let mut qweight = Vec::with_capacity(rows * n);
    for r in 0..rows {
        for p in parts {
            qweight.extend_from_slice(&p.qweight[r * p.n..(r + 1) * p.n]);
        }
    }
    let cat_groups = |get: &dyn Fn(&PreparedGptq) -> &[f16]| {
        let mut out = Vec::with_capacity(first.groups * n);
        for g in 0..first.groups {
            for p in parts {
                out.extend_from_slice(&get(p)[g * p.n..(g + 1) * p.n]);
            }
        }
        out
    };
    let scales = cat_groups(&|p| &p.scales);
    let zeros = first
        .zeros
        .as_ref()
        .map(|_| cat_groups(&|p| p.zeros.as_deref().unwrap_or(&[])));
    Some(PreparedGptq {
        n,
        qweight,
        scales,
        zeros,
        perm: first.perm.clone(),
        ..(*first).clone()
    })
}

/// Reference: the dense weight W[n, k] (f32) a prepared matrix represents, in the original input order.
pub fn dequantize_prepared(p: &PreparedGptq) -> Vec<f32> {
    let bits = p.bits as usize;
    let mut w = vec![0f32; p.n * p.k];
    for r in 0..p.kp {
        let src = match &p.perm {
            Some(perm) if perm[r] == PAD => continue,
            Some(perm) => perm[r] as usize,
            None => r,
        };
        let g = (r / p.group_rows).min(p.groups - 1);
        for col in 0..p.n {
            let q = code(&p.qweight, p.n, bits, r, col) as f32;
            let s = p.scales[g * p.n + col].to_f32();
            let z = p
                .zeros
                .as_ref()
                .map(|z| z[g * p.n + col].to_f32())
                .unwrap_or(p.zero_const);
            w[col * p.k + src] = s * (q - z);
        }
    }
    w
}
