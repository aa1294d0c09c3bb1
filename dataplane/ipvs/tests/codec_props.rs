//! Property tests of the codec: every message round-trips (encode -> frame -> decode),
//! and every parser survives arbitrary bytes (the CI fuzz target).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use kubelvs_ipvs::codec::*;
use kubelvs_ipvs::nl::{self, NlKind};
use kubelvs_ipvs::{ownership, ServiceId};
use proptest::prelude::*;

fn ip() -> impl Strategy<Value = IpAddr> {
    prop_oneof![
        any::<[u8; 4]>().prop_map(|b| IpAddr::V4(Ipv4Addr::from(b))),
        any::<[u8; 16]>().prop_map(|b| IpAddr::V6(Ipv6Addr::from(b))),
    ]
}

fn name() -> impl Strategy<Value = String> {
    // Open strings: any printable name up to 15 chars (no NUL).
    "[a-z0-9_-]{0,15}"
}

fn stats(wide: bool) -> impl Strategy<Value = Stats> {
    // STATS carries most counters as u32: only those values survive it.
    let narrow = if wide {
        any::<u64>().boxed()
    } else {
        any::<u32>().prop_map(u64::from).boxed()
    };
    (
        (
            narrow.clone(),
            narrow.clone(),
            narrow.clone(),
            any::<u64>(),
            any::<u64>(),
        ),
        (
            narrow.clone(),
            narrow.clone(),
            narrow.clone(),
            narrow.clone(),
            narrow,
        ),
    )
        .prop_map(|((a, b, c, d, e), (f, g, h, i, j))| Stats {
            conns: a,
            inpkts: b,
            outpkts: c,
            inbytes: d,
            outbytes: e,
            cps: f,
            inpps: g,
            outpps: h,
            inbps: i,
            outbps: j,
        })
}

fn service() -> impl Strategy<Value = ServiceAttrs> {
    (
        ip(),
        proptest::option::of(any::<u16>()),
        any::<bool>(),
        proptest::option::of(any::<u16>()),
        proptest::option::of(any::<u32>()),
        proptest::option::of(name()),
        proptest::option::of((any::<u32>(), any::<u32>())),
        proptest::option::of(any::<u32>()),
        proptest::option::of(any::<u32>()),
        proptest::option::of(name()),
        proptest::option::of(stats(false)),
        proptest::option::of(stats(true)),
    )
        .prop_map(
            |(addr, protocol, with_addr, port, fwmark, sched, flags, timeout, nm, pe, st, st64)| {
                let af = if addr.is_ipv4() { AF_INET } else { AF_INET6 };
                ServiceAttrs {
                    af: Some(af),
                    protocol,
                    addr: with_addr.then_some(addr),
                    port,
                    fwmark,
                    sched_name: sched,
                    flags: flags.map(|(flags, mask)| Flags { flags, mask }),
                    timeout,
                    netmask: nm.map(|v| {
                        if af == AF_INET6 {
                            Netmask::V6Prefix(v)
                        } else {
                            Netmask::V4(Ipv4Addr::from(v))
                        }
                    }),
                    pe_name: pe,
                    stats: st,
                    stats64: st64,
                }
            },
        )
}

fn dest() -> impl Strategy<Value = DestAttrs> {
    (
        (
            proptest::option::of(ip()),
            proptest::option::of(any::<u16>()),
            proptest::option::of(any::<u32>()),
            proptest::option::of(any::<u32>()),
            proptest::option::of(any::<u32>()),
            proptest::option::of(any::<u32>()),
        ),
        (
            proptest::option::of(any::<u32>()),
            proptest::option::of(any::<u32>()),
            proptest::option::of(any::<u32>()),
            proptest::option::of(stats(false)),
            any::<bool>(),
            proptest::option::of(stats(true)),
        ),
        (
            proptest::option::of(any::<u8>()),
            proptest::option::of(any::<u16>()),
            proptest::option::of(any::<u16>()),
        ),
    )
        .prop_map(
            |((addr, port, fwd, w, u, l), (ac, ic, pc, st, with_af, st64), (tt, tp, tf))| {
                DestAttrs {
                    addr,
                    port,
                    fwd_method: fwd,
                    weight: w,
                    u_thresh: u,
                    l_thresh: l,
                    active_conns: ac,
                    inact_conns: ic,
                    persist_conns: pc,
                    stats: st,
                    // The family must agree with the address for 16-byte v4 replies to decode.
                    addr_family: addr.filter(|_| with_af).map(|a| {
                        if a.is_ipv4() {
                            AF_INET
                        } else {
                            AF_INET6
                        }
                    }),
                    stats64: st64,
                    tun_type: tt,
                    tun_port: tp,
                    tun_flags: tf,
                }
            },
        )
}

fn daemon() -> impl Strategy<Value = DaemonAttrs> {
    (
        proptest::option::of(any::<u32>()),
        proptest::option::of(name()),
        proptest::option::of(any::<u32>()),
        proptest::option::of(any::<u16>()),
        proptest::option::of(any::<[u8; 4]>()),
        proptest::option::of(any::<[u8; 16]>()),
        proptest::option::of(any::<u16>()),
        proptest::option::of(any::<u8>()),
    )
        .prop_map(|(state, ifn, id, maxlen, g, g6, port, ttl)| DaemonAttrs {
            state,
            mcast_ifn: ifn,
            sync_id: id,
            sync_maxlen: maxlen,
            mcast_group: g.map(Ipv4Addr::from),
            mcast_group6: g6.map(Ipv6Addr::from),
            mcast_port: port,
            mcast_ttl: ttl,
        })
}

