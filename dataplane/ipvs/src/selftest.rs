//! Real-kernel checks of the commands the scenarios do not reach: GET_INFO,
//! GET/SET_CONFIG, IPv6 and fwmark services, GET_SERVICE (doit), tunnel
//! destinations, ZERO, GET/DEL_DAEMON, errno mapping, FLUSH.
//!
//! **Run it only in a network namespace of its own: it flushes the IPVS table.**
//! The namespace needs a routing table (`ip link set lo up` is enough): without one
//! the kernel refuses every IPv4 destination with EINVAL (`inet_addr_type` answers
//! "broadcast" when there is no table). The microVM harness (`tests/ipvs-vm`, in CI)
//! calls [`run`] in its scenarios boot and [`module_reload`] in a boot of its own,
//! and reports each case.

use std::net::IpAddr;

use crate::client::IpvsClient;
use crate::codec::{
    Command, DestAttrs, IpvsMessage, Netmask, Timeouts, AF_INET, AF_INET6, FWD_MASQ, FWD_TUNNEL,
    SVC_F_PERSISTENT, SYNC_MASTER, TUN_TYPE_GUE,
};
use crate::error::Error;
use crate::table::{DestConfig, DestId, KernelService, ServiceConfig, ServiceId};

/// One named check and its outcome (a short description, or what went wrong).
pub type Case = (&'static str, Result<String, String>);

/// Runs every check with `client` (in a scratch network namespace: it flushes).
pub fn run(client: &mut IpvsClient) -> Vec<Case> {
    let mut out: Vec<Case> = Vec::new();
    let mut case = |name: &'static str, r: Result<String, String>| out.push((name, r));
    case(
        "selftest_flush_start",
        client.flush().map(|()| "FLUSH".into()).map_err(s),
    );
    case("selftest_info", info(client));
    case("selftest_timeouts", timeouts(client));
    case("selftest_ipv6_service", ipv6(client));
    case("selftest_fwmark_service", fwmark(client));
    case("selftest_tunnel_dest", tunnel(client));
    case("selftest_errno_mapping", errnos(client));
    case("selftest_zero", zero(client));
    case("selftest_daemon", daemon(client));
    case("selftest_flush", flush(client));
    out
}

fn s(e: Error) -> String {
    e.to_string()
}

fn ensure(cond: bool, what: impl FnOnce() -> String) -> Result<(), String> {
    if cond {
        Ok(())
    } else {
        Err(what())
    }
}

fn info(c: &mut IpvsClient) -> Result<String, String> {
    let i = c.info().map_err(s)?;
    let v = i.version.ok_or("GET_INFO without VERSION")?;
    ensure(v >> 16 == 1, || format!("unexpected IPVS version {v:#x}"))?;
    let size = i.conn_tab_size.ok_or("GET_INFO without CONN_TAB_SIZE")?;
    Ok(format!(
        "version {}.{}.{}, connection table {size}",
        v >> 16,
        (v >> 8) & 0xff,
        v & 0xff
    ))
}

fn timeouts(c: &mut IpvsClient) -> Result<String, String> {
    let before = c.timeouts().map_err(s)?;
    let tcp = before.tcp.ok_or("GET_CONFIG without TIMEOUT_TCP")?;
    // 0 means "unchanged": change only the TCP one and check the others stay.
    c.set_timeouts(Timeouts {
        tcp: Some(tcp + 100),
        tcp_fin: Some(0),
        udp: None,
    })
    .map_err(s)?;
    let after = c.timeouts().map_err(s)?;
    c.set_timeouts(Timeouts {
        tcp: Some(tcp),
        ..Timeouts::default()
    })
    .map_err(s)?;
    ensure(
        after.tcp == Some(tcp + 100) && after.tcp_fin == before.tcp_fin && after.udp == before.udp,
        || format!("SET_CONFIG: before {before:?}, after {after:?}"),
    )?;
    Ok(format!("{before:?}; tcp -> {} and back", tcp + 100))
}

fn add(c: &mut IpvsClient, id: &ServiceId, cfg: &ServiceConfig) -> Result<(), String> {
    c.execute(&IpvsMessage::new(Command::NewService).with_service(cfg.to_attrs(id)))
        .map_err(s)
}

fn add_dest(
    c: &mut IpvsClient,
    id: &ServiceId,
    d: &DestId,
    cfg: &DestConfig,
) -> Result<(), String> {
    c.execute(
        &IpvsMessage::new(Command::NewDest)
            .with_service(id.to_attrs())
            .with_dest(cfg.to_attrs(d)),
    )
    .map_err(s)
}

fn get(c: &mut IpvsClient, id: &ServiceId) -> Result<KernelService, String> {
    let a = c
        .service(id)
        .map_err(s)?
        .ok_or_else(|| format!("GET_SERVICE {id}: no reply"))?;
    let mut k = KernelService::from_attrs(&a).ok_or("GET_SERVICE reply without identity")?;
    k.dests = c.dump_dests(id).map_err(s)?;
    Ok(k)
}

fn ipv6(c: &mut IpvsClient) -> Result<String, String> {
    let vip: IpAddr = "2001:db8::10".parse().map_err(|_| "addr")?;
    let id = ServiceId::Inet {
        protocol: 6,
        addr: vip,
        port: 443,
    };
    let cfg = ServiceConfig {
        scheduler: "wlc".into(),
        flags: SVC_F_PERSISTENT,
        timeout: 120,
        netmask: Netmask::V6Prefix(64),
    };
    add(c, &id, &cfg)?;
    let rs = DestId {
        addr: "2001:db8::21".parse().map_err(|_| "addr")?,
        port: 8443,
    };
    add_dest(c, &id, &rs, &DestConfig::masq(7))?;
    let k = get(c, &id)?;
    ensure(k.id == id && k.config == cfg, || {
        format!("read back {:?} {:?}", k.id, k.config)
    })?;
    let d = k.dests.first().ok_or("no destination read back")?;
    ensure(
        k.dests.len() == 1 && d.id == rs && d.config.weight == 7 && d.config.fwd_method == FWD_MASQ,
        || format!("destination read back as {d:?}"),
    )?;
    c.execute(
        &IpvsMessage::new(Command::DelDest)
            .with_service(id.to_attrs())
            .with_dest(DestAttrs {
                addr_family: Some(AF_INET6),
                addr: Some(rs.addr),
                port: Some(rs.port),
                ..Default::default()
            }),
    )
    .map_err(s)?;
    c.execute(&IpvsMessage::new(Command::DelService).with_service(id.to_attrs()))
        .map_err(s)?;
    Ok(format!(
        "{id} wlc persistent 120 /64 -> {rs} w7 read back exactly, deleted"
    ))
}

fn fwmark(c: &mut IpvsClient) -> Result<String, String> {
    let id = ServiceId::Fwmark {
        af: AF_INET,
        mark: 42,
    };
    let cfg = ServiceConfig {
        scheduler: "rr".into(),
        flags: 0,
        timeout: 0,
        netmask: Netmask::host(AF_INET),
    };
    add(c, &id, &cfg)?;
    // fwmark DR destinations use port 0.
    let rs = DestId {
        addr: "192.0.2.51".parse().map_err(|_| "addr")?,
        port: 0,
    };
    let dr = DestConfig {
        fwd_method: crate::codec::FWD_DROUTE,
        ..DestConfig::masq(3)
    };
    add_dest(c, &id, &rs, &dr)?;
    let listed = c.dump_services().map_err(s)?;
    ensure(listed.iter().any(|k| k.id == id), || {
        format!("fwmark service missing from the dump: {listed:?}")
    })?;
    let k = get(c, &id)?;
    ensure(
        k.config == cfg && k.dests.len() == 1 && k.dests[0].config.same_as(&dr),
        || format!("read back {k:?}"),
    )?;
    c.execute(&IpvsMessage::new(Command::DelService).with_service(id.to_attrs()))
        .map_err(s)?;
    Ok("FWM 42 rr -> 192.0.2.51 DR w3 read back, deleted".into())
}

fn tunnel(c: &mut IpvsClient) -> Result<String, String> {
    let id = ServiceId::Inet {
        protocol: 17,
        addr: "203.0.113.99".parse().map_err(|_| "addr")?,
        port: 53,
    };
    add(
        c,
        &id,
        &ServiceConfig {
            scheduler: "sh".into(),
            flags: crate::codec::SVC_F_SCHED1 | crate::codec::SVC_F_SCHED2,
            timeout: 0,
            netmask: Netmask::V4([255, 255, 255, 0].into()),
        },
    )?;
    let rs = DestId {
        addr: "192.0.2.52".parse().map_err(|_| "addr")?,
        port: 53,
    };
    let gue = DestConfig {
        fwd_method: FWD_TUNNEL,
        tun_type: TUN_TYPE_GUE,
        tun_port: 6080,
        tun_flags: crate::codec::TUN_F_CSUM,
        ..DestConfig::masq(2)
    };
    add_dest(c, &id, &rs, &gue)?;
    let k = get(c, &id)?;
    let d = k.dests.first().ok_or("no destination")?;
    ensure(
        d.config.same_as(&gue)
            && k.config.netmask == Netmask::V4([255, 255, 255, 0].into())
            && k.config.flags == crate::codec::SVC_F_SCHED1 | crate::codec::SVC_F_SCHED2,
        || format!("read back {k:?}"),
    )?;
    // One SET_DEST changes the weight and keeps the tunnel.
    c.execute(
        &IpvsMessage::new(Command::SetDest)
            .with_service(id.to_attrs())
            .with_dest(DestConfig { weight: 9, ..gue }.to_attrs(&rs)),
    )
    .map_err(s)?;
    let k = get(c, &id)?;
    ensure(
        k.dests[0].config.weight == 9 && k.dests[0].config.tun_port == 6080,
        || format!("after SET_DEST {:?}", k.dests[0]),
    )?;
    c.execute(&IpvsMessage::new(Command::DelService).with_service(id.to_attrs()))
        .map_err(s)?;
    Ok("UDP sh(fallback,port) /24 -> GUE:6080 csum w2, SET_DEST w9 keeps the tunnel".into())
}

fn errnos(c: &mut IpvsClient) -> Result<String, String> {
    let id = ServiceId::Inet {
        protocol: 6,
        addr: "203.0.113.98".parse().map_err(|_| "addr")?,
        port: 80,
    };
    let cfg = ServiceConfig {
        scheduler: "rr".into(),
        flags: 0,
        timeout: 0,
        netmask: Netmask::host(AF_INET),
    };
    add(c, &id, &cfg)?;
    let again = c.execute(&IpvsMessage::new(Command::NewService).with_service(cfg.to_attrs(&id)));
    ensure(matches!(&again, Err(e) if e.is_exists()), || {
        format!("NEW_SERVICE twice: {again:?}")
    })?;
    let rs = DestId {
        addr: "192.0.2.53".parse().map_err(|_| "addr")?,
        port: 80,
    };
    let missing_dest = c.execute(
        &IpvsMessage::new(Command::SetDest)
            .with_service(id.to_attrs())
            .with_dest(DestConfig::masq(1).to_attrs(&rs)),
    );
    ensure(
        matches!(&missing_dest, Err(e) if e.errno() == Some(libc::ENOENT)),
        || format!("SET_DEST of a missing destination: {missing_dest:?}"),
    )?;
    let bad_sched = c.execute(
        &IpvsMessage::new(Command::SetService).with_service(
            ServiceConfig {
                scheduler: "kubelvs-none".into(),
                ..cfg.clone()
            }
            .to_attrs(&id),
        ),
    );
    ensure(
        matches!(&bad_sched, Err(e) if e.errno() == Some(libc::ENOENT)),
        || format!("unknown scheduler: {bad_sched:?}"),
    )?;
    // A 4-byte FLAGS would be a no-op; a request without FLAGS at all is EINVAL.
    let mut partial = cfg.to_attrs(&id);
    partial.flags = None;
    let no_flags = c.execute(&IpvsMessage::new(Command::SetService).with_service(partial));
    ensure(
        matches!(&no_flags, Err(e) if e.errno() == Some(libc::EINVAL)),
        || format!("SET_SERVICE without FLAGS: {no_flags:?}"),
    )?;
    c.execute(&IpvsMessage::new(Command::DelService).with_service(id.to_attrs()))
        .map_err(s)?;
    let gone = c.execute(&IpvsMessage::new(Command::DelService).with_service(id.to_attrs()));
    ensure(matches!(&gone, Err(e) if e.is_not_found()), || {
        format!("DEL_SERVICE twice: {gone:?}")
    })?;
    // GET_DEST of a missing service: an empty dump, not an error.
    let empty = c.dump_dests(&id).map_err(s)?;
    ensure(empty.is_empty(), || {
        format!("GET_DEST of nothing: {empty:?}")
    })?;
    Ok("EEXIST, ENOENT (dest, scheduler), EINVAL (no FLAGS), ESRCH, empty GET_DEST".into())
}

fn zero(c: &mut IpvsClient) -> Result<String, String> {
    let id = ServiceId::Inet {
        protocol: 6,
        addr: "203.0.113.97".parse().map_err(|_| "addr")?,
        port: 80,
    };
    add(
        c,
        &id,
        &ServiceConfig {
            scheduler: "rr".into(),
            flags: 0,
            timeout: 0,
            netmask: Netmask::host(AF_INET),
        },
    )?;
    c.zero(Some(&id)).map_err(s)?;
    c.zero(None).map_err(s)?;
    c.execute(&IpvsMessage::new(Command::DelService).with_service(id.to_attrs()))
        .map_err(s)?;
    let missing = c.zero(Some(&id));
    ensure(matches!(&missing, Err(e) if e.is_not_found()), || {
        format!("ZERO of a missing service: {missing:?}")
    })?;
    Ok("ZERO of one service and of everything; ESRCH for a missing one".into())
}

fn daemon(c: &mut IpvsClient) -> Result<String, String> {
    let running = c.daemons().map_err(s)?;
    ensure(running.is_empty(), || {
        format!("sync daemons running: {running:?}")
    })?;
    let stop = c.del_daemon(SYNC_MASTER);
    ensure(stop.is_err(), || "DEL_DAEMON of nothing succeeded".into())?;
    Ok(format!(
        "GET_DAEMON empty; DEL_DAEMON of none: {}",
        stop.err().map(|e| e.to_string()).unwrap_or_default()
    ))
}

fn flush(c: &mut IpvsClient) -> Result<String, String> {
    let id = ServiceId::Inet {
        protocol: 6,
        addr: "203.0.113.96".parse().map_err(|_| "addr")?,
        port: 80,
    };
    add(
        c,
        &id,
        &ServiceConfig {
            scheduler: "rr".into(),
            flags: 0,
            timeout: 0,
            netmask: Netmask::host(AF_INET),
        },
    )?;
    c.flush().map_err(s)?;
    let left = c.dump_services().map_err(s)?;
    ensure(left.is_empty(), || format!("after FLUSH: {left:?}"))?;
    Ok("FLUSH empties the table".into())
}

/// The family id is re-resolved after the module is reloaded: `reload` must unload
/// and load ip_vs (e.g. `rmmod ip_vs_* ip_vs; modprobe ip_vs`), which makes the
/// kernel hand out a new generic-netlink id. The next request must still work, on the
/// same client, with the new id. Needs exclusive use of ip_vs (nothing else loaded on it).
pub fn module_reload(client: &mut IpvsClient, reload: impl FnOnce() -> Result<(), String>) -> Case {
    let before = client.family_id();
    let r = reload()
        .and_then(|()| client.services().map_err(s))
        .and_then(|v| {
            ensure(client.family_id() != before, || {
                format!("family id still {before:#x} after the reload")
            })?;
            Ok(format!(
            "family id {before:#x} -> {:#x}, GET_SERVICE answered ({} services) without reopening",
            client.family_id(),
            v.len()
        ))
        });
    ("selftest_module_reload", r)
}
