//! Shader sources and their specialisation. Kernels are real `.wgsl` files under `shaders/`; a tiny
//! preprocessor (`//#if NAME`, `//#else`, `//#endif`, `{{NAME}}` substitution) specialises them, and pipelines
//! are cached by a typed [`KernelKey`] so no string keys or per-token compilation exist.

use std::collections::BTreeMap;

use crate::error::{Error, Result};

/// The kernel families, one `.wgsl` file each.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kernel {
    Embed,
    RmsNorm,
    GptqGemv,
    GptqGemm,
    GptqGemmCoop,
    LinearF16,
    Rope,
    Attention,
    AttentionTile,
    AttentionCombine,
    SiluMul,
    ReduceAdd,
    Argmax,
    Stream,
    Gather,
    GridBarrier,
    Advance,
}

impl Kernel {
    pub const ALL: [Kernel; 17] = [
        Kernel::Embed,
        Kernel::RmsNorm,
        Kernel::GptqGemv,
        Kernel::GptqGemm,
        Kernel::GptqGemmCoop,
        Kernel::LinearF16,
        Kernel::Rope,
        Kernel::Attention,
        Kernel::AttentionTile,
        Kernel::AttentionCombine,
        Kernel::SiluMul,
        Kernel::ReduceAdd,
        Kernel::Argmax,
        Kernel::Stream,
        Kernel::Gather,
        Kernel::GridBarrier,
        Kernel::Advance,
    ];

    pub fn file_name(self) -> &'static str {
        match self {
            Kernel::Embed => "embed.wgsl",
            Kernel::RmsNorm => "rmsnorm.wgsl",
            Kernel::GptqGemv => "gptq_gemv.wgsl",
            Kernel::GptqGemm => "gptq_gemm.wgsl",
            Kernel::GptqGemmCoop => "gptq_gemm_coop.wgsl",
            Kernel::LinearF16 => "linear_f16.wgsl",
            Kernel::Rope => "rope.wgsl",
            Kernel::Attention => "attention.wgsl",
            Kernel::AttentionTile => "attention_tile.wgsl",
            Kernel::AttentionCombine => "attention_combine.wgsl",
            Kernel::SiluMul => "silu_mul.wgsl",
            Kernel::ReduceAdd => "reduce_add.wgsl",
            Kernel::Argmax => "argmax.wgsl",
            Kernel::Stream => "stream.wgsl",
            Kernel::GridBarrier => "grid_barrier.wgsl",
            Kernel::Gather => "gather.wgsl",
            Kernel::Advance => "advance.wgsl",
        }
    }

    fn source(self) -> &'static str {
        match self {
            Kernel::Embed => include_str!("../../shaders/embed.wgsl"),
            Kernel::RmsNorm => include_str!("../../shaders/rmsnorm.wgsl"),
            Kernel::GptqGemv => include_str!("../../shaders/gptq_gemv.wgsl"),
            Kernel::GptqGemm => include_str!("../../shaders/gptq_gemm.wgsl"),
            Kernel::GptqGemmCoop => include_str!("../../shaders/gptq_gemm_coop.wgsl"),
            Kernel::LinearF16 => include_str!("../../shaders/linear_f16.wgsl"),
            Kernel::Rope => include_str!("../../shaders/rope.wgsl"),
            Kernel::Attention => include_str!("../../shaders/attention.wgsl"),
            Kernel::AttentionTile => include_str!("../../shaders/attention_tile.wgsl"),
            Kernel::AttentionCombine => include_str!("../../shaders/attention_combine.wgsl"),
            Kernel::SiluMul => include_str!("../../shaders/silu_mul.wgsl"),
            Kernel::ReduceAdd => include_str!("../../shaders/reduce_add.wgsl"),
            Kernel::Argmax => include_str!("../../shaders/argmax.wgsl"),
            Kernel::Stream => include_str!("../../shaders/stream.wgsl"),
            Kernel::GridBarrier => include_str!("../../shaders/grid_barrier.wgsl"),
            Kernel::Gather => include_str!("../../shaders/gather.wgsl"),
            Kernel::Advance => include_str!("../../shaders/advance.wgsl"),
        }
    }

    /// Number of bindings in group 0 (all storage except 0 and 1, which are uniforms), and which of the storage
    /// bindings are written.
    pub fn bindings(self) -> &'static [Binding] {
        use Binding::{ReadOnly as R, ReadWrite as W, Uniform as U};
        match self {
            Kernel::Embed => &[U, U, R, R, W],
            Kernel::RmsNorm => &[U, U, R, R, W],
            Kernel::GptqGemv => &[U, U, R, R, R, R, R, W, R, W, W, W],
            Kernel::GptqGemm | Kernel::GptqGemmCoop => &[U, U, R, R, R, R, R, W, R, R],
            Kernel::LinearF16 => &[U, U, R, R, W],
            Kernel::Rope => &[U, U, R, R, W, W, W],
            Kernel::Attention | Kernel::AttentionTile => &[U, U, R, R, R, W],
            Kernel::SiluMul | Kernel::AttentionCombine => &[U, U, R, W],
            Kernel::Argmax | Kernel::ReduceAdd => &[U, U, R, W, W],
            Kernel::Stream => &[U, U, R, W],
            Kernel::GridBarrier => &[U, U, W],
            Kernel::Gather => &[U, U, R, R, W, R],
            Kernel::Advance => &[U, U, W],
        }
    }
}

