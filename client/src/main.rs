//! qemuctl: a virsh-like command line for qemud (and any libvirt daemon).

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use serde_json::json;

use qemud_client::bench::{self, BenchArgs};
use qemud_client::{Client, ClientError};
use qemud_protocol::remote::NonnullDomain;
use qemud_protocol::ErrorCode;

#[derive(Parser)]
#[command(
    name = "qemuctl",
    version,
    about = "Manage QEMU domains over libvirt's remote protocol"
)]
struct Cli {
    /// Connection URI (qemu:///system, qemu+unix:///system?socket=..., qemu+tls://host/system, qemu+ssh://host/system).
    #[arg(
        short = 'c',
        long = "connect",
        env = "LIBVIRT_DEFAULT_URI",
        default_value = "qemu:///system",
        global = true
    )]
    uri: String,
    /// Open a read-only connection.
    #[arg(short = 'r', long, global = true)]
    readonly: bool,
    /// Print results as JSON.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Library and hypervisor versions.
    Version,
    /// The host's name.
    Hostname,
    /// The URI the daemon reports.
    Uri,
    /// Host CPU and memory.
    Nodeinfo,
    /// List domains.
    List {
        /// Include inactive domains.
        #[arg(long)]
        all: bool,
    },
    /// Define a domain from an XML file.
    Define { file: String },
    /// Remove a domain's definition.
    Undefine { domain: String },
    /// Start a defined domain.
    Start { domain: String },
    /// Ask the guest to shut down (ACPI power button).
    Shutdown { domain: String },
    /// Stop a domain immediately.
    Destroy { domain: String },
    /// Pause a domain's CPUs.
    Suspend { domain: String },
    /// Resume a paused domain.
    Resume { domain: String },
    /// Ask the guest to reboot.
    Reboot { domain: String },
    /// Reset the domain, like the reset button.
    Reset { domain: String },
    /// Information about a domain.
    Dominfo { domain: String },
    /// The state of a domain.
    Domstate {
        domain: String,
        /// Show the reason too.
        #[arg(long)]
        reason: bool,
    },
    /// A domain's XML.
    Dumpxml {
        domain: String,
        /// The persistent definition rather than the live one.
        #[arg(long)]
        inactive: bool,
    },
    /// Enable or disable starting a domain with the daemon.
    Autostart {
        domain: String,
        #[arg(long)]
        disable: bool,
    },
    /// Print domain lifecycle events.
    Event {
        /// Only this domain.
        #[arg(long)]
        domain: Option<String>,
        /// Keep printing until interrupted (otherwise stop after one event).
        #[arg(long = "loop")]
        looping: bool,
        /// Stop after this many seconds.
        #[arg(long)]
        timeout: Option<u64>,
    },
    /// Measure a daemon's latency and throughput.
    Bench(BenchArgs),
    /// Attach to a domain's serial console (Ctrl-] detaches).
    Console {
        domain: String,
        /// Device alias (serial0, console0); the first by default.
        devname: Option<String>,
        /// Take the console over from another client.
        #[arg(long)]
        force: bool,
    },
    /// Save a screenshot of the domain's display.
    Screenshot {
        domain: String,
        /// Output file; named after the domain and the image type by default.
        file: Option<String>,
        #[arg(long, default_value_t = 0)]
        screen: u32,
    },
    /// Press keys in the guest (KEY_A style names or numbers).
    SendKey {
        domain: String,
        /// linux, xt, atset1, xt_kbd, usb or qnum.
        #[arg(long, default_value = "linux")]
        codeset: String,
        /// How long to hold the keys, in milliseconds.
        #[arg(long, default_value_t = 0)]
        holdtime: u32,
        #[arg(required = true)]
        keys: Vec<String>,
    },
    /// Run a QEMU monitor command (QMP JSON, or HMP with --hmp).
    QemuMonitorCommand {
        domain: String,
        #[arg(long)]
        hmp: bool,
        command: String,
    },
    /// Run a raw guest agent command.
    QemuAgentCommand {
        domain: String,
        /// Seconds to wait (-2 default, -1 forever, 0 none).
        #[arg(long, default_value_t = -2, allow_hyphen_values = true)]
        timeout: i32,
        command: String,
    },
}

