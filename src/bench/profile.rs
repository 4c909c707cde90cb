//! Per-op GPU timing of one decode step (or one prefill chunk): a timestamp is written inside the step's single compute pass before
//! every dispatch and after the last (TIMESTAMP_QUERY_INSIDE_PASSES), so each interval is one dispatch including
//! the barrier before the next. The step replayed is exactly the session's decode plan, at the session's
//! position, so what is profiled is what runs. Intervals are grouped by graph op (the name the planner gives each
//! dispatch: `qkv`, `attention`, `down`, ...) and kernel variant, and set against each op's byte floor.

use std::collections::HashMap;

use super::report::{median, OpProfile, OpRow};
use crate::error::{Error, Result};
use crate::gpu::shader::Kernel;
use crate::gpu::{Dispatch, StepParams};
use crate::session::Session;

/// What the profiler needs to know besides the plan.
pub(crate) struct ProfileSetup {
    pub window: Option<usize>,
    pub ceiling_gbps: f64,
    pub steps: usize,
}

/// Times the session's decode step `setup.steps` times for input `token` at the current position (which it
/// does not advance) and aggregates the intervals by op.
pub(crate) fn profile_decode(
    session: &Session,
    token: u32,
    setup: &ProfileSetup,
) -> Result<OpProfile> {
    let pos = session.position();
    let step = StepParams {
        n_tokens: 1,
        pos0: pos as u32,
        logits_row: 0,
        _pad: 0,
    };
    let list = session.plan().decode_list(pos);
    profile_step(session, list, step, &[token], setup)
}

/// Times the session's first prefill chunk (`tokens`, at most one chunk, from position 0) `setup.steps` times
/// and aggregates the intervals by op. Each op's µs is per chunk, its bytes per pass over the weights.
pub(crate) fn profile_prefill(
    session: &Session,
    tokens: &[u32],
    setup: &ProfileSetup,
) -> Result<OpProfile> {
    let plan = session.plan();
    let n = tokens.len().min(plan.shape.chunk).max(1);
    let step = StepParams {
        n_tokens: n as u32,
        pos0: 0,
        logits_row: n as u32 - 1,
        _pad: 0,
    };
    profile_step(
        session,
        &plan.prefill,
        step,
        &tokens[..n.min(tokens.len())],
        setup,
    )
}

fn profile_step(
    session: &Session,
    list: &[Dispatch],
    step: StepParams,
    tokens: &[u32],
    setup: &ProfileSetup,
) -> Result<OpProfile> {
    let gpu = session.gpu().clone();
    if !gpu.caps.timestamps {
        return Err(Error::Gpu {
            op: "profile".into(),
            reason: "the adapter lacks TIMESTAMP_QUERY + TIMESTAMP_QUERY_INSIDE_PASSES".into(),
        });
    }
    let plan = session.plan();
    let n = list.len();
    let count = n as u32 + 1;
    if count > wgpu::QUERY_SET_MAX_QUERIES {
        return Err(Error::DeviceLimit {
            what: "timestamp queries for one step".into(),
            needed: count as u64,
            limit: wgpu::QUERY_SET_MAX_QUERIES as u64,
        });
    }
    let pos = step.pos0 as usize;
    let dev = &gpu.device;
    let qs = dev.create_query_set(&wgpu::QuerySetDescriptor {
        label: Some("profile"),
        ty: wgpu::QueryType::Timestamp,
        count,
    });
    let size = count as u64 * wgpu::QUERY_SIZE as u64;
    let resolve = dev.create_buffer(&wgpu::BufferDescriptor {
        label: Some("profile resolve"),
        size,
        usage: wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
        mapped_at_creation: false,
    });
    let staging = dev.create_buffer(&wgpu::BufferDescriptor {
        label: Some("profile readback"),
        size,
        usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    });
    let period_ns = gpu.queue.get_timestamp_period() as f64;
    let mut samples: Vec<Vec<f64>> = Vec::with_capacity(setup.steps);
    for _ in 0..setup.steps.max(1) {
        gpu.queue
            .write_buffer(&plan.bufs.step, 0, bytemuck::bytes_of(&step));
        gpu.queue
            .write_buffer(&plan.bufs.tokens, 0, bytemuck::cast_slice(tokens));
        gpu.scoped("profile", || -> Result<()> {
            let mut enc = dev.create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some("profile"),
            });
            {
                let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
                    label: Some("step (profiled)"),
                    timestamp_writes: None,
                });
                for (i, d) in list.iter().enumerate() {
                    pass.write_timestamp(&qs, i as u32);
                    d.record(&mut pass)?;
                }
                pass.write_timestamp(&qs, n as u32);
            }
            enc.resolve_query_set(&qs, 0..count, &resolve, 0);
            enc.copy_buffer_to_buffer(&resolve, 0, &staging, 0, size);
            gpu.submit([enc.finish()]);
            Ok(())
        })??;
        let ticks: Vec<u64> = bytemuck::pod_collect_to_vec(&gpu.map_and_read(&staging, size)?);
        samples.push(
            ticks
                .windows(2)
                .map(|w| w[1].saturating_sub(w[0]) as f64 * period_ns / 1e3)
                .collect(),
        );
    }
    Ok(aggregate(list, &samples, pos, plan.shape.slots, setup))
}

