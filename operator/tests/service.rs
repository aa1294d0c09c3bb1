//! LoadBalancer Service → VirtualServices and RealServers, and back to the Service's
//! status: one scenario each, bad inputs included.

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kubelvs_crds::{ForwardingMethod, Scheduler, VirtualServiceStatus};
use kubelvs_operator::service::{ingress, is_ours, translate};

fn service(extra_meta: &str, extra_spec: &str) -> Service {
    serde_yaml::from_str(&format!(
        "apiVersion: v1
kind: Service
metadata:
  name: web
  namespace: shop
  uid: 1234
{extra_meta}
spec:
  type: LoadBalancer
  loadBalancerClass: kubelvs.io/lvs
  ipFamilies: [IPv4]
  ports: [{{name: http, port: 80, targetPort: 8080, protocol: TCP}}]
{extra_spec}
"
    ))
    .unwrap()
}

fn slice(name: &str, family: &str, port: i32, endpoints: &str) -> EndpointSlice {
    serde_yaml::from_str(&format!(
        "apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: {name}, namespace: shop, labels: {{kubernetes.io/service-name: web}}}}
addressType: {family}
ports: [{{name: http, port: {port}, protocol: TCP}}]
endpoints: {endpoints}
"
    ))
    .unwrap()
}

const THREE: &str = "[
  {addresses: [10.0.0.1], nodeName: n1, conditions: {ready: true}},
  {addresses: [10.0.0.2], nodeName: n2, conditions: {ready: false, serving: true, terminating: true}},
  {addresses: [10.0.0.3], conditions: {ready: false, serving: false, terminating: false}}]";

#[test]
fn only_load_balancers_of_our_class_are_ours() {
    assert!(is_ours(&service("", "")));
    let other: Service = serde_yaml::from_str(
        "metadata: {name: x}\nspec: {type: LoadBalancer, loadBalancerClass: example.com/other}",
    )
    .unwrap();
    let none: Service =
        serde_yaml::from_str("metadata: {name: x}\nspec: {type: LoadBalancer}").unwrap();
    let cluster_ip: Service = serde_yaml::from_str(
        "metadata: {name: x}\nspec: {type: ClusterIP, loadBalancerClass: kubelvs.io/lvs}",
    )
    .unwrap();
    assert!(!is_ours(&other) && !is_ours(&none) && !is_ours(&cluster_ip));
}

#[test]
fn ready_endpoints_serve_terminating_ones_drain_and_others_are_left_out() {
    let t = translate(&service("", ""), &[slice("web-a", "IPv4", 8080, THREE)]).unwrap();
    assert_eq!(t.virtual_services.len(), 1);
    let vs = &t.virtual_services[0];
    assert_eq!(vs.metadata.name.as_deref(), Some("web"));
    assert_eq!(vs.spec.forwarding, ForwardingMethod::Nat, "nat by default");
    assert_eq!(vs.spec.ports[0].port, 80);
    assert_eq!(
        vs.spec.ports[0].target_port,
        Some(8080),
        "from the EndpointSlice"
    );
    assert_eq!(
        vs.metadata.owner_references.as_ref().unwrap()[0].uid,
        "1234"
    );
    let rs: Vec<(String, bool, Option<String>)> = t
        .real_servers
        .iter()
        .map(|r| {
            (
                r.metadata.name.clone().unwrap(),
                r.spec.drain,
                r.spec.node_name.clone(),
            )
        })
        .collect();
    assert_eq!(
        rs,
        [
            ("web-10.0.0.1".to_string(), false, Some("n1".to_string())),
            ("web-10.0.0.2".to_string(), true, Some("n2".to_string())),
        ]
    );
    // The VirtualService selects exactly its RealServers.
    let index = kubelvs_crds::selector::RealServerIndex::new(&t.real_servers);
    assert_eq!(
        index
            .select("shop", &vs.spec.real_server_selector)
            .unwrap()
            .len(),
        2
    );
}

