//! A real Kubernetes control plane for tests: etcd, kube-apiserver (RBAC,
//! ServiceAccount issuer, client-certificate admin) and kube-controller-manager
//! (garbage collector, namespace, endpointslice and serviceaccount controllers),
//! built from the Go modules pinned in `tests/cluster/go` by `build-binaries.sh`
//! and started as processes on this machine, the way controller-runtime's envtest
//! does. There is no kubelet: Pods never run; tests create Nodes and EndpointSlices.
//!
//! [`shared`] starts one control plane per test binary on first use (each test
//! takes its own [`Namespace`]); [`ControlPlane::start`] starts a private one.
//! When `KUBECONFIG` is set, [`shared`] uses that cluster instead (kind, k3d, ...)
//! and starts nothing; kubectl and helm still come from the pinned build.
//!
//! ```no_run
//! let cluster = kubelvs_test_cluster::shared();
//! let ns = cluster.namespace("crds");
//! cluster.kubectl_ok(&["get", "namespace", ns.name()]).unwrap();
//! let agent = cluster.service_account_kubeconfig(ns.name(), "agent").unwrap();
//! # let _ = agent;
//! ```

#[cfg(feature = "bulk")]
pub mod bulk;
mod certs;
pub mod node;
mod process;

use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

pub use certs::Pki;

/// Why the control plane or a tool failed, with what it printed.
#[derive(Debug)]
pub enum Error {
    /// `build-binaries.sh` failed (no Go, or the Go module proxy is unreachable).
    Build(String),
    Io {
        path: PathBuf,
        message: String,
    },
    /// A command exited non-zero: the command line and its stderr.
    Tool {
        tool: String,
        message: String,
    },
    /// A component did not become ready in time: its name and the end of its log.
    NotReady {
        component: String,
        log_tail: String,
    },
}

impl Error {
    pub(crate) fn io(path: &Path, e: std::io::Error) -> Self {
        Self::Io {
            path: path.to_owned(),
            message: e.to_string(),
        }
    }
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Build(m) => write!(f, "building the test control plane: {m}"),
            Self::Io { path, message } => write!(f, "{}: {message}", path.display()),
            Self::Tool { tool, message } => write!(f, "{tool} failed: {message}"),
            Self::NotReady {
                component,
                log_tail,
            } => write!(
                f,
                "{component} did not become ready; its log ends:\n{log_tail}"
            ),
        }
    }
}

impl std::error::Error for Error {}

/// The directory holding kube-apiserver, kube-controller-manager, kubectl, etcd and
/// helm, built once per machine (cached by `build-binaries.sh`) and once per process.
pub fn binaries() -> Result<&'static Path, Error> {
    static BIN: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    BIN.get_or_init(|| {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("build-binaries.sh");
        let out = Command::new(&script)
            .stderr(Stdio::inherit())
            .output()
            .map_err(|e| format!("{}: {e}", script.display()))?;
        if !out.status.success() {
            return Err(format!(
                "{} exited with {} (its output above says why)",
                script.display(),
                out.status
            ));
        }
        Ok(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
    })
    .as_deref()
    .map_err(|m| Error::Build(m.clone()))
}

/// How to start a [`ControlPlane`].
#[derive(Debug, Clone)]
pub struct ControlPlaneOptions {
    /// Address the API server listens on and advertises. Loopback by default; an
    /// address of a lab host when agents in network namespaces must reach it.
    pub bind_address: IpAddr,
    /// Run the control plane (and kubectl and helm) inside this network namespace
    /// (`ip netns exec`): a host of a lab, so the lab reaches the API server without
    /// anything routed from the machine's own namespace.
    pub netns: Option<String>,
    /// Also run the controllers of workloads (Deployments, ReplicaSets, DaemonSets)
    /// and the scheduler's companions: for a [`node::Node`] whose kubelet runs Pods.
    pub workloads: bool,
}

impl Default for ControlPlaneOptions {
    fn default() -> Self {
        Self {
            bind_address: IpAddr::V4(Ipv4Addr::LOCALHOST),
            netns: None,
            workloads: false,
        }
    }
}

/// `program` as a command, inside `netns` when given.
fn command_in(netns: Option<&str>, program: &Path) -> Command {
    match netns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns]).arg(program);
            c
        }
        None => Command::new(program),
    }
}

