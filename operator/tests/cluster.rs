//! `kube-lvs-operator` as a process against the real control plane of the test suite,
//! with a ServiceAccount token bound to the RBAC the chart grants it. Operators see
//! every namespace, so these tests take turns; each uses its own namespace, an
//! AddressPool admitting only that namespace, and its own leader Lease.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use kubelvs_measure::eventually;
use kubelvs_test_cluster::{
    shared, spawn_tied, Cluster, ControlPlane, ControlPlaneOptions, Namespace,
};

const WAIT: Duration = Duration::from_secs(30);

fn serial() -> MutexGuard<'static, ()> {
    static SERIAL: Mutex<()> = Mutex::new(());
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

struct Setup {
    cluster: &'static Cluster,
    ns: Namespace<'static>,
    kubeconfig: PathBuf,
    pool: String,
}

impl Setup {
    /// A namespace with the operator's RBAC (rendered by helm) and an AddressPool
    /// of `addresses` that admits only this namespace.
    fn new(prefix: &str, addresses: &str) -> Self {
        static CRDS: OnceLock<()> = OnceLock::new();
        let cluster = shared();
        CRDS.get_or_init(|| cluster.install_crds().unwrap());
        let ns = cluster.namespace(prefix);
        cluster
            .apply_chart_templates(ns.name(), ns.name(), &["templates/operator-rbac.yaml"], &[])
            .unwrap();
        let kubeconfig = cluster
            .service_account_kubeconfig(ns.name(), "kube-lvs-operator")
            .unwrap();
        let pool = ns.name().to_owned();
        let s = Self {
            cluster,
            ns,
            kubeconfig,
            pool,
        };
        s.apply(&format!(
            "apiVersion: kubelvs.io/v1alpha1
kind: AddressPool
metadata: {{name: {}}}
spec:
  addresses: [{addresses}]
  namespaceSelector: {{matchLabels: {{kubernetes.io/metadata.name: {}}}}}
",
            s.pool,
            s.ns.name()
        ));
        s
    }

    fn name(&self) -> &str {
        self.ns.name()
    }

    fn apply(&self, yaml: &str) {
        self.cluster
            .kubectl_stdin(&["apply", "-n", self.name(), "-f", "-"], yaml)
            .unwrap();
    }

    fn json(&self, args: &[&str]) -> Option<serde_json::Value> {
        let mut a = args.to_vec();
        a.extend(["-n", self.name(), "-o", "json"]);
        self.cluster
            .kubectl_ok(&a)
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok())
    }

    fn vip(&self, vs: &str) -> Option<String> {
        self.json(&["get", "lvs", vs])?["status"]["vip"]
            .as_str()
            .map(String::from)
    }

    fn condition(&self, vs: &str, type_: &str) -> Option<(String, String, String)> {
        let v = self.json(&["get", "lvs", vs])?;
        let c = v["status"]["conditions"]
            .as_array()?
            .iter()
            .find(|c| c["type"] == type_)?
            .clone();
        Some((
            c["status"].as_str()?.into(),
            c["reason"].as_str()?.into(),
            c["message"].as_str()?.into(),
        ))
    }

    fn operator(&self, identity: &str) -> Operator {
        Operator::start(self, identity, "127.0.0.1:0")
    }

    fn lease_holder(&self) -> Option<String> {
        self.json(&["get", "lease", "kube-lvs-operator"])?["spec"]["holderIdentity"]
            .as_str()
            .map(String::from)
    }
}

impl Drop for Setup {
    fn drop(&mut self) {
        let _ = self
            .cluster
            .kubectl_ok(&["delete", "addresspool", &self.pool, "--wait=false"]);
    }
}

fn virtual_service(name: &str, vip: Option<&str>, pool: Option<&str>) -> String {
    let mut spec = String::new();
    if let Some(v) = vip {
        spec += &format!("  vip: {v}\n");
    }
    if let Some(p) = pool {
        spec += &format!("  addressPool: {p}\n");
    }
    format!(
        "apiVersion: kubelvs.io/v1alpha1
kind: VirtualService
metadata: {{name: {name}}}
spec:
{spec}  ports: [{{port: 80}}]
  forwarding: nat
  realServerSelector: {{matchLabels: {{app: {name}}}}}
"
    )
}