fn state_name(state: i32) -> &'static str {
    match state {
        1 => "running",
        2 => "idle",
        3 => "paused",
        4 => "in shutdown",
        5 => "shut off",
        6 => "crashed",
        7 => "pmsuspended",
        _ => "no state",
    }
}

fn reason_name(state: i32, reason: i32) -> &'static str {
    let table: &[&str] = match state {
        1 => &[
            "unknown",
            "booted",
            "migrated",
            "restored",
            "from snapshot",
            "unpaused",
            "migration canceled",
            "save canceled",
            "event wakeup",
            "crashed",
            "post-copy",
        ],
        3 => &[
            "unknown",
            "user",
            "migrating",
            "saving",
            "dumping",
            "I/O error",
            "watchdog",
            "from snapshot",
            "shutting down",
            "creating snapshot",
            "crashed",
            "starting up",
            "post-copy",
            "post-copy failed",
        ],
        4 => &["unknown", "user"],
        5 => &[
            "unknown",
            "shutdown",
            "destroyed",
            "crashed",
            "migrated",
            "saved",
            "failed",
            "from snapshot",
            "daemon",
        ],
        6 => &["unknown", "panicked"],
        _ => &["unknown"],
    };
    table.get(reason as usize).copied().unwrap_or("unknown")
}

/// virsh's wording of lifecycle events.
pub fn event_name(event: i32, detail: i32) -> (String, String) {
    let (name, details): (&str, &[&str]) = match event {
        0 => ("Defined", &["Added", "Updated", "Renamed", "Snapshot"]),
        1 => ("Undefined", &["Removed", "Renamed"]),
        2 => (
            "Started",
            &["Booted", "Migrated", "Restored", "Snapshot", "Event wakeup"],
        ),
        3 => (
            "Suspended",
            &[
                "Paused",
                "Migrated",
                "I/O Error",
                "Watchdog",
                "Restored",
                "Snapshot",
                "API error",
                "Post-copy",
                "Post-copy Error",
            ],
        ),
        4 => (
            "Resumed",
            &["Unpaused", "Migrated", "Snapshot", "Post-copy"],
        ),
        5 => (
            "Stopped",
            &[
                "Shutdown",
                "Destroyed",
                "Crashed",
                "Migrated",
                "Saved",
                "Failed",
                "Snapshot",
            ],
        ),
        6 => (
            "Shutdown",
            &[
                "Finished",
                "Finished after guest request",
                "Finished after host request",
            ],
        ),
        7 => ("PMSuspended", &["Memory", "Disk"]),
        8 => ("Crashed", &["Panicked"]),
        _ => ("Unknown", &[]),
    };
    (
        name.to_owned(),
        details
            .get(detail as usize)
            .copied()
            .unwrap_or("Unknown")
            .to_owned(),
    )
}

fn version_string(v: u64) -> String {
    format!("{}.{}.{}", v / 1_000_000, (v / 1000) % 1000, v % 1000)
}

fn print_json(v: serde_json::Value) {
    println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
}

fn uuid_of(d: &NonnullDomain) -> uuid::Uuid {
    uuid::Uuid::from_bytes(d.uuid.0)
}

