//! wgptq's sampling processors against transformers' own (RepetitionPenaltyLogitsProcessor,
//! TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper), alone and chained in generate()'s order. The
//! vectors in tests/fixtures/hf_sampling.json were written by scripts/hf_sampling_vectors.py (transformers 5.17.0);
//! some cases have ties around the k-th largest logit.

use serde_json::Value;
use wgptq::sampling::{self, SamplingParams};

fn floats(v: &Value) -> Vec<f32> {
    v.as_array()
        .expect("array")
        .iter()
        .map(|x| x.as_f64().map_or(f32::NEG_INFINITY, |f| f as f32))
        .collect()
}

fn assert_same(case: &str, what: &str, got: &[f32], want: &[f32]) {
    assert_eq!(got.len(), want.len(), "{case} {what}: length");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        let ok = if w.is_infinite() {
            g == w
        } else {
            (g - w).abs() <= 1e-6 * w.abs().max(1.0)
        };
        assert!(ok, "{case} {what}: logit {i}: got {g}, transformers {w}");
    }
}

#[test]
fn processors_match_transformers() {
    let path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/hf_sampling.json");
    let data: Value =
        serde_json::from_str(&std::fs::read_to_string(&path).expect("fixture")).expect("json");
    let cases = data["cases"].as_array().expect("cases");
    assert!(cases.len() >= 8, "fixture has {} cases", cases.len());
    let mut filtered_somewhere = 0;
    for c in cases {
        let name = c["name"].as_str().expect("name");
        let logits = floats(&c["logits"]);
        let history: Vec<u32> = c["history"]
            .as_array()
            .expect("history")
            .iter()
            .map(|x| x.as_u64().expect("id") as u32)
            .collect();
        let penalty = c["penalty"].as_f64().expect("penalty") as f32;
        let temp = c["temperature"].as_f64().expect("temperature") as f32;
        let top_k = c["top_k"].as_u64().expect("top_k") as usize;
        let top_p = c["top_p"].as_f64().expect("top_p") as f32;
        let e = &c["expected"];

        let mut l = logits.clone();
        sampling::repetition_penalty(&mut l, &history, penalty);
        assert_same(
            name,
            "repetition_penalty",
            &l,
            &floats(&e["repetition_penalty"]),
        );

        let mut l = logits.clone();
        sampling::temperature(&mut l, temp);
        assert_same(name, "temperature", &l, &floats(&e["temperature"]));

        if top_k > 0 {
            let mut l = logits.clone();
            sampling::top_k(&mut l, top_k);
            assert_same(name, "top_k", &l, &floats(&e["top_k"]));
        }

        let mut l = logits.clone();
        sampling::top_p(&mut l, top_p);
        let want = floats(&e["top_p"]);
        assert_same(name, "top_p", &l, &want);
        filtered_somewhere += want.iter().filter(|v| v.is_infinite()).count();

        let params = SamplingParams {
            temperature: temp,
            top_k,
            top_p,
            repetition_penalty: penalty,
            seed: Some(0),
        };
        params.validate().expect("valid params");
        let mut l = logits.clone();
        params.process(&mut l, &history);
        assert_same(name, "chain", &l, &floats(&e["chain"]));
    }
    // The vectors must exercise filtering, or the top-k/top-p comparisons prove little.
    assert!(filtered_somewhere > 0);
}

/// `Sampler::sample` walks the softmax of the live tokens only; it must pick exactly what the walk over the
/// whole vocabulary's softmax picks, for the same seed, with and without top-k / top-p.
#[test]
fn sampler_matches_the_full_softmax_walk() {
    use rand::{Rng, SeedableRng};
    let mut gen = rand::rngs::StdRng::seed_from_u64(7);
    for case in 0..40 {
        let n = 1000 + case * 37;
        let logits: Vec<f32> = (0..n).map(|_| gen.random_range(-8.0f32..8.0)).collect();
        let params = SamplingParams {
            temperature: [0.7, 1.0, 1.3][case % 3],
            top_k: [0, 1, 50, 400][case % 4],
            top_p: [1.0, 0.9, 0.5][case % 3],
            repetition_penalty: 1.0,
            seed: Some(case as u64),
        };
        let mut sampler = sampling::Sampler::new(params).expect("params");
        let mut rng = rand::rngs::StdRng::seed_from_u64(case as u64);
        for _ in 0..20 {
            let got = sampler.sample(&logits, &[]);
            let mut l = logits.clone();
            params.process(&mut l, &[]);
            let probs = sampling::softmax(&l);
            let r: f32 = rng.random();
            let mut cum = 0.0;
            let mut want = sampling::argmax(&l);
            for (i, p) in probs.iter().enumerate() {
                cum += p;
                if r < cum {
                    want = i as u32;
                    break;
                }
            }
            assert_eq!(got, want, "case {case}: {params:?}");
        }
    }
}
