//! The demo without Kubernetes: every agent reads the same YAML file
//! (examples/lab.yaml), as keepalived users run it.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::lab::{
    applies, poll, set_weight, weights_of, Agent, Config, Dataplane, Result, Setup, DIRECTOR_LABEL,
};

pub fn run(agent: &Path, source: &Config, n: usize, dataplane: Dataplane) -> Result<()> {
    let config_text = dataplane.adapt(&source.text);
    println!("kube-lvs demo: a load balancer in network namespaces on this machine\n");
    println!("[1/6] building the lab");
    let mut setup = Setup::build(dataplane)?;
    let config = setup.leftovers.dir.join("lab.yaml");
    std::fs::write(&config, &config_text).map_err(|e| e.to_string())?;
    println!("      config {}{}", source.name, dataplane.adapted_note());

    println!("\n[2/6] starting kube-lvs-agent, standalone, on each host");
    let started = Instant::now();
    let file = config.display().to_string();
    let mut agents = Vec::new();
    for rs in &setup.lab.real_servers {
        let args = setup.real_server_args(rs, &["--config", &file]);
        agents.push(Agent::start(agent, rs, &args, &setup.leftovers.dir, &[])?);
    }
    let args = setup.director_args(&["--config", &file, "--node-label", DIRECTOR_LABEL]);
    agents.push(Agent::start(
        agent,
        &setup.lab.director,
        &args,
        &setup.leftovers.dir,
        &[],
    )?);
    // About a second on a host; under the microVM's emulated CPU (`--ipvs-vm`) four
    // agents building their validation programs on one vCPU take tens of seconds.
    setup.wait_serving(started, &agents, Duration::from_secs(120))?;

    let weights = weights_of(&config_text);
    println!("\n[3/6] {n} requests through the VIP");
    setup.spread(n, &weights)?;

    let victim = 1;
    let name = setup.lab.real_servers[victim].role.clone();
    println!("\n[4/6] stopping {name}'s HTTP server");
    setup.take_out(victim, n, &weights)?;

    println!("\n[5/6] starting {name}'s HTTP server again");
    setup.bring_back(victim, n, &weights)?;

    let (changed, to) = ("rs3", 1);
    let from = weights
        .iter()
        .find(|(n, _)| n == changed)
        .map_or(0, |w| w.1);
    println!("\n[6/6] changing {changed}'s weight {from} -> {to} in the file, live");
    let before = applies(&setup.lab).unwrap_or(0.0);
    let edited = set_weight(&config_text, changed, to)?;
    let tmp = config.with_extension("tmp");
    std::fs::write(&tmp, &edited).map_err(|e| e.to_string())?;
    let edit = Instant::now();
    std::fs::rename(&tmp, &config).map_err(|e| e.to_string())?;
    poll(
        Duration::from_secs(10),
        "the agent applying the edit",
        || (applies(&setup.lab)? > before).then_some(()),
    )?;
    println!(
        "      the director's agent applied it {:.2} s after the file changed",
        edit.elapsed().as_secs_f64()
    );
    setup.spread(n, &weights_of(&edited))?;
    setup.print_counters();

    println!("\ncleaning up");
    drop(agents);
    drop(setup);
    Ok(())
}
