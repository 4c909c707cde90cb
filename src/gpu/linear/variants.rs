//! Kernel shapes and variants of the linear layers: the tuning choices (GEMV workgroup shape, split-K, unroll,
//! GEMM tile) and the typed keys they specialise the shaders with. Kept apart from the dispatch builders so the
//! naga test can enumerate exactly what the planner may ask for, and the tuning rules sit with their evidence.

use super::super::context::Caps;
use super::super::ops::make_key;
use super::super::shader::{Kernel, KernelKey};
use crate::error::{Error, Result};

/// GEMV workgroup shapes the planner may choose, as (column quads, K slices); each is validated by naga in the
/// tests. The first is the portable default; `WGPTQ_GEMV=COLS4xKSPLIT` picks another (benchmarking).
pub const GEMV_TUNES: [(u32, u32); 6] = [(16, 16), (32, 8), (8, 32), (64, 4), (8, 64), (16, 32)];
/// Packed weight words a GEMV thread loads per batch (kept in registers): the default and the choices
/// `WGPTQ_UNROLL` may pick (benchmarking); all validated by naga in the tests. 4 for every GEMV: the short runs
/// of q|k|v and o (8-12 words per thread) took 1 word per batch from runs 18-19 (10-15% faster on the f32 path);
/// on the integer path 4 everywhere decoded 309.8 against 295.3 tok/s in one call on the H100 (docs/PERF.md,
/// run 66; run 40 had seen the same direction), 8 everywhere 295.7.
pub const GEMV_UNROLL: u32 = 4;
pub const GEMV_UNROLLS: [u32; 3] = [1, 4, 8];

/// Words per load batch of a GEMV (`WGPTQ_UNROLL` overrides [`GEMV_UNROLL`]).
pub(super) fn gemv_unroll() -> u32 {
    env_u32("WGPTQ_UNROLL")
        .filter(|u| GEMV_UNROLLS.contains(u))
        .unwrap_or(GEMV_UNROLL)
}

/// A `WGPTQ_*` tuning variable as a number (unset or unparsable: `None`).
fn env_u32(name: &str) -> Option<u32> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

/// `WGPTQ_GEMV_ABLATE=1|2` builds GEMVs that skip the activation staging (1) or the weight loads (2): a
/// measurement of what each costs (docs/PERF.md); the results are meaningless. 0 (unset) otherwise.
fn gemv_ablate() -> u32 {
    env_u32("WGPTQ_GEMV_ABLATE")
        .filter(|a| [1, 2].contains(a))
        .unwrap_or(0)
}

/// Activation rows a GEMV workgroup stages at once.
pub const GEMV_XCHUNKS: [u32; 2] = [2048, 4096];
/// Prefill GEMM tile: GEMM_TM tokens x 4 GEMM_COLS4 columns per workgroup, GEMM_KT prepared rows per step.
pub const GEMM_TM: u32 = 64;
pub const GEMM_COLS4: u32 = 16;
pub const GEMM_KT: u32 = 32;
/// Threads of a GEMM workgroup: each owns 4 tokens x 4 columns.
pub const GEMM_WG: u32 = GEMM_TM / 4 * GEMM_COLS4;
pub const F16_ROWS: u32 = 4;
pub const F16_LANES: u32 = 64;
/// Cooperative-matrix GEMM (prefill on the matrix units): a tile of COOP_TN columns and 128 tokens, or 64
/// (`WGPTQ_COOP_TM=64`, benchmarking: 3,674 against 4,448 tok/s with 512-token chunks, docs/PERF.md run 44),
/// split over the workgroup's subgroups of 32 threads, each owning 32 tokens x 16 CN columns.
pub const COOP_TN: u32 = 128;
/// Prepared rows per step of the cooperative-matrix GEMM (its split-K unit).
pub const COOP_KT: u32 = 32;
/// Split-K factor of the prefill q|k|v GEMM on the matrix units: 2, where each half keeps at least 512 rows.
/// Its grid is small (q|k|v of OpenChat-3.5 at 512 tokens: 48 column tiles x 4 token tiles = 192 workgroups of
/// one per SM on the H100's 132 SMs, 1.45 waves: it ran at 57 TFLOP/s where gate|up's 7 waves ran at 80,
/// docs/PERF.md); halves of K give twice the workgroups at half the work each, which shortens the last wave on
/// any SM count, and RoPE adds the two slabs as it reads them. `WGPTQ_PREFILL_SPLITS` overrides (1 = none, at
/// most 16; measurements).
pub fn prefill_qkv_splits(kp: usize) -> u32 {
    let want = env_u32("WGPTQ_PREFILL_SPLITS").unwrap_or(2).clamp(1, 16) as usize;
    want.min((kp / 512).max(1)) as u32
}
/// The cooperative-matrix GEMM's (token tile, workgroup size) choices: 8 subgroups of 32 x 64 or 32 x 32, or 16
/// subgroups of 32 x 32 (fewer accumulators per thread, more warps per SM).
pub const COOP_TILES: [(u32, u32); 3] = [(64, 256), (128, 256), (128, 512)];

