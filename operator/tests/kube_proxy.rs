//! kube-proxy and kube-lvs on one address: a real kube-proxy (nftables mode), built from
//! the same Go modules as the test control plane, against a LoadBalancer Service of
//! class `kubelvs.io/lvs`. With the `ipMode: VIP` ingress kube-lvs used to write,
//! kube-proxy DNATs the address itself on every node (before IPVS sees the packet, and
//! for in-cluster clients before any director does); with the ingress the operator
//! writes (`service::ingress`), it leaves the address to the load balancer.
//!
//! The control plane and kube-proxy run in a network namespace of their own, so
//! kube-proxy's rules never touch the machine's.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use k8s_openapi::api::core::v1::Service;
use kubelvs_crds::{VirtualService, VirtualServiceStatus};
use kubelvs_measure::eventually;
use kubelvs_operator::service::{ingress, translate};
use kubelvs_test_cluster::{Cluster, ControlPlane, ControlPlaneOptions};

const LB_IP: &str = "198.51.100.77";

struct NetnsGuard(String);

impl NetnsGuard {
    fn add(name: &str) -> Self {
        let _ = Command::new("ip")
            .args(["netns", "del", name])
            .stderr(Stdio::null())
            .status();
        assert!(Command::new("ip")
            .args(["netns", "add", name])
            .status()
            .unwrap()
            .success());
        assert!(Command::new("ip")
            .args(["netns", "exec", name, "ip", "link", "set", "lo", "up"])
            .status()
            .unwrap()
            .success());
        Self(name.to_owned())
    }

    fn nft(&self) -> String {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.0, "nft", "list", "ruleset"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for NetnsGuard {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
#[ignore = "root (a network namespace, nftables) and the test control plane (Go toolchain); scripts/test runs it"]
fn kube_proxy_leaves_the_address_of_a_kube_lvs_service_to_the_load_balancer() {
    let netns = NetnsGuard::add(&format!("kproxy{}", std::process::id()));
    let cp = ControlPlane::start(ControlPlaneOptions {
        netns: Some(netns.0.clone()),
        ..Default::default()
    })
    .unwrap();
    let cluster = Cluster::of(cp).unwrap();
    cluster
        .kubectl_stdin(
            &["apply", "-f", "-"],
            &kubelvs_test_cluster::node_object("kp-node", "192.0.2.50".parse().unwrap(), false),
        )
        .unwrap();
    let log: PathBuf = std::env::temp_dir().join(format!("kube-proxy-{}.log", std::process::id()));
    let proxy = Command::new("ip")
        .args(["netns", "exec", &netns.0])
        .arg(cluster.tool("kube-proxy"))
        .arg("--kubeconfig")
        .arg(cluster.kubeconfig())
        .args([
            "--proxy-mode=nftables",
            "--hostname-override=kp-node",
            "--cluster-cidr=10.244.0.0/16",
            "--conntrack-max-per-core=0",
            "--healthz-bind-address=127.0.0.1:10256",
            "--metrics-bind-address=127.0.0.1:10249",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let _proxy = Killed(proxy);

    let service_yaml = "apiVersion: v1
kind: Service
metadata: {name: web, namespace: default}
spec:
  type: LoadBalancer
  loadBalancerClass: kubelvs.io/lvs
  ports: [{name: http, port: 80, targetPort: 8080}]
";
    cluster
        .kubectl_stdin(&["apply", "-f", "-"], service_yaml)
        .unwrap();
    cluster
        .kubectl_stdin(
            &["apply", "-f", "-"],
            "apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: web-manual
  namespace: default
  labels: {kubernetes.io/service-name: web, endpointslice.kubernetes.io/managed-by: kubelvs-tests}
addressType: IPv4
ports: [{name: http, port: 8080, protocol: TCP}]
endpoints: [{addresses: [10.244.1.5], conditions: {ready: true}}]
",
        )
        .unwrap();
    let cluster_ip = cluster
        .kubectl_ok(&[
            "get",
            "service",
            "web",
            "-n",
            "default",
            "-o",
            "jsonpath={.spec.clusterIP}",
        ])
        .unwrap();
    let set_ingress = |ingress: &serde_json::Value| {
        cluster
            .kubectl_ok(&[
                "patch",
                "service",
                "web",
                "-n",
                "default",
                "--subresource=status",
                "--type=merge",
                "-p",
                &serde_json::json!({"status": {"loadBalancer": {"ingress": ingress}}}).to_string(),
            ])
            .unwrap();
    };
    let synced = |with_lb: bool| {
        eventually(Duration::from_secs(60), "kube-proxy's rules", || {
            let rules = netns.nft();
            (rules.contains(cluster_ip.trim()) && rules.contains(LB_IP) == with_lb).then_some(rules)
        })
    };

    // What kube-lvs used to write: kube-proxy takes the address for itself.
    set_ingress(&serde_json::json!([{"ip": LB_IP, "ipMode": "VIP"}]));
    let rules = synced(true);
    assert!(
        rules.contains(&format!("{LB_IP} . tcp . 80")),
        "kube-proxy DNATs the VIP-mode address: {rules}"
    );

    // What the operator writes now, from its own translation of the Service.
    let svc: Service = serde_yaml::from_str(service_yaml).unwrap();
    let mut vss: Vec<VirtualService> = translate(&svc, &[]).unwrap().virtual_services;
    for vs in &mut vss {
        vs.status = Some(VirtualServiceStatus {
            vip: Some(LB_IP.into()),
            ..Default::default()
        });
    }
    let ours = ingress(&svc, &vss);
    assert_eq!(ours.len(), 1);
    set_ingress(&serde_json::to_value(&ours).unwrap());
    let rules = synced(false);
    assert!(
        !rules.contains(LB_IP),
        "kube-proxy still handles {LB_IP}: {rules}"
    );
    let _ = std::fs::remove_file(&log);
}
