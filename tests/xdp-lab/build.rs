//! Compiles the lab's BPF programs (bpf/lab.bpf.c) with clang into OUT_DIR.

use std::path::PathBuf;
use std::process::Command;

fn main() {
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("OUT_DIR"));
    // Debian keeps asm/ under the multiarch include directory.
    let multiarch = match std::env::var("CARGO_CFG_TARGET_ARCH").as_deref() {
        Ok("aarch64") => "/usr/include/aarch64-linux-gnu",
        _ => "/usr/include/x86_64-linux-gnu",
    };
    let src = "bpf/lab.bpf.c";
    println!("cargo:rerun-if-changed=bpf/lab.h");
    println!("cargo:rerun-if-changed={src}");
    println!("cargo:rerun-if-env-changed=CLANG");
    let obj = out.join("lab.bpf.o");
    let status = Command::new(std::env::var("CLANG").unwrap_or_else(|_| "clang".into()))
        .args(["-target", "bpf", "-O2", "-g", "-Wall", "-Werror"])
        .args(["-I", multiarch, "-I", "bpf"])
        .arg("-c")
        .arg(src)
        .arg("-o")
        .arg(&obj)
        .status()
        .unwrap_or_else(|e| panic!("running clang for {src} (Debian package clang): {e}"));
    assert!(status.success(), "clang failed on {src}");
}