struct Operator {
    child: Child,
    log: PathBuf,
}

impl Operator {
    fn start(s: &Setup, identity: &str, metrics: &str) -> Self {
        Self::start_with(s, identity, metrics, &s.kubeconfig)
    }

    /// With its own kubeconfig (a proxy in front of the API server, say).
    fn start_with(s: &Setup, identity: &str, metrics: &str, kubeconfig: &std::path::Path) -> Self {
        let log =
            std::env::temp_dir().join(format!("kube-lvs-operator.{}.{identity}.log", s.name()));
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_kube-lvs-operator"));
        cmd.env("KUBECONFIG", kubeconfig)
            .env("RUST_LOG", "info,kube_client=warn,kube_runtime=warn")
            .args([
                "--identity",
                identity,
                "--lease-namespace",
                s.name(),
                "--lease-duration-seconds",
                "4",
                "--metrics-address",
                metrics,
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(file);
        Self {
            child: spawn_tied(cmd).unwrap(),
            log,
        }
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM: the operator releases its Lease and exits.
    fn stop(&mut self) {
        #[allow(unsafe_code)]
        // SAFETY: kill(2) on our own child's pid.
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.kill();
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_file(&self.log);
    }
}

#[test]
#[ignore = "needs the test control plane (Go toolchain); scripts/test runs it"]
fn virtual_services_get_vips_conditions_roll_ups_and_release_on_delete() {
    let _turn = serial();
    let s = Setup::new("op-vs", "198.51.100.0/29");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let op = Operator::start(&s, "op-a", &format!("127.0.0.1:{port}"));
    s.apply(&virtual_service("a", None, None));
    s.apply(
        "apiVersion: kubelvs.io/v1alpha1
kind: RealServer
metadata: {name: a-1, labels: {app: a}}
spec: {address: 10.0.0.1}
",
    );
    let vip = eventually(WAIT, "a's VIP", || s.vip("a"));
    assert_eq!(vip, "198.51.100.1", "{}", op.log());
    let a = s.json(&["get", "lvs", "a"]).unwrap();
    assert_eq!(
        a["status"]["observedGeneration"],
        a["metadata"]["generation"]
    );
    eventually(WAIT, "the finalizer", || {
        let a = s.json(&["get", "lvs", "a"])?;
        a["metadata"]["finalizers"]
            .as_array()?
            .iter()
            .any(|f| f == "kubelvs.io/vip-release")
            .then_some(())
    });
    assert_eq!(s.condition("a", "Accepted").unwrap().0, "True");
    assert_eq!(s.condition("a", "VipAllocated").unwrap().1, "Allocated");
    assert_eq!(s.condition("a", "Programmed").unwrap().1, "NoDirector");

    // A requested VIP already allocated to another service, and one outside its pool.
    s.apply(&virtual_service("b", Some(&vip), None));
    s.apply(&virtual_service("c", Some("203.0.113.99"), Some(&s.pool)));
    let b = eventually(WAIT, "b's condition", || {
        s.condition("b", "VipAllocated").filter(|c| c.0 == "False")
    });
    assert_eq!(b.1, "VipTaken");
    assert_eq!(
        b.2,
        format!(
            "spec.vip: {vip} is already allocated to VirtualService {}/a",
            s.name()
        )
    );
    let c = eventually(WAIT, "c's condition", || {
        s.condition("c", "VipAllocated").filter(|c| c.0 == "False")
    });
    assert_eq!(
        (c.1.as_str(), c.2.as_str()),
        (
            "VipOutsidePool",
            format!("spec.vip: 203.0.113.99 is not in AddressPool {}", s.pool).as_str()
        )
    );
    // Refused means not granted: no status.vip, so no agent programs b or c (agents
    // program only the grant). a keeps its VIP.
    assert_eq!(s.vip("b"), None);
    assert_eq!(s.vip("c"), None);
    assert_eq!(s.vip("a").as_deref(), Some(vip.as_str()));
    // A node's own address is never a VIP, even inside the pool: it would put the
    // node's own ports (kubelet, API server) behind a tenant's real servers.
    let node = format!("{}-node", s.name());
    s.cluster
        .kubectl_stdin(
            &["apply", "-f", "-"],
            &kubelvs_test_cluster::node_object(&node, "198.51.100.6".parse().unwrap(), false),
        )
        .unwrap();
    s.apply(&virtual_service("at-node", Some("198.51.100.6"), None));
    let n = eventually(WAIT, "at-node condition", || {
        s.condition("at-node", "VipAllocated")
            .filter(|c| c.0 == "False")
    });
    assert_eq!(n.1, "VipReserved", "{n:?}");
    assert!(n.2.contains("a node's own address"), "{n:?}");
    assert_eq!(s.vip("at-node"), None);
    s.cluster
        .kubectl_ok(&["delete", "lvs", "at-node", "-n", s.name()])
        .unwrap();
    s.cluster.kubectl_ok(&["delete", "node", &node]).unwrap();
    let pool = eventually(WAIT, "pool status", || {
        let p: serde_json::Value = serde_json::from_str(
            &s.cluster
                .kubectl_ok(&["get", "addresspool", &s.pool, "-o", "json"])
                .ok()?,
        )
        .ok()?;
        (p["status"]["allocated"] == 1).then_some(p)
    });
    assert_eq!(
        (
            pool["status"]["total"].as_u64(),
            pool["status"]["available"].as_u64()
        ),
        (Some(6), Some(5))
    );

    // Two agents report, each under its own field manager; the operator rolls them up
    // and leaves both entries alone. Their nodes exist.
    for node in ["n1", "n2"] {
        s.cluster
            .kubectl_stdin(
                &["apply", "-f", "-"],
                &kubelvs_test_cluster::node_object(node, "192.0.2.251".parse().unwrap(), true),
            )
            .unwrap();
    }
    let report = |node: &str, healthy: u32| {
        s.cluster
            .apply_status_as_agent(
                node,
                s.name(),
                "VirtualService",
                "a",
                &format!(
                    "{{directors: [{{node: {node}, programmed: true, dataplane: ipvs, healthyRealServers: {healthy}}}]}}"
                ),
            )
            .unwrap();
    };
    report("n1", 1);
    report("n2", 0);
    let ready = eventually(
        WAIT,
        "Ready False with one director seeing none healthy",
        || {
            s.condition("a", "Ready")
                .filter(|c| c.1 == "NoHealthyRealServer")
        },
    );
    assert_eq!(ready.0, "False");
    assert_eq!(
        s.condition("a", "Degraded").unwrap().1,
        "RealServersUnhealthy"
    );
    report("n2", 1);
    eventually(WAIT, "Ready once both see the real server", || {
        s.condition("a", "Ready").filter(|c| c.0 == "True")
    });
    let a = s.json(&["get", "lvs", "a"]).unwrap();
    assert_eq!(a["status"]["realServers"], "1/1");
    let nodes: Vec<&str> = a["status"]["directors"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|d| d["node"].as_str())
        .collect();
    assert_eq!(nodes, ["n1", "n2"], "the agents' entries stay theirs");
    // n2's node is deleted: its agent cannot remove its entry, the operator does, and
    // the roll-up no longer counts it.
    s.cluster.kubectl_ok(&["delete", "node", "n2"]).unwrap();
    eventually(WAIT, "n2's entry removed", || {
        let a = s.json(&["get", "lvs", "a"])?;
        let nodes: Vec<String> = a["status"]["directors"]
            .as_array()?
            .iter()
            .filter_map(|d| d["node"].as_str().map(String::from))
            .collect();
        (nodes == ["n1"]).then_some(())
    });
    report("n2-gone", 0);
    eventually(
        WAIT,
        "an entry of a node that never existed removed too",
        || {
            let a = s.json(&["get", "lvs", "a"])?;
            (a["status"]["directors"].as_array()?.len() == 1).then_some(())
        },
    );
    eventually(WAIT, "Ready from n1 alone", || {
        s.condition("a", "Ready").filter(|c| c.0 == "True")
    });
    let table = s
        .cluster
        .kubectl_ok(&["get", "lvs", "a", "-n", s.name()])
        .unwrap();
    let row: Vec<&str> = table.lines().nth(1).unwrap().split_whitespace().collect();
    assert_eq!(&row[..2], ["a", vip.as_str()], "{table}");
    assert!(row.contains(&"1/1") && row.contains(&"True"), "{table}");
    s.cluster.kubectl_ok(&["delete", "node", "n1"]).unwrap();

    // Deleting a releases its VIP through the finalizer; b, which asked for it, gets it.
    s.cluster
        .kubectl_ok(&["delete", "lvs", "a", "-n", s.name(), "--timeout=30s"])
        .unwrap();
    eventually(WAIT, "b takes the released VIP", || {
        (s.vip("b").as_deref() == Some(vip.as_str())).then_some(())
    });
    assert_eq!(s.condition("b", "VipAllocated").unwrap().1, "Requested");
    let events = s
        .cluster
        .kubectl_ok(&["get", "events", "-n", s.name(), "-o", "json"])
        .unwrap();
    let metrics = eventually(WAIT, "/metrics", || scrape(port, "/metrics"));
    let pool_line = format!(
        "kubelvs_operator_pool_addresses{{pool=\"{}\",state=\"allocated\"}} 1",
        s.pool
    );
    for want in [
        "kubelvs_operator_leader 1",
        "kubelvs_operator_reconciles_total{controller=\"virtualservice\",result=\"ok\"}",
        "kubelvs_operator_writes_total{kind=\"VirtualService\",write=\"finalizer\"}",
        "kubelvs_operator_writes_total{kind=\"AddressPool\",write=\"status\"}",
        pool_line.as_str(),
    ] {
        assert!(metrics.contains(want), "{want} not in\n{metrics}");
    }
    assert_eq!(
        scrape(port, "/readyz").as_deref(),
        Some("ok\n"),
        "{}",
        op.log()
    );
    for reason in ["VipAllocated", "VipTaken", "VipOutsidePool", "VipReleased"] {
        assert!(
            events.contains(&format!("\"reason\": \"{reason}\"")),
            "no {reason} Event: {events}"
        );
    }
}

/// The body of `GET path` on the operator's metrics port.
fn scrape(port: u16, path: &str) -> Option<String> {
    use std::io::{Read, Write};
    let mut c = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    write!(c, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").ok()?;
    let mut text = String::new();
    c.read_to_string(&mut text).ok()?;
    let (head, body) = text.split_once("\r\n\r\n")?;
    head.starts_with("HTTP/1.1 200").then(|| body.to_owned())
}

const ENDPOINTS: &str = "[
  {addresses: [10.1.0.1], nodeName: n1, conditions: {ready: true}},
  {addresses: [10.1.0.2], nodeName: n2, conditions: {ready: true}}]";

fn load_balancer(name: &str, class: Option<&str>) -> String {
    let type_and_class = match class {
        Some(c) => format!("type: LoadBalancer\n  loadBalancerClass: {c}"),
        None => "type: LoadBalancer".into(),
    };
    format!(
        "apiVersion: v1
kind: Service
metadata:
  name: {name}
  annotations: {{kubelvs.io/scheduler: wlc, kubelvs.io/health-check: tcp}}
spec:
  {type_and_class}
  sessionAffinity: ClientIP
  ports: [{{name: http, port: 80, targetPort: 8080}}]
"
    )
}

fn endpoint_slice(service: &str, endpoints: &str) -> String {
    format!(
        "apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: {service}-manual
  labels: {{kubernetes.io/service-name: {service}, endpointslice.kubernetes.io/managed-by: kubelvs-tests}}
addressType: IPv4
ports: [{{name: http, port: 8080, protocol: TCP}}]
endpoints: {endpoints}
"
    )
}

/// `name -> (drain, node)` of the RealServers serving `service`.
fn real_servers(s: &Setup, service: &str) -> Vec<(String, bool)> {
    let list = s
        .json(&[
            "get",
            "lvsrs",
            "-l",
            &format!("kubelvs.io/service-name={service}"),
        ])
        .unwrap();
    let mut out: Vec<(String, bool)> = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["metadata"]["name"].as_str().unwrap().to_owned(),
                r["spec"]["drain"].as_bool().unwrap_or(false),
            )
        })
        .collect();
    out.sort();
    out
}

