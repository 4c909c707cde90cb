//! Tensor values of synthetic checkpoints, and the streaming writer of the data section. Every block of
//! [`BLOCK_BYTES`] comes from its own RNG seeded by (seed, tensor, block), so threads can fill blocks in any
//! order and the bytes depend only on the spec.

use std::fs::File;
use std::io::Write;
use std::path::Path;
use std::sync::mpsc;

use rand::rngs::SmallRng;
use rand::seq::SliceRandom;
use rand::{Rng, RngCore, SeedableRng};

use super::{SyntheticSpec, BLOCK_BYTES, PIECE_BYTES};
use crate::error::{Error, Result};

/// How a tensor's values are made.
#[derive(Debug, Clone, Copy)]
pub(super) enum Fill {
    /// f16 ≈ N(0, 0.02) (embedding, head).
    Normal,
    /// f16 ≈ 1 (norm weights).
    Norm,
    /// Uniform random q-codes.
    Codes,
    /// Every u32 word equal (symmetric zeros).
    Const(u32),
    /// f16 group scales.
    Scales,
    /// g_idx of input size `k`; `perm` names the permutation (linears reading the same input share one).
    GIdx { k: usize, perm: u64 },
}

/// Generates the data section piece by piece on `threads` threads while a writer thread writes the previous
/// piece, so generation and disk I/O overlap and at most three pieces are in memory.
pub(super) fn stream_data(
    spec: &SyntheticSpec,
    items: &[(u64, Fill)],
    threads: usize,
    file: &mut File,
    path: &Path,
) -> Result<()> {
    let tables = Tables::new(spec);
    let (tx, rx) = mpsc::sync_channel::<Vec<u8>>(1);
    std::thread::scope(|s| {
        let writer = s.spawn(move || -> std::io::Result<()> {
            for piece in rx {
                file.write_all(&piece)?;
            }
            Ok(())
        });
        for (ti, &(bytes, fill)) in items.iter().enumerate() {
            let bytes = bytes as usize;
            let mut start = 0;
            while start < bytes {
                let len = PIECE_BYTES.min(bytes - start);
                let mut piece = vec![0u8; len];
                fill_piece(spec, &tables, fill, ti as u64, start, &mut piece, threads);
                if tx.send(piece).is_err() {
                    break; // the writer failed; its error is reported below
                }
                start += len;
            }
        }
        drop(tx);
        match writer.join() {
            Ok(r) => r.map_err(|e| Error::io(path, e)),
            Err(_) => Err(Error::io(
                path,
                std::io::Error::other("writer thread panicked"),
            )),
        }
    })
}

/// Lookup tables of f16 bit patterns, so filling costs a random index per element, not a float conversion.
struct Tables {
    normal: Vec<u16>,
    norm: Vec<u16>,
    scales: Vec<u16>,
}

const TABLE: usize = 4096;

impl Tables {
    fn new(spec: &SyntheticSpec) -> Tables {
        let mut rng = SmallRng::seed_from_u64(mix(spec.seed, u64::MAX, 0));
        let f16 = |x: f32| half::f16::from_f32(x).to_bits();
        let normal = (0..TABLE)
            .map(|_| {
                // Box–Muller.
                let u1: f32 = rng.random_range(f32::EPSILON..1.0);
                let u2: f32 = rng.random();
                f16(0.02 * (-2.0 * u1.ln()).sqrt() * (std::f32::consts::TAU * u2).cos())
            })
            .collect();
        let norm = (0..TABLE)
            .map(|_| f16(rng.random_range(0.9..1.1)))
            .collect();
        // Same dequantized spread for both widths: 4-bit codes span 15 steps, 8-bit 255.
        let base = 0.01 * 15.0 / ((1u32 << spec.bits) - 1) as f32;
        let scales = (0..TABLE)
            .map(|_| f16(base * rng.random_range(0.5..1.5)))
            .collect();
        Tables {
            normal,
            norm,
            scales,
        }
    }
}

