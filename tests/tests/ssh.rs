//! Issue 5: qemu+ssh from unmodified virsh and from qemuctl, through a real
//! sshd on a loopback port. libvirt's ssh transport runs `nc -U SOCKET` on
//! the remote host: with `?socket=` that is qemud's socket; without it,
//! the client's default (/run/libvirt/libvirt-sock), where qemud can be
//! told to listen with `--socket`. The test for the default path runs sshd
//! in a mount namespace of its own where /run/libvirt is the test daemon's
//! run directory: the host's /run/libvirt is never touched.

use std::path::Path;
use std::process::{Child, Command, Stdio};

use qemud_tests::*;

struct Sshd {
    child: Child,
    port: u16,
    key: std::path::PathBuf,
}

impl Drop for Sshd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn keygen(path: &Path) {
    let st = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", ""])
        .arg("-f")
        .arg(path)
        .status()
        .unwrap();
    assert!(st.success());
}

/// A real sshd on a loopback port, in a private mount namespace with a
/// fresh /run. With `run_libvirt`, /run/libvirt there is `run_libvirt`, so
/// sessions see the test daemon's sockets at libvirt's default paths.
fn sshd(dir: &Path, run_libvirt: Option<&Path>) -> Sshd {
    keygen(&dir.join("host_key"));
    keygen(&dir.join("client_key"));
    std::fs::copy(dir.join("client_key.pub"), dir.join("authorized_keys")).unwrap();
    let port = free_port();
    let cfg = dir.join("sshd_config");
    std::fs::write(
        &cfg,
        format!(
            "Port {port}\nListenAddress 127.0.0.1\nHostKey {d}/host_key\nAuthorizedKeysFile {d}/authorized_keys\n\
             PermitRootLogin prohibit-password\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n\
             StrictModes no\nUsePAM no\nPidFile {d}/sshd.pid\n",
            d = dir.display()
        ),
    )
    .unwrap();
    // sshd wants /run/sshd; it gets a private /run so the host's is left
    // alone, with the test daemon's run directory as /run/libvirt when asked.
    let bind = match run_libvirt {
        Some(_) => "mkdir -p /run/libvirt && mount --bind \"$1\" /run/libvirt && ",
        None => "",
    };
    let mut cmd = Command::new("unshare");
    cmd.args(["--mount", "--propagation", "private", "sh", "-c"])
        .arg(format!(
            "mount -t tmpfs tmpfs /run && mkdir -p /run/sshd && {bind}exec /usr/sbin/sshd -D -e -f \"$2\""
        ))
        .arg("sh")
        .arg(run_libvirt.unwrap_or(dir))
        .arg(&cfg);
    let child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("run sshd");
    wait_until(10, "sshd listening", || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    Sshd {
        child,
        port,
        key: dir.join("client_key"),
    }
}

fn ssh_uri(s: &Sshd, socket: Option<&Path>) -> String {
    let mut uri = format!(
        "qemu+ssh://root@127.0.0.1:{}/system?keyfile={}&no_verify=1",
        s.port,
        s.key.display()
    );
    if let Some(sock) = socket {
        uri.push_str(&format!("&socket={}", sock.display()));
    }
    uri
}

#[test]
fn virsh_and_qemuctl_over_ssh() {
    let work = tempfile::tempdir().unwrap();
    let s = sshd(work.path(), None);
    let d = Daemon::start();
    let uri = ssh_uri(&s, Some(&d.socket()));

    virsh(&uri, &["list", "--all"]).ok();
    let x = write_xml(d.dir.path(), "viassh", &tiny_xml("viassh"));
    virsh(&uri, &["define", x.to_str().unwrap()]).ok();
    virsh(&uri, &["start", "viassh"]).ok();
    assert_eq!(virsh(&uri, &["domstate", "viassh"]).ok().trim(), "running");
    virsh(&uri, &["destroy", "viassh"]).ok();

    assert_eq!(
        qemuctl(&uri, &["domstate", "--reason", "viassh"])
            .ok()
            .trim(),
        "shut off (destroyed)"
    );
    virsh(&uri, &["undefine", "viassh"]).ok();
}

/// The documented recipe: qemud listening where libvirt clients look by
/// default, so a plain `qemu+ssh://host/system` works. The daemon listens
/// at the default names inside its own run directory; sshd sees that
/// directory as /run/libvirt.
#[test]
fn virsh_over_ssh_with_the_default_socket_path() {
    let d = Daemon::start();
    assert_eq!(d.socket(), d.run_dir().join("libvirt-sock"));
    let work = tempfile::tempdir().unwrap();
    let s = sshd(work.path(), Some(&d.run_dir()));
    let uri = ssh_uri(&s, None);
    let r = virsh(&uri, &["hostname"]);
    let host = r.ok().trim().to_owned();
    assert_eq!(
        host,
        nix::unistd::gethostname().unwrap().into_string().unwrap()
    );
    // It really was this daemon that answered.
    let x = write_xml(d.dir.path(), "dflt", &tiny_xml("dflt"));
    virsh(&d.uri(), &["define", x.to_str().unwrap()]).ok();
    assert_eq!(
        virsh(&uri, &["list", "--all", "--name"]).ok().trim(),
        "dflt"
    );
}
