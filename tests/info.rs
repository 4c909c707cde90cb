//! `wgptq info` and the memory estimate behind it ([`wgptq::gpu::memory`]): the estimate against the buffers a
//! real load allocates (the shared models and synthetic checkpoints with every layout: act-order, one group,
//! no act-order, 8-bit), exact OpenChat-3.5 numbers from a header-only checkpoint, the adapter choice against
//! `Gpu::new`, and the command line's text and JSON. No network: models come from shared/ or are written here.
//!
//! Tolerance: zero. The estimate mirrors every allocation (act-order padding rows, one permutation per fused
//! matrix, zero points only when not constant, the 16-byte minimum of a buffer), so it must equal the sum of
//! the GPU buffers' sizes byte for byte; a difference means the planner changed and the estimate did not.

mod common;

use std::path::Path;
use std::process::Command;

use common::files::{model_dir, TempDir, SMOLLM, TINY};
use serde_json::Value;
use wgptq::gpu::context::{choose_adapter, DeviceOptions};
use wgptq::gpu::memory::{self, EstimateOptions, LayoutSource, MemoryEstimate};
use wgptq::model::ModelFiles;
use wgptq::synthetic::{self, SyntheticSpec, WriteOptions};
use wgptq::{LoadOptions, Model};

/// The device options tests/common's shared GPU is made with.
fn device_options() -> DeviceOptions {
    DeviceOptions {
        adapter: std::env::var("WGPTQ_ADAPTER").ok(),
        no_subgroups: std::env::var("WGPTQ_NO_SUBGROUPS").is_ok(),
        ..Default::default()
    }
}

/// Loads `dir` on the shared GPU, makes a session, and checks the estimate against its buffers.
fn check_against_gpu(
    dir: &Path,
    context: usize,
    chunk: usize,
    layout: LayoutSource,
) -> MemoryEstimate {
    let gpu = common::gpu();
    let opts = EstimateOptions {
        context,
        prefill_chunk: chunk,
        layout,
        caps: Some(gpu.caps.clone()),
    };
    let files = ModelFiles::open(dir).expect("open model");
    let est = memory::estimate(&files, &opts).expect("estimate");
    let load = LoadOptions {
        max_context: Some(context),
        prefill_chunk: chunk,
        ..Default::default()
    };
    let model = Model::from_parts(gpu, files, None, &load).expect("load");
    let session = model.session(false).expect("session");
    let plan = session.plan();
    let kv = plan.bufs.kv_bytes();
    let acts = plan.bufs.activation_bytes();
    let what = format!("{} at context {context}, chunk {chunk}", dir.display());
    assert_eq!(
        est.weights_bytes,
        wgptq::bench::weights_bytes(&model.weights),
        "{what}: weights"
    );
    assert_eq!(est.context, model.max_context(), "{what}: context");
    assert_eq!(est.kv_slots, plan.shape.slots, "{what}: KV slots");
    assert_eq!(est.kv_cache_bytes, kv, "{what}: KV cache");
    assert_eq!(est.activations_bytes, acts, "{what}: activations");
    assert_eq!(
        est.total_bytes,
        est.weights_bytes + kv + acts,
        "{what}: total"
    );
    est
}

#[test]
fn estimate_equals_gpu_buffers_of_the_shared_models() {
    // tiny: act-order g32, sliding window 16 (slots = window + chunk); SmolLM2: act-order g128, tied embeddings,
    // no sliding window (slots = context).
    let tiny = check_against_gpu(&model_dir(TINY), 4096, 128, LayoutSource::Checkpoint);
    assert_eq!(tiny.kv_slots, 16 + 128);
    assert!(tiny.weights.perm > 0, "act-order keeps a permutation");
    let tiny = check_against_gpu(&model_dir(TINY), 100, 64, LayoutSource::Checkpoint);
    assert_eq!(tiny.kv_slots, 16 + 64);
    let smol = check_against_gpu(&model_dir(SMOLLM), 512, 128, LayoutSource::Checkpoint);
    assert_eq!(smol.kv_slots, 512);
}