/// Whether a GPTQ matrix fits the cooperative-matrix GEMM: a thread dequantizes 4 prepared rows with one
/// group's scale and zero.
pub fn coop_fits(group_rows: usize) -> bool {
    group_rows % 4 == 0
}

/// Whether the cooperative-matrix GEMM stages this matrix's weights as exact integers q - z and applies the group
/// scales to its accumulators between groups (two multiplies per product with split activations instead of three,
/// weights exact): groups of whole 32-row steps (or one group), 256-thread workgroups (the rescale's workgroup
/// memory), subgroup barriers on the adapter (the rescale is local to each subgroup). By default only matrices of
/// one group (group size -1): on the H100 each rescale between groups costs more than the multiplies it saves
/// (4-bit g128: 4,130 against 4,588 tok/s prefill, run 54; 8-bit g-1: 5,630 against 4,769, run 60; each pair
/// in one call, docs/PERF.md). `WGPTQ_COOP_SCALED=0` keeps the dequantized weights everywhere, `=2` rescales
/// between groups of whole 32-row steps too (A/B measurements).
pub fn coop_scaled(caps: &Caps, kp: usize, group_rows: usize, wg: u32) -> bool {
    let groups_ok = match env_u32("WGPTQ_COOP_SCALED") {
        Some(0) => false,
        Some(2) => group_rows % 32 == 0 || group_rows >= kp,
        _ => group_rows >= kp,
    };
    caps.subgroup_barrier && wg == 256 && groups_ok
}

/// Which operands the cooperative-matrix GEMM holds as two f16 (hi + lo) instead of one: (x, w). Both (the
/// default) gives near-f32 results at three multiplies per product; `WGPTQ_COOP_SPLIT=0|2|3` picks none, x only or
/// w only (measurements: one f16 each moved full-size 8-bit logprobs by 0.035, docs/PERF.md runs 43-46).
pub fn coop_split() -> (bool, bool) {
    match env_u32("WGPTQ_COOP_SPLIT") {
        Some(0) => (false, false),
        Some(2) => (true, false),
        Some(3) => (false, true),
        _ => (true, true),
    }
}

/// The cooperative-matrix GEMM's (token tile, workgroup size) on an adapter allowing `max_invocations` threads
/// per workgroup; `WGPTQ_COOP_TM` and `WGPTQ_COOP_WG` pick another of [`COOP_TILES`] for measurements.
pub fn coop_tile(max_invocations: u32) -> (u32, u32) {
    let tm = env_u32("WGPTQ_COOP_TM").unwrap_or(128);
    let wg = env_u32("WGPTQ_COOP_WG").unwrap_or(256);
    if COOP_TILES.contains(&(tm, wg)) && wg <= max_invocations {
        (tm, wg)
    } else {
        (128, 256)
    }
}

