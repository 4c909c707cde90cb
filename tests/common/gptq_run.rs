//! Runs one random GPTQ case through the GEMV or GEMM dispatches the planner would build and checks every
//! output against the case's dense meaning (tests/kernels_gptq.rs drives it).

use rand::rngs::StdRng;
use rand::Rng;
use wgptq::gpu::linear::{self, Epilogue, GpuLinear, LinearMode, Prologue};
use wgptq::gpu::{ops, StepParams};
use wgptq::prep;

use super::gptq::Case;

/// How one case is run: GEMM or GEMV (with a workgroup shape and a fused prologue), residual epilogue or not.
#[derive(Clone, Copy, Debug)]
pub struct Run {
    pub t: usize,
    pub gemm: bool,
    pub add: bool,
    /// 0 none, 1 RMSNorm, 2 SwiGLU (GEMV only)
    pub pro: u32,
    pub tune: Option<(u32, u32)>,
    /// GEMV split-K: output partial slabs (summed here) and input slabs (SwiGLU over split gate|up).
    pub splits: u32,
    pub x_splits: u32,
    /// The decode residual epilogue (GEMV): the slabs are added into a residual stream by the last split of
    /// each column block, which also writes the 32-column sums of squares; run twice, so the arrival counters
    /// must come back to zero.
    pub residual: bool,
    /// With `residual`: every split adds into the residual with f32 atomics (`Epilogue::ResidualAtomic`, where
    /// the adapter has them); no sums of squares are written.
    pub atomic: bool,
    /// RMSNorm prologue (pro = 1) without block sums (`ss_blocks: 0`): the GEMV sums its row's squares itself;
    /// the block-sum buffer holds NaN, so reading it shows.
    pub own_ss: bool,
    /// GEMM: the input gathered into the prepared order by `kernels::gather` first (`pre_permuted`).
    pub gathered: bool,
    /// GEMV: the integer path (activations quantized per 32-row block) where the matrix fits it.
    pub idot: bool,
    /// GEMM: the matrix units (f16 inputs, f32 sums) with this (token tile, workgroup size) where the adapter has
    /// them and the matrix fits; `None` = the portable GEMM.
    pub coop: Option<(u32, u32)>,
    /// Rows the plan holds (0 = t): a GEMM whose last token tile is partly outside the step (rows past t are
    /// the kernel's to scribble on, as in a prefill chunk; only rows < t are checked).
    pub cap: usize,
}

