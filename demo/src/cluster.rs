//! The demo through Kubernetes: the test suite's control plane (etcd, kube-apiserver,
//! kube-controller-manager, built from pinned Go modules) on a host of the lab; the
//! chart installed with helm (CRDs, RBAC); the operator and one agent per node as
//! processes with ServiceAccount tokens; the lab's objects applied with kubectl, the
//! VIP allocated by the operator from an AddressPool; `kubectl get kubelvs` and
//! `kubectl lvs` as things change.

use std::net::Ipv4Addr;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use kubelvs_test_cluster::{Cluster, ControlPlane, ControlPlaneOptions};
use kubelvs_xdp_lab::topology::Host;

use crate::lab::{applies, poll, weights_of, Agent, Result, Setup};

/// The API server's address: a host of its own on the lab's bridge.
const API_ADDR: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 254);
const NAMESPACE: &str = "lab";
/// The directors' Lease duration: the chart's default.
const LEASE_MS: &str = "2000";

fn node_object(host: &Host, director: bool) -> String {
    kubelvs_test_cluster::node_object(&host.role, host.addr.into(), director)
}

fn kubectl(cluster: &Cluster, args: &[&str]) -> Result<String> {
    cluster.kubectl_ok(args).map_err(|e| e.to_string())
}

/// Prints `$ kubectl ...` and its output, indented.
fn show(cluster: &Cluster, args: &[&str]) -> Result<()> {
    let out = kubectl(cluster, args)?;
    println!("      $ kubectl {}", args.join(" "));
    for l in out.lines() {
        println!("        {l}");
    }
    Ok(())
}

/// `kubectl lvs` through kubectl's plugin discovery, inside a lab host's namespace (the
/// API host's, or the director's to read its agent's /metrics).
fn kubectl_lvs(cluster: &Cluster, api: &Host, plugin_dir: &Path) -> Result<()> {
    kubectl_lvs_with(cluster, api, plugin_dir, &[])
}

