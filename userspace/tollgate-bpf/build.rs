//! Builds `ebpf/tollgate-ebpf` for the BPF target with aya-build and leaves the object in
//! `OUT_DIR/tollgate-ebpf`, which `src/redirector.rs` embeds with `include_bytes_aligned!`.
//!
//! Environment:
//! - `TOLLGATE_EBPF_TOOLCHAIN`: rustup toolchain used for the eBPF crate (default `stable`).
//! - `RUSTC_BOOTSTRAP`: when unset, set to `1` for the nested build only, because building for
//!   `bpfel-unknown-none` needs `-Z build-std=core`, which a stable toolchain accepts only with it.
//! - `AYA_BUILD_SKIP=1`: skip the eBPF build (aya-build's switch); the loader then fails at run
//!   time with `BpfError::Load`.
use std::{env, path::PathBuf};

use aya_build::{Package, Toolchain};

fn main() -> aya_build::Result<()> {
    println!("cargo::rerun-if-env-changed=TOLLGATE_EBPF_TOOLCHAIN");
    println!("cargo::rerun-if-env-changed=RUSTC_BOOTSTRAP");
    let toolchain = env::var("TOLLGATE_EBPF_TOOLCHAIN").unwrap_or_else(|_| "stable".to_owned());
    if env::var_os("RUSTC_BOOTSTRAP").is_none() {
        // Build scripts are single-threaded here; the variable reaches only the nested cargo.
        env::set_var("RUSTC_BOOTSTRAP", "1");
    }

    let manifest_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR")?);
    let ebpf_dir = manifest_dir
        .join("../../ebpf/tollgate-ebpf")
        .canonicalize()?;
    let root_dir = ebpf_dir.to_string_lossy().into_owned();

    // aya-build leaves an empty file when AYA_BUILD_SKIP is set; make sure the include exists
    // even then so `cargo check` works without the BPF toolchain.
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    let object = out_dir.join("tollgate-ebpf");
    if !object.exists() {
        std::fs::write(&object, [])?;
    }

    aya_build::build_ebpf(
        [Package {
            name: "tollgate-ebpf",
            root_dir: &root_dir,
            ..Default::default()
        }],
        Toolchain::Custom(&toolchain),
    )
}
