//! Builds what the microVM boots: the Debian kernel, a trimmed module tree and a
//! small initramfs with busybox, `ipvsadm`, `nft`, `ip` and their shared libraries.
//!
//! Everything comes from Debian packages fetched with `apt-get download` and is
//! cached under `target/ipvs-vm/<kernel>-<key>/`, where the key covers every package
//! version, the module and tool lists, the init script and [`RECIPE`]; a second run
//! reuses it. The guest test binary changes
//! on every build, so it goes into a second, small cpio archive appended at boot
//! (the kernel unpacks concatenated archives in order).

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

use crate::cpio::Archive;

/// Bump when the layout of the cached image changes, so stale caches are not reused.
const RECIPE: u32 = 1;

/// Modules the guest loads at boot (dependencies are pulled in from `depends=`).
/// `crc32c_generic` comes first: `libcrc32c` (needed by ip_vs, nf_conntrack and
/// nf_nat for SCTP) asks the crypto API for crc32c and fails without it.
pub const BOOT_MODULES: &[&str] = &[
    "crc32c_generic",
    "ip_vs",
    "ip_vs_rr",
    "ip_vs_wrr",
    "ip_vs_lc",
    "ip_vs_wlc",
    "ip_vs_sh",
    "ip_vs_dh",
    "ip_vs_mh",
    "ip_vs_sed",
    "ip_vs_nq",
    "ipip",
    // GUE and GRE decapsulation on TUN real servers.
    "fou",
    "ip_gre",
    "veth",
    "bridge",
    "dummy",
    "nf_conntrack",
    "nf_nat",
    "nf_tables",
    "nft_ct",
    "nft_nat",
    "nft_chain_nat",
    "nft_masq",
];

/// Bookworm's kernel metapackage: its Depends names the newest 6.1 image.
const KERNEL_META: &str = "linux-image-amd64";

/// User-space packages unpacked into the image. Their shared libraries are taken
/// from these packages first, then from the host (glibc and friends, which every
/// Debian host has in the same release).
const TOOL_PACKAGES: &[&str] = &[
    "busybox-static",
    "ipvsadm",
    "libnl-3-200",
    "libnl-genl-3-200",
    "libpopt0",
    "nftables",
    "libnftables1",
    "iproute2",
    // The demo's lab turns checksum offload off on its veths.
    "ethtool",
];

/// Executables copied into the guest: (path inside the packages, guest path).
const TOOLS: &[(&str, &str)] = &[
    ("sbin/ipvsadm", "/sbin/ipvsadm"),
    ("usr/sbin/nft", "/sbin/nft"),
    ("bin/ip", "/sbin/ip"),
    ("sbin/ethtool", "/sbin/ethtool"),
];

/// Directory the guest's dynamic loader searches (set as LD_LIBRARY_PATH by init).
pub const GUEST_LIB_DIR: &str = "/lib/x86_64-linux-gnu";

/// Path of the test binary inside the guest.
pub const GUEST_BIN: &str = "/bin/kubelvs-guest";

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("running {command}: {source}")]
    Spawn {
        command: String,
        source: std::io::Error,
    },
    #[error("{command} failed ({status}): {stderr}")]
    Command {
        command: String,
        status: String,
        stderr: String,
    },
    #[error("linux-image-amd64 does not depend on a linux-image-6.1.0-*-amd64 package in the apt lists, even after apt-get update")]
    NoKernelPackage,
    #[error("package {package}: not in the apt lists (apt-cache show), even after apt-get update")]
    NoVersion { package: String },
    #[error("package {package}: downloaded .deb not found in {dir}")]
    DebMissing { package: String, dir: PathBuf },
    #[error("kernel package {package}: {what} not found")]
    KernelContent { package: String, what: String },
    #[error("kernel module {module} (needed by {needed_by}) not found in the kernel package")]
    ModuleMissing { module: String, needed_by: String },
    #[error("{binary}: shared library {library} not found (ldd: not found)")]
    LibraryMissing { binary: PathBuf, library: String },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> ImageError + '_ {
    move |source| ImageError::Io {
        path: path.to_owned(),
        source,
    }
}

/// The cached, guest-independent part of the VM.
#[derive(Debug, Clone)]
pub struct BaseImage {
    pub dir: PathBuf,
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    /// `uname -r` of the guest kernel, e.g. `6.1.0-56-amd64`.
    pub kernel_release: String,
    /// Guest paths of the shared libraries already in the base archive.
    pub libraries: BTreeSet<String>,
    /// `package=version` lines the cache key covers.
    pub packages: Vec<String>,
}