#[test]
#[ignore = "needs the test control plane (Go toolchain); scripts/test runs it"]
fn load_balancer_services_follow_their_endpoint_slices_and_are_cleaned_up_without_the_operator() {
    let _turn = serial();
    let s = Setup::new("op-svc", "198.51.100.8/29");
    let mut op = s.operator("op-a");
    let created = Instant::now();
    s.apply(&load_balancer("web", Some("kubelvs.io/lvs")));
    s.apply(&endpoint_slice("web", ENDPOINTS));
    // Services of another class, and of no class, are never touched.
    s.apply(&load_balancer("theirs", Some("example.com/other")));
    s.apply(&load_balancer("plain", None));

    let ingress = eventually(WAIT, "status.loadBalancer.ingress", || {
        let svc = s.json(&["get", "service", "web"])?;
        let i = svc["status"]["loadBalancer"]["ingress"]
            .as_array()?
            .first()?
            .clone();
        Some(i)
    });
    let to_ingress = created.elapsed();
    eprintln!(
        "Service created -> status.loadBalancer.ingress: {:.2} s",
        to_ingress.as_secs_f64()
    );
    assert_eq!(ingress["ip"], "198.51.100.9", "{}", op.log());
    assert_eq!(ingress["ipMode"], "Proxy");
    let vs = s.json(&["get", "lvs", "web"]).unwrap();
    assert_eq!(vs["spec"]["scheduler"], "wlc");
    assert_eq!(vs["spec"]["ports"][0]["targetPort"], 8080);
    assert_eq!(vs["spec"]["persistence"]["timeoutSeconds"], 10800);
    assert_eq!(vs["spec"]["healthCheck"]["type"], "tcp");
    assert_eq!(vs["metadata"]["ownerReferences"][0]["kind"], "Service");
    assert_eq!(
        real_servers(&s, "web"),
        [
            ("web-10.1.0.1".to_string(), false),
            ("web-10.1.0.2".to_string(), false)
        ]
    );
    let accepted = s.json(&["get", "service", "web"]).unwrap()["status"]["conditions"][0].clone();
    assert_eq!(
        (accepted["type"].as_str(), accepted["status"].as_str()),
        (Some("kubelvs.io/Accepted"), Some("True"))
    );

    // Scale up, one endpoint terminating, one gone.
    s.apply(&endpoint_slice(
        "web",
        "[
  {addresses: [10.1.0.2], nodeName: n2, conditions: {ready: false, serving: true, terminating: true}},
  {addresses: [10.1.0.3], nodeName: n1, conditions: {ready: true}},
  {addresses: [10.1.0.4], nodeName: n2, conditions: {ready: true}}]",
    ));
    eventually(WAIT, "RealServers follow the EndpointSlice", || {
        (real_servers(&s, "web")
            == [
                ("web-10.1.0.2".to_string(), true),
                ("web-10.1.0.3".to_string(), false),
                ("web-10.1.0.4".to_string(), false),
            ])
        .then_some(())
    });

    // A bad annotation is reported on the Service and loses nothing.
    s.cluster
        .kubectl_ok(&[
            "annotate",
            "service",
            "web",
            "-n",
            s.name(),
            "kubelvs.io/scheduler=fastest",
            "--overwrite",
        ])
        .unwrap();
    let refused = eventually(WAIT, "the Service's Accepted condition", || {
        let c = s.json(&["get", "service", "web"])?["status"]["conditions"][0].clone();
        (c["status"] == "False").then_some(c)
    });
    assert!(
        refused["message"]
            .as_str()
            .unwrap()
            .starts_with("metadata.annotations[kubelvs.io/scheduler]: \"fastest\" is not one of"),
        "{refused}"
    );
    assert_eq!(
        s.json(&["get", "lvs", "web"]).unwrap()["spec"]["scheduler"],
        "wlc"
    );
    assert_eq!(real_servers(&s, "web").len(), 3);

    for other in ["theirs", "plain"] {
        let svc = s.json(&["get", "service", other]).unwrap();
        assert!(
            svc["status"]["loadBalancer"].get("ingress").is_none(),
            "{svc}"
        );
        assert!(
            s.json(&["get", "lvs", other]).is_none(),
            "{other} got a VirtualService"
        );
    }

    // With the operator stopped, deleting the Service still removes what it owned.
    op.kill();
    s.cluster
        .kubectl_ok(&["delete", "service", "web", "-n", s.name()])
        .unwrap();
    eventually(
        Duration::from_secs(60),
        "the garbage collector removes the owned objects",
        || {
            (s.json(&["get", "lvs", "web"]).is_none() && real_servers(&s, "web").is_empty())
                .then_some(())
        },
    );
}

