//! Helpers shared by the integration tests.
#![allow(dead_code, unused_imports)]

pub mod files;
pub mod goldens;
pub mod gptq;
pub mod gptq_run;
mod gpu;

use std::path::PathBuf;

pub use gpu::gpu;

/// The shared/ folder (models with goldens, tokenizers): `WGPTQ_SHARED`, else `../shared` beside the checkout.
pub fn shared_dir() -> PathBuf {
    match std::env::var_os("WGPTQ_SHARED") {
        Some(p) => PathBuf::from(p),
        None => PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../shared")),
    }
}
