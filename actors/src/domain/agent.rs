//! The QEMU guest agent. A `<channel type='unix'>` with target
//! `org.qemu.guest_agent.0` gives the guest a virtio-serial port whose host
//! side is a UNIX socket QEMU serves next to the monitor's. For each request
//! the daemon connects, synchronises with `guest-sync-delimited` (so
//! leftovers of an earlier, abandoned exchange are skipped), sends the
//! command and reads its answer, all under one deadline. Whether the guest
//! has the port open (an agent is listening) comes from QMP's
//! `query-chardev`, so a guest without an agent is refused at once.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

use qemud_protocol::remote::procs::*;
use qemud_protocol::remote::*;

use crate::call;
use crate::domain::qmp::QmpClient;
use crate::domain::registry::RunningVm;
use crate::error::{Error, Result};
use crate::qemu_program::running;
use crate::rpc::wire::check_flags;
use crate::rpc::{Call, Procedure};

/// libvirt's default wait for an agent answer.
const DEFAULT_WAIT: Duration = Duration::from_secs(5);
/// "Block" still has a limit here: no wait is unbounded.
const BLOCK_WAIT: Duration = Duration::from_secs(300);
/// Longest line accepted from the guest.
const MAX_LINE: u64 = 4 * 1024 * 1024;

static NEXT_SYNC: AtomicU64 = AtomicU64::new(1);

pub fn procedures() -> Vec<Procedure> {
    vec![
        call!(DOMAIN_GET_TIME, Write, get_time),
        call!(DOMAIN_SET_TIME, Write, set_time),
        call!(DOMAIN_GET_HOSTNAME, Write, get_hostname),
        call!(DOMAIN_FSFREEZE, Write, fs_freeze),
        call!(DOMAIN_FSTHAW, Write, fs_thaw),
    ]
}

/// The agent socket of a domain whose monitor socket is `qmp_socket`.
pub fn socket_for(qmp_socket: &Path) -> PathBuf {
    qmp_socket.with_extension("agent.sock")
}

fn not_configured() -> Error {
    Error::ArgumentUnsupported("QEMU guest agent is not configured".into())
}

fn unavailable() -> Error {
    Error::AgentUnresponsive("Guest agent not available for now".into())
}

/// libvirt's timeout argument: -2 block, -1 default, 0 do not wait, else seconds.
fn wait_for(timeout: i32) -> Result<Duration> {
    match timeout {
        -2 => Ok(BLOCK_WAIT),
        -1 => Ok(DEFAULT_WAIT),
        0 => Ok(Duration::ZERO),
        t if t > 0 => Ok(Duration::from_secs(t as u64).min(BLOCK_WAIT)),
        t => Err(Error::InvalidArg(format!("timeout must be >= -2, got {t}"))),
    }
}

/// Checks that the domain has an agent channel and the guest opened it.
async fn check_connected(vm: &RunningVm, qmp: &QmpClient) -> Result<()> {
    if !vm.def.devices.guest_agent {
        return Err(not_configured());
    }
    let chardevs = qmp
        .execute("query-chardev", None)
        .await
        .map_err(|e| Error::OperationFailed(e.to_string()))?;
    let open = chardevs
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c.get("label").and_then(Value::as_str) == Some("charchannel0"))
        .and_then(|c| c.get("frontend-open").and_then(Value::as_bool))
        .unwrap_or(false);
    if !open {
        return Err(Error::AgentUnresponsive(
            "QEMU guest agent is not connected".into(),
        ));
    }
    Ok(())
}

/// One exchange with the agent: sync, then the command's raw answer line.
/// `None` when asked not to wait.
async fn exchange(vm: &RunningVm, command: &Value, wait: Duration) -> Result<Option<Value>> {
    let path = socket_for(&vm.qmp_socket);
    let run = async {
        let stream = UnixStream::connect(&path)
            .await
            .map_err(|_| unavailable())?;
        let (read, mut write) = stream.into_split();
        let mut reader = BufReader::new(read);
        let id = NEXT_SYNC.fetch_add(1, Ordering::Relaxed);
        // 0xFF makes the agent drop any partial input; it answers with
        // 0xFF before the sync reply, marking where fresh output starts.
        let sync = json!({"execute": "guest-sync-delimited", "arguments": {"id": id}});
        let mut line = vec![0xff];
        line.extend_from_slice(sync.to_string().as_bytes());
        line.push(b'\n');
        write.write_all(&line).await.map_err(|_| unavailable())?;
        let mut buf = Vec::new();
        (&mut reader)
            .take(MAX_LINE)
            .read_until(0xff, &mut buf)
            .await
            .map_err(|_| unavailable())?;
        loop {
            let reply = read_json(&mut reader).await?;
            if reply.get("return").and_then(Value::as_u64) == Some(id) {
                break;
            }
        }
        let mut line = command.to_string().into_bytes();
        line.push(b'\n');
        write.write_all(&line).await.map_err(|_| unavailable())?;
        if wait.is_zero() {
            return Ok(None);
        }
        read_json(&mut reader).await.map(Some)
    };
    // The sync gets the default wait even when the caller does not wait.
    let limit = wait.max(DEFAULT_WAIT);
    tokio::time::timeout(limit, run)
        .await
        .map_err(|_| unavailable())?
}

