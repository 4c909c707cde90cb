//! What the Vulkan driver makes of our kernels: registers, shared memory, spills and, where the driver gives it,
//! its internal representation, through `VK_KHR_pipeline_executable_properties` (which wgpu does not expose).
//! Profilers such as Nsight Compute do not look inside Vulkan compute pipelines; this does, without a GPU
//! profiler. A development tool for docs/PERF.md, run on the benchmark machine:
//!
//! `cargo run --release --example pipeline_stats -- [OUT_DIR]` prints one block of statistics per kernel variant
//! the decode of a 4-bit act-order OpenChat plans (GEMVs of every prologue/epilogue/unroll, attention, RoPE,
//! reduce_add), the prefill's tensor-core GEMM and tiled attention, and writes the internal representations to OUT_DIR (default `pipeline-stats`).

use std::ffi::CStr;
use std::path::PathBuf;

use ash::vk;
use wgptq::gpu::linear::{gptq_key, GptqVariant};
use wgptq::gpu::ops::make_key;
use wgptq::gpu::shader::spirv;
use wgptq::gpu::{Kernel, KernelKey};

fn keys() -> Vec<KernelKey> {
    let sg = Some(32);
    let mut v = Vec::new();
    for (pro, epi) in [(1, 0), (0, 0), (0, 1), (0, 2), (2, 0), (2, 1), (2, 2)] {
        for (unroll, idot) in [(1, false), (4, false), (1, true), (4, true)] {
            v.push(gptq_key(
                &GptqVariant {
                    bits: 4,
                    perm: true,
                    zero_buf: true,
                    add: false,
                    gemv: Some((64, 4, 4096)),
                    pro,
                    unroll,
                    epi,
                    idot,
                    coop_tm: 0,
                    coop_wg: 0,
                    coop_scaled: false,
                    coop_split: (false, false),
                },
                sg,
            ));
        }
    }
    for split in [0, 1] {
        v.push(make_key(
            Kernel::Attention,
            256,
            sg,
            &[("HD", 128), ("SPLIT", split)],
        ));
    }
    v.push(make_key(Kernel::Rope, 256, sg, &[]));
    v.push(make_key(Kernel::ReduceAdd, 256, sg, &[]));
    // Prefill: the tensor-core GEMM with and without the hi + lo split, at both workgroup sizes, and the tiled
    // attention.
    for (coop_split, coop_wg, coop_scaled) in [
        ((true, true), 256, false),
        ((false, false), 256, false),
        ((true, true), 512, false),
        ((true, false), 256, true),
    ] {
        v.push(gptq_key(
            &GptqVariant {
                bits: 4,
                perm: false,
                zero_buf: false,
                add: false,
                gemv: None,
                pro: 0,
                unroll: 0,
                epi: 0,
                idot: false,
                coop_tm: 128,
                coop_wg,
                coop_scaled,
                coop_split,
            },
            sg,
        ));
    }
    v.push(make_key(
        Kernel::AttentionTile,
        256,
        sg,
        &[("HD", 128), ("BK", 16)],
    ));
    v
}

