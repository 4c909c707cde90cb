//! The one model description every backend consumes. Quantization lives behind the closed [`Linear`] kind,
//! so Llama and Mistral, GPTQ and f16, share a single forward pass.
//!
//! Building it checks every tensor the forward pass will read (presence, dtype, shape against the config,
//! g_idx range), so a backend never meets a malformed checkpoint half-way through uploading it.

use std::path::{Path, PathBuf};

use super::checkpoint::{Checkpoint, Dtype, TensorIndex, TensorRef};
use super::config::{ModelConfig, QuantConfig};
use crate::error::{Error, Result};

/// One linear layer `y = x @ W^T`, W of shape [n, k].
// A model holds a few hundred of these, built once; boxing the GPTQ variant would only add indirection.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone)]
pub enum Linear {
    /// Dense f16 weight, `weight`: [n, k] row-major (nn.Linear layout).
    F16 {
        weight: TensorRef,
        k: usize,
        n: usize,
    },
    /// GPTQ-packed weight (AutoGPTQ layout, see docs in gptq-mistral-facts §1.1).
    Gptq {
        /// [k / pack, n] i32
        qweight: TensorRef,
        /// [groups, n / pack] i32
        qzeros: TensorRef,
        /// [groups, n] f16
        scales: TensorRef,
        /// [k] i32; `None` when absent from the checkpoint (then g = k / group_size).
        g_idx: Option<TensorRef>,
        /// [n] f16
        bias: Option<TensorRef>,
        k: usize,
        n: usize,
        quant: QuantConfig,
    },
}

impl Linear {
    pub fn k(&self) -> usize {
        match self {
            Linear::F16 { k, .. } | Linear::Gptq { k, .. } => *k,
        }
    }
    pub fn n(&self) -> usize {
        match self {
            Linear::F16 { n, .. } | Linear::Gptq { n, .. } => *n,
        }
    }
}

/// Weights of one decoder layer.
#[derive(Debug, Clone)]
pub struct LayerWeights {
    /// [hidden] f16
    pub input_norm: TensorRef,
    pub q: Linear,
    pub k: Linear,
    pub v: Linear,
    pub o: Linear,
    /// [hidden] f16
    pub post_norm: TensorRef,
    pub gate: Linear,
    pub up: Linear,
    pub down: Linear,
}

impl LayerWeights {
    /// Whether gate and up are both GPTQ: the GPU plan then carries down's act-order in gate|up's column order
    /// where it is a plain permutation (`prep::input_order`), and the memory estimate must agree.
    pub fn gate_up_gptq(&self) -> bool {
        matches!(self.gate, Linear::Gptq { .. }) && matches!(self.up, Linear::Gptq { .. })
    }
}

/// All weights of the model, validated against the config.
#[derive(Debug, Clone)]
pub struct ModelWeights {
    /// [vocab, hidden] f16
    pub embed: TensorRef,
    pub layers: Vec<LayerWeights>,
    /// [hidden] f16
    pub final_norm: TensorRef,
    /// F16 [vocab, hidden]; the embedding when tie_word_embeddings.
    pub lm_head: Linear,
}

/// The group index of every input row of a GPTQ linear: the stored g_idx, or `k / group_size` without one.
pub fn group_indices(checkpoint: &Checkpoint, linear: &Linear) -> Option<Vec<u32>> {
    let Linear::Gptq {
        g_idx, k, quant, ..
    } = linear
    else {
        return None;
    };
    Some(match g_idx {
        Some(t) => checkpoint.words(t),
        None => {
            let gs = quant.group_size.unwrap_or(*k).max(1);
            (0..*k).map(|i| (i / gs) as u32).collect()
        }
    })
}

/// Whether a GPTQ linear's groups are contiguous (`g_idx[k] == k / group_size`), i.e. act-order needs no
/// permutation. `None` for an f16 linear.
pub fn has_trivial_g_idx(checkpoint: &Checkpoint, linear: &Linear) -> Option<bool> {
    let Linear::Gptq {
        g_idx, k, quant, ..
    } = linear
    else {
        return None;
    };
    let Some(t) = g_idx else { return Some(true) };
    let gs = quant.group_size.unwrap_or(*k).max(1);
    let groups = checkpoint.words(t);
    Some(
        groups
            .iter()
            .enumerate()
            .all(|(i, &g)| g as usize == i / gs),
    )
}

