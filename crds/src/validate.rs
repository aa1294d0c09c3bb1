//! Validation without an API server, using the CRD's own rules.
//!
//! There is one rule set: the generated CRD schema. [`validate`] checks an object against
//! that schema's OpenAPI constraints (with a JSON-schema validator) and evaluates its CEL
//! `x-kubernetes-validations` rules (with kube's client-side CEL), so the agent's
//! standalone mode rejects exactly what an API server would, with the same messages.
//! The one addition is what no CRD schema carries: the API server's rules for labels.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Mutex, OnceLock};

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::core::CustomResourceExt;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::{AddressPool, RealServer, VirtualService};

/// One problem with one field. `message` always names the field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// Path of the field, e.g. `spec.ports[0].targetPort`.
    pub field: String,
    pub message: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

/// Every problem found in one object.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ValidationErrors {
    /// `Kind namespace/name`.
    pub object: String,
    pub errors: Vec<FieldError>,
}

impl fmt::Display for ValidationErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} is invalid: ", self.object)?;
        for (i, e) in self.errors.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl ValidationErrors {
    /// Whether some error concerns `field` or a field below it (`spec.port` is not
    /// `spec.ports`).
    pub fn names_field(&self, field: &str) -> bool {
        self.errors.iter().any(|e| {
            e.field
                .strip_prefix(field)
                .is_some_and(|rest| rest.is_empty() || rest.starts_with(['.', '[']))
        })
    }
}

/// Checks `obj` against its CRD's OpenAPI schema and CEL rules, and its labels against
/// the API server's rules.
pub fn validate<K>(obj: &K) -> Result<(), ValidationErrors>
where
    K: CustomResourceExt + kube::Resource<DynamicType = ()> + Serialize,
{
    let value = serde_json::to_value(obj).expect("API objects serialize to JSON");
    let schema = schema_of::<K>();
    let mut errors = schema_errors(&schema.validator, &value);
    // CEL rules assume a structurally valid object (the API server never evaluates them
    // otherwise), so only run them on one.
    if errors.is_empty() {
        if let Err(cel) = cel_errors(&schema.crd, &value) {
            errors.extend(cel.into_iter().map(|e| FieldError {
                field: e.field_path.clone(),
                message: if e.message.starts_with("spec") || e.message.starts_with("metadata") {
                    e.message
                } else {
                    format!("{}: {}", e.field_path, e.message)
                },
            }));
        }
    }
    errors.extend(label_errors(obj.meta().labels.as_ref()));
    if errors.is_empty() {
        Ok(())
    } else {
        Err(ValidationErrors {
            object: object_name(obj),
            errors,
        })
    }
}

/// The generated CRD of `K` and its compiled JSON-schema validator, made once per
/// process: generating the CRD (schemars) costs more than validating an object, and an
/// agent validates every object of its file.
struct Schema {
    crd: CustomResourceDefinition,
    validator: jsonschema::Validator,
}

fn schema_of<K: CustomResourceExt + kube::Resource<DynamicType = ()>>() -> &'static Schema {
    static SCHEMAS: OnceLock<Mutex<HashMap<String, &'static Schema>>> = OnceLock::new();
    let mut cache = SCHEMAS
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    cache.entry(K::kind(&()).into_owned()).or_insert_with(|| {
        let crd = K::crd();
        let validator = compile_schema(&crd);
        Box::leak(Box::new(Schema { crd, validator }))
    })
}

/// The CRD's CEL rules on `value`, compiled once per kind and thread (the compiled
/// programs are not shareable between threads).
fn cel_errors(
    crd: &CustomResourceDefinition,
    value: &serde_json::Value,
) -> Result<(), kube::core::cel::ValidationErrors> {
    use kube::core::cel::{compile_schema as compile_cel, CompiledSchema, Validator};
    thread_local! {
        static COMPILED: std::cell::RefCell<HashMap<String, std::rc::Rc<(Validator, CompiledSchema)>>> =
            Default::default();
    }
    let compiled = COMPILED.with(|c| {
        c.borrow_mut()
            .entry(crd.spec.names.kind.clone())
            .or_insert_with(|| {
                let schema = serde_json::to_value(
                    crd.spec.versions[0]
                        .schema
                        .as_ref()
                        .and_then(|s| s.open_api_v3_schema.as_ref())
                        .expect("derived CRD has an openAPIV3Schema"),
                )
                .expect("CRD schema serializes to JSON");
                std::rc::Rc::new((Validator::new(), compile_cel(&schema)))
            })
            .clone()
    });
    compiled.0.validate_compiled(&compiled.1, value, None)
}