fn text(bytes: &[std::ffi::c_char]) -> String {
    // SAFETY: the driver writes NUL-terminated strings into these fixed arrays.
    unsafe { CStr::from_ptr(bytes.as_ptr()) }
        .to_string_lossy()
        .into_owned()
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out = PathBuf::from(
        std::env::args()
            .nth(1)
            .unwrap_or_else(|| "pipeline-stats".into()),
    );
    std::fs::create_dir_all(&out)?;
    // SAFETY: plain Vulkan calls on objects created here, in order, destroyed at process exit.
    unsafe {
        let entry = ash::Entry::load()?;
        let app = vk::ApplicationInfo::default().api_version(vk::API_VERSION_1_3);
        let instance = entry.create_instance(
            &vk::InstanceCreateInfo::default().application_info(&app),
            None,
        )?;
        let pdevs = instance.enumerate_physical_devices()?;
        let pdev = *pdevs
            .iter()
            .find(|&&p| {
                instance.get_physical_device_properties(p).device_type
                    == vk::PhysicalDeviceType::DISCRETE_GPU
            })
            .or(pdevs.first())
            .ok_or("no Vulkan device")?;
        let props = instance.get_physical_device_properties(pdev);
        println!("device: {}", text(&props.device_name));
        let family = instance
            .get_physical_device_queue_family_properties(pdev)
            .iter()
            .position(|q| q.queue_flags.contains(vk::QueueFlags::COMPUTE))
            .ok_or("no compute queue")? as u32;
        let prio = [1.0];
        let queues = [vk::DeviceQueueCreateInfo::default()
            .queue_family_index(family)
            .queue_priorities(&prio)];
        let exts = [
            ash::khr::pipeline_executable_properties::NAME.as_ptr(),
            ash::khr::cooperative_matrix::NAME.as_ptr(),
        ];
        let mut exec = vk::PhysicalDevicePipelineExecutablePropertiesFeaturesKHR::default()
            .pipeline_executable_info(true);
        let mut v13 = vk::PhysicalDeviceVulkan13Features::default()
            .shader_zero_initialize_workgroup_memory(true);
        // What the prefill kernels need (f16, cooperative matrices and the memory model they bring).
        let mut v12 = vk::PhysicalDeviceVulkan12Features::default()
            .shader_float16(true)
            .vulkan_memory_model(true)
            .vulkan_memory_model_device_scope(true);
        let mut v11 =
            vk::PhysicalDeviceVulkan11Features::default().storage_buffer16_bit_access(true);
        let mut coop =
            vk::PhysicalDeviceCooperativeMatrixFeaturesKHR::default().cooperative_matrix(true);
        let device = instance.create_device(
            pdev,
            &vk::DeviceCreateInfo::default()
                .queue_create_infos(&queues)
                .enabled_extension_names(&exts)
                .push_next(&mut exec)
                .push_next(&mut v13)
                .push_next(&mut v12)
                .push_next(&mut v11)
                .push_next(&mut coop),
            None,
        )?;
        let pep = ash::khr::pipeline_executable_properties::Device::new(&instance, &device);
        for (n, key) in keys().iter().enumerate() {
            println!("\n== {}", key.label());
            let code = match spirv(key).map_err(|e| e.to_string()) {
                Ok(c) => c,
                Err(e) => {
                    println!("  naga: {e}");
                    continue;
                }
            };
            let module = device
                .create_shader_module(&vk::ShaderModuleCreateInfo::default().code(&code), None)?;
            let bindings = wgptq::gpu::replay::set_layout_bindings(key);
            let set = device.create_descriptor_set_layout(
                &vk::DescriptorSetLayoutCreateInfo::default().bindings(&bindings),
                None,
            )?;
            let sets = [set];
            let layout = device.create_pipeline_layout(
                &vk::PipelineLayoutCreateInfo::default().set_layouts(&sets),
                None,
            )?;
            let stage = vk::PipelineShaderStageCreateInfo::default()
                .stage(vk::ShaderStageFlags::COMPUTE)
                .module(module)
                .name(c"main");
            let info = vk::ComputePipelineCreateInfo::default()
                .stage(stage)
                .layout(layout)
                .flags(
                    vk::PipelineCreateFlags::CAPTURE_STATISTICS_KHR
                        | vk::PipelineCreateFlags::CAPTURE_INTERNAL_REPRESENTATIONS_KHR,
                );
            let pipeline =
                match device.create_compute_pipelines(vk::PipelineCache::null(), &[info], None) {
                    Ok(p) => p[0],
                    Err((_, e)) => {
                        println!("  pipeline: {e}");
                        continue;
                    }
                };
            let execs = pep.get_pipeline_executable_properties(
                &vk::PipelineInfoKHR::default().pipeline(pipeline),
            )?;
            for (i, ex) in execs.iter().enumerate() {
                println!(
                    "  executable {i}: {} (subgroup {})",
                    text(&ex.name),
                    ex.subgroup_size
                );
                let ei = vk::PipelineExecutableInfoKHR::default()
                    .pipeline(pipeline)
                    .executable_index(i as u32);
                for s in pep.get_pipeline_executable_statistics(&ei)? {
                    let v = match s.format {
                        vk::PipelineExecutableStatisticFormatKHR::BOOL32 => s.value.b32.to_string(),
                        vk::PipelineExecutableStatisticFormatKHR::INT64 => s.value.i64.to_string(),
                        vk::PipelineExecutableStatisticFormatKHR::UINT64 => s.value.u64.to_string(),
                        _ => s.value.f64.to_string(),
                    };
                    println!("    {} = {v}", text(&s.name));
                }
                // Two calls: sizes first, then the data.
                let fp = pep
                    .fp()
                    .get_pipeline_executable_internal_representations_khr;
                let mut count = 0u32;
                let _ = fp(device.handle(), &ei, &mut count, std::ptr::null_mut());
                let mut reps = vec![
                    vk::PipelineExecutableInternalRepresentationKHR::default();
                    count as usize
                ];
                let _ = fp(device.handle(), &ei, &mut count, reps.as_mut_ptr());
                let mut bufs: Vec<Vec<u8>> = reps.iter().map(|r| vec![0u8; r.data_size]).collect();
                for (r, b) in reps.iter_mut().zip(bufs.iter_mut()) {
                    r.p_data = b.as_mut_ptr().cast();
                }
                let _ = fp(device.handle(), &ei, &mut count, reps.as_mut_ptr());
                for (j, (r, b)) in reps.iter().zip(&bufs).enumerate() {
                    let name = format!(
                        "{n:02}_{i}_{j}_{}.txt",
                        text(&r.name).replace([' ', '/'], "_")
                    );
                    let body = if r.is_text != 0 {
                        String::from_utf8_lossy(b.split(|&c| c == 0).next().unwrap_or(&[]))
                            .into_owned()
                    } else {
                        format!("({} bytes of binary)", b.len())
                    };
                    std::fs::write(out.join(&name), format!("{}\n{}", key.label(), body))?;
                    println!(
                        "    representation {}: {} bytes -> {name}",
                        text(&r.name),
                        b.len()
                    );
                }
            }
        }
    }
    Ok(())
}