/// Shared context for building and checking the weights.
struct Builder<'a> {
    config: &'a ModelConfig,
    quant: Option<&'a QuantConfig>,
    tensors: &'a TensorIndex,
    checkpoint: &'a Checkpoint,
    dir: PathBuf,
}

impl Builder<'_> {
    fn find(&self, name: &str) -> Result<Option<TensorRef>> {
        Ok(self.tensors.get(name)?.cloned())
    }

    fn require(&self, name: &str, needed_for: &str) -> Result<TensorRef> {
        self.find(name)?.ok_or_else(|| Error::MissingTensor {
            name: name.into(),
            dir: self.dir.clone(),
            needed_for: needed_for.into(),
        })
    }

    /// A tensor that must exist with exactly this dtype and shape.
    fn tensor(
        &self,
        name: &str,
        dtype: Dtype,
        shape: &[usize],
        needed_for: &str,
    ) -> Result<TensorRef> {
        let t = self.require(name, needed_for)?;
        check(&t, dtype, shape)?;
        Ok(t)
    }

    /// The linear at `prefix` mapping `k` inputs to `n` outputs: GPTQ if `<prefix>.qweight` exists.
    fn linear(&self, prefix: &str, k: usize, n: usize, needed_for: &str) -> Result<Linear> {
        let qweight_name = format!("{prefix}.qweight");
        let Some(qweight) = self.find(&qweight_name)? else {
            let weight =
                self.tensor(&format!("{prefix}.weight"), Dtype::F16, &[n, k], needed_for)?;
            return Ok(Linear::F16 { weight, k, n });
        };
        let Some(quant) = self.quant.copied() else {
            return Err(Error::Config {
                path: self.dir.join("config.json"),
                field: "quantization_config".into(),
                reason: format!(
                    "absent (and no quantize_config.json), but the checkpoint holds GPTQ tensor `{qweight_name}`"
                ),
            });
        };
        let pf = quant.pack_factor();
        if k % pf != 0 || n % pf != 0 {
            return Err(Error::Unsupported {
                path: self.dir.clone(),
                setting: format!("shape of `{prefix}`"),
                value: format!("in_features {k}, out_features {n}"),
                hint: format!(
                    "{}-bit GPTQ packs {pf} values per int32, so both dimensions must be multiples of {pf}",
                    quant.bits
                ),
            });
        }
        let groups = quant.num_groups(k);
        check(&qweight, Dtype::I32, &[k / pf, n])?;
        let qzeros = self.tensor(
            &format!("{prefix}.qzeros"),
            Dtype::I32,
            &[groups, n / pf],
            needed_for,
        )?;
        let scales = self.tensor(
            &format!("{prefix}.scales"),
            Dtype::F16,
            &[groups, n],
            needed_for,
        )?;
        let g_idx = match self.find(&format!("{prefix}.g_idx"))? {
            Some(t) => {
                check(&t, Dtype::I32, &[k])?;
                self.check_g_idx(&t, groups)?;
                Some(t)
            }
            None => None,
        };
        let bias = match self.find(&format!("{prefix}.bias"))? {
            Some(t) => {
                check(&t, Dtype::F16, &[n])?;
                Some(t)
            }
            None => None,
        };
        Ok(Linear::Gptq {
            qweight,
            qzeros,
            scales,
            g_idx,
            bias,
            k,
            n,
            quant,
        })
    }

    /// Every g_idx entry must name an existing group.
    fn check_g_idx(&self, t: &TensorRef, groups: usize) -> Result<()> {
        let words = self.checkpoint.words(t);
        if let Some((i, &g)) = words
            .iter()
            .enumerate()
            .find(|(_, &g)| (g as i32) < 0 || g as usize >= groups)
        {
            return Err(Error::TensorValue {
                name: t.name.clone(),
                reason: format!(
                    "g_idx[{i}] = {} is outside the {groups} groups [0, {groups})",
                    g as i32
                ),
            });
        }
        Ok(())
    }

    fn layer(&self, i: usize) -> Result<LayerWeights> {
        let c = self.config;
        let h = c.hidden_size;
        let p = format!("model.layers.{i}");
        let attn = format!("layer {i} attention");
        let mlp = format!("layer {i} MLP");
        Ok(LayerWeights {
            input_norm: self.tensor(
                &format!("{p}.input_layernorm.weight"),
                Dtype::F16,
                &[h],
                &attn,
            )?,
            q: self.linear(&format!("{p}.self_attn.q_proj"), h, c.q_dim(), &attn)?,
            k: self.linear(&format!("{p}.self_attn.k_proj"), h, c.kv_dim(), &attn)?,
            v: self.linear(&format!("{p}.self_attn.v_proj"), h, c.kv_dim(), &attn)?,
            o: self.linear(&format!("{p}.self_attn.o_proj"), c.q_dim(), h, &attn)?,
            post_norm: self.tensor(
                &format!("{p}.post_attention_layernorm.weight"),
                Dtype::F16,
                &[h],
                &mlp,
            )?,
            gate: self.linear(&format!("{p}.mlp.gate_proj"), h, c.intermediate_size, &mlp)?,
            up: self.linear(&format!("{p}.mlp.up_proj"), h, c.intermediate_size, &mlp)?,
            down: self.linear(&format!("{p}.mlp.down_proj"), c.intermediate_size, h, &mlp)?,
        })
    }
}

