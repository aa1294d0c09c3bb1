//! Which director announces each VIP (`kubelvs_planner::announce`): exactly one of the
//! live, eligible directors, the same one on every node, and a director's death moves
//! only its own VIPs.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use common::*;
use kubelvs_crds::*;
use kubelvs_model::NodePlan;
use kubelvs_planner::announce::{owner, Announcers};
use kubelvs_planner::{plan_node, NodeIdentity, Objects};

const DIRECTORS: [&str; 3] = ["d1", "d2", "d3"];

fn director(name: &str) -> NodeIdentity {
    let mut n = in_cluster(name);
    n.labels.insert("role".into(), "director".into());
    n
}

fn live(names: &[&str]) -> Announcers {
    Announcers {
        live: names
            .iter()
            .map(|n| (n.to_string(), director(n).labels))
            .collect(),
        ineligible_self: false,
    }
}

/// `n` VirtualServices, each on its own granted VIP of 203.0.113.0/24 (then
/// 198.51.100.0/24), directed by the `role=director` nodes.
fn services(n: usize) -> (Vec<VirtualService>, Vec<RealServer>) {
    let vss = (0..n)
        .map(|i| {
            let vip = if i < 250 {
                format!("203.0.113.{}", i + 1)
            } else {
                format!("198.51.100.{}", i - 249)
            };
            let mut v = vs("shop", &format!("web{i}"), None, i as i64);
            v.spec.directors = Some(DirectorsSpec {
                node_selector: selector(&[("role", "director")]),
            });
            granted(v, Some(&vip), 1, 1)
        })
        .collect();
    let rss = (0..n)
        .map(|i| rs("shop", &format!("rs{i}"), &format!("web{i}"), "10.0.0.1"))
        .collect();
    (vss, rss)
}

fn plan_with(
    node: &NodeIdentity,
    vss: &[VirtualService],
    rss: &[RealServer],
    pools: &[AddressPool],
    announcers: &Announcers,
) -> NodePlan {
    plan_node(
        node,
        Objects::of(vss, &records(rss), pools).with_announcers(announcers),
    )
}

/// The VIPs `node` announces: those it directs, less its unannounced ones.
fn announced(p: &NodePlan) -> BTreeSet<IpAddr> {
    p.services
        .iter()
        .map(|s| s.key.vip)
        .filter(|v| !p.unannounced_vips.contains(v))
        .collect()
}

/// Each VIP's announcers, planned on every director with the same view of the Leases.
fn announcers_by_vip(
    alive: &[&str],
    vss: &[VirtualService],
    rss: &[RealServer],
    pools: &[AddressPool],
) -> BTreeMap<IpAddr, Vec<String>> {
    let view = live(alive);
    let mut out: BTreeMap<IpAddr, Vec<String>> = BTreeMap::new();
    for d in alive {
        let p = plan_with(&director(d), vss, rss, pools, &view);
        for vip in announced(&p) {
            out.entry(vip).or_default().push(d.to_string());
        }
    }
    out
}

#[test]
fn exactly_one_live_director_announces_each_vip_and_every_node_agrees() {
    let (vss, rss) = services(300);
    let by_vip = announcers_by_vip(&DIRECTORS, &vss, &rss, &[]);
    assert_eq!(by_vip.len(), 300);
    for (vip, who) in &by_vip {
        assert_eq!(who.len(), 1, "{vip}: {who:?}");
        assert_eq!(Some(who[0].as_str()), owner(*vip, DIRECTORS), "{vip}");
    }
    // Spread over the directors.
    for d in DIRECTORS {
        let mine = by_vip.values().filter(|w| w[0] == d).count();
        assert!((60..=140).contains(&mine), "{d} announces {mine} of 300");
    }
    // Every director still carries (and forwards) every VIP.
    for d in DIRECTORS {
        let p = plan_with(&director(d), &vss, &rss, &[], &live(&DIRECTORS));
        assert_eq!(p.services.len(), 300);
    }
}

