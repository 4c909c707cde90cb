//! Linear layers on the GPU: the one place that turns the closed [`crate::model::Linear`] kind (after
//! preparation) into buffers and dispatches, so the planner handles GPTQ and f16 the same way.

use bytemuck::{Pod, Zeroable};
use half::f16;

use super::context::Gpu;
use super::ops::{Dispatch, Pipelines};
use crate::error::{Error, Result};
use crate::prep::PreparedGptq;

mod variants;
pub use variants::*;

/// GPTQ matrix in GPU buffers (layout of [`PreparedGptq`]).
pub struct GpuGptq {
    pub bits: u32,
    pub k: usize,
    pub n: usize,
    pub kp: usize,
    pub group_rows: usize,
    pub zero_const: f32,
    /// [kp / pack, n] u32
    pub qweight: wgpu::Buffer,
    /// [groups, n] f16
    pub scales: wgpu::Buffer,
    /// [groups, n] f16
    pub zeros: Option<wgpu::Buffer>,
    /// [kp] u32
    pub perm: Option<wgpu::Buffer>,
    pub bytes: u64,
}

/// Dense f16 matrix [n, k], split in row chunks that each fit a storage binding.
pub struct GpuF16 {
    pub k: usize,
    pub n: usize,
    /// (buffer [rows, k] f16, first row, rows)
    pub chunks: Vec<(wgpu::Buffer, usize, usize)>,
}

pub enum GpuLinear {
    Gptq(GpuGptq),
    F16(GpuF16),
}

impl GpuLinear {
    pub fn n(&self) -> usize {
        match self {
            GpuLinear::Gptq(g) => g.n,
            GpuLinear::F16(f) => f.n,
        }
    }
    pub fn k(&self) -> usize {
        match self {
            GpuLinear::Gptq(g) => g.k,
            GpuLinear::F16(f) => f.k,
        }
    }
    /// (prepared rows, columns) of a GPTQ matrix; `None` for f16.
    pub fn gptq_shape(&self) -> Option<(usize, usize)> {
        match self {
            GpuLinear::Gptq(g) => Some((g.kp, g.n)),
            GpuLinear::F16(_) => None,
        }
    }
    /// Bytes of weights read per pass over the matrix.
    pub fn weight_bytes(&self) -> u64 {
        match self {
            GpuLinear::Gptq(g) => g.bytes,
            GpuLinear::F16(f) => (f.n * f.k * 2) as u64,
        }
    }
}

pub fn upload_gptq(gpu: &Gpu, label: &str, p: &PreparedGptq) -> Result<GpuGptq> {
    if p.n % 4 != 0 {
        return Err(Error::TensorValue {
            name: label.into(),
            reason: format!("out_features {} is not a multiple of 4", p.n),
        });
    }
    let qweight = gpu.storage_init(
        &format!("{label}.qweight"),
        bytemuck::cast_slice(&p.qweight),
    )?;
    let scales = gpu.storage_init(&format!("{label}.scales"), bytemuck::cast_slice(&p.scales))?;
    let zeros = match &p.zeros {
        Some(z) => Some(gpu.storage_init(&format!("{label}.zeros"), bytemuck::cast_slice(z))?),
        None => None,
    };
    let perm = match &p.perm {
        Some(v) => Some(gpu.storage_init(&format!("{label}.perm"), bytemuck::cast_slice(v))?),
        None => None,
    };
    let bytes = (p.qweight.len() * 4
        + p.scales.len() * 2
        + p.zeros.as_ref().map_or(0, |z| z.len() * 2)) as u64;
    Ok(GpuGptq {
        bits: p.bits,
        k: p.k,
        n: p.n,
        kp: p.kp,
        group_rows: p.group_rows,
        zero_const: p.zero_const,
        qweight,
        scales,
        zeros,
        perm,
        bytes,
    })
}

