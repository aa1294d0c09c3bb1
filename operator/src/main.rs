//! `kube-lvs-operator`: VIP allocation, status roll-up and the LoadBalancer Service
//! controller, one active replica at a time (Lease leader election).

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use kubelvs_operator::controller;
use kubelvs_operator::lease::Elector;
use kubelvs_operator::metrics::Metrics;
use tracing::{error, info};

/// As the agent's (its main.rs): the stores and passes at 100,000 objects are mostly
/// allocation.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[derive(Parser, Debug)]
#[command(name = "kube-lvs-operator", version, about)]
struct Args {
    /// This replica's name in the Lease (default: $POD_NAME, else the host name).
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,
    /// Namespace of the leader Lease (default: $POD_NAMESPACE, else kube-lvs).
    #[arg(long, env = "POD_NAMESPACE", default_value = "kube-lvs")]
    lease_namespace: String,
    #[arg(long, default_value = "kube-lvs-operator")]
    lease_name: String,
    /// How long a leader's Lease lasts without renewal: the longest a failover takes.
    #[arg(long, default_value_t = 15)]
    lease_duration_seconds: u64,
    /// Where /metrics, /healthz and /readyz are served.
    #[arg(long, default_value = "0.0.0.0:9090")]
    metrics_address: SocketAddr,
    /// How long a burst of changes is gathered before one allocation pass.
    #[arg(long, default_value_t = 100)]
    debounce_ms: u64,
    /// The cluster's Service range (repeatable): no VIP is ever inside it.
    #[arg(long = "service-cidr")]
    service_cidrs: Vec<ipnet::IpNet>,
    /// The cluster's Pod range (repeatable): no VIP is ever inside it.
    #[arg(long = "pod-cidr")]
    pod_cidrs: Vec<ipnet::IpNet>,
    /// The agents' `--lease-duration-ms`: a director whose Lease (in the lease
    /// namespace) was not renewed for this long is not named as announcing a VIP.
    /// 0: the Leases are not followed; every director that says it announces is named.
    #[arg(long, default_value_t = 2000)]
    agent_lease_duration_ms: u64,
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "kube-lvs-operator".into())
}

fn main() -> std::process::ExitCode {
    // Directives match targets by prefix: `kube=warn` would silence `kubelvs_operator` too.
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,kube_client=warn,kube_runtime=warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            error!(error = %e, "no tokio runtime");
            return std::process::ExitCode::from(1);
        }
    };
    match rt.block_on(run(args)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            error!("{e:#}");
            eprintln!("kube-lvs-operator: {e:#}");
            std::process::ExitCode::from(2)
        }
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    let identity = args.identity.clone().unwrap_or_else(hostname);
    let client = kube::Client::try_default()
        .await
        .context("no usable kubeconfig or in-cluster ServiceAccount")?;
    controller::check_crds(&client).await?;
    let metrics = Metrics::new();
    let listener = tokio::net::TcpListener::bind(args.metrics_address)
        .await
        .with_context(|| format!("--metrics-address {}", args.metrics_address))?;
    tokio::spawn(kubelvs_observe::serve(listener, metrics.observed.clone()));
    // A standby is ready too: it serves its purpose by waiting.
    metrics.observed.set_ready(true);

    let duration = Duration::from_secs(args.lease_duration_seconds.max(3));
    let mut elector = Elector::new(
        client.clone(),
        &args.lease_namespace,
        &args.lease_name,
        &identity,
        duration,
    );
    info!(
        identity,
        lease = format!("{}/{}", args.lease_namespace, args.lease_name),
        "waiting to lead"
    );
    tokio::select! {
        _ = elector.acquire(Duration::from_secs(2)) => {}
        _ = shutdown() => return Ok(()),
    }
    info!(identity, "leading");
    metrics.leader.set(1);
    let agent_leases = (args.agent_lease_duration_ms > 0).then(|| controller::AgentLeases {
        namespace: args.lease_namespace.clone(),
        duration: Duration::from_millis(args.agent_lease_duration_ms.max(100)),
    });
    let controllers = controller::run_controllers(
        client,
        identity.clone(),
        metrics.clone(),
        agent_leases,
        Duration::from_millis(args.debounce_ms),
        args.service_cidrs
            .iter()
            .chain(&args.pod_cidrs)
            .copied()
            .collect(),
    );
    tokio::select! {
        lost = elector.hold() => {
            metrics.leader.set(0);
            // Stop at once: another replica may lead from now on.
            Err(anyhow::Error::new(lost).context("stopped leading"))
        }
        r = controllers => {
            elector.release().await;
            r
        }
        _ = shutdown() => {
            elector.release().await;
            info!(identity, "lease released; exiting");
            Ok(())
        }
    }
}

async fn shutdown() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
