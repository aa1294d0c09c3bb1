//! What a release build ships: `cargo build --release` at the workspace root builds the
//! default members, and none of them may turn on a dataplane crate's `testing`
//! feature (test doubles, the IPVS selftest that flushes the table, the fuzz hook).

use std::path::{Path, PathBuf};
use std::process::Command;

fn repo() -> PathBuf {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../..")).to_owned()
}

const TESTING_CRATES: [&str; 3] = ["kubelvs-ipvs", "kubelvs-xdp", "kubelvs-netconf"];

/// `cargo tree -e features` inverted on `krate`, normal edges only (what a build of
/// the binaries compiles), with `extra` arguments.
fn feature_tree(krate: &str, extra: &[&str]) -> String {
    let mut args = vec![
        "tree",
        "--offline",
        "--locked",
        "-e",
        "features,normal",
        "-i",
        krate,
    ];
    args.extend_from_slice(extra);
    let out = Command::new(env!("CARGO"))
        .args(&args)
        .current_dir(repo())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "cargo {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn a_build_of_the_workspace_root_carries_no_testing_feature() {
    for krate in TESTING_CRATES {
        let tree = feature_tree(krate, &[]);
        assert!(
            !tree.contains("feature \"testing\""),
            "`cargo build` at the root would enable {krate}/testing:\n{tree}"
        );
        // The check sees the crate at all: the agent depends on it.
        assert!(tree.contains("kubelvs-agent"), "{krate}:\n{tree}");
    }
}

#[test]
fn a_build_of_the_binaries_alone_carries_no_testing_feature() {
    // The Dockerfile's command.
    let packages = [
        "-p",
        "kubelvs-agent",
        "-p",
        "kubelvs-operator",
        "-p",
        "kubectl-lvs",
    ];
    for krate in TESTING_CRATES {
        let tree = feature_tree(krate, &packages);
        assert!(!tree.contains("feature \"testing\""), "{krate}:\n{tree}");
    }
}

/// The check can fail: the whole workspace, harnesses included, does turn it on.
#[test]
fn the_harnesses_do_turn_testing_on() {
    for krate in ["kubelvs-ipvs", "kubelvs-xdp"] {
        let tree = feature_tree(krate, &["--workspace"]);
        assert!(tree.contains("feature \"testing\""), "{krate}:\n{tree}");
    }
}
