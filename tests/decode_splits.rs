//! Decode with split-K in every GEMV, on the tiny Mistral goldens. lavapipe's plans never split (CPU adapters get
//! one split: `linear::gemv_splits`), so without this test CI would run neither the residual's split-K tails nor
//! the f32-atomic residual with the q|k|v RMSNorm summing its own row (`Epilogue::ResidualAtomic`) through a
//! whole model: the measurement overrides `WGPTQ_DECODE_<OP>=/SPLITS` force them. Its own test binary, so the
//! environment it sets reaches no other test.

mod common;

use common::goldens::{check_host_greedy, golden, ids, load_with, robust_steps};
use wgptq::DeviceOptions;

#[test]
fn split_k_decode_matches_goldens_with_atomic_and_ordered_residuals() {
    // SAFETY: the only test of this binary sets these before any thread reads the environment.
    unsafe {
        std::env::set_var("WGPTQ_DECODE_QKV", "/3");
        std::env::set_var("WGPTQ_DECODE_O", "/2");
        std::env::set_var("WGPTQ_DECODE_GATE_UP", "/2");
        std::env::set_var("WGPTQ_DECODE_DOWN", "/3");
    }
    let g = golden("tiny-mistral-swa-gptq4");
    let prompt = ids(&g["prompt_ids"]);
    let want = ids(&g["greedy_ids"]);
    let n = robust_steps(&g["top1_top2_margin"], want.len());
    for deterministic in [false, true] {
        let model = load_with(
            "tiny-mistral-swa-gptq4",
            16,
            256,
            DeviceOptions {
                deterministic,
                ..Default::default()
            },
        );
        let caps = &model.gpu.caps;
        // The default takes the atomic residual wherever the adapter has f32 atomics (lavapipe has them);
        // determinism never does.
        assert_eq!(
            caps.float_atomics,
            !deterministic
                && model
                    .gpu
                    .device
                    .features()
                    .contains(wgpu::Features::SHADER_FLOAT32_ATOMIC)
        );
        let how = if caps.float_atomics {
            "atomic residual: "
        } else {
            "ordered residual: "
        };
        check_host_greedy(&model, &g, &prompt, &want, n, how);
    }
}
