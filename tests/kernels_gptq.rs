//! GPTQ kernels (GEMV for decode, tiled GEMM for prefill) against a CPU reference on random shapes: 4- and
//! 8-bit, group 32/64/128/-1 (with a short last group), act-order, arbitrary g_idx, sym and asym zeros, v1 and
//! v2 formats, residual epilogue. Output buffers are poisoned with NaN so an unwritten element fails.

mod common;

use common::gptq::{make_case, GIdx, Spec};
use common::gptq_run::{run_case, Run};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use wgptq::gpu::linear::{self, GpuLinear, LinearMode, Prologue};
use wgptq::gpu::{ops, StepParams};
use wgptq::model::CheckpointFormat;
use wgptq::prep;

fn sweep(gemm: bool, tokens: &[usize], seed: u64) {
    let mut rng = StdRng::seed_from_u64(seed);
    use CheckpointFormat::{V1, V2};
    // (k, n, bits, group, g_idx, sym, format)
    let spec = |k, n, bits, group, g, sym, format| Spec {
        k,
        n,
        bits,
        group,
        g,
        sym,
        format,
    };
    let cases = [
        spec(256, 64, 4, Some(128), GIdx::ActOrder, true, V1),
        spec(200, 40, 4, Some(64), GIdx::ActOrder, true, V1), // short last group (200 = 3 * 64 + 8)
        spec(96, 24, 4, Some(32), GIdx::Absent, false, V1),   // asym, trivial groups
        spec(136, 72, 4, None, GIdx::ActOrder, true, V2),     // group -1
        spec(120, 36, 8, Some(32), GIdx::ActOrder, false, V2), // 8-bit asym
        spec(260, 100, 8, None, GIdx::Absent, true, V1),      // 8-bit group -1
        spec(128, 52, 8, Some(128), GIdx::ActOrder, true, V1),
        spec(160, 48, 4, Some(32), GIdx::Arbitrary, false, V1), // non-trivial g_idx, uneven groups
        spec(88, 20, 8, Some(32), GIdx::Arbitrary, true, V2),
        spec(576, 132, 4, Some(128), GIdx::ActOrder, true, V1), // SmolLM-like K, 5 groups
        spec(4352, 16, 4, Some(128), GIdx::ActOrder, true, V1), // K over one staged chunk (4096 rows)
        spec(4200, 12, 8, Some(64), GIdx::Arbitrary, false, V2), // ... with a short last group and padding
    ];
    for (i, &sp) in cases.iter().enumerate() {
        let case = make_case(&mut rng, sp);
        let t = tokens[i % tokens.len()];
        // GEMV: every prologue and every workgroup shape the planner may choose, spread over the cases.
        let pro = if gemm { 0 } else { (i % 3) as u32 };
        let tune = if gemm {
            None
        } else {
            Some(linear::GEMV_TUNES[i % linear::GEMV_TUNES.len()])
        };
        // GEMV split-K over 1..5 slabs (the residual epilogue only without split), SwiGLU over 1..3 input slabs.
        let splits = if gemm || i % 4 == 1 {
            1
        } else {
            1 + (i % 5) as u32
        };
        let x_splits = if pro == 2 { 1 + 2 * (i % 2) as u32 } else { 1 };
        let run = Run {
            t,
            gemm,
            add: i % 4 == 1,
            pro,
            tune,
            splits,
            x_splits,
            residual: false,
            atomic: false,
            own_ss: false,
            gathered: false,
            idot: false,
            coop: None,
            cap: 0,
        };
        run_case(&case, run, &mut rng);
        // The integer GEMV path on the same case.
        if !gemm {
            run_case(&case, Run { idot: true, ..run }, &mut rng);
        }
        // The RMSNorm prologue summing its row's squares itself (decode with the atomic residual), both paths.
        if pro == 1 {
            for idot in [false, true] {
                run_case(
                    &case,
                    Run {
                        own_ss: true,
                        idot,
                        ..run
                    },
                    &mut rng,
                );
            }
        }
        // The matrix units on the same case, every tile (adapters that have them; lavapipe has not), split over
        // K into 1..3 slabs where there is no add (q|k|v's prefill) and the matrix fits them.
        let fits = linear::coop_fits(case.prepare().group_rows);
        let coop_splits = |j: usize| {
            if run.add || !fits {
                1
            } else {
                1 + ((i + j) % 3) as u32
            }
        };
        for (j, tile) in coop_tiles(gemm).enumerate() {
            run_case(
                &case,
                Run {
                    coop: Some(tile),
                    splits: coop_splits(j),
                    ..run
                },
                &mut rng,
            );
        }
        // The prefill path for act-order checkpoints: gather, then the GEMM on the prepared order.
        if gemm && case.g_idx.is_some() {
            for (j, coop) in std::iter::once(None)
                .chain(coop_tiles(true).map(Some))
                .enumerate()
            {
                let splits = if coop.is_some() {
                    coop_splits(j + 1)
                } else {
                    1
                };
                run_case(
                    &case,
                    Run {
                        gathered: true,
                        coop,
                        splits,
                        ..run
                    },
                    &mut rng,
                );
            }
        }
        // The residual epilogue where decode uses it: after a GEMV with no prologue (o) or SwiGLU (down).
        if !gemm && !run.add && pro != 1 {
            for (idot, atomic) in [(false, false), (true, false), (false, true), (true, true)] {
                if atomic && !common::gpu().caps.float_atomics {
                    continue;
                }
                let run = Run {
                    residual: true,
                    atomic,
                    idot,
                    ..run
                };
                run_case(&case, run, &mut rng);
            }
        }
    }
}

