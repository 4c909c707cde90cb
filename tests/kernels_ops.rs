//! The non-matmul kernels against CPU references on odd shapes: embedding gather (chunked table), RMSNorm,
//! RoPE + rolling KV-cache write + windowed attention over several prefill chunks and decode steps, SiLU·mul,
//! argmax (ties), and the f16 matmul (row chunks, last-row mode). Outputs are poisoned before each run.

mod common;

use half::f16;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use wgptq::gpu::kernels::{self, AttnShape};
use wgptq::gpu::linear::{self, GpuF16, GpuLinear, LinearMode, Prologue};
use wgptq::gpu::plan::rope_table;
use wgptq::gpu::{ops, Gpu, Pipelines, StepParams};

fn rand_vec(rng: &mut StdRng, n: usize) -> Vec<f32> {
    (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect()
}

fn step_buf(gpu: &Gpu, n_tokens: usize, pos0: usize, logits_row: usize) -> wgpu::Buffer {
    let s = StepParams {
        n_tokens: n_tokens as u32,
        pos0: pos0 as u32,
        logits_row: logits_row as u32,
        _pad: 0,
    };
    gpu.uniform_init("step", bytemuck::bytes_of(&s))
}

fn read_f32(gpu: &Gpu, b: &wgpu::Buffer, n: usize) -> Vec<f32> {
    bytemuck::pod_collect_to_vec(&gpu.read(b, 0, (n * 4) as u64).unwrap())
}

fn poisoned(gpu: &Gpu, n: usize) -> wgpu::Buffer {
    gpu.storage_init("out", bytemuck::cast_slice(&vec![f32::NAN; n]))
        .unwrap()
}

fn assert_close(what: &str, got: &[f32], want: &[f32], atol: f32, rtol: f32) {
    let bad: Vec<String> = got
        .iter()
        .zip(want)
        .enumerate()
        .filter(|(_, (g, w))| (*g - *w).abs().is_nan() || (*g - *w).abs() > atol + rtol * w.abs())
        .take(5)
        .map(|(i, (g, w))| format!("[{i}] got {g} want {w}"))
        .collect();
    assert!(
        bad.is_empty(),
        "{what}: mismatches (atol {atol}, rtol {rtol}): {bad:?}"
    );
}

/// A random order of `n` input indices and `pads` padding rows (u32::MAX), as act-order preparation makes.
fn shuffled_perm(rng: &mut StdRng, n: usize, pads: usize) -> Vec<u32> {
    let mut perm: Vec<u32> = (0..n as u32)
        .chain(std::iter::repeat_n(u32::MAX, pads))
        .collect();
    for i in (1..perm.len()).rev() {
        perm.swap(i, rng.random_range(0..=i));
    }
    perm
}

/// Rows of `t` × `n` values gathered through `perm` (0 for padding rows), as the act-order gather writes them.
fn gathered_rows(rows: &[f32], perm: &[u32], t: usize, n: usize) -> Vec<f32> {
    (0..t)
        .flat_map(|r| {
            perm.iter().map(move |&src| match src {
                u32::MAX => 0.0,
                s => rows[r * n + s as usize],
            })
        })
        .collect()
}

#[test]
fn embedding_gather_over_chunked_table() {
    let gpu = common::gpu();
    let pipes = Pipelines::new(gpu.clone());
    let mut rng = StdRng::seed_from_u64(1);
    let (vocab, h, t) = (37, 22, 5);
    let table: Vec<f16> = (0..vocab * h)
        .map(|_| f16::from_f32(rng.random_range(-1.0..1.0)))
        .collect();
    // Two chunks: rows [0, 20) and [20, 37).
    let chunks: Vec<(wgpu::Buffer, usize, usize)> = [(0usize, 20usize), (20, 17)]
        .iter()
        .map(|&(r0, rows)| {
            (
                gpu.storage_init("emb", bytemuck::cast_slice(&table[r0 * h..(r0 + rows) * h]))
                    .unwrap(),
                r0,
                rows,
            )
        })
        .collect();
    let tokens: Vec<u32> = vec![3, 36, 19, 20, 0];
    let tb = gpu
        .storage_init("tokens", bytemuck::cast_slice(&tokens))
        .unwrap();
    let x = poisoned(&gpu, t * h);
    let step = step_buf(&gpu, t, 0, 0);
    let d = kernels::embed(&pipes, &step, &tb, &chunks, &x, h as u32, t as u32).unwrap();
    ops::run(&gpu, &d.iter().collect::<Vec<_>>()).unwrap();
    let want: Vec<f32> = tokens
        .iter()
        .flat_map(|&tk| {
            table[tk as usize * h..(tk as usize + 1) * h]
                .iter()
                .map(|v| v.to_f32())
        })
        .collect();
    assert_close("embed", &read_f32(&gpu, &x, t * h), &want, 0.0, 0.0);
}

#[test]
fn rmsnorm_and_the_normed_gather_match_reference() {
    let gpu = common::gpu();
    let pipes = Pipelines::new(gpu.clone());
    let mut rng = StdRng::seed_from_u64(2);
    for &(n, t) in &[(576usize, 3usize), (64, 1), (1000, 2), (4096, 1)] {
        let x = rand_vec(&mut rng, n * t);
        let w = rand_vec(&mut rng, n);
        let eps = 1e-5f32;
        let xb = gpu.storage_init("x", bytemuck::cast_slice(&x)).unwrap();
        let wb = gpu.storage_init("w", bytemuck::cast_slice(&w)).unwrap();
        let y = poisoned(&gpu, n * t);
        let step = step_buf(&gpu, t, 0, 0);
        let d = kernels::rmsnorm(&pipes, &step, &xb, &wb, &y, n as u32, eps, t as u32).unwrap();
        ops::run(&gpu, &[&d]).unwrap();
        let mut want = Vec::new();
        for r in 0..t {
            let row = &x[r * n..(r + 1) * n];
            let ms: f64 = row.iter().map(|v| (*v as f64).powi(2)).sum::<f64>() / n as f64;
            let inv = 1.0 / (ms + eps as f64).sqrt();
            want.extend(
                row.iter()
                    .zip(&w)
                    .map(|(v, g)| (*v as f64 * inv * *g as f64) as f32),
            );
        }
        assert_close(
            &format!("rmsnorm n={n}"),
            &read_f32(&gpu, &y, n * t),
            &want,
            1e-5,
            1e-5,
        );
        // The same norm fused into an act-order gather (prefill): a shuffled permutation with padding rows.
        let kp = n + 3;
        let perm = shuffled_perm(&mut rng, n, 3);
        let pb = gpu
            .storage_init("perm", bytemuck::cast_slice(&perm))
            .unwrap();
        let out = poisoned(&gpu, t * kp);
        let op = kernels::GatherOp::Norm { weight: &wb, eps };
        let d = kernels::gather(
            &pipes, &step, &xb, &pb, &out, kp as u32, n as u32, t as u32, op,
        )
        .unwrap();
        ops::run(&gpu, &[&d]).unwrap();
        let gathered = gathered_rows(&want, &perm, t, n);
        assert_close(
            &format!("gather with rmsnorm n={n}"),
            &read_f32(&gpu, &out, t * kp),
            &gathered,
            1e-5,
            1e-5,
        );
    }
}

#[test]
fn silu_mul_gather_swiglu_and_argmax() {
    let gpu = common::gpu();
    let pipes = Pipelines::new(gpu.clone());
    let mut rng = StdRng::seed_from_u64(3);
    let t = 3usize;
    // 132: the vec4 kernel; 131 (kept for the gather below): the scalar one.
    let mut last = None;
    for inter in [132usize, 131] {
        let gu: Vec<f32> = (0..t * 2 * inter)
            .map(|_| rng.random_range(-6.0f32..6.0))
            .collect();
        let gub = gpu.storage_init("gu", bytemuck::cast_slice(&gu)).unwrap();
        let act = poisoned(&gpu, t * inter);
        let step = step_buf(&gpu, t, 0, 0);
        let d = kernels::silu_mul(&pipes, &step, &gub, &act, inter as u32, t as u32).unwrap();
        ops::run(&gpu, &[&d]).unwrap();
        let mut want = Vec::new();
        for r in 0..t {
            for i in 0..inter {
                let g = gu[r * 2 * inter + i] as f64;
                let u = gu[r * 2 * inter + inter + i] as f64;
                want.push((g / (1.0 + (-g).exp()) * u) as f32);
            }
        }
        assert_close(
            &format!("silu_mul I={inter}"),
            &read_f32(&gpu, &act, t * inter),
            &want,
            1e-6,
            1e-5,
        );
        last = Some((inter, gub, step, want));
    }
    let (inter, gub, step, want) = last.expect("the loop ran");
    // The same activation gathered into an act-order layout (a shuffled permutation with padding rows), as the
    // prefill plans it for the down projection.
    let kp = inter + 5;
    let perm = shuffled_perm(&mut rng, inter, 5);
    let pb = gpu
        .storage_init("perm", bytemuck::cast_slice(&perm))
        .unwrap();
    let out = poisoned(&gpu, t * kp);
    let d = kernels::gather(
        &pipes,
        &step,
        &gub,
        &pb,
        &out,
        kp as u32,
        2 * inter as u32,
        t as u32,
        kernels::GatherOp::SwiGlu(inter as u32),
    )
    .unwrap();
    ops::run(&gpu, &[&d]).unwrap();
    let gathered = gathered_rows(&want, &perm, t, inter);
    assert_close(
        "gather_swiglu",
        &read_f32(&gpu, &out, t * kp),
        &gathered,
        1e-6,
        1e-5,
    );

    // argmax: the first of tied maxima wins, as torch.argmax.
    for (vocab, pos_a, pos_b) in [
        (1000usize, 717usize, 905usize),
        (33, 4, 5),
        (70001, 65536, 70000),
    ] {
        let mut logits = rand_vec(&mut rng, vocab);
        logits[pos_a] = 9.0;
        logits[pos_b] = 9.0;
        let lb = gpu
            .storage_init("logits", bytemuck::cast_slice(&logits))
            .unwrap();
        let tokens = gpu.storage_init("tokens", &[0xff; 16]).unwrap();
        let out = gpu.storage_init("out", &[0xff; 16]).unwrap();
        let d = kernels::argmax(&pipes, &step, &lb, &tokens, &out, vocab as u32, 0).unwrap();
        ops::run(&gpu, &[&d]).unwrap();
        let got: Vec<u32> = bytemuck::pod_collect_to_vec(&gpu.read(&out, 0, 4).unwrap());
        let next: Vec<u32> = bytemuck::pod_collect_to_vec(&gpu.read(&tokens, 0, 4).unwrap());
        assert_eq!(
            (got[0], next[0]),
            (pos_a as u32, pos_a as u32),
            "vocab {vocab}"
        );
    }
}

#[test]
fn f16_matmul_chunks_and_last_row() {
    let gpu = common::gpu();
    let pipes = Pipelines::new(gpu.clone());
    let mut rng = StdRng::seed_from_u64(4);
    let (n, k, t) = (75usize, 136usize, 4usize);
    let w: Vec<f16> = (0..n * k)
        .map(|_| f16::from_f32(rng.random_range(-1.0..1.0)))
        .collect();
    let x = rand_vec(&mut rng, t * k);
    let reference = |rows: std::ops::Range<usize>| -> Vec<f32> {
        let mut y = Vec::new();
        for r in rows {
            for c in 0..n {
                y.push(
                    (0..k)
                        .map(|i| x[r * k + i] as f64 * w[c * k + i].to_f64())
                        .sum::<f64>() as f32,
                );
            }
        }
        y
    };
    // Split by hand into two row chunks, as a small binding limit would.
    let chunks = vec![
        (
            gpu.storage_init("w0", bytemuck::cast_slice(&w[..40 * k]))
                .unwrap(),
            0,
            40,
        ),
        (
            gpu.storage_init("w1", bytemuck::cast_slice(&w[40 * k..]))
                .unwrap(),
            40,
            35,
        ),
    ];
    let lin = GpuLinear::F16(GpuF16 { k, n, chunks });
    let xb = gpu.storage_init("x", bytemuck::cast_slice(&x)).unwrap();
    let dummy = gpu.storage("dummy", 16).unwrap();
    for last_only in [false, true] {
        let rows = if last_only { 1 } else { t };
        let y = poisoned(&gpu, rows * n);
        let step = step_buf(&gpu, t, 0, 2);
        let mode = LinearMode {
            capacity: t as u32,
            gemm: false,
            add: false,
            last_only,
            y_col0: 0,
            y_stride: n as u32,
            tune: None,
            splits: 1,
            x_splits: 1,
            idot: false,
            coop: false,
            coop_tile: None,
            pre_permuted: false,
        };
        let d =
            linear::linear_dispatches(&pipes, &step, &lin, &xb, &y, &dummy, mode, Prologue::None)
                .unwrap();
        ops::run(&gpu, &d.iter().collect::<Vec<_>>()).unwrap();
        let want = if last_only {
            reference(2..3)
        } else {
            reference(0..t)
        };
        assert_close(
            &format!("f16 matmul last_only={last_only}"),
            &read_f32(&gpu, &y, rows * n),
            &want,
            1e-4,
            1e-4,
        );
    }
}

/// RoPE + KV write + attention, chunk after chunk, against a CPU model of the same sequence.
#[allow(clippy::too_many_arguments)]
fn attention_sequence(
    n_heads: usize,
    n_kv: usize,
    d: usize,
    window: usize,
    chunk: usize,
    steps: &[usize],
    seed: u64,
    splits: u32,
) {
    let gpu = common::gpu();
    let pipes = Pipelines::new(gpu.clone());
    let mut rng = StdRng::seed_from_u64(seed);
    let total: usize = steps.iter().sum();
    let slots = if window > 0 { window + chunk } else { total };
    let shape = AttnShape {
        n_heads: n_heads as u32,
        n_kv: n_kv as u32,
        head_dim: d as u32,
        slots: slots as u32,
        window: window as u32,
    };
    let theta = 10000.0;
    let table = rope_table(d, theta, total);
    let rope = gpu
        .storage_init("rope", bytemuck::cast_slice(&table))
        .unwrap();
    let width = (n_heads + 2 * n_kv) * d;
    let kc = gpu.storage("k", (slots * n_kv * d * 2) as u64).unwrap();
    let vc = gpu.storage("v", (slots * n_kv * d * 2) as u64).unwrap();
    let q = gpu.storage("q", (chunk * n_heads * d * 4) as u64).unwrap();
    let qkv_b = gpu.storage("qkv", (2 * chunk * width * 4) as u64).unwrap();
    let part = gpu
        .storage(
            "part",
            (chunk * n_heads * splits as usize * (d + 2) * 4) as u64,
        )
        .unwrap();
    // CPU history of rotated (f16-rounded) keys and values, by position.
    let mut keys: Vec<Vec<f32>> = Vec::new();
    let mut vals: Vec<Vec<f32>> = Vec::new();
    let rot = |v: &[f32], pos: usize| -> Vec<f32> {
        let h = d / 2;
        let mut o = vec![0f32; d];
        for i in 0..h {
            let [c, s] = table[pos * h + i];
            o[i] = v[i] * c - v[i + h] * s;
            o[i + h] = v[i + h] * c + v[i] * s;
        }
        o
    };
    let round =
        |v: Vec<f32>| -> Vec<f32> { v.into_iter().map(|x| f16::from_f32(x).to_f32()).collect() };
    let mut pos0 = 0;
    for &t in steps {
        let qkv = rand_vec(&mut rng, t * width);
        // Every other step hands RoPE its input as two split-K slabs that add up to qkv.
        let qkv_splits = 1 + (pos0 % 2) as u32;
        let mut slabs = vec![0f32; 2 * chunk * width];
        for (i, v) in qkv.iter().enumerate() {
            if qkv_splits == 2 {
                let r: f32 = rng.random_range(-1.0..1.0);
                slabs[i] = v - r;
                slabs[chunk * width + i] = r;
            } else {
                slabs[i] = *v;
            }
        }
        gpu.queue
            .write_buffer(&qkv_b, 0, bytemuck::cast_slice(&slabs));
        let out = poisoned(&gpu, chunk * n_heads * d);
        let step = step_buf(&gpu, t, pos0, 0);
        let r = kernels::rope_kv(
            &pipes,
            &step,
            &qkv_b,
            &rope,
            &q,
            &kc,
            &vc,
            shape,
            chunk as u32,
            qkv_splits,
        )
        .unwrap();
        let a = kernels::attention(
            &pipes,
            &step,
            &q,
            &kc,
            &vc,
            &out,
            &part,
            shape,
            chunk as u32,
            splits,
        )
        .unwrap();
        let mut all = vec![&r];
        all.extend(a.iter());
        ops::run(&gpu, &all).unwrap();
        let got = read_f32(&gpu, &out, t * n_heads * d);
        let mut want = Vec::new();
        let mut qs = Vec::new();
        for tt in 0..t {
            let row = &qkv[tt * width..(tt + 1) * width];
            let pos = pos0 + tt;
            for kv in 0..n_kv {
                let kk = &row[(n_heads + kv) * d..(n_heads + kv + 1) * d];
                let vv = &row[(n_heads + n_kv + kv) * d..(n_heads + n_kv + kv + 1) * d];
                if kv == 0 {
                    keys.push(Vec::new());
                    vals.push(Vec::new());
                }
                keys[pos].extend(round(rot(kk, pos)));
                vals[pos].extend(round(vv.to_vec()));
            }
            qs.push(
                (0..n_heads)
                    .map(|h| rot(&row[h * d..(h + 1) * d], pos))
                    .collect::<Vec<_>>(),
            );
        }
        for (tt, qh) in qs.iter().enumerate() {
            let i = pos0 + tt;
            let lo = if window > 0 {
                (i + 1).saturating_sub(window)
            } else {
                0
            };
            for (h, qv) in qh.iter().enumerate() {
                let kvh = h / (n_heads / n_kv);
                let scores: Vec<f64> = (lo..=i)
                    .map(|j| {
                        (0..d)
                            .map(|e| qv[e] as f64 * keys[j][kvh * d + e] as f64)
                            .sum::<f64>()
                            / (d as f64).sqrt()
                    })
                    .collect();
                let m = scores.iter().cloned().fold(f64::MIN, f64::max);
                let p: Vec<f64> = scores.iter().map(|s| (s - m).exp()).collect();
                let z: f64 = p.iter().sum();
                for e in 0..d {
                    want.push(
                        ((lo..=i)
                            .zip(&p)
                            .map(|(j, pj)| pj * vals[j][kvh * d + e] as f64)
                            .sum::<f64>()
                            / z) as f32,
                    );
                }
            }
        }
        assert_close(
            &format!("attention at pos0={pos0} t={t}"),
            &got,
            &want,
            2e-5,
            1e-4,
        );
        pos0 += t;
    }
}

#[test]
fn attention_sliding_window_rolls_over_chunks_and_decode() {
    // window 5, chunks of up to 4: the cache (9 slots) wraps several times; decode steps after prefill.
    attention_sequence(4, 2, 16, 5, 4, &[4, 3, 4, 1, 1, 4, 1, 1, 1, 2, 1], 5, 1);
    // The same with keys split over 3 workgroups (flash-decoding; some splits are empty at short range).
    attention_sequence(4, 2, 16, 5, 4, &[4, 3, 4, 1, 1, 4, 1, 1, 1, 2, 1], 5, 3);
}

#[test]
fn attention_plain_causal_gqa_head_dim_128() {
    // No window, 8 query heads on 2 kv heads, head_dim 128.
    attention_sequence(8, 2, 128, 0, 40, &[40, 33, 1, 1, 1], 6, 1);
    attention_sequence(8, 2, 128, 0, 40, &[40, 33, 1, 1, 1], 6, 4);
}

#[test]
fn attention_split_over_many_keys_merges_partials() {
    // 700+ keys: three runs of 256 keys merged by the combine op, plain causal and with a window of 300.
    let steps = [100, 100, 100, 100, 100, 100, 100, 1, 1, 1];
    attention_sequence(4, 1, 32, 0, 100, &steps, 9, 3);
    attention_sequence(4, 2, 32, 300, 100, &steps, 10, 2);
    // 9 splits: the combine op's split loops run over more than one chunk of 8.
    let steps = [300, 300, 300, 300, 300, 300, 300, 1, 1];
    attention_sequence(2, 1, 16, 0, 300, &steps, 13, 9);
}

#[test]
fn attention_tiled_prefill_windows_and_tiles() {
    // Prefill chunks of 70 (two 64-query tiles, the last partial) take the tiled kernel: a window of 50 over
    // a cache of 120 slots that wraps, then plain causal with head_dim 64 and 96 (GQA 4:1 and MHA); decode
    // steps in between take the one-query kernel.
    attention_sequence(4, 2, 32, 50, 70, &[70, 70, 33, 1, 1, 70, 2], 14, 1);
    attention_sequence(8, 2, 64, 0, 70, &[70, 5, 1, 64], 15, 1);
    attention_sequence(2, 2, 96, 0, 40, &[40, 37], 16, 1);
}

#[test]
fn attention_odd_head_dim_and_mha() {
    attention_sequence(3, 3, 20, 7, 6, &[6, 6, 5, 1, 1, 1, 1], 8, 2);
}

#[test]
fn attention_widest_head_dim() {
    // head_dim 256: 64 lanes per value row, 4 key groups.
    attention_sequence(2, 1, 256, 0, 9, &[9, 1, 1, 1], 11, 2);
}

#[test]
fn reduce_add_sums_slabs_and_block_sums_of_squares() {
    let gpu = common::gpu();
    let pipes = Pipelines::new(gpu.clone());
    let mut rng = StdRng::seed_from_u64(12);
    for &(n, t, splits) in &[(576usize, 2usize, 3u32), (100, 1, 0), (4096, 1, 16)] {
        let x = rand_vec(&mut rng, t * n);
        let part = rand_vec(&mut rng, (splits as usize).max(1) * t * n);
        let xb = gpu.storage_init("x", bytemuck::cast_slice(&x)).unwrap();
        let pb = gpu
            .storage_init("part", bytemuck::cast_slice(&part))
            .unwrap();
        let blocks = kernels::ss_blocks(n as u32) as usize;
        let ss = poisoned(&gpu, t * blocks);
        let step = step_buf(&gpu, t, 0, 0);
        let d =
            kernels::reduce_add(&pipes, &step, &pb, &xb, &ss, n as u32, splits, t as u32).unwrap();
        ops::run(&gpu, &[&d]).unwrap();
        let mut want_x = x.clone();
        for r in 0..t {
            for i in 0..n {
                for s in 0..splits as usize {
                    want_x[r * n + i] += part[(s * t + r) * n + i];
                }
            }
        }
        assert_close(
            &format!("reduce_add x n={n}"),
            &read_f32(&gpu, &xb, t * n),
            &want_x,
            1e-5,
            1e-5,
        );
        // One sum of squares per SS_COLS columns (the last block partial), every one written.
        let got_ss = read_f32(&gpu, &ss, t * blocks);
        let cols = kernels::SS_COLS as usize;
        for r in 0..t {
            for b in 0..blocks {
                let want: f64 = want_x[r * n + b * cols..r * n + ((b + 1) * cols).min(n)]
                    .iter()
                    .map(|v| (*v as f64).powi(2))
                    .sum();
                let got = got_ss[r * blocks + b] as f64;
                assert!(
                    (got - want).abs() <= 1e-5 * want,
                    "row {r} block {b}: sum of squares {got}, want {want}"
                );
            }
        }
    }
    // More than 16 slabs is refused, not silently truncated.
    let b = gpu.storage("b", 64).unwrap();
    let step = step_buf(&gpu, 1, 0, 0);
    assert!(kernels::reduce_add(&pipes, &step, &b, &b, &b, 4, 17, 1).is_err());
}

/// The runner's grid-barrier kernel finishes and leaves its counters at zero, so the next dispatch (the runner
/// times two in a row) starts from a clean count; a wrong arrival count would spin forever (the test would hang
/// rather than pass). One workgroup: CI's lavapipe does not promise that several are resident at once.
#[test]
fn grid_barrier_finishes_and_resets_its_counters() {
    let gpu = common::gpu();
    let pipes = Pipelines::new(gpu.clone());
    let bar = gpu
        .storage_init("bar", bytemuck::cast_slice(&[0u32; 4]))
        .unwrap();
    let step = step_buf(&gpu, 1, 0, 0);
    let d = kernels::grid_barrier(&pipes, &step, &bar, 1, 50).unwrap();
    ops::run(&gpu, &[&d, &d]).unwrap();
    let got: Vec<u32> = read_f32(&gpu, &bar, 2)
        .iter()
        .map(|v| v.to_bits())
        .collect();
    assert_eq!(
        got,
        [0, 0],
        "arrival and departure counters after two dispatches"
    );
}
