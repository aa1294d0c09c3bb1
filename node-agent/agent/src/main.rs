//! `kube-lvs-agent`: flags, the dataplanes this node runs, and the agent's loop.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::mpsc;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Parser, ValueEnum};
use kubelvs_agent::cluster::{status_writer, ClusterSource};
use kubelvs_agent::metrics::Metrics;
use kubelvs_agent::node::Node;
use kubelvs_agent::{run, state_files, Event, Settings, Source};
use kubelvs_model::Dataplane;
use kubelvs_netconf::{NetKernel, Netconf, NetconfOptions, RtNetlink};
use kubelvs_planner::NodeIdentity;
use tracing::{info, warn};

/// Planning and applying at 100,000 objects is mostly allocation: glibc's malloc spent
/// about 40% of an edit's apply in its own bookkeeping; with jemalloc an edit at
/// 10,000 x 10 takes 330 ms instead of 544 ms, at the same resident memory
/// (BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum DataplaneFlag {
    Ipvs,
    Xdp,
    /// This node directs nothing: it only carries real-server VIPs.
    None,
}

/// Where the XDP director runs on `--interface`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum XdpModeFlag {
    /// In the driver, before any socket buffer exists: the fast path. The interface's
    /// driver must support XDP.
    Driver,
    /// In the kernel's network stack, on any interface: a bridge, or a driver without
    /// XDP. Slower, and frames a bridge only forwards between its ports never reach
    /// it: the director sees what the bridge delivers to the node itself.
    Generic,
}