/// The matrix-unit GEMM's tiles this adapter runs (none on adapters without matrix units, e.g. lavapipe).
fn coop_tiles(gemm: bool) -> impl Iterator<Item = (u32, u32)> {
    let caps = &common::gpu().caps;
    let on = gemm && caps.coop_matrix;
    let max = caps.max_invocations;
    linear::COOP_TILES
        .into_iter()
        .filter(move |t| on && t.1 <= max)
}

#[test]
fn gptq_gemv_matches_reference() {
    sweep(false, &[1, 2, 1, 3], 7);
}

#[test]
fn gptq_gemv_residual_epilogue_over_many_splits_and_blocks() {
    let mut rng = StdRng::seed_from_u64(19);
    // n = 264: 66 column quads over several column blocks (the last one partly dead) and a short last 32-column
    // block; up to the 16 slabs the epilogue adds; without split-K on the shape the planner gives o_proj
    // (linear::RESIDUAL_GEMV_TUNE), also over two staged chunks (K = 4352).
    for (k, bits, pro, splits, tune) in [
        (1024, 4, 0, 16, (16, 16)),
        (1024, 8, 2, 7, (8, 32)),
        (1024, 4, 2, 2, (64, 4)),
        (1024, 8, 0, 1, linear::RESIDUAL_GEMV_TUNE),
        (4352, 4, 2, 1, linear::RESIDUAL_GEMV_TUNE),
    ] {
        let case = make_case(
            &mut rng,
            Spec {
                k,
                n: 264,
                bits,
                group: Some(128),
                g: GIdx::ActOrder,
                sym: bits == 4,
                format: CheckpointFormat::V1,
            },
        );
        let run = Run {
            t: 1,
            gemm: false,
            add: false,
            pro,
            tune: Some(tune),
            splits,
            x_splits: 1 + pro / 2,
            residual: true,
            atomic: false,
            own_ss: false,
            gathered: false,
            idot: false,
            coop: None,
            cap: 0,
        };
        run_case(&case, run, &mut rng);
        run_case(&case, Run { idot: true, ..run }, &mut rng);
        if common::gpu().caps.float_atomics {
            let run = Run {
                atomic: true,
                ..run
            };
            run_case(&case, run, &mut rng);
            run_case(&case, Run { idot: true, ..run }, &mut rng);
        }
    }
}

