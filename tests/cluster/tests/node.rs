//! The chart's Pods on a real node: see tests/cluster/src/node.rs.

use std::path::PathBuf;

use kubelvs_test_cluster::node::{HostState, Node, NodeNetwork, NodeOptions};
use kubelvs_test_cluster::{Cluster, ControlPlane, ControlPlaneOptions};

#[test]
#[ignore = "root; builds images and runs kubelet, containerd and kube-proxy on this machine"]
fn try_node() {
    let before = HostState::read();
    let net = NodeNetwork::create("klvs-node0", &["10.244.0.1/24", "192.168.77.1/24"]).unwrap();
    let cp = ControlPlane::start(ControlPlaneOptions {
        bind_address: "10.244.0.1".parse().unwrap(),
        workloads: true,
        ..Default::default()
    })
    .unwrap();
    let images: Vec<PathBuf> = ["kube-lvs", "web", "pause"]
        .iter()
        .map(|n| PathBuf::from(format!("/tmp/img/out/{n}.tar")))
        .collect();
    let node = Node::start(
        &cp,
        NodeOptions {
            name: "node-0".into(),
            bridge: net.bridge().into(),
            address: "10.244.0.1".parse().unwrap(),
            pod_subnet: "10.244.0.0/24".into(),
            labels: vec!["node-role.kubelvs.io/director=".into()],
        },
        &images,
    )
    .unwrap();
    eprintln!("node ready after {:?}", node.ready_after());
    let cluster = Cluster::of(cp).unwrap();
    cluster
        .kubectl_stdin(
            &["apply", "-f", "-"],
            "apiVersion: v1
kind: Pod
metadata: {name: web, namespace: default}
spec:
  containers: [{name: web, image: docker.io/local/web:test, imagePullPolicy: Never}]
",
        )
        .unwrap();
    let r = cluster.kubectl_ok(&["wait", "--for=condition=Ready", "pod/web", "--timeout=20s"]);
    eprintln!("{r:?}");
    eprintln!(
        "{}",
        cluster.kubectl_ok(&["get", "pods", "-o", "wide"]).unwrap()
    );
    for l in ["kubelet", "containerd", "kube-scheduler", "kube-proxy"] {
        std::fs::copy(
            node.dir().join(format!("{l}.log")),
            format!("/tmp/nodetry/{l}.log"),
        )
        .ok();
    }
    std::fs::copy(
        node.dir().join("containerd.log"),
        "/tmp/nodetry/containerd.log",
    )
    .ok();
    let ip = cluster
        .kubectl_ok(&["get", "pod", "web", "-o", "jsonpath={.status.podIP}"])
        .unwrap();
    let out = std::process::Command::new("curl")
        .args(["-s", "-m", "3", &format!("http://{ip}:8080/")])
        .output()
        .unwrap();
    eprintln!("curl: {}", String::from_utf8_lossy(&out.stdout));
    cluster.kubectl_ok(&["delete", "pod", "web", "--wait"]).ok();
    drop(node);
    drop(cluster);
    drop(net);
    let after = HostState::read();
    assert_eq!(before, after);
}