/// The GEMV shape for this device: (cols4, ksplit, xchunk).
pub fn gemv_tune(caps: &Caps, tune: Option<(u32, u32)>) -> Result<(u32, u32, u32)> {
    let (c, k) = match std::env::var("WGPTQ_GEMV") {
        _ if tune.is_some_and(|t| GEMV_TUNES.contains(&t)) => tune.unwrap_or(GEMV_TUNES[0]),
        Ok(v) => {
            let parsed = v
                .split_once('x')
                .and_then(|(a, b)| Some((a.parse::<u32>().ok()?, b.parse::<u32>().ok()?)));
            match parsed {
                Some(t) if GEMV_TUNES.contains(&t) => t,
                _ => {
                    return Err(Error::InvalidArgument {
                        name: "WGPTQ_GEMV".into(),
                        value: v,
                        reason: format!("expected one of {GEMV_TUNES:?} written as COLS4xKSPLIT"),
                    })
                }
            }
        }
        // (64, 4): the best shape on the H100 in 3 of 4 runs, 179 tok/s against 168 for (32, 8) on average
        // (docs/PERF.md, runs 10-13).
        Err(_) if !caps.is_cpu && caps.max_invocations >= 256 => (64, 4),
        Err(_) => GEMV_TUNES[0],
    };
    // partial (16 B per thread) + reduction scratch (4 B per thread) + staged activations (4 B per row; 4.25
    // on the integer path: bytes, quad maxima and sums, block factors) must fit.
    let bytes = |x: u32| c * k * 20 + x * 4 + x / 4;
    let xchunk = GEMV_XCHUNKS
        .iter()
        .rev()
        .copied()
        .find(|&x| bytes(x) <= caps.max_workgroup_storage)
        .ok_or_else(|| Error::DeviceLimit {
            what: "GEMV workgroup memory".into(),
            needed: bytes(GEMV_XCHUNKS[0]) as u64,
            limit: caps.max_workgroup_storage as u64,
        })?;
    if c * k > caps.max_invocations {
        return Err(Error::DeviceLimit {
            what: "GEMV workgroup size".into(),
            needed: (c * k) as u64,
            limit: caps.max_invocations as u64,
        });
    }
    Ok((c, k, xchunk))
}

/// Split-K factor of a decode GEMV over `kp` prepared rows and `n` columns: enough workgroups (nearest `target`,
/// 256 on discrete GPUs, `WGPTQ_SPLITK_TARGET` overrides) to fill the device, at least 256 rows per split, at
/// most 16 splits; 1 on CPU adapters.
pub fn gemv_splits(caps: &Caps, kp: usize, n: usize) -> u32 {
    gemv_splits_tuned(caps, kp, n, None)
}

/// [`gemv_splits`] for a GEMV of shape `tune` (`None`: the device default).
pub fn gemv_splits_tuned(caps: &Caps, kp: usize, n: usize, tune: Option<(u32, u32)>) -> u32 {
    if caps.is_cpu {
        return 1;
    }
    let target: usize = std::env::var("WGPTQ_SPLITK_TARGET")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256);
    let (c, _, _) =
        gemv_tune(caps, tune).unwrap_or((GEMV_TUNES[0].0, GEMV_TUNES[0].1, GEMV_XCHUNKS[0]));
    let blocks = (n / 4).div_ceil(c as usize).max(1);
    // The split count whose grid is nearest the target (gate|up on the H100: 2 splits, 224 workgroups, ran 12%
    // faster than 3 splits, 336; docs/PERF.md runs 29-30). At most 16: the consumers add slabs in loops of 16
    // (MAX_SLABS in the shaders).
    ((target + blocks / 2) / blocks)
        .clamp(1, 16)
        .min((kp / 256).max(1)) as u32
}

/// The GEMV shape of a decode matmul with the residual epilogue that runs without split-K (see
/// [`residual_gemv_shape`]): 8 column quads x 64 row runs, 512 threads.
pub const RESIDUAL_GEMV_TUNE: (u32, u32) = (8, 64);

