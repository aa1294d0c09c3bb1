//! A node that runs Pods, on this machine: containerd (Debian's, with runc and the
//! CNI plugins), kubelet, kube-proxy (nftables mode) and kube-scheduler, built from the
//! same Go modules as the control plane, against a [`ControlPlane`] started with
//! `workloads`. Pods get addresses on a bridge of the machine from the CNI bridge
//! plugin; the API server listens on the bridge's gateway address, so Pods reach it
//! through the `kubernetes` Service as they would in any cluster.
//!
//! Everything lives in the node's own directory (containerd's root, kubelet's root,
//! CNI state), and [`Node`]'s drop takes down what the processes left on the host:
//! Pods' network namespaces and mounts, the cgroups kubelet made, kube-proxy's nft
//! tables and the bridge. [`HostState`] is what a test compares before and after.
//! One node per machine at a time: kubelet and kube-proxy change host-wide state.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::{binaries, process, spawn_logged, unique_dir, ControlPlane, Error};

/// Where Debian's containernetworking-plugins package puts the CNI plugins.
const CNI_BIN: &str = "/usr/lib/cni";
/// The CNI network's name (containerd caches results under it in /var/lib/cni).
const CNI_NETWORK: &str = "kubelvs-test";
/// The cgroup kubelet puts Pods under (cgroupfs driver, one per controller).
const KUBEPODS: &str = "kubepods";
/// Kernel settings kubelet, kube-proxy and the CNI bridge plugin change on the host
/// (kubelet's kernel tunables, conntrack timeouts, forwarding): read before, written
/// back after.
const SYSCTLS: &[&str] = &[
    "kernel/panic",
    "kernel/panic_on_oops",
    "kernel/keys/root_maxkeys",
    "kernel/keys/root_maxbytes",
    "vm/overcommit_memory",
    "vm/panic_on_oom",
    "net/ipv4/ip_forward",
    "net/netfilter/nf_conntrack_tcp_timeout_established",
    "net/netfilter/nf_conntrack_tcp_timeout_close_wait",
];

/// How to start a [`Node`].
#[derive(Debug, Clone)]
pub struct NodeOptions {
    /// The Node object's name.
    pub name: String,
    /// The bridge Pods are attached to (made by [`NodeNetwork::create`]).
    pub bridge: String,
    /// The node's address on the bridge: the Pods' gateway, the API server's address.
    pub address: Ipv4Addr,
    /// The Pods' subnet on the bridge, `address` its gateway.
    pub pod_subnet: String,
    /// `key=value` labels kubelet registers the node with.
    pub labels: Vec<String>,
}

/// The bridge a node's Pods live on, with the node's address: made before the control
/// plane, which listens on that address. Deleted on drop.
#[derive(Debug)]
pub struct NodeNetwork {
    bridge: String,
}

impl NodeNetwork {
    /// A bridge `name` with `addresses` (`a.b.c.d/len`), up. Its MAC address is set,
    /// not inherited: a bridge otherwise takes the lowest of its ports', which changes
    /// as Pods come and go, and every neighbour's ARP entry for the node goes stale.
    pub fn create(name: &str, addresses: &[&str]) -> Result<Self, Error> {
        let _ = quiet(Command::new("ip").args(["link", "del", name]));
        ip(&[
            "link",
            "add",
            name,
            "address",
            "02:6b:6c:76:73:01",
            "type",
            "bridge",
        ])?;
        let net = Self {
            bridge: name.to_owned(),
        };
        for a in addresses {
            ip(&["addr", "add", a, "dev", name])?;
        }
        ip(&["link", "set", name, "up"])?;
        Ok(net)
    }

    pub fn bridge(&self) -> &str {
        &self.bridge
    }
}

impl Drop for NodeNetwork {
    fn drop(&mut self) {
        let _ = quiet(Command::new("ip").args(["link", "del", &self.bridge]));
    }
}