/// The API server's rules for labels (apimachinery's `ValidateLabels`), which no CRD
/// schema carries: a file's objects are refused as a cluster would refuse them.
fn label_errors(labels: Option<&std::collections::BTreeMap<String, String>>) -> Vec<FieldError> {
    const NAME: &str = "must be 63 characters or less, consist of alphanumeric characters, \
                        '-', '_' or '.', and start and end with an alphanumeric character";
    fn is_name(s: &str) -> bool {
        let edge = |b: Option<&u8>| b.is_some_and(u8::is_ascii_alphanumeric);
        s.len() <= 63
            && edge(s.as_bytes().first())
            && edge(s.as_bytes().last())
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
    }
    // A lowercase RFC 1123 subdomain: dot-separated labels of [a-z0-9-], each starting
    // and ending with an alphanumeric character.
    fn is_subdomain(s: &str) -> bool {
        s.len() <= 253
            && s.split('.').all(|part| {
                let edge = |b: Option<&u8>| {
                    b.is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
                };
                edge(part.as_bytes().first())
                    && edge(part.as_bytes().last())
                    && part
                        .bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            })
    }
    let mut errors = Vec::new();
    for (key, value) in labels.into_iter().flatten() {
        let field = format!("metadata.labels.{key}");
        let (prefix, name) = match key.split_once('/') {
            Some((prefix, name)) => (Some(prefix), name),
            None => (None, key.as_str()),
        };
        if let Some(prefix) = prefix.filter(|p| !is_subdomain(p)) {
            errors.push(FieldError {
                message: format!(
                    "{field}: key prefix {prefix:?} must be a lowercase DNS subdomain (at most \
                     253 characters of a-z, 0-9, '-' and '.', each part starting and ending \
                     with a letter or digit)"
                ),
                field,
            });
        } else if !is_name(name) {
            errors.push(FieldError {
                message: format!("{field}: key name {name:?} {NAME}"),
                field,
            });
        } else if !value.is_empty() && !is_name(value) {
            errors.push(FieldError {
                message: format!("{field}: value {value:?} {NAME}, or be empty"),
                field,
            });
        }
    }
    errors
}

fn object_name<K: kube::Resource<DynamicType = ()>>(obj: &K) -> String {
    let kind = K::kind(&());
    let meta = obj.meta();
    let name = meta.name.as_deref().unwrap_or("<unnamed>");
    match meta.namespace.as_deref() {
        Some(ns) => format!("{kind} {ns}/{name}"),
        None => format!("{kind} {name}"),
    }
}

/// OpenAPI constraints of the CRD's schema (ranges, lengths, patterns, enums, required).
fn schema_errors(validator: &jsonschema::Validator, value: &serde_json::Value) -> Vec<FieldError> {
    validator
        .iter_errors(value)
        .map(|e| {
            let field = json_pointer_to_field(e.instance_path.as_str());
            FieldError {
                message: format!("{field}: {e}"),
                field,
            }
        })
        .collect()
}

/// Compiles the openAPIV3Schema of a CRD into a JSON-schema validator. OpenAPI-only
/// keywords (`nullable`, `x-kubernetes-*`) are unknown to JSON schema and ignored.
pub fn compile_schema(crd: &CustomResourceDefinition) -> jsonschema::Validator {
    let schema = schema_value(crd);
    // The schema is compiled as a resource the root refers to: compiling checks the
    // root against the draft-4 meta-schema, whose validator (a static of the process)
    // grows a copy of itself, about 0.8 MB, for every path of keywords it walks; it
    // kept 13.9 MB for our three schemas. Ours are generated from the types, and
    // checked against the meta-schema by a test instead.
    jsonschema::options()
        .with_draft(jsonschema::Draft::Draft4)
        .with_resource(
            "urn:kubelvs:schema",
            jsonschema::Draft::Draft4.create_resource(schema),
        )
        .build(&serde_json::json!({"$ref": "urn:kubelvs:schema"}))
        .expect("the generated CRD schema compiles")
}

