//! qemuctl commands for runtime statistics and tuning: domstats,
//! dommemstat, domblkstat, vcpuinfo, vcpupin, setvcpus, setmem, setmaxmem,
//! schedinfo, desc, domrename. Text output follows virsh; `--json` gives
//! the same data as JSON.

use clap::Subcommand;
use serde_json::{json, Map, Value};

use qemud_client::{Client, ClientError};
use qemud_protocol::remote::procs::*;
use qemud_protocol::remote::*;
use qemud_protocol::typed_params::{display, ParamList, STRING_OKAY};
use qemud_protocol::xdr::{Opaque, XdrVec};

#[derive(Subcommand)]
pub enum StatsCmd {
    /// Statistics of domains (all groups unless some are named).
    Domstats {
        /// Domains; none means all.
        domains: Vec<String>,
        #[arg(long)]
        state: bool,
        #[arg(long)]
        cpu_total: bool,
        #[arg(long)]
        balloon: bool,
        #[arg(long)]
        vcpu: bool,
        #[arg(long)]
        interface: bool,
        #[arg(long)]
        block: bool,
    },
    /// Memory statistics of a running domain.
    Dommemstat { domain: String },
    /// I/O statistics of one disk.
    Domblkstat { domain: String, device: String },
    /// vCPUs: state, CPU time, host CPU and affinity.
    Vcpuinfo { domain: String },
    /// Show vCPU affinity, or pin one vCPU to a host CPU list (e.g. 0-1,3).
    Vcpupin {
        domain: String,
        vcpu: Option<u32>,
        cpulist: Option<String>,
    },
    /// Change the number of vCPUs.
    Setvcpus {
        domain: String,
        count: u32,
        #[arg(long)]
        live: bool,
        #[arg(long)]
        config: bool,
        #[arg(long)]
        maximum: bool,
    },
    /// Change the current memory (KiB).
    Setmem {
        domain: String,
        kib: u64,
        #[arg(long)]
        live: bool,
        #[arg(long)]
        config: bool,
    },
    /// Change the maximum memory (KiB) of the persistent definition.
    Setmaxmem { domain: String, kib: u64 },
    /// Show scheduler parameters, or set some (name=value).
    Schedinfo {
        domain: String,
        #[arg(long = "set")]
        set: Vec<String>,
    },
    /// Show or change a domain's description or title.
    Desc {
        domain: String,
        #[arg(long)]
        title: bool,
        #[arg(long)]
        new_desc: Option<String>,
    },
    /// Rename an inactive domain.
    Domrename { domain: String, new_name: String },
}

fn print_json(v: Value) {
    println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
}

fn param_json(p: &TypedParam) -> Value {
    match &p.value {
        TypedParamValue::I(v) => json!(v),
        TypedParamValue::Ui(v) => json!(v),
        TypedParamValue::L(v) => json!(v),
        TypedParamValue::Ul(v) => json!(v),
        TypedParamValue::D(v) => json!(v),
        TypedParamValue::B(v) => json!(*v != 0),
        TypedParamValue::S(s) => json!(s.0),
    }
}

fn params_json(params: &[TypedParam]) -> Value {
    let mut m = Map::new();
    for p in params {
        m.insert(p.field.0.clone(), param_json(p));
    }
    Value::Object(m)
}

/// Parses a virsh CPU list ("0-2,^1,4") into a map of `maplen` bytes.
fn cpu_map(list: &str, maplen: usize) -> Result<Vec<u8>, ClientError> {
    let bad = || ClientError::Protocol(format!("invalid CPU list '{list}'"));
    let mut map = vec![0u8; maplen];
    for part in list.split(',') {
        let (neg, part) = match part.strip_prefix('^') {
            Some(p) => (true, p),
            None => (false, part),
        };
        let (a, b) = match part.split_once('-') {
            Some((a, b)) => (
                a.parse::<usize>().map_err(|_| bad())?,
                b.parse::<usize>().map_err(|_| bad())?,
            ),
            None => {
                let v = part.trim().parse::<usize>().map_err(|_| bad())?;
                (v, v)
            }
        };
        for cpu in a..=b {
            if cpu / 8 >= maplen {
                return Err(ClientError::Protocol(format!(
                    "Physical CPU {cpu} doesn't exist."
                )));
            }
            if neg {
                map[cpu / 8] &= !(1 << (cpu % 8));
            } else {
                map[cpu / 8] |= 1 << (cpu % 8);
            }
        }
    }
    Ok(map)
}