/// A small synthetic checkpoint with data, written to a temp dir: the tiny preset, or (`wide`) K up to 2048 so
/// that a GPU (not lavapipe) splits the decode GEMVs over K and allocates split-K slabs.
fn synthetic_model(
    bits: u32,
    group_size: Option<usize>,
    act_order: bool,
    wide: bool,
) -> (TempDir, SyntheticSpec) {
    let base = if wide {
        SyntheticSpec {
            hidden: 1024,
            intermediate: 2048,
            heads: 8,
            kv_heads: 4,
            vocab: 1000,
            ..SyntheticSpec::tiny()
        }
    } else {
        SyntheticSpec::tiny()
    };
    let spec = SyntheticSpec {
        bits,
        group_size,
        act_order,
        ..base
    };
    let dir = TempDir::new("info-synthetic");
    synthetic::write_model(&spec, dir.path(), &WriteOptions::default()).expect("write");
    (dir, spec)
}

#[test]
fn canonical_layout_equals_checkpoint_layout_and_gpu() {
    for (bits, group_size, act_order, wide) in [
        (4, Some(32), true, false),
        (8, Some(32), true, false),
        (8, None, true, false),
        (4, Some(64), false, false),
        (4, Some(128), true, true),
    ] {
        let (dir, _) = synthetic_model(bits, group_size, act_order, wide);
        let exact = check_against_gpu(dir.path(), 256, 32, LayoutSource::Checkpoint);
        let canonical = check_against_gpu(dir.path(), 256, 32, LayoutSource::Canonical);
        assert_eq!(
            exact, canonical,
            "{bits}-bit g{group_size:?} act-order {act_order}"
        );
        // One group (-1) is the identity order even with act-order; grouped act-order needs the permutation.
        assert_eq!(
            exact.weights.perm > 0,
            act_order && group_size.is_some(),
            "{bits}-bit g{group_size:?} act-order {act_order}: perm"
        );
        assert_eq!(exact.weights.zeros, 0, "symmetric zeros are one constant");
    }
}

/// A header-only OpenChat-3.5 checkpoint (exact tensors, no data).
fn openchat_header(bits: u32, group_size: Option<usize>) -> (TempDir, ModelFiles) {
    let spec = SyntheticSpec {
        bits,
        group_size,
        act_order: true,
        ..SyntheticSpec::openchat_3_5()
    };
    let dir = TempDir::new("info-openchat");
    let opts = WriteOptions {
        header_only: true,
        ..Default::default()
    };
    synthetic::write_model(&spec, dir.path(), &opts).expect("write header");
    let files = ModelFiles::open(dir.path()).expect("open");
    (dir, files)
}

