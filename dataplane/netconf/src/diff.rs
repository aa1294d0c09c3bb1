//! Pure: the operations that take the node from what it has to what the plan wants,
//! touching only what kube-lvs added.
//!
//! - An address the plan wants and the node lacks is added and owned. One the node
//!   already has (configured by hand, by another tool) is used but never owned, so
//!   it is never removed.
//! - A sysctl whose value differs is written, and owned with the value it had; when
//!   the plan no longer wants it, the previous value is put back, unless someone
//!   changed it since (then it is left alone). A sysctl that already had the wanted
//!   value is not owned and never reverted.
//! - A link brought up by us is owned, and set down when no longer wanted.

use std::collections::{BTreeMap, BTreeSet};

use crate::desired::{Desired, LocalAddress};

/// What the node has, as far as the plan is concerned.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Observed {
    pub addresses: BTreeSet<LocalAddress>,
    /// Current values of the sysctls of interest; absent: no such sysctl.
    pub sysctls: BTreeMap<String, String>,
    /// Links by name, and whether they are up.
    pub links: BTreeMap<String, bool>,
}

/// What kube-lvs added or changed (persisted, so a restarted agent knows).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Owned {
    pub addresses: BTreeSet<LocalAddress>,
    /// Path -> (our value, the value before ours).
    pub sysctls: BTreeMap<String, (String, String)>,
    pub links: BTreeSet<String>,
}

/// One change to the node.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Op {
    AddAddress(LocalAddress),
    DelAddress(LocalAddress),
    /// Write `value`; `previous` is recorded so it can be restored.
    SetSysctl {
        path: String,
        value: String,
        previous: String,
    },
    /// Put back the value from before ours.
    RestoreSysctl {
        path: String,
        value: String,
    },
    LinkUp(String),
    LinkDown(String),
}

/// The decision: operations in order, plus ownership entries to drop without any
/// operation (things someone else removed or changed).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Diff {
    pub ops: Vec<Op>,
    pub forget: Forget,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Forget {
    pub addresses: Vec<LocalAddress>,
    pub sysctls: Vec<String>,
    pub links: Vec<String>,
}

pub fn diff(desired: &Desired, observed: &Observed, owned: &Owned) -> Diff {
    let mut d = Diff::default();
    // Links first (a tunnel device up before its address matters), then sysctls
    // (ARP suppression before the VIP appears on lo), then addresses.
    for link in desired.links_up.keys() {
        if observed.links.get(link) == Some(&false) {
            d.ops.push(Op::LinkUp(link.clone()));
        }
    }
    for (path, (value, _)) in &desired.sysctls {
        match observed.sysctls.get(path) {
            Some(current) if current != value => d.ops.push(Op::SetSysctl {
                path: path.clone(),
                value: value.clone(),
                previous: owned
                    .sysctls
                    .get(path)
                    .map_or_else(|| current.clone(), |(_, prev)| prev.clone()),
            }),
            _ => {}
        }
    }
    for a in desired.addresses.keys() {
        if !observed.addresses.contains(a) {
            d.ops.push(Op::AddAddress(a.clone()));
        }
    }
    // Then undo what is ours and no longer wanted, in reverse order.
    for a in &owned.addresses {
        if desired.addresses.contains_key(a) {
            continue;
        }
        if observed.addresses.contains(a) {
            d.ops.push(Op::DelAddress(a.clone()));
        } else {
            d.forget.addresses.push(a.clone());
        }
    }
    for (path, (ours, previous)) in &owned.sysctls {
        if desired.sysctls.contains_key(path) {
            continue;
        }
        if observed.sysctls.get(path) == Some(ours) {
            d.ops.push(Op::RestoreSysctl {
                path: path.clone(),
                value: previous.clone(),
            });
        } else {
            d.forget.sysctls.push(path.clone());
        }
    }
    for link in &owned.links {
        if desired.links_up.contains_key(link) {
            continue;
        }
        if observed.links.get(link) == Some(&true) {
            d.ops.push(Op::LinkDown(link.clone()));
        } else {
            d.forget.links.push(link.clone());
        }
    }
    d
}

impl Owned {
    /// Records a successful operation.
    pub fn record(&mut self, op: &Op) {
        match op {
            Op::AddAddress(a) => {
                self.addresses.insert(a.clone());
            }
            Op::DelAddress(a) => {
                self.addresses.remove(a);
            }
            Op::SetSysctl {
                path,
                value,
                previous,
            } => {
                self.sysctls
                    .insert(path.clone(), (value.clone(), previous.clone()));
            }
            Op::RestoreSysctl { path, .. } => {
                self.sysctls.remove(path);
            }
            Op::LinkUp(l) => {
                self.links.insert(l.clone());
            }
            Op::LinkDown(l) => {
                self.links.remove(l);
            }
        }
    }

    pub fn forget(&mut self, f: &Forget) {
        for a in &f.addresses {
            self.addresses.remove(a);
        }
        for s in &f.sysctls {
            self.sysctls.remove(s);
        }
        for l in &f.links {
            self.links.remove(l);
        }
    }

    /// The state file's text: one line per owned item.
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        for a in &self.addresses {
            out += &format!("address {} {}/{}\n", a.ifname, a.addr, a.prefix_len);
        }
        for (path, (ours, prev)) in &self.sysctls {
            out += &format!("sysctl {path} {ours} {prev}\n");
        }
        for l in &self.links {
            out += &format!("link {l}\n");
        }
        out
    }

    /// Parses [`Owned::to_text`]; `Err` names the first line it cannot read.
    pub fn parse(text: &str) -> Result<Self, (usize, String)> {
        let mut o = Self::default();
        for (i, line) in text.lines().enumerate() {
            let f: Vec<&str> = line.split_whitespace().collect();
            let bad = || (i + 1, line.to_owned());
            match f[..] {
                [] => {}
                ["address", ifname, cidr] => {
                    let (addr, len) = cidr.split_once('/').ok_or_else(bad)?;
                    o.addresses.insert(LocalAddress {
                        ifname: ifname.to_owned(),
                        addr: addr.parse().map_err(|_| bad())?,
                        prefix_len: len.parse().map_err(|_| bad())?,
                    });
                }
                ["sysctl", path, ours, prev] => {
                    o.sysctls
                        .insert(path.to_owned(), (ours.to_owned(), prev.to_owned()));
                }
                ["link", l] => {
                    o.links.insert(l.to_owned());
                }
                _ => return Err(bad()),
            }
        }
        Ok(o)
    }
}
