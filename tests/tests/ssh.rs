//! Issue 5: qemu+ssh from unmodified virsh and from qemuctl, through a real
//! sshd on a loopback port. libvirt's ssh transport runs `nc -U SOCKET` on
//! the remote host: with `?socket=` that is qemud's socket; without it,
//! the client's default (/run/libvirt/libvirt-sock), where qemud can be
//! told to listen with `--socket`.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

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

fn sshd(dir: &Path) -> Sshd {
    std::fs::create_dir_all("/run/sshd").unwrap();
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
    let child = Command::new("/usr/sbin/sshd")
        .arg("-D")
        .arg("-e")
        .arg("-f")
        .arg(&cfg)
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
    let s = sshd(work.path());
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
/// default, so a plain `qemu+ssh://host/system` works.
#[test]
fn virsh_over_ssh_with_the_default_socket_path() {
    let default = Path::new("/run/libvirt/libvirt-sock");
    if std::os::unix::net::UnixStream::connect(default).is_ok() {
        eprintln!(
            "skipping: {} belongs to another daemon here",
            default.display()
        );
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let s = sshd(work.path());
    std::fs::create_dir_all("/run/libvirt").unwrap();
    let d = Daemon::start_with(&[
        "--socket",
        "/run/libvirt/libvirt-sock",
        "--socket-ro",
        "/run/libvirt/libvirt-sock-ro",
    ]);
    let uri = ssh_uri(&s, None);
    let r = virsh(&uri, &["hostname"]);
    let host = r.ok().trim().to_owned();
    assert_eq!(
        host,
        nix::unistd::gethostname().unwrap().into_string().unwrap()
    );
    drop(d);
    std::thread::sleep(Duration::from_millis(100));
    let _ = std::fs::remove_file(default);
    let _ = std::fs::remove_file("/run/libvirt/libvirt-sock-ro");
}
