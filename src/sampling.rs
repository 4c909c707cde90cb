//! Token selection with Hugging Face `generate()` semantics and order: repetition penalty → temperature →
//! top-k → top-p → sample (greedy = argmax of the processed logits). Each processor is a public function so the
//! tests can compare it with transformers' own processors.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::error::{Error, Result};

/// Sampling settings. `temperature == 0` means greedy.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SamplingParams {
    pub temperature: f32,
    /// 0 = off.
    pub top_k: usize,
    /// 1.0 = off.
    pub top_p: f32,
    /// 1.0 = off.
    pub repetition_penalty: f32,
    pub seed: Option<u64>,
}

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams {
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            repetition_penalty: 1.0,
            seed: None,
        }
    }
}

impl SamplingParams {
    pub fn validate(&self) -> Result<()> {
        let bad = |name: &str, value: String, reason: &str| {
            Err(Error::InvalidArgument {
                name: name.into(),
                value,
                reason: reason.into(),
            })
        };
        if !(self.temperature >= 0.0 && self.temperature.is_finite()) {
            return bad(
                "temperature",
                self.temperature.to_string(),
                "must be a finite number >= 0",
            );
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return bad("top_p", self.top_p.to_string(), "must be in (0, 1]");
        }
        if !(self.repetition_penalty > 0.0 && self.repetition_penalty.is_finite()) {
            return bad(
                "repetition_penalty",
                self.repetition_penalty.to_string(),
                "must be a finite number > 0",
            );
        }
        Ok(())
    }

    /// Defaults from generation_config.json as HF `generate()` reads them: sampling only with `do_sample`, then
    /// temperature 1, top-k 50 and top-p 1 unless the file sets them; the repetition penalty applies either way.
    pub fn from_defaults(g: &crate::model::GenerationDefaults) -> SamplingParams {
        let sample = g.do_sample.unwrap_or(false);
        SamplingParams {
            temperature: if sample {
                g.temperature.unwrap_or(1.0)
            } else {
                0.0
            },
            top_k: if sample { g.top_k.unwrap_or(50) } else { 0 },
            top_p: if sample { g.top_p.unwrap_or(1.0) } else { 1.0 },
            repetition_penalty: g.repetition_penalty.unwrap_or(1.0),
            seed: None,
        }
    }

    pub fn is_greedy(&self) -> bool {
        self.temperature == 0.0
    }

    /// The processor chain of HF `generate()` in its order, in place: repetition penalty over `history` (prompt +
    /// generated ids), then, unless greedy, temperature, top-k and top-p. Filtered tokens become -inf.
    pub fn process(&self, logits: &mut [f32], history: &[u32]) {
        repetition_penalty(logits, history, self.repetition_penalty);
        if self.is_greedy() {
            return;
        }
        temperature(logits, self.temperature);
        top_k(logits, self.top_k);
        top_p(logits, self.top_p);
    }
}

/// HF RepetitionPenaltyLogitsProcessor: every distinct token of `history` once; negative logits multiplied,
/// positive divided.
pub fn repetition_penalty(logits: &mut [f32], history: &[u32], penalty: f32) {
    if penalty == 1.0 {
        return;
    }
    let mut seen = std::collections::HashSet::new();
    for &t in history {
        let i = t as usize;
        if i < logits.len() && seen.insert(t) {
            let v = logits[i];
            logits[i] = if v < 0.0 { v * penalty } else { v / penalty };
        }
    }
}

/// HF TemperatureLogitsWarper.
pub fn temperature(logits: &mut [f32], t: f32) {
    if t != 1.0 {
        for v in logits.iter_mut() {
            *v /= t;
        }
    }
}

/// HF TopKLogitsWarper: everything below the k-th largest value becomes -inf (ties with it survive).
pub fn top_k(logits: &mut [f32], k: usize) {
    if k == 0 || k >= logits.len() {
        return;
    }
    let mut sorted: Vec<f32> = logits.to_vec();
    sorted.select_nth_unstable_by(k - 1, |a, b| b.total_cmp(a));
    let kth = sorted[k - 1];
    for v in logits.iter_mut() {
        if *v < kth {
            *v = f32::NEG_INFINITY;
        }
    }
}

