//! qemuctl: a virsh-like command line for qemud (and any libvirt daemon).

mod soak;

use std::process::ExitCode;

mod stats_cmds;

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
    /// Define a virtual network from an XML file.
    NetDefine { file: String },
    /// Start a defined network.
    NetStart { network: String },
    /// Stop an active network.
    NetDestroy { network: String },
    /// Remove a network's definition.
    NetUndefine { network: String },
    /// Basic facts about a network.
    NetInfo { network: String },
    /// A network's XML.
    NetDumpxml {
        network: String,
        /// The persistent definition rather than the running one.
        #[arg(long)]
        inactive: bool,
    },
    /// The DHCP leases a network handed out.
    NetDhcpLeases { network: String },
    /// Mixed load for a set time; the daemon's RSS, fds, threads and QEMUs before and after.
    Soak(soak::SoakArgs),
    #[command(flatten)]
    Storage(StorageCmd),
    #[command(flatten)]
    Stats(stats_cmds::StatsCmd),
    #[command(flatten)]
    Objects(ObjectCmd),
    #[command(flatten)]
    Host(HostCmd),
}

/// Host capability and statistics commands.
#[derive(Subcommand)]
enum HostCmd {
    /// What a guest of an emulator, machine type and virt type can use.
    Domcapabilities {
        #[arg(long)]
        virttype: Option<String>,
        #[arg(long)]
        machine: Option<String>,
        #[arg(long)]
        emulatorbin: Option<String>,
        #[arg(long)]
        arch: Option<String>,
    },
    /// The CPU models known for an architecture.
    CpuModels { arch: String },
    /// Host CPU times in nanoseconds (all CPUs, or one).
    Nodecpustats { cpu: Option<i32> },
    /// Host memory statistics in KiB (all cells, or one).
    Nodememstats {
        #[arg(long)]
        cell: Option<i32>,
    },
    /// The host's SMBIOS information.
    Sysinfo,
}

