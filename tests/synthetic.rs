//! Synthetic checkpoints and the benchmark runner: the tiny preset goes through the real loader and the engine
//! (finite logits, greedy decode, 4- and 8-bit, act-order and not); the OpenChat preset's header (written as a
//! sparse file, no data generated) holds exactly the expected tensors and passes the project's validation; output
//! does not depend on the thread count; the benchmark runs end to end on the tiny preset.

mod common;

use common::files::TempDir;
use wgptq::bench::{self, BenchOptions};
use wgptq::model::{Dtype, Linear, ModelFiles};
use wgptq::synthetic::{self, SyntheticSpec, TensorInfo, WriteOptions};
use wgptq::{LoadOptions, Model};

fn tokenizer_dir() -> std::path::PathBuf {
    common::shared_dir().join("tokenizers").join("openchat")
}

fn write(spec: &SyntheticSpec, tag: &str, opts: &WriteOptions) -> TempDir {
    let dir = TempDir::new(tag);
    synthetic::write_model(spec, dir.path(), opts).expect("write synthetic model");
    dir
}

#[test]
fn tiny_preset_loads_and_decodes_finite() {
    let variants = [
        (4, Some(32), true, 2),
        (8, None, false, 2),
        (8, Some(64), true, 2),
        // Deeper, to see activations stay finite through many layers.
        (4, Some(32), true, 12),
    ];
    for (bits, group_size, act_order, layers) in variants {
        let spec = SyntheticSpec {
            bits,
            group_size,
            act_order,
            layers,
            seed: 7,
            ..SyntheticSpec::tiny()
        };
        let what = format!("{bits}-bit g{group_size:?} act_order={act_order} layers={layers}");
        let opts = WriteOptions {
            tokenizer_from: Some(tokenizer_dir()),
            ..Default::default()
        };
        let dir = write(&spec, "synthetic-tiny", &opts);
        let load = LoadOptions {
            prefill_chunk: 8,
            max_context: Some(64),
            ..Default::default()
        };
        let model = Model::load(dir.path(), &load).unwrap_or_else(|e| panic!("{what}: load: {e}"));
        let q = model.files.quant.expect("quantized");
        assert_eq!(
            (q.bits, q.group_size, q.desc_act, q.sym),
            (bits, group_size, act_order, true)
        );
        let tok = model.tokenizer.as_ref().expect("tokenizer copied");
        let prompt = tok
            .encode(
                "GPT4 Correct User: Hello there<|end_of_turn|>GPT4 Correct Assistant:",
                true,
            )
            .expect("encode");
        assert!(prompt.len() > 8, "prompt spans prefill chunks");
        let mut s = model.session(false).expect("session");
        let logits = s.prefill(&prompt).expect("prefill");
        assert_eq!(logits.len(), spec.vocab);
        assert!(
            logits.iter().all(|x| x.is_finite()),
            "{what}: non-finite logits"
        );
        let spread = logits.iter().fold(f32::MIN, |a, &b| a.max(b))
            - logits.iter().fold(f32::MAX, |a, &b| a.min(b));
        assert!(
            spread > 1e-3,
            "{what}: logits are flat ({spread}), weights look degenerate"
        );
        let mut id = wgptq::sampling::argmax(&logits);
        for _ in 0..6 {
            id = s
                .decode_greedy(id)
                .unwrap_or_else(|e| panic!("{what}: decode: {e}"));
            assert!((id as usize) < spec.vocab);
        }
        let logits = s.decode(id).expect("decode logits");
        assert!(
            logits.iter().all(|x| x.is_finite()),
            "{what}: non-finite decode logits"
        );
    }
}