fn check(t: &TensorRef, dtype: Dtype, shape: &[usize]) -> Result<()> {
    if t.dtype != dtype {
        return Err(Error::TensorDtype {
            name: t.name.clone(),
            got: t.dtype.name().into(),
            want: dtype.name().into(),
        });
    }
    if t.shape != shape {
        return Err(Error::TensorShape {
            name: t.name.clone(),
            got: t.shape.clone(),
            want: shape.to_vec(),
        });
    }
    Ok(())
}

impl ModelWeights {
    /// Describes and validates every weight of the model; reads only g_idx values (to range-check them).
    pub fn from_checkpoint(
        config: &ModelConfig,
        quant: Option<&QuantConfig>,
        tensors: &TensorIndex,
        checkpoint: &Checkpoint,
        dir: &Path,
    ) -> Result<ModelWeights> {
        let b = Builder {
            config,
            quant,
            tensors,
            checkpoint,
            dir: dir.to_path_buf(),
        };
        let (vocab, h) = (config.vocab_size, config.hidden_size);
        let embed = b.tensor(
            "model.embed_tokens.weight",
            Dtype::F16,
            &[vocab, h],
            "token embeddings",
        )?;
        let layers = (0..config.num_layers)
            .map(|i| b.layer(i))
            .collect::<Result<Vec<_>>>()?;
        let final_norm = b.tensor("model.norm.weight", Dtype::F16, &[h], "the final norm")?;
        // HF ties the head to the embedding whenever the config says so, ignoring any stored lm_head.
        let lm_head = if config.tie_word_embeddings {
            Linear::F16 {
                weight: embed.clone(),
                k: h,
                n: vocab,
            }
        } else {
            b.linear(
                "lm_head",
                h,
                vocab,
                "the output head (config.json has tie_word_embeddings = false)",
            )?
        };
        Ok(ModelWeights {
            embed,
            layers,
            final_norm,
            lm_head,
        })
    }

    /// Every linear of the model with a readable name, in forward order (useful for per-op checks).
    /// Logical parameters: k·n of every linear (GPTQ ones counted unpacked), the embedding, the norms, and the
    /// lm_head unless it is the embedding itself (tied).
    pub fn parameter_count(&self) -> u64 {
        let numel = |t: &TensorRef| t.numel() as u64;
        let mut n = numel(&self.embed) + numel(&self.final_norm);
        for l in &self.layers {
            n += numel(&l.input_norm) + numel(&l.post_norm);
        }
        for (name, lin) in self.linears() {
            let tied = matches!(lin, Linear::F16 { weight, .. } if *weight == self.embed);
            if !(name == "lm_head" && tied) {
                n += (lin.k() * lin.n()) as u64;
            }
        }
        n
    }

    pub fn linears(&self) -> Vec<(String, &Linear)> {
        let mut out = Vec::with_capacity(self.layers.len() * 7 + 1);
        for (i, l) in self.layers.iter().enumerate() {
            for (name, lin) in [
                ("q_proj", &l.q),
                ("k_proj", &l.k),
                ("v_proj", &l.v),
                ("o_proj", &l.o),
                ("gate_proj", &l.gate),
                ("up_proj", &l.up),
                ("down_proj", &l.down),
            ] {
                out.push((format!("layer {i} {name}"), lin));
            }
        }
        out.push(("lm_head".into(), &self.lm_head));
        out
    }
}