#[test]
fn annotations_set_scheduler_forwarding_health_check_weight_and_affinity() {
    let svc = service(
        "  annotations:
    kubelvs.io/scheduler: sh
    kubelvs.io/forwarding: fullnat
    kubelvs.io/source-address-pool: snat
    kubelvs.io/weight: '5'
    kubelvs.io/health-check: http
    kubelvs.io/health-check-path: /healthz
    kubelvs.io/health-check-fall: '2'
    kubelvs.io/allow-shared-ip: team-a",
        "  sessionAffinity: ClientIP
  sessionAffinityConfig: {clientIP: {timeoutSeconds: 600}}",
    );
    let t = translate(&svc, &[slice("web-a", "IPv4", 8080, THREE)]).unwrap();
    let vs = &t.virtual_services[0];
    assert_eq!(vs.spec.scheduler, Scheduler::Sh);
    assert_eq!(vs.spec.forwarding, ForwardingMethod::Fullnat);
    assert_eq!(vs.spec.source_address_pool.as_deref(), Some("snat"));
    let hc = vs.spec.health_check.as_ref().unwrap();
    assert_eq!(
        (hc.path.as_deref(), hc.fall, hc.rise),
        (Some("/healthz"), 2, 2)
    );
    assert_eq!(vs.spec.persistence.as_ref().unwrap().timeout_seconds, 600);
    assert_eq!(
        vs.metadata.annotations.as_ref().unwrap()["kubelvs.io/allow-shared-ip"],
        "team-a"
    );
    assert!(t.real_servers.iter().all(|r| r.spec.weight == 5));
}

#[test]
fn requested_addresses_come_from_the_annotation_or_the_deprecated_field() {
    let by_annotation = service(
        "  annotations: {kubelvs.io/load-balancer-ips: 203.0.113.7}",
        "",
    );
    let t = translate(&by_annotation, &[]).unwrap();
    assert_eq!(
        t.virtual_services[0].spec.vip.as_deref(),
        Some("203.0.113.7")
    );
    let deprecated = service("", "  loadBalancerIP: 203.0.113.8");
    let t = translate(&deprecated, &[]).unwrap();
    assert_eq!(
        t.virtual_services[0].spec.vip.as_deref(),
        Some("203.0.113.8")
    );
}

#[test]
fn dual_stack_gets_one_virtual_service_per_family() {
    let svc = service(
        "  annotations: {kubelvs.io/load-balancer-ips: '2001:db8::7'}",
        "  ipFamilyPolicy: RequireDualStack\n  ipFamilies: [IPv4, IPv6]",
    );
    let slices = [
        slice("web-a", "IPv4", 8080, THREE),
        slice(
            "web-b",
            "IPv6",
            8080,
            "[{addresses: ['fd00::1'], conditions: {ready: true}}]",
        ),
    ];
    let t = translate(&svc, &slices).unwrap();
    let names: Vec<_> = t
        .virtual_services
        .iter()
        .map(|v| (v.metadata.name.clone().unwrap(), v.spec.vip.clone()))
        .collect();
    assert_eq!(
        names,
        [
            ("web".to_string(), None),
            ("web-ipv6".to_string(), Some("2001:db8::7".to_string()))
        ]
    );
    assert_eq!(
        t.virtual_services[1].metadata.annotations.as_ref().unwrap()["kubelvs.io/ip-family"],
        "IPv6"
    );
    assert!(t
        .real_servers
        .iter()
        .any(|r| r.metadata.name.as_deref() == Some("web-ipv6-fd00--1")));

    // status.loadBalancer.ingress follows the family order, with ipMode.
    let mut vss = t.virtual_services.clone();
    vss[0].status = Some(VirtualServiceStatus {
        vip: Some("203.0.113.1".into()),
        ..Default::default()
    });
    vss[1].status = Some(VirtualServiceStatus {
        vip: Some("2001:db8::7".into()),
        ..Default::default()
    });
    let ing = ingress(&svc, &vss);
    let got: Vec<_> = ing
        .iter()
        .map(|i| (i.ip.clone().unwrap(), i.ip_mode.clone().unwrap()))
        .collect();
    assert_eq!(
        got,
        [
            ("203.0.113.1".to_string(), "Proxy".to_string()),
            ("2001:db8::7".to_string(), "Proxy".to_string())
        ]
    );
}