#[test]
fn output_depends_on_seed_not_threads() {
    let spec = SyntheticSpec {
        seed: 3,
        ..SyntheticSpec::tiny()
    };
    let read = |threads: usize, spec: &SyntheticSpec| {
        let dir = write(
            spec,
            "synthetic-det",
            &WriteOptions {
                threads: Some(threads),
                ..Default::default()
            },
        );
        std::fs::read(dir.path().join("model.safetensors")).expect("read")
    };
    let a = read(1, &spec);
    assert_eq!(a, read(3, &spec), "thread count changed the output");
    assert_ne!(
        a,
        read(
            2,
            &SyntheticSpec {
                seed: 4,
                ..spec.clone()
            }
        )
    );
    assert!(a.iter().skip(1 << 12).any(|&b| b != 0));
}

/// The tensors an OpenChat-shaped GPTQ checkpoint must hold, written out independently of the generator.
fn expected_openchat(
    bits: usize,
    groups: impl Fn(usize) -> usize,
) -> Vec<(String, Dtype, Vec<usize>)> {
    let pf = 32 / bits;
    let mut v = vec![(
        "model.embed_tokens.weight".to_string(),
        Dtype::F16,
        vec![32002, 4096],
    )];
    for l in 0..32 {
        let p = format!("model.layers.{l}");
        v.push((
            format!("{p}.input_layernorm.weight"),
            Dtype::F16,
            vec![4096],
        ));
        v.push((
            format!("{p}.post_attention_layernorm.weight"),
            Dtype::F16,
            vec![4096],
        ));
        for (name, k, n) in [
            ("self_attn.q_proj", 4096, 4096),
            ("self_attn.k_proj", 4096, 1024),
            ("self_attn.v_proj", 4096, 1024),
            ("self_attn.o_proj", 4096, 4096),
            ("mlp.gate_proj", 4096, 14336),
            ("mlp.up_proj", 4096, 14336),
            ("mlp.down_proj", 14336, 4096),
        ] {
            v.push((format!("{p}.{name}.qweight"), Dtype::I32, vec![k / pf, n]));
            v.push((
                format!("{p}.{name}.qzeros"),
                Dtype::I32,
                vec![groups(k), n / pf],
            ));
            v.push((format!("{p}.{name}.scales"), Dtype::F16, vec![groups(k), n]));
            v.push((format!("{p}.{name}.g_idx"), Dtype::I32, vec![k]));
        }
    }
    v.push(("model.norm.weight".into(), Dtype::F16, vec![4096]));
    v.push(("lm_head.weight".into(), Dtype::F16, vec![32002, 4096]));
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

fn sorted(table: &[TensorInfo]) -> Vec<(String, Dtype, Vec<usize>)> {
    let mut v: Vec<_> = table
        .iter()
        .map(|t| (t.name.clone(), t.dtype, t.shape.clone()))
        .collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

#[test]
fn openchat_header_has_exact_tensors_and_validates() {
    for (bits, group_size) in [(4usize, Some(128usize)), (8, None)] {
        let spec = SyntheticSpec {
            bits: bits as u32,
            group_size,
            ..SyntheticSpec::openchat_3_5()
        };
        let groups = |k: usize| group_size.map_or(1, |g| k.div_ceil(g));
        let table = synthetic::tensor_table(&spec).expect("table");
        assert_eq!(table.len(), 3 + 32 * 30);
        assert_eq!(sorted(&table), expected_openchat(bits, groups));

        // Header only: a sparse file of the full length, opened and validated by the project's loader.
        let dir = write(
            &spec,
            "synthetic-openchat-header",
            &WriteOptions {
                header_only: true,
                ..Default::default()
            },
        );
        let path = dir.path().join("model.safetensors");
        let bytes_on_disk = std::fs::metadata(&path).expect("metadata").len();
        let (header, data_len) = synthetic::safetensors_header(&table).expect("header");
        assert_eq!(bytes_on_disk, header.len() as u64 + data_len);
        assert_eq!(header.len() % 8, 0);
        if bits == 4 {
            assert!(
                (3_800_000_000..4_300_000_000).contains(&data_len),
                "4-bit OpenChat is ≈ 4.1 GB: {data_len}"
            );
        }
        // The reference parser agrees (contiguous offsets, known dtypes, data section of the right length).
        let file = std::fs::File::open(&path).expect("open");
        // SAFETY: read-only mapping of a file this test owns.
        let map = unsafe { memmap2::Mmap::map(&file) }.expect("mmap");
        let (_, meta) = safetensors::SafeTensors::read_metadata(&map)
            .expect("safetensors crate parses the file");
        assert_eq!(meta.tensors().len(), table.len());

        let files = ModelFiles::open(dir.path()).expect("project loader validates the checkpoint");
        let c = &files.config;
        assert_eq!(
            (
                c.num_layers,
                c.hidden_size,
                c.intermediate_size,
                c.num_heads,
                c.num_kv_heads,
                c.vocab_size
            ),
            (32, 4096, 14336, 32, 8, 32002)
        );
        assert_eq!(
            (c.sliding_window, c.max_position_embeddings, c.head_dim),
            (Some(4096), 8192, 128)
        );
        assert_eq!(c.eos_token_ids, vec![32000]);
        let q = files.quant.expect("quantization_config");
        assert_eq!(
            (q.bits, q.group_size, q.desc_act, q.sym),
            (bits as u32, group_size, true, true)
        );
        assert_eq!(files.weights.layers.len(), 32);
        assert!(matches!(
            files.weights.lm_head,
            Linear::F16 {
                k: 4096,
                n: 32002,
                ..
            }
        ));
        assert!(matches!(
            files.weights.layers[5].gate,
            Linear::Gptq {
                k: 4096,
                n: 14336,
                ..
            }
        ));
    }
}

#[test]
fn bench_runs_end_to_end_on_tiny() {
    let dir = write(
        &SyntheticSpec::tiny(),
        "synthetic-bench",
        &WriteOptions::default(),
    );
    let opts = BenchOptions {
        model_dir: dir.path().to_path_buf(),
        prompt_lens: vec![20],
        // 40 > the 32-token window: the rolling cache is exercised.
        contexts: vec![4, 40],
        decode_tokens: 4,
        runs: 1,
        warmup: 0,
        profile: true,
        prefill_chunk: 16,
        device: wgptq::DeviceOptions {
            adapter: std::env::var("WGPTQ_ADAPTER").ok(),
            no_subgroups: std::env::var("WGPTQ_NO_SUBGROUPS").is_ok(),
            ..Default::default()
        },
        seed: 1,
        // One workgroup: all a CPU adapter is sure to hold at once.
        grid_barrier: Some(1),
    };
    let mut steps = Vec::new();
    let r = bench::run_with_progress(&opts, |s| steps.push(s.to_string())).expect("bench runs");
    assert!(steps.len() >= 5, "progress reported: {steps:?}");
    assert_eq!(r.wgpu_version, "30.0.2");
    let g = r
        .grid_barrier
        .as_ref()
        .expect("grid barrier measured when asked");
    assert!(
        g.per_barrier_us.is_finite() && g.per_barrier_us > 0.0 && g.workgroups == 1,
        "{g:?}"
    );
    assert!(!r.adapter.name.is_empty());
    assert!(r.ceiling.gbps > 0.0 && r.ceiling.wall_gbps > 0.0 && r.ceiling.buffer_bytes > 0);
    assert!(r.decode_bytes_per_token > 0);
    assert!(r.memory.weights_bytes > r.decode_bytes_per_token / 2 && r.memory.session_bytes > 0);
    assert!(r.load.total_s > 0.0);
    assert_eq!(r.settings.max_context, 44);
    assert_eq!(r.prefill.len(), 1);
    assert!(r.prefill[0].tok_s > 0.0 && r.prefill[0].logits_finite);
    assert_eq!(
        r.decode.iter().map(|d| d.context).collect::<Vec<_>>(),
        vec![4, 40]
    );
    for d in &r.decode {
        assert!(
            d.tok_s > 0.0 && d.ms_per_token > 0.0 && d.achieved_gbps > 0.0 && d.sampled_tok_s > 0.0,
            "{d:?}"
        );
        assert!(
            d.cpu_encode_us_per_token > 0.0 && d.cpu_encode_us_per_token < d.ms_per_token * 1e3
        );
    }
    if r.adapter.timestamps {
        let p = r.decode[1]
            .profile
            .as_ref()
            .expect("profile with timestamps");
        assert_eq!(p.position, 40);
        let calls = |op: &str| {
            p.ops
                .iter()
                .filter(|o| o.op == op)
                .map(|o| o.calls_per_token)
                .sum::<usize>()
        };
        assert!(
            calls("attention") >= 2,
            "one attention op per layer at least"
        );
        assert_eq!(calls("lm_head"), 1);
        for op in [
            "embed",
            "qkv",
            "o_proj",
            "gate_up",
            "down",
            "final_norm",
            "argmax",
        ] {
            assert!(calls(op) >= 1, "op {op} missing from {:?}", p.ops);
        }
        assert_eq!(
            p.ops.iter().map(|o| o.calls_per_token).sum::<usize>(),
            p.dispatches
        );
        assert!(p.gpu_us_per_token > 0.0);
        // The prefill profile covers the first chunk's whole dispatch list: every GPTQ linear once per layer.
        let pp = r.prefill[0]
            .profile
            .as_ref()
            .expect("prefill profile with timestamps");
        let layers = p
            .ops
            .iter()
            .find(|o| o.op == "qkv")
            .map(|o| o.calls_per_token);
        for op in ["qkv", "o_proj", "gate_up", "down"] {
            let gemm_calls: usize = pp
                .ops
                .iter()
                .filter(|o| o.op == op && o.kernel.starts_with("gptq_gemm"))
                .map(|o| o.calls_per_token)
                .sum();
            assert_eq!(Some(gemm_calls), layers, "{op} in {:?}", pp.ops);
        }
        assert_eq!(
            pp.ops.iter().map(|o| o.calls_per_token).sum::<usize>(),
            pp.dispatches
        );
        assert!(r.table().contains("per-op profile, prefill of 20 tokens"));
    } else {
        assert!(r.profile_note.is_some());
    }
    let table = r.table();
    assert!(
        table.contains("decode") && table.contains("ceiling"),
        "{table}"
    );
    let json: serde_json::Value = serde_json::from_str(&r.to_json()).expect("report JSON");
    assert_eq!(json["decode"][1]["context"], 40);
    println!("{table}");
}

/// Decode switches dispatch lists with the context: below 256 keys attention writes its output directly, above it
/// splits the keys and merges the partials. Both must give the logits the prefill path gives for the same sequence.
#[test]
fn decode_matches_prefill_across_the_attention_split_boundary() {
    let spec = SyntheticSpec {
        sliding_window: None,
        seed: 3,
        ..SyntheticSpec::tiny()
    };
    let dir = write(&spec, "synthetic-split", &WriteOptions::default());
    let load = LoadOptions {
        prefill_chunk: 64,
        max_context: Some(300),
        ..Default::default()
    };
    let model = Model::load(dir.path(), &load).expect("load");
    let seq: Vec<u32> = (0..270u32).map(|i| (i * 7919 + 13) % 32000).collect();
    let all = model
        .session(true)
        .expect("session")
        .prefill_all(&seq)
        .expect("prefill_all");
    let mut s = model.session(false).expect("session");
    s.prefill(&seq[..250]).expect("prefill");
    for (pos, &id) in seq.iter().enumerate().skip(250).take(19) {
        let got = s.decode(id).expect("decode");
        let want = &all[pos];
        let scale = want.iter().fold(0f32, |a, &b| a.max(b.abs()));
        let worst = got
            .iter()
            .zip(want)
            .map(|(a, b)| (a - b).abs())
            .fold(
                0f32,
                |a, b| if b.is_nan() { f32::INFINITY } else { a.max(b) },
            );
        // Same math in other kernels (GEMV against tiled GEMM, split against whole attention): f32 rounding only.
        assert!(
            worst <= 1e-3 * scale.max(1.0),
            "position {pos}: decode logits differ from prefill by {worst} (scale {scale})"
        );
    }
}

/// On Vulkan, prefill chunks and the greedy decode steps after a stream's first replay command buffers recorded
/// once (src/gpu/replay/); elsewhere, or with `no_replay`, each step is recorded through wgpu. Both run the same
/// kernels over the same buffers, so in the deterministic mode (fixed-order residual) they must agree bit for
/// bit: the prefill's logits, the streamed ids across the attention split (both decode lists), and the logits of
/// a host-path step after the stream, which read the keys and values the replayed steps wrote.
#[test]
fn replayed_decode_steps_match_wgpu_recorded_ones_bit_for_bit() {
    let spec = SyntheticSpec {
        sliding_window: None,
        seed: 5,
        ..SyntheticSpec::tiny()
    };
    let dir = write(&spec, "synthetic-replay", &WriteOptions::default());
    let seq: Vec<u32> = (0..240u32).map(|i| (i * 4099 + 7) % 32000).collect();
    let run = |no_replay: bool| {
        let load = LoadOptions {
            prefill_chunk: 64,
            max_context: Some(300),
            device: wgptq::DeviceOptions {
                deterministic: true,
                no_replay,
                ..Default::default()
            },
        };
        let model = Model::load(dir.path(), &load).expect("load");
        let vulkan = model.gpu.adapter_info.backend == wgpu::Backend::Vulkan;
        assert_eq!(model.gpu.caps.replay, vulkan && !no_replay);
        let mut s = model.session(false).expect("session");
        // Four chunks of 64: three without a readback, then the last one's logits.
        let prefilled = s.prefill(&seq).expect("prefill");
        // Keys 241..280: the short list up to 256, the split one after.
        let mut ids = Vec::new();
        let n = s
            .decode_greedy_stream(7, 40, |id| {
                ids.push(id);
                Ok(true)
            })
            .expect("greedy stream");
        assert_eq!((n, s.position()), (40, 280));
        let last = *ids.last().expect("ids");
        let logits = s.decode(last).expect("decode after the stream");
        // A stream stopped early leaves steps in flight; the next one must still see the right position.
        let mut first = None;
        s.decode_greedy_stream(last, 8, |id| {
            first = Some(id);
            Ok(false)
        })
        .expect("stopped stream");
        let mut again = Vec::new();
        s.decode_greedy_stream(first.expect("an id"), 5, |id| {
            again.push(id);
            Ok(true)
        })
        .expect("stream after a stop");
        assert_eq!(s.position(), 287);
        // A callback error stops the stream like a stop does: the position counts the ids it was given.
        let err = s.decode_greedy_stream(again[4], 8, |_| {
            Err(wgptq::Error::InvalidArgument {
                name: "test".into(),
                value: "stop".into(),
                reason: "callback error".into(),
            })
        });
        assert!(err.is_err());
        assert_eq!(s.position(), 288);
        (prefilled, ids, logits, again, vulkan)
    };
    let (replayed_prefill, replayed_ids, replayed, replayed_again, vulkan) = run(false);
    let (recorded_prefill, recorded_ids, recorded, recorded_again, _) = run(true);
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    assert!(
        bits(&replayed_prefill) == bits(&recorded_prefill),
        "replayed prefill logits differ"
    );
    if !vulkan {
        eprintln!("not a Vulkan adapter: both runs recorded through wgpu");
    }
    assert_eq!(replayed_ids, recorded_ids, "greedy stream ids");
    assert_eq!(
        replayed_again, recorded_again,
        "ids of the stream after a stopped one"
    );
    assert!(replayed.iter().all(|x| x.is_finite()), "non-finite logits");
    let same = replayed
        .iter()
        .zip(&recorded)
        .all(|(x, y)| x.to_bits() == y.to_bits());
    assert!(same, "logits after the replayed stream differ");
}
