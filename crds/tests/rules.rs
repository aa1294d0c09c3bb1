//! Properties of the rule set itself.

use kubelvs_crds::crds;

fn walk_rules(v: &serde_json::Value, path: &str, out: &mut Vec<(String, String)>) {
    match v {
        serde_json::Value::Object(m) => {
            if let Some(serde_json::Value::Array(rules)) = m.get("x-kubernetes-validations") {
                for r in rules {
                    out.push((
                        path.to_owned(),
                        r["message"].as_str().unwrap_or("").to_owned(),
                    ));
                }
            }
            for (k, v) in m {
                walk_rules(v, &format!("{path}/{k}"), out);
            }
        }
        serde_json::Value::Array(a) => a.iter().for_each(|v| walk_rules(v, path, out)),
        _ => {}
    }
}

#[test]
fn every_cel_rule_has_a_message_that_names_its_field() {
    let mut rules = Vec::new();
    for crd in crds() {
        walk_rules(
            &serde_json::to_value(&crd).unwrap(),
            &crd.spec.names.kind,
            &mut rules,
        );
    }
    assert!(
        rules.len() >= 20,
        "expected the full rule set, found {}",
        rules.len()
    );
    for (path, message) in rules {
        assert!(
            message.starts_with("spec."),
            "rule at {path} has a message that does not name its field: {message:?}"
        );
    }
}

/// Collects every `type: string` schema under `spec`, with its path.
fn walk_strings(v: &serde_json::Value, path: &str, out: &mut Vec<(String, serde_json::Value)>) {
    match v {
        serde_json::Value::Object(m) => {
            if m.get("type").and_then(|t| t.as_str()) == Some("string") {
                out.push((path.to_owned(), v.clone()));
            }
            for (k, v) in m {
                walk_strings(v, &format!("{path}/{k}"), out);
            }
        }
        serde_json::Value::Array(a) => a.iter().for_each(|v| walk_strings(v, path, out)),
        _ => {}
    }
}

#[test]
fn every_string_of_ours_is_bounded_so_cel_cost_estimates_fit() {
    // The API server estimates a CEL rule's cost from the largest value it may see; an
    // unbounded string inside a list can push a rule over the budget and get the CRD
    // rejected at apply time. kube-cel does not estimate cost, so check the bounds here.
    for crd in crds() {
        let schema = serde_json::to_value(&crd.spec.versions[0].schema).unwrap();
        let spec = &schema["openAPIV3Schema"]["properties"]["spec"];
        let mut strings = Vec::new();
        walk_strings(spec, "spec", &mut strings);
        for (path, s) in strings {
            // Label selectors are Kubernetes' own types, which no rule of ours reads.
            if path.contains("Selector") {
                continue;
            }
            assert!(
                s.get("maxLength").is_some() || s.get("enum").is_some(),
                "{}: {path} is an unbounded string",
                crd.spec.names.kind
            );
        }
    }
}
