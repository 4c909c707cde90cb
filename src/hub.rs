//! Models named by Hugging Face hub id (`owner/name[:branch]`, TheBloke's way of naming a quantization
//! branch), downloaded into the standard HF cache so that wgptq, `huggingface-cli` and transformers share one
//! copy, and usable offline once there.
//!
//! hf-hub does the transfers (resumable `.part` files, the cache layout, the progress bar); this module adds
//! what it leaves out:
//! - **No corrupt cache entries.** hf-hub renames a `.part` file into place once the body ends, whether or not
//!   it is complete (a close-delimited response cut short looks complete to the HTTP client). Every file is
//!   checked against the size the hub reported before it counts; a wrong-sized blob is deleted with its link.
//!   An interrupted transfer (ureq reports a body shorter than its Content-Length) leaves only the `.part`
//!   file, which the next run resumes with a Range request.
//! - **One commit per snapshot.** Files are fetched by the commit the branch pointed at when asked, not by
//!   branch name, and the branch ref is written only once every file is there: a branch that moves mid-way
//!   cannot mix two commits, and offline use finds the last complete snapshot.
//! - **Offline use**: with HF_HUB_OFFLINE, or when the hub cannot be reached, a complete cached snapshot is
//!   used; hf-hub has no offline mode and always re-downloads.
//! - **Only what the engine reads** (configs, tokenizer, safetensors weights in any of their layouts), and blobs
//!   already in the cache (another branch, an earlier commit) are linked rather than downloaded again.
//! - **Errors that say what to do** (check the branch, set HF_TOKEN, run again to resume), as [`Error::Hub`].
//! - HF_TOKEN, HF_HUB_CACHE, HF_HUB_OFFLINE and the token file, which hf-hub's `from_env` does not read.

use std::fmt;
use std::path::{Path, PathBuf};

use hf_hub::api::sync::{Api, ApiBuilder, ApiError, ApiRepo};
use hf_hub::{Cache, CacheRepo, Repo, RepoType};
use serde_json::Value;

use crate::error::{Error, Result};

mod spec;
use spec::invalid;
pub use spec::{model_source, parse_model_spec, ModelSource, ModelSpec};

/// The public hub.
pub const DEFAULT_ENDPOINT: &str = "https://huggingface.co";
/// The branch used when the id names none.
pub const DEFAULT_REVISION: &str = "main";

const CONFIG: &str = "config.json";
/// Fetched when the repository has them; the loader reads each if present.
const OPTIONAL: [&str; 6] = [
    "quantize_config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
];
const SINGLE: &str = "model.safetensors";
const INDEX: &str = "model.safetensors.index.json";

/// Where and how to reach the hub.
#[derive(Clone)]
pub struct HubOptions {
    /// Base URL of the hub (no trailing slash).
    pub endpoint: String,
    /// The hub cache (`$HF_HOME/hub`): `models--owner--name/{blobs,refs,snapshots}`.
    pub cache_dir: PathBuf,
    /// Bearer token for private and gated repositories.
    pub token: Option<String>,
    /// Never touch the network; use the cache or fail.
    pub offline: bool,
    /// Draw download progress bars on stderr (hidden when stderr is not a terminal).
    pub progress: bool,
    /// Extra attempts (resuming where the last stopped) when a transfer breaks off.
    pub retries: usize,
}

impl fmt::Debug for HubOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HubOptions")
            .field("endpoint", &self.endpoint)
            .field("cache_dir", &self.cache_dir)
            .field("token", &self.token.as_ref().map(|_| "<set>"))
            .field("offline", &self.offline)
            .field("progress", &self.progress)
            .field("retries", &self.retries)
            .finish()
    }
}

impl HubOptions {
    /// The public hub, no token, online, no progress bars, no retries, caching in `cache_dir`.
    pub fn new(cache_dir: impl Into<PathBuf>) -> HubOptions {
        HubOptions {
            endpoint: DEFAULT_ENDPOINT.into(),
            cache_dir: cache_dir.into(),
            token: None,
            offline: false,
            progress: false,
            retries: 0,
        }
    }

    /// Options as the Python `huggingface_hub` reads them from the environment; see [`Self::from_vars`].
    pub fn from_env() -> Result<HubOptions> {
        Self::from_vars(|k| std::env::var(k).ok())
    }

