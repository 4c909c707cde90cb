//! `--model` and `--revision` of the subcommands that load a model. A hub id is resolved here, right before
//! loading, so that a local directory never needs the Hugging Face settings of the environment (HF_HOME,
//! HF_ENDPOINT, HF_TOKEN, HF_HUB_OFFLINE) and a typo in a path is reported as such.

use std::path::PathBuf;

use anyhow::Result;
use wgptq::hub::{self, HubOptions, ModelSource};

/// The model directory for `--model` (a local directory, or a hub id `owner/name[:branch]` fetched into the
/// Hugging Face cache) and `--revision`.
pub fn resolve(model: &str, revision: Option<&str>) -> Result<PathBuf> {
    match hub::model_source(model, revision)? {
        ModelSource::Local(dir) => Ok(dir),
        ModelSource::Hub(spec) => Ok(hub::fetch(&spec, &HubOptions::from_env()?)?),
    }
}
