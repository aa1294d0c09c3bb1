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

/// The binaries compile the schemas without checking them against the meta-schema
/// (that check keeps megabytes for the life of the process); it is done here.
#[test]
fn every_crd_schema_is_a_valid_draft4_schema() {
    use kube::CustomResourceExt;
    for crd in [
        kubelvs_crds::VirtualService::crd(),
        kubelvs_crds::RealServer::crd(),
        kubelvs_crds::AddressPool::crd(),
    ] {
        let schema = kubelvs_crds::validate::schema_value(&crd);
        if let Err(e) = jsonschema::draft4::meta::validate(&schema) {
            panic!("{}: {e} at {}", crd.spec.names.kind, e.instance_path);
        }
    }
    let broken = serde_json::json!({"type": "object", "properties": {"a": {"type": "text"}}});
    assert!(
        jsonschema::draft4::meta::validate(&broken).is_err(),
        "the check finds a schema that is not one"
    );
}