/// containerd, kubelet, kube-proxy and kube-scheduler of one node, as child processes.
#[derive(Debug)]
pub struct Node {
    name: String,
    dir: PathBuf,
    kubeconfig: PathBuf,
    containerd_socket: PathBuf,
    children: Vec<(&'static str, Child)>,
    ready_after: Duration,
    /// The host before the node started: what its drop restores.
    host_before: HostState,
}

impl Node {
    /// Starts containerd, imports `images` (docker archives), then kubelet, kube-proxy
    /// and kube-scheduler, and waits until the Node is Ready.
    pub fn start(cp: &ControlPlane, opts: NodeOptions, images: &[PathBuf]) -> Result<Self, Error> {
        let bin = binaries()?;
        let t0 = Instant::now();
        // kube-proxy flushes the host's IPVS table at start, whatever its mode: never on
        // a machine whose IPVS serves something.
        let ipvs = std::fs::read_to_string("/proc/net/ip_vs").unwrap_or_default();
        if ipvs.lines().any(|l| {
            l.starts_with("TCP")
                || l.starts_with("UDP")
                || l.starts_with("SCTP")
                || l.starts_with("FWM")
        }) {
            return Err(Error::Tool {
                tool: "node".into(),
                message: "this machine's IPVS table has virtual services, and kube-proxy flushes it at start: not starting a node here".into(),
            });
        }
        let host_before = HostState::read();
        let dir = unique_dir("kubelvs-node")?;
        process::remove_at_exit(dir.clone());
        let mut node = Self {
            name: opts.name.clone(),
            containerd_socket: dir.join("containerd.sock"),
            kubeconfig: cp.kubeconfig().to_owned(),
            dir: dir.clone(),
            children: Vec::new(),
            ready_after: Duration::ZERO,
            host_before,
        };
        let p = |p: &Path| p.display().to_string();

        std::fs::create_dir_all(dir.join("cni")).map_err(|e| Error::io(&dir, e))?;
        write(
            &dir.join("cni/10-kubelvs-test.conflist"),
            &cni_config(&opts, &dir.join("cni-ipam")),
        )?;
        write(&dir.join("containerd.toml"), &containerd_config(&dir))?;
        let containerd = spawn_logged(
            None,
            Path::new("containerd"),
            &["--config".into(), p(&dir.join("containerd.toml"))],
            &dir.join("containerd.log"),
        )?;
        node.children.push(("containerd", containerd));
        node.wait("containerd", &dir.join("containerd.log"), || {
            node.ctr()
                .arg("version")
                .output()
                .is_ok_and(|o| o.status.success())
        })?;
        for image in images {
            crate::run(node.ctr().args(["images", "import"]).arg(image), None)?;
        }

        write(
            &dir.join("kubelet.yaml"),
            &kubelet_config(&node, opts.address),
        )?;
        let mut kubelet_args = vec![
            format!("--config={}", p(&dir.join("kubelet.yaml"))),
            format!("--kubeconfig={}", p(&node.kubeconfig)),
            format!("--root-dir={}", p(&dir.join("kubelet"))),
            format!("--cert-dir={}", p(&dir.join("kubelet-pki"))),
            format!("--hostname-override={}", opts.name),
            format!("--node-ip={}", opts.address),
            "--v=1".into(),
        ];
        if !opts.labels.is_empty() {
            kubelet_args.push(format!("--node-labels={}", opts.labels.join(",")));
        }
        let kubelet = spawn_logged(
            None,
            &bin.join("kubelet"),
            &kubelet_args,
            &dir.join("kubelet.log"),
        )?;
        node.children.push(("kubelet", kubelet));

        let proxy = spawn_logged(
            None,
            &bin.join("kube-proxy"),
            &[
                format!("--kubeconfig={}", p(&node.kubeconfig)),
                "--proxy-mode=nftables".into(),
                format!("--hostname-override={}", opts.name),
                format!("--cluster-cidr={}", opts.pod_subnet),
                // Leave the machine's conntrack table size and timeouts alone.
                "--conntrack-max-per-core=0".into(),
                "--conntrack-tcp-timeout-established=0".into(),
                "--conntrack-tcp-timeout-close-wait=0".into(),
                "--healthz-bind-address=127.0.0.1:10256".into(),
                "--metrics-bind-address=127.0.0.1:10249".into(),
            ],
            &dir.join("kube-proxy.log"),
        )?;
        node.children.push(("kube-proxy", proxy));
        let scheduler = spawn_logged(
            None,
            &bin.join("kube-scheduler"),
            &[
                format!("--kubeconfig={}", p(&node.kubeconfig)),
                "--leader-elect=false".into(),
                "--secure-port=0".into(),
                "--v=2".into(),
            ],
            &dir.join("kube-scheduler.log"),
        )?;
        node.children.push(("kube-scheduler", scheduler));

        let kubectl = bin.join("kubectl");
        let kubeconfig = node.kubeconfig.clone();
        let name = opts.name.clone();
        node.wait("kubelet", &dir.join("kubelet.log"), || {
            Command::new(&kubectl)
                .arg("--kubeconfig")
                .arg(&kubeconfig)
                .args([
                    "get",
                    "node",
                    &name,
                    "-o",
                    "jsonpath={.status.conditions[?(@.type==\"Ready\")].status}",
                ])
                .output()
                .is_ok_and(|o| o.stdout == b"True")
        })?;
        node.ready_after = t0.elapsed();
        node.check_running()?;
        Ok(node)
    }

