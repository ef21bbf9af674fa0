//! The QEMU program (0x20008087): monitor passthrough (QMP, or HMP through
//! `human-monitor-command`), raw monitor events, and guest-agent
//! passthrough. Passthrough marks the domain tainted in its log, as libvirt
//! does, and is refused on read-only connections.

use std::io::Write;
use std::sync::{Arc, LazyLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use actix::prelude::*;
use bytes::Bytes;
use dashmap::DashSet;
use serde_json::{json, Value};
use tracing::warn;
use uuid::Uuid;

use qemud_protocol::program;
use qemud_protocol::qemu::procs::*;
use qemud_protocol::qemu::*;
use qemud_protocol::remote::NonnullDomain;
use qemud_protocol::xdr::{OptString, XdrString};

use crate::domain::qemu::GetQmp;
use crate::domain::qmp::{QmpClient, QmpError};
use crate::domain::registry::{GetRunning, RunningVm};
use crate::error::{Error, Result};
use crate::events::{Event, Family, ObjectKey};
use crate::rpc::connection::{Callback, Connection};
use crate::rpc::wire::{check_flags, encode};
use crate::rpc::{Call, Procedure};
use crate::{call, conn_call};

/// `VIR_DOMAIN_QEMU_MONITOR_COMMAND_HMP`.
const MONITOR_HMP: u32 = 1;
/// `VIR_CONNECT_DOMAIN_QEMU_MONITOR_EVENT_REGISTER_REGEX` / `_NOCASE`.
const EVENT_REGEX: u32 = 1;
const EVENT_NOCASE: u32 = 2;
/// Longest a passthrough command may take: QEMU's own commands answer
/// quickly; a monitor that does not is reported, never waited on forever.
const PASSTHROUGH_DEADLINE: Duration = Duration::from_secs(60);

/// This driver's rows of the procedure table.
pub fn procedures() -> Vec<Procedure> {
    vec![
        call!(program::QEMU, DOMAIN_MONITOR_COMMAND, Read, monitor_command),
        call!(program::QEMU, DOMAIN_AGENT_COMMAND, Read, agent_command),
        conn_call!(
            program::QEMU,
            CONNECT_DOMAIN_MONITOR_EVENT_REGISTER,
            Read,
            event_register
        ),
        conn_call!(
            program::QEMU,
            CONNECT_DOMAIN_MONITOR_EVENT_DEREGISTER,
            Read,
            event_deregister
        ),
    ]
}

/// libvirt refuses passthrough to read-only connections in its public API
/// layer, before any driver runs.
fn refuse_read_only(call: &Call, api: &str) -> Result<()> {
    if call.read_only {
        return Err(Error::OperationDenied(format!(
            "read only access prevents {api}"
        )));
    }
    Ok(())
}

/// A running domain's supervisor and monitor, for a call naming it.
pub async fn running(call: &Call, dom: &NonnullDomain) -> Result<(RunningVm, QmpClient)> {
    let uuid = call.svc.index.resolve(dom)?.uuid;
    let vm = call.svc.registry.send(GetRunning { uuid }).await??;
    let qmp = vm
        .vm
        .send(GetQmp)
        .await
        .map_err(|_| Error::OperationInvalid("domain is not running".into()))?;
    Ok((vm, qmp))
}

/// Domains already marked tainted, per run, so the log says it once.
static TAINTED: LazyLock<DashSet<(Uuid, u64, &'static str)>> = LazyLock::new(DashSet::new);

/// Notes in the domain's log that a client went around the daemon, as
/// libvirt's "is tainted" line.
pub fn taint(vm: &RunningVm, what: &'static str) {
    let def = &vm.def;
    if !TAINTED.insert((def.uuid, vm.run, what)) {
        return;
    }
    warn!(domain = %def.name, "domain is tainted: {what}");
    let line = format!(
        "Domain name='{}' uuid={} is tainted: {what}\n",
        def.name, def.uuid
    );
    let written = std::fs::OpenOptions::new()
        .append(true)
        .open(&vm.log_file)
        .and_then(|mut f| f.write_all(line.as_bytes()));
    if let Err(e) = written {
        warn!(domain = %def.name, "cannot note the taint in the domain log: {e}");
    }
}

async fn monitor_command(
    call: &Call,
    a: DomainMonitorCommandArgs,
) -> Result<DomainMonitorCommandRet> {
    refuse_read_only(call, "virDomainQemuMonitorCommand")?;
    check_flags(a.flags, MONITOR_HMP, "virDomainQemuMonitorCommand")?;
    let (vm, qmp) = running(call, &a.dom).await?;
    taint(&vm, "custom-monitor");
    let result = if a.flags & MONITOR_HMP != 0 {
        let r = qmp
            .execute_within(
                "human-monitor-command",
                Some(json!({ "command-line": a.cmd.as_str() })),
                PASSTHROUGH_DEADLINE,
            )
            .await
            .map_err(qmp_error)?;
        r.as_str().unwrap_or_default().to_owned()
    } else {
        qmp_passthrough(&qmp, a.cmd.as_str()).await?
    };
    Ok(DomainMonitorCommandRet {
        result: XdrString(result),
    })
}

/// Runs a client's QMP command and gives back QEMU's whole answer, errors
/// included, as libvirt does.
async fn qmp_passthrough(qmp: &QmpClient, text: &str) -> Result<String> {
    let cmd: Value = serde_json::from_str(text)
        .map_err(|e| Error::Internal(format!("cannot parse json {text}: {e}")))?;
    let Some(name) = cmd.get("execute").and_then(Value::as_str) else {
        return Err(Error::Internal(format!(
            "cannot parse json {text}: no 'execute' member"
        )));
    };
    let arguments = cmd.get("arguments").cloned();
    let id = cmd
        .get("id")
        .cloned()
        .unwrap_or_else(|| json!("libvirt-passthrough"));
    let answer = match qmp
        .execute_within(name, arguments, PASSTHROUGH_DEADLINE)
        .await
    {
        Ok(ret) => json!({ "return": ret, "id": id }),
        Err(QmpError::Command { class, desc, .. }) => {
            json!({ "id": id, "error": { "class": class, "desc": desc } })
        }
        Err(e) => return Err(qmp_error(e)),
    };
    Ok(answer.to_string())
}

fn qmp_error(e: QmpError) -> Error {
    match e {
        QmpError::Timeout(c) => Error::Timeout(format!("QEMU did not answer '{c}' in time")),
        QmpError::Closed => Error::OperationFailed("QEMU monitor closed".into()),
        QmpError::Command { desc, .. } => Error::Internal(desc),
        other => Error::OperationFailed(other.to_string()),
    }
}

async fn agent_command(call: &Call, a: DomainAgentCommandArgs) -> Result<DomainAgentCommandRet> {
    refuse_read_only(call, "virDomainQemuAgentCommand")?;
    check_flags(a.flags, 0, "virDomainQemuAgentCommand")?;
    let (vm, qmp) = running(call, &a.dom).await?;
    taint(&vm, "custom-ga-command");
    crate::domain::agent::passthrough(&vm, &qmp, a.cmd.as_str(), a.timeout)
        .await
        .map(|r| DomainAgentCommandRet {
            result: Some(XdrString(r)),
        })
}

/// Which QEMU monitor events one callback wants.
#[derive(Clone, Debug)]
pub struct EventFilter {
    name: Option<Arc<str>>,
    nocase: bool,
}

impl EventFilter {
    pub fn matches(&self, event: Option<&str>) -> bool {
        match (&self.name, event) {
            (None, _) => true,
            (Some(_), None) => false,
            (Some(want), Some(got)) if self.nocase => want.eq_ignore_ascii_case(got),
            (Some(want), Some(got)) => **want == *got,
        }
    }
}

type Ctx = Context<Connection>;

fn event_register(
    conn: &mut Connection,
    ctx: &mut Ctx,
    _: &Call,
    a: ConnectDomainMonitorEventRegisterArgs,
) -> Result<ConnectDomainMonitorEventRegisterRet> {
    check_flags(
        a.flags,
        EVENT_REGEX | EVENT_NOCASE,
        "virConnectDomainQemuMonitorEventRegister",
    )?;
    if a.flags & EVENT_REGEX != 0 {
        return Err(Error::ArgumentUnsupported(
            "regular expression event filters are not supported".into(),
        ));
    }
    let object = match &a.dom {
        Some(d) => Some(ObjectKey::Uuid(conn.svc.index.resolve(d)?.uuid)),
        None => None,
    };
    let mut cb = Callback::new(Family::QemuMonitor, 0, object);
    cb.qemu_event = Some(EventFilter {
        name: a.event.map(|e| Arc::from(e.0.as_str())),
        nocase: a.flags & EVENT_NOCASE != 0,
    });
    let callback_id = conn.add_callback(cb, ctx)?;
    Ok(ConnectDomainMonitorEventRegisterRet { callback_id })
}

fn event_deregister(
    conn: &mut Connection,
    _: &mut Ctx,
    _: &Call,
    a: ConnectDomainMonitorEventDeregisterArgs,
) -> Result<()> {
    conn.remove_callback(Family::QemuMonitor, a.callback_id, "qemu monitor event")
}

/// The body of `QEMU_PROC_DOMAIN_MONITOR_EVENT` after the callback ID.
#[derive(serde::Serialize)]
struct MonitorEventBody<'a> {
    dom: &'a NonnullDomain,
    event: XdrString,
    seconds: i64,
    micros: u32,
    details: OptString,
}

/// A raw QMP event for QEMU monitor event subscribers.
pub fn monitor_event(dom: &NonnullDomain, name: &str, data: &Value) -> Result<Event> {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let details = (!data.is_null()).then(|| XdrString(data.to_string()));
    let body = MonitorEventBody {
        dom,
        event: XdrString(name.to_owned()),
        seconds: now.as_secs() as i64,
        micros: now.subsec_micros(),
        details,
    };
    Ok(Event {
        family: Family::QemuMonitor,
        object: ObjectKey::Uuid(Uuid::from_bytes(dom.uuid.0)),
        event_id: 0,
        program: program::QEMU,
        legacy_procedure: None,
        callback_procedure: DOMAIN_MONITOR_EVENT,
        name: Some(Arc::from(name)),
        msg: Bytes::from(encode(&body)?),
    })
}
