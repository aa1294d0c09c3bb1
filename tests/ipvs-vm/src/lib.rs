//! microVM harness for the IPVS dataplane.
//!
//! This machine's kernel has no IPVS, so the real-kernel tests boot a Debian
//! kernel under `qemu-system-x86_64 -accel tcg`:
//!
//! - [`image`] fetches the kernel and tools with `apt-get download`, trims the
//!   module tree, and caches a base initramfs under `target/ipvs-vm/`;
//! - [`vm`] appends the guest test binary, boots, and reads results from the
//!   serial console;
//! - [`protocol`] is the line format both sides speak;
//! - `src/bin/guest.rs` is the guest side: network namespaces for a client and
//!   three real servers, the director in the VM's root namespace.

#![forbid(unsafe_code)]

pub mod cpio;
pub mod image;
pub mod ipvsadm;
pub mod protocol;
pub mod traffic;
pub mod vm;
