//! Compiles every `dataplane/bpf/*.c` into a BPF object in OUT_DIR with clang
//! (`-target bpf -O2 -g`); the crate embeds the objects with include_bytes.

use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    let bpf_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../bpf");
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    println!("cargo:rerun-if-changed={}", bpf_dir.display());
    // asm/types.h lives under the multiarch include directory on Debian.
    let arch = std::env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_else(|_| "x86_64".into());
    let multiarch = format!("/usr/include/{arch}-linux-gnu");
    let clang = std::env::var("CLANG").unwrap_or_else(|_| "clang".into());

    let mut entries: Vec<_> = std::fs::read_dir(&bpf_dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", bpf_dir.display()))
        .map(|e| e.expect("readdir entry").path())
        .collect();
    entries.sort();
    for path in &entries {
        println!("cargo:rerun-if-changed={}", path.display());
    }
    // bench.c wraps the director for benchmarks: built only for the `testing` feature.
    let testing = std::env::var_os("CARGO_FEATURE_TESTING").is_some();
    for src in entries
        .iter()
        .filter(|p| p.extension().is_some_and(|e| e == "c"))
        .filter(|p| testing || p.file_stem().is_some_and(|s| s != "bench"))
    {
        let stem = src.file_stem().unwrap().to_string_lossy();
        let obj = out.join(format!("{stem}.o"));
        let status = Command::new(&clang)
            // -Wall without -Werror: a newer clang's new warnings must not break CI.
            .args(["-target", "bpf", "-O2", "-g", "-Wall"])
            .arg(format!("-I{multiarch}"))
            .arg(format!("-I{}", bpf_dir.display()))
            .arg("-c")
            .arg(src)
            .arg("-o")
            .arg(&obj)
            .status()
            .unwrap_or_else(|e| {
                panic!(
                    "running {clang} for {}: {e} (install clang and libbpf-dev)",
                    src.display()
                )
            });
        assert!(status.success(), "clang failed on {}", src.display());
    }
}