/// etcd, kube-apiserver and kube-controller-manager running as child processes.
/// Dropping it stops them and removes its directory; so does the test binary's exit.
#[derive(Debug)]
pub struct ControlPlane {
    dir: PathBuf,
    kubeconfig: PathBuf,
    server: String,
    pki: Pki,
    children: Mutex<Vec<(&'static str, Child)>>,
    ready_after: Duration,
    netns: Option<String>,
}

fn free_port(addr: IpAddr) -> Result<u16, Error> {
    let l = TcpListener::bind((addr, 0)).map_err(|e| Error::Io {
        path: PathBuf::from(format!("bind {addr}:0")),
        message: e.to_string(),
    })?;
    Ok(l.local_addr().unwrap().port())
}

fn unique_dir(prefix: &str) -> Result<PathBuf, Error> {
    static N: AtomicU32 = AtomicU32::new(0);
    let dir = std::env::temp_dir().join(format!(
        "{prefix}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
    Ok(dir)
}

fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

fn spawn_logged(
    netns: Option<&str>,
    bin: &Path,
    args: &[String],
    log: &Path,
) -> Result<Child, Error> {
    let file = std::fs::File::create(log).map_err(|e| Error::io(log, e))?;
    let err = file.try_clone().map_err(|e| Error::io(log, e))?;
    let mut cmd = command_in(netns, bin);
    cmd.args(args).stdin(Stdio::null()).stdout(file).stderr(err);
    process::spawn(cmd).map_err(|e| Error::io(bin, e))
}

impl ControlPlane {
    /// Builds the binaries if needed, makes a PKI, starts etcd, kube-apiserver and
    /// kube-controller-manager on free ports and waits for `/readyz`.
    pub fn start(opts: ControlPlaneOptions) -> Result<Self, Error> {
        let bin = binaries()?;
        let t0 = Instant::now();
        let dir = unique_dir("kubelvs-cluster")?;
        process::remove_at_exit(dir.clone());
        let pki = certs::generate(&dir, &[opts.bind_address, "10.96.0.1".parse().unwrap()])?;
        let lo = IpAddr::V4(Ipv4Addr::LOCALHOST);
        // A namespace of its own is empty: any port is free there.
        let (etcd_port, peer_port, api_port) = if opts.netns.is_some() {
            (2379, 2380, 6443)
        } else {
            (
                free_port(lo)?,
                free_port(lo)?,
                free_port(opts.bind_address)?,
            )
        };
        let ns = opts.netns.as_deref();
        let etcd_url = format!("http://127.0.0.1:{etcd_port}");
        let peer_url = format!("http://127.0.0.1:{peer_port}");
        let p = |p: &Path| p.display().to_string();

        let mut cp = Self {
            server: match opts.bind_address {
                IpAddr::V4(a) => format!("https://{a}:{api_port}"),
                IpAddr::V6(a) => format!("https://[{a}]:{api_port}"),
            },
            kubeconfig: dir.join("admin.kubeconfig"),
            dir: dir.clone(),
            pki,
            children: Mutex::new(Vec::new()),
            ready_after: Duration::ZERO,
            netns: opts.netns.clone(),
        };

        let etcd = spawn_logged(
            ns,
            &bin.join("etcd"),
            &[
                "--name=kubelvs-test".into(),
                format!("--data-dir={}", p(&dir.join("etcd"))),
                format!("--listen-client-urls={etcd_url}"),
                format!("--advertise-client-urls={etcd_url}"),
                format!("--listen-peer-urls={peer_url}"),
                format!("--initial-advertise-peer-urls={peer_url}"),
                format!("--initial-cluster=kubelvs-test={peer_url}"),
                // Test data: durability buys nothing and fsync dominates latency.
                "--unsafe-no-fsync".into(),
                "--log-level=warn".into(),
            ],
            &dir.join("etcd.log"),
        )?;
        cp.children.lock().unwrap().push(("etcd", etcd));

        let apiserver = spawn_logged(
            ns,
            &bin.join("kube-apiserver"),
            &[
                format!("--etcd-servers={etcd_url}"),
                format!("--cert-dir={}", p(&dir.join("apiserver-certs"))),
                format!("--tls-cert-file={}", p(&cp.pki.server_cert)),
                format!("--tls-private-key-file={}", p(&cp.pki.server_key)),
                format!("--client-ca-file={}", p(&cp.pki.ca_cert)),
                format!("--secure-port={api_port}"),
                format!("--bind-address={}", opts.bind_address),
                format!("--advertise-address={}", opts.bind_address),
                "--service-cluster-ip-range=10.96.0.0/16".into(),
                "--authorization-mode=RBAC".into(),
                "--service-account-issuer=https://kubernetes.default.svc.cluster.local".into(),
                format!("--service-account-key-file={}", p(&cp.pki.sa_pub)),
                format!("--service-account-signing-key-file={}", p(&cp.pki.sa_key)),
                "--profiling=false".into(),
                // Nodes have no name in DNS: `kubectl logs` reaches a kubelet by address.
                "--kubelet-preferred-address-types=InternalIP".into(),
                "--v=1".into(),
            ],
            &dir.join("kube-apiserver.log"),
        )?;
        cp.children
            .lock()
            .unwrap()
            .push(("kube-apiserver", apiserver));
        cp.write_admin_kubeconfig()?;
        cp.wait_ready("kube-apiserver", &dir.join("kube-apiserver.log"))?;

        let mut controllers = "garbage-collector-controller,namespace-controller,endpointslice-controller,serviceaccount-controller".to_owned();
        if opts.workloads {
            controllers += ",deployment-controller,replicaset-controller,daemonset-controller,root-ca-certificate-publisher-controller,node-lifecycle-controller";
        }
        let kcm = spawn_logged(
            ns,
            &bin.join("kube-controller-manager"),
            &[
                format!("--kubeconfig={}", p(&cp.kubeconfig)),
                format!("--controllers={controllers}"),
                "--leader-elect=false".into(),
                // No metrics or health endpoint: nothing scrapes it, and no port to pick.
                "--secure-port=0".into(),
                format!("--root-ca-file={}", p(&cp.pki.ca_cert)),
                format!("--service-account-private-key-file={}", p(&cp.pki.sa_key)),
                "--v=1".into(),
            ],
            &dir.join("kube-controller-manager.log"),
        )?;
        cp.children
            .lock()
            .unwrap()
            .push(("kube-controller-manager", kcm));
        cp.ready_after = t0.elapsed();
        Ok(cp)
    }

    fn write_admin_kubeconfig(&self) -> Result<(), Error> {
        let text = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: kubelvs-test\n  cluster:\n    server: {}\n    certificate-authority: {}\nusers:\n- name: admin\n  user:\n    client-certificate: {}\n    client-key: {}\ncontexts:\n- name: kubelvs-test\n  context: {{cluster: kubelvs-test, user: admin}}\ncurrent-context: kubelvs-test\n",
            self.server,
            self.pki.ca_cert.display(),
            self.pki.admin_cert.display(),
            self.pki.admin_key.display(),
        );
        std::fs::write(&self.kubeconfig, text).map_err(|e| Error::io(&self.kubeconfig, e))
    }

    fn wait_ready(&self, component: &'static str, log: &Path) -> Result<(), Error> {
        let kubectl = binaries()?.join("kubectl");
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let ok = command_in(self.netns.as_deref(), &kubectl)
                .arg("--kubeconfig")
                .arg(&self.kubeconfig)
                .args(["get", "--raw", "/readyz", "--request-timeout=2s"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if ok {
                return Ok(());
            }
            let exited = self
                .children
                .lock()
                .unwrap()
                .iter_mut()
                .any(|(_, c)| c.try_wait().ok().flatten().is_some());
            if exited || Instant::now() > deadline {
                return Err(Error::NotReady {
                    component: if exited {
                        format!("{component} (a control-plane process exited)")
                    } else {
                        component.to_owned()
                    },
                    log_tail: log_tail(log),
                });
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// An admin kubeconfig (client certificate in group system:masters).
    pub fn kubeconfig(&self) -> &Path {
        &self.kubeconfig
    }

    /// The API server's URL.
    pub fn server(&self) -> &str {
        &self.server
    }

    /// The CA that signed the API server's certificate and the admin's.
    pub fn ca_cert(&self) -> &Path {
        &self.pki.ca_cert
    }

    /// Time from start to a ready API server with the controller-manager started.
    pub fn ready_after(&self) -> Duration {
        self.ready_after
    }

    /// Resident memory of each process, in bytes (from /proc/PID/status).
    pub fn memory(&self) -> Vec<(&'static str, u64)> {
        self.children
            .lock()
            .unwrap()
            .iter()
            .map(|(name, c)| (*name, kubelvs_measure::rss_kib(c.id()) * 1024))
            .collect()
    }

    /// The process id of `component` (`kube-apiserver`, `etcd`, ...).
    pub fn pid(&self, component: &str) -> Option<u32> {
        self.children
            .lock()
            .unwrap()
            .iter()
            .find(|(name, _)| *name == component)
            .map(|(_, c)| c.id())
    }

    /// Freezes `component` (`kube-apiserver`, `etcd`, ...) with SIGSTOP: its port
    /// stays open but nothing answers, as an unreachable server.
    pub fn pause(&self, component: &str) {
        self.signal(component, libc::SIGSTOP);
    }

    /// Thaws a component paused with [`ControlPlane::pause`].
    pub fn resume(&self, component: &str) {
        self.signal(component, libc::SIGCONT);
    }

    #[allow(unsafe_code)]
    fn signal(&self, component: &str, sig: i32) {
        for (name, c) in self.children.lock().unwrap().iter() {
            if *name == component {
                // SAFETY: kill(2) of our own child.
                unsafe {
                    libc::kill(c.id() as i32, sig);
                }
            }
        }
    }

    /// Where the processes' logs and state live.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        let mut children = self.children.lock().unwrap();
        while let Some((_, mut c)) = children.pop() {
            process::stop(&mut c, Duration::from_secs(3));
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A cluster to test against: the shared local control plane or the one `KUBECONFIG`
/// names.
#[derive(Debug)]
pub struct Cluster {
    kubeconfig: PathBuf,
    bin: PathBuf,
    local: Option<ControlPlane>,
    scratch: PathBuf,
}

/// The repository's root directory.
fn repo_root() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."))
}

/// A Node object (there is no kubelet to register one): its name and InternalIP, and
/// when it directs traffic the label `node-role.kubelvs.io/director` that the lab's
/// VirtualServices select directors by; as YAML for `kubectl apply`.
pub fn node_object(name: &str, address: std::net::IpAddr, director: bool) -> String {
    let labels = if director {
        "{node-role.kubelvs.io/director: \"\"}"
    } else {
        "{}"
    };
    format!(
        "apiVersion: v1\nkind: Node\nmetadata: {{name: {name}, labels: {labels}}}\nstatus:\n  addresses: [{{type: InternalIP, address: {address}}}]\n"
    )
}

/// Spawns `cmd` (an operator or agent under test) so that it dies with the test
/// binary, even when that is killed.
pub fn spawn_tied(cmd: Command) -> std::io::Result<std::process::Child> {
    process::spawn(cmd)
}

/// The cluster of this test binary: `KUBECONFIG`'s when set, otherwise a local
/// control plane started on first use and stopped when the binary exits. Panics
/// with the reason when it cannot be had: every caller needs it.
pub fn shared() -> &'static Cluster {
    static CLUSTER: OnceLock<Result<Cluster, String>> = OnceLock::new();
    match CLUSTER.get_or_init(|| Cluster::new().map_err(|e| e.to_string())) {
        Ok(c) => c,
        Err(e) => panic!("no test cluster: {e}"),
    }
}

impl Cluster {
    fn new() -> Result<Self, Error> {
        if let Some(external) = std::env::var_os("KUBECONFIG").filter(|v| !v.is_empty()) {
            let first = std::env::split_paths(&external).next().unwrap_or_default();
            return Self::with(first, None);
        }
        let cp = ControlPlane::start(ControlPlaneOptions::default())?;
        eprintln!(
            "kubelvs-test-cluster: control plane ready in {:.1} s at {} ({})",
            cp.ready_after().as_secs_f64(),
            cp.server(),
            cp.dir().display()
        );
        Self::of(cp)
    }

    /// A cluster around a given control plane (one started with other options).
    pub fn of(cp: ControlPlane) -> Result<Self, Error> {
        Self::with(cp.kubeconfig().to_owned(), Some(cp))
    }

    fn with(kubeconfig: PathBuf, local: Option<ControlPlane>) -> Result<Self, Error> {
        let scratch = unique_dir("kubelvs-cluster-scratch")?;
        process::remove_at_exit(scratch.clone());
        Ok(Self {
            kubeconfig,
            bin: binaries()?.to_owned(),
            local,
            scratch,
        })
    }

    fn netns(&self) -> Option<&str> {
        self.local.as_ref().and_then(|cp| cp.netns.as_deref())
    }

    /// The local control plane, or `None` when testing against `KUBECONFIG`'s cluster.
    pub fn local(&self) -> Option<&ControlPlane> {
        self.local.as_ref()
    }

    pub fn kubeconfig(&self) -> &Path {
        &self.kubeconfig
    }

    /// The pinned build of a tool (`kubectl`, `helm`, ...).
    pub fn tool(&self, name: &str) -> PathBuf {
        self.bin.join(name)
    }

    /// `kubectl` with the admin kubeconfig.
    pub fn kubectl(&self) -> Command {
        let mut c = command_in(self.netns(), &self.tool("kubectl"));
        c.arg("--kubeconfig").arg(&self.kubeconfig);
        c
    }

    /// `helm` with the admin kubeconfig.
    pub fn helm(&self) -> Command {
        let mut c = command_in(self.netns(), &self.tool("helm"));
        c.arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .env("HELM_CACHE_HOME", self.scratch.join("helm/cache"))
            .env("HELM_CONFIG_HOME", self.scratch.join("helm/config"))
            .env("HELM_DATA_HOME", self.scratch.join("helm/data"));
        c
    }

    /// Runs kubectl with `args`; stdout on success, stderr in the error otherwise.
    pub fn kubectl_ok(&self, args: &[&str]) -> Result<String, Error> {
        run(self.kubectl().args(args), None)
    }

    /// Runs kubectl with `args` and `input` on stdin (for `-f -`).
    pub fn kubectl_stdin(&self, args: &[&str], input: &str) -> Result<String, Error> {
        run(self.kubectl().args(args), Some(input))
    }

    /// What node `node`'s agent writes: a server-side apply of `status` (a flow-style
    /// YAML value) on the kubelvs.io object `kind`/`name` in `namespace`, status
    /// subresource only, under the agent's field manager `kubelvs-agent/<node>`.
    pub fn apply_status_as_agent(
        &self,
        node: &str,
        namespace: &str,
        kind: &str,
        name: &str,
        status: &str,
    ) -> Result<String, Error> {
        self.apply_status_as_agent_with(None, node, namespace, kind, name, status)
    }

    /// [`Cluster::apply_status_as_agent`] authenticated by `kubeconfig` (an agent's
    /// token) instead of the administrator's.
    pub fn apply_status_as_agent_with(
        &self,
        kubeconfig: Option<&Path>,
        node: &str,
        namespace: &str,
        kind: &str,
        name: &str,
        status: &str,
    ) -> Result<String, Error> {
        self.server_side_apply_as_agent(
            kubeconfig,
            node,
            namespace,
            &["--subresource=status"],
            &format!(
                "apiVersion: kubelvs.io/v1alpha1\nkind: {kind}\nmetadata: {{name: {name}}}\nstatus: {status}\n"
            ),
        )
    }

    /// The sum of the API server's `apiserver_request_total` series whose labels
    /// `matches` accepts (the whole line is given: `{group="...",verb="..."} value`).
    pub fn requests_total(&self, matches: impl Fn(&str) -> bool) -> Result<f64, Error> {
        let metrics = self.kubectl_ok(&["get", "--raw", "/metrics"])?;
        Ok(metrics
            .lines()
            .filter(|l| l.starts_with("apiserver_request_total{") && matches(l))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum())
    }

    /// What node `node`'s agent writes to keep its liveness Lease (server-side apply of
    /// Lease `name` held by `holder` in `namespace`), authenticated by `kubeconfig`.
    pub fn apply_lease_as_agent(
        &self,
        kubeconfig: &Path,
        node: &str,
        namespace: &str,
        name: &str,
        holder: &str,
    ) -> Result<String, Error> {
        self.server_side_apply_as_agent(
            Some(kubeconfig),
            node,
            namespace,
            &[],
            &format!(
                "apiVersion: coordination.k8s.io/v1\nkind: Lease\nmetadata: {{name: {name}, labels: {{kubelvs.io/agent-lease: \"\"}}}}\nspec: {{holderIdentity: {holder}, leaseDurationSeconds: 2}}\n"
            ),
        )
    }

    /// `kubectl apply --server-side` of `body` under node `node`'s agent's field
    /// manager, authenticated by `kubeconfig` (else the administrator's).
    fn server_side_apply_as_agent(
        &self,
        kubeconfig: Option<&Path>,
        node: &str,
        namespace: &str,
        extra: &[&str],
        body: &str,
    ) -> Result<String, Error> {
        let mut kubectl = self.kubectl();
        if let Some(k) = kubeconfig {
            // The last --kubeconfig wins.
            kubectl.arg("--kubeconfig").arg(k);
        }
        kubectl
            .args(["apply", "--server-side"])
            .args(extra)
            .arg(format!("--field-manager=kubelvs-agent/{node}"))
            .args(["-n", namespace, "-f", "-"]);
        run(&mut kubectl, Some(body))
    }

    /// What the operator writes when it grants VirtualService `namespace`/`name` the
    /// VIP `vip` (allocated, or `spec.vip` admitted by a pool): `status.vip` with the
    /// generation it decided for, under its field manager. For tests of the agents
    /// without an operator process; the operator's own decisions are tested in
    /// operator/tests/cluster.rs.
    pub fn grant_vip_as_operator(
        &self,
        namespace: &str,
        name: &str,
        vip: &str,
    ) -> Result<String, Error> {
        let generation = self.kubectl_ok(&[
            "get",
            "virtualservices.kubelvs.io",
            name,
            "-n",
            namespace,
            "-o",
            "jsonpath={.metadata.generation}",
        ])?;
        self.kubectl_stdin(
            &[
                "apply",
                "--server-side",
                "--subresource=status",
                "--field-manager=kubelvs-operator",
                "-n",
                namespace,
                "-f",
                "-",
            ],
            &format!(
                "apiVersion: kubelvs.io/v1alpha1\nkind: VirtualService\nmetadata: {{name: {name}}}\nstatus: {{vip: {vip}, observedGeneration: {}}}\n",
                generation.trim()
            ),
        )
    }

    /// Installs the chart's CRDs (server-side apply, so it is idempotent) and waits
    /// until they are served.
    pub fn install_crds(&self) -> Result<(), Error> {
        let dir = repo_root().join("charts/kube-lvs/crds");
        run(
            self.kubectl()
                .args(["apply", "--server-side", "--force-conflicts", "-f"])
                .arg(&dir),
            None,
        )?;
        self.kubectl_ok(&[
            "wait",
            "--for=condition=Established",
            "--timeout=60s",
            "crd/virtualservices.kubelvs.io",
            "crd/realservers.kubelvs.io",
            "crd/addresspools.kubelvs.io",
        ])?;
        Ok(())
    }

    /// Renders `templates` of the chart with the real helm (release `release` in
    /// `namespace`, extra `--set` values) and applies them with kubectl.
    pub fn apply_chart_templates(
        &self,
        release: &str,
        namespace: &str,
        templates: &[&str],
        set: &[&str],
    ) -> Result<(), Error> {
        let mut helm = self.helm();
        helm.args(["template", release])
            .arg(repo_root().join("charts/kube-lvs"))
            .args(["--namespace", namespace]);
        for t in templates {
            helm.args(["--show-only", t]);
        }
        for s in set {
            helm.args(["--set", s]);
        }
        let rendered = run(&mut helm, None)?;
        self.kubectl_stdin(&["apply", "-f", "-"], &rendered)?;
        Ok(())
    }

    /// A fresh namespace named `{prefix}-{unique}`, deleted when dropped.
    pub fn namespace(&self, prefix: &str) -> Namespace<'_> {
        static N: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "{prefix}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        self.kubectl_ok(&["create", "namespace", &name])
            .unwrap_or_else(|e| panic!("creating namespace {name}: {e}"));
        Namespace {
            cluster: self,
            name,
        }
    }

    /// A token for ServiceAccount `namespace/name` from the TokenRequest API (the
    /// ServiceAccount is created if missing).
    pub fn token(&self, namespace: &str, name: &str) -> Result<String, Error> {
        let _ = self.kubectl_ok(&["create", "serviceaccount", name, "-n", namespace]);
        let token =
            self.kubectl_ok(&["create", "token", name, "-n", namespace, "--duration=2h"])?;
        Ok(token.trim().to_owned())
    }

    /// A kubeconfig that authenticates as ServiceAccount `namespace/name` (bearer
    /// token), so a process runs with exactly the RBAC bound to that account.
    pub fn service_account_kubeconfig(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<PathBuf, Error> {
        let token = self.token(namespace, name)?;
        self.token_kubeconfig(namespace, name, &token, name)
    }

    /// The kubeconfig the chart's agent on `node` gets: ServiceAccount
    /// `kube-lvs/kube-lvs-agent`, token bound to Pod `agent-<node>` on that Node.
    pub fn agent_kubeconfig(&self, node: &str) -> Result<PathBuf, Error> {
        self.pod_bound_kubeconfig("kube-lvs", "kube-lvs-agent", &format!("agent-{node}"), node)
    }

    /// A kubeconfig for ServiceAccount `namespace/name` with a token bound to a Pod
    /// `pod` on Node `node` (both created here if missing; no kubelet runs the Pod), as
    /// a DaemonSet's Pod gets: the token carries the node's name
    /// (`authentication.kubernetes.io/node-name`).
    pub fn pod_bound_kubeconfig(
        &self,
        namespace: &str,
        name: &str,
        pod: &str,
        node: &str,
    ) -> Result<PathBuf, Error> {
        let _ = self.kubectl_ok(&["create", "serviceaccount", name, "-n", namespace]);
        if self.kubectl_ok(&["get", "node", node]).is_err() {
            self.kubectl_stdin(
                &["apply", "-f", "-"],
                &node_object(node, std::net::Ipv4Addr::new(192, 0, 2, 250).into(), false),
            )?;
        }
        self.kubectl_stdin(
            &["apply", "-n", namespace, "-f", "-"],
            &format!(
                "apiVersion: v1\nkind: Pod\nmetadata: {{name: {pod}}}\nspec:\n  serviceAccountName: {name}\n  nodeName: {node}\n  containers: [{{name: agent, image: docker.io/local/kube-lvs:unused}}]\n"
            ),
        )?;
        let token = self.kubectl_ok(&[
            "create",
            "token",
            name,
            "-n",
            namespace,
            "--duration=2h",
            "--bound-object-kind=Pod",
            &format!("--bound-object-name={pod}"),
        ])?;
        self.token_kubeconfig(namespace, name, token.trim(), pod)
    }

    /// A kubeconfig authenticating with `token`, written under `file`'s name.
    fn token_kubeconfig(
        &self,
        namespace: &str,
        name: &str,
        token: &str,
        file: &str,
    ) -> Result<PathBuf, Error> {
        let view: serde_json::Value = serde_json::from_str(&self.kubectl_ok(&[
            "config",
            "view",
            "--raw",
            "--minify",
            "--flatten",
            "-o",
            "json",
        ])?)
        .map_err(|e| Error::Tool {
            tool: "kubectl config view".into(),
            message: e.to_string(),
        })?;
        let cluster = &view["clusters"][0]["cluster"];
        let mut text = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: {}\n",
            cluster["server"].as_str().unwrap_or_default()
        );
        if let Some(ca) = cluster["certificate-authority-data"].as_str() {
            text += &format!("    certificate-authority-data: {ca}\n");
        }
        text += &format!(
            "users:\n- name: {name}\n  user:\n    token: {token}\ncontexts:\n- name: c\n  context: {{cluster: c, user: {name}, namespace: {namespace}}}\ncurrent-context: c\n"
        );
        let path = self.scratch.join(format!("{namespace}.{file}.kubeconfig"));
        std::fs::write(&path, text).map_err(|e| Error::io(&path, e))?;
        Ok(path)
    }
}

fn run(cmd: &mut Command, input: Option<&str>) -> Result<String, Error> {
    let tool = format!("{cmd:?}");
    cmd.stdin(if input.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(|e| Error::Tool {
        tool: tool.clone(),
        message: e.to_string(),
    })?;
    if let Some(input) = input {
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .map_err(|e| Error::Tool {
                tool: tool.clone(),
                message: e.to_string(),
            })?;
    }
    let out = child.wait_with_output().map_err(|e| Error::Tool {
        tool: tool.clone(),
        message: e.to_string(),
    })?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(Error::Tool {
            tool,
            message: String::from_utf8_lossy(&out.stderr).into_owned(),
        })
    }
}

/// A namespace of one test, deleted (without waiting) when dropped.
#[derive(Debug)]
pub struct Namespace<'a> {
    cluster: &'a Cluster,
    name: String,
}

impl Namespace<'_> {
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl Drop for Namespace<'_> {
    fn drop(&mut self) {
        let _ = self
            .cluster
            .kubectl_ok(&["delete", "namespace", &self.name, "--wait=false"]);
    }
}
