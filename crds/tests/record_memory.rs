//! What a RealServer costs kept as a record (`RealServerRecord`), the form the agent
//! and the operator keep 100,000 of: every allocation, rounded up to the allocator's
//! size class (jemalloc's), counted. Alone in its test binary: it counts every
//! allocation of the process.
// A counting global allocator is the one way to see what a value holds.
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};
use std::sync::Arc;

use kubelvs_crds::{RealServer, RealServerRecord, RealServerSpec};

struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

/// jemalloc's size class for `size`: 8, then steps of 16 up to 128, then four
/// classes per doubling.
fn class(size: usize) -> usize {
    if size <= 8 {
        return 8;
    }
    if size <= 128 {
        return size.div_ceil(16) * 16;
    }
    let step = (size - 1).next_power_of_two() / 8;
    size.div_ceil(step) * step
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(class(layout.size()) as isize, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(class(layout.size()) as isize, Ordering::Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// A RealServer as a cluster holds them: namespace, name, a uid, one label.
fn real_server(i: usize) -> RealServer {
    let mut rs = RealServer::new(
        &format!("rs{}-{}", i / 10, i % 10),
        RealServerSpec {
            address: format!("198.51.100.{}", 1 + i % 250),
            port: None,
            weight: 1,
            node_name: None,
            drain: false,
        },
    );
    rs.metadata.namespace = Some("scale".into());
    rs.metadata.uid = Some(format!("0b7c2a51-3f0e-4c4e-9d6e-{i:012}"));
    rs.metadata.labels = Some([("vs".to_owned(), format!("vs{}", i / 10))].into());
    rs
}

#[test]
fn a_kept_record_costs_at_most_two_hundred_and_fifty_bytes() {
    const N: usize = 10_000;
    let mut kept: Vec<Arc<RealServerRecord>> = Vec::with_capacity(N);
    let before = LIVE.load(Ordering::Relaxed);
    // The API objects are consumed: what is live afterwards is the records'.
    kept.extend((0..N).map(|i| Arc::new(real_server(i).into())));
    let per_record = (LIVE.load(Ordering::Relaxed) - before) as usize / N;
    eprintln!("a record with its Arc, names, uid, address and labels: {per_record} bytes");
    assert!(per_record <= 250, "a record costs {per_record} bytes");
    drop(kept);
}
