//! The host side of a network: links through `ip` and firewall rules
//! through `nft`, each command bounded by a deadline.
//!
//! `ip`/`nft` commands were chosen over a netlink crate: the handful of
//! operations a network needs map one-to-one onto commands whose behaviour
//! (and error text) administrators already know, and nftables has no
//! well-kept Rust binding.

use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::process::Command;

use crate::error::{Error, Result};

/// How long one `ip` or `nft` invocation may take.
const COMMAND_DEADLINE: Duration = Duration::from_secs(10);

/// Runs a program, feeding it `stdin`, and returns its standard output.
pub async fn run(program: &str, args: &[&str], stdin: Option<&str>) -> Result<String> {
    let mut cmd = Command::new(program);
    cmd.args(args)
        .stdin(if stdin.is_some() {
            std::process::Stdio::piped()
        } else {
            std::process::Stdio::null()
        })
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    let what = format!("{program} {}", args.join(" "));
    let mut child = cmd
        .spawn()
        .map_err(|e| Error::System(format!("cannot run {program}: {e}")))?;
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        let text = text.to_owned();
        tokio::spawn(async move {
            let _ = pipe.write_all(text.as_bytes()).await;
        });
    }
    let out = tokio::time::timeout(COMMAND_DEADLINE, child.wait_with_output())
        .await
        .map_err(|_| Error::Timeout(format!("'{what}' did not finish")))?
        .map_err(|e| Error::System(format!("cannot run {program}: {e}")))?;
    if !out.status.success() {
        return Err(Error::Internal(format!(
            "'{what}' failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

pub async fn ip(args: &[&str]) -> Result<String> {
    run("ip", args, None).await
}

/// The links of the daemon's network namespace. Read from /proc/net/dev,
/// which follows the reader's namespace (/sys/class/net follows the
/// namespace sysfs was mounted in, which may be the host's).
pub fn links() -> Vec<(String, Vec<i64>)> {
    let text = std::fs::read_to_string("/proc/net/dev").unwrap_or_default();
    text.lines()
        .skip(2)
        .filter_map(|l| {
            let (name, rest) = l.split_once(':')?;
            let counters = rest
                .split_whitespace()
                .map(|v| v.parse().unwrap_or(-1))
                .collect();
            Some((name.trim().to_owned(), counters))
        })
        .collect()
}

/// Whether a network link of that name exists in the daemon's namespace.
pub fn link_exists(name: &str) -> bool {
    links().iter().any(|(n, _)| n == name)
}

/// A link's counters as /proc/net/dev has them: rx bytes, packets, errs,
/// drop, fifo, frame, compressed, multicast, then tx bytes, packets, errs,
/// drop, ...
pub fn link_counters(name: &str) -> Option<Vec<i64>> {
    links().into_iter().find(|(n, _)| n == name).map(|(_, c)| c)
}

/// The MTU of a link, for taps joining its bridge.
pub async fn link_mtu(name: &str) -> Option<u32> {
    let out = ip(&["-o", "link", "show", "dev", name]).await.ok()?;
    let mut words = out.split_whitespace();
    words.find(|w| *w == "mtu")?;
    words.next()?.parse().ok()
}

/// Creates a persistent tap device, attaches it to `bridge` (if any) and
/// brings it up.
pub async fn create_tap(tap: &str, bridge: Option<&str>, mtu: Option<u32>) -> Result<()> {
    if link_exists(tap) {
        // A tap left over from a previous run of the same domain is
        // replaced; any other kind of link of that name is not ours.
        let details = ip(&["-d", "-o", "link", "show", "dev", tap]).await?;
        if !details.contains(" tun type tap ") {
            return Err(Error::System(format!(
                "Unable to create tap device {tap}: a link of that name exists and is not a tap"
            )));
        }
        ip(&["link", "del", tap]).await?;
    }
    ip(&["tuntap", "add", "dev", tap, "mode", "tap", "vnet_hdr"]).await?;
    let attach = async {
        if let Some(m) = mtu {
            ip(&["link", "set", "dev", tap, "mtu", &m.to_string()]).await?;
        }
        if let Some(bridge) = bridge {
            ip(&["link", "set", "dev", tap, "master", bridge]).await?;
        }
        ip(&["link", "set", "dev", tap, "up"]).await?;
        Ok::<(), Error>(())
    };
    if let Err(e) = attach.await {
        let _ = ip(&["link", "del", tap]).await;
        return Err(e);
    }
    Ok(())
}

pub async fn delete_link(name: &str) {
    if link_exists(name) {
        if let Err(e) = ip(&["link", "del", name]).await {
            tracing::warn!("cannot delete link {name}: {e}");
        }
    }
}
