//! Broken model directories (made from the tiny Mistral checkpoint) must fail at open with the exact error
//! variant and a message naming the tensor or field; the shared models must open cleanly.

mod common;

use common::files::{copy_model, edit_json, edit_tensors, tensor_mut, SMOLLM, TINY};
use serde_json::json;
use wgptq::model::{Arch, CheckpointFormat, Linear, ModelFiles, QuantConfig};
use wgptq::Error;

fn open_err(dir: &std::path::Path) -> Error {
    match ModelFiles::open(dir) {
        Ok(_) => panic!("{} opened although it is broken", dir.display()),
        Err(e) => e,
    }
}

#[test]
fn shared_models_open() {
    let tiny = ModelFiles::open(&common::files::model_dir(TINY)).expect("tiny-mistral opens");
    assert_eq!(tiny.config.arch, Arch::Mistral);
    assert_eq!(tiny.config.sliding_window, Some(16));
    assert_eq!(
        (
            tiny.config.num_heads,
            tiny.config.num_kv_heads,
            tiny.config.head_dim
        ),
        (4, 2, 16)
    );
    assert_eq!(tiny.config.eos_token_ids, vec![32000]);
    assert_eq!(
        tiny.quant,
        Some(QuantConfig {
            bits: 4,
            group_size: Some(32),
            desc_act: true,
            sym: true,
            format: CheckpointFormat::V1
        })
    );
    assert_eq!(tiny.weights.layers.len(), 2);
    match &tiny.weights.lm_head {
        Linear::F16 { weight, k, n } => {
            assert_eq!(weight.name, "lm_head.weight");
            assert_eq!((*k, *n), (64, 32002));
        }
        other => panic!("tiny lm_head should be f16, got {other:?}"),
    }
    for (name, lin) in tiny.weights.linears() {
        if name != "lm_head" {
            assert!(
                matches!(lin, Linear::Gptq { g_idx: Some(_), .. }),
                "{name} is not GPTQ"
            );
        }
    }
    let down = &tiny.weights.layers[0].down;
    assert_eq!((down.k(), down.n()), (128, 64));

    let smol = ModelFiles::open(&common::files::model_dir(SMOLLM)).expect("smollm opens");
    assert_eq!(smol.config.arch, Arch::Llama);
    assert_eq!(smol.config.sliding_window, None);
    assert!(smol.config.tie_word_embeddings);
    assert_eq!(smol.config.rope_theta, 100000.0);
    assert_eq!(smol.quant.and_then(|q| q.group_size), Some(128));
    match &smol.weights.lm_head {
        Linear::F16 { weight, k, n } => {
            assert_eq!(
                *weight, smol.weights.embed,
                "tied lm_head must be the embedding"
            );
            assert_eq!((*k, *n), (576, 49152));
        }
        other => panic!("tied lm_head should be f16 over the embedding, got {other:?}"),
    }
    // 576 inputs in groups of 128: 5 groups, the last one short.
    match &smol.weights.layers[0].q {
        Linear::Gptq { scales, .. } => assert_eq!(scales.shape, vec![5, 576]),
        other => panic!("q_proj should be GPTQ, got {other:?}"),
    }
}

#[test]
fn truncated_data_names_the_tensor() {
    let dir = copy_model(TINY);
    let path = dir.path().join("model.safetensors");
    let len = std::fs::metadata(&path).unwrap().len();
    let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    file.set_len(len / 2).unwrap();
    match open_err(dir.path()) {
        Error::Safetensors { path: p, reason } => {
            assert_eq!(p, path);
            // lm_head.weight is the last tensor in the data section of this file.
            assert!(reason.contains("tensor `lm_head.weight`"), "{reason}");
            assert!(reason.contains("past the end"), "{reason}");
        }
        e => panic!("expected Safetensors error, got {e:?}"),
    }
}

#[test]
fn truncated_header() {
    let dir = copy_model(TINY);
    let path = dir.path().join("model.safetensors");
    let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    file.set_len(100).unwrap();
    match open_err(dir.path()) {
        Error::Safetensors { reason, .. } => assert!(reason.contains("header length"), "{reason}"),
        e => panic!("expected Safetensors error, got {e:?}"),
    }
}

#[test]
fn byte_count_disagreeing_with_shape() {
    let dir = copy_model(TINY);
    edit_tensors(dir.path(), |ts| {
        // Claims 65 elements while storing 64.
        tensor_mut(ts, "model.norm.weight").shape = vec![65];
    });
    match open_err(dir.path()) {
        Error::Safetensors { reason, .. } => {
            assert!(reason.contains("`model.norm.weight`"), "{reason}");
            assert!(reason.contains("130 bytes"), "{reason}");
        }
        e => panic!("expected Safetensors error, got {e:?}"),
    }
}

