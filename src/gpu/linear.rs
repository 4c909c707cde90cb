//! Linear layers on the GPU: the one place that turns the closed [`crate::model::Linear`] kind (after
//! preparation) into buffers and dispatches, so the planner handles GPTQ and f16 the same way.

use bytemuck::{Pod, Zeroable};
use half::f16;

use super::context::Gpu;
use super::ops::{make_key, Dispatch, Pipelines};
use super::shader::Kernel;
use super::shader::KernelKey;
use crate::error::{Error, Result};
use crate::prep::PreparedGptq;

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
    _pad: u32,
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
}

/// Tuning of the GEMV/GEMM kernels (workgroup shape); defaults chosen for portability.
pub const GEMV_COLS4: u32 = 16;
pub const GEMV_KSPLIT: u32 = 16;
pub const GEMM_TM: u32 = 16;
pub const GEMM_COLS4: u32 = 16;
pub const GEMM_KT: u32 = 32;
pub const F16_ROWS: u32 = 4;
pub const F16_LANES: u32 = 64;

/// The GPTQ kernel variant for a matrix and mode (pure: also enumerated by the no-GPU shader test).
pub fn gptq_key(
    bits: u32,
    perm: bool,
    zero_buf: bool,
    add: bool,
    gemm: bool,
    sg: Option<u32>,
) -> KernelKey {
    let mut d = vec![
        ("BITS", bits),
        ("PERM", perm as u32),
        ("ZERO_BUF", zero_buf as u32),
        ("ADD", add as u32),
    ];
    if gemm {
        d.extend([("TM", GEMM_TM), ("COLS4", GEMM_COLS4), ("KT", GEMM_KT)]);
        make_key(Kernel::GptqGemm, GEMM_TM * GEMM_COLS4, sg, &d)
    } else {
        d.extend([("COLS4", GEMV_COLS4), ("KSPLIT", GEMV_KSPLIT)]);
        make_key(Kernel::GptqGemv, GEMV_COLS4 * GEMV_KSPLIT, sg, &d)
    }
}

/// The f16 matmul variant.
pub fn f16_key(last_only: bool, add: bool, sg: Option<u32>) -> KernelKey {
    make_key(
        Kernel::LinearF16,
        F16_ROWS * F16_LANES,
        sg,
        &[
            ("ROWS", F16_ROWS),
            ("LANES", F16_LANES),
            ("LAST_ONLY", last_only as u32),
            ("ADD", add as u32),
        ],
    )
}

/// Every variant [`linear_dispatches`] can produce.
pub fn variants(sg: Option<u32>) -> Vec<KernelKey> {
    let mut v = Vec::new();
    for bits in [4, 8] {
        for flags in 0..16u32 {
            let b = |i: u32| flags & (1 << i) != 0;
            v.push(gptq_key(bits, b(0), b(1), b(2), b(3), sg));
        }
    }
    for flags in 0..4u32 {
        v.push(f16_key(flags & 1 != 0, flags & 2 != 0, sg));
    }
    v
}

/// Dispatches computing y (+)= x Wᵀ for `lin`. `dummy` is bound where a kernel variant reads nothing.
pub fn linear_dispatches(
    pipes: &Pipelines,
    step: &wgpu::Buffer,
    lin: &GpuLinear,
    x: &wgpu::Buffer,
    y: &wgpu::Buffer,
    dummy: &wgpu::Buffer,
    mode: LinearMode,
) -> Result<Vec<Dispatch>> {
    match lin {
        GpuLinear::Gptq(g) => {
            let params = GptqParams {
                k: g.k as u32,
                n: g.n as u32,
                kp: g.kp as u32,
                group_rows: g.group_rows as u32,
                zero_const: g.zero_const,
                y_stride: mode.y_stride,
                y_col0: mode.y_col0,
                _pad: 0,
            };
            let sg = pipes.gpu.caps.subgroup_size;
            let key = gptq_key(
                g.bits,
                g.perm.is_some(),
                g.zeros.is_some(),
                mode.add,
                mode.gemm,
                sg,
            );
            let n4 = (g.n / 4) as u32;
            let groups = if mode.gemm {
                [n4.div_ceil(GEMM_COLS4), mode.capacity.div_ceil(GEMM_TM), 1]
            } else {
                [n4.div_ceil(GEMV_COLS4), mode.capacity, 1]
            };
            let perm = g.perm.as_ref().unwrap_or(dummy);
            let zeros = g.zeros.as_ref().unwrap_or(dummy);
            Ok(vec![pipes.dispatch(
                key,
                &params,
                step,
                &[x, perm, &g.qweight, &g.scales, zeros, y],
                groups,
                g.bytes,
            )?])
        }
        GpuLinear::F16(f) => {
            let key = f16_key(mode.last_only, mode.add, pipes.gpu.caps.subgroup_size);
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
                        [(*rows as u32).div_ceil(F16_ROWS), 1, 1],
                        (*rows * f.k * 2) as u64,
                    )
                })
                .collect()
        }
    }
}
