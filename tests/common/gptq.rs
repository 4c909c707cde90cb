//! Random GPTQ matrices in checkpoint layout with their dense meaning, for the kernel tests.

use half::f16;
use rand::rngs::StdRng;
use rand::Rng;
use wgptq::model::{CheckpointFormat, QuantConfig};
use wgptq::prep::{self, GptqTensors, PreparedGptq};

/// A random GPTQ matrix in checkpoint layout, plus its dense meaning.
pub struct Case {
    pub k: usize,
    pub n: usize,
    pub quant: QuantConfig,
    pub qweight: Vec<u32>,
    pub qzeros: Vec<u32>,
    pub scales: Vec<f16>,
    pub g_idx: Option<Vec<i32>>,
    /// W[n][k] in f64, computed straight from the definition.
    pub dense: Vec<f64>,
}

#[derive(Clone, Copy, Debug)]
pub enum GIdx {
    /// g = k / group_size, tensor absent
    Absent,
    /// act-order as GPTQ writes it: a random permutation, g = position / group_size
    ActOrder,
    /// any value in range (groups of uneven size)
    Arbitrary,
}

/// Parameters of one random matrix.
#[derive(Clone, Copy, Debug)]
pub struct Spec {
    pub k: usize,
    pub n: usize,
    pub bits: u32,
    pub group: Option<usize>,
    pub g: GIdx,
    pub sym: bool,
    pub format: CheckpointFormat,
}

pub fn make_case(rng: &mut StdRng, spec: Spec) -> Case {
    let Spec {
        k,
        n,
        bits,
        group,
        g,
        sym,
        format,
    } = spec;
    let pf = 32 / bits as usize;
    let maxq = (1u32 << bits) - 1;
    let gs = group.unwrap_or(k);
    let groups = k.div_ceil(gs);
    let g_idx: Vec<i32> = match g {
        GIdx::Absent => (0..k).map(|i| (i / gs) as i32).collect(),
        GIdx::ActOrder => {
            let mut perm: Vec<usize> = (0..k).collect();
            for i in (1..k).rev() {
                perm.swap(i, rng.random_range(0..=i));
            }
            let mut gi = vec![0i32; k];
            for (pos, &row) in perm.iter().enumerate() {
                gi[row] = (pos / gs) as i32;
            }
            gi
        }
        GIdx::Arbitrary => (0..k).map(|_| rng.random_range(0..groups) as i32).collect(),
    };
    let codes: Vec<u32> = (0..k * n).map(|_| rng.random_range(0..=maxq)).collect(); // [k][n]
    let zeros: Vec<u32> = (0..groups * n)
        .map(|_| {
            if sym {
                1 << (bits - 1)
            } else {
                rng.random_range(1..=maxq)
            }
        })
        .collect();
    let scales: Vec<f16> = (0..groups * n)
        .map(|_| f16::from_f32(rng.random_range(0.002..0.03)))
        .collect();
    let mut qweight = vec![0u32; k / pf * n];
    for kk in 0..k {
        for c in 0..n {
            qweight[(kk / pf) * n + c] |= codes[kk * n + c] << (bits as usize * (kk % pf));
        }
    }
    let mut qzeros = vec![0u32; groups * n / pf];
    for gg in 0..groups {
        for c in 0..n {
            let stored = match format {
                CheckpointFormat::V1 => zeros[gg * n + c] - 1,
                CheckpointFormat::V2 => zeros[gg * n + c],
            };
            qzeros[gg * (n / pf) + c / pf] |= stored << (bits as usize * (c % pf));
        }
    }
    let mut dense = vec![0f64; n * k];
    for kk in 0..k {
        let gg = g_idx[kk] as usize;
        for c in 0..n {
            let s = scales[gg * n + c].to_f64();
            dense[c * k + kk] = s * (codes[kk * n + c] as f64 - zeros[gg * n + c] as f64);
        }
    }
    Case {
        k,
        n,
        quant: QuantConfig {
            bits,
            group_size: group,
            desc_act: matches!(g, GIdx::ActOrder),
            sym,
            format,
        },
        qweight,
        qzeros,
        scales,
        g_idx: if matches!(g, GIdx::Absent) {
            None
        } else {
            Some(g_idx)
        },
        dense,
    }
}

impl Case {
    /// The matrix in the kernels' prepared layout (act-order resolved), as the loader makes it.
    pub fn prepare(&self) -> PreparedGptq {
        prep::prepare_gptq(
            &GptqTensors {
                qweight: &self.qweight,
                qzeros: &self.qzeros,
                scales: &self.scales,
                g_idx: self.g_idx.as_deref(),
                k: self.k,
                n: self.n,
            },
            &self.quant,
        )
    }
}
