//! Chat: a later turn reuses the KV cache of the conversation and answers exactly as a fresh session given the
//! whole conversation would; the built-in OpenChat templates render the documented forms; stop strings cut the
//! streamed text, which always equals the reply; a conversation longer than the context is a typed error that
//! loses nothing; the CLI rejects bad sampling values with one line and a non-zero exit.

mod common;

use wgptq::chat::{Chat, ChatOptions, Template, TextStream};
use wgptq::tokenizer::{ChatMessage, Tokenizer};
use wgptq::{Error, LoadOptions, Model};

fn tiny(max_context: usize) -> Model {
    let load = LoadOptions {
        prefill_chunk: 16,
        max_context: Some(max_context),
        ..Default::default()
    };
    Model::load(common::files::model_dir("tiny-mistral-swa-gptq4"), &load)
        .expect("load tiny-mistral")
}

fn openchat_tokenizer() -> Tokenizer {
    Tokenizer::from_dir(&common::shared_dir().join("tokenizers").join("openchat"))
        .expect("tokenizer")
}

fn greedy(model: &Model, n: usize) -> ChatOptions {
    let mut o = ChatOptions::from_model(model);
    o.generate.sampling = Default::default();
    o.generate.max_new_tokens = n;
    o.generate.stop_ids.clear(); // random weights: run the full length
    o
}

#[test]
fn second_turn_reuses_the_cache_and_matches_a_fresh_session() {
    let model = tiny(512);
    let opts = greedy(&model, 10);
    let mut chat = Chat::new(&model, Template::OpenChat).expect("chat");
    let first = chat
        .send("Hello there, who are you?", &opts, |_| true)
        .expect("turn 1");
    assert_eq!(first.reused_tokens, 0);
    assert_eq!(first.ids.len(), 10);
    let mut streamed = String::new();
    let second = chat
        .send("Tell me more.", &opts, |p| {
            streamed.push_str(p);
            true
        })
        .expect("turn 2");
    assert_eq!(streamed, second.text, "what streams is the reply");
    assert!(
        second.reused_tokens > 10,
        "turn 2 prefilled {} of {} prompt tokens again",
        second.prompt_tokens - second.reused_tokens,
        second.prompt_tokens
    );
    // The same conversation from scratch, in one prompt.
    let tok = model.tokenizer.as_ref().expect("tokenizer");
    let msgs = [
        ChatMessage::user("Hello there, who are you?"),
        ChatMessage::assistant(first.text.trim_start()),
        ChatMessage::user("Tell me more."),
    ];
    let text = Template::OpenChat.render(tok, &msgs, true).expect("render");
    let ids = tok.encode(&text, false).expect("encode");
    assert_eq!(ids.len(), second.prompt_tokens);
    let fresh = model
        .session(false)
        .expect("session")
        .generate(&ids, &opts.generate, |_| true)
        .expect("fresh");
    assert_eq!(
        fresh.ids(),
        second.ids,
        "cached turn differs from a fresh session"
    );
    // /reset: the next turn starts from the system prompt and the new message only.
    chat.reset();
    let third = chat
        .send("Hello there, who are you?", &opts, |_| true)
        .expect("turn 3");
    assert_eq!(third.prompt_tokens, first.prompt_tokens);
    assert_eq!(
        third.ids, first.ids,
        "same prompt after reset, same greedy answer"
    );
}

#[test]
fn a_conversation_longer_than_the_context_is_an_error_that_loses_nothing() {
    let model = tiny(48);
    let opts = greedy(&model, 4);
    let mut chat = Chat::new(&model, Template::OpenChat).expect("chat");
    chat.send("Hi", &opts, |_| true).expect("short turn fits");
    let before = chat.messages().to_vec();
    let long = "word ".repeat(60);
    match chat.send(&long, &opts, |_| true) {
        Err(Error::ContextOverflow { tokens, limit }) => {
            assert_eq!(limit, 48);
            assert!(tokens > 48);
        }
        other => panic!("expected ContextOverflow, got {other:?}"),
    }
    assert_eq!(
        chat.messages(),
        &before[..],
        "the conversation is unchanged"
    );
    chat.send("Hi again", &opts, |_| true)
        .expect("a short turn still works");
}