    /// Options from variables looked up by `var` (empty values count as unset):
    /// - `HF_ENDPOINT`: the hub URL (a mirror, a private hub);
    /// - `HF_HUB_CACHE` (or the older `HUGGINGFACE_HUB_CACHE`), else `$HF_HOME/hub`, where `HF_HOME` defaults to
    ///   `$XDG_CACHE_HOME/huggingface`, then `~/.cache/huggingface`;
    /// - `HF_TOKEN` (or the older `HUGGING_FACE_HUB_TOKEN`), else the file `HF_TOKEN_PATH`, default
    ///   `$HF_HOME/token` (written by `huggingface-cli login`);
    /// - `HF_HUB_OFFLINE`, `HF_HUB_DISABLE_PROGRESS_BARS`: true for 1, true, yes or on.
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Result<HubOptions> {
        let var = |k: &str| {
            var(k)
                .map(|v| v.trim().to_owned())
                .filter(|v| !v.is_empty())
        };
        let truthy = |k: &str| {
            var(k).is_some_and(|v| {
                matches!(v.to_ascii_lowercase().as_str(), "1" | "true" | "yes" | "on")
            })
        };
        let hf_home = var("HF_HOME").map(PathBuf::from).or_else(|| {
            let cache = var("XDG_CACHE_HOME").map(PathBuf::from).or_else(|| {
                let home = var("HOME").or_else(|| var("USERPROFILE"))?;
                Some(PathBuf::from(home).join(".cache"))
            })?;
            Some(cache.join("huggingface"))
        });
        let cache_dir = var("HF_HUB_CACHE")
            .or_else(|| var("HUGGINGFACE_HUB_CACHE"))
            .map(PathBuf::from)
            .or_else(|| hf_home.as_ref().map(|h| h.join("hub")))
            .ok_or_else(|| {
                let why = "no home directory to keep the Hugging Face cache in; set HF_HOME or HF_HUB_CACHE";
                invalid("HF_HOME", "(unset)", why)
            })?;
        let token = var("HF_TOKEN")
            .or_else(|| var("HUGGING_FACE_HUB_TOKEN"))
            .or_else(|| {
                let path = var("HF_TOKEN_PATH")
                    .map(PathBuf::from)
                    .or_else(|| hf_home.as_ref().map(|h| h.join("token")))?;
                let token = std::fs::read_to_string(path).ok()?;
                Some(token.trim().to_owned()).filter(|t| !t.is_empty())
            });
        Ok(HubOptions {
            endpoint: var("HF_ENDPOINT").map_or_else(
                || DEFAULT_ENDPOINT.into(),
                |e| e.trim_end_matches('/').into(),
            ),
            cache_dir,
            token,
            offline: truthy("HF_HUB_OFFLINE"),
            progress: !truthy("HF_HUB_DISABLE_PROGRESS_BARS"),
            retries: 2,
        })
    }
}

/// The model directory for a `--model` argument: a local directory as is, or a hub id's snapshot in the cache,
/// downloaded first if needed.
pub fn resolve_model(spec: &str, revision: Option<&str>, opts: &HubOptions) -> Result<PathBuf> {
    match model_source(spec, revision)? {
        ModelSource::Local(dir) => Ok(dir),
        ModelSource::Hub(spec) => fetch(&spec, opts),
    }
}