/// A decode GEMV's (shape, split-K factor) with the residual epilogue. A matrix whose prepared rows fit one
/// staging chunk takes [`RESIDUAL_GEMV_TUNE`] and no split-K where that still gives 64 or more workgroups: the
/// epilogue's split-K tail (slabs, device-scope barriers, an atomic arrival, the last workgroup's serial sum)
/// costs more than the extra workgroups bring. On the H100, o_proj of OpenChat-3.5 (4096 x 4096, 128 workgroups
/// instead of 16 x 16): 680 against 818 µs per token (docs/PERF.md, run 68); down (14336 rows, 4 staging
/// chunks) was slower that way (1333 against 1138) and keeps split-K, as do the GEMVs without the epilogue,
/// which have no tail. Otherwise: the device default shape and [`gemv_splits`].
pub fn residual_gemv_shape(caps: &Caps, kp: usize, n: usize) -> (Option<(u32, u32)>, u32) {
    let t = RESIDUAL_GEMV_TUNE;
    if !caps.is_cpu
        && (t.0 * t.1) <= caps.max_invocations
        && n / 4 / t.0 as usize >= 64
        && gemv_tune(caps, Some(t)).is_ok_and(|(_, _, x)| kp <= x as usize)
    {
        return (Some(t), 1);
    }
    (None, gemv_splits(caps, kp, n))
}

/// One (shape, split-K factor) for a residual GEMV of every layer, from each layer's GPTQ (prepared rows, columns)
/// (`None`: an f16 matrix, which takes no GEMV): the layers' common [`residual_gemv_shape`], or `tune` (a
/// measurement override) with its split count; where layers differ (a checkpoint mixing shapes or formats),
/// `tune` or the default shape with the most splits any layer wants. The planner and the memory estimate both
/// take it.
pub fn residual_gemv_choice(
    caps: &Caps,
    shapes: &[Option<(usize, usize)>],
    tune: Option<(u32, u32)>,
) -> (Option<(u32, u32)>, u32) {
    let choices: Vec<_> = shapes
        .iter()
        .map(|s| match (*s, tune) {
            (Some((kp, n)), None) => residual_gemv_shape(caps, kp, n),
            (Some((kp, n)), t) => (t, gemv_splits_tuned(caps, kp, n, t)),
            (None, _) => (None, 1),
        })
        .collect();
    match choices.first() {
        Some(&first) if choices.iter().all(|&c| c == first) => first,
        _ => {
            let most = shapes.iter().flatten();
            (
                tune,
                most.map(|&(kp, n)| gemv_splits_tuned(caps, kp, n, tune))
                    .max()
                    .unwrap_or(1),
            )
        }
    }
}

/// A decode GEMV's shape and split-K factor from `WGPTQ_DECODE_<OP>=COLS4xKSPLIT[/SPLITS]` (or `=/SPLITS`), `OP`
/// one of QKV, O, GATE_UP, DOWN: a per-op measurement override of [`gemv_tune`] and [`gemv_splits`]
/// (docs/PERF.md). Both `None` when unset.
pub fn decode_override(op: &str) -> Result<DecodeOverride> {
    let name = format!("WGPTQ_DECODE_{op}");
    let Ok(v) = std::env::var(&name) else {
        return Ok(DecodeOverride::default());
    };
    let bad = |reason: String| Error::InvalidArgument {
        name: name.clone(),
        value: v.clone(),
        reason,
    };
    let (shape, splits) = v.split_once('/').unwrap_or((&v, ""));
    let tune = match shape {
        "" => None,
        s => {
            let t = s
                .split_once('x')
                .and_then(|(a, b)| Some((a.parse::<u32>().ok()?, b.parse::<u32>().ok()?)))
                .filter(|t| GEMV_TUNES.contains(t))
                .ok_or_else(|| {
                    bad(format!(
                        "shape: one of {GEMV_TUNES:?} written as COLS4xKSPLIT"
                    ))
                })?;
            Some(t)
        }
    };
    let splits = match splits {
        "" => None,
        s => Some(
            s.parse::<u32>()
                .ok()
                .filter(|n| (1..=16).contains(n))
                .ok_or_else(|| bad("splits: 1 to 16".into()))?,
        ),
    };
    Ok(DecodeOverride { tune, splits })
}