/// Programs this node's part of the kubelvs.io objects into kernel IPVS or the XDP
/// director, configures VIPs and ARP suppression, and health-checks real servers.
#[derive(Debug, Parser)]
#[command(name = "kube-lvs-agent", version)]
struct Args {
    /// Standalone mode: read VirtualServices, RealServers and AddressPools from this
    /// multi-document YAML file (re-read when it changes or on SIGHUP). Without it the
    /// agent runs in cluster mode: watches through the in-cluster ServiceAccount or
    /// `KUBECONFIG`, and writes this node's status entries.
    #[arg(long)]
    config: Option<PathBuf>,
    /// This node's name (as RealServer.spec.nodeName and directors' selectors see it).
    #[arg(long)]
    node: String,
    /// A label of this node, `key=value` (repeatable), for `directors.nodeSelector`.
    #[arg(long = "node-label", value_parser = parse_label)]
    node_labels: Vec<(String, String)>,
    /// This node's addresses (repeatable). Default: every address of its interfaces.
    #[arg(long = "node-address")]
    node_addresses: Vec<IpAddr>,
    /// The interface facing clients, directors and real servers: director VIPs go on
    /// it, ARP suppression is set on it, the XDP programs attach to it.
    #[arg(long)]
    interface: Option<String>,
    /// Dataplanes this node runs for the virtual services it directs (repeatable).
    #[arg(long = "dataplane", value_enum, default_values_t = [DataplaneFlag::Ipvs])]
    dataplanes: Vec<DataplaneFlag>,
    /// The XDP director's outer IPv4 source for IPIP (default: first IPv4 node address).
    #[arg(long)]
    xdp_director_address: Option<Ipv4Addr>,
    /// The XDP director's outer IPv6 source for IPv6-in-IPv6.
    #[arg(long)]
    xdp_director_address6: Option<Ipv6Addr>,
    /// Where the XDP director attaches: driver (native) or generic.
    #[arg(long, value_enum, default_value_t = XdpModeFlag::Driver)]
    xdp_mode: XdpModeFlag,
    /// Capacity of the XDP director: VIP:port/protocol entries.
    #[arg(long, default_value_t = 64)]
    xdp_max_vips: u32,
    /// Capacity of the XDP director: distinct real servers (address:port).
    #[arg(long, default_value_t = 4096)]
    xdp_max_real_servers: u32,
    /// Maglev ring size per VIP (a prime; 65537 by default).
    #[arg(long, default_value_t = 65_537)]
    xdp_ring_size: u32,
    /// bpffs directory for the XDP director's pinned maps and link.
    #[arg(long, default_value = "/sys/fs/bpf/kubelvs")]
    xdp_pin_dir: PathBuf,
    /// TUN real servers on this node decapsulate with kube-lvs's XDP program (for
    /// kernels without the ipip module).
    #[arg(long)]
    xdp_decap: bool,
    /// Where ownership state lives (what kube-lvs created, so a restart adopts it).
    #[arg(long, default_value = "/run/kube-lvs")]
    state_dir: PathBuf,
    /// How long a removed real server keeps its connections.
    #[arg(long, default_value_t = 300)]
    drain_timeout_seconds: u64,
    /// Full re-apply every this many seconds even without changes.
    #[arg(long, default_value_t = 30)]
    resync_seconds: u64,
    /// At most this many health probes in flight.
    #[arg(long, default_value_t = 256)]
    health_concurrency: usize,
    /// How often traffic counters are read into /metrics (an IPVS read is one dump
    /// per service).
    #[arg(long, default_value_t = 15)]
    traffic_interval_seconds: u64,
    /// Where network sysctls are written (arp_ignore, forwarding, IPVS): /proc/sys,
    /// or in a container without privileges a directory whose `net` is the host's
    /// /proc/sys/net mounted read-write (the chart's DaemonSet does that).
    #[arg(long, default_value = "/proc/sys")]
    proc_sys: PathBuf,
    /// Serve /metrics, /healthz and /readyz here: `IP:PORT` (an IPv6 address with or
    /// without brackets). The chart passes the node's address: on 0.0.0.0 the
    /// endpoint also answers on every VIP this node carries.
    #[arg(long, default_value = "0.0.0.0:9641", value_parser = parse_listen)]
    metrics_address: SocketAddr,
    /// Remove everything kube-lvs owns on this node and restore what it changed, then
    /// exit (uninstall; run it with the flags the agent ran with, once it has
    /// stopped). Exits non-zero if anything could not be undone.
    #[arg(long)]
    cleanup: bool,
    /// Cluster mode: `NAMESPACE/NAME` of the ConfigMap the chart's pre-delete hook
    /// creates. If it appears while the agent runs, stopping is an uninstall: the agent
    /// removes what kube-lvs owns on this node, as `--cleanup` does, before it exits.
    #[arg(long, value_parser = parse_marker)]
    uninstall_marker: Option<(String, String)>,
    /// Cluster mode: the namespace of the agents' Leases. A director renews one
    /// (`kubelvs-agent-<node>`), and each VIP in an `l2` pool is announced (ARP/NDP)
    /// by one live director only. Without it every director announces its VIPs.
    #[arg(long)]
    lease_namespace: Option<String>,
    /// A director whose Lease this agent has not seen renewed for this long is dead;
    /// Leases are renewed every quarter of it.
    #[arg(long, default_value_t = 2000)]
    lease_duration_ms: u64,
    /// BIRD 2's daemon (`birdc` beside it): started, with a configuration of the
    /// agent's own in the state directory, when an AddressPool announces by BGP.
    #[arg(long, default_value = "/usr/sbin/bird")]
    bird: PathBuf,
    /// On stop, how long BGP announcements stay up tagged GRACEFUL_SHUTDOWN before
    /// they are withdrawn (routers that honour it move traffic away first).
    #[arg(long, default_value_t = 3)]
    bgp_drain_seconds: u64,
}

/// The host's network configuration (VIPs, ARP suppression, tunnels), owned as
/// recorded in the state directory.
fn netconf(args: &Args, kernel: RtNetlink) -> anyhow::Result<Netconf<RtNetlink>> {
    Ok(Netconf::new(
        kernel,
        NetconfOptions {
            interface: args.interface.clone(),
            xdp_decap: args.xdp_decap,
        },
        args.state_dir.join(state_files::NETCONF_OWNED),
    )?)
}