/// Makes every file the engine reads from `spec` present in the cache and returns the snapshot directory
/// (`<cache>/models--owner--name/snapshots/<commit>`).
pub fn fetch(spec: &ModelSpec, opts: &HubOptions) -> Result<PathBuf> {
    let err = |reason: String| Error::Hub {
        model: spec.to_string(),
        reason,
    };
    let cache_dir =
        std::path::absolute(&opts.cache_dir).map_err(|e| Error::io(&opts.cache_dir, e))?;
    let cache = Cache::new(cache_dir.clone());
    let repo = Repo::with_revision(spec.repo.clone(), RepoType::Model, spec.revision.clone());
    let repo_dir = cache_dir.join(repo.folder_name());
    let cached = cached_snapshot(&repo_dir, &spec.revision);
    let missing = format!(
        "the model is not fully downloaded in {}",
        cache_dir.display()
    );
    if opts.offline {
        let why = format!("offline mode (HF_HUB_OFFLINE) is on and {missing}; download it first (run once online)");
        return cached.ok_or_else(|| err(format!("{why} or pass a local model directory")));
    }
    if let (true, Some(dir)) = (is_commit(&spec.revision), &cached) {
        return Ok(dir.clone()); // a commit never changes
    }
    let endpoint = opts.endpoint.trim_end_matches('/');
    if !(endpoint.starts_with("http://") || endpoint.starts_with("https://")) {
        return Err(err(format!(
            "HF_ENDPOINT `{endpoint}` is not an http(s) URL"
        )));
    }
    let api = ApiBuilder::from_cache(cache.clone())
        .with_endpoint(endpoint.to_owned())
        .with_token(opts.token.clone())
        .with_progress(opts.progress)
        .with_retries(opts.retries)
        .with_user_agent("wgptq", env!("CARGO_PKG_VERSION"))
        .build()
        .map_err(|e| err(format!("cannot set up the HTTP client: {e}")))?;
    let info = match api.repo(repo.clone()).info() {
        Ok(info) => info,
        Err(e) => {
            return match (failure(&e), cached) {
                (Failure::Unreachable(why), Some(dir)) => {
                    tracing::warn!(model = %spec, %why, "hub unreachable; using the cached snapshot");
                    Ok(dir)
                }
                (Failure::Unreachable(why), None) => Err(err(format!(
                    "cannot reach {endpoint} ({why}) and {missing}; check the connection (or HF_ENDPOINT), or \
                     pass a local model directory"
                ))),
                (Failure::NotFound, _) => Err(err(not_found(&api, spec, endpoint))),
                (Failure::Auth(code), _) => Err(err(auth_advice(code, endpoint, opts.token.is_some()))),
                (Failure::Other(why), _) => Err(err(format!("asking {endpoint} about the repository failed: {why}"))),
            };
        }
    };
    check_path_part(&info.sha).map_err(|_| {
        err(format!(
            "the hub answered with a bad commit id `{}`",
            info.sha
        ))
    })?;
    // Top-level files only: nothing the engine reads lives in a subfolder.
    let listed: Vec<&str> = info
        .siblings
        .iter()
        .map(|s| s.rfilename.as_str())
        .filter(|f| !f.contains('/'))
        .collect();
    let has = |f: &str| listed.contains(&f);
    if !has(CONFIG) {
        let rev = &spec.revision;
        return Err(err(format!(
            "the repository has no {CONFIG} at `{rev}`, so it is not a transformers model"
        )));
    }
    let pinned = Repo::with_revision(spec.repo.clone(), RepoType::Model, info.sha.clone());
    let f = Fetcher {
        spec,
        cache_dir: &cache_dir,
        endpoint,
        token: opts.token.is_some(),
        api: api.clone(),
        repo: api.repo(pinned.clone()),
        cache: cache.repo(pinned),
        snapshot: cache.repo(repo.clone()).pointer_path(&info.sha),
    };
    // Weights last: a snapshot holding the weights then holds everything else fetched before them.
    f.file(CONFIG, true)?;
    for name in OPTIONAL.iter().copied().filter(|f| has(f)) {
        f.file(name, false)?;
    }
    let weights = if has(SINGLE) {
        vec![SINGLE.to_owned()]
    } else if has(INDEX) {
        f.file(INDEX, true)?;
        let shards = shard_names(&f.snapshot.join(INDEX)).map_err(&err)?;
        if let Some(missing) = shards.iter().find(|s| !has(s)) {
            return Err(err(format!(
                "{INDEX} names shard {missing}, which the repository does not have"
            )));
        }
        shards
    } else {
        vec![lone_weights(&listed).map_err(&err)?]
    };
    for name in &weights {
        f.file(name, true)?;
    }
    if spec.revision != info.sha {
        let refs = repo_dir.join("refs");
        cache
            .repo(repo)
            .create_ref(&info.sha)
            .map_err(|e| Error::io(refs.join(&spec.revision), e))?;
        // hf-hub wrote a ref named after the commit it was asked for; only the branch ref means something.
        let _ = std::fs::remove_file(refs.join(&info.sha));
    }
    Ok(f.snapshot)
}

/// Downloads of one pinned commit into its snapshot directory.
struct Fetcher<'a> {
    spec: &'a ModelSpec,
    cache_dir: &'a Path,
    endpoint: &'a str,
    token: bool,
    api: Api,
    repo: ApiRepo,
    cache: CacheRepo,
    snapshot: PathBuf,
}

