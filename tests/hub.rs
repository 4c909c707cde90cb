//! Models by hub id, against a stand-in hub on 127.0.0.1 (there is no network at test time) serving the tiny
//! shared model the way huggingface.co does: the model-info API, and `resolve/` downloads with ETag,
//! X-Repo-Commit and Range support. Each test has its own server and HF cache, passed through `HubOptions`
//! rather than environment variables, so the tests can run in parallel.

mod common;
#[path = "hub/fake_hub.rs"]
mod fake_hub;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use common::files::{model_dir, read_tensors, write_safetensors, RawTensor, TempDir, TINY};
use serde_json::json;
use wgptq::hub::{self, HubOptions, ModelSource, ModelSpec};
use wgptq::model::ModelFiles;
use wgptq::Error;

use fake_hub::{FakeHub, Fault};

const REPO: &str = "wgptq-test/tiny-mistral-GPTQ";
const BRANCH: &str = "gptq-4bit-32g-actorder_True";
const SHA: &str = "0123456789abcdef0123456789abcdef01234567";
const WEIGHTS: &str = "model.safetensors";

// ---------------------------------------------------------------------------------------------------------------
// Fixtures.

/// Every file of the tiny shared model, goldens included (they are listed but must not be fetched).
fn tiny_repo() -> BTreeMap<String, Vec<u8>> {
    let mut files = BTreeMap::new();
    for entry in std::fs::read_dir(model_dir(TINY)).expect("read tiny model dir") {
        let path = entry.expect("dir entry").path();
        let name = path
            .file_name()
            .expect("name")
            .to_string_lossy()
            .into_owned();
        files.insert(name, std::fs::read(&path).expect("read model file"));
    }
    files
}

/// The files wgptq fetches from `repo`: all but the goldens.
fn wanted(repo: &BTreeMap<String, Vec<u8>>) -> Vec<String> {
    repo.keys()
        .filter(|f| *f != "golden.json" && *f != "verification.json")
        .cloned()
        .collect()
}

fn options(endpoint: &str, cache: &Path) -> HubOptions {
    HubOptions {
        endpoint: endpoint.to_owned(),
        ..HubOptions::new(cache.join("hub"))
    }
}

fn repo_cache(cache: &Path) -> PathBuf {
    cache.join("hub/models--wgptq-test--tiny-mistral-GPTQ")
}

fn snapshot(cache: &Path) -> PathBuf {
    repo_cache(cache).join("snapshots").join(SHA)
}

fn branch_id() -> String {
    format!("{REPO}:{BRANCH}")
}