#[test]
fn builtin_templates_render_the_documented_forms() {
    let tok = openchat_tokenizer();
    let msgs = [ChatMessage::user("Hi")];
    let r = |t: Template| t.render(&tok, &msgs, true).expect("render");
    assert_eq!(
        r(Template::OpenChat),
        "<s>GPT4 Correct User: Hi<|end_of_turn|>GPT4 Correct Assistant:"
    );
    assert_eq!(
        r(Template::OpenChatCode),
        "<s>Code User: Hi<|end_of_turn|>Code Assistant:"
    );
    assert_eq!(
        r(Template::OpenChatLegacy),
        "<s>GPT4 User: Hi<|end_of_turn|>GPT4 Assistant:"
    );
    // The model's own template (tokenizer_config.json) is the "GPT4 Correct" form too.
    assert_eq!(r(Template::Model), r(Template::OpenChat));
    assert!(matches!(
        Template::from_name("chatml-typo"),
        Err(Error::InvalidArgument { .. })
    ));
    assert_eq!(
        Template::from_name("openchat-legacy").unwrap(),
        Template::OpenChatLegacy
    );
}

/// Feeds ids one at a time; returns (streamed text, stopped).
fn stream(tok: &Tokenizer, ids: &[u32], stops: &[&str]) -> (String, bool, String) {
    let stops: Vec<String> = stops.iter().map(|s| s.to_string()).collect();
    let mut s = TextStream::new(&stops);
    let mut out = String::new();
    for &id in ids {
        out.push_str(&s.push(tok, id).expect("push"));
    }
    out.push_str(&s.finish(tok).expect("finish"));
    (out, s.stopped(), s.text().to_string())
}

#[test]
fn stop_strings_cut_the_stream_and_the_stream_equals_the_text() {
    let tok = openchat_tokenizer();
    let text = "The answer is 42. User: next question? 日本語 ok";
    let ids = tok.encode(text, false).expect("encode");
    let full = tok.decode_with(&ids, true).expect("decode");
    // No stop string: everything, UTF-8 intact.
    let (out, stopped, t) = stream(&tok, &ids, &[]);
    assert_eq!((out.as_str(), stopped), (full.as_str(), false));
    assert_eq!(t, full);
    // Cut before the stop string, which is never shown.
    let (out, stopped, t) = stream(&tok, &ids, &["User:"]);
    assert!(stopped);
    assert_eq!(out, full[..full.find("User:").unwrap()]);
    assert_eq!(t, out);
    // A held-back prefix that turns out not to be the stop string is released.
    let (out, stopped, _) = stream(&tok, &ids, &["User: stop"]);
    assert!(!stopped);
    assert_eq!(out, full);
    // A stop string inside a multi-byte run.
    let (out, stopped, _) = stream(&tok, &ids, &["本"]);
    assert!(stopped);
    assert_eq!(out, full[..full.find('本').unwrap()]);
}

#[test]
fn cli_rejects_bad_sampling_values_with_one_line() {
    let model = common::files::model_dir("tiny-mistral-swa-gptq4");
    for (flag, value) in [
        ("--temperature", "-1"),
        ("--top-p", "0"),
        ("--top-p", "1.5"),
        ("--top-k", "-3"),
        ("--repeat-penalty", "0"),
        ("--template", "no-such-template"),
    ] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_wgptq"))
            .args(["generate", "--model"])
            .arg(&model)
            .args(["--prompt", "hi", "-n", "1", flag, value])
            .env("WGPU_BACKEND", "vulkan")
            .output()
            .expect("run wgptq");
        let err = String::from_utf8_lossy(&out.stderr);
        let lines: Vec<&str> = err
            .lines()
            .filter(|l| !l.contains("XDG_RUNTIME_DIR"))
            .collect();
        assert_eq!(out.status.code(), Some(1), "{flag} {value}: {err}");
        assert_eq!(lines.len(), 1, "{flag} {value}: one line, got {lines:?}");
        assert!(
            lines[0].starts_with("error: "),
            "{flag} {value}: {}",
            lines[0]
        );
        assert!(!err.contains("panicked"), "{flag} {value}: {err}");
    }
}

#[test]
fn generation_config_defaults_follow_hf() {
    let mut g = wgptq::model::GenerationDefaults::default();
    let s = wgptq::SamplingParams::from_defaults(&g);
    assert!(s.is_greedy(), "no do_sample: greedy");
    g.do_sample = Some(true);
    g.temperature = Some(0.7);
    let s = wgptq::SamplingParams::from_defaults(&g);
    assert_eq!((s.temperature, s.top_k, s.top_p), (0.7, 50, 1.0));
}