#[test]
fn openchat_numbers_follow_from_the_shapes() {
    let (_dir, files) = openchat_header(4, Some(128));
    let (h, i, kv_dim, vocab, layers) = (4096u64, 14336u64, 1024u64, 32002u64, 32u64);
    // Per layer: q, o (h × h), k, v (h × kv_dim), gate, up, down (h × i).
    let linear_params = layers * (2 * h * h + 2 * h * kv_dim + 3 * h * i);
    let params = linear_params + 2 * vocab * h + (2 * layers + 1) * h;
    assert_eq!(files.weights.parameter_count(), params);
    assert_eq!(params, 7_241_748_480);

    let est = |context| {
        let opts = EstimateOptions {
            context,
            layout: LayoutSource::Canonical,
            ..Default::default()
        };
        memory::estimate(&files, &opts).expect("estimate")
    };
    let (e4k, e8k) = (est(4096), est(8192));
    let w = e4k.weights;
    assert_eq!(w.qweight, linear_params / 2, "4-bit codes, no padding rows");
    // g128: one f16 scale per 128 inputs of each column.
    assert_eq!(
        w.scales,
        layers * (2 * h * h + 2 * h * kv_dim + 3 * h * i) / 128 * 2
    );
    assert_eq!(w.zeros, 0);
    // One u32 permutation each for q|k|v (fused), o, gate|up (fused); down's act-order is carried by gate|up's
    // column order, so down has none.
    assert_eq!(w.perm, layers * 3 * h * 4);
    assert_eq!(w.f16, 2 * vocab * h * 2);
    assert_eq!(w.norms, (2 * layers + 1) * h * 4);
    assert_eq!(w.rope, 4096 * 64 * 8);
    assert_eq!(e8k.weights.rope, 8192 * 64 * 8);
    // KV: 32 layers × (K, V) × slots × 8 kv heads × 128 × 2 bytes; the 4096 window rolls only past 4096 + one
    // prefill chunk.
    let chunk = wgptq::session::DEFAULT_PREFILL_CHUNK;
    assert_eq!(chunk, 512);
    assert_eq!(e4k.kv_slots, 4096);
    assert_eq!(e4k.kv_cache_bytes, 512 << 20);
    assert_eq!(e8k.kv_slots, 4096 + chunk);
    assert_eq!(e8k.kv_cache_bytes, layers * 2 * 4608 * 8 * 128 * 2);
    // Context is clamped to max_position_embeddings, as Model::load does.
    assert_eq!(est(100_000).context, 8192);
}

#[test]
fn adapter_choice_is_the_one_gpu_new_makes() {
    let opts = device_options();
    let choice = choose_adapter(&opts);
    let gpu = common::gpu();
    let i = *choice.selected.as_ref().expect("an adapter is selected");
    assert_eq!(choice.adapters[i].0, gpu.adapter_info);
    assert_eq!(choice.caps.as_ref(), Some(&gpu.caps));
    // By index and by part of the name.
    let by_index = choose_adapter(&DeviceOptions {
        adapter: Some(i.to_string()),
        ..opts.clone()
    });
    assert_eq!(by_index.selected, Ok(i));
    let name = gpu.adapter_info.name.to_uppercase();
    let by_name = choose_adapter(&DeviceOptions {
        adapter: Some(name),
        ..opts
    });
    assert_eq!(
        by_name.adapters[*by_name.selected.as_ref().expect("by name")]
            .0
            .name,
        gpu.adapter_info.name
    );
    let none = choose_adapter(&DeviceOptions {
        adapter: Some("no-such-adapter-xyz".into()),
        ..Default::default()
    });
    assert!(none
        .selected
        .as_ref()
        .is_err_and(|e| e.contains("no adapter matches")));
}

fn wgptq(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_wgptq"))
        .args(args)
        .output()
        .expect("run wgptq");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn json(args: &[&str]) -> Value {
    let (ok, out, err) = wgptq(args);
    assert!(ok, "wgptq {args:?} failed: {err}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"))
}

#[test]
fn cli_describes_the_tiny_model() {
    let dir = model_dir(TINY);
    let dir_s = dir.to_str().expect("utf-8 path");
    let v = json(&["info", "--model", dir_s, "--json"]);
    let files = ModelFiles::open(&dir).expect("open");
    let opts = EstimateOptions {
        caps: choose_adapter(&DeviceOptions::default()).caps,
        ..Default::default()
    };
    let est = memory::estimate(&files, &opts).expect("estimate");
    let m = &v["model"];
    assert_eq!(m["architecture"]["layers"], 2);
    assert_eq!(m["architecture"]["sliding_window"], 16);
    assert_eq!(m["architecture"]["head_dim"], 16);
    assert_eq!(m["quantization"]["bits"], 4);
    assert_eq!(m["quantization"]["group_size"], 32);
    assert_eq!(m["quantization"]["act_order"], true);
    assert_eq!(m["quantization"]["checkpoint_format"], "gptq");
    assert_eq!(m["parameters"], files.weights.parameter_count());
    assert_eq!(m["disk_bytes"], files.checkpoint.file_bytes());
    assert_eq!(m["memory"]["weights_bytes"], est.weights_bytes);
    assert_eq!(m["memory"]["kv_cache_bytes"], est.kv_cache_bytes);
    assert_eq!(m["memory"]["context"], 4096);
    assert!(v["adapters"].as_array().is_some_and(|a| !a.is_empty()));
    assert!(v["selected"].is_u64());

    let (ok, text, err) = wgptq(&["info", "--model", dir_s, "--context", "64"]);
    assert!(ok, "{err}");
    for want in [
        "architecture   Mistral: 2 layers, hidden 64",
        "sliding window 16",
        "GPTQ 4-bit, group size 32, act-order (desc_act) yes, sym yes, checkpoint format v1 (gptq)",
        "parameters     4.17 M",
        "GPU memory at context 64 (prefill chunk 64, 64 KV slots per layer)",
        "device: [",
    ] {
        assert!(text.contains(want), "missing `{want}` in:\n{text}");
    }
}