fn listing(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// The `Error::Hub` fields of a failed resolve.
fn hub_error(r: wgptq::Result<PathBuf>) -> (String, String) {
    match r {
        Err(Error::Hub { model, reason }) => (model, reason),
        other => panic!("expected a Hub error, got {other:?}"),
    }
}

/// Every blob is complete (byte-identical to a served file); `.part` files (resume data) are returned.
fn check_blobs(cache: &Path, repo: &BTreeMap<String, Vec<u8>>) -> Vec<(String, u64)> {
    let blobs = repo_cache(cache).join("blobs");
    let mut parts = Vec::new();
    for name in listing(&blobs) {
        let path = blobs.join(&name);
        if name.ends_with(".lock") {
            continue;
        }
        if name.ends_with(".part") {
            parts.push((name, std::fs::metadata(&path).expect("part").len()));
            continue;
        }
        let bytes = std::fs::read(&path).expect("read blob");
        assert!(
            repo.values().any(|f| *f == bytes),
            "blob {name} ({} bytes) is not a complete served file",
            bytes.len()
        );
    }
    parts
}

fn same_tensors(a: &[RawTensor], b: &[RawTensor]) {
    assert_eq!(a.len(), b.len());
    for (x, y) in a.iter().zip(b) {
        assert_eq!(
            (&x.name, &x.dtype, &x.shape, &x.data),
            (&y.name, &y.dtype, &y.shape, &y.data)
        );
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Downloads.

#[test]
fn downloads_a_branch_into_the_hf_cache_and_loads_it() {
    let repo = tiny_repo();
    let hub = FakeHub::start(repo.clone());
    let cache = TempDir::new("hub-download");
    let opts = HubOptions {
        progress: true, // hf-hub's bar on stderr (hidden: not a terminal)
        ..options(&hub.endpoint(), cache.path())
    };
    let dir = hub::resolve_model(&branch_id(), None, &opts).expect("download");
    assert_eq!(dir, snapshot(cache.path()));
    let files = ModelFiles::open(&dir).expect("the snapshot opens as a model directory");
    assert_eq!(files.config.sliding_window, Some(16));
    assert_eq!(
        listing(&dir),
        wanted(&repo),
        "exactly the files the engine reads"
    );
    for name in wanted(&repo) {
        let path = dir.join(&name);
        assert_eq!(
            std::fs::read(&path).expect("read"),
            repo[&name],
            "{name} differs"
        );
        #[cfg(unix)]
        assert!(
            path.symlink_metadata().expect("meta").is_symlink(),
            "{name} links into blobs/"
        );
    }
    let refs = repo_cache(cache.path()).join("refs");
    assert_eq!(
        std::fs::read_to_string(refs.join(BRANCH)).expect("branch ref"),
        SHA
    );
    assert_eq!(listing(&refs), vec![BRANCH.to_string()]);
    assert!(check_blobs(cache.path(), &repo).is_empty());
    // Downloads are pinned to the commit the branch named.
    assert!(hub
        .log()
        .iter()
        .filter(|l| l.contains("/resolve/"))
        .all(|l| l.contains(&format!("/resolve/{SHA}/"))));
}

#[test]
fn cached_model_is_reused_online_and_offline() {
    let repo = tiny_repo();
    let hub = FakeHub::start(repo);
    let cache = TempDir::new("hub-offline");
    let mut opts = options(&hub.endpoint(), cache.path());
    let dir = hub::resolve_model(&branch_id(), None, &opts).expect("download");
    let downloads = |hub: &FakeHub| hub.log().iter().filter(|l| l.contains("/resolve/")).count();
    let before = downloads(&hub);
    assert_eq!(
        hub::resolve_model(&branch_id(), None, &opts).expect("again"),
        dir
    );
    assert_eq!(
        downloads(&hub),
        before,
        "a cached model is not fetched again"
    );

    drop(hub); // nothing listens there any more
    assert_eq!(
        hub::resolve_model(&branch_id(), None, &opts).expect("hub unreachable: the cache"),
        dir
    );
    assert_eq!(
        hub::resolve_model(REPO, Some(SHA), &opts).expect("a cached commit"),
        dir
    );
    let (model, reason) = hub_error(hub::resolve_model(&format!("{REPO}:other"), None, &opts));
    assert_eq!(model, format!("{REPO}:other"));
    assert!(reason.contains("cannot reach"), "{reason}");

    opts.offline = true;
    opts.endpoint = "http://unused.invalid".into();
    assert_eq!(
        hub::resolve_model(&branch_id(), None, &opts).expect("offline: the cache"),
        dir
    );
    let (_, reason) = hub_error(hub::resolve_model(REPO, None, &opts));
    assert!(
        reason.contains("offline") && reason.contains("download it first"),
        "{reason}"
    );
    ModelFiles::open(&dir).expect("still loads");
}

#[test]
fn unknown_branch_or_repository_is_a_hub_error_naming_it() {
    let hub = FakeHub::start(tiny_repo());
    let cache = TempDir::new("hub-404");
    let opts = options(&hub.endpoint(), cache.path());
    let (model, reason) = hub_error(hub::resolve_model(
        &format!("{REPO}:gptq-4bit-33g"),
        None,
        &opts,
    ));
    assert_eq!(model, format!("{REPO}:gptq-4bit-33g"));
    assert!(
        reason.contains("`gptq-4bit-33g`") && reason.contains("branch list"),
        "{reason}"
    );
    let (_, reason) = hub_error(hub::resolve_model(
        REPO,
        Some("gptq-8bit-128g-actorder_False"),
        &opts,
    ));
    assert!(reason.contains("gptq-8bit-128g-actorder_False"), "{reason}");

    let (model, reason) = hub_error(hub::resolve_model("wgptq-test/no-such-model", None, &opts));
    assert_eq!(model, "wgptq-test/no-such-model");
    assert!(
        reason.contains("not found") && reason.contains("no local directory"),
        "{reason}"
    );
    assert!(!repo_cache(cache.path()).exists(), "nothing cached");
}

#[test]
fn private_repository_needs_hf_token() {
    let repo = tiny_repo();
    let hub = FakeHub::start(repo);
    hub.with(|s| s.token = Some("hf_secret".into()));
    let cache = TempDir::new("hub-token");
    let mut opts = options(&hub.endpoint(), cache.path());
    let (_, reason) = hub_error(hub::resolve_model(&branch_id(), None, &opts));
    assert!(
        reason.contains("401") && reason.contains("set HF_TOKEN"),
        "{reason}"
    );
    opts.token = Some("hf_secret".into());
    let dir = hub::resolve_model(&branch_id(), None, &opts).expect("with the token");
    ModelFiles::open(&dir).expect("opens");
    assert!(
        !format!("{opts:?}").contains("hf_secret"),
        "Debug hides the token"
    );
}

#[test]
fn interrupted_download_leaves_no_truncated_file_and_resumes() {
    let repo = tiny_repo();
    let size = repo[WEIGHTS].len();
    let hub = FakeHub::start(repo.clone());
    hub.with(|s| {
        s.fault = Fault::CutOff {
            file: WEIGHTS.into(),
            content_length: true,
        }
    });
    let cache = TempDir::new("hub-cut");
    let opts = options(&hub.endpoint(), cache.path());
    let (_, reason) = hub_error(hub::resolve_model(&branch_id(), None, &opts));
    assert!(
        reason.contains(WEIGHTS) && reason.contains("run again"),
        "{reason}"
    );
    let snap = snapshot(cache.path());
    assert!(
        snap.join(WEIGHTS).symlink_metadata().is_err(),
        "no file under the final name"
    );
    assert_eq!(
        check_blobs(cache.path(), &repo)
            .iter()
            .map(|p| p.1)
            .collect::<Vec<_>>(),
        vec![(size / 2) as u64],
        "the received half is kept for resuming"
    );
    assert!(
        !repo_cache(cache.path()).join("refs").join(BRANCH).exists(),
        "the branch ref waits for a complete snapshot"
    );
    let offline = HubOptions {
        offline: true,
        ..opts.clone()
    };
    hub_error(hub::resolve_model(&branch_id(), None, &offline));

    hub.with(|s| s.fault = Fault::None);
    let dir = hub::resolve_model(&branch_id(), None, &opts).expect("retry");
    assert_eq!(
        std::fs::read(dir.join(WEIGHTS)).expect("read"),
        repo[WEIGHTS]
    );
    ModelFiles::open(&dir).expect("opens");
    assert!(check_blobs(cache.path(), &repo).is_empty(), "no .part left");
    let resumed = format!("bytes={}-", size / 2);
    assert!(
        hub.log()
            .iter()
            .any(|l| l.contains(WEIGHTS) && l.ends_with(&resumed)),
        "the retry resumes at byte {}: {:#?}",
        size / 2,
        hub.log()
    );
}

#[test]
fn short_close_delimited_download_is_caught_by_the_size_check() {
    let repo = tiny_repo();
    let hub = FakeHub::start(repo.clone());
    hub.with(|s| {
        s.fault = Fault::CutOff {
            file: WEIGHTS.into(),
            content_length: false,
        }
    });
    let cache = TempDir::new("hub-short");
    let opts = options(&hub.endpoint(), cache.path());
    let (_, reason) = hub_error(hub::resolve_model(&branch_id(), None, &opts));
    assert!(
        reason.contains(WEIGHTS) && reason.contains("announced"),
        "{reason}"
    );
    assert!(snapshot(cache.path())
        .join(WEIGHTS)
        .symlink_metadata()
        .is_err());
    assert!(
        check_blobs(cache.path(), &repo).is_empty(),
        "the short blob is gone"
    );

    hub.with(|s| s.fault = Fault::None);
    let dir = hub::resolve_model(&branch_id(), None, &opts).expect("retry");
    assert_eq!(
        std::fs::read(dir.join(WEIGHTS)).expect("read"),
        repo[WEIGHTS]
    );
    ModelFiles::open(&dir).expect("opens");
}

#[test]
fn sharded_weights_are_fetched_shard_by_shard() {
    let tensors = read_tensors(&model_dir(TINY));
    let (a, b) = tensors.split_at(tensors.len() / 2);
    let tmp = TempDir::new("hub-shards");
    let mut repo = tiny_repo();
    repo.remove(WEIGHTS);
    let mut weight_map = serde_json::Map::new();
    for (i, part) in [a, b].into_iter().enumerate() {
        let name = format!("model-0000{}-of-00002.safetensors", i + 1);
        write_safetensors(&tmp.path().join(&name), part);
        repo.insert(
            name.clone(),
            std::fs::read(tmp.path().join(&name)).expect("shard"),
        );
        for t in part {
            weight_map.insert(t.name.clone(), json!(name));
        }
    }
    repo.insert(
        "model.safetensors.index.json".into(),
        json!({"metadata": {}, "weight_map": weight_map})
            .to_string()
            .into_bytes(),
    );
    let hub = FakeHub::start(repo.clone());
    let cache = TempDir::new("hub-sharded");
    let opts = options(&hub.endpoint(), cache.path());
    let dir = hub::resolve_model(REPO, None, &opts).expect("download");
    assert_eq!(listing(&dir), wanted(&repo));
    ModelFiles::open(&dir).expect("sharded snapshot opens");
    same_tensors(&read_tensors(&dir), &tensors);
    drop(hub);
    assert_eq!(
        hub::resolve_model(REPO, None, &opts).expect("cached"),
        dir,
        "a complete sharded snapshot counts as cached"
    );
}

#[test]
fn thebloke_single_file_name_without_quantize_config() {
    let mut repo = tiny_repo();
    let weights = repo.remove(WEIGHTS).expect("weights");
    repo.remove("quantize_config.json"); // config.json's quantization_config remains
    repo.insert("gptq_model-4bit-32g.safetensors".into(), weights);
    repo.remove("generation_config.json");
    let hub = FakeHub::start(repo.clone());
    // Listed but 404 on download: an optional file may be missing without failing the model.
    hub.with(|s| s.ghosts.push("generation_config.json".into()));
    let cache = TempDir::new("hub-thebloke");
    let opts = options(&hub.endpoint(), cache.path());
    let dir = hub::resolve_model(&branch_id(), None, &opts).expect("download");
    assert_eq!(listing(&dir), wanted(&repo));
    let files = ModelFiles::open(&dir).expect("opens");
    assert!(files.quant.is_some(), "GPTQ settings from config.json");
    same_tensors(&read_tensors(&dir), &read_tensors(&model_dir(TINY)));
}

// ---------------------------------------------------------------------------------------------------------------
// Parsing `--model` and the environment.

#[test]
fn parses_hub_ids_branches_and_revisions() {
    let spec = |repo: &str, revision: &str| ModelSpec {
        repo: repo.into(),
        revision: revision.into(),
    };
    let ok = |s: &str, r: Option<&str>| hub::parse_model_spec(s, r).expect(s);
    assert_eq!(
        ok("TheBloke/openchat_3.5-GPTQ", None),
        spec("TheBloke/openchat_3.5-GPTQ", "main")
    );
    let bloke = spec("TheBloke/openchat_3.5-GPTQ", "gptq-4bit-32g-actorder_True");
    assert_eq!(
        ok(
            "TheBloke/openchat_3.5-GPTQ:gptq-4bit-32g-actorder_True",
            None
        ),
        bloke
    );
    assert_eq!(
        ok(
            "TheBloke/openchat_3.5-GPTQ",
            Some("gptq-4bit-32g-actorder_True")
        ),
        bloke
    );
    assert_eq!(
        ok(
            "TheBloke/openchat_3.5-GPTQ:gptq-4bit-32g-actorder_True",
            Some("gptq-4bit-32g-actorder_True")
        ),
        bloke
    );
    assert_eq!(
        bloke.to_string(),
        "TheBloke/openchat_3.5-GPTQ:gptq-4bit-32g-actorder_True"
    );
    assert_eq!(
        spec("a/b", "main").to_string(),
        "a/b",
        "the default branch is not spelled out"
    );
    assert_eq!(ok("o/n", Some("refs/pr/1")).revision, "refs/pr/1");
    assert_eq!(ok("o/n", Some(SHA)).revision, SHA);
    assert_eq!(ok("o.1/n_2-x.y", None).repo, "o.1/n_2-x.y");

    match hub::parse_model_spec("o/n:branch-a", Some("branch-b")) {
        Err(Error::InvalidArgument { name, reason, .. }) => {
            assert_eq!(name, "revision");
            assert!(reason.contains("branch-a"), "{reason}");
        }
        other => panic!("conflicting revisions: {other:?}"),
    }
    for bad in [
        "",
        "name",
        "a/b/c",
        "/abs/path",
        "./rel/dir",
        "a//b",
        "a/",
        "/b",
        "-a/b",
        "a/b-",
        "a--x/b",
        "a/b..c",
        "a/b.git",
        "a b/c",
        "ä/b",
        "a/b:",
        "a/b:has space",
        "a/b:x..y",
        "a/b:/lead",
        "a/b:c:d",
    ] {
        assert!(
            matches!(
                hub::parse_model_spec(bad, None),
                Err(Error::InvalidArgument { .. })
            ),
            "`{bad}` accepted"
        );
    }
    assert!(hub::parse_model_spec("a/b", Some("")).is_err());
    assert!(hub::parse_model_spec("a/b", Some("../../x")).is_err());
}

#[test]
fn local_directory_wins_and_anything_else_must_be_a_hub_id() {
    // Relative to the package root, where tests run: a directory spelled like a hub id is a directory.
    assert_eq!(
        hub::model_source("src/cli", None).expect("dir"),
        ModelSource::Local("src/cli".into())
    );
    let tiny = model_dir(TINY);
    let tiny_str = tiny.to_str().expect("utf-8 path");
    assert_eq!(
        hub::model_source(tiny_str, None).expect("dir"),
        ModelSource::Local(tiny.clone())
    );
    let unreachable = options("http://127.0.0.1:9", Path::new("/nonexistent"));
    assert_eq!(
        hub::resolve_model(tiny_str, None, &unreachable).expect("no hub needed"),
        tiny
    );
    assert!(matches!(
        hub::model_source(tiny_str, Some("main")),
        Err(Error::InvalidArgument { name, .. }) if name == "revision"
    ));
    assert_eq!(
        hub::model_source("no-such/model:v2", None).expect("hub id"),
        ModelSource::Hub(ModelSpec {
            repo: "no-such/model".into(),
            revision: "v2".into()
        })
    );
    for bad in ["garbage", "./no/such/dir", "/no/such/dir", "C:\\models\\x"] {
        match hub::model_source(bad, None) {
            Err(Error::InvalidArgument { name, reason, .. }) => {
                assert_eq!(name, "model");
                assert!(reason.contains("no such directory"), "{reason}");
            }
            other => panic!("`{bad}`: {other:?}"),
        }
    }
    match hub::model_source("Cargo.toml", None) {
        Err(Error::InvalidArgument { reason, .. }) => {
            assert!(reason.contains("not a model directory"), "{reason}")
        }
        other => panic!("a file: {other:?}"),
    }
}

#[test]
fn options_come_from_the_hf_environment_variables() {
    let tmp = TempDir::new("hub-env");
    let from = |vars: &[(&str, &str)]| {
        let vars: BTreeMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        HubOptions::from_vars(|k| vars.get(k).cloned())
    };
    let home = tmp.path().join("home");
    let home_str = home.to_str().expect("utf-8");
    let o = from(&[("HOME", home_str)]).expect("defaults");
    assert_eq!(o.endpoint, "https://huggingface.co");
    assert_eq!(o.cache_dir, home.join(".cache/huggingface/hub"));
    assert_eq!(o.token, None);
    assert!(!o.offline && o.progress);

    let hf_home = tmp.path().join("hf");
    std::fs::create_dir_all(&hf_home).expect("mkdir");
    std::fs::write(hf_home.join("token"), "hf_fromfile\n").expect("token file");
    let hf_home_str = hf_home.to_str().expect("utf-8");
    let o = from(&[
        ("HOME", home_str),
        ("HF_HOME", hf_home_str),
        ("HF_ENDPOINT", "http://mirror.local:8080/"),
        ("HF_HUB_OFFLINE", "1"),
        ("HF_HUB_DISABLE_PROGRESS_BARS", "true"),
        ("HF_TOKEN", ""),
    ])
    .expect("HF_HOME");
    assert_eq!(o.cache_dir, hf_home.join("hub"));
    assert_eq!(o.endpoint, "http://mirror.local:8080");
    assert_eq!(
        o.token.as_deref(),
        Some("hf_fromfile"),
        "empty HF_TOKEN: the saved login"
    );
    assert!(o.offline && !o.progress);

    let o = from(&[
        ("HF_HOME", hf_home_str),
        ("HF_HUB_CACHE", "/elsewhere/hub"),
        ("HF_TOKEN", "hf_env"),
        ("HF_HUB_OFFLINE", "0"),
    ])
    .expect("HF_HUB_CACHE");
    assert_eq!(o.cache_dir, Path::new("/elsewhere/hub"));
    assert_eq!(o.token.as_deref(), Some("hf_env"));
    assert!(!o.offline);

    let o = from(&[("XDG_CACHE_HOME", "/xdg"), ("HF_HUB_OFFLINE", "ON")]).expect("XDG");
    assert_eq!(o.cache_dir, Path::new("/xdg/huggingface/hub"));
    assert!(o.offline);

    assert!(matches!(
        from(&[]),
        Err(Error::InvalidArgument { name, .. }) if name == "HF_HOME"
    ));
}

// ---------------------------------------------------------------------------------------------------------------
// The command line, with the hub and cache given through the HF_* variables of the child process.

#[test]
fn cli_info_fetches_a_hub_id_through_the_hf_environment() {
    let hub = FakeHub::start(tiny_repo());
    let home = TempDir::new("hub-cli");
    let run = |args: &[&str], offline: bool| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_wgptq"))
            .args(args)
            .env("HF_HOME", home.path())
            .env("HF_ENDPOINT", hub.endpoint())
            .env("HF_HUB_OFFLINE", if offline { "1" } else { "0" })
            .env_remove("HF_HUB_CACHE")
            .env_remove("HF_TOKEN")
            .output()
            .expect("run wgptq");
        let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        (out.status.success(), text(&out.stdout), text(&out.stderr))
    };
    let (ok, stdout, stderr) = run(&["info", "--model", REPO, "--revision", BRANCH], false);
    assert!(ok, "{stderr}");
    let snap = snapshot(home.path());
    assert!(
        stdout.contains(&format!("model: {}", snap.display()))
            && stdout.contains("sliding window 16"),
        "{stdout}"
    );
    let (ok, _, stderr) = run(&["info", "--model", &format!("{REPO}:other")], true);
    assert!(!ok && stderr.contains("HF_HUB_OFFLINE"), "{stderr}");
    let (ok, _, stderr) = run(
        &["info", "--model", &branch_id(), "--revision", "main"],
        false,
    );
    assert!(!ok && stderr.contains("already names branch"), "{stderr}");
}
