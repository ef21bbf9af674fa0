//! The guest's screen and keyboard: screenshots (QMP `screendump` to a
//! temporary file, streamed back), key presses (QMP `send-key` with
//! libvirt's keycode sets translated to QEMU's numbers), and the state of
//! the domain's control interface.

use std::time::Duration;

use serde_json::json;
use tracing::debug;

use qemud_protocol::remote::procs::*;
use qemud_protocol::remote::*;

use crate::call;
use crate::error::{Error, Result};
use crate::qemu_program::running;
use crate::rpc::stream::{self, Inbound};
use crate::rpc::wire::check_flags;
use crate::rpc::{Call, Procedure};

/// A screendump of a large display takes a while under TCG.
const SCREENDUMP_DEADLINE: Duration = Duration::from_secs(30);
/// How long a finished screenshot stream waits for the client's finish.
const FINISH_WAIT: Duration = Duration::from_secs(30);

pub fn procedures() -> Vec<Procedure> {
    vec![
        call!(DOMAIN_SCREENSHOT, Write, screenshot),
        call!(DOMAIN_SEND_KEY, Write, send_key),
        call!(DOMAIN_GET_CONTROL_INFO, Read, control_info),
        call!(DOMAIN_OPEN_GRAPHICS_FD, Write, open_graphics_fd),
    ]
}

/// A temporary file removed when dropped.
struct TempFile(std::path::PathBuf);

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

async fn screenshot(call: &Call, a: DomainScreenshotArgs) -> Result<DomainScreenshotRet> {
    check_flags(a.flags, 0, "qemuDomainScreenshot")?;
    let (vm, qmp) = running(call, &a.dom).await?;
    if vm.def.devices.graphics.is_none() && vm.def.devices.video.is_none() {
        return Err(Error::OperationInvalid(
            "no screens to take screenshot from".into(),
        ));
    }
    if a.screen != 0 {
        return Err(Error::OperationInvalid("no such screen ID".into()));
    }
    let dir = call.svc.settings.run_dir.join("screendump");
    std::fs::create_dir_all(&dir)
        .map_err(|e| Error::System(format!("cannot create {}: {e}", dir.display())))?;
    let file = TempFile(dir.join(format!(
        "qemu.screendump.{}.{}",
        vm.def.uuid, call.header.serial
    )));
    let path = file.0.to_string_lossy().into_owned();
    // PNG when QEMU can write it, as libvirt prefers; PPM otherwise.
    let mime = match qmp
        .execute_within(
            "screendump",
            Some(json!({ "filename": path, "format": "png" })),
            SCREENDUMP_DEADLINE,
        )
        .await
    {
        Ok(_) => "image/png",
        Err(e) => {
            debug!("PNG screendump failed ({e}); trying PPM");
            qmp.execute_within(
                "screendump",
                Some(json!({ "filename": path })),
                SCREENDUMP_DEADLINE,
            )
            .await
            .map_err(|e| Error::OperationFailed(e.to_string()))?;
            "image/x-portable-pixmap"
        }
    };
    let data =
        std::fs::read(&file.0).map_err(|e| Error::System(format!("unable to open {path}: {e}")))?;
    drop(file);
    if data.is_empty() {
        return Err(Error::OperationFailed("screenshot file is empty".into()));
    }
    let mut io = stream::open(call).await?;
    actix_rt::spawn(async move {
        if io.send(&data).await.is_err() {
            return;
        }
        io.eof();
        // The client confirms with a finish; answer it, or give up after
        // a while (the connection answers for a producer that is gone).
        if let Ok(Some(Inbound::Finish)) = tokio::time::timeout(FINISH_WAIT, io.recv()).await {
            io.finish();
        }
    });
    Ok(DomainScreenshotRet {
        mime: Some(mime.into()),
    })
}

/// `virKeycodeSet` values.
mod codeset {
    pub const LINUX: u32 = 0;
    pub const XT: u32 = 1;
    pub const ATSET1: u32 = 2;
    pub const XT_KBD: u32 = 6;
    pub const USB: u32 = 7;
    pub const QNUM: u32 = 9;
    pub const NAMES: [&str; 10] = [
        "linux", "xt", "atset1", "atset2", "atset3", "os_x", "xt_kbd", "usb", "win32", "qnum",
    ];
}