async fn run(cli: Cli) -> Result<(), ClientError> {
    if let Cmd::Bench(args) = &cli.command {
        return bench::run(&cli.uri, args, cli.json).await;
    }
    let client = Client::connect_with(&cli.uri, cli.readonly).await?;
    let c = &client;
    let json = cli.json;
    match cli.command {
        Cmd::Version => {
            let lib = c.lib_version().await?;
            let ty = c.hv_type().await?;
            let hv = c.hv_version().await?;
            if json {
                print_json(
                    json!({"library": version_string(lib), "hypervisor_type": ty, "hypervisor": version_string(hv)}),
                );
            } else {
                println!("Using API: {ty} {}", version_string(lib));
                println!("Running hypervisor: {ty} {}", version_string(hv));
            }
        }
        Cmd::Hostname => {
            let h = c.hostname().await?;
            if json {
                print_json(json!({ "hostname": h }));
            } else {
                println!("{h}");
            }
        }
        Cmd::Uri => {
            let u = c.uri().await?;
            if json {
                print_json(json!({ "uri": u }));
            } else {
                println!("{u}");
            }
        }
        Cmd::Nodeinfo => {
            let n = c.node_info().await?;
            let model: String = n
                .model
                .iter()
                .take_while(|b| **b != 0)
                .map(|b| *b as u8 as char)
                .collect();
            if json {
                print_json(
                    json!({"cpu_model": model, "cpus": n.cpus, "mhz": n.mhz, "sockets": n.sockets,
                    "cores": n.cores, "threads": n.threads, "numa_cells": n.nodes, "memory_kib": n.memory}),
                );
            } else {
                println!("{:<21}{model}", "CPU model:");
                println!("{:<21}{}", "CPU(s):", n.cpus);
                println!("{:<21}{} MHz", "CPU frequency:", n.mhz);
                println!("{:<21}{}", "CPU socket(s):", n.sockets);
                println!("{:<21}{}", "Core(s) per socket:", n.cores);
                println!("{:<21}{}", "Thread(s) per core:", n.threads);
                println!("{:<21}{}", "NUMA cell(s):", n.nodes);
                println!("{:<21}{} KiB", "Memory size:", n.memory);
            }
        }
        Cmd::List { all } => {
            // ACTIVE only, unless --all.
            let flags = if all { 0 } else { 1 };
            let mut doms = c.list_all_domains(flags).await?;
            doms.sort_by_key(|d| (d.id < 0, d.id, d.name.0.clone()));
            let mut rows = Vec::new();
            for d in &doms {
                let (state, _) = c.state(d).await?;
                rows.push((d.id, d.name.0.clone(), state_name(state)));
            }
            if json {
                print_json(json!(rows
                    .iter()
                    .map(|(id, name, state)| json!({"id": if *id >= 0 { json!(id) } else { json!(null) }, "name": name, "state": state}))
                    .collect::<Vec<_>>()));
            } else {
                let w = rows.iter().map(|r| r.1.len()).max().unwrap_or(4).max(4);
                println!(" {:<4} {:<w$}   State", "Id", "Name");
                println!("{}", "-".repeat(w + 16));
                for (id, name, state) in rows {
                    let id = if id >= 0 { id.to_string() } else { "-".into() };
                    println!(" {id:<4} {name:<w$}   {state}");
                }
            }
        }
        Cmd::Define { file } => {
            let xml = std::fs::read_to_string(&file)
                .map_err(|e| ClientError::Connect(format!("cannot read {file}: {e}")))?;
            let d = c.define_xml(&xml).await?;
            if json {
                print_json(json!({"name": d.name.0, "uuid": uuid_of(&d).to_string()}));
            } else {
                println!("Domain '{}' defined from {file}", d.name);
            }
        }
        Cmd::Undefine { domain } => {
            simple(c, &domain, json, "has been undefined", |d| async move {
                c.undefine(&d).await
            })
            .await?
        }
        Cmd::Start { domain } => {
            simple(
                c,
                &domain,
                json,
                "started",
                |d| async move { c.start(&d).await },
            )
            .await?
        }
        Cmd::Shutdown { domain } => {
            simple(c, &domain, json, "is being shutdown", |d| async move {
                c.shutdown(&d).await
            })
            .await?
        }
        Cmd::Destroy { domain } => {
            simple(c, &domain, json, "destroyed", |d| async move {
                c.destroy(&d).await
            })
            .await?
        }
        Cmd::Console {
            domain,
            devname,
            force,
        } => {
            let d = c.lookup(&domain).await?;
            let stream = c.open_console(&d, devname.as_deref(), force).await?;
            console(stream, &d.name.0).await?
        }
        Cmd::Screenshot {
            domain,
            file,
            screen,
        } => {
            let d = c.lookup(&domain).await?;
            let (mime, image) = c.screenshot(&d, screen).await?;
            let ext = if mime == "image/png" { "png" } else { "ppm" };
            let file = file.unwrap_or_else(|| format!("{}.{ext}", d.name.0));
            std::fs::write(&file, &image)
                .map_err(|e| ClientError::Connect(format!("cannot write {file}: {e}")))?;
            if json {
                print_json(
                    json!({"name": d.name.0, "file": file, "mime": mime, "bytes": image.len()}),
                );
            } else {
                println!("Screenshot saved to {file}, with type of {mime}");
            }
        }
        Cmd::SendKey {
            domain,
            codeset,
            holdtime,
            keys,
        } => {
            let set = keycode_set(&codeset)?;
            let codes = keys
                .iter()
                .map(|k| keycode(k, set))
                .collect::<Result<Vec<_>, _>>()?;
            simple(c, &domain, json, "keys sent", |d| async move {
                c.send_key(&d, set, holdtime, &codes).await
            })
            .await?
        }
        Cmd::QemuMonitorCommand {
            domain,
            hmp,
            command,
        } => {
            let d = c.lookup(&domain).await?;
            let out = c.monitor_command(&d, &command, hmp).await?;
            if json {
                let parsed = serde_json::from_str(&out).unwrap_or(json!(out));
                print_json(json!({"name": d.name.0, "result": parsed}));
            } else {
                println!("{}", out.trim_end());
            }
        }
        Cmd::QemuAgentCommand {
            domain,
            timeout,
            command,
        } => {
            let d = c.lookup(&domain).await?;
            let out = c.agent_command(&d, &command, timeout).await?;
            if json {
                let parsed = serde_json::from_str(&out).unwrap_or(json!(out));
                print_json(json!({"name": d.name.0, "result": parsed}));
            } else {
                println!("{out}");
            }
        }
        Cmd::Suspend { domain } => {
            simple(c, &domain, json, "suspended", |d| async move {
                c.suspend(&d).await
            })
            .await?
        }
        Cmd::Resume { domain } => {
            simple(c, &domain, json, "resumed", |d| async move {
                c.resume(&d).await
            })
            .await?
        }
        Cmd::Reboot { domain } => {
            simple(c, &domain, json, "is being rebooted", |d| async move {
                c.reboot(&d).await
            })
            .await?
        }
        Cmd::Reset { domain } => {
            simple(c, &domain, json, "was reset", |d| async move {
                c.reset(&d).await
            })
            .await?
        }
        Cmd::Dominfo { domain } => {
            let d = c.lookup(&domain).await?;
            let info = c.info(&d).await?;
            let os = c.os_type(&d).await?;
            let persistent = c.is_persistent(&d).await?;
            let autostart = c.autostart(&d).await?;
            if json {
                print_json(
                    json!({"id": if d.id >= 0 { json!(d.id) } else { json!(null) }, "name": d.name.0,
                    "uuid": uuid_of(&d).to_string(), "os_type": os, "state": state_name(info.state as i32),
                    "cpus": info.nr_virt_cpu, "cpu_time_ns": info.cpu_time, "max_memory_kib": info.max_mem,
                    "used_memory_kib": info.memory, "persistent": persistent, "autostart": autostart}),
                );
            } else {
                let id = if d.id >= 0 {
                    d.id.to_string()
                } else {
                    "-".into()
                };
                println!("{:<16}{id}", "Id:");
                println!("{:<16}{}", "Name:", d.name);
                println!("{:<16}{}", "UUID:", uuid_of(&d));
                println!("{:<16}{os}", "OS Type:");
                println!("{:<16}{}", "State:", state_name(info.state as i32));
                println!("{:<16}{}", "CPU(s):", info.nr_virt_cpu);
                if info.cpu_time > 0 {
                    println!("{:<16}{:.1}s", "CPU time:", info.cpu_time as f64 / 1e9);
                }
                println!("{:<16}{} KiB", "Max memory:", info.max_mem);
                println!("{:<16}{} KiB", "Used memory:", info.memory);
                println!(
                    "{:<16}{}",
                    "Persistent:",
                    if persistent { "yes" } else { "no" }
                );
                println!(
                    "{:<16}{}",
                    "Autostart:",
                    if autostart { "enable" } else { "disable" }
                );
            }
        }
        Cmd::Domstate { domain, reason } => {
            let d = c.lookup(&domain).await?;
            let (s, r) = c.state(&d).await?;
            if json {
                print_json(json!({"state": state_name(s), "reason": reason_name(s, r)}));
            } else if reason {
                println!("{} ({})", state_name(s), reason_name(s, r));
            } else {
                println!("{}", state_name(s));
            }
        }
        Cmd::Dumpxml { domain, inactive } => {
            let d = c.lookup(&domain).await?;
            print!("{}", c.xml_desc(&d, if inactive { 2 } else { 0 }).await?);
        }
        Cmd::Autostart { domain, disable } => {
            let d = c.lookup(&domain).await?;
            c.set_autostart(&d, !disable).await?;
            if json {
                print_json(json!({"name": d.name.0, "autostart": !disable}));
            } else if disable {
                println!("Domain '{}' unmarked as autostarted", d.name);
            } else {
                println!("Domain '{}' marked as autostarted", d.name);
            }
        }
        Cmd::Event {
            domain,
            looping,
            timeout,
        } => {
            let mut events = c.take_events().ok_or(ClientError::Closed)?;
            let dom = match domain {
                Some(n) => Some(c.lookup(&n).await?),
                None => None,
            };
            c.register_lifecycle(dom).await?;
            let deadline =
                timeout.map(|s| tokio::time::Instant::now() + std::time::Duration::from_secs(s));
            loop {
                let next = async { events.recv().await };
                let ev = match deadline {
                    Some(d) => match tokio::time::timeout_at(d, next).await {
                        Ok(e) => e,
                        Err(_) => break,
                    },
                    None => next.await,
                };
                let Some(ev) = ev else {
                    return Err(ClientError::Closed);
                };
                let Some(l) = ev.lifecycle() else { continue };
                let (name, detail) = event_name(l.event, l.detail);
                if json {
                    println!(
                        "{}",
                        json!({"event": "lifecycle", "domain": l.domain, "type": name, "detail": detail})
                    );
                } else {
                    println!(
                        "event 'lifecycle' for domain '{}': {name} {detail}",
                        l.domain
                    );
                }
                if !looping {
                    break;
                }
            }
        }
        Cmd::Bench(_) => unreachable!("handled above"),
    }
    Ok(())
}