/// Uploads a dense f16 [n, k] matrix (raw little-endian bytes), split by rows to fit the binding limit.
pub fn upload_f16(gpu: &Gpu, label: &str, bytes: &[u8], n: usize, k: usize) -> Result<GpuF16> {
    if k % 8 != 0 {
        return Err(Error::TensorValue {
            name: label.into(),
            reason: format!("in_features {k} is not a multiple of 8"),
        });
    }
    let row_bytes = (k * 2) as u64;
    let max_rows = (gpu.caps.max_binding_size / row_bytes).max(1) as usize;
    let mut chunks = Vec::new();
    let mut r0 = 0;
    while r0 < n {
        let rows = max_rows.min(n - r0);
        let b = &bytes[r0 * k * 2..(r0 + rows) * k * 2];
        chunks.push((gpu.storage_init(&format!("{label}[{r0}..]"), b)?, r0, rows));
        r0 += rows;
    }
    Ok(GpuF16 { k, n, chunks })
}

/// f16 values to an f32 storage buffer (norm weights).
pub fn upload_f16_as_f32(gpu: &Gpu, label: &str, v: &[f16]) -> Result<wgpu::Buffer> {
    let f: Vec<f32> = v.iter().map(|x| x.to_f32()).collect();
    gpu.storage_init(label, bytemuck::cast_slice(&f))
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct GptqParams {
    k: u32,
    n: u32,
    kp: u32,
    group_rows: u32,
    zero_const: f32,
    y_stride: u32,
    y_col0: u32,
    x_stride: u32,
    eps: f32,
    splits: u32,
    split_rows: u32,
    cap: u32,
    x_splits: u32,
    ss_blocks: u32,
    _pad: [u32; 2],
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct F16Params {
    k: u32,
    n: u32,
    row_start: u32,
    y_stride: u32,
}

/// How a linear is run inside a plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LinearMode {
    /// Rows of activations the plan holds (1 for decode, the chunk size for prefill).
    pub capacity: u32,
    /// Tiled GEMM (prefill) instead of GEMV.
    pub gemm: bool,
    /// y += x W^T (residual epilogue).
    pub add: bool,
    /// f16 only: compute just the step's `logits_row` into y row 0.
    pub last_only: bool,
    /// First output column in y (for projections that share an output buffer).
    pub y_col0: u32,
    /// Row stride of y.
    pub y_stride: u32,
    /// GEMV shape (cols4, ksplit) from [`GEMV_TUNES`]; `None` = the device default (see [`gemv_tune`]).
    pub tune: Option<(u32, u32)>,
    /// GEMV split-K: the output is `splits` partial slabs [splits, capacity, y_stride] the consumer adds up
    /// (1 = the plain output). See [`gemv_splits`].
    pub splits: u32,
    /// Partial slabs the input is made of (the SwiGLU prologue reading a split-K gate|up); 1 otherwise.
    pub x_splits: u32,
    /// GEMV: take the integer path where the matrix fits it ([`idot_fits`]); the f32 path otherwise.
    pub idot: bool,
    /// GEMM only: run on the matrix units where the device has them ([`super::context::Caps::coop_matrix`]) and
    /// the matrix fits the kernel ([`coop_fits`]); the portable f32 GEMM otherwise.
    pub coop: bool,
    /// Matrix-unit GEMM: (token tile, workgroup size) from [`COOP_TILES`]; `None` = the default ([`coop_tile`]).
    pub coop_tile: Option<(u32, u32)>,
    /// GEMM only: x is already in the prepared row order ([capacity, kp], written by `kernels::gather`), so the
    /// act-order permutation is not applied again.
    pub pre_permuted: bool,
}

impl LinearMode {
    /// A plain mode: no split-K, device-default shape.
    pub fn new(capacity: u32, gemm: bool, y_stride: u32) -> Self {
        LinearMode {
            capacity,
            gemm,
            add: false,
            last_only: false,
            y_col0: 0,
            y_stride,
            tune: None,
            splits: 1,
            x_splits: 1,
            idot: idot_default(),
            coop: true,
            coop_tile: None,
            pre_permuted: false,
        }
    }
}

/// A fused prologue of the GPTQ GEMV: the activation the matmul reads is computed while it is staged.
#[derive(Debug, Clone, Copy)]
pub enum Prologue<'a> {
    None,
    /// a = x * weight ([K] f32) / rms(x): the row's sum of squares comes in `ss_blocks` partial sums per row
    /// (`ss`, [capacity, ss_blocks] f32, written with x by reduce_add or a GEMV's residual epilogue); with
    /// `ss_blocks: 0` every workgroup sums its row's squares itself.
    RmsNorm {
        weight: &'a wgpu::Buffer,
        ss: &'a wgpu::Buffer,
        ss_blocks: u32,
        eps: f32,
    },
    /// a = silu(x[:, :K]) * x[:, K:]
    SwiGlu,
}