/// `--cleanup`: the dataplanes that own something here remove it.
fn cleanup(args: &Args, kernel: RtNetlink) -> anyhow::Result<()> {
    let mut dataplanes: Vec<Box<dyn Dataplane>> = vec![Box::new(netconf(args, kernel)?)];
    // IPVS owns something only if an agent recorded it (the FullNAT table included).
    let ipvs_owned = args.state_dir.join(state_files::IPVS_OWNED);
    if ipvs_owned.exists() {
        let table = kubelvs_ipvs::IpvsDataplane::new(ipvs_owned)
            .context("opening kernel IPVS to remove kube-lvs's services")?;
        dataplanes.push(Box::new(kubelvs_ipvs::IpvsDirector::new(
            table,
            kubelvs_ipvs::SystemHost::with_root(&args.proc_sys),
        )));
    }
    let pins = Some(args.xdp_pin_dir.as_path()).filter(|d| d.exists());
    report_cleanup(kubelvs_agent::cleanup::cleanup(
        &mut dataplanes,
        pins,
        &args.state_dir,
    ))
}

/// `IP:PORT`, also an IPv6 address without brackets (`2001:db8::1:9641`, as a
/// Kubernetes downward-API address followed by `:PORT` gives it).
fn parse_listen(s: &str) -> Result<SocketAddr, String> {
    if let Ok(a) = s.parse() {
        return Ok(a);
    }
    let (ip, port) = s
        .rsplit_once(':')
        .ok_or_else(|| format!("{s:?}: expected IP:PORT"))?;
    let ip: IpAddr = ip.parse().map_err(|e| format!("{s:?}: {e}"))?;
    let port: u16 = port.parse().map_err(|e| format!("{s:?}: port: {e}"))?;
    Ok(SocketAddr::new(ip, port))
}

fn parse_marker(s: &str) -> Result<(String, String), String> {
    match s.split_once('/') {
        Some((ns, name)) if !ns.is_empty() && !name.is_empty() => {
            Ok((ns.to_owned(), name.to_owned()))
        }
        _ => Err(format!("{s:?}: expected NAMESPACE/NAME")),
    }
}