/// Groups per-dispatch intervals (µs, one vector per profiled step) by (role, kernel).
fn aggregate(
    list: &[Dispatch],
    samples: &[Vec<f64>],
    pos: usize,
    slots: usize,
    setup: &ProfileSetup,
) -> OpProfile {
    // The attention op's floor is planned for a full cache; scale it to the keys this step reads.
    let keys = (pos + 1)
        .min(setup.window.unwrap_or(usize::MAX))
        .min(slots.max(1));
    let mut order: Vec<(&str, &str)> = Vec::new();
    let mut index: HashMap<(&str, &str), usize> = HashMap::new();
    let mut calls: Vec<usize> = Vec::new();
    let mut bytes: Vec<u64> = Vec::new();
    let mut of: Vec<usize> = Vec::with_capacity(list.len());
    for d in list {
        let key = (d.op, d.label.as_str());
        let i = *index.entry(key).or_insert_with(|| {
            order.push(key);
            calls.push(0);
            bytes.push(0);
            order.len() - 1
        });
        calls[i] += 1;
        bytes[i] += match d.kernel {
            Kernel::Attention | Kernel::AttentionTile => {
                (d.bytes as u128 * keys as u128 / slots.max(1) as u128) as u64
            }
            _ => d.bytes,
        };
        of.push(i);
    }
    let mut per_op: Vec<Vec<f64>> = vec![Vec::with_capacity(samples.len()); order.len()];
    let mut totals = Vec::with_capacity(samples.len());
    for s in samples {
        let mut sums = vec![0.0; order.len()];
        for (i, us) in s.iter().enumerate() {
            if let Some(&op) = of.get(i) {
                sums[op] += us;
            }
        }
        totals.push(s.iter().sum::<f64>());
        for (op, v) in sums.into_iter().enumerate() {
            per_op[op].push(v);
        }
    }
    let total = median(&totals);
    let ops = order
        .iter()
        .enumerate()
        .map(|(i, (role, label))| {
            let us = median(&per_op[i]);
            let gbps = if us > 0.0 {
                bytes[i] as f64 / (us * 1e3)
            } else {
                0.0
            };
            OpRow {
                op: role.to_string(),
                kernel: label.to_string(),
                calls_per_token: calls[i],
                us,
                pct_of_step: if total > 0.0 { 100.0 * us / total } else { 0.0 },
                bytes: bytes[i],
                gbps,
                pct_of_ceiling: if setup.ceiling_gbps > 0.0 {
                    100.0 * gbps / setup.ceiling_gbps
                } else {
                    0.0
                },
            }
        })
        .collect();
    OpProfile {
        position: pos,
        steps: samples.len(),
        dispatches: list.len(),
        gpu_us_per_token: total,
        ops,
    }
}
