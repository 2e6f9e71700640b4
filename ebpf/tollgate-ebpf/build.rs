//! The eBPF object is linked by `bpf-linker`, which cargo does not know about: rebuild when the
//! linker binary changes so a linker upgrade never leaves a stale object behind.
fn main() {
    println!("cargo::rerun-if-env-changed=PATH");
    if let Ok(linker) = which::which("bpf-linker") {
        println!("cargo::rerun-if-changed={}", linker.display());
    }
}