/// A decode GEMV's measurement override ([`decode_override`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DecodeOverride {
    /// GEMV shape (cols4, ksplit).
    pub tune: Option<(u32, u32)>,
    /// Split-K factor.
    pub splits: Option<u32>,
}

/// One GPTQ kernel variant (pure data: the planner's choice and the naga test's enumeration agree).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct GptqVariant {
    pub bits: u32,
    pub perm: bool,
    pub zero_buf: bool,
    pub add: bool,
    /// `None` = tiled GEMM (prefill); else the GEMV (cols4, ksplit, xchunk).
    pub gemv: Option<(u32, u32, u32)>,
    /// Prologue code (GEMV only): 0 none, 1 RMSNorm, 2 SwiGLU.
    pub pro: u32,
    /// Words per load batch (GEMV only).
    pub unroll: u32,
    /// GEMV only: the residual epilogue: 0 none, 1 ordered ([`Epilogue::Residual`]), 2 through f32 atomics
    /// ([`Epilogue::ResidualAtomic`]).
    pub epi: u32,
    /// GEMV only: the integer path (activations quantized per 32-row block, 4-lane integer dot products); see
    /// [`idot_fits`].
    pub idot: bool,
    /// GEMM only: the cooperative-matrix kernel with this token tile (0 = the portable f32 GEMM).
    pub coop_tm: u32,
    /// Cooperative-matrix GEMM: threads per workgroup ([`COOP_TILES`]).
    pub coop_wg: u32,
    /// Cooperative-matrix GEMM: weights staged as exact integers, group scales applied to the accumulators
    /// ([`coop_scaled`]).
    pub coop_scaled: bool,
    /// Cooperative-matrix GEMM: which of (x, w) are hi + lo f16 pairs ([`coop_split`]).
    pub coop_split: (bool, bool),
}

/// Whether `WGPTQ_IDOT=0` switched the integer GEMV path off (A/B measurements; docs/PERF.md run 33).
pub fn idot_default() -> bool {
    std::env::var("WGPTQ_IDOT").map_or(true, |v| v != "0")
}

/// Rows per activation block of the integer GEMV path.
pub const IDOT_BLOCK: usize = 32;

/// Whether a GPTQ matrix fits the integer GEMV path: whole 32-row blocks in every group and in the padded K.
pub fn idot_fits(kp: usize, group_rows: usize) -> bool {
    kp % IDOT_BLOCK == 0 && group_rows % IDOT_BLOCK == 0
}

pub fn gptq_key(v: &GptqVariant, sg: Option<u32>) -> KernelKey {
    let mut d = vec![
        ("BITS", v.bits),
        ("PERM", v.perm as u32),
        ("ZERO_BUF", v.zero_buf as u32),
        ("ADD", v.add as u32),
    ];
    match v.gemv {
        None if v.coop_tm > 0 => {
            // Subgroups per tile column: 32 tokens each; the rest split the columns.
            let sgc = v.coop_wg / 32 / (v.coop_tm / 32);
            let cn = COOP_TN / 16 / sgc;
            d.extend([
                ("TM", v.coop_tm),
                ("TN", COOP_TN),
                ("CN", cn),
                ("CN4", (cn == 4) as u32),
                ("SPLIT_X", v.coop_split.0 as u32),
                ("SPLIT_W", v.coop_split.1 as u32),
                ("SCALED", v.coop_scaled as u32),
            ]);
            make_key(Kernel::GptqGemmCoop, v.coop_wg, sg, &d)
        }
        None => {
            d.extend([("TM", GEMM_TM), ("COLS4", GEMM_COLS4), ("KT", GEMM_KT)]);
            make_key(Kernel::GptqGemm, GEMM_WG, sg, &d)
        }
        Some((c, k, x)) => {
            d.extend([
                ("COLS4", c),
                ("KSPLIT", k),
                ("XCHUNK", x),
                ("PRO", v.pro),
                ("UNROLL", v.unroll),
                ("EPI", v.epi),
                ("FATOM", (v.epi == 2) as u32),
                ("IDOT", v.idot as u32),
                ("ABLATE", gemv_ablate()),
            ]);
            make_key(Kernel::GptqGemv, c * k, sg, &d)
        }
    }
}