#[test]
fn wrong_shape() {
    let dir = copy_model(TINY);
    let name = "model.layers.1.self_attn.k_proj.scales";
    edit_tensors(dir.path(), |ts| {
        let t = tensor_mut(ts, name);
        assert_eq!(t.shape, vec![2, 32]);
        t.shape = vec![2, 16];
        t.data.truncate(2 * 16 * 2);
    });
    match open_err(dir.path()) {
        Error::TensorShape { name: n, got, want } => {
            assert_eq!(n, name);
            assert_eq!(got, vec![2, 16]);
            assert_eq!(want, vec![2, 32]);
        }
        e => panic!("expected TensorShape, got {e:?}"),
    }
}

#[test]
fn wrong_dtype() {
    let dir = copy_model(TINY);
    edit_tensors(dir.path(), |ts| {
        let t = tensor_mut(ts, "model.norm.weight");
        t.data = t
            .data
            .chunks_exact(2)
            .flat_map(|b| {
                half::f16::from_le_bytes([b[0], b[1]])
                    .to_f32()
                    .to_le_bytes()
            })
            .collect();
        t.dtype = "F32".into();
    });
    let e = open_err(dir.path());
    assert!(e.to_string().contains("model.norm.weight"), "{e}");
    match e {
        Error::TensorDtype { name, got, want } => {
            assert_eq!(name, "model.norm.weight");
            assert_eq!((got.as_str(), want.as_str()), ("F32", "F16"));
        }
        e => panic!("expected TensorDtype, got {e:?}"),
    }
}

#[test]
fn unknown_dtype_fails_only_when_used() {
    let dir = copy_model(TINY);
    edit_tensors(dir.path(), |ts| {
        let mut extra = tensor_mut(ts, "model.norm.weight").clone();
        extra.name = "unused.extra".into();
        extra.dtype = "U8".into();
        extra.shape = vec![128];
        ts.push(extra);
        let t = tensor_mut(ts, "model.layers.0.input_layernorm.weight");
        t.dtype = "I16".into();
    });
    match open_err(dir.path()) {
        Error::TensorDtype { name, got, .. } => {
            assert_eq!(name, "model.layers.0.input_layernorm.weight");
            assert_eq!(got, "I16");
        }
        e => panic!("expected TensorDtype, got {e:?}"),
    }
}

#[test]
fn g_idx_out_of_range() {
    let dir = copy_model(TINY);
    let name = "model.layers.0.mlp.down_proj.g_idx";
    edit_tensors(dir.path(), |ts| {
        // k = 128 in groups of 32: valid groups are 0..4.
        tensor_mut(ts, name).data[5 * 4..6 * 4].copy_from_slice(&4i32.to_le_bytes());
    });
    match open_err(dir.path()) {
        Error::TensorValue { name: n, reason } => {
            assert_eq!(n, name);
            assert!(reason.contains("g_idx[5] = 4"), "{reason}");
        }
        e => panic!("expected TensorValue, got {e:?}"),
    }

    let dir = copy_model(TINY);
    edit_tensors(dir.path(), |ts| {
        tensor_mut(ts, name).data[..4].copy_from_slice(&(-1i32).to_le_bytes());
    });
    match open_err(dir.path()) {
        Error::TensorValue { reason, .. } => assert!(reason.contains("g_idx[0] = -1"), "{reason}"),
        e => panic!("expected TensorValue, got {e:?}"),
    }
}

#[test]
fn missing_tensor() {
    let dir = copy_model(TINY);
    let name = "model.layers.1.mlp.up_proj.scales";
    edit_tensors(dir.path(), |ts| ts.retain(|t| t.name != name));
    match open_err(dir.path()) {
        Error::MissingTensor {
            name: n,
            dir: d,
            needed_for,
        } => {
            assert_eq!(n, name);
            assert_eq!(d, dir.path());
            assert!(needed_for.contains("layer 1"), "{needed_for}");
        }
        e => panic!("expected MissingTensor, got {e:?}"),
    }

    // An untied model without lm_head.weight.
    let dir = copy_model(TINY);
    edit_tensors(dir.path(), |ts| ts.retain(|t| t.name != "lm_head.weight"));
    match open_err(dir.path()) {
        Error::MissingTensor { name, .. } => assert_eq!(name, "lm_head.weight"),
        e => panic!("expected MissingTensor, got {e:?}"),
    }
}

