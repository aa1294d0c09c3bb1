//! `kubectl lvs` (the `kubectl-lvs` plugin): the cluster's LVS table, as `ipvsadm -Ln`
//! prints one node's, from the API alone: every virtual service with its VIP,
//! scheduler and forwarding, each director's programmed state, and every real server
//! with its weight and its health as each director sees it; with `--stats`, as
//! `ipvsadm -Ln --stats`, the traffic the agents count, summed over directors: read
//! from the agents' metrics through the API server's proxy to their pods (or from
//! `--agent URL`s), never from status.
//!
//! `kubectl lvs [-n NAMESPACE] [--stats [--agents-namespace NS | --agent URL ...]]
//! [-o text|json|yaml]` (all namespaces by default; json and yaml carry the traffic
//! with `--stats`; the agents' pods are looked for in `kube-lvs` unless
//! `--agents-namespace` names the release's namespace).

mod agents;
mod table;

use anyhow::Context;
use kube::api::{Api, ListParams};
use kubelvs_crds::{RealServer, VirtualService};

const USAGE: &str = "usage: kubectl lvs [-n NAMESPACE] [--stats [--agents-namespace NS | --agent URL ...]] [-o text|json|yaml]";

enum Output {
    Text,
    Json,
    Yaml,
}

fn main() -> std::process::ExitCode {
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("kubectl lvs: {e:#}");
            std::process::ExitCode::from(1)
        }
    }
}

fn run() -> anyhow::Result<()> {
    let mut namespace: Option<String> = None;
    let mut output = Output::Text;
    let mut stats = false;
    let mut agents_namespace: Option<String> = None;
    let mut agent_urls: Vec<String> = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "-n" | "--namespace" => namespace = Some(args.next().context(USAGE)?),
            "-A" | "--all-namespaces" => namespace = None,
            "--stats" => stats = true,
            "--agents-namespace" => agents_namespace = Some(args.next().context(USAGE)?),
            "--agent" => agent_urls.push(args.next().context(USAGE)?),
            "-o" | "--output" => {
                output = match args.next().as_deref() {
                    Some("text") | Some("wide") => Output::Text,
                    Some("json") => Output::Json,
                    Some("yaml") => Output::Yaml,
                    other => anyhow::bail!(
                        "-o {}: one of text, json, yaml\n{USAGE}",
                        other.unwrap_or("")
                    ),
                }
            }
            "-h" | "--help" => {
                println!("{USAGE}");
                return Ok(());
            }
            other => anyhow::bail!("unknown argument {other}\n{USAGE}"),
        }
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (virtual_services, real_servers, traffic) = rt.block_on(async {
        let client = kube::Client::try_default()
            .await
            .context("no usable kubeconfig (KUBECONFIG or ~/.kube/config)")?;
        let (vs_api, rs_api): (Api<VirtualService>, Api<RealServer>) = match &namespace {
            Some(ns) => (
                Api::namespaced(client.clone(), ns),
                Api::namespaced(client.clone(), ns),
            ),
            None => (Api::all(client.clone()), Api::all(client.clone())),
        };
        let lp = ListParams::default();
        let vs = vs_api
            .list(&lp)
            .await
            .context("listing virtualservices.kubelvs.io (are the CRDs installed?)")?;
        let rs = rs_api
            .list(&lp)
            .await
            .context("listing realservers.kubelvs.io")?;
        let traffic = if !stats {
            None
        } else if !agent_urls.is_empty() {
            let mut t = agents::Traffic::default();
            for url in &agent_urls {
                match agents::from_url(url).await {
                    Ok(text) => t.add_scrape(&text),
                    Err(e) => eprintln!("kubectl lvs: {e:#} (not counted)"),
                }
            }
            Some(t)
        } else {
            let namespace = agents_namespace
                .as_deref()
                .unwrap_or(agents::DEFAULT_AGENTS_NAMESPACE);
            let (t, read, warnings) = agents::from_pods(&client, namespace).await;
            for w in &warnings {
                eprintln!("kubectl lvs: {w}");
            }
            if read == 0 {
                eprintln!(
                    "kubectl lvs: no agent pod's metrics read ({}); \
                     --agent URL reads agents that do not run as pods",
                    agents::AGENT_SELECTOR
                );
            }
            Some(t)
        };
        anyhow::Ok((vs.items, rs.items, traffic))
    })?;
    let rows = table::table(&virtual_services, &real_servers, traffic.as_ref());
    match output {
        Output::Text if stats => print!("{}", table::render_stats(&rows)),
        Output::Text => print!("{}", table::render(&rows)),
        Output::Json => println!("{}", serde_json::to_string_pretty(&rows)?),
        Output::Yaml => print!("{}", serde_yaml::to_string(&rows)?),
    }
    Ok(())
}
