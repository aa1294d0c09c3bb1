//! What the agent's lab tests share: the agent as a process in a lab namespace,
//! its HTTP endpoints, polling, and connections through the VIP.
#![allow(dead_code)]

pub mod l2;

use std::net::{SocketAddr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub use kubelvs_measure::eventually;
use kubelvs_xdp_lab::client::{self, Conn};
use kubelvs_xdp_lab::netns::Netns;
use kubelvs_xdp_lab::topology::{Host, Lab};

pub const AGENT: &str = env!("CARGO_BIN_EXE_kube-lvs-agent");
pub const PORT: u16 = 80;
/// The real servers' health endpoint: stopping it fails the check without touching
/// connections on PORT.
pub const HEALTH_PORT: u16 = 9000;
pub const METRICS_PORT: u16 = 9641;
pub const TIMEOUT: Duration = Duration::from_secs(5);
pub const INTERVAL_S: u64 = 1;
pub const FALL: u64 = 2;

pub struct Agent {
    child: Child,
    log: PathBuf,
}

impl Agent {
    pub fn start(host: &Host, args: &[String], dir: &Path) -> Self {
        Self::start_with_env(host, args, dir, &[])
    }

    pub fn start_with_env(host: &Host, args: &[String], dir: &Path, env: &[(&str, &Path)]) -> Self {
        let log = dir.join(format!("agent-{}.log", host.role));
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap();
        let child = Command::new("ip")
            .args(["netns", "exec", host.netns.name(), AGENT])
            .args(args)
            .envs(env.iter().map(|(k, v)| (*k, *v)))
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        Self { child, log }
    }

    pub fn stop(&mut self) {
        self.signal(libc::SIGTERM);
    }

    /// SIGKILL: the agent dies without a word, as on a crashed node.
    pub fn kill(&mut self) {
        self.signal(libc::SIGKILL);
    }

    /// SIGTERM without waiting: the agent stops in its own time.
    pub fn terminate(&self) {
        // SAFETY: kill(2) of our own child.
        #[allow(unsafe_code)]
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
    }

    /// Whether the process is still running.
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    fn signal(&mut self, signal: i32) {
        if matches!(self.child.try_wait(), Ok(Some(_))) {
            return;
        }
        // SAFETY: kill(2) of our own child, not yet reaped.
        #[allow(unsafe_code)]
        unsafe {
            libc::kill(self.child.id() as i32, signal);
        }
        let _ = self.child.wait();
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.stop();
    }
}

/// GET `path` from the agent's metrics server inside `netns`: status and body.
pub fn http_get(netns: &Netns, path: &str) -> Option<(u16, String)> {
    netns.http_get(METRICS_PORT, path)
}

/// Real servers new connections reach, over `n` connections.
pub fn reached(lab: &Lab, n: usize) -> Vec<String> {
    let to = SocketAddr::V4(SocketAddrV4::new(lab.vip, PORT));
    lab.client
        .netns
        .run(move || {
            (0..n)
                .map(|_| {
                    client::open_with_retry(to, TIMEOUT)
                        .map(|c| c.real_server().to_owned())
                        .unwrap_or_else(|e| format!("error: {e}"))
                })
                .collect()
        })
        .unwrap()
}

/// `n` long-lived connections through the VIP.
pub fn hold(lab: &Lab, n: usize) -> Vec<Conn> {
    let to = SocketAddr::V4(SocketAddrV4::new(lab.vip, PORT));
    lab.client
        .netns
        .run(move || {
            (0..n)
                .map(|_| client::open_with_retry(to, TIMEOUT).unwrap())
                .collect()
        })
        .unwrap()
}

/// How many of `conns` no longer carry data to the real server they had.
pub fn lost(conns: &mut [Conn]) -> usize {
    let mut lost = 0;
    for (i, c) in conns.iter_mut().enumerate() {
        let rs = c.real_server().to_owned();
        match c.echo(&format!("after-{i}")) {
            Ok(reply) if reply == format!("{rs} after-{i}") => {}
            other => {
                eprintln!("connection {i} on {rs}: {other:?}");
                lost += 1;
            }
        }
    }
    lost
}

pub fn open(lab: &Lab) -> Conn {
    let to = SocketAddr::V4(SocketAddrV4::new(lab.vip, PORT));
    lab.client
        .netns
        .run(move || client::open_with_retry(to, TIMEOUT))
        .unwrap()
        .unwrap()
}

/// The lab's VirtualService `web` (XDP, maglev, directed by the nodes labelled
/// `node-role.kubelvs.io/director`), with the TCP health check on HEALTH_PORT when
/// `health`, and a RealServer on its own node for each index of `real_servers`.
pub fn lab_objects(
    lab: &Lab,
    forwarding: &str,
    target_port: u16,
    health: bool,
    real_servers: &[usize],
) -> String {
    let tunnel = if forwarding == "tun" {
        "  tunnel: {type: ipip}\n"
    } else {
        ""
    };
    let check = if health {
        format!(
            "  healthCheck: {{type: tcp, port: {HEALTH_PORT}, intervalSeconds: {INTERVAL_S}, timeoutSeconds: 1, rise: 1, fall: {FALL}}}\n"
        )
    } else {
        String::new()
    };
    let mut y = format!(
        "apiVersion: kubelvs.io/v1alpha1
kind: VirtualService
metadata: {{name: web, namespace: lab}}
spec:
  vip: {vip}
  ports: [{{name: http, port: {PORT}, targetPort: {target_port}}}]
  scheduler: maglev
  forwarding: {forwarding}
{tunnel}  dataplane: xdp
  realServerSelector: {{matchLabels: {{app: web}}}}
  directors: {{nodeSelector: {{matchLabels: {{node-role.kubelvs.io/director: \"\"}}}}}}
{check}",
        vip = lab.vip
    );
    for &i in real_servers {
        let rs = &lab.real_servers[i];
        y += &format!(
            "---\napiVersion: kubelvs.io/v1alpha1\nkind: RealServer\nmetadata: {{name: {r}, namespace: lab, labels: {{app: web}}}}\nspec: {{address: {a}, nodeName: {r}}}\n",
            r = rs.role,
            a = rs.addr
        );
    }
    y
}

/// Flags of the agent on `host`: its node name, the lab interface, a state directory
/// of its own under `dir`, metrics on its loopback; then `extra`.
pub fn agent_args(host: &Host, dir: &Path, extra: &[&str]) -> Vec<String> {
    let mut a: Vec<String> = [
        "--node",
        &host.role,
        "--interface",
        kubelvs_xdp_lab::topology::HOST_IFNAME,
        "--state-dir",
        &dir.join(format!("state-{}", host.role))
            .display()
            .to_string(),
        "--metrics-address",
        &format!("127.0.0.1:{METRICS_PORT}"),
    ]
    .map(String::from)
    .to_vec();
    a.extend(extra.iter().map(|s| s.to_string()));
    a
}

/// Real servers `n` new connections reach, one attempt each (no retry): a refused or
/// timed-out connection is an `error: ...` entry.
pub fn reached_at_once(lab: &Lab, n: usize) -> Vec<String> {
    let to = SocketAddr::V4(SocketAddrV4::new(lab.vip, PORT));
    lab.client
        .netns
        .run(move || {
            (0..n)
                .map(|_| match Conn::open(to, Duration::from_secs(1)) {
                    Ok(c) => {
                        let rs = c.real_server().to_owned();
                        c.reset();
                        rs
                    }
                    Err(e) => format!("error: {e}"),
                })
                .collect()
        })
        .unwrap()
}

/// A bpffs mounted on the host (outside /sys, so `ip netns exec` keeps it), for pins
/// that outlive an agent process as they do on a node; unmounted on drop.
pub struct HostBpffs {
    pub dir: PathBuf,
}

impl HostBpffs {
    pub fn mount(name: &str) -> Self {
        let dir = PathBuf::from("/run").join(format!("kubelvs-bpffs-{name}"));
        std::fs::create_dir_all(&dir).unwrap();
        let st = Command::new("mount")
            .args(["-t", "bpf", "bpf"])
            .arg(&dir)
            .status()
            .unwrap();
        assert!(st.success(), "mount -t bpf bpf {}", dir.display());
        Self { dir }
    }
}

impl Drop for HostBpffs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
        let _ = std::fs::remove_dir(&self.dir);
    }
}

/// The value of the metric line that starts with `series`, from `host`'s agent.
pub fn metric(host: &Host, series: &str) -> Option<f64> {
    let (_, m) = http_get(&host.netns, "/metrics")?;
    m.lines()
        .find(|l| l.starts_with(series))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

/// Writes the standalone agents' file atomically (write, then rename): an agent never
/// reads half of it.
pub fn write_config(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// The director's agent standalone on `file`: XDP, pins under `pin`, the director
/// label; then `extra`.
pub fn director_args(
    lab: &Lab,
    file: &Path,
    dir: &Path,
    pin: &Path,
    extra: &[&str],
) -> Vec<String> {
    director_args_on(&lab.director, file, dir, pin, extra)
}

/// [`director_args`] for a director on `host`.
pub fn director_args_on(
    host: &Host,
    file: &Path,
    dir: &Path,
    pin: &Path,
    extra: &[&str],
) -> Vec<String> {
    let (file, pin, addr) = (
        file.display().to_string(),
        pin.display().to_string(),
        host.addr.to_string(),
    );
    let mut args = vec![
        "--config",
        &file,
        "--node-label",
        "node-role.kubelvs.io/director=",
        "--dataplane",
        "xdp",
        "--xdp-pin-dir",
        &pin,
        "--node-address",
        &addr,
    ];
    args.extend_from_slice(extra);
    agent_args(host, dir, &args)
}

/// A real server's agent standalone on `file` (`--dataplane none`).
pub fn real_server_args(rs: &Host, file: &Path, dir: &Path) -> Vec<String> {
    let (file, addr) = (file.display().to_string(), rs.addr.to_string());
    agent_args(
        rs,
        dir,
        &[
            "--config",
            &file,
            "--dataplane",
            "none",
            "--node-address",
            &addr,
        ],
    )
}

/// The API server's address in a lab: a host of its own on the lab's bridge.
pub const API_ADDR: std::net::Ipv4Addr = std::net::Ipv4Addr::new(192, 0, 2, 254);

/// The test control plane on a host of `lab` (nothing is routed from the machine's
/// own namespace, whose subnet may well be the lab's), with the CRDs, the namespaces
/// `kube-lvs` and `lab` (labelled so the lab's real servers, which are nodes, may be
/// named), and the agents' RBAC and admission policies as the chart renders them.
pub struct LabCluster {
    pub cluster: kubelvs_test_cluster::Cluster,
    /// The API server's host; the control plane lives as long as it does.
    pub api: Host,
    /// The agents' logs and state.
    pub dir: PathBuf,
}

impl LabCluster {
    pub fn start(lab: &Lab, tag: &str) -> Self {
        use kubelvs_test_cluster::{Cluster, ControlPlane, ControlPlaneOptions};
        let api = lab.add_host("api", API_ADDR, 0x30).unwrap();
        let cluster = Cluster::of(
            ControlPlane::start(ControlPlaneOptions {
                bind_address: API_ADDR.into(),
                netns: Some(api.netns.name().to_owned()),
                ..Default::default()
            })
            .unwrap(),
        )
        .unwrap();
        let dir = std::env::temp_dir().join(format!("kubelvs-{tag}-{}", lab.bridge.name()));
        std::fs::create_dir_all(&dir).unwrap();
        cluster.install_crds().unwrap();
        for ns in ["kube-lvs", "lab"] {
            cluster.kubectl_ok(&["create", "namespace", ns]).unwrap();
        }
        // The lab's real servers are nodes (each runs an agent): an administrator's leave.
        cluster
            .kubectl_ok(&[
                "label",
                "namespace",
                "lab",
                "kubelvs.io/node-real-servers=allowed",
            ])
            .unwrap();
        cluster
            .apply_chart_templates(
                "kube-lvs",
                "kube-lvs",
                &[
                    "templates/agent-rbac.yaml",
                    "templates/agent-admission.yaml",
                ],
                &[],
            )
            .unwrap();
        Self { cluster, api, dir }
    }
}
