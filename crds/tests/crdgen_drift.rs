//! The committed CRD YAML must be exactly what `crdgen` writes.

use std::path::Path;

#[test]
fn committed_crd_yaml_matches_crdgen() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../charts/kube-lvs/crds");
    let generated = kubelvs_crds::crd_yaml_files();
    for (file, yaml) in &generated {
        let committed = std::fs::read_to_string(dir.join(file))
            .unwrap_or_else(|e| panic!("{file}: {e}; run crdgen --write charts/kube-lvs/crds"));
        assert!(
            committed == *yaml,
            "{file} differs from crdgen output: run `cargo run -p kubelvs-crds --bin crdgen -- --write charts/kube-lvs/crds`"
        );
    }
    let mut on_disk: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    on_disk.sort();
    let mut expected: Vec<String> = generated.into_iter().map(|(f, _)| f).collect();
    expected.sort();
    assert_eq!(
        on_disk, expected,
        "stale or missing CRD files in charts/kube-lvs/crds"
    );
}
