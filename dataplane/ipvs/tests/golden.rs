//! Golden bytes: the worked encodings of IPVS.md A.9, which match Seesaw's
//! `nlmIPVSAddService` vector (google/seesaw ipvs/ipvs_test.go), plus kernel-format
//! replies (16-byte IPv4 addresses, no NLA_F_NESTED, STATS64 with PAD).

use std::net::{IpAddr, Ipv4Addr};

use kubelvs_ipvs::codec::*;
use kubelvs_ipvs::nl::{self, NlKind};
use kubelvs_ipvs::table::{DestConfig, DestId, KernelDest, KernelService, ServiceConfig};
use kubelvs_ipvs::{IpvsMessage, Op, ServiceId};

fn hex(s: &str) -> Vec<u8> {
    let s: String = s.chars().filter(|c| c.is_ascii_hexdigit()).collect();
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

fn svc_10_0_0_1_80() -> ServiceId {
    ServiceId::Inet {
        protocol: 6,
        addr: IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)),
        port: 80,
    }
}

const SERVICE_IDENTITY_NEST: &str = "
    2400 0180
     0600 0100 0200 0000
     0600 0200 0600 0000
     0800 0300 0a000001
     0600 0400 0050 0000";

#[test]
fn new_service_matches_seesaw_vector() {
    let op = Op::AddService {
        id: svc_10_0_0_1_80(),
        config: ServiceConfig {
            scheduler: "rr".into(),
            flags: 0,
            timeout: 0,
            netmask: Netmask::V4(Ipv4Addr::BROADCAST),
        },
    };
    let bytes = op
        .to_message()
        .encode(0x24, nl::NLM_F_REQUEST | nl::NLM_F_ACK, 1);
    let want = hex("
        5c000000 2400 0500 01000000 00000000
        01 01 0000
        4800 0180
         0600 0100 0200 0000
         0600 0200 0600 0000
         0800 0300 0a000001
         0600 0400 0050 0000
         0700 0600 727200 00
         0c00 0700 00000000 ffffffff
         0800 0800 00000000
         0800 0900 ffffffff");
    assert_eq!(bytes, want);
}

#[test]
fn new_dest_masq_weight_1() {
    let op = Op::AddDest {
        service: svc_10_0_0_1_80(),
        dest: DestId {
            addr: IpAddr::V4(Ipv4Addr::new(10, 1, 0, 5)),
            port: 8080,
        },
        config: DestConfig::masq(1),
    };
    let msg = op.to_message();
    assert_eq!(msg.request_flags(), 0x5);
    let bytes = msg.encode(0x24, msg.request_flags(), 2);
    let attrs = format!(
        "{SERVICE_IDENTITY_NEST}
        3c00 0280
         0600 0b00 0200 0000
         0800 0100 0a010005
         0600 0200 1f90 0000
         0800 0300 00000000
         0800 0400 01000000
         0800 0500 00000000
         0800 0600 00000000"
    );
    let attrs = hex(&attrs);
    let mut want = hex("00000000 2400 0500 02000000 00000000 05 01 0000");
    want.extend_from_slice(&attrs);
    let len = want.len() as u32;
    want[..4].copy_from_slice(&len.to_ne_bytes());
    assert_eq!(bytes, want);
}

#[test]
fn get_dest_is_a_dump_with_the_identity_nest_only() {
    let msg = IpvsMessage::new(Command::GetDest).with_service(svc_10_0_0_1_80().to_attrs());
    assert_eq!(msg.request_flags(), 0x0301);
    let bytes = msg.encode(0x24, msg.request_flags(), 3);
    let mut want = hex("00000000 2400 0103 03000000 00000000 08 01 0000");
    want.extend_from_slice(&hex(SERVICE_IDENTITY_NEST));
    let len = want.len() as u32;
    want[..4].copy_from_slice(&len.to_ne_bytes());
    assert_eq!(bytes, want);
}

#[test]
fn ctrl_getfamily_ipvs() {
    let bytes = nl::get_family_request("IPVS", 4);
    let want = hex("20000000 1000 0100 04000000 00000000 03010000 0900 0200 49505653 00000000");
    assert_eq!(bytes, want);
}

#[test]
fn ctrl_newfamily_reply_gives_the_id() {
    // nlmsghdr, genl cmd NEWFAMILY, FAMILY_NAME "IPVS", FAMILY_ID 0x24, VERSION 1, MAXATTR 6,
    // and an OPS nest (type 6) we do not parse.
    let mut b = hex("00000000 1000 0000 04000000 00000000 01 02 0000
        0900 0200 49505653 00000000
        0600 0100 2400 0000
        0800 0300 01000000
        0800 0500 06000000
        0c00 0680 0800 0100 01000000");
    let len = b.len() as u32;
    b[..4].copy_from_slice(&len.to_ne_bytes());
    let m = nl::messages(&b).next().unwrap().unwrap();
    let NlKind::Data(p) = m.kind().unwrap() else {
        panic!("not data")
    };
    let f = nl::parse_family(p).unwrap();
    assert_eq!(
        (f.id, f.name.as_str(), f.version, f.max_attr),
        (0x24, "IPVS", 1, 6)
    );
}

/// A NEW_SERVICE dump reply as the kernel builds it: nests without NLA_F_NESTED,
/// a 16-byte IPv4 address, HASHED in the flags, an unknown attribute (99),
/// STATS (u32 counters) and STATS64 (u64 counters with a zero-length PAD).
fn kernel_service_reply() -> Vec<u8> {
    let mut b = hex("00000000 2400 0200 07000000 00000000 01 01 0000");
    let body = hex("
        0000 0100
         0600 0100 0200 0000
         0600 0200 0600 0000
         1400 0300 c0000201 00000000 00000000 00000000
         0600 0400 0050 0000
         0800 0600 77727200
         0c00 0700 03000000 ffffffff
         0800 0800 68010000
         0800 0900 ffffff00
         0800 6300 deadbeef
         2000 0a00
          0800 0100 05000000
          0c00 0400 0001000000000000
          0800 0600 02000000
         2c00 0c00
          0400 0b00
          0c00 0100 0500000001000000
          0c00 0400 0001000000000000
          0c00 0600 0200000000000000");
    let mut body = body;
    let nest_len = body.len() as u16;
    body[..2].copy_from_slice(&nest_len.to_ne_bytes());
    b.extend_from_slice(&body);
    let len = b.len() as u32;
    b[..4].copy_from_slice(&len.to_ne_bytes());
    b
}

#[test]
fn kernel_service_reply_decodes() {
    let b = kernel_service_reply();
    let m = nl::messages(&b).next().unwrap().unwrap();
    assert_eq!(m.header.flags & nl::NLM_F_MULTI, nl::NLM_F_MULTI);
    let NlKind::Data(p) = m.kind().unwrap() else {
        panic!("not data")
    };
    let msg = IpvsMessage::decode(p).unwrap();
    assert_eq!(msg.cmd, Command::NewService);
    let s = msg.service.unwrap();
    assert_eq!(s.addr, Some(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1))));
    assert_eq!(s.port, Some(80));
    assert_eq!(s.sched_name.as_deref(), Some("wrr"));
    assert_eq!(
        s.flags,
        Some(Flags {
            flags: SVC_F_PERSISTENT | SVC_F_HASHED,
            mask: u32::MAX
        })
    );
    assert_eq!(s.timeout, Some(360));
    assert_eq!(
        s.netmask,
        Some(Netmask::V4(Ipv4Addr::new(255, 255, 255, 0)))
    );
    let st = s.stats.unwrap();
    assert_eq!((st.conns, st.inbytes, st.cps), (5, 256, 2));
    let st64 = s.stats64.unwrap();
    assert_eq!(
        (st64.conns, st64.inbytes, st64.cps),
        (5 + (1 << 32), 256, 2)
    );

    let k = KernelService::from_attrs(&IpvsMessage::decode(p).unwrap().service.unwrap()).unwrap();
    assert_eq!(
        k.id,
        ServiceId::Inet {
            protocol: 6,
            addr: "192.0.2.1".parse().unwrap(),
            port: 80
        }
    );
    // HASHED is kernel-owned and masked out; STATS64 wins over STATS.
    assert_eq!(k.config.flags, SVC_F_PERSISTENT);
    assert_eq!(k.stats.conns, 5 + (1 << 32));
}

#[test]
fn ipv6_service_netmask_is_a_host_order_prefix() {
    let id = ServiceId::Inet {
        protocol: 17,
        addr: "2001:db8::1".parse().unwrap(),
        port: 53,
    };
    let cfg = ServiceConfig {
        scheduler: "sh".into(),
        flags: SVC_F_SCHED1 | SVC_F_SCHED2,
        timeout: 0,
        netmask: Netmask::V6Prefix(64),
    };
    let msg = Op::AddService { id, config: cfg }.to_message();
    let b = msg.encode(0x24, 5, 9);
    // AF=10, 16-byte address, netmask attribute = 64 as host u32.
    let find = |needle: &[u8]| b.windows(needle.len()).any(|w| w == needle);
    assert!(find(&hex("0600 0100 0a00 0000")));
    assert!(find(&hex("1400 0300 20010db8000000000000000000000001")));
    assert!(find(&[8, 0, 9, 0, 64, 0, 0, 0]));
    assert!(find(&hex("0c00 0700 18000000 ffffffff")));
    let back = IpvsMessage::decode(&b[16..]).unwrap();
    assert_eq!(back, msg);
}

#[test]
fn fwmark_service_identity() {
    let id = ServiceId::Fwmark {
        af: AF_INET,
        mark: 7,
    };
    let b = IpvsMessage::new(Command::DelService)
        .with_service(id.to_attrs())
        .encode(0x24, 5, 1);
    assert_eq!(
        &b[20..],
        &hex("1400 0180 0600 0100 0200 0000 0800 0500 07000000")[..]
    );
    let back = IpvsMessage::decode(&b[16..]).unwrap();
    assert_eq!(
        ServiceId::from_attrs(back.service.as_ref().unwrap()),
        Some(id)
    );
}

#[test]
fn kernel_dest_reply_with_16_byte_ipv4_and_tunnel() {
    // GET_DEST dump part: cmd NEW_DEST, a DEST nest (no NLA_F_NESTED) in kernel fill order.
    let mut b = hex("00000000 2400 0200 08000000 00000000 05 01 0000");
    let mut nest = hex("
        0000 0200
         1400 0100 c6336405 00000000 00000000 00000000
         0600 0200 1f90 0000
         0800 0300 02000000
         0800 0400 03000000
         0500 0d00 01 000000
         0600 0e00 17c1 0000
         0600 0f00 0100 0000
         0800 0500 00000000
         0800 0600 00000000
         0800 0700 04000000
         0800 0800 09000000
         0800 0900 00000000
         0600 0b00 0200 0000");
    let n = nest.len() as u16;
    nest[..2].copy_from_slice(&n.to_ne_bytes());
    b.extend_from_slice(&nest);
    let len = b.len() as u32;
    b[..4].copy_from_slice(&len.to_ne_bytes());
    let m = nl::messages(&b).next().unwrap().unwrap();
    let NlKind::Data(p) = m.kind().unwrap() else {
        panic!()
    };
    let d = IpvsMessage::decode(p).unwrap().dest.unwrap();
    let k = KernelDest::from_attrs(&d).unwrap();
    assert_eq!(k.id.addr, IpAddr::V4(Ipv4Addr::new(198, 51, 100, 5)));
    assert_eq!(k.id.port, 8080);
    assert_eq!(k.config.fwd_method, FWD_TUNNEL);
    assert_eq!(k.config.weight, 3);
    assert_eq!(k.config.tun_type, TUN_TYPE_GUE);
    assert_eq!(k.config.tun_port, 6081);
    assert_eq!(k.config.tun_flags, TUN_F_CSUM);
    assert_eq!(k.connections(), 13);
}

#[test]
fn dest_without_addr_family_takes_the_service_family() {
    // Pre-3.18 kernels: no ADDR_FAMILY, 16-byte address, IPv4 service.
    let mut attrs = hex("1800 0200 1400 0100 c6336405 00000000 00000000 00000000");
    let mut p = vec![5, 1, 0, 0];
    p.append(&mut attrs);
    let plain = IpvsMessage::decode(&p).unwrap();
    assert!(plain.dest.unwrap().addr.unwrap().is_ipv6());
    let m = IpvsMessage::decode_with_service_af(&p, AF_INET).unwrap();
    assert_eq!(m.dest.unwrap().addr, Some("198.51.100.5".parse().unwrap()));
}

#[test]
fn ack_error_and_done() {
    // NLMSG_ERROR -17 (EEXIST) with the original header, then DONE with 0.
    let mut b = hex("24000000 0200 0000 05000000 00000000 efffffff
        5c000000 2400 0500 05000000 00000000");
    b.extend_from_slice(&hex("14000000 0300 0200 06000000 00000000 00000000"));
    let kinds: Vec<_> = nl::messages(&b)
        .map(|m| m.unwrap().kind().unwrap())
        .collect();
    assert_eq!(
        kinds,
        vec![NlKind::Ack { errno: 17 }, NlKind::Done { errno: 0 }]
    );
}

#[test]
fn info_reply_uses_the_info_attribute_table() {
    // SET_INFO reply: VERSION 0x010201 and CONN_TAB_SIZE 4096 at top level (types 1, 2).
    let p = hex("0e 01 0000 0800 0100 01020100 0800 0200 00100000");
    let m = IpvsMessage::decode(&p).unwrap();
    assert_eq!(m.cmd, Command::SetInfo);
    assert_eq!(m.info.version, Some(0x010201));
    assert_eq!(m.info.conn_tab_size, Some(4096));
    assert!(m.service.is_none() && m.dest.is_none());
}

#[test]
fn config_reply_timeouts() {
    let p = hex("0c 01 0000 0800 0400 84030000 0800 0500 78000000 0800 0600 2c010000");
    let m = IpvsMessage::decode(&p).unwrap();
    assert_eq!(
        m.timeouts,
        Timeouts {
            tcp: Some(900),
            tcp_fin: Some(120),
            udp: Some(300)
        }
    );
}

#[test]
fn unknown_scheduler_names_are_kept() {
    for name in ["twos", "none", "my-own-scheduler"] {
        let p = {
            let mut w = nl::AttrWriter::new();
            w.nest(CMD_ATTR_SERVICE, |w| {
                w.u16(SVC_ATTR_AF, AF_INET);
                w.string(SVC_ATTR_SCHED_NAME, name);
            });
            let mut p = vec![1, 1, 0, 0];
            p.extend_from_slice(&w.buf);
            p
        };
        let m = IpvsMessage::decode(&p).unwrap();
        assert_eq!(m.service.unwrap().sched_name.as_deref(), Some(name));
    }
}

#[test]
fn four_byte_flags_decode_as_mask_zero() {
    // A 4-byte FLAGS is what nlrs sends: the kernel zero-fills the mask (a no-op).
    let p = hex("01 01 0000 0c00 0100 0800 0700 01000000");
    let s = IpvsMessage::decode(&p).unwrap().service.unwrap();
    assert_eq!(s.flags, Some(Flags { flags: 1, mask: 0 }));
}

#[test]
fn daemon_nest() {
    let d = DaemonAttrs {
        state: Some(SYNC_MASTER),
        mcast_ifn: Some("eth0".into()),
        sync_id: Some(7),
        sync_maxlen: Some(1400),
        mcast_group: Some(Ipv4Addr::new(224, 0, 0, 81)),
        mcast_group6: None,
        mcast_port: Some(8848),
        mcast_ttl: Some(1),
    };
    let b = IpvsMessage::new(Command::NewDaemon)
        .with_daemon(d.clone())
        .encode(0x24, 5, 1);
    let find = |needle: &[u8]| b.windows(needle.len()).any(|w| w == needle);
    assert!(find(&hex("0900 0200 65746830 00")), "NUL-terminated ifname");
    assert!(find(&hex("0800 0500 e0000051")), "group in network order");
    assert!(find(&[6, 0, 7, 0, 0x90, 0x22]), "port in host order");
    assert_eq!(IpvsMessage::decode(&b[16..]).unwrap().daemon, Some(d));
}