fn run(cmd: &mut Command) -> Result<String, ImageError> {
    let command = format!("{cmd:?}");
    let out = cmd.output().map_err(|source| ImageError::Spawn {
        command: command.clone(),
        source,
    })?;
    if !out.status.success() {
        return Err(ImageError::Command {
            command,
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Parses `apt-cache show` output into package -> (version, depends).
fn parse_show(text: &str) -> BTreeMap<String, (String, String)> {
    let mut out = BTreeMap::new();
    for stanza in text.split("\n\n") {
        let field = |name: &str| {
            stanza
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .map(|v| v.trim().to_owned())
        };
        if let (Some(pkg), Some(version)) = (field("Package: "), field("Version: ")) {
            out.insert(pkg, (version, field("Depends: ").unwrap_or_default()));
        }
    }
    out
}

fn show(packages: &[&str]) -> Result<BTreeMap<String, (String, String)>, ImageError> {
    let out = run(Command::new("apt-cache")
        .args(["show", "--no-all-versions"])
        .args(packages))?;
    Ok(parse_show(&out))
}

/// `(package, version)` of everything the image needs, the kernel first: the
/// `linux-image-6.1.0-N-amd64` that bookworm's `linux-image-amd64` points to (the
/// newest the apt lists have). Runs `apt-get update` once if the lists lack it.
fn resolve_packages() -> Result<Vec<(String, String)>, ImageError> {
    let mut wanted = vec![KERNEL_META];
    wanted.extend(TOOL_PACKAGES);
    let mut shown = BTreeMap::new();
    for attempt in 0..2 {
        // apt-cache fails as a whole when one name is unknown: treat that like empty lists.
        shown = show(&wanted).unwrap_or_default();
        if wanted.iter().all(|p| shown.contains_key(*p)) {
            break;
        }
        if attempt == 0 {
            run(Command::new("apt-get").args(["update", "-qq"]))?;
        }
    }
    let kernel = shown
        .get(KERNEL_META)
        .and_then(|(_, depends)| {
            depends
                .split(',')
                .map(|d| d.split_whitespace().next().unwrap_or(""))
                .find(|d| d.starts_with("linux-image-6.1.0-") && d.ends_with("-amd64"))
                .map(str::to_owned)
        })
        .ok_or(ImageError::NoKernelPackage)?;
    let kernel_version = show(&[&kernel])?
        .remove(&kernel)
        .map(|(v, _)| v)
        .ok_or_else(|| ImageError::NoVersion {
            package: kernel.clone(),
        })?;
    let mut out = vec![(kernel, kernel_version)];
    for p in TOOL_PACKAGES {
        let (v, _) = shown.get(*p).ok_or_else(|| ImageError::NoVersion {
            package: (*p).to_owned(),
        })?;
        out.push(((*p).to_owned(), v.clone()));
    }
    Ok(out)
}

/// FNV-1a: a stable, dependency-free hash for the cache key.
fn fnv1a(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Serialises image builds within one process: tests run on parallel threads of
/// one process, and the private build directory is named after the process.
static BUILD_LOCK: Mutex<()> = Mutex::new(());

/// Returns the cached base image under `cache_root`, building it first if needed.
pub fn base_image(cache_root: &Path) -> Result<BaseImage, ImageError> {
    // A panic elsewhere while holding the lock leaves nothing half-done here.
    let _guard = BUILD_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    match prepare(cache_root) {
        // Stale apt lists name versions the mirror no longer has: refresh, retry once.
        Err(ImageError::Command { command, .. }) if command.contains("\"download\"") => {
            run(Command::new("apt-get").args(["update", "-qq"]))?;
            prepare(cache_root)
        }
        other => other,
    }
}

fn prepare(cache_root: &Path) -> Result<BaseImage, ImageError> {
    let packages = resolve_packages()?;
    let kernel_pkg = packages[0].0.clone();
    let pinned: Vec<String> = packages.iter().map(|(p, v)| format!("{p}={v}")).collect();
    // Everything that shapes the image: package versions, modules, tools, init.
    let tools: Vec<String> = TOOLS
        .iter()
        .map(|(src, dst)| format!("{src}>{dst}"))
        .collect();
    let key = format!(
        "{}\nrecipe={RECIPE}\nmodules={}\ntools={}\ninit:\n{}",
        pinned.join("\n"),
        BOOT_MODULES.join(","),
        tools.join(","),
        init_script()
    );
    let kernel_release = kernel_pkg
        .strip_prefix("linux-image-")
        .unwrap_or(&kernel_pkg)
        .to_owned();
    let dir = cache_root.join(format!("{kernel_release}-{:016x}", fnv1a(key.as_bytes())));
    let done = dir.join("KEY");
    if !done.exists() {
        let tmp = cache_root.join(format!(".build-{}", std::process::id()));
        let built = build(&tmp, &dir, &pinned, &kernel_release, &key);
        if built.is_err() {
            // Leave no half-built directory behind for the next run to trip over.
            let _ = fs::remove_dir_all(&tmp);
        }
        built?;
        remove_stale_caches(cache_root, &dir);
    }
    let libraries = fs::read_to_string(dir.join("libraries"))
        .map_err(io_err(&dir.join("libraries")))?
        .lines()
        .map(str::to_owned)
        .collect();
    Ok(BaseImage {
        kernel: dir.join("vmlinuz"),
        initrd: dir.join("base.cpio"),
        dir,
        kernel_release,
        libraries,
        packages: pinned,
    })
}

/// Older images (other package versions or recipes) are 20 MB each: drop them.
fn remove_stale_caches(cache_root: &Path, current: &Path) {
    let Ok(entries) = fs::read_dir(cache_root) else {
        return;
    };
    for e in entries.flatten() {
        let path = e.path();
        if path != current && path.is_dir() && path.join("KEY").exists() {
            let _ = fs::remove_dir_all(&path);
        }
    }
}

/// Builds into a private directory and renames it into place, so concurrent
/// test processes never see a half-built cache.
fn build(
    tmp: &Path,
    dir: &Path,
    pinned: &[String],
    kernel_release: &str,
    key: &str,
) -> Result<(), ImageError> {
    if tmp.exists() {
        fs::remove_dir_all(tmp).map_err(io_err(tmp))?;
    }
    let debs = tmp.join("debs");
    let pkgroot = tmp.join("pkgroot");
    let tree = tmp.join("modroot");
    for d in [&debs, &pkgroot, &tree] {
        fs::create_dir_all(d).map_err(io_err(d))?;
    }
    // Pinned `name=version` so the archive matches the cache key even if the
    // lists change meanwhile.
    run(Command::new("apt-get")
        .arg("download")
        .arg("-qq")
        .args(pinned)
        .current_dir(&debs))?;
    for entry in pinned {
        let name = entry.split('=').next().unwrap_or(entry);
        let deb = find_deb(&debs, name)?;
        run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&pkgroot))?;
    }

    let mut archive = Archive::new();
    for d in [
        "/bin",
        "/sbin",
        "/dev",
        "/proc",
        "/sys",
        "/run",
        "/tmp",
        "/etc",
        "/lib",
        "/lib64",
        GUEST_LIB_DIR,
        "/var",
    ] {
        archive.dir(d);
    }
    archive.char_device("/dev/console", 5, 1);
    archive.symlink("/var/run", "/run");

    // Kernel and modules.
    let kernel_src = pkgroot.join(format!("boot/vmlinuz-{kernel_release}"));
    let kernel_pkg = format!("linux-image-{kernel_release}");
    if !kernel_src.exists() {
        return Err(ImageError::KernelContent {
            package: kernel_pkg,
            what: kernel_src.display().to_string(),
        });
    }
    fs::copy(&kernel_src, tmp.join("vmlinuz")).map_err(io_err(&kernel_src))?;
    let mod_dir = format!("lib/modules/{kernel_release}");
    let modules = module_closure(&pkgroot.join(&mod_dir), BOOT_MODULES)?;
    for rel in modules.values() {
        let src = pkgroot.join(&mod_dir).join(rel);
        let dst = tree.join(&mod_dir).join(rel);
        if let Some(parent) = dst.parent() {
            fs::create_dir_all(parent).map_err(io_err(parent))?;
        }
        fs::copy(&src, &dst).map_err(io_err(&src))?;
    }
    for f in ["modules.builtin", "modules.order"] {
        let src = pkgroot.join(&mod_dir).join(f);
        if src.exists() {
            fs::copy(&src, tree.join(&mod_dir).join(f)).map_err(io_err(&src))?;
        }
    }
    let busybox = pkgroot.join("bin/busybox");
    run(Command::new(&busybox)
        .args(["depmod", "-b"])
        .arg(&tree)
        .arg(kernel_release))?;
    add_tree(&mut archive, &tree, &tree.join("lib"))?;

    // busybox provides the shell and every small tool; init installs its links.
    let bb = fs::read(&busybox).map_err(io_err(&busybox))?;
    archive.file("/bin/busybox", 0o755, &bb);
    archive.symlink("/bin/sh", "busybox");
    archive.symlink("/sbin/modprobe", "/bin/busybox");

    let mut libraries = BTreeMap::new();
    for (src, dst) in TOOLS {
        let path = pkgroot.join(src);
        let data = fs::read(&path).map_err(io_err(&path))?;
        archive.file(dst, 0o755, &data);
        for (guest, host) in shared_libraries(&path, &pkgroot)? {
            libraries.insert(guest, host);
        }
    }
    for (guest, host) in &libraries {
        let data = fs::read(host).map_err(io_err(host))?;
        archive.file(guest, 0o755, &data);
    }
    archive.file("/init", 0o755, init_script().as_bytes());
    archive.file(
        "/etc/kubelvs-modules",
        0o644,
        BOOT_MODULES.join("\n").as_bytes(),
    );
    let cpio = archive.finish();
    fs::write(tmp.join("base.cpio"), &cpio).map_err(io_err(tmp))?;
    let lib_list: Vec<&str> = libraries.keys().map(String::as_str).collect();
    fs::write(tmp.join("libraries"), lib_list.join("\n")).map_err(io_err(tmp))?;
    // Only the artefacts stay in the cache; the unpacked packages are large.
    for d in [&debs, &pkgroot, &tree] {
        fs::remove_dir_all(d).map_err(io_err(d))?;
    }
    fs::write(tmp.join("KEY"), key).map_err(io_err(tmp))?;
    if fs::rename(tmp, dir).is_err() {
        // Another process finished first; its copy is equivalent.
        let _ = fs::remove_dir_all(tmp);
    }
    Ok(())
}

fn find_deb(dir: &Path, package: &str) -> Result<PathBuf, ImageError> {
    let prefix = format!("{package}_");
    let entries = fs::read_dir(dir).map_err(io_err(dir))?;
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with(&prefix) && name.ends_with(".deb") {
            return Ok(e.path());
        }
    }
    Err(ImageError::DebMissing {
        package: package.to_owned(),
        dir: dir.to_owned(),
    })
}

/// Adds every directory and file under `root/sub` to the archive at its path relative to `root`.
fn add_tree(archive: &mut Archive, root: &Path, sub: &Path) -> Result<(), ImageError> {
    let mut entries: Vec<_> = fs::read_dir(sub)
        .map_err(io_err(sub))?
        .flatten()
        .map(|e| e.path())
        .collect();
    entries.sort();
    for path in entries {
        let rel = path.strip_prefix(root).unwrap_or(&path);
        let guest = format!("/{}", rel.display());
        if path.is_dir() {
            if guest != "/lib" {
                archive.dir(&guest);
            }
            add_tree(archive, root, &path)?;
        } else {
            let data = fs::read(&path).map_err(io_err(&path))?;
            archive.file(&guest, 0o644, &data);
        }
    }
    Ok(())
}

/// Module name as the kernel spells it (`-` and `_` are equivalent).
fn module_name(file_stem: &str) -> String {
    file_stem.replace('-', "_")
}

/// The `depends=` entry of a module's `.modinfo` section.
pub fn modinfo_depends(ko: &[u8]) -> Vec<String> {
    let needle = b"depends=";
    let Some(pos) = ko
        .windows(needle.len() + 1)
        .position(|w| w[0] == 0 && &w[1..] == needle)
    else {
        return Vec::new();
    };
    let start = pos + 1 + needle.len();
    let end = ko[start..]
        .iter()
        .position(|b| *b == 0)
        .map_or(ko.len(), |n| start + n);
    String::from_utf8_lossy(&ko[start..end])
        .split(',')
        .filter(|s| !s.is_empty())
        .map(module_name)
        .collect()
}

/// The modules `roots` need, transitively: module name -> path relative to `mod_dir`.
fn module_closure(mod_dir: &Path, roots: &[&str]) -> Result<BTreeMap<String, PathBuf>, ImageError> {
    let mut index = BTreeMap::new();
    index_modules(mod_dir, &mod_dir.join("kernel"), &mut index)?;
    let mut wanted = BTreeMap::new();
    let mut queue: Vec<(String, String)> = roots
        .iter()
        .map(|r| (module_name(r), "the boot list".to_owned()))
        .collect();
    while let Some((name, needed_by)) = queue.pop() {
        if wanted.contains_key(&name) {
            continue;
        }
        let rel: &PathBuf = index.get(&name).ok_or_else(|| ImageError::ModuleMissing {
            module: name.clone(),
            needed_by: needed_by.clone(),
        })?;
        let path = mod_dir.join(rel);
        let data = fs::read(&path).map_err(io_err(&path))?;
        for dep in modinfo_depends(&data) {
            queue.push((dep, name.clone()));
        }
        wanted.insert(name, rel.clone());
    }
    Ok(wanted)
}

fn index_modules(
    mod_dir: &Path,
    dir: &Path,
    index: &mut BTreeMap<String, PathBuf>,
) -> Result<(), ImageError> {
    for e in fs::read_dir(dir).map_err(io_err(dir))?.flatten() {
        let path = e.path();
        if path.is_dir() {
            index_modules(mod_dir, &path, index)?;
        } else if let Some(stem) = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(".ko"))
        {
            let rel = path.strip_prefix(mod_dir).unwrap_or(&path).to_owned();
            index.insert(module_name(stem), rel);
        }
    }
    Ok(())
}

/// Shared libraries of `binary`: guest path -> host file. Libraries shipped in
/// the unpacked packages under `pkgroot` win over the host's.
pub fn shared_libraries(
    binary: &Path,
    pkgroot: &Path,
) -> Result<BTreeMap<String, PathBuf>, ImageError> {
    let search = [
        pkgroot.join("lib/x86_64-linux-gnu"),
        pkgroot.join("usr/lib/x86_64-linux-gnu"),
    ];
    let ld_path = std::env::join_paths(&search).unwrap_or_default();
    let out = run(Command::new("ldd")
        .arg(binary)
        .env("LD_LIBRARY_PATH", ld_path))?;
    let mut libs = BTreeMap::new();
    for line in out.lines() {
        let line = line.trim();
        if let Some((name, rest)) = line.split_once(" => ") {
            let target = rest.split(" (").next().unwrap_or("").trim();
            if target == "not found" || target.is_empty() {
                return Err(ImageError::LibraryMissing {
                    binary: binary.to_owned(),
                    library: name.to_owned(),
                });
            }
            libs.insert(format!("{GUEST_LIB_DIR}/{name}"), PathBuf::from(target));
        } else if let Some(path) = line.split(" (").next().filter(|p| p.starts_with('/')) {
            // The dynamic loader, listed by absolute path.
            libs.insert(path.to_owned(), PathBuf::from(path));
        }
    }
    Ok(libs)
}

/// PID 1 of the guest: mounts, loads modules, runs the test binary, powers off.
/// Module failures and the test binary's exit status are reported in the same
/// line protocol the host parses.
fn init_script() -> String {
    format!(
        r#"#!/bin/sh
/bin/busybox --install -s /bin
export PATH=/sbin:/bin LD_LIBRARY_PATH={GUEST_LIB_DIR}
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
mount -t tmpfs run /run
mount -t tmpfs tmp /tmp
for m in $(cat /etc/kubelvs-modules); do
    modprobe "$m" || echo "KUBELVS FAIL boot-modules modprobe $m failed"
done
mode=scenarios
for arg in $(cat /proc/cmdline); do
    case "$arg" in kubelvs.mode=*) mode="${{arg#kubelvs.mode=}}";; esac
done
{GUEST_BIN} "$mode"
echo "KUBELVS EXIT $?"
poweroff -f
"#
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modinfo_depends_reads_the_list() {
        let ko = b"\x7fELF....\0license=GPL\0depends=nf_conntrack,libcrc32c,nf-defrag-ipv6\0retpoline=Y\0";
        assert_eq!(
            modinfo_depends(ko),
            ["nf_conntrack", "libcrc32c", "nf_defrag_ipv6"]
        );
    }

    #[test]
    fn modinfo_without_depends_is_empty() {
        assert!(modinfo_depends(b"\0depends=\0name=x\0").is_empty());
        assert!(modinfo_depends(b"garbage").is_empty());
        assert!(modinfo_depends(b"\0depends=").is_empty());
    }

    #[test]
    fn parses_apt_cache_show() {
        let text = "Package: linux-image-amd64\nVersion: 6.1.192-2\nDepends: linux-image-6.1.0-56-amd64 (= 6.1.192-2)\n\nPackage: ipvsadm\nVersion: 1:1.31-1+b1\n";
        let m = parse_show(text);
        assert_eq!(m["ipvsadm"].0, "1:1.31-1+b1");
        assert!(m["linux-image-amd64"]
            .1
            .starts_with("linux-image-6.1.0-56-amd64"));
        assert!(parse_show("garbage").is_empty());
    }

    #[test]
    fn fnv_is_stable() {
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_ne!(fnv1a(b"a"), fnv1a(b"b"));
    }
}