/// Kind of one binding of a kernel's bind group 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Binding {
    Uniform,
    ReadOnly,
    ReadWrite,
}

/// A fully specialised kernel: the pipeline cache key.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KernelKey {
    pub kernel: Kernel,
    /// Sorted name → value defines (`WG`, `BITS`, …). Values are integers; 0 means "off" for `//#if`.
    pub defines: BTreeMap<&'static str, u32>,
}

impl KernelKey {
    /// Whether the kernel calls `subgroupBarrier()` (wgpu's SUBGROUP_BARRIER feature): only the scaled matrix-unit
    /// GEMM, which the planner takes only where [`crate::gpu::Caps::subgroup_barrier`] holds.
    pub fn needs_subgroup_barrier(&self) -> bool {
        self.kernel == Kernel::GptqGemmCoop && self.defines.get("SCALED") == Some(&1)
    }

    pub fn new(kernel: Kernel, defines: &[(&'static str, u32)]) -> Self {
        KernelKey {
            kernel,
            defines: defines.iter().copied().collect(),
        }
    }

    /// Workgroup size the kernel is specialised for.
    pub fn workgroup_size(&self) -> u32 {
        self.defines.get("WG").copied().unwrap_or(64)
    }

    /// A short label for GPU objects and profiles, e.g. `gptq_gemv[BITS=4,WG=256]`.
    pub fn label(&self) -> String {
        let defs: Vec<String> = self
            .defines
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        format!(
            "{}[{}]",
            self.kernel.file_name().trim_end_matches(".wgsl"),
            defs.join(",")
        )
    }

    /// The specialised WGSL source (prelude + kernel).
    pub fn source(&self) -> Result<String> {
        // naga (wgpu 30) enables subgroup builtins through the SUBGROUP device feature, not `enable subgroups;`.
        // A kernel's own `enable` directives (f16, cooperative matrices; possibly under `//#if`) must precede
        // every declaration, so they go before the prelude once the kernel is specialised.
        let kernel =
            preprocess(self.kernel.source(), &self.defines).map_err(|reason| Error::Shader {
                shader: self.label(),
                reason,
            })?;
        let (enables, body): (Vec<&str>, Vec<&str>) =
            kernel.lines().partition(|l| l.starts_with("enable "));
        let mut text = String::new();
        for e in enables {
            text.push_str(e);
            text.push('\n');
        }
        text.push_str(include_str!("../../shaders/common.wgsl"));
        text.push('\n');
        for l in body {
            text.push_str(l);
            text.push('\n');
        }
        preprocess(&text, &self.defines).map_err(|reason| Error::Shader {
            shader: self.label(),
            reason,
        })
    }
}

/// Applies `//#if NAME` / `//#else` / `//#endif` (NAME must be defined; non-zero is true) and replaces
/// `{{NAME}}` with the define's value. Unknown names and unbalanced blocks are errors, never silently skipped.
pub fn preprocess(
    src: &str,
    defines: &BTreeMap<&'static str, u32>,
) -> std::result::Result<String, String> {
    let mut out = String::with_capacity(src.len());
    // Stack of (this block active, any branch taken so far).
    let mut stack: Vec<(bool, bool)> = Vec::new();
    let active = |stack: &Vec<(bool, bool)>| stack.iter().all(|(a, _)| *a);
    for (no, line) in src.lines().enumerate() {
        let trimmed = line.trim_start();
        if let Some(name) = trimmed.strip_prefix("//#if ") {
            let name = name.trim();
            let value = defines.get(name).ok_or_else(|| {
                format!("line {}: `//#if {name}` but {name} is not defined", no + 1)
            })?;
            stack.push((*value != 0, *value != 0));
            continue;
        }
        if trimmed.starts_with("//#else") {
            let top = stack
                .last_mut()
                .ok_or_else(|| format!("line {}: `//#else` without `//#if`", no + 1))?;
            *top = (!top.1, true);
            continue;
        }
        if trimmed.starts_with("//#endif") {
            stack
                .pop()
                .ok_or_else(|| format!("line {}: `//#endif` without `//#if`", no + 1))?;
            continue;
        }
        if !active(&stack) {
            continue;
        }
        let mut rest = line;
        while let Some(open) = rest.find("{{") {
            out.push_str(&rest[..open]);
            let after = &rest[open + 2..];
            let close = after
                .find("}}")
                .ok_or_else(|| format!("line {}: unclosed `{{{{`", no + 1))?;
            let name = &after[..close];
            let value = defines
                .get(name)
                .ok_or_else(|| format!("line {}: `{{{{{name}}}}}` is not defined", no + 1))?;
            out.push_str(&value.to_string());
            rest = &after[close + 2..];
        }
        out.push_str(rest);
        out.push('\n');
    }
    if !stack.is_empty() {
        return Err("unterminated `//#if` block".into());
    }
    Ok(out)
}

/// Parses and validates a specialised kernel with naga, as wgpu would, without a GPU.
pub fn validate_with_naga(key: &KernelKey) -> Result<()> {
    naga_module(key).map(|_| ())
}

/// The kernel as SPIR-V, translated by naga as wgpu 30 does for a Vulkan 1.3 device: backend failures (naga's
/// SPIR-V writer can panic on modules that validate) show here, without a GPU.
pub fn spirv(key: &KernelKey) -> Result<Vec<u32>> {
    // wgptq creates its modules without runtime checks; with `WGPTQ_BOUNDS_CHECKS=1` wgpu's Vulkan backend
    // restricts indices into arrays, and storage-buffer accesses too unless the device has robustBufferAccess2:
    // translate under all three (one parse and validation), return the unchecked one (the last).
    use naga::proc::BoundsCheckPolicy::{Restrict, Unchecked};
    let (module, info) = naga_module(key)?;
    let mut out = Vec::new();
    for policies in [
        (Restrict, Restrict),
        (Restrict, Unchecked),
        (Unchecked, Unchecked),
    ] {
        out = write_spirv(key, &module, &info, (1, 6), policies)?;
    }
    Ok(out)
}

/// The kernel as SPIR-V `lang_version` with the given (index, buffer) bounds-check policies, otherwise as wgpu
/// 30's Vulkan backend translates a module made with `create_shader_module_trusted` and a pipeline that does
/// not zero workgroup memory (what [`super::ops::Pipelines`] asks for): the Vulkan replay
/// (`super::replay`) builds its pipelines from this.
pub fn spirv_with(
    key: &KernelKey,
    lang_version: (u8, u8),
    policies: (naga::proc::BoundsCheckPolicy, naga::proc::BoundsCheckPolicy),
) -> Result<Vec<u32>> {
    let (module, info) = naga_module(key)?;
    write_spirv(key, &module, &info, lang_version, policies)
}

fn write_spirv(
    key: &KernelKey,
    module: &naga::Module,
    info: &naga::valid::ModuleInfo,
    lang_version: (u8, u8),
    (index, buffer): (naga::proc::BoundsCheckPolicy, naga::proc::BoundsCheckPolicy),
) -> Result<Vec<u32>> {
    let pipeline = naga::back::spv::PipelineOptions {
        shader_stage: naga::ShaderStage::Compute,
        entry_point: "main".into(),
    };
    use naga::proc::BoundsCheckPolicy::Unchecked;
    let options = naga::back::spv::Options {
        lang_version,
        bounds_check_policies: naga::proc::BoundsCheckPolicies {
            index,
            buffer,
            image_load: Unchecked,
            binding_array: Unchecked,
        },
        zero_initialize_workgroup_memory: naga::back::spv::ZeroInitializeWorkgroupMemoryMode::None,
        force_loop_bounding: false,
        ray_query_initialization_tracking: false,
        trace_ray_argument_validation: false,
        emit_int_div_checks: false,
        ..Default::default()
    };
    naga::back::spv::write_vec(module, info, &options, Some(&pipeline)).map_err(|e| Error::Shader {
        shader: key.label(),
        reason: format!("SPIR-V ({index:?} indices, {buffer:?} buffer accesses): {e}"),
    })
}

/// The specialised kernel as a validated naga module (for tools that translate it themselves).
pub fn naga_module(key: &KernelKey) -> Result<(naga::Module, naga::valid::ModuleInfo)> {
    let src = key.source()?;
    let module = naga::front::wgsl::parse_str(&src).map_err(|e| Error::Shader {
        shader: key.label(),
        reason: e.emit_to_string(&src),
    })?;
    // Everything wgpu can grant, less SUBGROUP_BARRIER where the key does not need it: a kernel using it without
    // the planner knowing would fail on devices that lack it, so it must fail here.
    let caps = if key.needs_subgroup_barrier() {
        naga::valid::Capabilities::all()
    } else {
        naga::valid::Capabilities::all() - naga::valid::Capabilities::SUBGROUP_BARRIER
    };
    let mut validator = naga::valid::Validator::new(naga::valid::ValidationFlags::all(), caps);
    let info = validator.validate(&module).map_err(|e| Error::Shader {
        shader: key.label(),
        reason: e.emit_to_string(&src),
    })?;
    Ok((module, info))
}
