//! Shared helpers for the end-to-end tests: a real `qemud` started in a
//! private directory, real `virsh` and python3-libvirt, and a real guest
//! (a Debian kernel with a busybox initramfs, see `tests/guest/`).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The workspace's target directory, where `cargo build` put the binaries.
pub fn target_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("CARGO_TARGET_DIR") {
        return PathBuf::from(d);
    }
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("target")
}

/// The workspace crates a binary is built from.
fn crates_of(binary: &str) -> &'static [&'static str] {
    match binary {
        "qemud" => &["protocol", "config", "actors", "daemon"],
        "qemuctl" => &["protocol", "client"],
        _ => &[],
    }
}

/// The newest modification time among a crate's manifest and sources.
fn newest_source(dir: &Path) -> std::time::SystemTime {
    let mut newest = std::time::UNIX_EPOCH;
    let mut todo = vec![dir.join("src")];
    if let Ok(m) = std::fs::metadata(dir.join("Cargo.toml")).and_then(|m| m.modified()) {
        newest = newest.max(m);
    }
    while let Some(d) = todo.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let Ok(meta) = e.metadata() else { continue };
            if meta.is_dir() {
                todo.push(e.path());
            } else if let Ok(m) = meta.modified() {
                newest = newest.max(m);
            }
        }
    }
    newest
}

/// A built binary of the workspace (`.ci/run` builds them before testing).
/// A binary older than any source it is built from is refused: the tests
/// would otherwise drive yesterday's daemon and prove nothing about the
/// code under test.
pub fn binary(name: &str) -> PathBuf {
    static CHECKED: std::sync::Mutex<Vec<(String, PathBuf)>> = std::sync::Mutex::new(Vec::new());
    let mut checked = CHECKED.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((_, p)) = checked.iter().find(|(n, _)| n == name) {
        return p.clone();
    }
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let crate_sources = || {
        crates_of(name)
            .iter()
            .map(|c| newest_source(&workspace.join(c)))
            .max()
            .unwrap_or(std::time::UNIX_EPOCH)
    };
    let mut stale = Vec::new();
    for profile in ["debug", "release"] {
        let p = target_dir().join(profile).join(name);
        let Ok(built) = std::fs::metadata(&p).and_then(|m| m.modified()) else {
            continue;
        };
        // Cargo's dep-info beside the binary lists exactly the files it
        // was built from; without it, every file of its crates counts.
        let sources = match std::fs::read_to_string(p.with_extension("d")) {
            Ok(depinfo) => depinfo
                .split_once(": ")
                .map(|(_, files)| files)
                .unwrap_or("")
                .split_whitespace()
                .filter_map(|f| std::fs::metadata(f).and_then(|m| m.modified()).ok())
                .max()
                .unwrap_or(std::time::UNIX_EPOCH),
            Err(_) => crate_sources(),
        };
        if built >= sources {
            checked.push((name.to_owned(), p.clone()));
            return p;
        }
        stale.push(p);
    }
    if stale.is_empty() {
        panic!("{name} is not built; run `cargo build --workspace --bins` first");
    }
    panic!(
        "{} older than the sources it is built from; run `cargo build --workspace --bins` first",
        stale
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(" and ")
            + " is"
    );
}

/// Whether KVM can be used here; tests fall back to TCG otherwise.
pub fn kvm_usable() -> bool {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok()
}