async fn read_json(reader: &mut BufReader<tokio::net::unix::OwnedReadHalf>) -> Result<Value> {
    loop {
        let mut buf = Vec::new();
        let n = reader
            .take(MAX_LINE)
            .read_until(b'\n', &mut buf)
            .await
            .map_err(|_| unavailable())?;
        if n == 0 {
            return Err(Error::AgentUnresponsive(
                "Guest agent disappeared while executing command".into(),
            ));
        }
        let text = String::from_utf8_lossy(&buf);
        let text = text.trim_matches(|c: char| c.is_whitespace() || c == '\u{fffd}');
        if text.is_empty() {
            continue;
        }
        return serde_json::from_str(text)
            .map_err(|_| Error::Internal(format!("Parsed JSON reply '{text}' isn't an object")));
    }
}

/// Runs a command and returns its `return` value.
async fn command(
    vm: &RunningVm,
    qmp: &QmpClient,
    name: &str,
    arguments: Option<Value>,
) -> Result<Value> {
    check_connected(vm, qmp).await?;
    let mut cmd = json!({ "execute": name });
    if let Some(a) = arguments {
        cmd["arguments"] = a;
    }
    let reply = exchange(vm, &cmd, DEFAULT_WAIT)
        .await?
        .ok_or_else(unavailable)?;
    if let Some(e) = reply.get("error") {
        let desc = e
            .get("desc")
            .and_then(Value::as_str)
            .unwrap_or("unknown error");
        return Err(Error::Internal(format!(
            "unable to execute QEMU agent command '{name}': {desc}"
        )));
    }
    reply
        .get("return")
        .cloned()
        .ok_or_else(|| Error::Internal("Missing agent reply object".into()))
}

/// `virDomainQemuAgentCommand`: a raw agent command and its raw answer.
pub async fn passthrough(
    vm: &RunningVm,
    qmp: &QmpClient,
    command: &str,
    timeout: i32,
) -> Result<String> {
    let wait = wait_for(timeout)?;
    check_connected(vm, qmp).await?;
    let cmd: Value = serde_json::from_str(command)
        .map_err(|e| Error::Internal(format!("cannot parse json {command}: {e}")))?;
    Ok(exchange(vm, &cmd, wait)
        .await?
        .map(|v| v.to_string())
        .unwrap_or_default())
}

async fn get_time(call: &Call, a: DomainGetTimeArgs) -> Result<DomainGetTimeRet> {
    check_flags(a.flags, 0, "qemuDomainGetTime")?;
    let (vm, qmp) = running(call, &a.dom).await?;
    let ns = command(&vm, &qmp, "guest-get-time", None)
        .await?
        .as_u64()
        .ok_or_else(|| Error::Internal("malformed return value".into()))?;
    Ok(DomainGetTimeRet {
        seconds: (ns / 1_000_000_000) as i64,
        nseconds: (ns % 1_000_000_000) as u32,
    })
}

/// `VIR_DOMAIN_TIME_SYNC`: set the guest clock from its RTC.
const TIME_SYNC: u32 = 1;

async fn set_time(call: &Call, a: DomainSetTimeArgs) -> Result<()> {
    check_flags(a.flags, TIME_SYNC, "qemuDomainSetTime")?;
    let (vm, qmp) = running(call, &a.dom).await?;
    let args = if a.flags & TIME_SYNC != 0 {
        None
    } else {
        if a.nseconds >= 1_000_000_000 || a.seconds < 0 {
            return Err(Error::InvalidArg(format!(
                "Time '{}' is out of range",
                a.seconds
            )));
        }
        Some(json!({ "time": a.seconds as i128 * 1_000_000_000 + a.nseconds as i128 }))
    };
    command(&vm, &qmp, "guest-set-time", args).await.map(drop)
}

/// `VIR_DOMAIN_GET_HOSTNAME_LEASE` / `_AGENT`.
const HOSTNAME_AGENT: u32 = 2;
const HOSTNAME_LEASE: u32 = 1;

async fn get_hostname(call: &Call, a: DomainGetHostnameArgs) -> Result<DomainGetHostnameRet> {
    check_flags(
        a.flags,
        HOSTNAME_AGENT | HOSTNAME_LEASE,
        "qemuDomainGetHostname",
    )?;
    if a.flags & HOSTNAME_LEASE != 0 {
        return Err(Error::ArgumentUnsupported(
            "hostnames from DHCP leases are not supported".into(),
        ));
    }
    let (vm, qmp) = running(call, &a.dom).await?;
    let r = command(&vm, &qmp, "guest-get-host-name", None).await?;
    let name = r
        .get("host-name")
        .and_then(Value::as_str)
        .ok_or_else(|| Error::Internal("malformed return value".into()))?;
    Ok(DomainGetHostnameRet {
        hostname: name.into(),
    })
}

