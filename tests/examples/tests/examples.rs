//! Every example against the committed CRD schema (a JSON-schema validator) and against
//! `validate()`; every invalid example rejected with its field named; every CEL rule of
//! the CRDs exercised by some invalid example.

use std::collections::{BTreeSet, HashMap};

use kubelvs_crds::{validate::compile_schema, validate::Object};
use kubelvs_example_tests::{expected_field, repo_root, yaml_files};

type Crd =
    k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;

/// The committed CRD YAML (what a cluster gets), keyed by kind.
fn committed_crds() -> HashMap<String, Crd> {
    yaml_files(&repo_root().join("charts/kube-lvs/crds"))
        .into_iter()
        .map(|f| {
            let crd: Crd = serde_yaml::from_str(&std::fs::read_to_string(&f).unwrap()).unwrap();
            (crd.spec.names.kind.clone(), crd)
        })
        .collect()
}

/// Raw documents as JSON, exactly as written (no defaults, no typed round trip).
fn raw_documents(text: &str) -> Vec<serde_json::Value> {
    serde_yaml::Deserializer::from_str(text)
        .map(|d| serde_json::to_value(serde_yaml::Value::deserialize(d).unwrap()).unwrap())
        .filter(|v| !v.is_null())
        .collect()
}

use serde::Deserialize;

/// The API server with strict field validation (kubectl's default) rejects fields the
/// structural schema does not declare; JSON schema needs that said explicitly.
fn forbid_unknown_fields(v: &mut serde_json::Value) {
    match v {
        serde_json::Value::Object(m) => {
            let preserves = m.get("x-kubernetes-preserve-unknown-fields")
                == Some(&serde_json::Value::Bool(true));
            if m.contains_key("properties") && !m.contains_key("additionalProperties") && !preserves
            {
                m.insert(
                    "additionalProperties".into(),
                    serde_json::Value::Bool(false),
                );
            }
            m.values_mut().for_each(forbid_unknown_fields);
        }
        serde_json::Value::Array(a) => a.iter_mut().for_each(forbid_unknown_fields),
        _ => {}
    }
}

fn schema_errors(crds: &HashMap<String, Crd>, doc: &serde_json::Value) -> Vec<String> {
    let kind = doc["kind"].as_str().unwrap_or_default();
    let crd = crds
        .get(kind)
        .unwrap_or_else(|| panic!("no CRD for kind {kind:?}"));
    let mut strict = serde_json::to_value(crd).unwrap();
    // Not at the root: the API server supplies apiVersion, kind and metadata itself.
    let root = &mut strict["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"];
    root.as_object_mut()
        .unwrap()
        .values_mut()
        .for_each(forbid_unknown_fields);
    let strict: Crd = serde_json::from_value(strict).unwrap();
    compile_schema(&strict)
        .iter_errors(doc)
        .map(|e| format!("{}: {e}", e.instance_path))
        .collect()
}

#[test]
fn valid_examples_pass_the_crd_schema_and_validate() {
    let crds = committed_crds();
    let files = yaml_files(&repo_root().join("examples"));
    assert!(
        files.len() >= 5,
        "expected an example per forwarding method"
    );
    let mut forwardings = BTreeSet::new();
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        for doc in raw_documents(&text) {
            let errors = schema_errors(&crds, &doc);
            assert!(
                errors.is_empty(),
                "{}: schema rejects a valid example: {errors:?}",
                file.display()
            );
            if let Some(f) = doc["spec"]["forwarding"].as_str() {
                forwardings.insert(f.to_owned());
            }
        }
        for obj in Object::from_yaml_documents(&text) {
            let obj = obj.unwrap_or_else(|e| panic!("{}: {e}", file.display()));
            obj.validate()
                .unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        }
    }
    assert_eq!(
        forwardings,
        ["dr", "fullnat", "nat", "tun"]
            .map(String::from)
            .into_iter()
            .collect(),
        "one example per forwarding method"
    );
}

#[test]
fn invalid_examples_are_rejected_naming_their_field() {
    let crds = committed_crds();
    let files = yaml_files(&repo_root().join("examples/invalid"));
    assert!(files.len() >= 30);
    for file in files {
        let name = file.display().to_string();
        let text = std::fs::read_to_string(&file).unwrap();
        let field =
            expected_field(&text).unwrap_or_else(|| panic!("{name}: no '# expect: FIELD' line"));
        let objects = Object::from_yaml_documents(&text);
        assert_eq!(objects.len(), 1, "{name}: one bad object per file");
        let message = match &objects[0] {
            Err(parse) => parse.to_string(),
            Ok(obj) => match obj.validate() {
                Err(e) => e.to_string(),
                Ok(()) => panic!("{name}: validate() accepted an invalid object"),
            },
        };
        assert!(
            message.contains(field),
            "{name}: error does not name {field}: {message}"
        );
        // What serde refuses (unknown enum values, missing required fields) the committed
        // CRD schema must refuse too, or an API server would accept what the agent cannot read.
        if objects[0].is_err() {
            let doc = &raw_documents(&text)[0];
            assert!(
                !schema_errors(&crds, doc).is_empty(),
                "{name}: the CRD schema accepts what validate() cannot parse"
            );
        }
    }
}

#[test]
fn every_cel_rule_is_exercised_by_an_invalid_example() {
    // All rule messages in the CRDs...
    let mut rules = BTreeSet::new();
    for crd in committed_crds().values() {
        collect_messages(&serde_json::to_value(crd).unwrap(), &mut rules);
    }
    // ...each produced by at least one invalid example.
    let mut produced = BTreeSet::new();
    for file in yaml_files(&repo_root().join("examples/invalid")) {
        let text = std::fs::read_to_string(&file).unwrap();
        for obj in Object::from_yaml_documents(&text).into_iter().flatten() {
            if let Err(e) = obj.validate() {
                produced.extend(e.errors.into_iter().map(|e| e.message));
            }
        }
    }
    let missing: Vec<_> = rules.difference(&produced).collect();
    assert!(
        missing.is_empty(),
        "CEL rules no invalid example exercises: {missing:#?}"
    );
}

fn collect_messages(v: &serde_json::Value, out: &mut BTreeSet<String>) {
    match v {
        serde_json::Value::Object(m) => {
            if let Some(serde_json::Value::Array(rules)) = m.get("x-kubernetes-validations") {
                out.extend(
                    rules
                        .iter()
                        .filter_map(|r| r["message"].as_str().map(String::from)),
                );
            }
            m.values().for_each(|v| collect_messages(v, out));
        }
        serde_json::Value::Array(a) => a.iter().for_each(|v| collect_messages(v, out)),
        _ => {}
    }
}
