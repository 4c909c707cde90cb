//! The pipeline cache's deferred compilation (`Pipelines::deferred`): a plan builds its dispatch lists first and
//! compiles their kernels together on every core; nothing may be left uncompiled, and a kernel that fails must
//! fail the plan, naming itself, without staying behind in the cache.

mod common;

use wgptq::gpu::{kernels, ops, Pipelines, StepParams};

/// A plan's kernels are compiled together once its lists are built (`Pipelines::deferred`), not one by one:
/// inside the scope nothing is compiled, after it everything is, and a kernel that fails to compile fails the
/// scope, naming the kernel, as the eager path does.
#[test]
fn deferred_compilation_compiles_everything_and_reports_failures() {
    let gpu = common::gpu();
    let pipes = Pipelines::new(gpu.clone());
    let bar = gpu
        .storage_init("bar", bytemuck::cast_slice(&[0u32; 4]))
        .unwrap();
    let step = gpu.uniform_init(
        "step",
        bytemuck::bytes_of(&StepParams {
            n_tokens: 1,
            ..Default::default()
        }),
    );
    let d = pipes
        .deferred(|| {
            let d = kernels::grid_barrier(&pipes, &step, &bar, 1, 3)?;
            assert!(
                !d.compiled.is_compiled(),
                "compiled inside the deferred scope"
            );
            Ok(d)
        })
        .unwrap();
    assert!(
        d.compiled.is_compiled(),
        "not compiled when the scope ended"
    );
    ops::run(&gpu, &[&d]).unwrap();
    // A key missing a define its source needs.
    let bad = wgptq::gpu::KernelKey::new(
        wgptq::gpu::shader::Kernel::GptqGemv,
        &[("WG", 64), ("SUBGROUP", 0), ("SG_SIZE", 1)],
    );
    let err = pipes
        .deferred(|| pipes.get(&bad).map(|_| ()))
        .unwrap_err()
        .to_string();
    assert!(err.contains("gptq_gemv"), "{err}");
    let err = pipes.get(&bad).map(|_| ()).unwrap_err().to_string();
    assert!(err.contains("gptq_gemv"), "{err}");
    // The failure does not stay behind to fail the next plan's scope.
    pipes
        .deferred(|| kernels::grid_barrier(&pipes, &step, &bar, 1, 3))
        .unwrap();
}