fn assert_unsupported_bits(bits: i64) {
    let dir = copy_model(TINY);
    edit_json(dir.path(), "config.json", |v| {
        v["quantization_config"]["bits"] = json!(bits)
    });
    let e = open_err(dir.path());
    let msg = e.to_string();
    match e {
        Error::Unsupported {
            path,
            setting,
            value,
            hint,
        } => {
            assert_eq!(path, dir.path().join("config.json"));
            assert_eq!(setting, "bits");
            assert_eq!(value, bits.to_string());
            assert_eq!(hint, "wgptq supports 4- and 8-bit GPTQ");
            assert!(
                msg.contains("bits") && msg.contains(&bits.to_string()),
                "{msg}"
            );
        }
        e => panic!("expected Unsupported, got {e:?}"),
    }
}

#[test]
fn unsupported_bits_3() {
    assert_unsupported_bits(3);
}

#[test]
fn unsupported_bits_2() {
    assert_unsupported_bits(2);
}

#[test]
fn config_missing_field() {
    let dir = copy_model(TINY);
    edit_json(dir.path(), "config.json", |v| {
        v.as_object_mut().unwrap().remove("hidden_size");
    });
    match open_err(dir.path()) {
        Error::Config {
            path,
            field,
            reason,
        } => {
            assert_eq!(path, dir.path().join("config.json"));
            assert_eq!(field, "hidden_size");
            assert!(reason.contains("missing"), "{reason}");
        }
        e => panic!("expected Config, got {e:?}"),
    }
}

#[test]
fn config_wrong_type() {
    let dir = copy_model(TINY);
    edit_json(dir.path(), "config.json", |v| {
        v["num_attention_heads"] = json!("four")
    });
    match open_err(dir.path()) {
        Error::Config { field, reason, .. } => {
            assert_eq!(field, "num_attention_heads");
            assert!(
                reason.contains("integer") && reason.contains("string"),
                "{reason}"
            );
        }
        e => panic!("expected Config, got {e:?}"),
    }

    let dir = copy_model(TINY);
    edit_json(dir.path(), "config.json", |v| {
        v["quantization_config"]["desc_act"] = json!("yes")
    });
    match open_err(dir.path()) {
        Error::Config { field, .. } => assert_eq!(field, "quantization_config.desc_act"),
        e => panic!("expected Config, got {e:?}"),
    }
}

#[test]
fn config_not_json() {
    let dir = copy_model(TINY);
    std::fs::write(dir.path().join("config.json"), "{\"hidden_size\": 64,").unwrap();
    match open_err(dir.path()) {
        Error::Config { path, reason, .. } => {
            assert_eq!(path, dir.path().join("config.json"));
            assert!(reason.contains("not valid JSON"), "{reason}");
        }
        e => panic!("expected Config, got {e:?}"),
    }
}

#[test]
fn config_invalid_heads() {
    let dir = copy_model(TINY);
    edit_json(dir.path(), "config.json", |v| {
        v["num_key_value_heads"] = json!(3)
    });
    match open_err(dir.path()) {
        Error::Config { field, .. } => assert_eq!(field, "num_key_value_heads"),
        e => panic!("expected Config, got {e:?}"),
    }
}

#[test]
fn unsupported_settings() {
    let cases: [(&str, serde_json::Value, &str); 4] = [
        (
            "rope_scaling",
            json!({"rope_type": "linear", "factor": 2.0}),
            "rope_scaling.rope_type",
        ),
        (
            "architectures",
            json!(["Qwen2ForCausalLM"]),
            "architectures",
        ),
        ("hidden_act", json!("gelu"), "hidden_act"),
        ("attention_bias", json!(true), "attention_bias"),
    ];
    for (field, value, setting) in cases {
        let dir = copy_model(TINY);
        edit_json(dir.path(), "config.json", |v| v[field] = value.clone());
        match open_err(dir.path()) {
            Error::Unsupported { setting: s, .. } => assert_eq!(s, setting),
            e => panic!("{field}: expected Unsupported, got {e:?}"),
        }
    }
    let dir = copy_model(TINY);
    edit_json(dir.path(), "config.json", |v| {
        v["quantization_config"]["format"] = json!("marlin");
        v["quantization_config"]["checkpoint_format"] = json!("marlin");
    });
    assert!(matches!(open_err(dir.path()), Error::Unsupported { .. }));
}

