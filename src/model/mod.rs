//! Layer 1, model files: config, checkpoint, and the validated weight description. No GPU code here.

pub mod checkpoint;
pub mod config;
mod json;
pub mod weights;

use std::path::{Path, PathBuf};

pub use checkpoint::{Checkpoint, Dtype, OtherTensor, TensorIndex, TensorRef};
pub use config::{Arch, CheckpointFormat, GenerationDefaults, ModelConfig, QuantConfig};
pub use weights::{LayerWeights, Linear, ModelWeights};

use crate::error::{Error, Result};

/// Everything read from a model directory, validated, with the weights still memory-mapped.
#[derive(Debug)]
pub struct ModelFiles {
    pub dir: PathBuf,
    pub config: ModelConfig,
    /// `None` for an unquantized (all-f16) model.
    pub quant: Option<QuantConfig>,
    pub generation: GenerationDefaults,
    pub checkpoint: Checkpoint,
    pub weights: ModelWeights,
}

impl ModelFiles {
    /// Opens and validates the model in `dir`; fails before any GPU work if anything is unusable.
    pub fn open(dir: &Path) -> Result<ModelFiles> {
        let meta = std::fs::metadata(dir).map_err(|e| Error::io(dir, e))?;
        if !meta.is_dir() {
            return Err(Error::io(
                dir,
                std::io::Error::new(
                    std::io::ErrorKind::NotADirectory,
                    "expected a model directory",
                ),
            ));
        }
        let config = ModelConfig::from_dir(dir)?;
        let quant = QuantConfig::from_dir(dir)?;
        let generation = GenerationDefaults::from_dir(dir)?;
        let (checkpoint, tensors) = Checkpoint::open(dir)?;
        let weights =
            ModelWeights::from_checkpoint(&config, quant.as_ref(), &tensors, &checkpoint, dir)?;
        tracing::info!(
            dir = %dir.display(),
            arch = ?config.arch,
            layers = config.num_layers,
            quant = ?quant,
            "model files validated"
        );
        Ok(ModelFiles {
            dir: dir.to_path_buf(),
            config,
            quant,
            generation,
            checkpoint,
            weights,
        })
    }
}