impl Prologue<'_> {
    fn code(&self) -> u32 {
        match self {
            Prologue::None => 0,
            Prologue::RmsNorm { .. } => 1,
            Prologue::SwiGlu => 2,
        }
    }
}

/// What a GPTQ GEMV does with its result.
#[derive(Debug, Clone, Copy)]
pub enum Epilogue<'a> {
    /// y (+)= the result, or its split-K slabs for a consumer to add up.
    Store,
    /// The decode residual: y holds the split-K slabs, and the last split of each column block to finish adds
    /// them into `x` ([capacity, N] f32, the residual stream) and writes `ss` ([capacity, ss_blocks(N)] f32, sums
    /// of x² per 32 columns) for the next fused RMSNorm. `counters` ([capacity, N / 4] u32, zero-initialised)
    /// count the splits' arrivals and are left at zero.
    Residual {
        x: &'a wgpu::Buffer,
        ss: &'a wgpu::Buffer,
        counters: &'a wgpu::Buffer,
    },
    /// The decode residual through f32 atomics ([`super::context::Caps::float_atomics`]): every split adds its
    /// partial sums into `x` ([capacity, N] f32) itself, so there is no last-split tail; nothing writes block
    /// sums of squares, so the next fused RMSNorm is planned with `ss_blocks: 0` and sums its row itself. The
    /// order of the additions varies from run to run (the last bits of x may differ between runs).
    ResidualAtomic { x: &'a wgpu::Buffer },
}

impl Epilogue<'_> {
    /// The kernel's EPI code.
    fn code(&self) -> u32 {
        match self {
            Epilogue::Store => 0,
            Epilogue::Residual { .. } => 1,
            Epilogue::ResidualAtomic { .. } => 2,
        }
    }
}

/// The matrix-unit GEMM's (token tile, workgroup size) for this matrix in this mode, or `None` where the portable
/// GEMM (or a GEMV) runs.
pub fn coop_choice(
    pipes: &Pipelines,
    g: &GpuGptq,
    mode: &LinearMode,
) -> Result<Option<(u32, u32)>> {
    let caps = &pipes.gpu.caps;
    if !(mode.gemm && mode.coop && caps.coop_matrix && coop_fits(g.group_rows)) {
        return Ok(None);
    }
    match mode.coop_tile {
        Some(t) if COOP_TILES.contains(&t) && t.1 <= caps.max_invocations => Ok(Some(t)),
        Some(t) => Err(Error::Gpu {
            op: "gptq_gemm_coop".into(),
            reason: format!(
                "tile {t:?} is not one of {COOP_TILES:?} within this adapter's {} threads per workgroup",
                caps.max_invocations
            ),
        }),
        None => Ok(Some(coop_tile(caps.max_invocations))),
    }
}

/// Dispatches computing y (+)= x Wᵀ for `lin`. `dummy` is bound where a kernel variant reads nothing.
#[allow(clippy::too_many_arguments)]
pub fn linear_dispatches(
    pipes: &Pipelines,
    step: &wgpu::Buffer,
    lin: &GpuLinear,
    x: &wgpu::Buffer,
    y: &wgpu::Buffer,
    dummy: &wgpu::Buffer,
    mode: LinearMode,
    pro: Prologue<'_>,
) -> Result<Vec<Dispatch>> {
    linear_dispatches_epi(pipes, step, lin, x, y, dummy, mode, pro, Epilogue::Store)
}