/// Linux keycodes past the range where they equal XT set 1 scancodes.
const LINUX_EXTENDED: &[(u32, u32)] = &[
    (96, 0x9c),  // KPENTER
    (97, 0x9d),  // RIGHTCTRL
    (98, 0xb5),  // KPSLASH
    (99, 0xb7),  // SYSRQ
    (100, 0xb8), // RIGHTALT
    (102, 0xc7), // HOME
    (103, 0xc8), // UP
    (104, 0xc9), // PAGEUP
    (105, 0xcb), // LEFT
    (106, 0xcd), // RIGHT
    (107, 0xcf), // END
    (108, 0xd0), // DOWN
    (109, 0xd1), // PAGEDOWN
    (110, 0xd2), // INSERT
    (111, 0xd3), // DELETE
    (119, 0xc6), // PAUSE
    (125, 0xdb), // LEFTMETA
    (126, 0xdc), // RIGHTMETA
    (127, 0xdd), // COMPOSE
];

/// USB HID usages of the main block, as Linux keycodes.
const USB_TO_LINUX: &[(u32, u32)] = &[
    (0x04, 30),
    (0x05, 48),
    (0x06, 46),
    (0x07, 32),
    (0x08, 18),
    (0x09, 33),
    (0x0a, 34),
    (0x0b, 35),
    (0x0c, 23),
    (0x0d, 36),
    (0x0e, 37),
    (0x0f, 38),
    (0x10, 50),
    (0x11, 49),
    (0x12, 24),
    (0x13, 25),
    (0x14, 16),
    (0x15, 19),
    (0x16, 31),
    (0x17, 20),
    (0x18, 22),
    (0x19, 47),
    (0x1a, 17),
    (0x1b, 45),
    (0x1c, 21),
    (0x1d, 44),
    (0x1e, 2),
    (0x1f, 3),
    (0x20, 4),
    (0x21, 5),
    (0x22, 6),
    (0x23, 7),
    (0x24, 8),
    (0x25, 9),
    (0x26, 10),
    (0x27, 11),
    (0x28, 28),
    (0x29, 1),
    (0x2a, 14),
    (0x2b, 15),
    (0x2c, 57),
    (0x2d, 12),
    (0x2e, 13),
    (0x2f, 26),
    (0x30, 27),
    (0x31, 43),
    (0x33, 39),
    (0x34, 40),
    (0x35, 41),
    (0x36, 51),
    (0x37, 52),
    (0x38, 53),
    (0x39, 58),
    (0x3a, 59),
    (0x3b, 60),
    (0x3c, 61),
    (0x3d, 62),
    (0x3e, 63),
    (0x3f, 64),
    (0x40, 65),
    (0x41, 66),
    (0x42, 67),
    (0x43, 68),
    (0x44, 87),
    (0x45, 88),
    (0x4f, 106),
    (0x50, 105),
    (0x51, 108),
    (0x52, 103),
    (0xe0, 29),
    (0xe1, 42),
    (0xe2, 56),
    (0xe3, 125),
    (0xe4, 97),
    (0xe5, 54),
    (0xe6, 100),
    (0xe7, 126),
];

fn linux_to_qnum(code: u32) -> Option<u32> {
    match code {
        1..=88 => Some(code),
        _ => LINUX_EXTENDED
            .iter()
            .find(|(l, _)| *l == code)
            .map(|(_, q)| *q),
    }
}

/// QEMU's key number for a keycode of a libvirt keycode set.
fn to_qnum(set: u32, code: u32) -> Result<u32> {
    let q = match set {
        codeset::QNUM => Some(code),
        codeset::LINUX => linux_to_qnum(code),
        // Set 1 scancodes are QEMU's numbers; 0xe0-prefixed ones fold into
        // the high bit.
        codeset::XT | codeset::ATSET1 | codeset::XT_KBD => match code {
            0x01..=0x7f => Some(code),
            0xe001..=0xe07f => Some((code & 0x7f) | 0x80),
            _ => None,
        },
        codeset::USB => USB_TO_LINUX
            .iter()
            .find(|(u, _)| *u == code)
            .and_then(|(_, l)| linux_to_qnum(*l)),
        _ => None,
    };
    q.ok_or_else(|| {
        let name = codeset::NAMES
            .get(set as usize)
            .copied()
            .unwrap_or("unknown");
        Error::Internal(format!(
            "cannot translate keycode {code} of {name} codeset to qnum keycode"
        ))
    })
}