#[test]
fn quant_config_variants() {
    let dir = copy_model(TINY);
    edit_json(dir.path(), "config.json", |v| {
        let q = &mut v["quantization_config"];
        q["format"] = json!("gptq_v2");
        q["checkpoint_format"] = json!("gptq_v2");
        q["group_size"] = json!(-1);
        q["sym"] = json!(false);
    });
    let q = QuantConfig::from_dir(dir.path()).unwrap().unwrap();
    assert_eq!(q.format, CheckpointFormat::V2);
    assert_eq!(q.group_size, None);
    assert!(!q.sym);

    // Without quantization_config, quantize_config.json is used.
    let dir = copy_model(TINY);
    edit_json(dir.path(), "config.json", |v| {
        v.as_object_mut().unwrap().remove("quantization_config");
    });
    edit_json(dir.path(), "quantize_config.json", |v| v["bits"] = json!(8));
    assert_eq!(QuantConfig::from_dir(dir.path()).unwrap().unwrap().bits, 8);
    std::fs::remove_file(dir.path().join("quantize_config.json")).unwrap();
    assert_eq!(QuantConfig::from_dir(dir.path()).unwrap(), None);
    // GPTQ tensors without any quantization settings.
    match open_err(dir.path()) {
        Error::Config { field, .. } => assert_eq!(field, "quantization_config"),
        e => panic!("expected Config, got {e:?}"),
    }
}

#[test]
fn missing_directory_is_io() {
    let e = open_err(std::path::Path::new("/nonexistent/wgptq-model"));
    assert!(matches!(e, Error::Io { .. }), "{e:?}");
}

#[test]
fn sharded_checkpoint_opens() {
    let dir = copy_model(TINY);
    let tensors = common::files::read_tensors(dir.path());
    std::fs::remove_file(dir.path().join("model.safetensors")).unwrap();
    let (a, b) = tensors.split_at(tensors.len() / 2);
    common::files::write_safetensors(&dir.path().join("model-00001-of-00002.safetensors"), a);
    common::files::write_safetensors(&dir.path().join("model-00002-of-00002.safetensors"), b);
    let mut weight_map = serde_json::Map::new();
    for (shard, part) in [
        ("model-00001-of-00002.safetensors", a),
        ("model-00002-of-00002.safetensors", b),
    ] {
        for t in part {
            weight_map.insert(t.name.clone(), json!(shard));
        }
    }
    let index = json!({"metadata": {}, "weight_map": weight_map});
    std::fs::write(
        dir.path().join("model.safetensors.index.json"),
        index.to_string(),
    )
    .unwrap();

    let files = ModelFiles::open(dir.path()).expect("sharded model opens");
    assert_eq!(files.checkpoint.files.len(), 2);
    let whole = ModelFiles::open(&common::files::model_dir(TINY)).unwrap();
    let (x, y) = (&files.weights.layers[1].down, &whole.weights.layers[1].down);
    match (x, y) {
        (Linear::Gptq { qweight: qa, .. }, Linear::Gptq { qweight: qb, .. }) => {
            assert_eq!(files.checkpoint.bytes(qa), whole.checkpoint.bytes(qb));
        }
        _ => panic!("down_proj should be GPTQ"),
    }

    // The index names a tensor its shard does not hold.
    let mut index = index;
    index["weight_map"]["model.norm.weight"] = json!("model-00001-of-00002.safetensors");
    index["weight_map"]["model.layers.0.mlp.up_proj.qweight"] =
        json!("model-00002-of-00002.safetensors");
    std::fs::write(
        dir.path().join("model.safetensors.index.json"),
        index.to_string(),
    )
    .unwrap();
    match open_err(dir.path()) {
        Error::Safetensors { reason, .. } => assert!(reason.contains("shard index"), "{reason}"),
        e => panic!("expected Safetensors error, got {e:?}"),
    }
}

#[test]
fn config_value_forms() {
    let dir = copy_model(TINY);
    edit_json(dir.path(), "config.json", |v| {
        let o = v.as_object_mut().unwrap();
        o.insert("eos_token_id".into(), json!([2, 32000]));
        o.remove("rope_theta");
        o.insert(
            "rope_parameters".into(),
            json!({"rope_type": "default", "rope_theta": 500000.0}),
        );
        o.insert("sliding_window".into(), serde_json::Value::Null);
        o.remove("head_dim");
        o.remove("tie_word_embeddings");
    });
    edit_json(dir.path(), "generation_config.json", |v| {
        v["eos_token_id"] = json!([32000, 7]);
        v["temperature"] = json!(0.7);
    });
    let c = wgptq::model::ModelConfig::from_dir(dir.path()).unwrap();
    assert_eq!(c.eos_token_ids, vec![2, 32000, 7]);
    assert_eq!(c.rope_theta, 500000.0);
    assert_eq!(c.sliding_window, None);
    assert_eq!(c.head_dim, 16);
    assert!(!c.tie_word_embeddings);
    let gen = wgptq::model::GenerationDefaults::from_dir(dir.path()).unwrap();
    assert_eq!((gen.do_sample, gen.temperature), (Some(true), Some(0.7)));
}
