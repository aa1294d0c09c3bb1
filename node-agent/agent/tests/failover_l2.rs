//! L2 announcement and director failover against the real control plane (the lab is
//! `common::l2`): exactly one of two XDP directors answers ARP for the VIP; its agent
//! killed and its link cut, the other takes over within the Lease's duration and no
//! connection opened through the dead one is lost.

mod common;

use std::time::Duration;

/// The agents' default: a director unseen for this long is dead.
const LEASE_MS: u64 = 2000;

/// One lab at a time: each runs a control plane and five agents, and the timings
/// measured here are what one such cluster does, not two on the same cores.
fn serial() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|p| p.into_inner())
}

#[test]
#[ignore = "privileged: netns + XDP; needs the test control plane (Go toolchain)"]
fn the_owner_of_a_vip_dies_and_another_director_takes_over_keeping_connections() {
    let _one = serial();
    let f = common::l2::failover(LEASE_MS, false, common::l2::Death::Killed);
    eprintln!("{f:?}");
    // Detection is the Lease's duration after the last renewal seen, checked every
    // quarter of it; the rest is one plan and one apply.
    assert!(
        f.takeover < Duration::from_millis(LEASE_MS * 5 / 4) + Duration::from_millis(500),
        "{f:?}"
    );
    assert_eq!(f.lost, 0, "connections lost in the failover: {f:?}");
}

#[test]
#[ignore = "privileged: netns + XDP; needs the test control plane (Go toolchain)"]
fn the_owner_that_loses_carrier_gives_its_vip_up_though_it_still_reaches_the_api_server() {
    let _one = serial();
    // Its agent lives and reaches the API server over another link: only the carrier
    // of its announce interface tells it to stop announcing and renewing.
    let f = common::l2::failover(LEASE_MS, false, common::l2::Death::CarrierLost);
    eprintln!("{f:?}");
    assert!(
        f.takeover < Duration::from_millis(LEASE_MS * 5 / 4) + Duration::from_millis(500),
        "{f:?}"
    );
    assert!(
        f.failback.is_some_and(|d| d < Duration::from_secs(5)),
        "{f:?}"
    );
    assert_eq!(
        f.lost, 0,
        "connections lost in the failover and back: {f:?}"
    );
}
