//! Every kernel variant the planner can produce parses, validates and translates to SPIR-V with naga, for
//! adapters with and without subgroups (sizes 8 as lavapipe, 32 as NVIDIA, 64 as AMD). Needs no GPU.

use std::collections::BTreeMap;

use wgptq::gpu::shader::{preprocess, spirv, validate_with_naga, Kernel};
use wgptq::gpu::{all_variants, KernelKey};

#[test]
fn every_planner_variant_validates() {
    let mut seen = std::collections::HashSet::new();
    for sg in [None, Some(8), Some(32), Some(64)] {
        let variants = all_variants(sg);
        assert!(
            variants.len() > 40,
            "variant list looks truncated: {}",
            variants.len()
        );
        for key in variants {
            seen.insert(key.kernel);
            if let Err(e) = spirv(&key) {
                panic!("{e}");
            }
        }
    }
    for k in Kernel::ALL {
        assert!(seen.contains(&k), "{k:?} has no variant in the list");
    }
}

#[test]
fn preprocessor_rejects_what_it_cannot_resolve() {
    let defs: BTreeMap<&'static str, u32> = [("A", 1), ("B", 0)].into_iter().collect();
    let out = preprocess(
        "x\n//#if A\na {{A}}\n//#else\nnot a\n//#endif\n//#if B\nb\n//#else\nnot b\n//#endif\n",
        &defs,
    )
    .unwrap();
    assert_eq!(out, "x\na 1\nnot b\n");
    assert!(preprocess("//#if C\n//#endif\n", &defs)
        .unwrap_err()
        .contains("C is not defined"));
    assert!(preprocess("{{C}}\n", &defs)
        .unwrap_err()
        .contains("not defined"));
    assert!(preprocess("//#if A\n", &defs)
        .unwrap_err()
        .contains("unterminated"));
    assert!(preprocess("//#endif\n", &defs).is_err());
}

#[test]
fn a_broken_kernel_is_reported_not_skipped() {
    // A key missing a define the source needs must fail loudly with the kernel's name.
    let key = KernelKey::new(
        Kernel::GptqGemv,
        &[("WG", 64), ("SUBGROUP", 0), ("SG_SIZE", 1)],
    );
    let err = validate_with_naga(&key).unwrap_err().to_string();
    assert!(err.contains("gptq_gemv"), "{err}");
}
