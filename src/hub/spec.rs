//! What a `--model` argument names: a local directory, or a hub id `owner/name[:branch]` checked by the hub's
//! own rules before anything touches the network or the cache (a branch name becomes a path under `refs/`).

use std::fmt;
use std::path::{Path, PathBuf};

use super::DEFAULT_REVISION;
use crate::error::{Error, Result};

/// A repository on the hub and the branch, tag or commit wanted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelSpec {
    /// `owner/name`.
    pub repo: String,
    /// Branch, tag or commit hash; [`DEFAULT_REVISION`] unless one was given.
    pub revision: String,
}

impl fmt::Display for ModelSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.revision == DEFAULT_REVISION {
            f.write_str(&self.repo)
        } else {
            write!(f, "{}:{}", self.repo, self.revision)
        }
    }
}

/// What a `--model` argument names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelSource {
    Local(PathBuf),
    Hub(ModelSpec),
}

pub(super) fn invalid(name: &str, value: &str, reason: impl Into<String>) -> Error {
    Error::InvalidArgument {
        name: name.into(),
        value: value.into(),
        reason: reason.into(),
    }
}

/// Parses a hub id `owner/name` or `owner/name:branch`; `revision` (the `--revision` flag) sets the branch, tag
/// or commit, and must agree with a `:branch` given in the id.
pub fn parse_model_spec(s: &str, revision: Option<&str>) -> Result<ModelSpec> {
    let (repo, branch) = match s.split_once(':') {
        Some((repo, branch)) => (repo, Some(branch)),
        None => (s, None),
    };
    if let Err(why) = check_repo_id(repo) {
        return Err(invalid(
            "model",
            s,
            format!("not a hub id owner/name[:branch]: {why}"),
        ));
    }
    for (name, r) in [("model", branch), ("revision", revision)] {
        if let Some(r) = r {
            if let Err(why) = check_revision(r) {
                return Err(invalid(
                    name,
                    r,
                    format!("not a usable branch, tag or commit: {why}"),
                ));
            }
        }
    }
    let revision = match (branch, revision) {
        (Some(b), Some(r)) if b != r => {
            return Err(invalid(
                "revision",
                r,
                format!("the model id already names branch `{b}`; give one or the other"),
            ))
        }
        (Some(b), _) => b,
        (None, Some(r)) => r,
        (None, None) => DEFAULT_REVISION,
    };
    Ok(ModelSpec {
        repo: repo.into(),
        revision: revision.into(),
    })
}

/// Whether `spec` names a local directory (which wins over a hub id of the same spelling) or a hub repository.
pub fn model_source(spec: &str, revision: Option<&str>) -> Result<ModelSource> {
    let path = Path::new(spec);
    if path.is_dir() {
        if let Some(r) = revision {
            let why = format!("`{spec}` is a local directory; a revision applies to hub ids only");
            return Err(invalid("revision", r, why));
        }
        return Ok(ModelSource::Local(path.to_path_buf()));
    }
    let id = spec.split_once(':').map_or(spec, |(id, _)| id);
    if path.exists() || check_repo_id(id).is_err() {
        let reason = if path.exists() {
            "it is a file, not a model directory"
        } else {
            "there is no such directory, and it is not a Hugging Face hub id (owner/name[:branch]) either"
        };
        return Err(invalid("model", spec, reason));
    }
    parse_model_spec(spec, revision).map(ModelSource::Hub)
}

/// The hub's rule for `owner/name` (huggingface_hub's `validate_repo_id`, ASCII only): both parts 1-96 of
/// `A-Z a-z 0-9 _ . -`, starting and ending with a letter, digit or `_`, with no `--` or `..`.
fn check_repo_id(id: &str) -> std::result::Result<(), String> {
    let (owner, name) = id.split_once('/').ok_or("expected owner/name")?;
    for part in [owner, name] {
        let edge = |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_');
        let chars_ok = part
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c));
        if part.len() > 96 || !chars_ok || !edge(part.chars().next()) || !edge(part.chars().last())
        {
            return Err(format!(
                "`{part}` must be 1 to 96 letters, digits, `_`, `.` or `-`, starting and ending with a letter or \
                 digit"
            ));
        }
        if part.contains("--") || part.contains("..") {
            return Err(format!("`{part}` must not hold `--` or `..`"));
        }
    }
    if name.ends_with(".git") {
        return Err("the name must not end in .git".into());
    }
    Ok(())
}

/// A branch, tag or commit as git allows it (it becomes a path under `refs/` in the cache).
fn check_revision(r: &str) -> std::result::Result<(), &'static str> {
    let bad_char = |c: char| c.is_whitespace() || c.is_control() || "\\:~^?*[".contains(c);
    if r.is_empty() || r.len() > 255 {
        return Err("must be 1 to 255 characters");
    }
    if r.chars().any(bad_char) || r.contains("..") || r.contains("@{") || r.contains("//") {
        return Err("holds a character or sequence git does not allow in a ref");
    }
    if r.starts_with('/') || r.ends_with('/') || r.ends_with('.') || r.ends_with(".lock") {
        return Err("must not start or end with `/`, or end with `.` or `.lock`");
    }
    Ok(())
}