/// The domain type tests put in their XML: "kvm" when KVM really runs a
/// guest here, "qemu" (TCG) otherwise. Opening /dev/kvm is not enough on
/// some nested hosts, where a KVM guest never gets past its first
/// instructions, so this boots the test guest once under KVM to find out.
/// `QEMUD_TEST_DOMAIN_TYPE` overrides the probe.
pub fn domain_type() -> &'static str {
    static TYPE: std::sync::OnceLock<&'static str> = std::sync::OnceLock::new();
    TYPE.get_or_init(|| {
        if let Ok(t) = std::env::var("QEMUD_TEST_DOMAIN_TYPE") {
            return if t == "kvm" { "kvm" } else { "qemu" };
        }
        // The answer is cached beside the guest, which a rebuild replaces.
        let cache = guest_dir().join("domain-type");
        if let Ok(t) = std::fs::read_to_string(&cache) {
            match t.trim() {
                "kvm" => return "kvm",
                "qemu" => return "qemu",
                _ => {}
            }
        }
        let t = if kvm_usable() && kvm_boots_guest() {
            "kvm"
        } else {
            "qemu"
        };
        let _ = std::fs::write(&cache, t);
        t
    })
}

fn kvm_boots_guest() -> bool {
    let g = guest();
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("serial.log");
    let child = Command::new("qemu-system-x86_64")
        .args([
            "-machine",
            "pc,accel=kvm",
            "-m",
            "128",
            "-nodefaults",
            "-display",
            "none",
            "-no-reboot",
        ])
        .arg("-kernel")
        .arg(&g.kernel)
        .arg("-initrd")
        .arg(&g.initrd)
        .args(["-append", "console=ttyS0 panic=-1 quiet"])
        .arg("-serial")
        .arg(format!("file:{}", log.display()))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn();
    let Ok(mut child) = child else { return false };
    let until = Instant::now() + Duration::from_secs(15);
    let mut ok = false;
    while Instant::now() < until {
        if std::fs::read_to_string(&log)
            .map(|t| t.contains("QEMUD-GUEST-READY"))
            .unwrap_or(false)
        {
            ok = true;
            break;
        }
        if child.try_wait().ok().flatten().is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = child.kill();
    let _ = child.wait();
    ok
}

/// A daemon under test, with its own state and run directories.
pub struct Daemon {
    pub dir: tempfile::TempDir,
    child: Option<Child>,
    extra_args: Vec<String>,
}

impl Daemon {
    pub fn start() -> Daemon {
        Self::start_with(&[])
    }

    /// Starts the daemon with extra command-line arguments.
    pub fn start_with(args: &[&str]) -> Daemon {
        // Short paths: UNIX socket names are limited to 107 bytes.
        let dir = tempfile::Builder::new()
            .prefix("qd")
            .tempdir_in("/tmp")
            .expect("tempdir");
        let mut d = Daemon {
            dir,
            child: None,
            extra_args: args.iter().map(|s| s.to_string()).collect(),
        };
        d.spawn();
        d
    }

    pub fn run_dir(&self) -> PathBuf {
        self.dir.path().join("run")
    }

    pub fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    /// The value of a `--flag value` pair among the extra arguments.
    fn arg(&self, flag: &str) -> Option<PathBuf> {
        self.extra_args
            .windows(2)
            .find(|w| w[0] == flag)
            .map(|w| PathBuf::from(&w[1]))
    }

    pub fn socket(&self) -> PathBuf {
        self.arg("--socket")
            .unwrap_or_else(|| self.run_dir().join("libvirt-sock"))
    }

    pub fn socket_ro(&self) -> PathBuf {
        self.arg("--socket-ro")
            .unwrap_or_else(|| self.run_dir().join("libvirt-sock-ro"))
    }

    pub fn uri(&self) -> String {
        format!("qemu+unix:///system?socket={}", self.socket().display())
    }

    pub fn uri_ro(&self) -> String {
        format!("qemu+unix:///system?socket={}", self.socket_ro().display())
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("qemud.log")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .expect("log file");
        let _ = std::fs::remove_file(self.socket());
        let child = Command::new(binary("qemud"))
            .arg("--run-dir")
            .arg(self.run_dir())
            .arg("--state-dir")
            .arg(self.state_dir())
            .args(&self.extra_args)
            .env("RUST_LOG", "info,qemud_actors=debug")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn qemud");
        self.child = Some(child);
        let until = Instant::now() + Duration::from_secs(20);
        while !(self.socket().exists()
            && std::os::unix::net::UnixStream::connect(self.socket()).is_ok())
        {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!("qemud exited early ({status}):\n{}", self.log());
            }
            assert!(
                Instant::now() < until,
                "qemud did not start:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits until `n` lifecycle event callbacks (event ID 0, any family)
    /// were registered with this daemon since it started: a subscriber
    /// such as `virsh event` is then in place.
    #[track_caller]
    pub fn wait_lifecycle_subscribers(&self, n: usize) {
        wait_until(20, &format!("{n} event subscribers"), || {
            self.log()
                .lines()
                .filter(|l| l.contains("event callback registered (") && l.contains(" event 0)"))
                .count()
                >= n
        });
    }

    /// The daemon's pid.
    pub fn pid(&self) -> i32 {
        self.child.as_ref().expect("daemon running").id() as i32
    }

    /// Kills the daemon with SIGKILL, leaving its VMs running.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts the daemon again on the same directories.
    pub fn restart(&mut self) {
        self.spawn();
    }

    /// Sends SIGTERM and waits for a clean exit.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let mut c = self.child.take().expect("daemon running");
        let pid = nix::unistd::Pid::from_raw(c.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let until = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(s) = c.try_wait().expect("wait") {
                return s;
            }
            assert!(Instant::now() < until, "qemud ignored SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Pids of the QEMUs this daemon's run directory records.
    pub fn qemu_pids(&self) -> Vec<i32> {
        let mut pids = Vec::new();
        let Ok(entries) = std::fs::read_dir(self.run_dir().join("pid")) else {
            return pids;
        };
        for e in entries.flatten() {
            if let Ok(text) = std::fs::read_to_string(e.path()) {
                if let Ok(p) = text.trim().parse() {
                    pids.push(p);
                }
            }
        }
        pids
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill9();
        // Never leave VMs behind: they were started for this test only.
        // Only QEMUs this daemon started are killed: the pid from its run
        // directory, and only while that process's command line still
        // names this test's directory (a pid may have been reused since).
        let dir = self.dir.path().to_string_lossy().into_owned();
        for pid in self.qemu_pids() {
            let ours = std::fs::read(format!("/proc/{pid}/cmdline"))
                .map(|c| String::from_utf8_lossy(&c).contains(&dir))
                .unwrap_or(false);
            if ours {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
    }
}

/// Output of a client command, with helpers for assertions.
pub struct Run {
    pub status: std::process::ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    fn from(out: Output) -> Run {
        Run {
            status: out.status,
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    #[track_caller]
    pub fn ok(&self) -> &str {
        assert!(
            self.status.success(),
            "command failed: {}\nstdout: {}",
            self.stderr,
            self.stdout
        );
        &self.stdout
    }

    #[track_caller]
    pub fn fails(&self) -> &str {
        assert!(
            !self.status.success(),
            "command unexpectedly succeeded: {}",
            self.stdout
        );
        &self.stderr
    }
}

fn run_virsh(quiet: bool, uri: &str, args: &[&str]) -> Run {
    let mut cmd = Command::new("timeout");
    cmd.arg("60").arg("virsh");
    if quiet {
        cmd.arg("-q");
    }
    Run::from(
        cmd.arg("-c")
            .arg(uri)
            .args(args)
            .output()
            .expect("run virsh"),
    )
}

/// Runs real virsh (quiet: no headers or chatter) against `uri` with a deadline.
pub fn virsh(uri: &str, args: &[&str]) -> Run {
    run_virsh(true, uri, args)
}

/// Runs virsh without `-q`, for output whose headers or messages are checked.
pub fn virsh_full(uri: &str, args: &[&str]) -> Run {
    run_virsh(false, uri, args)
}

/// Runs a python3-libvirt script (Debian's /usr/bin/python3); the script
/// finds the URI in `QEMUD_URI`.
pub fn python(uri: &str, script: &str) -> Run {
    let out = Command::new("timeout")
        .arg("120")
        .arg("/usr/bin/python3")
        .arg("-c")
        .arg(script)
        .env("QEMUD_URI", uri)
        .output()
        .expect("run python3");
    Run::from(out)
}

/// Paths of the test guest, built once per machine by tests/guest/build-guest.sh.
pub struct Guest {
    pub kernel: PathBuf,
    pub initrd: PathBuf,
}

fn guest_dir() -> PathBuf {
    std::env::var_os("QEMUD_GUEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/tmp/qemud-guest"))
}

pub fn guest() -> Guest {
    let dir = guest_dir();
    let script = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("guest")
        .join("build-guest.sh");
    // flock serialises concurrent builders from parallel tests.
    let status = Command::new("flock")
        .arg("/tmp/qemud-guest.lock")
        .arg("bash")
        .arg(&script)
        .arg(&dir)
        .stdout(Stdio::null())
        .status()
        .expect("run build-guest.sh");
    assert!(status.success(), "building the test guest failed");
    Guest {
        kernel: dir.join("vmlinuz"),
        initrd: dir.join("initramfs.cpio.gz"),
    }
}

/// Domain XML booting the test guest. Its serial output is also logged
/// to `serial_log(dir, name)` so tests can wait for the guest to be ready
/// for ACPI events. `no_timer_check`: a TCG vCPU starved of host CPU fails
/// the kernel's IO-APIC timer check ("IO-APIC + timer doesn't work!") and
/// panics; the check proves nothing about a virtual machine.
pub fn guest_xml(dir: &Path, name: &str, memory_mib: u32) -> String {
    let g = guest();
    format!(
        "<domain type='{ty}'>
  <name>{name}</name>
  <memory unit='MiB'>{memory_mib}</memory>
  <vcpu>1</vcpu>
  <os>
    <type arch='x86_64' machine='pc'>hvm</type>
    <kernel>{kernel}</kernel>
    <initrd>{initrd}</initrd>
    <cmdline>console=ttyS0 panic=-1 quiet no_timer_check</cmdline>
  </os>
  <features><acpi/></features>
  <devices>
    <serial type='pty'><log file='{log}' append='off'/></serial>
    <console type='pty'/>
    <memballoon model='none'/>
  </devices>
</domain>
",
        ty = domain_type(),
        kernel = g.kernel.display(),
        initrd = g.initrd.display(),
        log = serial_log(dir, name).display(),
    )
}

pub fn serial_log(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("{name}-serial.log"))
}

/// A domain that needs no guest at all (firmware only): cheap to start.
pub fn tiny_xml(name: &str) -> String {
    format!(
        "<domain type='{}'><name>{name}</name><memory unit='MiB'>32</memory>\
         <os><type arch='x86_64' machine='pc'>hvm</type></os>\
         <devices><memballoon model='none'/></devices></domain>",
        domain_type()
    )
}

/// Writes XML to a file in `dir` and returns its path.
pub fn write_xml(dir: &Path, name: &str, xml: &str) -> PathBuf {
    let p = dir.join(format!("{name}.xml"));
    std::fs::write(&p, xml).expect("write xml");
    p
}

/// Polls `f` until it is true or `secs` pass.
#[track_caller]
pub fn wait_until(secs: u64, what: &str, mut f: impl FnMut() -> bool) {
    let until = Instant::now() + Duration::from_secs(secs);
    while !f() {
        assert!(Instant::now() < until, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// How long a test guest may take to boot (or reboot, or power off). A
/// TCG guest on two cores shared with builds and other tests can be many
/// times slower than on an idle machine.
pub const GUEST_BOOT_SECS: u64 = 300;

/// Waits until the guest prints its ready marker (it then handles the
/// ACPI power button).
#[track_caller]
pub fn wait_guest_ready(dir: &Path, name: &str, secs: u64) {
    let log = serial_log(dir, name);
    let until = Instant::now() + Duration::from_secs(secs);
    loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if text.contains("QEMUD-GUEST-READY") {
            return;
        }
        if Instant::now() >= until {
            let tail: Vec<&str> = text.lines().rev().take(20).collect();
            let qemu_log = std::fs::read_dir(dir.join("state").join("log"))
                .into_iter()
                .flatten()
                .flatten()
                .filter_map(|e| std::fs::read_to_string(e.path()).ok())
                .collect::<Vec<_>>()
                .join("\n");
            panic!(
                "timed out waiting for guest {name} ready; serial log ends with:\n{}\nQEMU logs:\n{qemu_log}",
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Sends `virsh VERB NAME` (shutdown or reboot: an ACPI power-button
/// press) until the guest acts on it, i.e. prints its power-off marker.
/// The guest prints its ready marker just before it opens the button
/// device, so on a loaded host a press right after "ready" can still be
/// lost; it is repeated if the guest shows no reaction within 20 s.
#[track_caller]
pub fn press_until_guest_powers_off(uri: &str, verb: &str, dir: &Path, name: &str) {
    let log = serial_log(dir, name);
    let powered_off = || {
        std::fs::read_to_string(&log)
            .map(|t| t.matches("QEMUD-GUEST-POWEROFF").count())
            .unwrap_or(0)
    };
    let before = powered_off();
    let until = Instant::now() + Duration::from_secs(GUEST_BOOT_SECS);
    virsh(uri, &[verb, name]).ok();
    loop {
        let again = Instant::now() + Duration::from_secs(20);
        while Instant::now() < again {
            if powered_off() > before {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        assert!(
            Instant::now() < until,
            "guest {name} never acted on `virsh {verb}`"
        );
        // A repeat may race with the guest's power-off: its result does
        // not matter, the marker does.
        let _ = virsh(uri, &[verb, name]);
    }
}

/// A spawned long-running client (e.g. `virsh event --loop`) whose output
/// is collected line by line.
pub struct Watcher {
    child: Child,
    lines: std::sync::mpsc::Receiver<String>,
    pub seen: Vec<String>,
}

impl Watcher {
    pub fn spawn(cmd: &mut Command) -> Watcher {
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn watcher");
        let out = child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Watcher {
            child,
            lines: rx,
            seen: Vec::new(),
        }
    }

    /// Waits for a line containing `needle`; returns it.
    #[track_caller]
    pub fn expect(&mut self, needle: &str, secs: u64) -> String {
        if let Some(l) = self.seen.iter().find(|l| l.contains(needle)) {
            return l.clone();
        }
        let until = Instant::now() + Duration::from_secs(secs);
        loop {
            let left = until.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) => {
                    self.seen.push(l.clone());
                    if l.contains(needle) {
                        return l;
                    }
                }
                Err(_) => panic!("no line containing {needle:?}; saw {:#?}", self.seen),
            }
        }
    }

    /// Collects lines for a while.
    pub fn drain(&mut self, wait: Duration) -> Vec<String> {
        let until = Instant::now() + wait;
        while let Ok(l) = self
            .lines
            .recv_timeout(until.saturating_duration_since(Instant::now()))
        {
            self.seen.push(l);
        }
        self.seen.clone()
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Collapses runs of blanks in every line, so table output can be matched
/// without depending on column widths.
pub fn squash(s: &str) -> String {
    s.lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect::<Vec<_>>()
        .join("\n")
}

/// A throwaway PKI made with the openssl command: a CA, a server
/// certificate for localhost, a client certificate, and a client signed by
/// a second, untrusted CA. Laid out the way libvirt clients expect
/// (`?pkipath=DIR` holds cacert.pem, clientcert.pem, clientkey.pem).
pub struct Pki {
    pub dir: PathBuf,
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run openssl");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Pki {
    pub fn generate(dir: &Path) -> Pki {
        std::fs::create_dir_all(dir).unwrap();
        let ext = |name: &str, text: &str| std::fs::write(dir.join(name), text).unwrap();
        ext("ca.ext", "basicConstraints=critical,CA:TRUE\nkeyUsage=critical,keyCertSign,cRLSign\nsubjectKeyIdentifier=hash\n");
        ext(
            "server.ext",
            "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\nsubjectAltName=DNS:localhost,IP:127.0.0.1\n",
        );
        ext(
            "client.ext",
            "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=clientAuth\n",
        );
        for ca in ["ca", "otherca"] {
            openssl(dir, &["genrsa", "-out", &format!("{ca}key.pem"), "2048"]);
            openssl(
                dir,
                &[
                    "req",
                    "-x509",
                    "-new",
                    "-key",
                    &format!("{ca}key.pem"),
                    "-subj",
                    &format!("/O=qemud-test/CN={ca}"),
                    "-days",
                    "2",
                    "-out",
                    &format!("{ca}cert.pem"),
                    "-addext",
                    "basicConstraints=critical,CA:TRUE",
                    "-addext",
                    "keyUsage=critical,keyCertSign,cRLSign",
                ],
            );
        }
        let sign = |name: &str, subj: &str, ca: &str, extfile: &str| {
            openssl(dir, &["genrsa", "-out", &format!("{name}key.pem"), "2048"]);
            openssl(
                dir,
                &[
                    "req",
                    "-new",
                    "-key",
                    &format!("{name}key.pem"),
                    "-subj",
                    subj,
                    "-out",
                    &format!("{name}.csr"),
                ],
            );
            openssl(
                dir,
                &[
                    "x509",
                    "-req",
                    "-in",
                    &format!("{name}.csr"),
                    "-CA",
                    &format!("{ca}cert.pem"),
                    "-CAkey",
                    &format!("{ca}key.pem"),
                    "-CAcreateserial",
                    "-days",
                    "2",
                    "-extfile",
                    extfile,
                    "-out",
                    &format!("{name}cert.pem"),
                ],
            );
        };
        sign(
            "server",
            "/C=GB/O=qemud-test/CN=localhost",
            "ca",
            "server.ext",
        );
        sign(
            "client",
            "/C=GB/O=qemud-test/CN=client1",
            "ca",
            "client.ext",
        );
        sign(
            "stranger",
            "/C=GB/O=qemud-test/CN=stranger",
            "otherca",
            "client.ext",
        );
        sign(
            "outsider",
            "/C=US/O=elsewhere/CN=outsider",
            "ca",
            "client.ext",
        );
        Pki {
            dir: dir.to_owned(),
        }
    }

    /// A client pkipath directory holding `who`'s certificate and the CA.
    pub fn client_dir(&self, who: &str) -> PathBuf {
        let d = self.dir.join(format!("pki-{who}"));
        std::fs::create_dir_all(&d).unwrap();
        std::fs::copy(self.dir.join("cacert.pem"), d.join("cacert.pem")).unwrap();
        std::fs::copy(
            self.dir.join(format!("{who}cert.pem")),
            d.join("clientcert.pem"),
        )
        .unwrap();
        std::fs::copy(
            self.dir.join(format!("{who}key.pem")),
            d.join("clientkey.pem"),
        )
        .unwrap();
        d
    }

    /// Settings lines enabling TLS on `addr` with this PKI.
    pub fn settings(&self, addr: &str) -> String {
        format!(
            "listen_tls = true\ntls_addr = \"{addr}\"\nca_file = \"{}\"\ncert_file = \"{}\"\nkey_file = \"{}\"\n",
            self.dir.join("cacert.pem").display(),
            self.dir.join("servercert.pem").display(),
            self.dir.join("serverkey.pem").display(),
        )
    }
}

/// A TCP port that was free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Starts a daemon with a settings file holding `toml` (kept in the
/// daemon's own directory, so nothing outlives the test).
pub fn daemon_with_settings(toml: &str) -> Daemon {
    let dir = tempfile::Builder::new()
        .prefix("qd")
        .tempdir_in("/tmp")
        .expect("tempdir");
    let cfg = dir.path().join("qemud.toml");
    std::fs::write(&cfg, toml).expect("write settings");
    let mut d = Daemon {
        dir,
        child: None,
        extra_args: vec!["--config".into(), cfg.to_string_lossy().into_owned()],
    };
    d.spawn();
    d
}

/// The REMOTE program number, for tests that speak raw frames.
pub const REMOTE_PROGRAM: u32 = 0x2000_8086;
/// The KEEPALIVE program number.
pub const KEEPALIVE_PROGRAM: u32 = 0x6b65_6570;

/// A CALL frame built by hand, so tests do not trust the codec they test.
pub fn call_frame(program: u32, procedure: i32, serial: u32, body: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(28 + body.len());
    v.extend_from_slice(&((28 + body.len()) as u32).to_be_bytes());
    // program, version 1, procedure, type CALL, serial, status OK
    for w in [program, 1, procedure as u32, 0, serial, 0] {
        v.extend_from_slice(&w.to_be_bytes());
    }
    v.extend_from_slice(body);
    v
}

/// One frame read off a raw socket.
#[derive(Debug)]
pub struct RawPacket {
    pub program: u32,
    pub procedure: i32,
    pub kind: i32,
    pub serial: u32,
    pub status: i32,
    pub body: Vec<u8>,
}

/// Reads one frame, or `None` once the peer closes (or the read times out).
pub fn try_read_packet(s: &mut impl std::io::Read) -> Option<RawPacket> {
    let mut len = [0u8; 4];
    s.read_exact(&mut len).ok()?;
    let len = u32::from_be_bytes(len) as usize;
    assert!(len >= 28, "frame length {len} is shorter than a header");
    let mut rest = vec![0u8; len - 4];
    s.read_exact(&mut rest).ok()?;
    let word = |i: usize| u32::from_be_bytes([rest[i], rest[i + 1], rest[i + 2], rest[i + 3]]);
    Some(RawPacket {
        program: word(0),
        procedure: word(8) as i32,
        kind: word(12) as i32,
        serial: word(16),
        status: word(20) as i32,
        body: rest[24..].to_vec(),
    })
}

/// Reads one frame; the peer must not have closed.
#[track_caller]
pub fn read_packet(s: &mut impl std::io::Read) -> RawPacket {
    try_read_packet(s).expect("connection closed or timed out")
}

impl Daemon {
    /// The pid of the QEMU running domain `name` (from QEMU's pid file).
    pub fn qemu_pid(&self, name: &str) -> i32 {
        let uuid = virsh(&self.uri(), &["domuuid", name])
            .ok()
            .trim()
            .to_owned();
        std::fs::read_to_string(self.run_dir().join("pid").join(format!("{uuid}.pid")))
            .expect("QEMU pid file")
            .trim()
            .parse()
            .expect("pid")
    }
}

/// Runs the built qemuctl against `uri` with a deadline.
pub fn qemuctl(uri: &str, args: &[&str]) -> Run {
    let out = Command::new("timeout")
        .arg("120")
        .arg(binary("qemuctl"))
        .arg("-c")
        .arg(uri)
        .args(args)
        .output()
        .expect("run qemuctl");
    Run::from(out)
}

/// The qemuctl lifecycle every transport must carry.
pub fn qemuctl_lifecycle(uri: &str, dir: &std::path::Path, name: &str) {
    let x = write_xml(dir, name, &tiny_xml(name));
    let out = qemuctl(uri, &["define", x.to_str().unwrap()]);
    assert!(
        out.ok().contains(&format!("Domain '{name}' defined")),
        "{}",
        out.stdout
    );
    assert!(squash(qemuctl(uri, &["list", "--all"]).ok()).contains(&format!("- {name} shut off")));
    qemuctl(uri, &["start", name]).ok();
    let list = squash(qemuctl(uri, &["list"]).ok());
    assert!(list.contains(&format!("{name} running")), "{list}");
    let info = qemuctl(uri, &["dominfo", name]);
    assert!(
        info.ok().contains("State:          running"),
        "{}",
        info.stdout
    );
    assert_eq!(
        qemuctl(uri, &["domstate", "--reason", name]).ok().trim(),
        "running (booted)"
    );
    qemuctl(uri, &["suspend", name]).ok();
    assert_eq!(qemuctl(uri, &["domstate", name]).ok().trim(), "paused");
    qemuctl(uri, &["resume", name]).ok();
    assert_eq!(
        qemuctl(uri, &["domstate", "--reason", name]).ok().trim(),
        "running (unpaused)"
    );
    qemuctl(uri, &["reset", name]).ok();
    assert_eq!(qemuctl(uri, &["domstate", name]).ok().trim(), "running");
    assert!(qemuctl(uri, &["dumpxml", name]).ok().contains("id='"));
    let j = qemuctl(uri, &["--json", "dominfo", name]);
    let v: serde_json::Value = serde_json::from_str(j.ok()).expect("json");
    assert_eq!(v["state"], "running");
    assert_eq!(v["persistent"], true);
    let autostart = |want: bool| {
        let j = qemuctl(uri, &["--json", "dominfo", name]);
        let v: serde_json::Value = serde_json::from_str(j.ok()).expect("json");
        assert_eq!(v["autostart"], want, "{v}");
    };
    qemuctl(uri, &["autostart", name]).ok();
    autostart(true);
    qemuctl(uri, &["autostart", "--disable", name]).ok();
    autostart(false);
    qemuctl(uri, &["destroy", name]).ok();
    assert_eq!(
        qemuctl(uri, &["domstate", "--reason", name]).ok().trim(),
        "shut off (destroyed)"
    );
    qemuctl(uri, &["undefine", name]).ok();
    let err = qemuctl(uri, &["dominfo", name]);
    let msg = err.fails();
    assert!(
        msg.contains("Domain not found") && msg.contains("VIR_ERR_NO_DOMAIN"),
        "{msg}"
    );
}

/// Checks that the peer closes `s` within `within`: end of stream or a
/// reset is a close; data or a read timeout is not (an idle connection
/// that is still open must fail the check, not pass it).
pub fn closed_by_peer<S: std::io::Read>(
    s: &mut S,
    within: Duration,
    set_timeout: impl Fn(&S, Option<Duration>) -> std::io::Result<()>,
) -> Result<(), String> {
    use std::io::ErrorKind::*;
    set_timeout(s, Some(within)).map_err(|e| e.to_string())?;
    let mut buf = [0u8; 64];
    match s.read(&mut buf) {
        Ok(0) => Ok(()),
        Ok(n) => Err(format!("peer sent {n} bytes instead of closing")),
        Err(e) if matches!(e.kind(), ConnectionReset | ConnectionAborted | BrokenPipe) => Ok(()),
        Err(e) if matches!(e.kind(), WouldBlock | TimedOut) => {
            Err(format!("still open after {within:?}"))
        }
        Err(e) => Err(format!("read failed: {e}")),
    }
}

/// `closed_by_peer` for a UNIX socket.
pub fn unix_closed_by_peer(
    s: &mut std::os::unix::net::UnixStream,
    within: Duration,
) -> Result<(), String> {
    closed_by_peer(s, within, |s, t| s.set_read_timeout(t))
}

/// `closed_by_peer` for a TCP socket.
pub fn tcp_closed_by_peer(s: &mut std::net::TcpStream, within: Duration) -> Result<(), String> {
    closed_by_peer(s, within, |s, t| s.set_read_timeout(t))
}

/// Runs virsh with a deadline (a hung virsh fails instead of hanging the
/// test).
pub fn virsh_within(secs: u64, uri: &str, args: &[&str]) -> Run {
    let out = Command::new("timeout")
        .arg(secs.to_string())
        .arg("virsh")
        .arg("-q")
        .arg("-c")
        .arg(uri)
        .args(args)
        .output()
        .expect("run virsh");
    Run::from(out)
}
