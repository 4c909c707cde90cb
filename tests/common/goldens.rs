//! HF transformers goldens in ../shared/models (golden.json beside each model) and the checks the model tests
//! make against them.

use serde_json::Value;
use wgptq::sampling::argmax;
use wgptq::{DeviceOptions, LoadOptions, Model};

pub const TOL: f32 = 3e-2;
/// A golden step whose top-1/top-2 margin is under this may legitimately flip under float reordering; ids are
/// only compared up to the first such step (none of the current goldens has one, but the rule is stated).
pub const MIN_MARGIN: f64 = 1e-3;

pub fn golden(model: &str) -> Value {
    let p = super::shared_dir()
        .join("models")
        .join(model)
        .join("golden.json");
    serde_json::from_str(&std::fs::read_to_string(&p).expect("golden.json")).expect("golden json")
}

pub fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .expect("id list")
        .iter()
        .map(|x| x.as_u64().expect("id") as u32)
        .collect()
}

pub fn load(model: &str, chunk: usize, ctx: usize) -> Model {
    load_with(model, chunk, ctx, DeviceOptions::default())
}

pub fn load_with(model: &str, chunk: usize, ctx: usize, device: DeviceOptions) -> Model {
    let dir = super::shared_dir().join("models").join(model);
    let opts = LoadOptions {
        prefill_chunk: chunk,
        max_context: Some(ctx),
        device,
    };
    Model::load(&dir, &opts).expect("model loads")
}

/// Each golden (id, logit) of a top-5 list must match our logit for that id within TOL, and our argmax must be
/// the golden top-1.
pub fn check_top5(what: &str, logits: &[f32], top5: &Value) {
    let list = top5.as_array().expect("top5");
    for pair in list {
        let id = pair[0].as_u64().expect("id") as usize;
        let want = pair[1].as_f64().expect("logit") as f32;
        let got = logits[id];
        assert!(
            (got - want).abs() <= TOL,
            "{what}: logit of token {id} is {got}, golden {want}"
        );
    }
    let top = list[0][0].as_u64().expect("id") as u32;
    assert_eq!(
        argmax(logits),
        top,
        "{what}: argmax differs from the golden top-1"
    );
}

/// Number of leading steps whose ids must match exactly (up to the first near-tie).
pub fn robust_steps(margins: &Value, n: usize) -> usize {
    margins
        .as_array()
        .map(|m| {
            m.iter()
                .position(|x| x.as_f64().unwrap_or(1.0) < MIN_MARGIN)
                .unwrap_or(n)
        })
        .unwrap_or(n)
        .min(n)
}

/// Greedy decode on the host path (logits read back each step, one token per decode step through the KV cache)
/// from `prompt`: each of the first `n` steps' top-5 logits against `g`'s and its argmax against `want`.
pub fn check_host_greedy(
    model: &Model,
    g: &Value,
    prompt: &[u32],
    want: &[u32],
    n: usize,
    what: &str,
) {
    let mut s = model.session(false).unwrap();
    let mut logits = s.prefill(prompt).unwrap();
    for step in 0..n {
        check_top5(
            &format!("{what}greedy step {step}"),
            &logits,
            &g["greedy_top5_per_step"][step],
        );
        let next = argmax(&logits);
        assert_eq!(next, want[step], "{what}greedy step {step}");
        logits = s.decode(next).unwrap();
    }
}
