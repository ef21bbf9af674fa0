//! The procedure table. Every procedure qemud answers is declared once, in
//! its driver's folder (`domain/procedures.rs`, `host/procedures.rs`, ...),
//! as one [`Procedure`] row: number, access and handler. The public API name
//! used in messages comes from libvirt's own facts about the procedure
//! (`qemud_protocol::remote::procs::ALL`), and a test checks each row's
//! access against them. Dispatch, the before-open and read-only checks and
//! "unsupported" answers all come from here.

use std::sync::{Arc, LazyLock};

use actix::prelude::*;
use bytes::Bytes;
use futures::future::LocalBoxFuture;

use qemud_protocol::procinfo::{self, ProcFacts};
use qemud_protocol::{program, Header};

use super::connection::Connection;
use crate::error::Result;
use crate::Services;

/// Who may call a procedure, and when.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// Allowed before CONNECT_OPEN (and after), on any connection.
    BeforeOpen,
    /// Needs an open connection; allowed on read-only connections.
    Read,
    /// Needs an open read-write connection.
    Write,
}

/// Everything a handler gets about the call it answers.
pub struct Call {
    pub svc: Arc<Services>,
    pub header: Header,
    pub body: Bytes,
    /// The connection is read-only (socket or CONNECT_OPEN flag). Handlers of
    /// procedures libvirt refuses only for some flags check this.
    pub read_only: bool,
    /// The connection actor, for handlers that open streams or register
    /// callbacks from a future.
    pub conn: Addr<Connection>,
    /// The connection's number, as in the daemon's log.
    pub conn_id: u64,
}

pub type AsyncHandler = fn(Call) -> LocalBoxFuture<'static, Result<Vec<u8>>>;
pub type ConnectionHandler = fn(&mut Connection, &mut Context<Connection>, Call) -> Result<Vec<u8>>;

#[derive(Clone, Copy)]
pub enum Handler {
    /// Runs as its own future, so a slow VM holds up only its own calls.
    Async(AsyncHandler),
    /// Runs inside the connection actor: reads or changes the connection's
    /// own state (open, close, event callbacks, streams).
    Connection(ConnectionHandler),
}

#[derive(Clone, Copy)]
pub struct Procedure {
    pub program: u32,
    pub number: i32,
    pub access: Access,
    pub handler: Handler,
}

impl Procedure {
    /// What libvirt says of this procedure.
    pub fn facts(&self) -> Option<&'static ProcFacts> {
        facts(self.program, self.number)
    }

    /// The public API name for messages, e.g. `virDomainDestroy`.
    pub fn api_name(&self) -> &'static str {
        self.facts().map(|f| f.api).unwrap_or("unknown procedure")
    }
}

/// libvirt's facts about a procedure of a program qemud speaks.
pub fn facts(prog: u32, number: i32) -> Option<&'static ProcFacts> {
    match prog {
        program::REMOTE => procinfo::find(qemud_protocol::remote::procs::ALL, number),
        program::QEMU => procinfo::find(qemud_protocol::qemu::procs::ALL, number),
        _ => None,
    }
}

/// Declares a procedure answered as its own future. The handler is an
/// `async fn(&Call, Args) -> Result<Ret>`; the argument and reply types come
/// from its signature (`()` for none).
///
/// `call!(NUMBER, Read, handler)` for the REMOTE program,
/// `call!(program::QEMU, NUMBER, Write, handler)` for another.
#[macro_export]
macro_rules! call {
    ($number:expr, $access:ident, $handler:path) => {
        $crate::call!(qemud_protocol::program::REMOTE, $number, $access, $handler)
    };
    ($program:expr, $number:expr, $access:ident, $handler:path) => {
        $crate::rpc::table::Procedure {
            program: $program,
            number: $number,
            access: $crate::rpc::table::Access::$access,
            handler: $crate::rpc::table::Handler::Async(|call| {
                Box::pin(async move {
                    let args = $crate::rpc::wire::decode(&call.body)?;
                    let ret = $handler(&call, args).await?;
                    $crate::rpc::wire::encode(&ret)
                })
            }),
        }
    };
}

/// Declares a procedure answered inside the connection actor. The handler is
/// a `fn(&mut Connection, &mut Context<Connection>, &Call, Args) -> Result<Ret>`.
#[macro_export]
macro_rules! conn_call {
    ($number:expr, $access:ident, $handler:path) => {
        $crate::conn_call!(qemud_protocol::program::REMOTE, $number, $access, $handler)
    };
    ($program:expr, $number:expr, $access:ident, $handler:path) => {
        $crate::rpc::table::Procedure {
            program: $program,
            number: $number,
            access: $crate::rpc::table::Access::$access,
            handler: $crate::rpc::table::Handler::Connection(|conn, ctx, call| {
                let args = $crate::rpc::wire::decode(&call.body)?;
                let ret = $handler(conn, ctx, &call, args)?;
                $crate::rpc::wire::encode(&ret)
            }),
        }
    };
}