/// Runs a host command; its output follows virsh's.
async fn run_host(c: &Client, cmd: HostCmd, json: bool) -> Result<(), ClientError> {
    use qemud_protocol::remote::procs;
    use qemud_protocol::remote::*;
    match cmd {
        HostCmd::Domcapabilities {
            virttype,
            machine,
            emulatorbin,
            arch,
        } => {
            let r: ConnectGetDomainCapabilitiesRet = c
                .call(
                    procs::CONNECT_GET_DOMAIN_CAPABILITIES,
                    &ConnectGetDomainCapabilitiesArgs {
                        emulatorbin: emulatorbin.map(Into::into),
                        arch: arch.map(Into::into),
                        machine: machine.map(Into::into),
                        virttype: virttype.map(Into::into),
                        flags: 0,
                    },
                )
                .await?;
            if json {
                print_json(json!({ "xml": r.capabilities.0 }));
            } else {
                print!("{}", r.capabilities.0);
            }
        }
        HostCmd::CpuModels { arch } => {
            let r: ConnectGetCpuModelNamesRet = c
                .call(
                    procs::CONNECT_GET_CPU_MODEL_NAMES,
                    &ConnectGetCpuModelNamesArgs {
                        arch: arch.into(),
                        need_results: 1,
                        flags: 0,
                    },
                )
                .await?;
            let models: Vec<String> = r.models.0.into_iter().map(|m| m.0).collect();
            if json {
                print_json(json!({ "models": models }));
            } else if models.is_empty() {
                println!("all CPU models are accepted");
            } else {
                for m in models {
                    println!("{m}");
                }
            }
        }
        HostCmd::Nodecpustats { cpu } => {
            let cpu_num = cpu.unwrap_or(-1);
            let count: NodeGetCpuStatsRet = c
                .call(
                    procs::NODE_GET_CPU_STATS,
                    &NodeGetCpuStatsArgs {
                        cpu_num,
                        nparams: 0,
                        flags: 0,
                    },
                )
                .await?;
            let r: NodeGetCpuStatsRet = c
                .call(
                    procs::NODE_GET_CPU_STATS,
                    &NodeGetCpuStatsArgs {
                        cpu_num,
                        nparams: count.nparams,
                        flags: 0,
                    },
                )
                .await?;
            let stats: Vec<(String, u64)> = r
                .params
                .0
                .into_iter()
                .map(|p| (p.field.0, p.value))
                .collect();
            if json {
                let m: serde_json::Map<String, serde_json::Value> =
                    stats.into_iter().map(|(k, v)| (k, json!(v))).collect();
                print_json(serde_json::Value::Object(m));
            } else {
                for (k, v) in stats {
                    let k = if k == "kernel" {
                        "system".to_owned()
                    } else {
                        k
                    };
                    println!("{:<8}{v:>20}", format!("{k}:"));
                }
            }
        }
        HostCmd::Nodememstats { cell } => {
            let cell_num = cell.unwrap_or(-1);
            let count: NodeGetMemoryStatsRet = c
                .call(
                    procs::NODE_GET_MEMORY_STATS,
                    &NodeGetMemoryStatsArgs {
                        nparams: 0,
                        cell_num,
                        flags: 0,
                    },
                )
                .await?;
            let r: NodeGetMemoryStatsRet = c
                .call(
                    procs::NODE_GET_MEMORY_STATS,
                    &NodeGetMemoryStatsArgs {
                        nparams: count.nparams,
                        cell_num,
                        flags: 0,
                    },
                )
                .await?;
            let stats: Vec<(String, u64)> = r
                .params
                .0
                .into_iter()
                .map(|p| (p.field.0, p.value))
                .collect();
            if json {
                let m: serde_json::Map<String, serde_json::Value> = stats
                    .into_iter()
                    .map(|(k, v)| (format!("{k}_kib"), json!(v)))
                    .collect();
                print_json(serde_json::Value::Object(m));
            } else {
                for (k, v) in stats {
                    println!("{k:<7}: {v:>20} KiB");
                }
            }
        }
        HostCmd::Sysinfo => {
            let r: ConnectGetSysinfoRet = c
                .call(
                    procs::CONNECT_GET_SYSINFO,
                    &ConnectGetSysinfoArgs { flags: 0 },
                )
                .await?;
            if json {
                print_json(json!({ "xml": r.sysinfo.0 }));
            } else {
                print!("{}", r.sysinfo.0);
            }
        }
    }
    Ok(())
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
    if let Cmd::Soak(args) = &cli.command {
        return soak::run(&cli.uri, args, cli.json).await;
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
        Cmd::NetDefine { file } => {
            let xml = std::fs::read_to_string(&file)
                .map_err(|e| ClientError::Connect(format!("cannot read {file}: {e}")))?;
            let n = c.network_define(&xml).await?;
            if json {
                print_json(
                    json!({"name": n.name.0, "uuid": uuid::Uuid::from_bytes(n.uuid.0).to_string()}),
                );
            } else {
                println!("Network {} defined from {file}", n.name);
            }
        }
        Cmd::NetStart { network } => {
            let n = c.network_lookup(&network).await?;
            c.network_start(&n).await?;
            net_done(json, &n.name.0, "started");
        }
        Cmd::NetDestroy { network } => {
            let n = c.network_lookup(&network).await?;
            c.network_destroy(&n).await?;
            net_done(json, &n.name.0, "destroyed");
        }
        Cmd::NetUndefine { network } => {
            let n = c.network_lookup(&network).await?;
            c.network_undefine(&n).await?;
            net_done(json, &n.name.0, "has been undefined");
        }
        Cmd::NetInfo { network } => {
            let n = c.network_lookup(&network).await?;
            let active = c.network_is_active(&n).await?;
            let persistent = c.network_is_persistent(&n).await?;
            let autostart = c.network_autostart(&n).await?;
            let bridge = c.network_bridge(&n).await.ok();
            let uuid = uuid::Uuid::from_bytes(n.uuid.0).to_string();
            if json {
                print_json(json!({"name": n.name.0, "uuid": uuid, "active": active,
                    "persistent": persistent, "autostart": autostart, "bridge": bridge}));
            } else {
                let yes = |b: bool| if b { "yes" } else { "no" };
                println!("{:<16}{}", "Name:", n.name);
                println!("{:<16}{uuid}", "UUID:");
                println!("{:<16}{}", "Active:", yes(active));
                println!("{:<16}{}", "Persistent:", yes(persistent));
                println!("{:<16}{}", "Autostart:", yes(autostart));
                if let Some(b) = bridge {
                    println!("{:<16}{b}", "Bridge:");
                }
            }
        }
        Cmd::NetDumpxml { network, inactive } => {
            let n = c.network_lookup(&network).await?;
            let xml = c.network_xml(&n, if inactive { 1 } else { 0 }).await?;
            if json {
                print_json(json!({"name": n.name.0, "xml": xml}));
            } else {
                print!("{xml}");
            }
        }
        Cmd::NetDhcpLeases { network } => {
            let n = c.network_lookup(&network).await?;
            let leases = c.network_dhcp_leases(&n).await?;
            let text = |s: &Option<qemud_protocol::xdr::XdrString>| {
                s.as_ref()
                    .map(|x| x.0.clone())
                    .unwrap_or_else(|| "-".into())
            };
            if json {
                print_json(json!(leases
                    .iter()
                    .map(|l| json!({"expiry": l.expirytime, "mac": l.mac.as_ref().map(|m| m.0.clone()),
                        "type": if l.type_ == 0 { "ipv4" } else { "ipv6" },
                        "address": format!("{}/{}", l.ipaddr.0, l.prefix),
                        "hostname": l.hostname.as_ref().map(|h| h.0.clone()),
                        "client_id": l.clientid.as_ref().map(|h| h.0.clone())}))
                    .collect::<Vec<_>>()));
            } else {
                println!(
                    " {:<12} {:<18} {:<8} {:<20} {:<12} Client ID or DUID",
                    "Expiry", "MAC address", "Protocol", "IP address", "Hostname"
                );
                println!("{}", "-".repeat(100));
                for l in &leases {
                    let proto = if l.type_ == 0 { "ipv4" } else { "ipv6" };
                    println!(
                        " {:<12} {:<18} {:<8} {:<20} {:<12} {}",
                        l.expirytime,
                        text(&l.mac),
                        proto,
                        format!("{}/{}", l.ipaddr.0, l.prefix),
                        text(&l.hostname),
                        text(&l.clientid)
                    );
                }
            }
        }
        Cmd::Objects(cmd) => objects(c, cmd, json).await?,
        Cmd::Stats(cmd) => stats_cmds::run(c, cmd, json).await?,
        Cmd::Bench(_) | Cmd::Soak(_) => unreachable!("handled above"),
        Cmd::Storage(cmd) => storage_command(c, cmd, json).await?,
        Cmd::Host(cmd) => run_host(c, cmd, json).await?,
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

fn net_done(json: bool, name: &str, done: &str) {
    if json {
        print_json(json!({"name": name, "result": done}));
    } else {
        println!("Network {name} {done}");
    }
}

// Secrets, node devices, host interfaces, networks and storage pools.

#[derive(Subcommand)]
enum ObjectCmd {
    /// Define or change a secret from an XML file.
    SecretDefine { file: String },
    /// List secrets.
    SecretList,
    /// A secret's XML.
    SecretDumpxml { uuid: uuid::Uuid },
    /// Set a secret's value (base64 text, or the raw bytes of a file).
    SecretSetValue {
        uuid: uuid::Uuid,
        /// The value, base64-encoded.
        #[arg(long, conflicts_with = "file", required_unless_present = "file")]
        base64: Option<String>,
        /// A file whose bytes, as they are, become the value.
        #[arg(long)]
        file: Option<String>,
    },
    /// A secret's value, in base64.
    SecretGetValue { uuid: uuid::Uuid },
    /// Remove a secret.
    SecretUndefine { uuid: uuid::Uuid },
    /// List host devices.
    NodedevList {
        /// Only devices with this capability (pci, usb_device, usb, net, storage, system).
        #[arg(long)]
        cap: Option<String>,
    },
    /// A host device's XML.
    NodedevDumpxml { name: String },
    /// List host interfaces (active ones unless --all).
    IfaceList {
        #[arg(long)]
        all: bool,
    },
    /// A host interface's XML.
    IfaceDumpxml { name: String },
    /// List virtual networks (active ones unless --all).
    NetList {
        #[arg(long)]
        all: bool,
    },
}

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

fn base64_encode(data: &[u8]) -> String {
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(B64[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn base64_decode(text: &str) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    let (mut acc, mut bits) = (0u32, 0);
    for c in text
        .bytes()
        .filter(|c| !c.is_ascii_whitespace() && *c != b'=')
    {
        acc = (acc << 6) | B64.iter().position(|&x| x == c)? as u32;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    (bits < 6).then_some(out)
}

fn usage_name(t: i32) -> &'static str {
    ["none", "volume", "ceph", "iscsi", "tls", "vtpm"]
        .get(t as usize)
        .copied()
        .unwrap_or("unknown")
}

fn nodedev_cap_flag(cap: &str) -> Option<u32> {
    let caps = [
        "system",
        "pci",
        "usb_device",
        "usb",
        "net",
        "scsi_host",
        "scsi_target",
        "scsi",
        "storage",
    ];
    caps.iter().position(|c| *c == cap).map(|i| 1 << i)
}

/// Prints a virsh-style table: a header, a rule and left-aligned columns.
fn print_table(header: &[&str], rows: &[Vec<String>]) {
    let widths: Vec<usize> = (0..header.len())
        .map(|i| {
            rows.iter()
                .map(|r| r[i].len())
                .chain([header[i].len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = |cells: Vec<&str>| {
        let parts: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        format!(" {}", parts.join("   ")).trim_end().to_owned()
    };
    let head = line(header.to_vec());
    println!("{head}");
    println!("{}", "-".repeat(head.len() + 2));
    for r in rows {
        println!("{}", line(r.iter().map(String::as_str).collect()));
    }
}

async fn objects(c: &Client, cmd: ObjectCmd, json: bool) -> Result<(), ClientError> {
    let yes_no = |b: bool| if b { "yes" } else { "no" };
    match cmd {
        ObjectCmd::SecretDefine { file } => {
            let xml = std::fs::read_to_string(&file)
                .map_err(|e| ClientError::Connect(format!("cannot read {file}: {e}")))?;
            let s = c.secret_define(&xml).await?;
            let uuid = uuid::Uuid::from(s.uuid);
            if json {
                print_json(
                    json!({"uuid": uuid.to_string(), "usage_type": usage_name(s.usage_type), "usage_id": s.usage_id.0}),
                );
            } else {
                println!("Secret {uuid} created");
            }
        }
        ObjectCmd::SecretList => {
            let secrets = c.list_all_secrets(0).await?;
            if json {
                print_json(json!(secrets
                    .iter()
                    .map(|s| json!({"uuid": uuid::Uuid::from(s.uuid).to_string(),
                        "usage_type": usage_name(s.usage_type), "usage_id": s.usage_id.0}))
                    .collect::<Vec<_>>()));
            } else {
                let rows: Vec<Vec<String>> = secrets
                    .iter()
                    .map(|s| {
                        let usage = if s.usage_type == 0 {
                            "Unused".to_owned()
                        } else {
                            format!("{} {}", usage_name(s.usage_type), s.usage_id)
                        };
                        vec![uuid::Uuid::from(s.uuid).to_string(), usage]
                    })
                    .collect();
                print_table(&["UUID", "Usage"], &rows);
            }
        }
        ObjectCmd::SecretDumpxml { uuid } => {
            let s = c.secret_lookup(uuid).await?;
            let xml = c.secret_xml(&s).await?;
            if json {
                print_json(json!({"uuid": uuid.to_string(), "xml": xml}));
            } else {
                print!("{xml}");
            }
        }
        ObjectCmd::SecretSetValue { uuid, base64, file } => {
            let value = match (base64, file) {
                (Some(b), _) => base64_decode(&b)
                    .ok_or_else(|| ClientError::Connect("invalid base64 value".into()))?,
                (None, Some(f)) => std::fs::read(&f)
                    .map_err(|e| ClientError::Connect(format!("cannot read {f}: {e}")))?,
                (None, None) => return Err(ClientError::Connect("no value given".into())),
            };
            let s = c.secret_lookup(uuid).await?;
            c.secret_set_value(&s, &value).await?;
            if json {
                print_json(json!({"uuid": uuid.to_string(), "result": "value set"}));
            } else {
                println!("Secret value set");
            }
        }
        ObjectCmd::SecretGetValue { uuid } => {
            let s = c.secret_lookup(uuid).await?;
            let value = base64_encode(&c.secret_get_value(&s).await?);
            if json {
                print_json(json!({"uuid": uuid.to_string(), "base64": value}));
            } else {
                println!("{value}");
            }
        }
        ObjectCmd::SecretUndefine { uuid } => {
            let s = c.secret_lookup(uuid).await?;
            c.secret_undefine(&s).await?;
            if json {
                print_json(json!({"uuid": uuid.to_string(), "result": "deleted"}));
            } else {
                println!("Secret {uuid} deleted");
            }
        }
        ObjectCmd::NodedevList { cap } => {
            let flags = match &cap {
                Some(name) => nodedev_cap_flag(name)
                    .ok_or_else(|| ClientError::Connect(format!("unknown capability '{name}'")))?,
                None => 0,
            };
            let mut names = c.list_all_node_devices(flags).await?;
            names.sort();
            if json {
                let mut rows = Vec::new();
                for n in &names {
                    rows.push(
                        json!({"name": n, "parent": c.node_device_parent(n).await.ok().flatten()}),
                    );
                }
                print_json(json!(rows));
            } else {
                for n in names {
                    println!("{n}");
                }
            }
        }
        ObjectCmd::NodedevDumpxml { name } => {
            let xml = c.node_device_xml(&name).await?;
            if json {
                print_json(json!({"name": name, "xml": xml}));
            } else {
                print!("{xml}");
            }
        }
        ObjectCmd::IfaceList { all } => {
            // ACTIVE only, unless --all.
            let mut ifaces = c.list_all_interfaces(if all { 0 } else { 2 }).await?;
            ifaces.sort_by(|a, b| a.name.0.cmp(&b.name.0));
            let mut rows = Vec::new();
            for i in &ifaces {
                let active = c.interface_is_active(i).await?;
                rows.push((i.name.0.clone(), active, i.mac.0.clone()));
            }
            if json {
                print_json(json!(rows
                    .iter()
                    .map(|(n, a, m)| json!({"name": n, "active": a, "mac": m}))
                    .collect::<Vec<_>>()));
            } else {
                let rows: Vec<Vec<String>> = rows
                    .into_iter()
                    .map(|(n, a, m)| vec![n, if a { "active" } else { "inactive" }.into(), m])
                    .collect();
                print_table(&["Name", "State", "MAC Address"], &rows);
            }
        }
        ObjectCmd::IfaceDumpxml { name } => {
            let i = c.interface_lookup(&name).await?;
            let xml = c.interface_xml(&i).await?;
            if json {
                print_json(json!({"name": name, "xml": xml}));
            } else {
                print!("{xml}");
            }
        }
        ObjectCmd::NetList { all } => {
            // ACTIVE only, unless --all.
            let mut nets = c.list_all_networks(if all { 0 } else { 2 }).await?;
            nets.sort_by(|a, b| a.name.0.cmp(&b.name.0));
            let mut rows = Vec::new();
            for n in &nets {
                let (active, persistent, autostart) = c.network_state(n).await?;
                rows.push((n.name.0.clone(), active, autostart, persistent));
            }
            if json {
                print_json(json!(rows
                    .iter()
                    .map(|(n, a, s, p)| json!({"name": n, "active": a, "autostart": s, "persistent": p}))
                    .collect::<Vec<_>>()));
            } else {
                let rows: Vec<Vec<String>> = rows
                    .into_iter()
                    .map(|(n, a, s, p)| {
                        vec![
                            n,
                            if a { "active" } else { "inactive" }.into(),
                            yes_no(s).into(),
                            yes_no(p).into(),
                        ]
                    })
                    .collect();
                print_table(&["Name", "State", "Autostart", "Persistent"], &rows);
            }
        }
    }
    Ok(())
}

// Storage pools and volumes: virsh's pool-* and vol-* commands.

#[derive(Subcommand)]
enum StorageCmd {
    /// Define a pool from a name, a type and a target directory.
    #[command(name = "pool-define-as")]
    PoolDefineAs {
        name: String,
        #[arg(value_name = "TYPE")]
        pool_type: String,
        #[arg(long)]
        target: String,
    },
    /// Build a pool's target (create its directory).
    #[command(name = "pool-build")]
    PoolBuild { pool: String },
    /// Start a defined pool.
    #[command(name = "pool-start")]
    PoolStart { pool: String },
    /// Stop a pool (its volumes stay on disk).
    #[command(name = "pool-destroy")]
    PoolDestroy { pool: String },
    /// Remove an inactive pool's target directory.
    #[command(name = "pool-delete")]
    PoolDelete { pool: String },
    /// Remove an inactive pool's definition.
    #[command(name = "pool-undefine")]
    PoolUndefine { pool: String },
    /// List pools.
    #[command(name = "pool-list")]
    PoolList {
        /// Include inactive pools.
        #[arg(long)]
        all: bool,
    },
    /// A pool's state and sizes.
    #[command(name = "pool-info")]
    PoolInfo { pool: String },
    /// A pool's XML.
    #[command(name = "pool-dumpxml")]
    PoolDumpxml {
        pool: String,
        #[arg(long)]
        inactive: bool,
    },
    /// Create a volume from a name and a size (e.g. 10G).
    #[command(name = "vol-create-as")]
    VolCreateAs {
        pool: String,
        name: String,
        capacity: String,
        #[arg(long)]
        format: Option<String>,
        #[arg(long)]
        allocation: Option<String>,
        /// Path of the backing image.
        #[arg(long = "backing-vol")]
        backing_vol: Option<String>,
        #[arg(long = "backing-vol-format")]
        backing_vol_format: Option<String>,
        #[arg(long = "prealloc-metadata")]
        prealloc_metadata: bool,
    },
    /// List a pool's volumes.
    #[command(name = "vol-list")]
    VolList { pool: String },
    /// A volume's type and sizes.
    #[command(name = "vol-info")]
    VolInfo {
        vol: String,
        #[arg(long)]
        pool: String,
    },
    /// A volume's XML.
    #[command(name = "vol-dumpxml")]
    VolDumpxml {
        vol: String,
        #[arg(long)]
        pool: String,
    },
    /// Delete a volume.
    #[command(name = "vol-delete")]
    VolDelete {
        vol: String,
        #[arg(long)]
        pool: String,
    },
    /// Upload a local file into a volume.
    #[command(name = "vol-upload")]
    VolUpload {
        vol: String,
        file: String,
        #[arg(long)]
        pool: String,
    },
    /// Download a volume into a local file.
    #[command(name = "vol-download")]
    VolDownload {
        vol: String,
        file: String,
        #[arg(long)]
        pool: String,
    },
    /// Change a volume's capacity.
    #[command(name = "vol-resize")]
    VolResize {
        vol: String,
        capacity: String,
        #[arg(long)]
        pool: String,
        #[arg(long)]
        shrink: bool,
        #[arg(long)]
        allocate: bool,
        #[arg(long)]
        delta: bool,
    },
}

/// virsh's sizes: a number with an optional binary suffix (K, M, G, T, P).
fn parse_size(s: &str) -> Result<u64, ClientError> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| ClientError::Protocol(format!("malformed size {s}")))?;
    let shift = match unit.trim_end_matches("iB").trim_end_matches('B') {
        "" => 0,
        "k" | "K" => 10,
        "m" | "M" => 20,
        "g" | "G" => 30,
        "t" | "T" => 40,
        "p" | "P" => 50,
        _ => return Err(ClientError::Protocol(format!("malformed size {s}"))),
    };
    n.checked_mul(1 << shift)
        .ok_or_else(|| ClientError::Protocol(format!("size {s} is too large")))
}

/// virsh's human sizes: "1.00 GiB".
fn pretty_size(bytes: u64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    let mut v = bytes as f64;
    let mut i = 0;
    while v >= 1024.0 && i + 1 < units.len() {
        v /= 1024.0;
        i += 1;
    }
    format!("{v:.2} {}", units[i])
}

fn pool_state_name(state: u8) -> &'static str {
    match state {
        0 => "inactive",
        1 => "building",
        2 => "running",
        3 => "degraded",
        4 => "inaccessible",
        _ => "unknown",
    }
}

fn esc_xml(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('\'', "&apos;")
}

fn report(json: bool, value: serde_json::Value, text: String) {
    if json {
        print_json(value);
    } else {
        println!("{text}");
    }
}

async fn storage_command(c: &Client, cmd: StorageCmd, json: bool) -> Result<(), ClientError> {
    match cmd {
        StorageCmd::PoolDefineAs {
            name,
            pool_type,
            target,
        } => {
            let xml = format!(
                "<pool type='{}'>\n  <name>{}</name>\n  <target>\n    <path>{}</path>\n  </target>\n</pool>\n",
                esc_xml(&pool_type),
                esc_xml(&name),
                esc_xml(&target)
            );
            let p = c.pool_define_xml(&xml).await?;
            let uuid = uuid::Uuid::from_bytes(p.uuid.0);
            report(
                json,
                json!({"name": p.name.0, "uuid": uuid.to_string()}),
                format!("Pool {name} defined"),
            );
        }
        StorageCmd::PoolBuild { pool } => {
            let p = c.pool_lookup(&pool).await?;
            c.pool_build(&p, 0).await?;
            report(
                json,
                json!({"name": pool, "result": "built"}),
                format!("Pool {pool} built"),
            );
        }
        StorageCmd::PoolStart { pool } => {
            let p = c.pool_lookup(&pool).await?;
            c.pool_start(&p, 0).await?;
            report(
                json,
                json!({"name": pool, "result": "started"}),
                format!("Pool {pool} started"),
            );
        }
        StorageCmd::PoolDestroy { pool } => {
            let p = c.pool_lookup(&pool).await?;
            c.pool_destroy(&p).await?;
            report(
                json,
                json!({"name": pool, "result": "destroyed"}),
                format!("Pool {pool} destroyed"),
            );
        }
        StorageCmd::PoolDelete { pool } => {
            let p = c.pool_lookup(&pool).await?;
            c.pool_delete(&p).await?;
            report(
                json,
                json!({"name": pool, "result": "deleted"}),
                format!("Pool {pool} deleted"),
            );
        }
        StorageCmd::PoolUndefine { pool } => {
            let p = c.pool_lookup(&pool).await?;
            c.pool_undefine(&p).await?;
            report(
                json,
                json!({"name": pool, "result": "undefined"}),
                format!("Pool {pool} has been undefined"),
            );
        }
        StorageCmd::PoolList { all } => {
            // VIR_CONNECT_LIST_STORAGE_POOLS_ACTIVE unless --all.
            let mut pools = c.list_all_pools(if all { 0 } else { 2 }).await?;
            pools.sort_by(|a, b| a.name.0.cmp(&b.name.0));
            let mut rows = Vec::new();
            for p in &pools {
                let info = c.pool_info(p).await?;
                let autostart = c.pool_autostart(p).await?;
                rows.push((p.name.0.clone(), info.state != 0, autostart));
            }
            if json {
                print_json(json!(rows
                    .iter()
                    .map(
                        |(n, active, auto)| json!({"name": n, "active": active, "autostart": auto})
                    )
                    .collect::<Vec<_>>()));
            } else {
                let w = rows.iter().map(|r| r.0.len()).max().unwrap_or(4).max(4);
                println!(" {:<w$}   {:<8} Autostart", "Name", "State");
                println!("{}", "-".repeat(w + 23));
                for (n, active, auto) in rows {
                    let state = if active { "active" } else { "inactive" };
                    println!(" {n:<w$}   {state:<8} {}", if auto { "yes" } else { "no" });
                }
            }
        }
        StorageCmd::PoolInfo { pool } => {
            let p = c.pool_lookup(&pool).await?;
            let info = c.pool_info(&p).await?;
            let persistent = c.pool_is_persistent(&p).await?;
            let autostart = c.pool_autostart(&p).await?;
            let uuid = uuid::Uuid::from_bytes(p.uuid.0);
            if json {
                print_json(json!({"name": p.name.0, "uuid": uuid.to_string(),
                    "state": pool_state_name(info.state), "persistent": persistent,
                    "autostart": autostart, "capacity": info.capacity,
                    "allocation": info.allocation, "available": info.available}));
            } else {
                let yn = |b: bool| if b { "yes" } else { "no" };
                println!("{:<16}{}", "Name:", p.name);
                println!("{:<16}{uuid}", "UUID:");
                println!("{:<16}{}", "State:", pool_state_name(info.state));
                println!("{:<16}{}", "Persistent:", yn(persistent));
                println!("{:<16}{}", "Autostart:", yn(autostart));
                if info.state == 2 {
                    println!("{:<16}{}", "Capacity:", pretty_size(info.capacity));
                    println!("{:<16}{}", "Allocation:", pretty_size(info.allocation));
                    println!("{:<16}{}", "Available:", pretty_size(info.available));
                }
            }
        }
        StorageCmd::PoolDumpxml { pool, inactive } => {
            let p = c.pool_lookup(&pool).await?;
            let xml = c.pool_xml(&p, if inactive { 1 } else { 0 }).await?;
            report(json, json!({ "xml": xml }), xml.trim_end().to_owned());
        }
        StorageCmd::VolCreateAs {
            pool,
            name,
            capacity,
            format,
            allocation,
            backing_vol,
            backing_vol_format,
            prealloc_metadata,
        } => {
            let p = c.pool_lookup(&pool).await?;
            let mut xml = format!(
                "<volume>\n  <name>{}</name>\n  <capacity>{}</capacity>\n",
                esc_xml(&name),
                parse_size(&capacity)?
            );
            if let Some(a) = &allocation {
                xml.push_str(&format!("  <allocation>{}</allocation>\n", parse_size(a)?));
            }
            if let Some(f) = &format {
                xml.push_str(&format!(
                    "  <target>\n    <format type='{}'/>\n  </target>\n",
                    esc_xml(f)
                ));
            }
            if let Some(b) = &backing_vol {
                xml.push_str(&format!(
                    "  <backingStore>\n    <path>{}</path>\n",
                    esc_xml(b)
                ));
                if let Some(f) = &backing_vol_format {
                    xml.push_str(&format!("    <format type='{}'/>\n", esc_xml(f)));
                }
                xml.push_str("  </backingStore>\n");
            }
            xml.push_str("</volume>\n");
            let v = c.vol_create_xml(&p, &xml, prealloc_metadata as u32).await?;
            report(
                json,
                json!({"pool": v.pool.0, "name": v.name.0, "key": v.key.0}),
                format!("Vol {name} created"),
            );
        }
        StorageCmd::VolList { pool } => {
            let p = c.pool_lookup(&pool).await?;
            let mut vols = c.list_all_volumes(&p).await?;
            vols.sort_by(|a, b| a.name.0.cmp(&b.name.0));
            if json {
                print_json(json!(vols
                    .iter()
                    .map(|v| json!({"name": v.name.0, "path": v.key.0}))
                    .collect::<Vec<_>>()));
            } else {
                let w = vols
                    .iter()
                    .map(|v| v.name.0.len())
                    .max()
                    .unwrap_or(4)
                    .max(4);
                let pw = vols.iter().map(|v| v.key.0.len()).max().unwrap_or(4).max(4);
                println!(" {:<w$}   Path", "Name");
                println!("{}", "-".repeat(w + pw + 5));
                for v in &vols {
                    println!(" {:<w$}   {}", v.name.0, v.key.0);
                }
            }
        }
        StorageCmd::VolInfo { vol, pool } => {
            let p = c.pool_lookup(&pool).await?;
            let v = c.vol_lookup(&p, &vol).await?;
            let info = c.vol_info(&v).await?;
            let ty = match info.type_ {
                0 => "file",
                1 => "block",
                2 => "dir",
                3 => "network",
                4 => "netdir",
                5 => "ploop",
                _ => "unknown",
            };
            if json {
                print_json(
                    json!({"name": v.name.0, "type": ty, "capacity": info.capacity, "allocation": info.allocation}),
                );
            } else {
                println!("{:<16}{}", "Name:", v.name);
                println!("{:<16}{ty}", "Type:");
                println!("{:<16}{}", "Capacity:", pretty_size(info.capacity));
                println!("{:<16}{}", "Allocation:", pretty_size(info.allocation));
            }
        }
        StorageCmd::VolDumpxml { vol, pool } => {
            let p = c.pool_lookup(&pool).await?;
            let v = c.vol_lookup(&p, &vol).await?;
            let xml = c.vol_xml(&v).await?;
            report(json, json!({ "xml": xml }), xml.trim_end().to_owned());
        }
        StorageCmd::VolDelete { vol, pool } => {
            let p = c.pool_lookup(&pool).await?;
            let v = c.vol_lookup(&p, &vol).await?;
            c.vol_delete(&v).await?;
            report(
                json,
                json!({"name": vol, "result": "deleted"}),
                format!("Vol {vol} deleted"),
            );
        }
        StorageCmd::VolUpload { vol, file, pool } => {
            use tokio::io::AsyncReadExt;
            let p = c.pool_lookup(&pool).await?;
            let v = c.vol_lookup(&p, &vol).await?;
            let mut f = tokio::fs::File::open(&file)
                .await
                .map_err(|e| ClientError::Connect(format!("cannot open {file}: {e}")))?;
            let stream = c.vol_upload(&v, 0, 0).await?;
            let mut buf = vec![0u8; 1 << 20];
            let mut total = 0u64;
            loop {
                let n = f
                    .read(&mut buf)
                    .await
                    .map_err(|e| ClientError::Connect(format!("cannot read {file}: {e}")))?;
                if n == 0 {
                    break;
                }
                stream.send(&buf[..n]).await?;
                total += n as u64;
            }
            stream.finish().await?;
            report(
                json,
                json!({"name": vol, "bytes": total}),
                format!("Vol {vol} uploaded from {file} ({total} bytes)"),
            );
        }
        StorageCmd::VolDownload { vol, file, pool } => {
            use tokio::io::AsyncWriteExt;
            let p = c.pool_lookup(&pool).await?;
            let v = c.vol_lookup(&p, &vol).await?;
            let mut f = tokio::fs::File::create(&file)
                .await
                .map_err(|e| ClientError::Connect(format!("cannot create {file}: {e}")))?;
            let mut stream = c.vol_download(&v, 0, 0).await?;
            let mut total = 0u64;
            while let Some(data) = stream.recv().await? {
                f.write_all(&data)
                    .await
                    .map_err(|e| ClientError::Connect(format!("cannot write {file}: {e}")))?;
                total += data.len() as u64;
            }
            f.flush()
                .await
                .map_err(|e| ClientError::Connect(format!("cannot write {file}: {e}")))?;
            stream.finish().await?;
            report(
                json,
                json!({"name": vol, "bytes": total}),
                format!("Vol {vol} downloaded to {file} ({total} bytes)"),
            );
        }
        StorageCmd::VolResize {
            vol,
            capacity,
            pool,
            shrink,
            allocate,
            delta,
        } => {
            let p = c.pool_lookup(&pool).await?;
            let v = c.vol_lookup(&p, &vol).await?;
            let flags = (allocate as u32) | ((delta as u32) << 1) | ((shrink as u32) << 2);
            c.vol_resize(&v, parse_size(&capacity)?, flags).await?;
            report(
                json,
                json!({"name": vol, "capacity": capacity}),
                format!("Size of volume '{vol}' successfully changed to {capacity}"),
            );
        }
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
    if let Some(code) = qemud_clidoc::generate_if_asked(<Cli as clap::CommandFactory>::command) {
        return ExitCode::from(code as u8);
    }
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