/// Looks a domain up, runs one operation on it and reports like virsh.
async fn simple<F, Fut>(
    c: &Client,
    domain: &str,
    json: bool,
    done: &str,
    op: F,
) -> Result<(), ClientError>
where
    F: FnOnce(NonnullDomain) -> Fut,
    Fut: std::future::Future<Output = Result<(), ClientError>>,
{
    let d = c.lookup(domain).await?;
    let name = d.name.0.clone();
    op(d).await?;
    if json {
        print_json(json!({"name": name, "result": done}));
    } else {
        println!("Domain '{name}' {done}");
    }
    Ok(())
}

/// libvirt's keycode set numbers.
fn keycode_set(name: &str) -> Result<u32, ClientError> {
    const SETS: [&str; 10] = [
        "linux", "xt", "atset1", "atset2", "atset3", "os_x", "xt_kbd", "usb", "win32", "qnum",
    ];
    let name = if name == "rfb" { "qnum" } else { name };
    SETS.iter()
        .position(|s| *s == name)
        .map(|i| i as u32)
        .ok_or_else(|| ClientError::Connect(format!("unknown codeset: '{name}'")))
}

/// A key as a number, or (Linux codeset) a KEY_* name.
fn keycode(key: &str, set: u32) -> Result<u32, ClientError> {
    let number = if let Some(hex) = key.strip_prefix("0x") {
        u32::from_str_radix(hex, 16).ok()
    } else {
        key.parse().ok()
    };
    if let Some(n) = number {
        return Ok(n);
    }
    const ROWS: [(&str, u32); 4] = [
        ("1234567890", 2),
        ("QWERTYUIOP", 16),
        ("ASDFGHJKL", 30),
        ("ZXCVBNM", 44),
    ];
    const NAMED: &[(&str, u32)] = &[
        ("ESC", 1),
        ("MINUS", 12),
        ("EQUAL", 13),
        ("BACKSPACE", 14),
        ("TAB", 15),
        ("ENTER", 28),
        ("LEFTCTRL", 29),
        ("LEFTSHIFT", 42),
        ("RIGHTSHIFT", 54),
        ("LEFTALT", 56),
        ("SPACE", 57),
        ("CAPSLOCK", 58),
        ("F1", 59),
        ("F2", 60),
        ("F3", 61),
        ("F4", 62),
        ("F5", 63),
        ("F6", 64),
        ("F7", 65),
        ("F8", 66),
        ("F9", 67),
        ("F10", 68),
        ("F11", 87),
        ("F12", 88),
        ("RIGHTCTRL", 97),
        ("RIGHTALT", 100),
        ("HOME", 102),
        ("UP", 103),
        ("PAGEUP", 104),
        ("LEFT", 105),
        ("RIGHT", 106),
        ("END", 107),
        ("DOWN", 108),
        ("PAGEDOWN", 109),
        ("INSERT", 110),
        ("DELETE", 111),
        ("LEFTMETA", 125),
    ];
    let name = key.strip_prefix("KEY_").filter(|_| set == 0);
    let found = name.and_then(|n| {
        NAMED
            .iter()
            .find(|(k, _)| *k == n)
            .map(|(_, v)| *v)
            .or_else(|| {
                let mut ch = n.chars();
                let c = ch.next().filter(|_| ch.next().is_none())?;
                ROWS.iter()
                    .find_map(|(row, base)| row.find(c).map(|i| base + i as u32))
            })
    });
    found.ok_or_else(|| ClientError::Connect(format!("invalid keycode: '{key}'")))
}