/// Freezes or thaws guest filesystems, all or the given mount points;
/// returns how many.
async fn freeze_or_thaw(
    call: &Call,
    dom: &NonnullDomain,
    mountpoints: &[qemud_protocol::xdr::XdrString],
    freeze: bool,
) -> Result<i32> {
    let (vm, qmp) = running(call, dom).await?;
    let (name, args) = match (freeze, mountpoints.is_empty()) {
        (true, true) => ("guest-fsfreeze-freeze", None),
        (true, false) => (
            "guest-fsfreeze-freeze-list",
            Some(
                json!({ "mountpoints": mountpoints.iter().map(|m| m.as_str()).collect::<Vec<_>>() }),
            ),
        ),
        (false, _) => ("guest-fsfreeze-thaw", None),
    };
    let n = command(&vm, &qmp, name, args).await?;
    n.as_i64()
        .map(|n| n as i32)
        .ok_or_else(|| Error::Internal("malformed return value".into()))
}

async fn fs_freeze(call: &Call, a: DomainFsfreezeArgs) -> Result<DomainFsfreezeRet> {
    check_flags(a.flags, 0, "qemuDomainFSFreeze")?;
    Ok(DomainFsfreezeRet {
        filesystems: freeze_or_thaw(call, &a.dom, &a.mountpoints.0, true).await?,
    })
}

async fn fs_thaw(call: &Call, a: DomainFsthawArgs) -> Result<DomainFsthawRet> {
    check_flags(a.flags, 0, "qemuDomainFSThaw")?;
    if !a.mountpoints.0.is_empty() {
        return Err(Error::ArgumentUnsupported(
            "specifying mountpoints is not supported".into(),
        ));
    }
    Ok(DomainFsthawRet {
        filesystems: freeze_or_thaw(call, &a.dom, &[], false).await?,
    })
}

/// `VIR_DOMAIN_INTERFACE_ADDRESSES_SRC_AGENT`.
pub(crate) const ADDRESSES_SRC_AGENT: u32 = 1;

/// The agent source of `virDomainInterfaceAddresses`, whose table row is
/// the network driver's (the lease source is its).
pub(crate) async fn interface_addresses(
    call: &Call,
    a: DomainInterfaceAddressesArgs,
) -> Result<DomainInterfaceAddressesRet> {
    check_flags(a.flags, 0, "qemuDomainInterfaceAddresses")?;
    if a.source != ADDRESSES_SRC_AGENT {
        return Err(Error::ArgumentUnsupported(format!(
            "Unsupported IP address data source {}",
            a.source
        )));
    }
    let (vm, qmp) = running(call, &a.dom).await?;
    let r = command(&vm, &qmp, "guest-network-get-interfaces", None).await?;
    let mut ifaces = Vec::new();
    for iface in r.as_array().into_iter().flatten() {
        let Some(name) = iface.get("name").and_then(Value::as_str) else {
            continue;
        };
        let addrs = iface
            .get("ip-addresses")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|ip| {
                let ty = match ip.get("ip-address-type")?.as_str()? {
                    "ipv4" => 0,
                    "ipv6" => 1,
                    _ => return None,
                };
                Some(DomainIpAddr {
                    type_: ty,
                    addr: ip.get("ip-address")?.as_str()?.into(),
                    prefix: ip.get("prefix")?.as_u64()? as u32,
                })
            })
            .collect();
        ifaces.push(DomainInterface {
            name: name.into(),
            hwaddr: iface
                .get("hardware-address")
                .and_then(Value::as_str)
                .map(Into::into),
            addrs: qemud_protocol::xdr::XdrVec(addrs),
        });
    }
    Ok(DomainInterfaceAddressesRet {
        ifaces: qemud_protocol::xdr::XdrVec(ifaces),
    })
}

/// `VIR_DOMAIN_EVENT_ID_AGENT_LIFECYCLE`.
const EVENT_AGENT_LIFECYCLE: i32 = 18;

/// The body of an agent lifecycle event after the callback ID.
#[derive(serde::Serialize)]
struct AgentLifecycleBody<'a> {
    dom: &'a NonnullDomain,
    state: i32,
    reason: i32,
}

/// The agent connected (the guest opened its port) or disconnected:
/// state CONNECTED 1 / DISCONNECTED 2, reason CHANNEL 2.
pub fn lifecycle_event(dom: &NonnullDomain, connected: bool) -> Result<crate::events::Event> {
    let body = AgentLifecycleBody {
        dom,
        state: if connected { 1 } else { 2 },
        reason: 2,
    };
    crate::events::Event::new(
        crate::events::Family::Domain,
        crate::events::ObjectKey::Uuid(uuid::Uuid::from_bytes(dom.uuid.0)),
        EVENT_AGENT_LIFECYCLE,
        DOMAIN_EVENT_CALLBACK_AGENT_LIFECYCLE,
        &body,
    )
}