/// The openAPIV3Schema of a CRD as [`compile_schema`] compiles it (for a test to check
/// against the meta-schema).
pub fn schema_value(crd: &CustomResourceDefinition) -> serde_json::Value {
    let schema = crd.spec.versions[0]
        .schema
        .as_ref()
        .and_then(|s| s.open_api_v3_schema.as_ref())
        .expect("a derived CRD has an openAPIV3Schema");
    serde_json::to_value(schema).expect("schemas serialize")
}

/// `/spec/ports/0/port` -> `spec.ports[0].port`.
fn json_pointer_to_field(pointer: &str) -> String {
    let mut out = String::new();
    for seg in pointer.split('/').filter(|s| !s.is_empty()) {
        if seg.chars().all(|c| c.is_ascii_digit()) {
            out.push_str(&format!("[{seg}]"));
        } else {
            if !out.is_empty() {
                out.push('.');
            }
            out.push_str(&seg.replace("~1", "/").replace("~0", "~"));
        }
    }
    if out.is_empty() {
        "<object>".to_owned()
    } else {
        out
    }
}

/// Any kubelvs.io object, as read from YAML (the agent's standalone mode, examples).
// Objects are read once and moved rarely; boxing would only add indirection for callers.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum Object {
    VirtualService(VirtualService),
    RealServer(RealServer),
    AddressPool(AddressPool),
}

/// Why a YAML document is not a kubelvs.io object.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("document {document}: not YAML: {message}")]
    Yaml { document: usize, message: String },
    #[error("document {document}: apiVersion {api_version:?} kind {kind:?} is not a kubelvs.io/v1alpha1 VirtualService, RealServer or AddressPool")]
    UnknownKind {
        document: usize,
        api_version: String,
        kind: String,
    },
    #[error("document {document} ({kind} {name}): {field}: {message}")]
    Field {
        document: usize,
        kind: String,
        name: String,
        field: String,
        message: String,
    },
}

#[derive(Deserialize)]
struct TypeMeta {
    #[serde(default, rename = "apiVersion")]
    api_version: String,
    #[serde(default)]
    kind: String,
    #[serde(default)]
    metadata: Option<NameOnly>,
}

#[derive(Deserialize)]
struct NameOnly {
    #[serde(default)]
    name: Option<String>,
}

impl Object {
    /// Parses every document of a multi-document YAML stream. Empty documents are skipped;
    /// one bad document does not hide the others.
    pub fn from_yaml_documents(yaml: &str) -> Vec<Result<Object, ParseError>> {
        let mut out = Vec::new();
        for (i, doc) in serde_yaml::Deserializer::from_str(yaml).enumerate() {
            let document = i + 1;
            let value = match serde_yaml::Value::deserialize(doc) {
                Ok(serde_yaml::Value::Null) => continue,
                Ok(v) => v,
                Err(e) => {
                    out.push(Err(ParseError::Yaml {
                        document,
                        message: e.to_string(),
                    }));
                    // A syntax error ends the stream: later documents cannot be located.
                    break;
                }
            };
            out.push(Self::from_value(document, value));
        }
        out
    }