fn vips(s: &Setup, names: &[String]) -> Vec<String> {
    names.iter().filter_map(|n| s.vip(n)).collect()
}

fn assert_unique(v: &[String]) {
    let set: std::collections::BTreeSet<&String> = v.iter().collect();
    assert_eq!(set.len(), v.len(), "a VIP was allocated twice: {v:?}");
}

#[test]
#[ignore = "needs the test control plane (Go toolchain); scripts/test runs it"]
fn a_standby_takes_over_when_the_leader_dies_and_nothing_is_allocated_twice() {
    let _turn = serial();
    let s = Setup::new("op-ha", "198.51.100.16/28");
    let mut a = s.operator("op-a");
    let mut b = s.operator("op-b");
    let first = eventually(WAIT, "a leader", || s.lease_holder());
    let names: Vec<String> = (0..10).map(|i| format!("vs{i}")).collect();
    for n in &names[..5] {
        s.apply(&virtual_service(n, None, None));
    }
    eventually(WAIT, "five VIPs", || {
        (vips(&s, &names[..5]).len() == 5).then_some(())
    });
    let killed = Instant::now();
    let (leader, standby) = if first == "op-a" {
        (&mut a, &mut b)
    } else {
        (&mut b, &mut a)
    };
    leader.kill();
    for n in &names[5..] {
        s.apply(&virtual_service(n, None, None));
    }
    let second = eventually(WAIT, "a new leader", || {
        s.lease_holder().filter(|h| *h != first)
    });
    eventually(WAIT, "ten VIPs", || {
        (vips(&s, &names).len() == 10).then_some(())
    });
    let took = killed.elapsed();
    eprintln!(
        "leader {first} killed -> {second} allocated the next five: {:.1} s",
        took.as_secs_f64()
    );
    assert!(
        took < Duration::from_secs(4 + 10),
        "lease 4 s: {took:?}\n{}",
        standby.log()
    );
    assert_unique(&vips(&s, &names));
}