#[test]
fn fullnat_reports_ip_mode_proxy_too() {
    let svc = service(
        "  annotations: {kubelvs.io/forwarding: fullnat, kubelvs.io/source-address-pool: snat}",
        "",
    );
    let mut vss = translate(&svc, &[]).unwrap().virtual_services;
    vss[0].status = Some(VirtualServiceStatus {
        vip: Some("203.0.113.1".into()),
        ..Default::default()
    });
    assert_eq!(ingress(&svc, &vss)[0].ip_mode.as_deref(), Some("Proxy"));
    vss[0].status = None;
    assert!(ingress(&svc, &vss).is_empty(), "no VIP yet, no ingress");
}

/// Each bad input is refused with a problem naming the field.
#[test]
fn bad_inputs_name_the_field() {
    let cases: &[(&str, &str, &str)] = &[
        (
            "  annotations: {kubelvs.io/scheduler: fastest}",
            "",
            "metadata.annotations[kubelvs.io/scheduler]: \"fastest\" is not one of rr, wrr",
        ),
        (
            "  annotations: {kubelvs.io/forwarding: magic}",
            "",
            "metadata.annotations[kubelvs.io/forwarding]: \"magic\" is not one of nat, dr, tun, fullnat",
        ),
        (
            "  annotations: {kubelvs.io/shceduler: rr}",
            "",
            "metadata.annotations[kubelvs.io/shceduler]: not an annotation kube-lvs reads",
        ),
        (
            "  annotations: {kubelvs.io/weight: heavy}",
            "",
            "metadata.annotations[kubelvs.io/weight]: \"heavy\" is not a whole number",
        ),
        (
            "  annotations: {kubelvs.io/load-balancer-ips: 203.0.113.300}",
            "",
            "metadata.annotations[kubelvs.io/load-balancer-ips]: \"203.0.113.300\" is not an IP address",
        ),
        (
            "  annotations: {kubelvs.io/load-balancer-ips: '2001:db8::1'}",
            "",
            "metadata.annotations[kubelvs.io/load-balancer-ips]: 2001:db8::1 is IPv6, which the Service does not use",
        ),
        (
            "  annotations: {kubelvs.io/health-check-path: /x}",
            "",
            "metadata.annotations[kubelvs.io/health-check-path]: needs kubelvs.io/health-check",
        ),
        (
            "  annotations: {kubelvs.io/forwarding: dr, kubelvs.io/directors: 'role=lb'}",
            "",
            "spec.ports[0].targetPort: forwarding dr cannot map port 80 to another port",
        ),
        (
            "  annotations: {kubelvs.io/forwarding: fullnat}",
            "",
            "VirtualService web: spec.sourceAddressPool: required when forwarding is fullnat",
        ),
        (
            "  annotations: {kubelvs.io/scheduler: maglev}",
            "",
            "VirtualService web: spec.scheduler: maglev exists only in the xdp dataplane",
        ),
        (
            "",
            "  sessionAffinity: None\n  ports: [{port: 80}, {name: b, port: 80}]",
            "VirtualService web: spec.ports: each port/protocol may appear only once",
        ),
    ];
    for (meta, spec, want) in cases {
        let mut svc = service(meta, "");
        if !spec.is_empty() {
            let patch: serde_json::Value = serde_yaml::from_str(&format!("spec:\n{spec}")).unwrap();
            let mut v = serde_json::to_value(&svc).unwrap();
            for (k, val) in patch["spec"].as_object().unwrap() {
                v["spec"][k] = val.clone();
            }
            svc = serde_json::from_value(v).unwrap();
        }
        let problems = translate(&svc, &[slice("web-a", "IPv4", 8080, THREE)]).unwrap_err();
        assert!(
            problems.iter().any(|p| p.starts_with(want)),
            "{want}\n got {problems:#?}"
        );
    }
}