/// A CPU map as a virsh-style list ("0-1,3").
fn cpu_list(map: &[u8], cpus: usize) -> String {
    let on: Vec<usize> = (0..cpus)
        .filter(|c| map.get(c / 8).is_some_and(|b| b & (1 << (c % 8)) != 0))
        .collect();
    let mut out: Vec<String> = Vec::new();
    let mut i = 0;
    while i < on.len() {
        let mut j = i;
        while j + 1 < on.len() && on[j + 1] == on[j] + 1 {
            j += 1;
        }
        out.push(if i == j {
            on[i].to_string()
        } else {
            format!("{}-{}", on[i], on[j])
        });
        i = j + 1;
    }
    out.join(",")
}

async fn host_cpus(c: &Client) -> Result<usize, ClientError> {
    Ok(c.node_info().await?.cpus.max(1) as usize)
}

pub async fn run(c: &Client, cmd: StatsCmd, json_out: bool) -> Result<(), ClientError> {
    match cmd {
        StatsCmd::Domstats {
            domains,
            state,
            cpu_total,
            balloon,
            vcpu,
            interface,
            block,
        } => {
            let mut stats = 0;
            for (on, bit) in [
                (state, 1),
                (cpu_total, 2),
                (balloon, 4),
                (vcpu, 8),
                (interface, 16),
                (block, 32),
            ] {
                if on {
                    stats |= bit;
                }
            }
            let mut doms = Vec::new();
            for d in &domains {
                doms.push(c.lookup(d).await?);
            }
            let args = ConnectGetAllDomainStatsArgs {
                doms: XdrVec(doms),
                stats,
                flags: 0,
            };
            let ret: ConnectGetAllDomainStatsRet =
                c.call(CONNECT_GET_ALL_DOMAIN_STATS, &args).await?;
            if json_out {
                print_json(Value::Array(
                    ret.ret_stats
                        .0
                        .iter()
                        .map(|r| json!({"domain": r.dom.name.0, "stats": params_json(&r.params.0)}))
                        .collect(),
                ));
            } else {
                for r in &ret.ret_stats.0 {
                    println!("Domain: '{}'", r.dom.name);
                    for p in &r.params.0 {
                        println!("  {}={}", p.field, display(&p.value));
                    }
                    println!();
                }
            }
        }
        StatsCmd::Dommemstat { domain } => {
            let dom = c.lookup(&domain).await?;
            let args = DomainMemoryStatsArgs {
                dom,
                max_stats: 13,
                flags: 0,
            };
            let ret: DomainMemoryStatsRet = c.call(DOMAIN_MEMORY_STATS, &args).await?;
            let name = |t: i32| match t {
                0 => "swap_in",
                1 => "swap_out",
                2 => "major_fault",
                3 => "minor_fault",
                4 => "unused",
                5 => "available",
                6 => "actual",
                7 => "rss",
                8 => "usable",
                9 => "last_update",
                10 => "disk_caches",
                11 => "hugetlb_pgalloc",
                12 => "hugetlb_pgfail",
                _ => "unknown",
            };
            if json_out {
                let mut m = Map::new();
                for s in &ret.stats.0 {
                    m.insert(name(s.tag).into(), json!(s.val));
                }
                print_json(Value::Object(m));
            } else {
                for s in &ret.stats.0 {
                    println!("{} {}", name(s.tag), s.val);
                }
            }
        }
        StatsCmd::Domblkstat { domain, device } => {
            let dom = c.lookup(&domain).await?;
            let args = DomainBlockStatsFlagsArgs {
                dom,
                path: device.clone().into(),
                nparams: 16,
                flags: STRING_OKAY,
            };
            let ret: DomainBlockStatsFlagsRet = c.call(DOMAIN_BLOCK_STATS_FLAGS, &args).await?;
            if json_out {
                print_json(params_json(&ret.params.0));
            } else {
                for p in &ret.params.0 {
                    let name = match p.field.0.as_str() {
                        "rd_operations" => "rd_req",
                        "wr_operations" => "wr_req",
                        other => other,
                    };
                    println!("{device} {name} {}", display(&p.value));
                }
            }
        }
        StatsCmd::Vcpuinfo { domain } => {
            let dom = c.lookup(&domain).await?;
            let cpus = host_cpus(c).await?;
            let maplen = cpus.div_ceil(8);
            let info = c.info(&dom).await?;
            let args = DomainGetVcpusArgs {
                dom,
                maxinfo: info.nr_virt_cpu as i32,
                maplen: maplen as i32,
            };
            let ret: DomainGetVcpusRet = c.call(DOMAIN_GET_VCPUS, &args).await?;
            let rows: Vec<Value> = ret
                .info
                .0
                .iter()
                .enumerate()
                .map(|(n, v)| {
                    let map = ret.cpumaps.0.get(n * maplen..(n + 1) * maplen).unwrap_or(&[]);
                    json!({"vcpu": v.number, "cpu": v.cpu, "state": if v.state == 1 { "running" } else { "offline" },
                           "cpu_time_ns": v.cpu_time, "affinity": cpu_list(map, cpus)})
                })
                .collect();
            if json_out {
                print_json(Value::Array(rows));
            } else {
                for r in rows {
                    println!("{:<16}{}", "VCPU:", r["vcpu"]);
                    println!("{:<16}{}", "CPU:", r["cpu"]);
                    println!("{:<16}{}", "State:", r["state"].as_str().unwrap_or(""));
                    let t = r["cpu_time_ns"].as_u64().unwrap_or(0);
                    if t > 0 {
                        println!("{:<16}{:.1}s", "CPU time", t as f64 / 1e9);
                    }
                    println!(
                        "{:<16}{}",
                        "CPU Affinity:",
                        r["affinity"].as_str().unwrap_or("")
                    );
                    println!();
                }
            }
        }
        StatsCmd::Vcpupin {
            domain,
            vcpu,
            cpulist,
        } => {
            let dom = c.lookup(&domain).await?;
            let cpus = host_cpus(c).await?;
            let maplen = cpus.div_ceil(8);
            if let (Some(vcpu), Some(list)) = (vcpu, cpulist.as_deref()) {
                let map = cpu_map(list, maplen)?;
                let args = DomainPinVcpuFlagsArgs {
                    dom,
                    vcpu,
                    cpumap: Opaque(map),
                    flags: 0,
                };
                c.call_void(DOMAIN_PIN_VCPU_FLAGS, &args).await?;
                if json_out {
                    print_json(json!({"vcpu": vcpu, "affinity": list}));
                }
                return Ok(());
            }
            let info = c.info(&dom).await?;
            let args = DomainGetVcpuPinInfoArgs {
                dom,
                ncpumaps: info.nr_virt_cpu as i32,
                maplen: maplen as i32,
                flags: 0,
            };
            let ret: DomainGetVcpuPinInfoRet = c.call(DOMAIN_GET_VCPU_PIN_INFO, &args).await?;
            let rows: Vec<(i32, String)> = (0..ret.num)
                .filter(|n| vcpu.is_none_or(|v| v as i32 == *n))
                .map(|n| {
                    let n_us = n as usize;
                    let map = ret
                        .cpumaps
                        .0
                        .get(n_us * maplen..(n_us + 1) * maplen)
                        .unwrap_or(&[]);
                    (n, cpu_list(map, cpus))
                })
                .collect();
            if json_out {
                print_json(Value::Array(
                    rows.iter()
                        .map(|(n, a)| json!({"vcpu": n, "affinity": a}))
                        .collect(),
                ));
            } else {
                println!(" VCPU   CPU Affinity");
                println!("----------------------");
                for (n, a) in rows {
                    println!(" {n:<6} {a}");
                }
            }
        }
        StatsCmd::Setvcpus {
            domain,
            count,
            live,
            config,
            maximum,
        } => {
            let dom = c.lookup(&domain).await?;
            let flags = (live as u32) | (config as u32) << 1 | (maximum as u32) << 2;
            let args = DomainSetVcpusFlagsArgs {
                dom,
                nvcpus: count,
                flags,
            };
            c.call_void(DOMAIN_SET_VCPUS_FLAGS, &args).await?;
            if json_out {
                print_json(json!({"domain": domain, "vcpus": count}));
            }
        }
        StatsCmd::Setmem {
            domain,
            kib,
            live,
            config,
        } => {
            let dom = c.lookup(&domain).await?;
            let flags = (live as u32) | (config as u32) << 1;
            let args = DomainSetMemoryFlagsArgs {
                dom,
                memory: kib,
                flags,
            };
            c.call_void(DOMAIN_SET_MEMORY_FLAGS, &args).await?;
            if json_out {
                print_json(json!({"domain": domain, "memory_kib": kib}));
            }
        }
        StatsCmd::Setmaxmem { domain, kib } => {
            let dom = c.lookup(&domain).await?;
            // VIR_DOMAIN_AFFECT_CONFIG | VIR_DOMAIN_MEM_MAXIMUM
            let args = DomainSetMemoryFlagsArgs {
                dom,
                memory: kib,
                flags: 2 | 4,
            };
            c.call_void(DOMAIN_SET_MEMORY_FLAGS, &args).await?;
            if json_out {
                print_json(json!({"domain": domain, "max_memory_kib": kib}));
            }
        }
        StatsCmd::Schedinfo { domain, set } => {
            let dom = c.lookup(&domain).await?;
            if !set.is_empty() {
                let mut l = ParamList::new();
                for s in &set {
                    let Some((k, v)) = s.split_once('=') else {
                        return Err(ClientError::Protocol(format!(
                            "invalid scheduler option: {s}"
                        )));
                    };
                    let bad = || ClientError::Protocol(format!("invalid value for {k}: {v}"));
                    if k.ends_with("_quota") {
                        l.llong(k, v.parse().map_err(|_| bad())?);
                    } else {
                        l.ullong(k, v.parse().map_err(|_| bad())?);
                    }
                }
                let args = DomainSetSchedulerParametersFlagsArgs {
                    dom: dom.clone(),
                    params: XdrVec(l.0),
                    flags: 0,
                };
                c.call_void(DOMAIN_SET_SCHEDULER_PARAMETERS_FLAGS, &args)
                    .await?;
            }
            let ty: DomainGetSchedulerTypeRet = c
                .call(
                    DOMAIN_GET_SCHEDULER_TYPE,
                    &DomainGetSchedulerTypeArgs { dom: dom.clone() },
                )
                .await?;
            let args = DomainGetSchedulerParametersFlagsArgs {
                dom,
                nparams: ty.nparams,
                flags: 0,
            };
            let ret: DomainGetSchedulerParametersFlagsRet =
                c.call(DOMAIN_GET_SCHEDULER_PARAMETERS_FLAGS, &args).await?;
            if json_out {
                print_json(
                    json!({"scheduler": ty.type_.0, "parameters": params_json(&ret.params.0)}),
                );
            } else {
                println!("{:<15}: {}", "Scheduler", ty.type_.0);
                for p in &ret.params.0 {
                    println!("{:<15}: {}", p.field.0, display(&p.value));
                }
            }
        }
        StatsCmd::Desc {
            domain,
            title,
            new_desc,
        } => {
            let dom = c.lookup(&domain).await?;
            // VIR_DOMAIN_METADATA_DESCRIPTION 0, TITLE 1.
            let kind = title as i32;
            if let Some(text) = new_desc {
                let args = DomainSetMetadataArgs {
                    dom,
                    type_: kind,
                    metadata: Some(text.clone().into()),
                    key: None,
                    uri: None,
                    flags: 0,
                };
                c.call_void(DOMAIN_SET_METADATA, &args).await?;
                if json_out {
                    print_json(
                        json!({"domain": domain, if title { "title" } else { "description" }: text}),
                    );
                } else if title {
                    println!("Domain title updated successfully");
                } else {
                    println!("Domain description updated successfully");
                }
                return Ok(());
            }
            let args = DomainGetMetadataArgs {
                dom,
                type_: kind,
                uri: None,
                flags: 0,
            };
            let text = match c
                .call::<_, DomainGetMetadataRet>(DOMAIN_GET_METADATA, &args)
                .await
            {
                Ok(r) => Some(r.metadata.0),
                // VIR_ERR_NO_DOMAIN_METADATA: none set.
                Err(e) if e.code() == Some(80) => None,
                Err(e) => return Err(e),
            };
            if json_out {
                print_json(
                    json!({"domain": domain, if title { "title" } else { "description" }: text}),
                );
            } else {
                match text {
                    Some(t) => println!("{t}"),
                    None => println!(
                        "No {} for domain: {domain}",
                        if title { "title" } else { "description" }
                    ),
                }
            }
        }
        StatsCmd::Domrename { domain, new_name } => {
            let dom = c.lookup(&domain).await?;
            let args = DomainRenameArgs {
                dom,
                new_name: Some(new_name.clone().into()),
                flags: 0,
            };
            let _: DomainRenameRet = c.call(DOMAIN_RENAME, &args).await?;
            if json_out {
                print_json(json!({"from": domain, "to": new_name}));
            } else {
                println!("Domain '{domain}' XML configuration edited.");
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_lists() {
        assert_eq!(cpu_map("0-2,^1,4", 1).unwrap(), vec![0b10101]);
        assert_eq!(cpu_list(&[0b10111], 8), "0-2,4");
        assert!(cpu_map("9", 1).is_err());
    }
}