fn message() -> impl Strategy<Value = IpvsMessage> {
    (
        proptest::sample::select(Command::ALL.to_vec()),
        proptest::option::of(service()),
        proptest::option::of(dest()),
        proptest::option::of(daemon()),
        proptest::option::of(any::<u32>()),
        proptest::option::of(any::<u32>()),
        proptest::option::of(any::<u32>()),
    )
        .prop_map(|(cmd, s, d, dm, t1, t2, t3)| {
            let mut m = IpvsMessage::new(cmd);
            if cmd == Command::SetInfo {
                m.info = Info {
                    version: t1,
                    conn_tab_size: t2,
                };
                return m;
            }
            // A destination without ADDR_FAMILY takes the service's family (kernel rule):
            // give it an explicit family when the two differ (mixed-AF tunnel dests).
            let d = d.map(|mut d| {
                let saf = s.as_ref().and_then(|s| s.af);
                if let (Some(a), None, Some(saf)) = (d.addr, d.addr_family, saf) {
                    let daf = if a.is_ipv4() { AF_INET } else { AF_INET6 };
                    if daf != saf {
                        d.addr_family = Some(daf);
                    }
                }
                d
            });
            m.service = s;
            m.dest = d;
            m.daemon = dm;
            m.timeouts = Timeouts {
                tcp: t1,
                tcp_fin: t2,
                udp: t3,
            };
            m
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn every_message_round_trips(m in message(), family in any::<u16>(), seq in any::<u32>()) {
        let flags = m.request_flags();
        let bytes = m.encode(family, flags, seq);
        prop_assert_eq!(bytes.len() % 4, 0);
        let mut it = nl::messages(&bytes);
        let framed = it.next().unwrap().unwrap();
        prop_assert!(it.next().is_none());
        prop_assert_eq!(framed.header.len as usize, bytes.len());
        prop_assert_eq!(framed.header.ty, family);
        prop_assert_eq!(framed.header.flags, flags);
        prop_assert_eq!(framed.header.seq, seq);
        let NlKind::Data(p) = framed.kind().unwrap() else {
            // Families 1..=4 are netlink control types; IPVS never gets those ids.
            prop_assume!(false);
            unreachable!()
        };
        let back = IpvsMessage::decode(p).unwrap();
        prop_assert_eq!(back, m);
    }

    #[test]
    fn service_ids_round_trip_through_the_state_file(ids in proptest::collection::btree_set(
        prop_oneof![
            (any::<u16>(), ip(), any::<u16>()).prop_map(|(protocol, addr, port)| ServiceId::Inet { protocol, addr, port }),
            (any::<u16>(), any::<u32>()).prop_map(|(af, mark)| ServiceId::Fwmark { af, mark }),
        ], 0..20)) {
        let text = ownership::render(&ids);
        prop_assert_eq!(ownership::parse(&text).unwrap(), ids);
    }

    /// The fuzz target: arbitrary bytes into every parser must give Ok or Err, never panic.
    #[test]
    fn parsers_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512), af in any::<u16>()) {
        fuzz_one(&bytes, af);
    }

    /// Mutated valid messages reach deeper into the parsers than random bytes.
    #[test]
    fn parsers_never_panic_on_mutated_messages(
        m in message(),
        flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
        cut in any::<prop::sample::Index>(),
    ) {
        let mut bytes = m.encode(0x24, 5, 1);
        for (i, v) in flips {
            let i = i.index(bytes.len());
            bytes[i] = v;
        }
        let cut = cut.index(bytes.len() + 1);
        fuzz_one(&bytes[..cut], AF_INET);
        fuzz_one(&bytes[16..], AF_INET);
    }
}

fn fuzz_one(bytes: &[u8], af: u16) {
    kubelvs_ipvs::fuzz_all_parsers(bytes);
    let _ = IpvsMessage::decode_with_service_af(bytes, af);
}

#[test]
fn truncated_and_overlong_lengths_are_errors() {
    // nlmsg_len larger than the buffer.
    let b = [0xff, 0, 0, 0, 0x24, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    assert!(nl::messages(&b).next().unwrap().is_err());
    // nlmsg_len smaller than a header.
    let b = [4, 0, 0, 0, 0x24, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    assert!(nl::messages(&b).next().unwrap().is_err());
    // Attribute length 2 (< header) inside a SERVICE nest.
    let p = [1, 1, 0, 0, 8, 0, 1, 0, 2, 0, 1, 0];
    assert!(IpvsMessage::decode(&p).is_err());
    // Address of 5 bytes.
    let p = [1, 1, 0, 0, 16, 0, 1, 0, 9, 0, 3, 0, 1, 2, 3, 4, 5, 0, 0, 0];
    let e = IpvsMessage::decode(&p).unwrap_err();
    assert!(e.to_string().contains("IPVS_SVC_ATTR_ADDR"), "{e}");
    // Unknown command.
    assert!(IpvsMessage::decode(&[99, 1, 0, 0]).is_err());
    // A u32 attribute with 2 bytes names the field.
    let p = [1, 1, 0, 0, 12, 0, 1, 0, 6, 0, 8, 0, 1, 2, 0, 0];
    let e = IpvsMessage::decode(&p).unwrap_err();
    assert!(e.to_string().contains("IPVS_SVC_ATTR_TIMEOUT"), "{e}");
}