#[test]
fn cli_describes_synthetic_openchat_without_data() {
    let v = json(&[
        "info",
        "--synthetic",
        "openchat-3.5",
        "--bits",
        "8",
        "--group-size",
        "-1",
        "--act-order",
        "--context",
        "8192",
        "--json",
    ]);
    let spec = SyntheticSpec {
        bits: 8,
        group_size: None,
        ..SyntheticSpec::openchat_3_5()
    };
    let table = synthetic::tensor_table(&spec).expect("table");
    let (header, data) = synthetic::safetensors_header(&table).expect("header");
    let m = &v["model"];
    assert_eq!(m["disk_bytes"], header.len() as u64 + data);
    assert_eq!(m["parameters"], 7_241_748_480u64);
    assert_eq!(m["layout"], "canonical");
    assert_eq!(m["quantization"]["group_size"], -1);
    assert_eq!(
        m["memory"]["weights"]["perm"], 0,
        "one group: identity order"
    );
    assert_eq!(m["memory"]["kv_slots"], 4096 + 512);

    let (ok, text, err) = wgptq(&["info", "--synthetic", "openchat-3.5", "--act-order"]);
    assert!(ok, "{err}");
    assert!(text.contains("parameters     7.24 B"), "{text}");
    assert!(text.contains("on disk        4.16 GB"), "{text}");
    assert!(
        text.contains("512.0 MiB  (32 layers × K,V × 4096 slots"),
        "{text}"
    );
}

#[test]
fn cli_without_a_model_lists_adapters_and_rejects_unknown_devices() {
    let (ok, text, err) = wgptq(&["info"]);
    assert!(ok, "{err}");
    assert!(
        text.contains("adapters:") && text.contains("device: ["),
        "{text}"
    );
    assert!(!text.contains("model:"), "{text}");

    let (ok, text, err) = wgptq(&["info", "--device", "no-such-adapter-xyz"]);
    assert!(!ok, "an unknown --device fails");
    assert!(text.contains("device: none"), "{text}");
    assert!(
        err.contains("no adapter matches `no-such-adapter-xyz`"),
        "{err}"
    );

    let (ok, _, err) = wgptq(&["info", "--bits", "4"]);
    assert!(!ok, "--bits needs --synthetic");
    assert!(err.contains("--synthetic"), "{err}");
}

#[test]
fn backend_filter_selects_or_names_the_bad_value() {
    let bogus = choose_adapter(&DeviceOptions {
        backend: Some("glide".into()),
        ..device_options()
    });
    let err = bogus
        .selected
        .expect_err("an unknown backend selects nothing");
    assert!(err.contains("glide") && err.contains("vulkan"), "{err}");
    // CI's lavapipe is a Vulkan adapter: the filter keeps it.
    let vk = choose_adapter(&DeviceOptions {
        backend: Some("vulkan".into()),
        ..device_options()
    });
    assert!(vk.selected.is_ok(), "{:?}", vk.selected);
    assert!(vk
        .adapters
        .iter()
        .all(|(info, _)| info.backend == wgpu::Backend::Vulkan));
}
