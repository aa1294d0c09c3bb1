//! What compiling the CRDs' schemas keeps for the life of the process: the three
//! validators, and the meta-schema's validator that checked them (a process-wide
//! static in jsonschema, which grows one copy of itself per path of keywords it
//! walks). Alone in its test binary: it counts every allocation of the process.
// A counting global allocator is the one way to see what a static keeps.
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};

use kube::CustomResourceExt;
use kubelvs_crds::validate::compile_schema;
use kubelvs_crds::{AddressPool, RealServer, VirtualService};

struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

#[test]
fn compiled_schemas_keep_under_two_megabytes() {
    let crds = [VirtualService::crd(), RealServer::crd(), AddressPool::crd()];
    let before = LIVE.load(Ordering::Relaxed);
    let validators: Vec<jsonschema::Validator> = crds.iter().map(compile_schema).collect();
    let kept = LIVE.load(Ordering::Relaxed) - before;
    eprintln!("compiled schemas keep {kept} bytes");
    assert!(kept < 2 << 20, "compiling the schemas kept {kept} bytes");
    drop(validators);
}