#[test]
fn a_dead_directors_vips_move_and_no_other_vip_does() {
    let (vss, rss) = services(300);
    let before = announcers_by_vip(&DIRECTORS, &vss, &rss, &[]);
    let after = announcers_by_vip(&["d1", "d3"], &vss, &rss, &[]);
    assert_eq!(after.len(), 300, "every VIP still has an announcer");
    let mut moved = 0;
    for (vip, who) in &before {
        let now = &after[vip];
        assert_eq!(now.len(), 1, "{vip}: {now:?}");
        if who[0] == "d2" {
            moved += 1;
            assert_ne!(now[0], "d2");
        } else {
            assert_eq!(now, who, "{vip} moved although its announcer lives");
        }
    }
    assert!(moved > 0);
}

#[test]
fn an_agent_that_has_not_seen_the_leases_yet_counts_itself_alive() {
    let (vss, rss) = services(50);
    // d1 sees nobody's Lease (its own not written yet): it announces everything it
    // directs, as the only live director it knows.
    let p = plan_with(&director("d1"), &vss, &rss, &[], &Announcers::default());
    assert!(p.unannounced_vips.is_empty());
    assert_eq!(announced(&p).len(), 50);
}

#[test]
fn only_directors_of_the_vip_and_nodes_the_pool_allows_are_candidates() {
    let (vss, rss) = services(100);
    // A live node that does not direct (no role label) never announces.
    let mut view = live(&DIRECTORS);
    view.live
        .insert("worker".into(), in_cluster("worker").labels);
    for vip in announcers_by_vip(&DIRECTORS, &vss, &rss, &[]).keys() {
        let with_worker = owner(*vip, ["d1", "d2", "d3", "worker"]);
        let p = plan_with(&director("d1"), &vss, &rss, &[], &view);
        let d1_announces = !p.unannounced_vips.contains(vip);
        assert_eq!(
            d1_announces,
            owner(*vip, DIRECTORS) == Some("d1"),
            "{vip} {with_worker:?}"
        );
    }
    // The pool lets only d3 announce its addresses.
    let mut only_d3 = pool("edge", &["203.0.113.0/24"]);
    only_d3.spec.announcement = Some(Announcement {
        mode: AnnouncementMode::L2,
        node_selector: Some(selector(&[("kubernetes.io/hostname", "d3")])),
        bgp: None,
    });
    let by_vip = announcers_by_vip(&DIRECTORS, &vss, &rss, &[only_d3.clone()]);
    assert_eq!(by_vip.len(), 100);
    assert!(by_vip.values().all(|w| w == &["d3"]), "{by_vip:?}");
    // d3 dead: nobody may announce them.
    assert!(announcers_by_vip(&["d1", "d2"], &vss, &rss, &[only_d3]).is_empty());
}

#[test]
fn a_pool_in_mode_none_is_announced_by_nobody_and_still_directed() {
    let (vss, rss) = services(20);
    let mut routed = pool("routed", &["203.0.113.0/24"]);
    routed.spec.announcement = Some(Announcement {
        mode: AnnouncementMode::Unannounced,
        node_selector: None,
        bgp: None,
    });
    for view in [Some(live(&DIRECTORS)), None] {
        for d in DIRECTORS {
            let rss = records(&rss);
            let objects = Objects::of(&vss, &rss, std::slice::from_ref(&routed));
            let objects = match &view {
                Some(v) => objects.with_announcers(v),
                None => objects,
            };
            let p = plan_node(&director(d), objects);
            assert_eq!(p.services.len(), 20);
            assert!(announced(&p).is_empty(), "{d}: {:?}", announced(&p));
        }
    }
}

