//! Facts libvirt states about each procedure of a program, generated with
//! the procedure numbers (`remote::procs::ALL`, `qemu::procs::ALL`). The
//! daemon's procedure table is checked against them, so its access rules
//! cannot drift from libvirt's.

/// Whether libvirt refuses a procedure on a read-only connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReadOnly {
    /// Allowed on a read-only connection.
    Never,
    /// Always refused ("read only access prevents ...").
    Always,
    /// Refused for some flags only; the handler checks them.
    Flags,
}

/// The stream a procedure opens on its call's serial.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stream {
    /// Data flows from the daemon to the client (console, screenshot, download).
    Read,
    /// Data flows from the client to the daemon (upload).
    Write,
}

#[derive(Clone, Copy, Debug)]
pub struct ProcFacts {
    pub number: i32,
    /// The constant's name without the program prefix, e.g. `DOMAIN_GET_INFO`.
    pub symbol: &'static str,
    /// The public API name libvirt uses in its messages, e.g. `virDomainGetInfo`.
    pub api: &'static str,
    pub read_only: ReadOnly,
    pub stream: Option<Stream>,
    /// libvirt runs these on its high-priority workers (they never block on a VM).
    pub high_priority: bool,
}

/// Looks up a procedure's facts by number.
pub fn find(all: &'static [ProcFacts], number: i32) -> Option<&'static ProcFacts> {
    all.binary_search_by_key(&number, |f| f.number)
        .ok()
        .map(|i| &all[i])
}