async fn send_key(call: &Call, a: DomainSendKeyArgs) -> Result<()> {
    check_flags(a.flags, 0, "qemuDomainSendKey")?;
    if a.keycodes.0.is_empty() {
        return Err(Error::InvalidArg(
            "nkeycodes in virDomainSendKey must be greater than 0".into(),
        ));
    }
    let keys = a
        .keycodes
        .0
        .iter()
        .map(|c| to_qnum(a.codeset, *c).map(|q| json!({ "type": "number", "data": q })))
        .collect::<Result<Vec<_>>>()?;
    let (_, qmp) = running(call, &a.dom).await?;
    let mut args = json!({ "keys": keys });
    if a.holdtime > 0 {
        args["hold-time"] = json!(a.holdtime);
    }
    qmp.execute("send-key", Some(args))
        .await
        .map_err(|e| Error::OperationFailed(e.to_string()))?;
    Ok(())
}

/// `VIR_DOMAIN_OPEN_GRAPHICS_SKIPAUTH`.
const GRAPHICS_SKIPAUTH: u32 = 1;

/// `virDomainOpenGraphicsFD`: one end of a socket pair handed to QEMU's VNC
/// server as a new client, the other end to the caller.
async fn open_graphics_fd(call: &Call, a: DomainOpenGraphicsFdArgs) -> Result<()> {
    use nix::sys::socket::{socketpair, AddressFamily, SockFlag, SockType};
    check_flags(a.flags, GRAPHICS_SKIPAUTH, "qemuDomainOpenGraphicsFD")?;
    let (vm, qmp) = running(call, &a.dom).await?;
    if vm.def.devices.graphics.is_none() || a.idx != 0 {
        return Err(Error::Internal(format!(
            "No graphics backend with index {}",
            a.idx
        )));
    }
    let (ours, theirs) = socketpair(
        AddressFamily::Unix,
        SockType::Stream,
        None,
        SockFlag::SOCK_CLOEXEC,
    )
    .map_err(|e| Error::System(format!("Unable to create socket pair: {e}")))?;
    // Refused here, before QEMU gets a client, where descriptors cannot travel.
    crate::rpc::fdpass::attach(call, vec![ours]).await?;
    let qmp_failed = |e: crate::domain::qmp::QmpError| Error::OperationFailed(e.to_string());
    qmp.execute_with_fd("getfd", Some(json!({ "fdname": "graphicsfd" })), theirs)
        .await
        .map_err(qmp_failed)?;
    qmp.execute(
        "add_client",
        Some(json!({
            "protocol": "vnc",
            "fdname": "graphicsfd",
            "skipauth": a.flags & GRAPHICS_SKIPAUTH != 0,
        })),
    )
    .await
    .map_err(qmp_failed)?;
    Ok(())
}

async fn control_info(call: &Call, a: DomainGetControlInfoArgs) -> Result<DomainGetControlInfoRet> {
    check_flags(a.flags, 0, "qemuDomainGetControlInfo")?;
    let v = crate::domain::procedures::resolve(call, &a.dom)?;
    if !v.is_active() {
        return Err(Error::OperationInvalid("domain is not running".into()));
    }
    // VIR_DOMAIN_CONTROL_OK: the monitor serves calls concurrently, so a
    // client never finds it occupied.
    Ok(DomainGetControlInfoRet {
        state: 0,
        details: 0,
        state_time: 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keycodes_translate_to_qnum() {
        assert_eq!(to_qnum(codeset::LINUX, 30).unwrap(), 0x1e); // KEY_A
        assert_eq!(to_qnum(codeset::LINUX, 103).unwrap(), 0xc8); // KEY_UP
        assert_eq!(to_qnum(codeset::XT, 0x1e).unwrap(), 0x1e);
        assert_eq!(to_qnum(codeset::XT, 0xe048).unwrap(), 0xc8);
        assert_eq!(to_qnum(codeset::USB, 0x04).unwrap(), 0x1e);
        assert_eq!(to_qnum(codeset::QNUM, 0x9d).unwrap(), 0x9d);
        let e = to_qnum(codeset::LINUX, 999).unwrap_err();
        assert_eq!(
            e.to_string(),
            "internal error: cannot translate keycode 999 of linux codeset to qnum keycode"
        );
    }
}