/// A NaN or infinite activation gives non-finite outputs on both GEMV paths, never finite numbers (the integer
/// path would otherwise round it into bytes). The output starts at 0, so an unwritten element fails too.
#[test]
fn gptq_gemv_non_finite_activations_stay_non_finite() {
    let gpu = common::gpu();
    let pipes = ops::Pipelines::new(gpu.clone());
    let mut rng = StdRng::seed_from_u64(23);
    for bits in [4, 8] {
        let case = make_case(
            &mut rng,
            Spec {
                k: 256,
                n: 64,
                bits,
                group: Some(128),
                g: GIdx::ActOrder,
                sym: bits == 4,
                format: CheckpointFormat::V1,
            },
        );
        let prepared = case.prepare();
        let lin = GpuLinear::Gptq(linear::upload_gptq(&gpu, "w", &prepared).expect("upload"));
        let dummy = gpu.storage("dummy", 16).unwrap();
        let step = StepParams {
            n_tokens: 1,
            pos0: 0,
            logits_row: 0,
            _pad: 0,
        };
        let stepb = gpu.uniform_init("step", bytemuck::bytes_of(&step));
        for bad in [f32::NAN, f32::INFINITY] {
            let mut x: Vec<f32> = (0..case.k).map(|_| rng.random_range(-1.0..1.0)).collect();
            x[rng.random_range(0..case.k)] = bad;
            let xb = gpu.storage_init("x", bytemuck::cast_slice(&x)).unwrap();
            for idot in [false, true] {
                let yb = gpu
                    .storage_init("y", bytemuck::cast_slice(&vec![0f32; case.n]))
                    .unwrap();
                let mut mode = LinearMode::new(1, false, case.n as u32);
                mode.idot = idot;
                let d = linear::linear_dispatches(
                    &pipes,
                    &stepb,
                    &lin,
                    &xb,
                    &yb,
                    &dummy,
                    mode,
                    Prologue::None,
                )
                .expect("dispatch");
                assert_eq!(d[0].label.contains("IDOT=1"), idot, "{}", d[0].label);
                ops::run(&gpu, &d.iter().collect::<Vec<_>>()).expect("run");
                let y: Vec<f32> =
                    bytemuck::pod_collect_to_vec(&gpu.read(&yb, 0, (case.n * 4) as u64).unwrap());
                let finite = y.iter().filter(|v| v.is_finite()).count();
                assert_eq!(
                    finite, 0,
                    "{bits}-bit, input {bad}, integer path {idot}: {finite} finite outputs"
                );
            }
        }
    }
}

#[test]
fn gptq_gemm_matches_reference() {
    // Up to three token tiles of the GEMM (64 tokens each), partial ones included.
    sweep(true, &[5, 17, 130, 16, 1, 70], 11);
}

#[test]
fn gptq_gemm_whole_tiles_in_a_larger_plan() {
    // Prefill shapes: N a multiple of 128 and a plan of whole 128-token tiles, the step filling part of it (the
    // matrix-unit GEMM keeps its accumulators in y here), on both GEMMs where the adapter has matrix units.
    let mut rng = StdRng::seed_from_u64(21);
    use CheckpointFormat::V1;
    let specs = [
        (576, 256, 4, Some(128), GIdx::ActOrder, true, 200, 256),
        (4352, 128, 8, Some(32), GIdx::Absent, false, 128, 128),
        (200, 384, 4, None, GIdx::ActOrder, true, 37, 128),
    ];
    for (i, &(k, n, bits, group, g, sym, t, cap)) in specs.iter().enumerate() {
        let sp = Spec {
            k,
            n,
            bits,
            group,
            g,
            sym,
            format: V1,
        };
        let case = make_case(&mut rng, sp);
        for coop in std::iter::once(None).chain(coop_tiles(true).map(Some)) {
            let run = Run {
                t,
                gemm: true,
                add: i % 2 == 0,
                pro: 0,
                tune: None,
                splits: 1,
                x_splits: 1,
                residual: false,
                atomic: false,
                own_ss: false,
                gathered: case.g_idx.is_some(),
                idot: false,
                coop,
                cap,
            };
            run_case(&case, run, &mut rng);
        }
    }
}