/// Every driver's rows. Adding a driver adds its folder and one line here.
fn all_rows() -> Vec<Procedure> {
    let mut rows = Vec::new();
    rows.extend(super::connect::procedures());
    rows.extend(crate::host::procedures::procedures());
    rows.extend(crate::domain::procedures::procedures());
    rows.extend(crate::domain::stats::procedures());
    rows.extend(crate::domain::tuning::procedures());
    rows.extend(crate::network::procedures());
    rows.extend(crate::storage::procedures());
    rows.extend(crate::secret::procedures());
    rows.extend(crate::nodedev::procedures());
    rows.extend(crate::interface::procedures());
    rows.extend(crate::nwfilter::procedures());
    rows.extend(crate::qemu_program::procedures());
    rows.extend(crate::domain::console::procedures());
    rows.extend(crate::domain::display::procedures());
    rows.extend(crate::domain::agent::procedures());
    rows
}

/// Rows indexed by procedure number, one vector per program.
pub struct Table {
    remote: Vec<Option<Procedure>>,
    qemu: Vec<Option<Procedure>>,
}

impl Table {
    fn build(rows: Vec<Procedure>) -> Table {
        let mut t = Table {
            remote: Vec::new(),
            qemu: Vec::new(),
        };
        for row in rows {
            let slots = match row.program {
                program::REMOTE => &mut t.remote,
                program::QEMU => &mut t.qemu,
                other => panic!("procedure {} of unknown program {other:#x}", row.number),
            };
            let i = usize::try_from(row.number).expect("procedure numbers are positive");
            if slots.len() <= i {
                slots.resize(i + 1, None);
            }
            assert!(
                slots[i].is_none(),
                "procedure {} of program {:#x} declared twice",
                row.number,
                row.program
            );
            slots[i] = Some(row);
        }
        t
    }

    pub fn get(&self, prog: u32, number: i32) -> Option<&Procedure> {
        let slots = match prog {
            program::REMOTE => &self.remote,
            program::QEMU => &self.qemu,
            _ => return None,
        };
        usize::try_from(number)
            .ok()
            .and_then(|i| slots.get(i))
            .and_then(|p| p.as_ref())
    }

    pub fn rows(&self) -> impl Iterator<Item = &Procedure> {
        self.remote.iter().chain(self.qemu.iter()).flatten()
    }
}

/// The table, built on first use.
pub static TABLE: LazyLock<Table> = LazyLock::new(|| Table::build(all_rows()));

#[cfg(test)]
mod tests {
    use super::*;
    use qemud_protocol::procinfo::ReadOnly;

    /// Procedures libvirt serves before CONNECT_OPEN.
    const BEFORE_OPEN: &[&str] = &[
        "CONNECT_OPEN",
        "AUTH_LIST",
        "AUTH_SASL_INIT",
        "AUTH_SASL_START",
        "AUTH_SASL_STEP",
        "AUTH_POLKIT",
        // Only for VIR_DRV_FEATURE_PROGRAM_KEEPALIVE; the handler checks.
        "CONNECT_SUPPORTS_FEATURE",
    ];

    #[test]
    fn every_row_is_a_libvirt_procedure_with_libvirts_access() {
        let mut checked = 0;
        for row in TABLE.rows() {
            let f = row
                .facts()
                .unwrap_or_else(|| panic!("procedure {} is not libvirt's", row.number));
            let expected = if BEFORE_OPEN.contains(&f.symbol) {
                Access::BeforeOpen
            } else if f.read_only == ReadOnly::Always {
                Access::Write
            } else {
                Access::Read
            };
            assert_eq!(row.access, expected, "access of {}", f.symbol);
            checked += 1;
        }
        assert!(checked > 50, "only {checked} rows");
    }

    #[test]
    fn lookups() {
        use qemud_protocol::remote::procs::*;
        assert!(TABLE.get(program::REMOTE, CONNECT_OPEN).is_some());
        assert!(TABLE.get(program::REMOTE, -1).is_none());
        assert!(TABLE.get(program::REMOTE, 99_999).is_none());
        assert!(TABLE.get(0x1234, CONNECT_OPEN).is_none());
        let destroy = TABLE.get(program::REMOTE, DOMAIN_DESTROY).unwrap();
        assert_eq!(destroy.access, Access::Write);
        assert_eq!(destroy.api_name(), "virDomainDestroy");
    }
}