#[test]
#[ignore = "needs the test control plane (Go toolchain); scripts/test runs it"]
fn restarting_the_operator_ten_times_while_services_are_created_keeps_every_vip_unique() {
    let _turn = serial();
    let s = Setup::new("op-restart", "198.51.100.32/27");
    // Half LoadBalancer Services (each becomes a VirtualService), half VirtualServices.
    let names: Vec<String> = (0..24).map(|i| format!("vs{i}")).collect();
    std::thread::scope(|scope| {
        let creator = scope.spawn(|| {
            // Spread over most of the restarts.
            for (i, n) in names.iter().enumerate() {
                if i % 2 == 0 {
                    s.apply(&load_balancer(n, Some("kubelvs.io/lvs")));
                } else {
                    s.apply(&virtual_service(n, None, None));
                }
                std::thread::sleep(Duration::from_millis(250));
            }
        });
        for round in 0..10 {
            let mut op = s.operator("op-a");
            // Long enough to lead and write some, short enough to die mid-pass.
            std::thread::sleep(Duration::from_millis(700 + 150 * (round % 4)));
            if round % 2 == 0 {
                op.kill();
            } else {
                op.stop();
            }
        }
        creator.join().unwrap();
    });
    let op = s.operator("op-a");
    eventually(Duration::from_secs(60), "every VIP", || {
        (vips(&s, &names).len() == names.len()).then_some(())
    });
    assert_unique(&vips(&s, &names));
    // Each Service shows its VirtualService's VIP.
    for n in names.iter().step_by(2) {
        let vip = s.vip(n).unwrap();
        eventually(WAIT, "the Service's ingress", || {
            let svc = s.json(&["get", "service", n])?;
            (svc["status"]["loadBalancer"]["ingress"][0]["ip"] == vip.as_str()).then_some(())
        });
    }
    drop(op);
}

