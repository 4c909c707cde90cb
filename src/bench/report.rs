//! The benchmark's typed results and their two renderings: JSON (serde) for tools and a plain-text table for
//! people. Units are fixed by field names (`_s`, `_ms`, `_us`, `_bytes`, `_gbps` with GB = 10⁹ bytes).

use std::fmt::Write as _;

use serde::Serialize;

/// Everything one benchmark run measured.
#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    /// The wgpu release the engine is built against.
    pub wgpu_version: String,
    pub adapter: AdapterReport,
    pub model: ModelReport,
    pub settings: SettingsReport,
    pub load: LoadReport,
    pub memory: MemoryReport,
    /// Weight bytes (codes + scales + zeros + f16 head, one embedding row ignored) a decode step reads.
    pub decode_bytes_per_token: u64,
    pub ceiling: CeilingReport,
    pub dispatch_floor: DispatchFloorReport,
    /// `--grid-barrier N` only.
    pub grid_barrier: Option<GridBarrierReport>,
    pub prefill: Vec<PrefillResult>,
    pub decode: Vec<DecodeResult>,
    /// Why the per-op profile is missing, when it was asked for and could not be made.
    pub profile_note: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct AdapterReport {
    pub name: String,
    pub backend: String,
    pub device_type: String,
    pub driver: String,
    pub driver_info: String,
    pub vendor: u32,
    pub device: u32,
    /// Subgroup size the kernels use; `None` = workgroup-memory reductions.
    pub subgroup_size: Option<u32>,
    /// TIMESTAMP_QUERY and TIMESTAMP_QUERY_INSIDE_PASSES are enabled.
    pub timestamps: bool,
    /// The prefill GEMM runs on the matrix units (cooperative matrices).
    pub matrix_units: bool,
    /// The decode residual is added with f32 atomics (run-to-run bit differences possible); `false`: in a
    /// fixed order.
    pub float_atomics: bool,
    /// Decode steps replay Vulkan command buffers recorded once; `false`: each is recorded through wgpu.
    pub replay: bool,
    pub max_binding_size: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct ModelReport {
    pub dir: String,
    pub arch: String,
    pub layers: usize,
    pub hidden: usize,
    pub intermediate: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub vocab: usize,
    pub sliding_window: Option<usize>,
    pub quant: Option<QuantReport>,
}

#[derive(Debug, Clone, Serialize)]
pub struct QuantReport {
    pub bits: u32,
    /// `None` = one group over all of K (group_size -1).
    pub group_size: Option<usize>,
    pub act_order: bool,
    pub format: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct SettingsReport {
    pub prompt_lens: Vec<usize>,
    pub contexts: Vec<usize>,
    pub decode_tokens: usize,
    pub runs: usize,
    pub warmup: usize,
    pub prefill_chunk: usize,
    pub max_context: usize,
    pub seed: u64,
}

/// Load phases, seconds.
#[derive(Debug, Clone, Serialize)]
pub struct LoadReport {
    /// Mapping the files, parsing configs and validating every tensor.
    pub open_validate_s: f64,
    /// Adapter and device creation.
    pub device_init_s: f64,
    /// GPTQ preparation (act-order reordering, zero points) and upload.
    pub prep_upload_s: f64,
    /// Session plan: buffers, bind groups, pipeline compilation.
    pub session_s: f64,
    pub total_s: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct MemoryReport {
    pub weights_bytes: u64,
    pub session_bytes: u64,
    pub total_bytes: u64,
    /// How the figures were obtained.
    pub method: String,
}

/// Streaming-read bandwidth of the adapter (the roofline for decode).
#[derive(Debug, Clone, Serialize)]
pub struct CeilingReport {
    pub buffer_bytes: u64,
    /// Threads of the best grid (each reads buffer_bytes / threads bytes, 16 at a time).
    pub threads: u64,
    /// Reads of the buffer recorded in one pass and one submit.
    pub reads_per_submit: u32,
    pub runs: usize,
    /// Median of the best grid, wall clock around submit + wait.
    pub wall_gbps: f64,
    /// Median of the best grid, from pass timestamps (when the adapter has them).
    pub timestamp_gbps: Option<f64>,
    /// The figure percentages refer to: the best grid's timestamps when present, else its wall clock.
    pub gbps: f64,
    pub source: String,
    /// (threads, GB/s) of every grid tried.
    pub sweep: Vec<(u64, f64)>,
}

/// [`super::ceiling::grid_barrier`]: a persistent kernel's phase boundary, to set beside the dispatch floor.
#[derive(Debug, Clone, Serialize)]
pub struct GridBarrierReport {
    pub workgroups: u32,
    pub threads_per_workgroup: u32,
    /// Barriers timed per submit.
    pub barriers: u32,
    pub per_barrier_us: f64,
    pub source: String,
}

/// GPU time per dispatch of chains of small dispatches in one pass (see `dispatch_floor` in ceiling.rs).
#[derive(Debug, Clone, Serialize)]
pub struct DispatchFloorReport {
    /// Dispatches in each timed pass.
    pub dispatches: u32,
    /// One `reduce_add` dispatch (bind group and pipeline) repeated.
    pub same_us: f64,
    /// Two `reduce_add` bind groups on different buffers alternating.
    pub alternating_us: f64,
    /// `reduce_add` alternating with a one-workgroup `stream` (a pipeline switch every dispatch).
    pub switching_us: f64,
    pub source: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct PrefillResult {
    pub prompt_len: usize,
    pub tok_s: f64,
    /// Median wall time of the whole prefill (all chunks and the logits readback).
    pub ms: f64,
    pub runs_ms: Vec<f64>,
    /// All logits of the last run were finite.
    pub logits_finite: bool,
    /// Per-op GPU time of the first chunk (`--profile`).
    pub profile: Option<OpProfile>,
}

#[derive(Debug, Clone, Serialize)]
pub struct DecodeResult {
    /// Tokens in the cache before the first timed step.
    pub context: usize,
    /// Greedy steps per run.
    pub tokens: usize,
    pub tok_s: f64,
    /// Median over runs of (run wall time / tokens); each step includes its token readback.
    pub ms_per_token: f64,
    /// decode_bytes_per_token / ms_per_token.
    pub achieved_gbps: f64,
    pub pct_of_ceiling: f64,
    /// Median host time per step spent writing inputs, recording and submitting (not waiting).
    pub cpu_encode_us_per_token: f64,
    /// Sampled decoding, as `generate --temperature` runs it: each step's logits read back and sampled on the
    /// host (temperature 1, top-k 50, top-p 0.9) before the next step can start. Median tok/s over runs.
    pub sampled_tok_s: f64,
    pub runs_ms_per_token: Vec<f64>,
    pub profile: Option<OpProfile>,
}

/// Per-op GPU time of one decode step, from timestamps written between its dispatches.
#[derive(Debug, Clone, Serialize)]
pub struct OpProfile {
    /// Position of the profiled step (keys attended = position + 1, capped by the window).
    pub position: usize,
    /// Profiled steps; each op's time is the median over them.
    pub steps: usize,
    pub dispatches: usize,
    /// Median sum of all dispatch intervals of a step.
    pub gpu_us_per_token: f64,
    pub ops: Vec<OpRow>,
}

#[derive(Debug, Clone, Serialize)]
pub struct OpRow {
    /// The graph op the planner names (qkv, attention, down, ...).
    pub op: String,
    /// Kernel variant label.
    pub kernel: String,
    pub calls_per_token: usize,
    pub us: f64,
    pub pct_of_step: f64,
    /// Minimum bytes the op moves per token (its floor).
    pub bytes: u64,
    pub gbps: f64,
    pub pct_of_ceiling: f64,
}

/// A value with about four significant digits (tables hold both H100 and lavapipe figures).
fn num(x: f64) -> String {
    let a = x.abs();
    if a >= 1000.0 || a == 0.0 {
        format!("{x:.0}")
    } else if a >= 100.0 {
        format!("{x:.1}")
    } else if a >= 10.0 {
        format!("{x:.2}")
    } else if a >= 0.01 {
        format!("{x:.3}")
    } else {
        format!("{x:.2e}")
    }
}

/// Bytes in decimal units (GB = 10⁹ bytes).
fn size(bytes: u64) -> String {
    let b = bytes as f64;
    if b >= 1e9 {
        format!("{:.3} GB", b / 1e9)
    } else if b >= 1e6 {
        format!("{:.2} MB", b / 1e6)
    } else {
        format!("{:.1} kB", b / 1e3)
    }
}

impl BenchReport {
    /// JSON of the whole report.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"))
    }

    /// A human-readable table of the report.
    pub fn table(&self) -> String {
        let mut s = String::new();
        let a = &self.adapter;
        let m = &self.model;
        let _ = writeln!(s, "wgptq bench (wgpu {})", self.wgpu_version);
        let _ = writeln!(
            s,
            "adapter   {} ({}, {}, driver {} {}, subgroup {}, timestamps {}, prefill on matrix units {}, \
             residual by f32 atomics {}, decode steps {})",
            a.name,
            a.backend,
            a.device_type,
            a.driver,
            a.driver_info,
            a.subgroup_size.map_or("off".to_string(), |x| x.to_string()),
            if a.timestamps { "yes" } else { "no" },
            if a.matrix_units { "yes" } else { "no" },
            if a.float_atomics { "yes" } else { "no" },
            if a.replay {
                "replayed from Vulkan command buffers"
            } else {
                "recorded through wgpu"
            }
        );
        let quant = match &m.quant {
            Some(q) => format!(
                "GPTQ {}-bit {}{} ({})",
                q.bits,
                q.group_size.map_or("g-1".to_string(), |g| format!("g{g}")),
                if q.act_order { " act-order" } else { "" },
                q.format
            ),
            None => "f16".into(),
        };
        let _ = writeln!(
            s,
            "model     {}: {} {} layers, hidden {}, intermediate {}, heads {}/{}, vocab {}, window {}, {}",
            m.dir,
            m.arch,
            m.layers,
            m.hidden,
            m.intermediate,
            m.heads,
            m.kv_heads,
            m.vocab,
            m.sliding_window.map_or("none".to_string(), |w| w.to_string()),
            quant
        );
        let l = &self.load;
        let _ = writeln!(
            s,
            "load      {:.2} s (open+validate {:.2} s, device {:.2} s, prep+upload {:.2} s, session/plan {:.2} s)",
            l.total_s, l.open_validate_s, l.device_init_s, l.prep_upload_s, l.session_s
        );
        let me = &self.memory;
        let _ = writeln!(
            s,
            "memory    {} (weights {}, session {}; {})",
            size(me.total_bytes),
            size(me.weights_bytes),
            size(me.session_bytes),
            me.method
        );
        let _ = writeln!(
            s,
            "weights   {} read per decoded token",
            size(self.decode_bytes_per_token)
        );
        let c = &self.ceiling;
        let _ = writeln!(
            s,
            "ceiling   {} GB/s streaming read of {} ({}, best of {} grids: {} threads; wall clock {} GB/s)",
            num(c.gbps),
            size(c.buffer_bytes),
            c.source,
            c.sweep.len(),
            c.threads,
            num(c.wall_gbps),
        );
        let f = &self.dispatch_floor;
        let _ = writeln!(
            s,
            "dispatch  {} µs per dispatch in a chain of {} (one bind group), {} (two alternating), {} (two kernels alternating); {}",
            num(f.same_us),
            f.dispatches,
            num(f.alternating_us),
            num(f.switching_us),
            f.source,
        );
        if let Some(g) = &self.grid_barrier {
            let _ = writeln!(
                s,
                "grid sync {} µs per grid-wide barrier among {} workgroups of {} threads (storage atomic, spin-wait; {} barriers, {})",
                num(g.per_barrier_us),
                g.workgroups,
                g.threads_per_workgroup,
                g.barriers,
                g.source,
            );
        }
        if !self.prefill.is_empty() {
            let _ = writeln!(
                s,
                "\nprefill   {:>8} {:>12} {:>12}",
                "prompt", "tok/s", "ms"
            );
            for p in &self.prefill {
                let _ = writeln!(
                    s,
                    "          {:>8} {:>12} {:>12}{}",
                    p.prompt_len,
                    num(p.tok_s),
                    num(p.ms),
                    if p.logits_finite {
                        ""
                    } else {
                        "  (non-finite logits!)"
                    }
                );
            }
        }
        if !self.decode.is_empty() {
            let _ = writeln!(
                s,
                "\ndecode    {:>8} {:>10} {:>10} {:>10} {:>8} {:>14} {:>14}",
                "ctx", "tok/s", "ms/tok", "GB/s", "% ceil", "CPU enc µs/tok", "sampled tok/s"
            );
            for d in &self.decode {
                let _ = writeln!(
                    s,
                    "          {:>8} {:>10} {:>10} {:>10} {:>8.1} {:>14} {:>14}",
                    d.context,
                    num(d.tok_s),
                    num(d.ms_per_token),
                    num(d.achieved_gbps),
                    d.pct_of_ceiling,
                    num(d.cpu_encode_us_per_token),
                    num(d.sampled_tok_s)
                );
            }
        }
        for pr in &self.prefill {
            if let Some(p) = &pr.profile {
                write_prefill_profile(&mut s, pr, p);
            }
        }
        for d in &self.decode {
            if let Some(p) = &d.profile {
                write_profile(&mut s, d, p);
            }
        }
        if let Some(note) = &self.profile_note {
            let _ = writeln!(s, "\nprofile   {note}");
        }
        s
    }
}

fn write_profile(s: &mut String, d: &DecodeResult, p: &OpProfile) {
    let _ = writeln!(
        s,
        "\nper-op profile, decode at ctx {} (position {}; GPU timestamps between dispatches, median of {} steps)",
        d.context, p.position, p.steps
    );
    let _ = writeln!(
        s,
        "  {} dispatches, {} µs GPU per token vs {} µs wall ({:.0}% of wall)",
        p.dispatches,
        num(p.gpu_us_per_token),
        num(d.ms_per_token * 1e3),
        if d.ms_per_token > 0.0 {
            p.gpu_us_per_token / (d.ms_per_token * 10.0)
        } else {
            0.0
        }
    );
    write_ops(s, p);
}

fn write_prefill_profile(s: &mut String, pr: &PrefillResult, p: &OpProfile) {
    let _ = writeln!(
        s,
        "\nper-op profile, prefill of {} tokens, first chunk (GPU timestamps between dispatches, median of {} chunks; µs per chunk, bytes per pass over the weights)",
        pr.prompt_len, p.steps
    );
    let _ = writeln!(
        s,
        "  {} dispatches, {} µs GPU per chunk",
        p.dispatches,
        num(p.gpu_us_per_token),
    );
    write_ops(s, p);
}

fn write_ops(s: &mut String, p: &OpProfile) {
    let _ = writeln!(
        s,
        "  {:<18} {:>6} {:>10} {:>7} {:>10} {:>9} {:>7}  kernel",
        "op", "calls", "µs", "% step", "bytes", "GB/s", "% ceil"
    );
    for r in &p.ops {
        let _ = writeln!(
            s,
            "  {:<18} {:>6} {:>10} {:>7.1} {:>10} {:>9} {:>7.1}  {}",
            r.op,
            r.calls_per_token,
            num(r.us),
            r.pct_of_step,
            size(r.bytes),
            num(r.gbps),
            r.pct_of_ceiling,
            r.kernel
        );
    }
}

/// Median of a non-empty sample (0 for an empty one).
pub(crate) fn median(v: &[f64]) -> f64 {
    let mut v: Vec<f64> = v.iter().copied().filter(|x| !x.is_nan()).collect();
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}
