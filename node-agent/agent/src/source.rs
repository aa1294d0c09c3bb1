//! Standalone mode's source of objects: a multi-document YAML file of kubelvs.io
//! VirtualServices, RealServers and AddressPools, checked with the same rules an API
//! server applies. A malformed object is rejected alone; the others are used.

use std::path::Path;

use kubelvs_crds::validate::Object;
use kubelvs_crds::{AddressPool, RealServer, VirtualService};

/// The objects the planner takes.
#[derive(Debug, Clone, Default)]
pub struct Objects {
    pub virtual_services: Vec<VirtualService>,
    pub real_servers: Vec<RealServer>,
    pub address_pools: Vec<AddressPool>,
}

impl Objects {
    pub fn planner(&self) -> kubelvs_planner::Objects<'_> {
        kubelvs_planner::Objects {
            virtual_services: &self.virtual_services,
            real_servers: &self.real_servers,
            address_pools: &self.address_pools,
        }
    }
}

/// A document or object that was not used, and why (naming the object and field).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejected(pub String);

/// Parses and validates every document of `text`.
pub fn parse(text: &str) -> (Objects, Vec<Rejected>) {
    let mut objects = Objects::default();
    let mut rejected = Vec::new();
    for doc in Object::from_yaml_documents(text) {
        let obj = match doc {
            Ok(o) => o,
            Err(e) => {
                rejected.push(Rejected(e.to_string()));
                continue;
            }
        };
        if let Err(e) = obj.validate() {
            rejected.push(Rejected(e.to_string()));
            continue;
        }
        match obj {
            Object::VirtualService(o) => objects.virtual_services.push(o),
            Object::RealServer(o) => objects.real_servers.push(o),
            Object::AddressPool(o) => objects.address_pools.push(o),
        }
    }
    (objects, rejected)
}

/// [`parse`] of the file at `path`.
pub fn load(path: &Path) -> std::io::Result<(Objects, Vec<Rejected>)> {
    Ok(parse(&std::fs::read_to_string(path)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_malformed_object_is_rejected_alone_naming_its_field() {
        let text = r#"
apiVersion: kubelvs.io/v1alpha1
kind: RealServer
metadata: {name: good, namespace: lab}
spec: {address: 192.0.2.11}
---
apiVersion: kubelvs.io/v1alpha1
kind: RealServer
metadata: {name: bad, namespace: lab}
spec: {address: not-an-address}
---
apiVersion: kubelvs.io/v1alpha1
kind: RealServer
metadata: {name: typo, namespace: lab}
spec: {address: 192.0.2.12, wieght: 3}
"#;
        let (objects, rejected) = parse(text);
        assert_eq!(objects.real_servers.len(), 1);
        assert_eq!(rejected.len(), 2, "{rejected:?}");
        assert!(rejected[0].0.contains("spec.address"), "{rejected:?}");
        assert!(rejected[1].0.contains("wieght"), "{rejected:?}");
    }
}