pub fn run_case(case: &Case, run: Run, rng: &mut StdRng) {
    let Run {
        t,
        gemm,
        add,
        pro,
        tune,
        splits,
        x_splits,
        residual,
        atomic,
        own_ss,
        gathered,
        idot,
        coop,
        cap,
    } = run;
    let cap = cap.max(t);
    assert!(cap == t || (x_splits == 1 && splits == 1 && !residual));
    let gpu = super::gpu();
    let pipes = ops::Pipelines::new(gpu.clone());
    let prepared = case.prepare();
    // The prepared layout must still mean the same matrix.
    let back = prep::dequantize_prepared(&prepared);
    for (i, (a, b)) in back.iter().zip(&case.dense).enumerate() {
        assert!(
            (*a as f64 - b).abs() <= 1e-6 * b.abs().max(1.0),
            "prep changed W at {i}: {a} vs {b}"
        );
    }
    let lin = GpuLinear::Gptq(linear::upload_gptq(&gpu, "w", &prepared).expect("upload"));
    // The raw input: [x_splits, t, k], or [x_splits, t, 2k] (gate | up) for the SwiGLU prologue; the slabs add up.
    let width = if pro == 2 { 2 * case.k } else { case.k };
    let slabs = x_splits as usize;
    let mut raw: Vec<f32> = (0..slabs * t * width)
        .map(|_| rng.random_range(-2.0..2.0))
        .collect();
    raw.resize(slabs * cap * width, 0.0);
    let norm_w: Vec<f32> = (0..case.k).map(|_| rng.random_range(0.5..1.5)).collect();
    let eps = 1e-5f64;
    // The activation the matmul must see, computed in f64, and the 1 / rms per row the norm prologue reads.
    let mut x = vec![0f32; t * case.k];
    // The row's sum of squares in 3 uneven partial sums, as reduce_add leaves it.
    let mut ss_blocks = vec![0f32; t * 3];
    let mut row_scale = vec![0f32; t];
    for tt in 0..t {
        let row: Vec<f64> = (0..width)
            .map(|i| {
                (0..slabs)
                    .map(|s| raw[(s * t + tt) * width + i] as f64)
                    .sum()
            })
            .collect();
        let sq: Vec<f64> = row[..case.k].iter().map(|v| v.powi(2)).collect();
        for (i, v) in sq.iter().enumerate() {
            ss_blocks[tt * 3 + (i * 7 / case.k).min(2)] += *v as f32;
        }
        let ms = sq.iter().sum::<f64>() / case.k as f64;
        row_scale[tt] = (1.0 / (ms + eps).sqrt()) as f32;
        for kk in 0..case.k {
            x[tt * case.k + kk] = match pro {
                1 => (row[kk] * row_scale[tt] as f64 * norm_w[kk] as f64) as f32,
                2 => {
                    let g = row[kk];
                    (g / (1.0 + (-g).exp()) * row[case.k + kk]) as f32
                }
                _ => row[kk] as f32,
            };
        }
    }
    let resid: Vec<f32> = (0..t * case.n)
        .map(|_| rng.random_range(-1.0..1.0))
        .collect();
    let out_slabs = splits as usize;
    let mut init: Vec<f32> = if add {
        resid.clone()
    } else {
        vec![f32::NAN; out_slabs * t * case.n]
    };
    init.resize(out_slabs * cap * case.n, f32::NAN);
    let xb = gpu.storage_init("x", bytemuck::cast_slice(&raw)).unwrap();
    let nwb = gpu
        .storage_init("norm_w", bytemuck::cast_slice(&norm_w))
        .unwrap();
    if own_ss {
        ss_blocks.fill(f32::NAN);
    }
    let rsb = gpu
        .storage_init("ss", bytemuck::cast_slice(&ss_blocks))
        .unwrap();
    let prologue = match pro {
        1 => Prologue::RmsNorm {
            weight: &nwb,
            ss: &rsb,
            ss_blocks: if own_ss { 0 } else { 3 },
            eps: eps as f32,
        },
        2 => Prologue::SwiGlu,
        _ => Prologue::None,
    };
    let yb = gpu.storage_init("y", bytemuck::cast_slice(&init)).unwrap();
    let dummy = gpu.storage("dummy", 16).unwrap();
    let step = StepParams {
        n_tokens: t as u32,
        pos0: 0,
        logits_row: 0,
        _pad: 0,
    };
    let stepb = gpu.uniform_init("step", bytemuck::bytes_of(&step));
    let mode = LinearMode {
        capacity: cap as u32,
        gemm,
        add,
        last_only: false,
        y_col0: 0,
        y_stride: case.n as u32,
        tune,
        splits,
        x_splits,
        idot,
        coop: coop.is_some(),
        coop_tile: coop,
        pre_permuted: gathered,
    };
    // The gathered input: [t, kp] in the prepared order, poisoned first so unwritten rows show.
    let gathered_x = gpu
        .storage_init(
            "x_prepared",
            bytemuck::cast_slice(&vec![f32::NAN; cap * prepared.kp.max(1)]),
        )
        .unwrap();
    let (xb, gather) = match (&lin, gathered) {
        // g_idx in order needs no permutation: nothing to gather.
        (GpuLinear::Gptq(g), true) if g.perm.is_none() => return,
        (GpuLinear::Gptq(g), true) => {
            let perm = g.perm.as_ref().expect("checked above");
            let d = wgptq::gpu::kernels::gather(
                &pipes,
                &stepb,
                &xb,
                perm,
                &gathered_x,
                g.kp as u32,
                case.k as u32,
                cap as u32,
                wgptq::gpu::kernels::GatherOp::Plain,
            )
            .expect("gather");
            (&gathered_x, Some(d))
        }
        _ => (&xb, None),
    };
    if let Some(g) = &gather {
        ops::run(&gpu, &[g]).expect("gather run");
    }
    let ss_cols = wgptq::gpu::kernels::SS_COLS as usize;
    let blocks = case.n.div_ceil(ss_cols);
    let resb = gpu
        .storage_init("res", bytemuck::cast_slice(&resid))
        .unwrap();
    let ss_out = gpu
        .storage_init("ss_out", bytemuck::cast_slice(&vec![f32::NAN; t * blocks]))
        .unwrap();
    let counters = gpu.storage("counters", (t * case.n) as u64).unwrap();
    let got: Vec<f32> = if residual {
        let epi = if atomic {
            Epilogue::ResidualAtomic { x: &resb }
        } else {
            Epilogue::Residual {
                x: &resb,
                ss: &ss_out,
                counters: &counters,
            }
        };
        let d = linear::linear_dispatches_epi(
            &pipes, &stepb, &lin, xb, &yb, &dummy, mode, prologue, epi,
        )
        .expect("dispatch");
        check_path(&d, run, &prepared);
        for _ in 0..2 {
            ops::run(&gpu, &d.iter().collect::<Vec<_>>()).expect("run");
        }
        let cnt: Vec<u32> =
            bytemuck::pod_collect_to_vec(&gpu.read(&counters, 0, (t * case.n) as u64).unwrap());
        assert!(
            cnt.iter().all(|&c| c == 0),
            "arrival counters left at {cnt:?}"
        );
        bytemuck::pod_collect_to_vec(&gpu.read(&resb, 0, (t * case.n * 4) as u64).unwrap())
    } else {
        let d = linear::linear_dispatches(&pipes, &stepb, &lin, xb, &yb, &dummy, mode, prologue)
            .expect("dispatch");
        check_path(&d, run, &prepared);
        ops::run(&gpu, &d.iter().collect::<Vec<_>>()).expect("run");
        let slabs_out: Vec<f32> = bytemuck::pod_collect_to_vec(
            &gpu.read(&yb, 0, (out_slabs * t * case.n * 4) as u64)
                .unwrap(),
        );
        // Every slab element must be written (NaN poison), and the slabs add up to the result.
        (0..t * case.n)
            .map(|i| (0..out_slabs).map(|s| slabs_out[s * t * case.n + i]).sum())
            .collect()
    };
    if residual && !atomic {
        // Every 32-column block's sum of squares of the new residual (NaN poison: each one written).
        let ss: Vec<f32> =
            bytemuck::pod_collect_to_vec(&gpu.read(&ss_out, 0, (t * blocks * 4) as u64).unwrap());
        for tt in 0..t {
            for b in 0..blocks {
                let cols = tt * case.n + b * ss_cols..tt * case.n + ((b + 1) * ss_cols).min(case.n);
                let want: f64 = got[cols].iter().map(|v| (*v as f64).powi(2)).sum();
                let g = ss[tt * blocks + b] as f64;
                assert!(
                    (g - want).abs() <= 1e-5 * want + 1e-6,
                    "ss[{tt}, {b}] = {g}, want {want} ({run:?})"
                );
            }
        }
    }
    // The residual epilogue ran twice: x + 2 y.
    let times = if residual { 2.0 } else { 1.0 };
    // The integer path rounds each activation to the nearest multiple of its block's max |a| / 16256: at most
    // half that step per element, so at most max|a| / 32512 times sum |W| per output.
    let idot_used = idot && !gemm && linear::idot_fits(prepared.kp, prepared.group_rows);
    let coop_used = coop_taken(run, &prepared);
    let scaled_used = coop_used && scaled_taken(run, &prepared);
    let mut bad = Vec::new();
    for tt in 0..t {
        for c in 0..case.n {
            let mut want = if add || residual {
                resid[tt * case.n + c] as f64
            } else {
                0.0
            };
            let mut mag = 0.0;
            let mut wabs = 0.0;
            for kk in 0..case.k {
                let p = x[tt * case.k + kk] as f64 * case.dense[c * case.k + kk];
                want += times * p;
                mag += times * p.abs();
                wabs += times * case.dense[c * case.k + kk].abs();
            }
            let g = got[tt * case.n + c] as f64;
            // f32 accumulation in another order: error grows with the sum of |terms|.
            let mut tol = 2e-5 * mag + 1e-5;
            // The matrix units see x and the dequantized weight as f16: one each (relative error at most 2^-11
            // each), or with the split a hi + lo pair each (2^-22), of which xl wl is left out (2^-22); below
            // the normal range a f16 part is off by at most 2^-25 absolute. Products are summed in f32.
            // Scaled: the weights are exact integers; each group's end multiplies the partial sums by a rounded
            // ratio of scales (two roundings of 2^-24 per group, on sums bounded by the sum of |terms|).
            if coop_used {
                let xs = &x[tt * case.k..(tt + 1) * case.k];
                let tiny = xs.iter().map(|v| v.abs() as f64).sum::<f64>() + wabs / times;
                // Per operand: 2^-22 split, 2^-11 not; xl wl (both split) adds 2^-22.
                let (sx, sw) = linear::coop_split();
                let part = |split: bool| {
                    if split {
                        2f64.powi(-22)
                    } else {
                        2f64.powi(-11)
                    }
                };
                let rel = if scaled_used {
                    let groups = prepared.kp.div_ceil(prepared.group_rows) as f64;
                    part(sx) * 1.01 + 2f64.powi(-22) + 2.0 * (groups + 1.0) * 2f64.powi(-24)
                } else {
                    (part(sx) + part(sw)) * 1.01 + 2f64.powi(-22)
                };
                tol += times * (mag * rel + tiny * 2f64.powi(-24));
            }
            if idot_used {
                let amax = x[tt * case.k..(tt + 1) * case.k]
                    .iter()
                    .fold(0f64, |m, v| m.max(v.abs() as f64));
                tol += wabs * amax / 32512.0;
            }
            let ok = (g - want).abs() <= tol; // NaN (unwritten) fails
            if !ok {
                bad.push(format!(
                    "[t={tt}, n={c}] got {g}, want {want} (tol {tol:.2e})"
                ));
            }
        }
    }
    assert!(
        bad.is_empty(),
        "{} of {} outputs wrong (k={}, n={}, {:?}, {run:?}); first: {:?}",
        bad.len(),
        t * case.n,
        case.k,
        case.n,
        case.quant,
        &bad[..bad.len().min(5)]
    );
}

