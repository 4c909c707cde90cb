//! Subcommand implementations of the `wgptq` binary that are big enough to live outside main.rs. Each module
//! exposes its clap arguments and a `run` returning `anyhow::Result`, so main.rs only routes;
//! `model_arg` resolves the `--model` they share (a directory or a hub id).

pub mod args;
pub mod bench;
pub mod chat;
pub mod generate;
pub mod info;
pub mod model_arg;