    /// `ctr` in containerd's `k8s.io` namespace (kubelet's images and containers).
    pub fn ctr(&self) -> Command {
        let mut c = Command::new("ctr");
        c.arg("--address")
            .arg(&self.containerd_socket)
            .args(["--namespace", "k8s.io"]);
        c
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Time from start to the Node Ready (containerd, images, kubelet, CNI).
    pub fn ready_after(&self) -> Duration {
        self.ready_after
    }

    /// Where the processes' logs and state live.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn wait(&self, component: &str, log: &Path, ready: impl Fn() -> bool) -> Result<(), Error> {
        let deadline = Instant::now() + Duration::from_secs(120);
        while !ready() {
            if Instant::now() > deadline {
                return Err(Error::NotReady {
                    component: component.to_owned(),
                    log_tail: crate::log_tail(log),
                });
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        Ok(())
    }

    /// An error naming the first of the node's processes that has exited, if any.
    pub fn check_running(&mut self) -> Result<(), Error> {
        for (name, c) in &mut self.children {
            if c.try_wait().ok().flatten().is_some() {
                return Err(Error::NotReady {
                    component: format!("{name} (exited)"),
                    log_tail: crate::log_tail(&self.dir.join(format!("{name}.log"))),
                });
            }
        }
        Ok(())
    }

    /// Stops every container kubelet left (after kubelet itself), through containerd.
    fn remove_containers(&self) {
        let list = |what: &str| -> Vec<String> {
            self.ctr()
                .args([what, "list", "-q"])
                .output()
                .map(|o| {
                    String::from_utf8_lossy(&o.stdout)
                        .lines()
                        .map(str::to_owned)
                        .collect()
                })
                .unwrap_or_default()
        };
        for task in list("tasks") {
            let _ = quiet(
                self.ctr()
                    .args(["tasks", "kill", "--signal", "SIGKILL", &task]),
            );
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        for task in list("tasks") {
            while Instant::now() < deadline
                && !quiet(self.ctr().args(["tasks", "delete", &task])).unwrap_or(false)
            {
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        for container in list("containers") {
            let _ = quiet(self.ctr().args(["containers", "delete", &container]));
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        // kubelet first, so it restarts nothing; containerd last.
        let mut containerd = None;
        while let Some((name, mut c)) = self.children.pop() {
            if name == "containerd" {
                containerd = Some(c);
                continue;
            }
            process::stop(&mut c, Duration::from_secs(5));
        }
        self.remove_containers();
        if let Some(mut c) = containerd {
            process::stop(&mut c, Duration::from_secs(5));
        }
        cleanup_host(&self.dir, &self.host_before);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// What a node may leave on the host, compared before and after by the tests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostState {
    /// `nft list tables`.
    pub nft_tables: Vec<String>,
    /// Entries of /run/netns.
    pub netns: Vec<String>,
    /// Mount points.
    pub mounts: Vec<String>,
    /// kubelet's cgroups, one per controller hierarchy.
    pub kubepods_cgroups: Vec<String>,
    /// Network interfaces.
    pub links: Vec<String>,
    /// The kernel settings of [`SYSCTLS`] that exist here, with their values.
    pub sysctls: Vec<(String, String)>,
}

impl HostState {
    pub fn read() -> Self {
        let lines = |out: std::io::Result<std::process::Output>| -> Vec<String> {
            let mut v: Vec<String> = out
                .map(|o| {
                    String::from_utf8_lossy(&o.stdout)
                        .lines()
                        .map(str::to_owned)
                        .collect()
                })
                .unwrap_or_default();
            v.sort();
            v
        };
        let mut netns: Vec<String> = std::fs::read_dir("/run/netns")
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        netns.sort();
        let mut mounts: Vec<String> = std::fs::read_to_string("/proc/self/mounts")
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split(' ').nth(1).map(str::to_owned))
            .collect();
        mounts.sort();
        Self {
            nft_tables: lines(Command::new("nft").args(["list", "tables"]).output()),
            netns,
            mounts,
            kubepods_cgroups: kubepods_cgroups()
                .iter()
                .map(|p| p.display().to_string())
                .collect(),
            links: lines(
                Command::new("sh")
                    .args(["-c", "ip -o link show | cut -d: -f2"])
                    .output(),
            ),
            sysctls: SYSCTLS
                .iter()
                .filter_map(|k| {
                    let v = std::fs::read_to_string(Path::new("/proc/sys").join(k)).ok()?;
                    Some(((*k).to_owned(), v.trim().to_owned()))
                })
                .collect(),
        }
    }
}

/// Every `kubepods` cgroup directory that exists (v1 hierarchies, v2 root).
fn kubepods_cgroups() -> Vec<PathBuf> {
    let Ok(hierarchies) = std::fs::read_dir("/sys/fs/cgroup") else {
        return Vec::new();
    };
    // cgroup v1: one per controller hierarchy; v2: one at the unified root.
    let mut out: Vec<PathBuf> = hierarchies
        .flatten()
        .map(|h| h.path().join(KUBEPODS))
        .chain([Path::new("/sys/fs/cgroup").join(KUBEPODS)])
        .filter(|p| p.is_dir())
        .collect();
    out.sort();
    out
}

/// Removes a cgroup tree, leaves first (a cgroup directory goes only when empty).
fn remove_cgroup_tree(dir: &Path) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                remove_cgroup_tree(&e.path());
            }
        }
    }
    let _ = std::fs::remove_dir(dir);
}

/// What the node's processes leave behind once stopped: mounts under its directory
/// and the Pods' network namespaces, kubelet's cgroups, the nft tables kube-proxy and
/// kubelet made (theirs and iptables' own), and containerd's cached CNI results.
fn cleanup_host(dir: &Path, before: &HostState) {
    let prefix = dir.display().to_string();
    // Only what appeared with this node: a runtime already on the host keeps its own.
    let now = HostState::read();
    let appeared = |now: &[String], before: &[String]| -> Vec<String> {
        now.iter()
            .filter(|x| !before.contains(x))
            .cloned()
            .collect()
    };
    let mut mounts: Vec<String> = now
        .mounts
        .iter()
        .filter(|m| {
            m.starts_with(&prefix)
                || (m.starts_with("/run/netns/cni-") && !before.mounts.contains(m))
        })
        .cloned()
        .collect();
    // Deepest first.
    mounts.sort_by_key(|m| std::cmp::Reverse(m.len()));
    for m in &mounts {
        let _ = quiet(Command::new("umount").args(["-l", m]));
    }
    for name in appeared(&now.netns, &before.netns) {
        if name.starts_with("cni-") {
            let _ = std::fs::remove_file(Path::new("/run/netns").join(name));
        }
    }
    for cg in appeared(&now.kubepods_cgroups, &before.kubepods_cgroups) {
        remove_cgroup_tree(Path::new(&cg));
    }
    for (key, value) in &before.sysctls {
        let _ = std::fs::write(Path::new("/proc/sys").join(key), value);
    }
    for table in appeared(&now.nft_tables, &before.nft_tables) {
        let words: Vec<&str> = table.split_whitespace().collect();
        if let ["table", family, name] = words[..] {
            let _ = quiet(Command::new("nft").args(["delete", "table", family, name]));
        }
    }
    if let Ok(entries) = std::fs::read_dir("/var/lib/cni/results") {
        for e in entries.flatten() {
            if e.file_name().to_string_lossy().starts_with(CNI_NETWORK) {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
}

fn containerd_config(dir: &Path) -> String {
    let d = dir.display();
    format!(
        r#"version = 2
root = "{d}/containerd"
state = "{d}/containerd-state"

[grpc]
  address = "{d}/containerd.sock"

[plugins."io.containerd.internal.v1.opt"]
  path = "{d}/containerd-opt"

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "docker.io/local/pause:test"
  # Root here lacks CAP_SYS_RESOURCE: without this runc fails to lower a container's
  # OOM score adjustment below its own ("can't get final child's PID from pipe").
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{CNI_BIN}"
    conf_dir = "{d}/cni"
  [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
    runtime_type = "io.containerd.runc.v2"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
      SystemdCgroup = false
"#
    )
}

fn cni_config(opts: &NodeOptions, ipam_dir: &Path) -> String {
    serde_json::json!({
        "cniVersion": "1.0.0",
        "name": CNI_NETWORK,
        "plugins": [{
            "type": "bridge",
            "bridge": opts.bridge,
            "isGateway": true,
            "ipMasq": false,
            "hairpinMode": true,
            "ipam": {
                "type": "host-local",
                "ranges": [[{"subnet": opts.pod_subnet, "gateway": opts.address.to_string()}]],
                "routes": [{"dst": "0.0.0.0/0"}],
                "dataDir": ipam_dir,
            },
        }],
    })
    .to_string()
}

fn kubelet_config(node: &Node, address: Ipv4Addr) -> String {
    let d = node.dir.display();
    format!(
        r#"apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
containerRuntimeEndpoint: unix://{d}/containerd.sock
cgroupDriver: cgroupfs
# This machine has cgroup v1 only, which kubelet 1.35 refuses unless told.
failCgroupV1: false
podLogsDir: {d}/pod-logs
staticPodPath: ""
# On the node's address only (the bridge), never every interface of the machine:
# anonymous and allowed everything, for the test's API server.
address: {address}
authentication:
  anonymous: {{enabled: true}}
  webhook: {{enabled: false}}
authorization: {{mode: AlwaysAllow}}
readOnlyPort: 0
healthzPort: 0
port: 10250
clusterDomain: cluster.local
resolvConf: /etc/resolv.conf
failSwapOn: false
# A test machine's disk may be fuller than a node's: never evict or collect images.
evictionHard: {{memory.available: "1%", nodefs.available: "1%", imagefs.available: "1%", nodefs.inodesFree: "1%"}}
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
serializeImagePulls: false
"#
    )
}

fn write(path: &Path, text: &str) -> Result<(), Error> {
    std::fs::write(path, text).map_err(|e| Error::io(path, e))
}

fn ip(args: &[&str]) -> Result<(), Error> {
    crate::run(Command::new("ip").args(args), None).map(|_| ())
}

/// Runs a command for its effect, discarding its output: whether it succeeded.
fn quiet(cmd: &mut Command) -> std::io::Result<bool> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
}
