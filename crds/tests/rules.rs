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