#[test]
#[ignore = "needs the test control plane (Go toolchain); scripts/test runs it"]
fn without_the_crds_the_operator_says_so_and_exits_non_zero() {
    let _turn = serial();
    // A control plane of its own: the shared one has the CRDs.
    let cp = ControlPlane::start(ControlPlaneOptions::default()).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_kube-lvs-operator"))
        .env("KUBECONFIG", cp.kubeconfig())
        .args(["--metrics-address", "127.0.0.1:0"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("the CRD virtualservices.kubelvs.io is not installed: install the chart"),
        "{stderr}"
    );
}

/// A TCP relay in front of the API server whose connections can be frozen: bytes stop
/// moving both ways while the sockets stay open, as a half-open connection or a
/// partition of one replica looks.
struct FreezableProxy {
    addr: std::net::SocketAddr,
    frozen: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl FreezableProxy {
    fn start(upstream: std::net::SocketAddr) -> Self {
        use std::sync::atomic::Ordering;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let frozen = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = frozen.clone();
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                let Ok(server) = std::net::TcpStream::connect(upstream) else {
                    continue;
                };
                for (mut from, mut to) in [
                    (client.try_clone().unwrap(), server.try_clone().unwrap()),
                    (server, client),
                ] {
                    let flag = flag.clone();
                    std::thread::spawn(move || {
                        use std::io::{Read, Write};
                        let mut buf = [0u8; 16384];
                        loop {
                            let Ok(n) = from.read(&mut buf) else { return };
                            if n == 0 {
                                return;
                            }
                            while flag.load(Ordering::Relaxed) {
                                std::thread::sleep(Duration::from_millis(20));
                            }
                            if to.write_all(&buf[..n]).is_err() {
                                return;
                            }
                        }
                    });
                }
            }
        });
        Self { addr, frozen }
    }

    fn freeze(&self) {
        self.frozen
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

/// A leader whose connection to the API server hangs (the API server itself fine, so
/// a standby takes the Lease over once it expires) must have stopped leading, and
/// writing, before that: every call of its renewal is bounded by the renew deadline.
/// Without the bound it kept running, its controllers live, while the standby led.
#[test]
#[ignore = "needs the test control plane (Go toolchain); scripts/test runs it"]
fn a_leader_cut_off_from_the_api_server_stops_before_a_standby_leads() {
    let _turn = serial();
    let s = Setup::new("op-cut", "198.51.100.32/28");
    // The leader talks to the API server through the proxy; the standby directly.
    let text = std::fs::read_to_string(&s.kubeconfig).unwrap();
    let server = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("server: "))
        .unwrap()
        .to_owned();
    let upstream: std::net::SocketAddr = server.trim_start_matches("https://").parse().unwrap();
    let proxy = FreezableProxy::start(upstream);
    let proxied = s.kubeconfig.with_extension("proxied");
    std::fs::write(
        &proxied,
        text.replace(&server, &format!("https://{}", proxy.addr)),
    )
    .unwrap();
    let mut leader = Operator::start_with(&s, "op-cut-a", "127.0.0.1:0", &proxied);
    eventually(WAIT, "op-cut-a leading", || {
        (s.lease_holder()? == "op-cut-a").then_some(())
    });
    let mut standby = s.operator("op-cut-b");
    s.apply(&virtual_service("before", None, None));
    eventually(WAIT, "a VIP from the leader", || s.vip("before"));

    proxy.freeze();
    let frozen = Instant::now();
    eventually(Duration::from_secs(30), "the standby leading", || {
        (s.lease_holder()? == "op-cut-b").then_some(())
    });
    let took_over = frozen.elapsed();
    // The leader gave up at 2/3 of its 4 s Lease, before the Lease could expire.
    let exited = leader.child.try_wait().unwrap();
    assert!(
        exited.is_some(),
        "the cut-off leader still runs while the standby leads ({took_over:?} after the cut)\n{}",
        leader.log()
    );
    assert!(
        leader.log().contains("not renewed within"),
        "{}",
        leader.log()
    );
    s.apply(&virtual_service("after", None, None));
    eventually(WAIT, "a VIP from the new leader", || s.vip("after"));
    eprintln!("leader cut off -> standby leading after {took_over:?}");
    standby.stop();
    leader.kill();
}