/// HF TopPLogitsWarper: sort ascending, drop tokens whose cumulative probability is <= 1 - p, always keep the top one.
/// Where tied logits straddle the cut, transformers' result depends on torch's unstable sort; here the lower
/// token id is dropped first.
pub fn top_p(logits: &mut [f32], p: f32) {
    if p >= 1.0 || logits.is_empty() {
        return;
    }
    // Tokens already at -inf (top-k's cut) have probability 0: sorted first, they add nothing to the cumulative
    // sum and are dropped again, so only the others are sorted (50 instead of 32,000 after top-k 50: the host
    // sampler, with the live-token softmax of `Sampler::sample`, went from 1.5 ms to 0.1 ms per token here).
    let mut idx: Vec<usize> = (0..logits.len())
        .filter(|&i| logits[i] != f32::NEG_INFINITY)
        .collect();
    if idx.is_empty() {
        return;
    }
    idx.sort_unstable_by(|&a, &b| logits[a].total_cmp(&logits[b]).then(a.cmp(&b)));
    let probs = softmax(&idx.iter().map(|&i| logits[i]).collect::<Vec<_>>());
    let mut cum = 0.0f32;
    let last = idx.len() - 1;
    for (rank, &i) in idx.iter().enumerate() {
        cum += probs[rank];
        if cum <= 1.0 - p && rank != last {
            logits[i] = f32::NEG_INFINITY;
        }
    }
}

/// Softmax in f32 with max subtraction.
pub fn softmax(x: &[f32]) -> Vec<f32> {
    let m = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let e: Vec<f32> = x.iter().map(|v| (v - m).exp()).collect();
    let s: f32 = e.iter().sum();
    e.iter().map(|v| v / s).collect()
}

/// Index of the largest value, the first on ties (torch.argmax).
pub fn argmax(x: &[f32]) -> u32 {
    let mut best = 0;
    for (i, v) in x.iter().enumerate() {
        if *v > x[best] {
            best = i;
        }
    }
    best as u32
}

/// The `k` most likely tokens with their log-softmax of the raw logits (OpenAI's top_logprobs).
pub fn top_logprobs(logits: &[f32], k: usize) -> Vec<(u32, f32)> {
    let m = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let lse = m + logits
        .iter()
        .map(|v| ((v - m) as f64).exp())
        .sum::<f64>()
        .ln() as f32;
    let mut idx: Vec<u32> = (0..logits.len() as u32).collect();
    let k = k.min(idx.len());
    if k == 0 {
        return Vec::new();
    }
    idx.select_nth_unstable_by(k - 1, |&a, &b| {
        logits[b as usize]
            .total_cmp(&logits[a as usize])
            .then(a.cmp(&b))
    });
    idx.truncate(k);
    idx.sort_by(|&a, &b| {
        logits[b as usize]
            .total_cmp(&logits[a as usize])
            .then(a.cmp(&b))
    });
    idx.into_iter()
        .map(|i| (i, logits[i as usize] - lse))
        .collect()
}

/// Stateful sampler (owns the seeded RNG).
pub struct Sampler {
    pub params: SamplingParams,
    rng: StdRng,
}

impl Sampler {
    pub fn new(params: SamplingParams) -> Result<Sampler> {
        params.validate()?;
        let rng = match params.seed {
            Some(s) => StdRng::seed_from_u64(s),
            None => StdRng::from_os_rng(),
        };
        Ok(Sampler { params, rng })
    }

    /// Chooses the next token from raw logits; `history` = prompt + generated ids (for the repetition penalty).
    pub fn sample(&mut self, raw: &[f32], history: &[u32]) -> u32 {
        let mut l = raw.to_vec();
        self.params.process(&mut l, history);
        if self.params.is_greedy() {
            return argmax(&l);
        }
        // The softmax of the live tokens only: those at -inf add exact zeros to every sum below, so this is
        // the full softmax's walk, bit for bit, without 32,000 exponentials.
        let m = l.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let live: Vec<(usize, f32)> = l
            .iter()
            .enumerate()
            .filter(|(_, v)| **v != f32::NEG_INFINITY)
            .map(|(i, v)| (i, (v - m).exp()))
            .collect();
        let total: f32 = live.iter().map(|(_, e)| e).sum();
        let r: f32 = self.rng.random();
        let mut cum = 0.0;
        for (i, e) in live {
            cum += e / total;
            if r < cum {
                return i as u32;
            }
        }
        argmax(&l)
    }
}