    fn from_value(document: usize, value: serde_yaml::Value) -> Result<Object, ParseError> {
        let meta: TypeMeta =
            serde_yaml::from_value(value.clone()).map_err(|e| ParseError::Yaml {
                document,
                message: e.to_string(),
            })?;
        if meta.api_version != "kubelvs.io/v1alpha1" {
            return Err(ParseError::UnknownKind {
                document,
                api_version: meta.api_version,
                kind: meta.kind,
            });
        }
        let name = meta
            .metadata
            .and_then(|m| m.name)
            .unwrap_or_else(|| "<unnamed>".to_owned());
        fn typed<T: DeserializeOwned>(
            document: usize,
            kind: &str,
            name: &str,
            value: serde_yaml::Value,
        ) -> Result<T, ParseError> {
            let field_error = |field: String, message: String| ParseError::Field {
                document,
                kind: kind.to_owned(),
                name: name.to_owned(),
                field,
                message,
            };
            // An API server with strict field validation (kubectl's default) rejects unknown
            // fields; so do we, or a misspelt `healthcheck:` would silently do nothing.
            let mut unknown = Vec::new();
            let mut note_unknown = |path: serde_ignored::Path<'_>| unknown.push(path.to_string());
            let de = serde_ignored::Deserializer::new(value, &mut note_unknown);
            let parsed: T = serde_path_to_error::deserialize(de).map_err(|e| {
                let mut field = e.path().to_string();
                let message = e.inner().to_string();
                // serde names a missing field only in the message; put it in the path.
                if let Some(missing) = message
                    .strip_prefix("missing field `")
                    .and_then(|m| m.split('`').next())
                {
                    field = if field == "." {
                        missing.to_owned()
                    } else {
                        format!("{field}.{missing}")
                    };
                }
                field_error(field, message)
            })?;
            // apiVersion and kind were read above; the typed root does not keep them.
            if let Some(path) = unknown
                .into_iter()
                .find(|p| p != "apiVersion" && p != "kind")
            {
                return Err(field_error(path, "unknown field".to_owned()));
            }
            Ok(parsed)
        }
        match meta.kind.as_str() {
            "VirtualService" => {
                typed(document, &meta.kind, &name, value).map(Object::VirtualService)
            }
            "RealServer" => typed(document, &meta.kind, &name, value).map(Object::RealServer),
            "AddressPool" => typed(document, &meta.kind, &name, value).map(Object::AddressPool),
            _ => Err(ParseError::UnknownKind {
                document,
                api_version: meta.api_version,
                kind: meta.kind,
            }),
        }
    }

    /// [`validate`] for whichever kind this is.
    pub fn validate(&self) -> Result<(), ValidationErrors> {
        match self {
            Object::VirtualService(o) => validate(o),
            Object::RealServer(o) => validate(o),
            Object::AddressPool(o) => validate(o),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_follow_the_api_servers_rules() {
        let errors = |pairs: &[(&str, &str)]| {
            let labels = pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            label_errors(Some(&labels))
        };
        for ok in [
            ("app", "web"),
            ("kubelvs.io/pool", "a.b_c-1"),
            ("A_b.C-1", ""),
            ("x", &"v".repeat(63)),
        ] {
            assert_eq!(errors(&[ok]), vec![], "{ok:?}");
        }
        for (bad, what) in [
            (("app", "a b"), "value"),
            (("app", "x\0y"), "value"),
            (("app", "-web"), "value"),
            (("x", &"v".repeat(64)), "value"),
            (("", "web"), "key name"),
            (("a b", "web"), "key name"),
            (("kubelvs.io/", "web"), "key name"),
            (("Kubelvs.io/pool", "web"), "key prefix"),
            (("a..b/pool", "web"), "key prefix"),
            (("a/b/c", "web"), "key name"),
        ] {
            let found = errors(&[bad]);
            assert_eq!(found.len(), 1, "{bad:?}");
            assert_eq!(found[0].field, format!("metadata.labels.{}", bad.0));
            assert!(
                found[0]
                    .message
                    .starts_with(&format!("metadata.labels.{}: {what}", bad.0)),
                "{bad:?}: {}",
                found[0].message
            );
        }
    }

    #[test]
    fn json_pointers_become_field_paths() {
        assert_eq!(
            json_pointer_to_field("/spec/ports/0/port"),
            "spec.ports[0].port"
        );
        assert_eq!(json_pointer_to_field("/spec/vip"), "spec.vip");
        assert_eq!(json_pointer_to_field(""), "<object>");
        assert_eq!(
            json_pointer_to_field("/metadata/labels/a~1b"),
            "metadata.labels.a/b"
        );
    }
}