#[test]
fn standalone_a_director_announces_what_it_directs() {
    let (vss, rss) = services(20);
    let mut n = director("d1");
    n.vip_source = kubelvs_planner::VipSource::Spec;
    let vss: Vec<_> = vss
        .into_iter()
        .map(|mut v| {
            v.spec.vip = v.status.as_ref().and_then(|s| s.vip.clone());
            v
        })
        .collect();
    let p = plan_node(&n, Objects::of(&vss, &records(&rss), &[]));
    assert_eq!(announced(&p).len(), 20);
}

#[test]
fn the_owner_does_not_depend_on_the_order_of_candidates() {
    let vip: IpAddr = "203.0.113.9".parse().unwrap();
    let a = owner(vip, ["d1", "d2", "d3"]);
    for order in [["d3", "d2", "d1"], ["d2", "d1", "d3"], ["d1", "d3", "d2"]] {
        assert_eq!(owner(vip, order), a);
    }
}

#[test]
fn a_bgp_pool_gives_every_director_a_session_per_peer_and_no_arp() {
    let (vss, rss) = services(20);
    let mut routed = pool("routed", &["203.0.113.0/24"]);
    routed.spec.announcement = Some(Announcement {
        mode: AnnouncementMode::Bgp,
        node_selector: Some(selector(&[("role", "director")])),
        bgp: Some(BgpAnnouncement {
            local_asn: 64512,
            peers: vec![
                BgpPeer {
                    address: "192.0.2.250".into(),
                    asn: 64500,
                    ..BgpPeer::default()
                },
                BgpPeer {
                    address: "192.0.2.251".into(),
                    asn: 64501,
                    port: Some(1179),
                    hold_time_seconds: Some(30),
                    bfd: Some(false),
                    password_secret_ref: Some(SecretKeyRef {
                        name: "bgp".into(),
                        key: "tor2".into(),
                    }),
                },
            ],
        }),
    });
    for d in DIRECTORS {
        let p = plan_with(
            &director(d),
            &vss,
            &rss,
            std::slice::from_ref(&routed),
            &live(&DIRECTORS),
        );
        assert!(
            announced(&p).is_empty(),
            "{d}: BGP VIPs are not answered by ARP"
        );
        assert_eq!(p.bgp_sessions.len(), 2, "{d}");
        let first = &p.bgp_sessions[0];
        assert_eq!(
            (
                first.peer_asn,
                first.port,
                first.hold_time_seconds,
                first.bfd
            ),
            (64500, 179, 9, true)
        );
        assert_eq!(first.vips.len(), 20);
        assert!(first
            .vips
            .iter()
            .all(|v| v.to_string().starts_with("203.0.113.")));
        let second = &p.bgp_sessions[1];
        assert_eq!(
            (second.port, second.hold_time_seconds, second.bfd),
            (1179, 30, false)
        );
        assert_eq!(second.password_secret, Some(("bgp".into(), "tor2".into())));
        assert_eq!(first.password_secret, None);
    }
    // A node the pool's selector leaves out keeps no session.
    let mut other = director("d4");
    other.labels.insert("role".into(), "elsewhere".into());
    let mut vss_any = vss.clone();
    for v in &mut vss_any {
        v.spec.directors = None;
    }
    let p = plan_with(&other, &vss_any, &rss, &[routed], &live(&DIRECTORS));
    assert_eq!(p.services.len(), 20, "it still directs");
    assert!(p.bgp_sessions.is_empty());
}

#[test]
fn a_director_without_carrier_announces_nothing_and_the_others_cover_its_vips() {
    let (vss, rss) = services(100);
    let mut view = live(&DIRECTORS);
    // d1 lost carrier: it still directs, announces nothing; its own view leaves it out.
    view.ineligible_self = true;
    let p = plan_with(&director("d1"), &vss, &rss, &[], &view);
    assert_eq!(p.services.len(), 100);
    assert!(announced(&p).is_empty());
    // It stopped renewing its Lease: once the others see it expire, they cover all.
    let by_vip = announcers_by_vip(&["d2", "d3"], &vss, &rss, &[]);
    assert_eq!(by_vip.len(), 100);
}