/// SplitMix64 finaliser over (seed, tensor, block): independent streams per block.
fn mix(seed: u64, tensor: u64, block: u64) -> u64 {
    let mut z = seed
        ^ tensor.wrapping_mul(0x9E37_79B9_7F4A_7C15)
        ^ block.wrapping_mul(0xD1B5_4A32_D192_ED03);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Fills `out`, the bytes [offset, offset + len) of tensor `ti`; offset is a multiple of [`BLOCK_BYTES`].
fn fill_piece(
    spec: &SyntheticSpec,
    t: &Tables,
    fill: Fill,
    ti: u64,
    offset: usize,
    out: &mut [u8],
    threads: usize,
) {
    if let Fill::GIdx { k, perm } = fill {
        // Small (K entries): made whole, then the requested range copied.
        let g = g_idx(spec, k, perm);
        let bytes: &[u8] = bytemuck::cast_slice(&g);
        out.copy_from_slice(&bytes[offset..offset + out.len()]);
        return;
    }
    let blocks = out.len().div_ceil(BLOCK_BYTES);
    let first = (offset / BLOCK_BYTES) as u64;
    let per_thread = blocks.div_ceil(threads.min(blocks).max(1));
    if threads == 1 || blocks == 1 {
        for (b, chunk) in out.chunks_mut(BLOCK_BYTES).enumerate() {
            fill_block(spec, t, fill, ti, first + b as u64, chunk);
        }
        return;
    }
    std::thread::scope(|s| {
        for (w, part) in out.chunks_mut(per_thread * BLOCK_BYTES).enumerate() {
            s.spawn(move || {
                for (b, chunk) in part.chunks_mut(BLOCK_BYTES).enumerate() {
                    fill_block(
                        spec,
                        t,
                        fill,
                        ti,
                        first + (w * per_thread + b) as u64,
                        chunk,
                    );
                }
            });
        }
    });
}

fn fill_block(spec: &SyntheticSpec, t: &Tables, fill: Fill, ti: u64, block: u64, out: &mut [u8]) {
    let mut rng = SmallRng::seed_from_u64(mix(spec.seed, ti, block));
    let table = match fill {
        Fill::Codes => return rng.fill_bytes(out),
        Fill::Const(word) => {
            for w in out.chunks_exact_mut(4) {
                w.copy_from_slice(&word.to_le_bytes());
            }
            return;
        }
        Fill::GIdx { .. } => return,
        Fill::Normal => &t.normal,
        Fill::Norm => &t.norm,
        Fill::Scales => &t.scales,
    };
    // 12 random bits index a 4096-entry table; one u64 gives five f16 values.
    let mut halves = out.chunks_exact_mut(2);
    'outer: loop {
        let mut r = rng.next_u64();
        for _ in 0..5 {
            let Some(h) = halves.next() else { break 'outer };
            h.copy_from_slice(&table[(r & 0xFFF) as usize].to_le_bytes());
            r >>= 12;
        }
    }
}

/// g_idx of a linear with `k` inputs: act-order = the group of each row's position in a random permutation
/// (seeded by `perm`, so linears reading the same input get the same one), else `row / group_size`.
fn g_idx(spec: &SyntheticSpec, k: usize, perm: u64) -> Vec<i32> {
    let Some(gs) = spec.group_size else {
        return vec![0; k];
    };
    if !spec.act_order {
        return (0..k).map(|row| (row / gs) as i32).collect();
    }
    let mut order: Vec<usize> = (0..k).collect();
    order.shuffle(&mut SmallRng::seed_from_u64(mix(
        spec.seed,
        u64::MAX - 1,
        perm,
    )));
    let mut g = vec![0i32; k];
    for (pos, &row) in order.iter().enumerate() {
        g[row] = (pos / gs) as i32;
    }
    g
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn act_order_groups_are_full_and_shared() {
        let spec = SyntheticSpec::tiny();
        let g = g_idx(&spec, 128, 7);
        let mut counts = [0usize; 4];
        for &x in &g {
            counts[x as usize] += 1;
        }
        assert_eq!(counts, [32; 4]);
        assert_eq!(g, g_idx(&spec, 128, 7));
        assert_ne!(g, g_idx(&spec, 128, 8));
        assert!(g.iter().enumerate().any(|(i, &x)| x as usize != i / 32));
    }
}