fn kubectl_lvs_with(
    cluster: &Cluster,
    api: &Host,
    plugin_dir: &Path,
    extra: &[&str],
) -> Result<()> {
    let path = format!(
        "{}:{}",
        plugin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let out = Command::new("ip")
        .args(["netns", "exec", api.netns.name()])
        .arg(cluster.tool("kubectl"))
        .args(["lvs", "-n", NAMESPACE])
        .args(extra)
        .env("KUBECONFIG", cluster.kubeconfig())
        .env("PATH", path)
        .output()
        .map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(format!(
            "kubectl lvs: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    println!(
        "      $ kubectl lvs -n {NAMESPACE}{}",
        extra.iter().map(|a| format!(" {a}")).collect::<String>()
    );
    for l in String::from_utf8_lossy(&out.stdout).lines() {
        println!("        {l}");
    }
    Ok(())
}

/// A field of the lab's VirtualService, by kubectl jsonpath (`{.status.vip}`).
pub(crate) fn web_field(cluster: &Cluster, path: &str) -> Result<String> {
    kubectl(
        cluster,
        &[
            "get",
            "lvs",
            "web",
            "-n",
            NAMESPACE,
            "-o",
            &format!("jsonpath={path}"),
        ],
    )
}

/// Waits until the VirtualService's HEALTHY column (`status.realServers`) shows `want`.
pub(crate) fn wait_healthy(cluster: &Cluster, want: &str) -> Result<()> {
    poll(
        Duration::from_secs(30),
        &format!("status showing {want} healthy"),
        || {
            let shown = web_field(cluster, "{.status.realServers}").ok()?;
            (shown == want).then_some(())
        },
    )
}

pub fn run(agent: &Path, config: &crate::lab::Config, n: usize) -> Result<()> {
    let bin_dir = agent.parent().unwrap_or(Path::new("."));
    let operator = bin_dir.join("kube-lvs-operator");
    for needed in [&operator, &bin_dir.join("kubectl-lvs")] {
        if !needed.exists() {
            return Err(format!(
                "{} not found: build it (cargo build -p kubelvs-operator -p kubectl-lvs)",
                needed.display()
            ));
        }
    }
    let config_text = config.text.clone();
    // The operator allocates the VIP: the objects name no address, a pool holds it.
    let objects: String = config_text
        .lines()
        .filter(|l| !l.trim_start().starts_with("vip:"))
        .map(|l| format!("{l}\n"))
        .collect();

    println!("kube-lvs demo --cluster: the load balancer through Kubernetes, on this machine\n");
    println!("[1/8] building the lab and a Kubernetes control plane on it");
    let mut setup = Setup::build(crate::lab::Dataplane::Xdp)?;
    let api = setup
        .lab
        .add_host("api", API_ADDR, 0x30)
        .map_err(|e| e.to_string())?;
    let started = Instant::now();
    let cluster = Cluster::of(
        ControlPlane::start(ControlPlaneOptions {
            bind_address: API_ADDR.into(),
            netns: Some(api.netns.name().to_owned()),
            ..Default::default()
        })
        .map_err(|e| e.to_string())?,
    )
    .map_err(|e| e.to_string())?;
    println!(
        "      etcd, kube-apiserver ({API_ADDR}) and kube-controller-manager ready in {:.1} s",
        started.elapsed().as_secs_f64()
    );

    println!("\n[2/8] helm install of the chart, the operator and one agent per node");
    let install = cluster
        .helm()
        .args(["install", "kube-lvs"])
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("../charts/kube-lvs"))
        .args(["--namespace", "kube-lvs", "--create-namespace"])
        .output()
        .map_err(|e| format!("helm: {e}"))?;
    if !install.status.success() {
        return Err(format!(
            "helm install: {}",
            String::from_utf8_lossy(&install.stderr)
        ));
    }
    println!(
        "      $ helm install kube-lvs charts/kube-lvs -n kube-lvs --create-namespace: CRDs, RBAC,\n      \
         Services; its Deployment and DaemonSet never run (no kubelet here), so the\n      \
         operator and agents run as processes with the chart's ServiceAccount tokens"
    );
    kubectl(&cluster, &["create", "namespace", NAMESPACE])?;
    // The lab's real servers are nodes (each runs an agent): RealServers may name a
    // node's address only where an administrator allows it.
    kubectl(
        &cluster,
        &[
            "label",
            "namespace",
            NAMESPACE,
            "kubelvs.io/node-real-servers=allowed",
        ],
    )?;
    let nodes: String = std::iter::once(node_object(&setup.lab.director, true))
        .chain(
            setup
                .lab
                .real_servers
                .iter()
                .map(|rs| node_object(rs, false)),
        )
        .collect::<Vec<_>>()
        .join("---\n");
    cluster
        .kubectl_stdin(&["apply", "-f", "-"], &nodes)
        .map_err(|e| e.to_string())?;
    let operator_kubeconfig = cluster
        .service_account_kubeconfig("kube-lvs", "kube-lvs-operator")
        .map_err(|e| e.to_string())?;
    let dir = setup.leftovers.dir.clone();
    let mut processes = vec![Agent::start(
        &operator,
        &api,
        &[
            "--identity",
            "demo",
            "--lease-namespace",
            "kube-lvs",
            "--metrics-address",
            "127.0.0.1:9090",
        ]
        .map(String::from),
        &dir,
        &[("KUBECONFIG", operator_kubeconfig.as_path())],
    )?];
    // Each agent's token is bound to a Pod on its Node, as the DaemonSet's Pods get: the
    // chart's admission policy lets it write only that node's status entries.
    let agent_kubeconfig = |host: &kubelvs_xdp_lab::Host| {
        cluster
            .agent_kubeconfig(&host.role)
            .map_err(|e| e.to_string())
    };
    for rs in &setup.lab.real_servers {
        let kc = agent_kubeconfig(rs)?;
        processes.push(Agent::start(
            agent,
            rs,
            &setup.real_server_args(rs, &[]),
            &dir,
            &[("KUBECONFIG", kc.as_path())],
        )?);
    }
    let kc = agent_kubeconfig(&setup.lab.director)?;
    let lease = [
        "--lease-namespace",
        "kube-lvs",
        "--lease-duration-ms",
        LEASE_MS,
    ];
    processes.push(Agent::start(
        agent,
        &setup.lab.director,
        &setup.director_args(&lease),
        &dir,
        &[("KUBECONFIG", kc.as_path())],
    )?);
    println!("      kube-lvs-operator on the API host; kube-lvs-agent on director, rs1, rs2, rs3 (cluster mode, tokens bound to each node's Pod)");

    println!("\n[3/8] kubectl apply: an AddressPool and examples/lab.yaml without its vip");
    let pool = format!(
        "apiVersion: kubelvs.io/v1alpha1\nkind: AddressPool\nmetadata: {{name: lab}}\nspec: {{addresses: [{}/32]}}\n",
        setup.lab.vip
    );
    cluster
        .kubectl_stdin(&["apply", "-f", "-"], &pool)
        .map_err(|e| e.to_string())?;
    cluster
        .kubectl_stdin(&["apply", "-n", NAMESPACE, "-f", "-"], &objects)
        .map_err(|e| e.to_string())?;
    let applied = Instant::now();
    let vip = setup.lab.vip.to_string();
    poll(
        Duration::from_secs(60),
        "the operator allocating the VIP",
        || {
            let got = web_field(&cluster, "{.status.vip}").ok()?;
            (got == vip).then_some(())
        },
    )?;
    println!(
        "      the operator allocated {vip} from AddressPool lab {:.1} s after the apply",
        applied.elapsed().as_secs_f64()
    );
    setup.wait_serving(applied, &processes, Duration::from_secs(60))?;
    wait_healthy(&cluster, "3/3")?;
    show(&cluster, &["get", "kubelvs", "-n", NAMESPACE])?;
    kubectl_lvs(&cluster, &api, bin_dir)?;

    let weights = weights_of(&config_text);
    println!("\n[4/8] {n} requests through the VIP");
    setup.spread(n, &weights)?;

    let victim = 1;
    let name = setup.lab.real_servers[victim].role.clone();
    println!("\n[5/8] stopping {name}'s HTTP server");
    setup.take_out(victim, n, &weights)?;
    wait_healthy(&cluster, "2/3")?;
    show(&cluster, &["get", "lvs", "-n", NAMESPACE])?;
    kubectl_lvs(&cluster, &api, bin_dir)?;

    println!("\n[6/8] starting {name}'s HTTP server again");
    setup.bring_back(victim, n, &weights)?;
    wait_healthy(&cluster, "3/3")?;
    show(&cluster, &["get", "lvs", "-n", NAMESPACE])?;

    let (changed, to) = ("rs3", 1);
    println!("\n[7/8] kubectl patch: {changed}'s weight -> {to}, live");
    let before = applies(&setup.lab).unwrap_or(0.0);
    let edit = Instant::now();
    kubectl(
        &cluster,
        &[
            "patch",
            "lvsrs",
            changed,
            "-n",
            NAMESPACE,
            "--type",
            "merge",
            "-p",
            &format!("{{\"spec\":{{\"weight\":{to}}}}}"),
        ],
    )?;
    poll(
        Duration::from_secs(10),
        "the director's agent applying it",
        || (applies(&setup.lab)? > before).then_some(()),
    )?;
    println!(
        "      the director's agent applied it {:.2} s after the patch",
        edit.elapsed().as_secs_f64()
    );
    let weights: Vec<(String, u32)> = weights
        .into_iter()
        .map(|(n, w)| if n == changed { (n, to) } else { (n, w) })
        .collect();
    setup.spread(n, &weights)?;
    kubectl_lvs(&cluster, &api, bin_dir)?;
    // Once the director's counters (read from its dataplane every few seconds) hold
    // the requests above.
    poll(Duration::from_secs(20), "the director's counters", || {
        setup.director_connections().filter(|c| *c >= n as u64)
    })?;
    // Traffic is not status: `--stats` reads the director agent's /metrics. Its agent
    // runs outside a pod, on 127.0.0.1 of its namespace: kubectl runs there.
    let agent_url = format!("http://127.0.0.1:{}", crate::lab::METRICS_PORT);
    kubectl_lvs_with(
        &cluster,
        &setup.lab.director,
        bin_dir,
        &["--stats", "--agent", &agent_url],
    )?;
    setup.print_counters();

    println!("\n[8/8] a second director, and the announcing one killed mid-traffic");
    let director2 = crate::failover::add_director(&setup, &cluster)?;
    let kc = agent_kubeconfig(&director2.host)?;
    let pin = setup.leftovers.pin.join("director2").display().to_string();
    let mut flags = vec!["--dataplane", "xdp", "--xdp-pin-dir", &pin];
    flags.extend(lease);
    processes.push(Agent::start(
        agent,
        &director2.host,
        &crate::lab::agent_args(&director2.host, &dir, &flags),
        &dir,
        &[("KUBECONFIG", kc.as_path())],
    )?);
    crate::failover::run(
        &setup,
        &cluster,
        NAMESPACE,
        &director2,
        &mut processes,
        LEASE_MS.parse().unwrap_or_default(),
    )?;

    println!("\ncleaning up");
    drop(processes);
    drop(director2);
    drop(cluster);
    drop(api);
    drop(setup);
    Ok(())
}