impl Fetcher<'_> {
    fn err(&self, reason: String) -> Error {
        Error::Hub {
            model: self.spec.to_string(),
            reason,
        }
    }

    /// Makes `name` present, complete, in the snapshot; `Ok(false)` if an optional file turns out not to exist.
    fn file(&self, name: &str, required: bool) -> Result<bool> {
        let link = self.snapshot.join(name);
        if link.is_file() {
            return Ok(true);
        }
        if link.symlink_metadata().is_ok() {
            // A link to a blob that is gone; hf-hub would not replace it.
            std::fs::remove_file(&link).map_err(|e| Error::io(&link, e))?;
        }
        let meta = match self.api.metadata(&self.repo.url(name)) {
            Ok(meta) => meta,
            Err(e) if !required && matches!(failure(&e), Failure::NotFound) => return Ok(false),
            Err(e) => return Err(self.download_error(name, &e)),
        };
        let size = meta.size() as u64;
        let blob = self.cache.blob_path(meta.etag());
        let path = if file_len(&blob) == Some(size) {
            link_blob(&blob, &link)?;
            link.clone()
        } else {
            self.download(name, &blob)?
        };
        let got = file_len(&path);
        if got != Some(size) {
            let _ = std::fs::remove_file(&path);
            let _ = std::fs::remove_file(&blob);
            return Err(self.err(format!(
                "{name} arrived with {} bytes but the hub announced {size}; the bad copy was removed from \
                 the cache, run again to download it anew",
                got.map_or_else(|| "no".to_string(), |n| n.to_string())
            )));
        }
        if path != link {
            return Err(self.err(format!(
                "the hub served {name} from another commit ({}) than the one asked for",
                path.display()
            )));
        }
        Ok(true)
    }

    fn download(&self, name: &str, blob: &Path) -> Result<PathBuf> {
        match self.repo.download(name) {
            Err(ApiError::InvalidResume) => {
                // The partial file is longer than the file: a server that ignored the Range header. Start over.
                let mut part = blob.to_path_buf();
                part.set_extension("part");
                std::fs::remove_file(&part).map_err(|e| Error::io(&part, e))?;
                self.repo.download(name)
            }
            other => other,
        }
        .map_err(|e| self.download_error(name, &e))
    }

    fn download_error(&self, name: &str, e: &ApiError) -> Error {
        let reason = match (e, failure(e)) {
            (_, Failure::Auth(code)) => auth_advice(code, self.endpoint, self.token),
            (_, Failure::NotFound) => format!("the repository lists {name}, but downloading it gives 404"),
            (ApiError::LockAcquisition(lock), _) => format!(
                "another process is downloading {name} ({} is locked); wait for it to finish and run again",
                lock.display()
            ),
            (ApiError::MissingHeader(_) | ApiError::InvalidHeader(_), _) => format!(
                "{} served {name} without the headers a Hugging Face hub sends ({e}); check HF_ENDPOINT",
                self.endpoint
            ),
            _ => format!(
                "downloading {name} failed: {e}; run again to resume (the part received is kept in the cache, {})",
                self.cache_dir.display()
            ),
        };
        self.err(reason)
    }
}

/// Why a request failed, as far as what to tell the user goes.
enum Failure {
    NotFound,
    Auth(u16),
    /// Worth falling back to the cache: no connection, a timeout, a server error.
    Unreachable(String),
    Other(String),
}

fn failure(e: &ApiError) -> Failure {
    use ureq::Error as U;
    let ApiError::RequestError(r) = e else {
        return Failure::Other(e.to_string());
    };
    match r.as_ref() {
        U::StatusCode(404) => Failure::NotFound,
        U::StatusCode(code @ (401 | 403)) => Failure::Auth(*code),
        U::StatusCode(code) if *code == 429 || *code >= 500 => {
            Failure::Unreachable(format!("HTTP {code}"))
        }
        U::Io(_)
        | U::Timeout(_)
        | U::HostNotFound
        | U::ConnectionFailed
        | U::ConnectProxyFailed(_)
        | U::BodyStalled
        | U::Tls(_)
        | U::Rustls(_) => Failure::Unreachable(r.to_string()),
        other => Failure::Other(other.to_string()),
    }
}

fn auth_advice(code: u16, endpoint: &str, token: bool) -> String {
    let what = if token {
        "the token given (HF_TOKEN or the saved login) has no access to it; check the id, use a token with access"
    } else {
        "check the id, or set HF_TOKEN to an access token (https://huggingface.co/settings/tokens)"
    };
    format!(
        "{endpoint} refused access (HTTP {code}): the repository does not exist, or it is private or gated; \
         {what}, and if it is gated accept its terms on the model page"
    )
}

/// A 404 names a missing repository or a missing branch; asking for the default branch tells which.
fn not_found(api: &Api, spec: &ModelSpec, endpoint: &str) -> String {
    let (repo, rev) = (&spec.repo, &spec.revision);
    if rev != DEFAULT_REVISION && api.model(repo.clone()).info().is_ok() {
        return format!(
            "{repo} has no branch, tag or commit `{rev}`; check the name against the repository's branch list \
             ({endpoint}/{repo}/tree/{DEFAULT_REVISION}, the branch menu)"
        );
    }
    format!(
        "repository {spec} not found on {endpoint} (there is no local directory `{repo}` either); check the id \
         (owner/name), or set HF_TOKEN if it is private"
    )
}