#[test]
fn concatenated_projections_equal_separate_ones() {
    let mut rng = StdRng::seed_from_u64(3);
    let a = make_case(
        &mut rng,
        Spec {
            k: 128,
            n: 32,
            bits: 4,
            group: Some(32),
            g: GIdx::Absent,
            sym: true,
            format: CheckpointFormat::V1,
        },
    );
    let b = make_case(
        &mut rng,
        Spec {
            k: 128,
            n: 16,
            bits: 4,
            group: Some(32),
            g: GIdx::Absent,
            sym: true,
            format: CheckpointFormat::V1,
        },
    );
    let (pa, pb) = (a.prepare(), b.prepare());
    let cat = prep::concat_n(&[&pa, &pb]).expect("same layout concatenates");
    let (da, db, dc) = (
        prep::dequantize_prepared(&pa),
        prep::dequantize_prepared(&pb),
        prep::dequantize_prepared(&cat),
    );
    assert_eq!(dc.len(), da.len() + db.len());
    assert_eq!(&dc[..da.len()], &da[..]);
    assert_eq!(&dc[da.len()..], &db[..]);
    // Different act-order permutations must not concatenate.
    let c = make_case(
        &mut rng,
        Spec {
            k: 128,
            n: 16,
            bits: 4,
            group: Some(32),
            g: GIdx::ActOrder,
            sym: true,
            format: CheckpointFormat::V1,
        },
    );
    let pc = c.prepare();
    assert!(prep::concat_n(&[&pa, &pc]).is_none());
}

#[test]
fn down_act_order_moves_into_gate_up_column_order() {
    let mut rng = StdRng::seed_from_u64(4);
    let spec = |k, n, g| Spec {
        k,
        n,
        bits: 4,
        group: Some(32),
        g,
        sym: false,
        format: CheckpointFormat::V1,
    };
    // down [n 16, k 128] act-order: its order is a plain permutation of the 128 inputs.
    let down = make_case(&mut rng, spec(128, 16, GIdx::ActOrder)).prepare();
    let order = prep::input_order(&down)
        .expect("act-order without padding")
        .to_vec();
    // gate [n 128, k 64]: column c of the permuted matrix is the checkpoint's column order[c].
    let gate = make_case(&mut rng, spec(64, 128, GIdx::ActOrder)).prepare();
    let mut moved = gate.clone();
    assert!(prep::permute_columns(&mut moved, &order));
    let (w, wm) = (
        prep::dequantize_prepared(&gate),
        prep::dequantize_prepared(&moved),
    );
    for (c, &src) in order.iter().enumerate() {
        assert_eq!(
            wm[c * 64..(c + 1) * 64],
            w[src as usize * 64..(src as usize + 1) * 64]
        );
    }
    // down without its permutation reads input r as the checkpoint's input order[r].
    let mut plain = down.clone();
    plain.perm = None;
    let (d, dp) = (
        prep::dequantize_prepared(&down),
        prep::dequantize_prepared(&plain),
    );
    for col in 0..16 {
        for (r, &src) in order.iter().enumerate() {
            assert_eq!(dp[col * 128 + r], d[col * 128 + src as usize]);
        }
    }
    // Not a permutation of the columns: refused, nothing changed.
    let mut bad = gate.clone();
    assert!(!prep::permute_columns(&mut bad, &order[..127]));
    let mut dup = order.clone();
    dup[1] = dup[0];
    assert!(!prep::permute_columns(&mut bad, &dup));
    assert_eq!(bad, gate);
    // No order to move where act-order is the identity or has padding rows (uneven groups).
    let absent = make_case(&mut rng, spec(128, 16, GIdx::Absent)).prepare();
    assert!(prep::input_order(&absent).is_none());
    let uneven = make_case(&mut rng, spec(160, 16, GIdx::Arbitrary)).prepare();
    assert!(uneven.kp > uneven.k, "uneven groups pad");
    assert!(prep::input_order(&uneven).is_none());
}