fn parse_label(s: &str) -> Result<(String, String), String> {
    let (k, v) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?}: expected key=value"))?;
    Ok((k.to_owned(), v.to_owned()))
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let args = Args::parse();
    if let Some(c) = args
        .config
        .as_ref()
        .filter(|c| !args.cleanup && !c.exists())
    {
        bail!("--config {}: no such file", c.display());
    }
    std::fs::create_dir_all(&args.state_dir)
        .with_context(|| format!("--state-dir {}", args.state_dir.display()))?;

    let mut kernel = RtNetlink::new()
        .context("opening rtnetlink")?
        .with_proc_sys(&args.proc_sys);
    let addresses = if args.node_addresses.is_empty() {
        kernel
            .addresses()
            .context("reading this node's addresses")?
            .into_iter()
            .filter(|a| a.ifname != "lo")
            .map(|a| a.addr)
            .collect()
    } else {
        args.node_addresses.clone()
    };
    let node = NodeIdentity {
        name: args.node.clone(),
        labels: args.node_labels.iter().cloned().collect(),
        addresses: addresses.clone(),
        ..Default::default()
    };

    if args.cleanup {
        return cleanup(&args, kernel);
    }

    let (wake, events) = mpsc::channel::<Event>();
    let mut dataplanes: Vec<Box<dyn Dataplane>> = vec![Box::new(netconf(&args, kernel)?)];
    if args.dataplanes.contains(&DataplaneFlag::Ipvs) {
        let mut table =
            kubelvs_ipvs::IpvsDataplane::new(args.state_dir.join(state_files::IPVS_OWNED))
                .context("opening kernel IPVS (is the ip_vs module available?)")?;
        table.set_drain_timeout(Duration::from_secs(args.drain_timeout_seconds));
        dataplanes.push(Box::new(kubelvs_ipvs::IpvsDirector::new(
            table,
            kubelvs_ipvs::SystemHost::with_root(&args.proc_sys),
        )));
    }
    if args.dataplanes.contains(&DataplaneFlag::Xdp) {
        let ifname = args
            .interface
            .clone()
            .context("--dataplane xdp needs --interface")?;
        let director_addr = args
            .xdp_director_address
            .or_else(|| {
                addresses.iter().find_map(|a| match a {
                    IpAddr::V4(a) => Some(*a),
                    IpAddr::V6(_) => None,
                })
            })
            .context("--dataplane xdp needs --xdp-director-address (no IPv4 node address)")?;
        let mut opts = kubelvs_xdp::DirectorOptions::new(director_addr);
        opts.director_addr6 = args.xdp_director_address6;
        opts.pin_dir = Some(args.xdp_pin_dir.clone());
        opts.drain_timeout = Duration::from_secs(args.drain_timeout_seconds);
        opts.max_vips = args.xdp_max_vips;
        opts.max_reals = args.xdp_max_real_servers;
        opts.ring_size = args.xdp_ring_size;
        opts.mode = match args.xdp_mode {
            XdpModeFlag::Driver => kubelvs_xdp::XdpMode::Driver,
            XdpModeFlag::Generic => kubelvs_xdp::XdpMode::Skb,
        };
        let director = kubelvs_xdp::XdpDirector::attach_with(&ifname, opts)
            .with_context(|| format!("attaching the XDP director to {ifname}"))?;
        // Forwarding must outlive this process: say now if it will not.
        for caveat in kubelvs_xdp::preflight::caveats(&ifname, Some(&args.xdp_pin_dir)) {
            warn!(%caveat, "XDP forwarding will stop with the agent");
        }
        // DR needs each real server's MAC: a change is applied when the kernel learns it.
        let wake = wake.clone();
        kubelvs_xdp::watch_neighbours(&ifname, move || wake.send(Event::Neighbours).is_ok())
            .with_context(|| format!("following the neighbour table of {ifname}"))?;
        dataplanes.push(Box::new(kubelvs_xdp::XdpDataplane::new(
            director,
            kubelvs_xdp::KernelNeighbours {
                ifname: Some(ifname),
            },
        )));
    }
    if args.xdp_decap {
        let ifname = args
            .interface
            .clone()
            .context("--xdp-decap needs --interface")?;
        dataplanes.push(Box::new(kubelvs_xdp::DecapDataplane::new(&ifname)));
    }
    let node_dataplanes = Node::new(dataplanes);
    info!(node = %args.node, dataplanes = ?node_dataplanes, "starting");

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let metrics = Metrics::new();
    {
        let listener = rt
            .block_on(tokio::net::TcpListener::bind(args.metrics_address))
            .with_context(|| format!("--metrics-address {}", args.metrics_address))?;
        rt.spawn(kubelvs_observe::serve(listener, metrics.observed.clone()));
        let wake = wake.clone();
        rt.spawn(async move {
            use tokio::signal::unix::{signal, SignalKind};
            let (Ok(mut hup), Ok(mut term), Ok(mut int)) = (
                signal(SignalKind::hangup()),
                signal(SignalKind::terminate()),
                signal(SignalKind::interrupt()),
            ) else {
                return;
            };
            loop {
                let ev = tokio::select! {
                    _ = hup.recv() => Event::Reload,
                    _ = term.recv() => Event::Stop,
                    _ = int.recv() => Event::Stop,
                };
                if wake.send(ev).is_err() {
                    return;
                }
            }
        });
    }
    let mut marker = None;
    let source = match &args.config {
        Some(path) => {
            let wake = wake.clone();
            if let Err(e) = kubelvs_agent::file_watch::follow(path, move |complete| {
                let event = if complete {
                    Event::Complete
                } else {
                    Event::Reload
                };
                wake.send(event).is_ok()
            }) {
                warn!(error = %e, path = %path.display(), "no inotify watch on the configuration's directory: changes are seen by polling, within 100 ms");
            }
            Source::File(path.clone())
        }
        None => {
            let client = rt
                .block_on(kube::Client::try_default())
                .context("cluster mode: no usable kubeconfig or in-cluster ServiceAccount (or pass --config FILE)")?;
            let leases = args.lease_namespace.as_ref().map(|namespace| {
                kubelvs_agent::liveness::LeaseSettings {
                    namespace: namespace.clone(),
                    node: args.node.clone(),
                    duration: Duration::from_millis(args.lease_duration_ms.max(100)),
                    interface: args.interface.clone(),
                }
            });
            let watches = ClusterSource::start(
                rt.handle(),
                client.clone(),
                &args.node,
                leases,
                wake.clone(),
            )?;
            marker = args.uninstall_marker.as_ref().map(|(ns, name)| {
                kubelvs_agent::cluster::UninstallMarker::follow(
                    rt.handle(),
                    client.clone(),
                    ns,
                    name,
                )
            });
            let (tx, rx) = tokio::sync::watch::channel(Default::default());
            // What a previous run of this agent left: what is unchanged is not written
            // again, and entries the first plan no longer wants are removed.
            let found = rt.block_on(kubelvs_agent::cluster::own_entries(&client, &args.node));
            let at_start = kubelvs_agent::cluster::observations_at_start(&found);
            rt.spawn(status_writer(
                client.clone(),
                kubelvs_agent::status::field_manager(&args.node),
                rx,
                Duration::from_millis(200),
                found,
            ));
            let (events, notices) = tokio::sync::mpsc::unbounded_channel();
            rt.spawn(kubelvs_agent::events::publisher(
                client,
                args.node.clone(),
                notices,
            ));
            Source::Cluster {
                watches,
                status: std::sync::Arc::new(tx),
                events,
                at_start,
            }
        }
    };
    let settings = Settings {
        node,
        poll: Duration::from_millis(100),
        // A burst of writes (an editor's, a script's) arrives within milliseconds.
        debounce: Duration::from_millis(20),
        resync: Duration::from_secs(args.resync_seconds),
        health_concurrency: args.health_concurrency,
        traffic_interval: Duration::from_secs(args.traffic_interval_seconds),
        state_dir: Some(args.state_dir.clone()),
        bird: args.bird.clone(),
        bgp_drain: Duration::from_secs(args.bgp_drain_seconds),
    };
    let handle = rt.handle().clone();
    let mut node = run(
        settings,
        source,
        node_dataplanes,
        handle,
        events,
        wake,
        metrics,
    )?;
    if !marker.is_some_and(|m| m.uninstalling()) {
        info!("stopped: the dataplanes stay as they are");
        return Ok(());
    }
    info!("stopped for an uninstall: removing what kube-lvs owns on this node");
    let pins = args
        .dataplanes
        .contains(&DataplaneFlag::Xdp)
        .then_some(args.xdp_pin_dir.as_path());
    report_cleanup(kubelvs_agent::cleanup::cleanup(
        node.dataplanes_mut(),
        pins,
        &args.state_dir,
    ))
}

/// Logs what a cleanup did; an error if it left something.
fn report_cleanup(c: kubelvs_agent::cleanup::Cleanup) -> anyhow::Result<()> {
    for line in &c.done {
        info!("cleanup: {line}");
    }
    for line in &c.failed {
        tracing::error!("cleanup: {line}");
    }
    if !c.failed.is_empty() {
        bail!(
            "cleanup left {} things behind (see above); run kube-lvs-agent --cleanup once fixed",
            c.failed.len()
        );
    }
    info!("cleanup: kube-lvs left nothing on this node");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_addresses_with_or_without_ipv6_brackets() {
        for (text, want) in [
            ("0.0.0.0:9641", "0.0.0.0:9641"),
            ("192.0.2.7:9641", "192.0.2.7:9641"),
            ("[2001:db8::1]:9641", "[2001:db8::1]:9641"),
            ("2001:db8::1:9641", "[2001:db8::1]:9641"),
        ] {
            assert_eq!(parse_listen(text).unwrap(), want.parse().unwrap(), "{text}");
        }
        for bad in ["9641", "node:9641", "192.0.2.7:port", "192.0.2.7"] {
            assert!(parse_listen(bad).is_err(), "{bad}");
        }
    }
}