/// The cached snapshot of `revision` if it holds a complete model.
fn cached_snapshot(repo_dir: &Path, revision: &str) -> Option<PathBuf> {
    let commit = if is_commit(revision) {
        revision.to_owned()
    } else {
        let commit = std::fs::read_to_string(repo_dir.join("refs").join(revision)).ok()?;
        commit.trim().to_owned()
    };
    check_path_part(&commit).ok()?;
    let dir = repo_dir.join("snapshots").join(commit);
    (dir.join(CONFIG).is_file() && weights_complete(&dir)).then_some(dir)
}

/// Whether `dir` holds the whole checkpoint in one of the layouts the loader reads (fetch puts nothing under
/// its final name before it is complete).
fn weights_complete(dir: &Path) -> bool {
    if dir.join(SINGLE).is_file() {
        return true;
    }
    if dir.join(INDEX).is_file() {
        return shard_names(&dir.join(INDEX))
            .is_ok_and(|s| s.iter().all(|s| dir.join(s).is_file()));
    }
    std::fs::read_dir(dir).is_ok_and(|entries| {
        entries.flatten().any(|e| {
            let p = e.path();
            p.extension().is_some_and(|x| x == "safetensors") && p.is_file()
        })
    })
}

/// The distinct shard files a `model.safetensors.index.json` names.
fn shard_names(index: &Path) -> std::result::Result<Vec<String>, String> {
    let text = std::fs::read_to_string(index).map_err(|e| format!("cannot read {INDEX}: {e}"))?;
    let json: Value =
        serde_json::from_str(&text).map_err(|e| format!("{INDEX} is not JSON: {e}"))?;
    let map = json
        .get("weight_map")
        .and_then(Value::as_object)
        .ok_or_else(|| format!("{INDEX} has no weight_map object"))?;
    let mut shards: Vec<String> = Vec::new();
    for file in map.values() {
        let file = file
            .as_str()
            .ok_or_else(|| format!("{INDEX}: a weight_map entry is not a file name"))?;
        check_path_part(file).map_err(|why| format!("{INDEX}: shard `{file}`: {why}"))?;
        if !shards.iter().any(|s| s == file) {
            shards.push(file.to_owned());
        }
    }
    if shards.is_empty() {
        return Err(format!("{INDEX} lists no tensors"));
    }
    Ok(shards)
}

/// The one `*.safetensors` of a repository without `model.safetensors` or an index (TheBloke's older
/// `gptq_model-4bit-128g.safetensors`).
fn lone_weights(listed: &[&str]) -> std::result::Result<String, String> {
    let pick = |ext: &str| -> Vec<&str> {
        listed
            .iter()
            .copied()
            .filter(|f| f.ends_with(ext))
            .collect()
    };
    match pick(".safetensors").as_slice() {
        [one] => Ok((*one).to_owned()),
        [] => Err(format!(
            "the repository has no *.safetensors weights (other files: {}); wgptq reads safetensors only",
            [pick(".bin"), pick(".pt")].concat().join(", ")
        )),
        several => Err(format!(
            "the repository has several *.safetensors files ({}) and no {INDEX} saying which to use; download \
             the one wanted with its config files into a directory and pass that",
            several.join(", ")
        )),
    }
}

/// Links `link` to the cached `blob` the way hf-hub does (relative symlink; a copy where there are none).
fn link_blob(blob: &Path, link: &Path) -> Result<()> {
    let dir = link.parent().unwrap_or(link);
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    #[cfg(unix)]
    {
        // snapshots/<commit>/<file> -> ../../blobs/<etag>
        let name = blob.file_name().unwrap_or_default();
        let target = Path::new("../../blobs").join(name);
        std::os::unix::fs::symlink(target, link).map_err(|e| Error::io(link, e))
    }
    #[cfg(not(unix))]
    std::fs::copy(blob, link)
        .map(drop)
        .map_err(|e| Error::io(link, e))
}

fn file_len(path: &Path) -> Option<u64> {
    std::fs::metadata(path)
        .ok()
        .filter(|m| m.is_file())
        .map(|m| m.len())
}

fn is_commit(s: &str) -> bool {
    s.len() == 40
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// One path component that cannot escape its directory.
fn check_path_part(s: &str) -> std::result::Result<(), &'static str> {
    let plain = !(s.is_empty() || s == "." || s == ".." || s.contains(['/', '\\']));
    (plain && !s.chars().any(char::is_control))
        .then_some(())
        .ok_or("not a plain file name")
}