/// Whether the matrix-unit GEMM applies the group scales to its accumulators (exact integer weights).
fn scaled_taken(run: Run, prepared: &prep::PreparedGptq) -> bool {
    let wg = run.coop.map_or(0, |t| t.1);
    linear::coop_scaled(&super::gpu().caps, prepared.kp, prepared.group_rows, wg)
}

/// Whether the run's GEMM goes to the matrix units.
fn coop_taken(run: Run, prepared: &prep::PreparedGptq) -> bool {
    run.gemm
        && run.coop.is_some()
        && super::gpu().caps.coop_matrix
        && linear::coop_fits(prepared.group_rows)
}

/// The kernel took the path the run asked for: the integer GEMV exactly where the matrix fits it, the matrix-unit
/// GEMM exactly where the adapter has it and the matrix fits.
fn check_path(d: &[ops::Dispatch], run: Run, prepared: &prep::PreparedGptq) {
    if run.gemm {
        let want = coop_taken(run, prepared);
        for x in d {
            assert_eq!(
                x.label.contains("gptq_gemm_coop"),
                want,
                "{} for {run:?}",
                x.label
            );
            assert_eq!(
                x.label.contains("SCALED=1"),
                want && scaled_taken(run, prepared),
                "{} for {run:?}",
                x.label
            );
        }
        return;
    }
    let want = run.idot && linear::idot_fits(prepared.kp, prepared.group_rows);
    for x in d {
        assert_eq!(
            x.label.contains("IDOT=1"),
            want,
            "{} for {run:?} (kp {}, group rows {})",
            x.label,
            prepared.kp,
            prepared.group_rows
        );
    }
}