/// [`linear_dispatches`] with an epilogue other than a plain store (GPTQ GEMV only).
#[allow(clippy::too_many_arguments)]
pub fn linear_dispatches_epi(
    pipes: &Pipelines,
    step: &wgpu::Buffer,
    lin: &GpuLinear,
    x: &wgpu::Buffer,
    y: &wgpu::Buffer,
    dummy: &wgpu::Buffer,
    mode: LinearMode,
    pro: Prologue<'_>,
    epi: Epilogue<'_>,
) -> Result<Vec<Dispatch>> {
    let residual = !matches!(epi, Epilogue::Store);
    if matches!(epi, Epilogue::ResidualAtomic { .. }) && !pipes.gpu.caps.float_atomics {
        return Err(Error::Gpu {
            op: "gptq gemv".into(),
            reason: "the atomic residual epilogue needs f32 atomics, which this device was not opened with"
                .into(),
        });
    }
    if residual
        && (mode.gemm || mode.add || matches!(pro, Prologue::RmsNorm { .. }) || mode.y_col0 != 0)
    {
        return Err(Error::Gpu {
            op: "gptq gemv".into(),
            reason: format!(
                "the residual epilogue is a plain decode-GEMV feature, not for {mode:?}"
            ),
        });
    }
    match lin {
        GpuLinear::F16(_) if residual => Err(Error::Gpu {
            op: "linear_f16".into(),
            reason: "the f16 matmul has no residual epilogue; plan reduce_add".into(),
        }),
        GpuLinear::Gptq(g) => {
            if mode.gemm && !matches!(pro, Prologue::None) {
                return Err(Error::Gpu {
                    op: "gptq_gemm".into(),
                    reason: "the prefill GEMM has no fused prologue; plan a separate op".into(),
                });
            }
            if mode.pre_permuted && !mode.gemm {
                return Err(Error::Gpu {
                    op: "gptq gemv".into(),
                    reason: "a pre-permuted input is a prefill-GEMM feature".into(),
                });
            }
            let x_stride = match pro {
                _ if mode.pre_permuted => g.kp as u32,
                Prologue::SwiGlu => 2 * g.k as u32,
                _ => g.k as u32,
            };
            let pf = 32 / g.bits as usize;
            let idot = !mode.gemm && mode.idot && idot_fits(g.kp, g.group_rows);
            let (coop_tm, coop_wg) = coop_choice(pipes, g, &mode)?.unwrap_or((0, 0));
            let scaled = coop_tm > 0 && coop_scaled(&pipes.gpu.caps, g.kp, g.group_rows, coop_wg);
            // Split-K: the decode GEMV, and the matrix-unit GEMM into plain slabs (no accumulation into y).
            let gemm_split_ok = coop_tm > 0 && !mode.add && mode.x_splits == 1;
            if mode.splits == 0 || (mode.gemm && mode.splits > 1 && !gemm_split_ok) {
                return Err(Error::Gpu {
                    op: "gptq linear".into(),
                    reason: format!(
                        "split-K {mode:?}: the prefill GEMM splits only on the matrix units, into slabs without add"
                    ),
                });
            }
            if mode.gemm && mode.x_splits > 1 {
                return Err(Error::Gpu {
                    op: "gptq linear".into(),
                    reason: format!("input slabs {mode:?} are a decode-GEMV feature"),
                });
            }
            let split = match coop_split() {
                _ if coop_tm == 0 => (false, false),
                // Exact weights need no split.
                (x, _) if scaled => (x, false),
                s => s,
            };
            // Splits of whole packed words, of whole activation blocks on the integer path, of whole GEMM steps
            // (and groups, where the scaled GEMM rescales between them) on the matrix units.
            let split_unit = match () {
                _ if idot => IDOT_BLOCK,
                _ if coop_tm > 0 && scaled && g.group_rows < g.kp => {
                    g.group_rows.next_multiple_of(COOP_KT as usize)
                }
                _ if coop_tm > 0 => COOP_KT as usize,
                _ => pf,
            };
            let split_rows =
                g.kp.div_ceil(mode.splits as usize)
                    .next_multiple_of(split_unit) as u32;
            let params = GptqParams {
                k: g.k as u32,
                n: g.n as u32,
                kp: g.kp as u32,
                group_rows: g.group_rows as u32,
                zero_const: g.zero_const,
                y_stride: mode.y_stride,
                y_col0: mode.y_col0,
                x_stride,
                eps: match pro {
                    Prologue::RmsNorm { eps, .. } => eps,
                    _ => 0.0,
                },
                splits: mode.splits,
                split_rows,
                cap: mode.capacity,
                x_splits: mode.x_splits,
                ss_blocks: match (pro, epi) {
                    (Prologue::RmsNorm { ss_blocks, .. }, _) => ss_blocks,
                    (_, Epilogue::Residual { .. }) => super::kernels::ss_blocks(g.n as u32),
                    _ => 0,
                },
                _pad: [0; 2],
            };
            let gemv = if mode.gemm {
                None
            } else {
                Some(gemv_tune(&pipes.gpu.caps, mode.tune)?)
            };
            let var = GptqVariant {
                bits: g.bits,
                perm: g.perm.is_some() && !mode.pre_permuted,
                zero_buf: g.zeros.is_some(),
                add: mode.add,
                gemv,
                pro: pro.code(),
                unroll: match gemv {
                    Some(_) => gemv_unroll(),
                    None => GEMV_UNROLL,
                },
                epi: epi.code(),
                idot,
                coop_tm,
                coop_wg,
                coop_scaled: scaled,
                coop_split: split,
            };
            let key = gptq_key(&var, pipes.gpu.caps.subgroup_size);
            let n4 = (g.n / 4) as u32;
            let groups = match gemv {
                None if coop_tm > 0 => [
                    (g.n as u32).div_ceil(COOP_TN),
                    mode.capacity.div_ceil(coop_tm),
                    mode.splits,
                ],
                None => [n4.div_ceil(GEMM_COLS4), mode.capacity.div_ceil(GEMM_TM), 1],
                Some((c, _, _)) => [n4.div_ceil(c), mode.splits, mode.capacity],
            };
            let perm = g.perm.as_ref().unwrap_or(dummy);
            let zeros = g.zeros.as_ref().unwrap_or(dummy);
            let rw = &pipes.dummy_rw;
            let (norm_w, ss) = match pro {
                Prologue::RmsNorm { weight, ss, .. } => (weight, ss),
                _ => (dummy, if gemv.is_some() { rw } else { dummy }),
            };
            let (res, ss, counters) = match epi {
                Epilogue::Residual { x, ss, counters } => (x, ss, counters),
                Epilogue::ResidualAtomic { x } => (x, ss, rw),
                Epilogue::Store => (rw, ss, rw),
            };
            let buffers: &[&wgpu::Buffer] = if gemv.is_some() {
                &[
                    x, perm, &g.qweight, &g.scales, zeros, y, norm_w, ss, res, counters,
                ]
            } else {
                &[x, perm, &g.qweight, &g.scales, zeros, y, norm_w, ss]
            };
            Ok(vec![
                pipes.dispatch(key, &params, step, buffers, groups, g.bytes)?
            ])
        }
        GpuLinear::F16(f) => {
            if !matches!(pro, Prologue::None) {
                return Err(Error::Gpu {
                    op: "linear_f16".into(),
                    reason: "the f16 matmul has no fused prologue; plan a separate op".into(),
                });
            }
            let is_cpu = pipes.gpu.caps.is_cpu;
            let (rows_per_wg, _) = f16_shape(is_cpu);
            let key = f16_key(
                mode.last_only,
                mode.add,
                is_cpu,
                pipes.gpu.caps.subgroup_size,
            );
            f.chunks
                .iter()
                .map(|(buf, r0, rows)| {
                    let params = F16Params {
                        k: f.k as u32,
                        n: *rows as u32,
                        row_start: mode.y_col0 + *r0 as u32,
                        y_stride: mode.y_stride,
                    };
                    pipes.dispatch(
                        key.clone(),
                        &params,
                        step,
                        &[x, buf, y],
                        [(*rows as u32).div_ceil(rows_per_wg), 1, 1],
                        (*rows * f.k * 2) as u64,
                    )
                })
                .collect()
        }
    }
}