/// The f16 matmul shape (rows per workgroup, lanes per row): GPUs split each row over 64 lanes and reduce; CPU
/// adapters (lavapipe), where workgroup barriers are expensive, give each thread a whole row.
pub fn f16_shape(is_cpu: bool) -> (u32, u32) {
    if is_cpu {
        (64, 1)
    } else {
        (F16_ROWS, F16_LANES)
    }
}

/// The f16 matmul variant.
pub fn f16_key(last_only: bool, add: bool, is_cpu: bool, sg: Option<u32>) -> KernelKey {
    let (rows, lanes) = f16_shape(is_cpu);
    make_key(
        Kernel::LinearF16,
        rows * lanes,
        sg,
        &[
            ("ROWS", rows),
            ("LANES", lanes),
            ("LAST_ONLY", last_only as u32),
            ("ADD", add as u32),
        ],
    )
}

/// Every variant [`linear_dispatches`] can produce.
pub fn variants(sg: Option<u32>) -> Vec<KernelKey> {
    let mut shapes: Vec<Option<(u32, u32, u32)>> = vec![None];
    for (c, k) in GEMV_TUNES {
        for x in GEMV_XCHUNKS {
            shapes.push(Some((c, k, x)));
        }
    }
    let mut v = Vec::new();
    for bits in [4, 8] {
        for flags in 0..4u32 {
            let b = |i: u32| flags & (1 << i) != 0;
            for add in [false, true] {
                for &gemv in &shapes {
                    let pros: &[u32] = if gemv.is_some() { &[0, 1, 2] } else { &[0] };
                    let unrolls: &[u32] = if gemv.is_some() { &GEMV_UNROLLS } else { &[0] };
                    for &pro in pros {
                        for &unroll in unrolls {
                            // The residual epilogue follows the o (no prologue) and down (SwiGLU) GEMVs.
                            let epis: &[u32] = if gemv.is_some() && !add && pro != 1 {
                                &[0, 1, 2]
                            } else {
                                &[0]
                            };
                            let idots: &[bool] = if gemv.is_some() {
                                &[false, true]
                            } else {
                                &[false]
                            };
                            for (&epi, &idot) in
                                epis.iter().flat_map(|e| idots.iter().map(move |i| (e, i)))
                            {
                                let var = GptqVariant {
                                    bits,
                                    perm: b(0),
                                    zero_buf: b(1),
                                    add,
                                    gemv,
                                    pro,
                                    unroll,
                                    epi,
                                    idot,
                                    coop_tm: 0,
                                    coop_wg: 0,
                                    coop_scaled: false,
                                    coop_split: (false, false),
                                };
                                v.push(gptq_key(&var, sg));
                                // The matrix-unit GEMM needs 32-wide subgroups.
                                if gemv.is_none() && sg == Some(32) {
                                    for (tm, wg) in COOP_TILES {
                                        for coop_split in [
                                            (false, false),
                                            (true, false),
                                            (false, true),
                                            (true, true),
                                        ] {
                                            let c = GptqVariant {
                                                coop_tm: tm,
                                                coop_wg: wg,
                                                coop_split,
                                                ..var
                                            };
                                            v.push(gptq_key(&c, sg));
                                            if wg == 256 && !coop_split.1 {
                                                v.push(gptq_key(
                                                    &GptqVariant {
                                                        coop_scaled: true,
                                                        ..c
                                                    },
                                                    sg,
                                                ));
                                            }
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
    for flags in 0..8u32 {
        v.push(f16_key(flags & 1 != 0, flags & 2 != 0, flags & 4 != 0, sg));
    }
    v
}
