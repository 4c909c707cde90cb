//! One GPU device shared by the tests of a binary (lavapipe in CI).

use std::sync::{Arc, OnceLock};

use wgptq::gpu::{DeviceOptions, Gpu};

pub fn gpu() -> Arc<Gpu> {
    static GPU: OnceLock<Arc<Gpu>> = OnceLock::new();
    GPU.get_or_init(|| {
        let opts = DeviceOptions {
            adapter: std::env::var("WGPTQ_ADAPTER").ok(),
            no_subgroups: std::env::var("WGPTQ_NO_SUBGROUPS").is_ok(),
            ..Default::default()
        };
        Gpu::new(&opts).expect("a GPU adapter (CI: Mesa lavapipe)")
    })
    .clone()
}
