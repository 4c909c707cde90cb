//! Tokenizer and chat template against ids produced by HF transformers (OpenChat cases, model goldens).

mod common;

use common::files::{golden, ids, model_dir, SMOLLM, TINY};
use serde_json::Value;
use wgptq::tokenizer::{ChatMessage, StreamDecoder, Tokenizer, OPENCHAT_TEMPLATE};

fn openchat() -> Tokenizer {
    Tokenizer::from_dir(&common::shared_dir().join("tokenizers/openchat"))
        .expect("openchat tokenizer")
}

fn openchat_cases() -> Vec<Value> {
    let path = common::shared_dir().join("tokenizers/openchat/cases.json");
    let v: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    v["cases"].as_array().unwrap().clone()
}

/// cases.json `ids` include BOS, so they are encoded with add_special_tokens = true (which adds exactly the
/// BOS); `ids_no_bos` must then be the same with add_special_tokens = false.
#[test]
fn openchat_cases_match() {
    let tok = openchat();
    let cases = openchat_cases();
    assert_eq!(cases.len(), 20);
    for case in &cases {
        let text = case["text"].as_str().unwrap();
        assert_eq!(
            tok.encode(text, true).unwrap(),
            ids(&case["ids"]),
            "ids of {text:?}"
        );
        assert_eq!(
            tok.encode(text, false).unwrap(),
            ids(&case["ids_no_bos"]),
            "ids_no_bos of {text:?}"
        );
        let decoded = tok.decode_with(&ids(&case["ids"]), true).unwrap();
        assert_eq!(
            decoded,
            case["decoded_skip_special"].as_str().unwrap(),
            "decode of {text:?}"
        );
    }
}

#[test]
fn openchat_special_tokens_and_template() {
    let tok = openchat();
    assert_eq!(tok.token_to_id("<|end_of_turn|>"), Some(32000));
    assert_eq!(tok.bos_token_id(), Some(1));
    assert_eq!(tok.eos_token_id(), Some(32000));
    assert_eq!(tok.vocab_size(), 32002);

    let messages = [ChatMessage::user("Hello")];
    let text = tok.render_chat(&messages, true).unwrap();
    assert_eq!(
        text,
        "<s>GPT4 Correct User: Hello<|end_of_turn|>GPT4 Correct Assistant:"
    );
    let want = ids(&openchat_cases()[0]["ids"]);
    assert_eq!(tok.encode_chat(&messages, true).unwrap(), want);
    // The built-in template renders the same as the one shipped in tokenizer_config.json.
    assert_eq!(
        tok.render_chat_with(OPENCHAT_TEMPLATE, &messages, true)
            .unwrap(),
        text
    );

    // README multi-turn example.
    let multi = [
        ChatMessage::user("Hello"),
        ChatMessage::assistant("Hi"),
        ChatMessage::user("How are you today?"),
    ];
    let want: Vec<u32> = vec![
        1, 420, 6316, 28781, 3198, 3123, 1247, 28747, 22557, 32000, 420, 6316, 28781, 3198, 3123,
        21631, 28747, 15359, 32000, 420, 6316, 28781, 3198, 3123, 1247, 28747, 1602, 460, 368,
        3154, 28804, 32000, 420, 6316, 28781, 3198, 3123, 21631, 28747,
    ];
    assert_eq!(tok.encode_chat(&multi, true).unwrap(), want);
}

#[test]
fn template_errors_are_typed() {
    let tok = openchat();
    let bad = tok.render_chat_with("{{ raise_exception('roles must alternate') }}", &[], false);
    match bad {
        Err(wgptq::Error::Template { reason }) => {
            assert!(reason.contains("roles must alternate"), "{reason}")
        }
        other => panic!("expected Template error, got {other:?}"),
    }
    let mut tok = tok;
    assert!(matches!(
        tok.set_chat_template("{% for %}"),
        Err(wgptq::Error::Template { .. })
    ));
}