/// Runs an interactive console: stdin to the guest, the guest to stdout,
/// Ctrl-] to leave. The terminal is put in raw mode meanwhile.
async fn console(
    mut stream: qemud_client::client::ClientStream,
    name: &str,
) -> Result<(), ClientError> {
    use std::io::IsTerminal;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let tty = std::io::stdin().is_terminal();
    let saved = if tty {
        let saved = std::process::Command::new("stty")
            .arg("-g")
            .stdin(std::process::Stdio::inherit())
            .output()
            .ok()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned());
        let _ = std::process::Command::new("stty")
            .args(["raw", "-echo"])
            .stdin(std::process::Stdio::inherit())
            .status();
        saved
    } else {
        None
    };
    eprint!("Connected to domain '{name}'\r\nEscape character is ^]\r\n");
    let mut stdin = tokio::io::stdin();
    let mut stdout = tokio::io::stdout();
    let mut buf = [0u8; 4096];
    let mut stdin_open = true;
    let result = loop {
        tokio::select! {
            n = stdin.read(&mut buf), if stdin_open => match n {
                Ok(0) | Err(_) => stdin_open = false,
                Ok(n) => {
                    if let Some(i) = buf[..n].iter().position(|b| *b == 0x1d) {
                        if i > 0 {
                            stream.send(&buf[..i]).await?;
                        }
                        break stream.finish().await;
                    }
                    stream.send(&buf[..n]).await?;
                }
            },
            data = stream.recv() => match data {
                Ok(Some(d)) => {
                    let _ = stdout.write_all(&d).await;
                    let _ = stdout.flush().await;
                }
                Ok(None) => break stream.finish().await,
                Err(e) => break Err(e),
            },
        }
    };
    if let Some(saved) = saved {
        let _ = std::process::Command::new("stty")
            .arg(saved)
            .stdin(std::process::Stdio::inherit())
            .status();
    }
    eprintln!();
    result
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            match &e {
                ClientError::Remote(r) => {
                    let code = ErrorCode::from_i32(r.code)
                        .map(|c| c.name().to_owned())
                        .unwrap_or_else(|| format!("code {}", r.code));
                    eprintln!("error: {} [{code}]", r.message());
                }
                other => eprintln!("error: {other}"),
            }
            ExitCode::FAILURE
        }
    }
}
