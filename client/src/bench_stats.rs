//! Bench phase: latency of virConnectGetAllDomainStats over N running
//! firmware-only guests, then again with one guest's QEMU SIGSTOPped (when
//! the daemon runs on this machine), which should cost at most the daemon's
//! per-domain stats deadline.

use std::time::{Duration, Instant};

use qemud_protocol::remote::procs;
use qemud_protocol::remote::{
    ConnectGetAllDomainStatsArgs, ConnectGetAllDomainStatsRet, NonnullDomain,
};
use qemud_protocol::xdr::XdrVec;

use crate::bench::{row, Row};
use crate::client::{Client, ClientError};

fn guest_xml(name: &str, ty: &str) -> String {
    format!(
        "<domain type='{ty}'><name>{name}</name><memory unit='MiB'>32</memory>\
         <os><type arch='x86_64' machine='pc'>hvm</type></os>\
         <devices><memballoon model='virtio'/></devices></domain>"
    )
}

/// QEMU's pid for a guest of a daemon on this machine (its command line
/// carries `guest=NAME`).
fn local_qemu_pid(name: &str) -> Option<i32> {
    let needle = format!("guest={name},");
    std::fs::read_dir("/proc").ok()?.find_map(|e| {
        let pid: i32 = e.ok()?.file_name().to_str()?.parse().ok()?;
        let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
        String::from_utf8_lossy(&cmd)
            .replace('\0', " ")
            .contains(&needle)
            .then_some(pid)
    })
}

fn signal(pid: i32, sig: &str) {
    let _ = std::process::Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status();
}

async fn all_stats(c: &Client) -> Result<usize, ClientError> {
    let args = ConnectGetAllDomainStatsArgs {
        doms: XdrVec::default(),
        stats: 0,
        // VIR_CONNECT_LIST_DOMAINS_ACTIVE
        flags: 1,
    };
    let ret: ConnectGetAllDomainStatsRet =
        c.call(procs::CONNECT_GET_ALL_DOMAIN_STATS, &args).await?;
    Ok(ret.ret_stats.0.len())
}

/// Longest wait for one call while a guest is stopped: libvirtd waits on
/// the stopped monitor without a deadline.
const STOPPED_CALL_LIMIT: Duration = Duration::from_secs(20);

async fn sample(c: &Client, calls: usize, expect: usize) -> Result<Vec<Duration>, ClientError> {
    let mut out = Vec::with_capacity(calls);
    for _ in 0..calls {
        let t = Instant::now();
        let n = match tokio::time::timeout(STOPPED_CALL_LIMIT, all_stats(c)).await {
            Ok(n) => n?,
            Err(_) => {
                // Counted at the limit; the connection is stuck behind it.
                out.push(t.elapsed());
                return Ok(out);
            }
        };
        out.push(t.elapsed());
        if n < expect {
            return Err(ClientError::Protocol(format!(
                "stats for {n} domains, expected {expect}"
            )));
        }
    }
    Ok(out)
}

/// Runs the phase with `guests` guests and `calls` calls per measurement.
pub async fn measure(
    c: &Client,
    uri: &str,
    guests: usize,
    calls: usize,
    ty: &str,
    prefix: &str,
) -> Result<Vec<Row>, ClientError> {
    let mut doms: Vec<NonnullDomain> = Vec::new();
    let result = async {
        for i in 0..guests {
            let name = format!("{prefix}stats-{i}");
            let d = c.define_xml(&guest_xml(&name, ty)).await?;
            doms.push(d.clone());
            c.start(&d).await?;
        }
        let mut rows = Vec::new();
        let wall = Instant::now();
        let s = sample(c, calls, guests).await?;
        rows.push(row(
            &format!("all-domain stats, {guests} guests"),
            s,
            Some(wall.elapsed()),
        ));
        if let Some(pid) = doms.first().and_then(|d| local_qemu_pid(&d.name.0)) {
            signal(pid, "STOP");
            let wall = Instant::now();
            // A separate connection: a daemon without deadlines leaves it
            // stuck until the guest continues.
            let stuck = Client::connect(uri).await;
            let s = match &stuck {
                Ok(sc) => sample(sc, calls.min(5), guests).await,
                Err(_) => sample(c, calls.min(5), guests).await,
            };
            signal(pid, "CONT");
            rows.push(row(
                &format!("all-domain stats, {guests} guests, 1 SIGSTOPped"),
                s?,
                Some(wall.elapsed()),
            ));
        }
        Ok(rows)
    }
    .await;
    for d in &doms {
        let _ = c.destroy(d).await;
        let _ = c.undefine(d).await;
    }
    result
}