/// smollm goldens: `raw` cases are the text encoded with add_special_tokens = true (this tokenizer adds nothing);
/// `chat` cases are the model's template with one user message and the generation prompt, encoded with
/// add_special_tokens = false.
#[test]
fn smollm_golden_prompt_ids() {
    let tok = Tokenizer::from_dir(&model_dir(SMOLLM)).unwrap();
    let g = golden(SMOLLM);
    let cases = g["cases"].as_array().unwrap();
    assert_eq!(cases.len(), 4);
    for case in cases {
        let text = case["text"].as_str().unwrap();
        let got = match case["kind"].as_str().unwrap() {
            "raw" => tok.encode(text, true).unwrap(),
            "chat" => tok.encode_chat(&[ChatMessage::user(text)], true).unwrap(),
            other => panic!("unknown case kind {other}"),
        };
        assert_eq!(got, ids(&case["prompt_ids"]), "prompt ids of {text:?}");
        // The golden's text is the plain decode of its ids (special tokens kept).
        let greedy = ids(&case["greedy_ids"]);
        assert_eq!(
            tok.decode(&greedy).unwrap(),
            case["greedy_text"].as_str().unwrap()
        );
    }
}

/// The tiny Mistral prompt is OpenChat-style text encoded raw: BOS comes from add_special_tokens = true. The
/// golden keeps only the first 48 ids (three sliding windows) of the text's encoding.
#[test]
fn tiny_mistral_golden_prompt_ids() {
    let tok = Tokenizer::from_dir(&model_dir(TINY)).unwrap();
    let g = golden(TINY);
    let text = g["prompt_text"].as_str().unwrap();
    let want = ids(&g["prompt_ids"]);
    assert_eq!(want.len(), 48);
    let got = tok.encode(text, true).unwrap();
    assert_eq!(got[0], 1);
    assert!(got.len() >= want.len());
    assert_eq!(got[..want.len()], want[..]);
}

fn stream(tok: &Tokenizer, ids: &[u32]) -> (Vec<String>, String) {
    let mut dec = StreamDecoder::new();
    let mut pieces: Vec<String> = ids.iter().map(|&id| dec.push(tok, id).unwrap()).collect();
    pieces.push(dec.finish(tok).unwrap());
    let joined = pieces.concat();
    (pieces, joined)
}

#[test]
fn stream_decoder_holds_split_characters() {
    let tok = openchat();
    let text = "Emoji: 😀🦀👩\u{200d}👧 ok, Straße and 日本語 with trailing text";
    let ids = tok.encode(text, false).unwrap();
    // The emoji must be spelled with byte-fallback tokens for the test to mean anything.
    let byte_tokens = ids
        .iter()
        .filter(|&&id| tok.id_to_token(id).is_some_and(|t| t.starts_with("<0x")))
        .count();
    assert!(byte_tokens >= 4, "expected byte-fallback tokens in {ids:?}");

    let (pieces, joined) = stream(&tok, &ids);
    assert_eq!(joined, tok.decode(&ids).unwrap());
    assert_eq!(joined, text);
    for p in &pieces {
        assert!(
            !p.contains('\u{FFFD}'),
            "a piece holds half a character: {pieces:?}"
        );
    }

    // Every case string (with BOS and special tokens) streams to its full decode.
    for case in openchat_cases() {
        let ids = ids_of(&case);
        let (_, joined) = stream(&tok, &ids);
        assert_eq!(
            joined,
            tok.decode(&ids).unwrap(),
            "stream of {:?}",
            case["text"]
        );
    }

    // A stream cut inside a character still gives back what it holds on finish.
    let emoji = tok.encode("🦀", false).unwrap();
    let mut dec = StreamDecoder::new();
    let mut out = String::new();
    for &id in &emoji[..emoji.len() - 1] {
        out += &dec.push(&tok, id).unwrap();
    }
    assert_eq!(
        out, "",
        "nothing is emitted before the character is complete"
    );
    assert!(!dec.finish(&tok).unwrap().is_empty());
}

fn ids_of(case: &Value) -> Vec<u32> {
    ids(&case["ids"])
}
