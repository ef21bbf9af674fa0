//! The `SecretDriver` actor owns every secret: definitions, values, their
//! files and the events their changes produce. Persistent secrets live in
//! `<state_dir>/secrets/<uuid>.xml` and their values in `<uuid>.base64`
//! (as libvirt keeps them), each file mode 0600 and written atomically.
//! Values never reach a log line: `Secret`'s `Debug` leaves them out.

use std::collections::HashMap;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use actix::prelude::*;
use serde::Serialize;
use tracing::{info, warn};
use uuid::Uuid;

use qemud_config::secret::{base64_decode, base64_encode, SecretDef, SecretXmlError, UsageType};
use qemud_protocol::remote::procs::{SECRET_EVENT_LIFECYCLE, SECRET_EVENT_VALUE_CHANGED};
use qemud_protocol::remote::NonnullSecret;
use qemud_protocol::{ErrorCode, ErrorDomain};

use crate::error::{Error, Result};
use crate::events::{Event, EventBus, Family, ObjectKey};

/// `virSecretEventID`.
const EVENT_ID_LIFECYCLE: i32 = 0;
const EVENT_ID_VALUE_CHANGED: i32 = 1;
/// `virSecretEventLifecycleType`.
const EVENT_DEFINED: i32 = 0;
const EVENT_UNDEFINED: i32 = 1;

/// `virConnectListAllSecretsFlags`.
pub const LIST_EPHEMERAL: u32 = 1 << 0;
pub const LIST_NO_EPHEMERAL: u32 = 1 << 1;
pub const LIST_PRIVATE: u32 = 1 << 2;
pub const LIST_NO_PRIVATE: u32 = 1 << 3;
pub const LIST_ALL_FLAGS: u32 = LIST_EPHEMERAL | LIST_NO_EPHEMERAL | LIST_PRIVATE | LIST_NO_PRIVATE;

/// A secret's bytes, wiped from memory when dropped or replaced.
struct SecretValue(Vec<u8>);

impl Drop for SecretValue {
    fn drop(&mut self) {
        for b in self.0.iter_mut() {
            // SAFETY: `b` is a valid, aligned, exclusive reference; the
            // volatile write keeps the compiler from dropping the wipe.
            unsafe { std::ptr::write_volatile(b, 0) };
        }
    }
}

struct Secret {
    def: SecretDef,
    value: Option<SecretValue>,
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Secret")
            .field("def", &self.def)
            .field("has_value", &self.value.is_some())
            .finish()
    }
}

/// The handle clients get for a secret.
pub fn handle(def: &SecretDef) -> NonnullSecret {
    NonnullSecret {
        uuid: def.uuid.into(),
        usage_type: def.usage_type as i32,
        usage_id: def.usage_id_str().into(),
    }
}

fn no_secret(uuid: &Uuid) -> Error {
    Error::NoSecret(format!(
        "no secret with matching uuid '{}'",
        uuid.hyphenated()
    ))
}

fn internal(message: String) -> Error {
    Error::Other {
        code: ErrorCode::InternalError,
        domain: ErrorDomain::Secret,
        message: format!("internal error: {message}"),
    }
}

/// A bad definition, with libvirt's code and prefix.
pub fn xml_error(e: SecretXmlError) -> Error {
    let (code, message) = match e {
        SecretXmlError::Parse(m) => (ErrorCode::XmlDetail, m),
        SecretXmlError::Root(m) => {
            return Error::Other {
                code: ErrorCode::XmlError,
                domain: ErrorDomain::Xml,
                message: format!("XML error: {m}"),
            }
        }
        SecretXmlError::Xml(m) => (ErrorCode::XmlError, format!("XML error: {m}")),
        SecretXmlError::Unsupported(m) => (
            ErrorCode::ConfigUnsupported,
            format!("unsupported configuration: {m}"),
        ),
        SecretXmlError::Internal(m) => (ErrorCode::InternalError, format!("internal error: {m}")),
    };
    Error::Other {
        code,
        domain: ErrorDomain::Secret,
        message,
    }
}

fn io_err(what: &str, path: &Path, e: std::io::Error) -> Error {
    Error::System(format!("cannot {what} '{}': {e}", path.display()))
}

/// Writes a file readable by its owner only, atomically: temp file (created
/// 0600, so the data is never visible to others), fsync, rename, fsync dir.
fn write_private(path: &Path, data: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let result = (|| {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(data)?;
        f.sync_all()?;
        fs::rename(&tmp, path)?;
        fs::File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

fn remove_file(path: &Path) -> std::io::Result<()> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// What connections ask of the driver.
#[derive(Message)]
#[rtype(result = "Result<SecretReply>")]
pub enum SecretOp {
    Define { xml: String },
    Lookup { uuid: Uuid },
    LookupByUsage { usage_type: i32, usage_id: String },
    Xml { uuid: Uuid },
    SetValue { uuid: Uuid, value: Vec<u8> },
    GetValue { uuid: Uuid },
    Undefine { uuid: Uuid },
    List { flags: u32 },
}

// The value is left out so that a debug log of an operation never shows it.
impl std::fmt::Debug for SecretOp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SecretOp::SetValue { uuid, value } => write!(
                f,
                "SetValue {{ uuid: {uuid}, value: <{} bytes> }}",
                value.len()
            ),
            SecretOp::Define { .. } => f.write_str("Define"),
            SecretOp::Lookup { uuid } => write!(f, "Lookup {{ uuid: {uuid} }}"),
            SecretOp::LookupByUsage { usage_type, .. } => {
                write!(f, "LookupByUsage {{ usage_type: {usage_type} }}")
            }
            SecretOp::Xml { uuid } => write!(f, "Xml {{ uuid: {uuid} }}"),
            SecretOp::GetValue { uuid } => write!(f, "GetValue {{ uuid: {uuid} }}"),
            SecretOp::Undefine { uuid } => write!(f, "Undefine {{ uuid: {uuid} }}"),
            SecretOp::List { flags } => write!(f, "List {{ flags: {flags:#x} }}"),
        }
    }
}

pub enum SecretReply {
    Def(SecretDef),
    Defs(Vec<SecretDef>),
    Xml(String),
    Value(Vec<u8>),
    Done,
}

impl SecretReply {
    pub fn def(self) -> Result<SecretDef> {
        match self {
            SecretReply::Def(d) => Ok(d),
            _ => Err(Error::Internal("unexpected secret driver reply".into())),
        }
    }
}

pub struct SecretDriver {
    dir: PathBuf,
    secrets: HashMap<Uuid, Secret>,
    events: Addr<EventBus>,
}

impl Actor for SecretDriver {
    type Context = Context<Self>;
}

#[derive(Serialize)]
struct LifecycleBody {
    secret: NonnullSecret,
    event: i32,
    detail: i32,
}

impl SecretDriver {
    /// Loads the persistent secrets kept in `dir` (created 0700 if absent).
    pub fn load(dir: PathBuf, events: Addr<EventBus>) -> SecretDriver {
        let mut d = SecretDriver {
            dir,
            secrets: HashMap::new(),
            events,
        };
        if let Err(e) = fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&d.dir)
        {
            warn!("cannot create secrets directory {}: {e}", d.dir.display());
            return d;
        }
        let entries = match fs::read_dir(&d.dir) {
            Ok(e) => e,
            Err(e) => {
                warn!("cannot read secrets directory {}: {e}", d.dir.display());
                return d;
            }
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.extension().and_then(|e| e.to_str()) != Some("xml") {
                continue;
            }
            match d.load_one(&path) {
                Ok(s) => {
                    d.secrets.insert(s.def.uuid, s);
                }
                Err(e) => warn!("skipping secret {}: {e}", path.display()),
            }
        }
        info!(count = d.secrets.len(), "secrets loaded");
        d
    }

    fn load_one(&self, path: &Path) -> std::result::Result<Secret, String> {
        let xml = fs::read_to_string(path).map_err(|e| e.to_string())?;
        let def = SecretDef::parse(&xml).map_err(|e| e.to_string())?;
        let stem = path.file_stem().and_then(|s| s.to_str()).unwrap_or("");
        if stem != def.uuid.hyphenated().to_string() {
            return Err(format!("<uuid> does not match secret file name '{stem}'"));
        }
        let value = match fs::read_to_string(self.value_path(&def.uuid)) {
            Ok(text) => Some(SecretValue(
                base64_decode(&text).ok_or("invalid base64 value file")?,
            )),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(e.to_string()),
        };
        Ok(Secret { def, value })
    }

    fn def_path(&self, uuid: &Uuid) -> PathBuf {
        self.dir.join(format!("{}.xml", uuid.hyphenated()))
    }

    fn value_path(&self, uuid: &Uuid) -> PathBuf {
        self.dir.join(format!("{}.base64", uuid.hyphenated()))
    }

    fn save_def(&self, def: &SecretDef) -> Result<()> {
        let p = self.def_path(&def.uuid);
        write_private(&p, def.to_xml().as_bytes()).map_err(|e| io_err("write", &p, e))
    }

    fn save_value(&self, uuid: &Uuid, value: &[u8]) -> Result<()> {
        let p = self.value_path(uuid);
        write_private(&p, base64_encode(value).as_bytes()).map_err(|e| io_err("write", &p, e))
    }

    fn delete_files(&self, uuid: &Uuid) -> Result<()> {
        let p = self.def_path(uuid);
        remove_file(&p).map_err(|e| io_err("unlink", &p, e))?;
        let p = self.value_path(uuid);
        remove_file(&p).map_err(|e| io_err("unlink", &p, e))
    }

    fn get(&self, uuid: &Uuid) -> Result<&Secret> {
        self.secrets.get(uuid).ok_or_else(|| no_secret(uuid))
    }

    fn publish_lifecycle(&self, def: &SecretDef, event: i32) {
        let body = LifecycleBody {
            secret: handle(def),
            event,
            detail: 0,
        };
        match Event::new(
            Family::Secret,
            ObjectKey::Uuid(def.uuid),
            EVENT_ID_LIFECYCLE,
            SECRET_EVENT_LIFECYCLE,
            &body,
        ) {
            Ok(e) => self.events.do_send(e),
            Err(e) => warn!("cannot encode secret event: {e}"),
        }
    }

    fn publish_value_changed(&self, def: &SecretDef) {
        match Event::new(
            Family::Secret,
            ObjectKey::Uuid(def.uuid),
            EVENT_ID_VALUE_CHANGED,
            SECRET_EVENT_VALUE_CHANGED,
            &handle(def),
        ) {
            Ok(e) => self.events.do_send(e),
            Err(e) => warn!("cannot encode secret event: {e}"),
        }
    }

    fn define(&mut self, xml: &str) -> Result<SecretDef> {
        let def = SecretDef::parse(xml).map_err(xml_error)?;
        let uuid_str = def.uuid.hyphenated().to_string();
        let old = self.secrets.get(&def.uuid);
        if let Some(old) = old {
            if old.def.usage_id != def.usage_id {
                return Err(internal(format!(
                    "a secret with UUID {uuid_str} is already defined for use with {}",
                    old.def.usage_id.as_deref().unwrap_or("(null)")
                )));
            }
            if old.def.private && !def.private {
                return Err(internal(
                    "cannot change private flag on existing secret".into(),
                ));
            }
        } else if def.usage_type != UsageType::None {
            if let Some(other) = self
                .secrets
                .values()
                .find(|s| s.def.usage_type == def.usage_type && s.def.usage_id == def.usage_id)
            {
                return Err(internal(format!(
                    "a secret with UUID {} already defined for use with {}",
                    other.def.uuid.hyphenated(),
                    def.usage_id_str()
                )));
            }
        }
        let was_ephemeral = old.map(|o| o.def.ephemeral);
        if !def.ephemeral {
            if was_ephemeral == Some(true) {
                if let Some(v) = old.and_then(|o| o.value.as_ref()) {
                    self.save_value(&def.uuid, &v.0)?;
                }
            }
            if let Err(e) = self.save_def(&def) {
                if was_ephemeral == Some(true) {
                    let _ = remove_file(&self.value_path(&def.uuid));
                }
                return Err(e);
            }
        } else if was_ephemeral == Some(false) {
            self.delete_files(&def.uuid)?;
        }
        match self.secrets.get_mut(&def.uuid) {
            Some(s) => s.def = def.clone(),
            None => {
                self.secrets.insert(
                    def.uuid,
                    Secret {
                        def: def.clone(),
                        value: None,
                    },
                );
            }
        }
        info!(uuid = %uuid_str, usage = def.usage_type.name(), "secret defined");
        self.publish_lifecycle(&def, EVENT_DEFINED);
        Ok(def)
    }

    fn set_value(&mut self, uuid: &Uuid, value: Vec<u8>) -> Result<()> {
        let value = SecretValue(value);
        let s = self.get(uuid)?;
        if !s.def.ephemeral {
            self.save_value(uuid, &value.0)?;
        }
        let def = s.def.clone();
        if let Some(s) = self.secrets.get_mut(uuid) {
            s.value = Some(value);
        }
        self.publish_value_changed(&def);
        Ok(())
    }

    fn get_value(&self, uuid: &Uuid) -> Result<Vec<u8>> {
        let s = self.get(uuid)?;
        // libvirt hands private values only to its own daemons, never to a
        // client over the remote protocol.
        if s.def.private {
            return Err(Error::Other {
                code: ErrorCode::InvalidSecret,
                domain: ErrorDomain::Secret,
                message: "Invalid secret: secret is private".into(),
            });
        }
        s.value.as_ref().map(|v| v.0.clone()).ok_or_else(|| {
            Error::NoSecret(format!(
                "secret '{}' does not have a value",
                uuid.hyphenated()
            ))
        })
    }

    fn undefine(&mut self, uuid: &Uuid) -> Result<()> {
        let def = self.get(uuid)?.def.clone();
        let p = self.def_path(uuid);
        remove_file(&p).map_err(|e| io_err("unlink", &p, e))?;
        let _ = remove_file(&self.value_path(uuid));
        self.secrets.remove(uuid);
        info!(uuid = %uuid.hyphenated(), "secret undefined");
        self.publish_lifecycle(&def, EVENT_UNDEFINED);
        Ok(())
    }

    fn list(&self, flags: u32) -> Vec<SecretDef> {
        let pick = |on: u32, off: u32, value: bool| {
            flags & (on | off) == 0 || (flags & on != 0 && value) || (flags & off != 0 && !value)
        };
        let mut v: Vec<SecretDef> = self
            .secrets
            .values()
            .filter(|s| pick(LIST_EPHEMERAL, LIST_NO_EPHEMERAL, s.def.ephemeral))
            .filter(|s| pick(LIST_PRIVATE, LIST_NO_PRIVATE, s.def.private))
            .map(|s| s.def.clone())
            .collect();
        v.sort_by_key(|d| d.uuid);
        v
    }
}

impl Handler<SecretOp> for SecretDriver {
    type Result = Result<SecretReply>;

    fn handle(&mut self, op: SecretOp, _: &mut Self::Context) -> Self::Result {
        match op {
            SecretOp::Define { xml } => self.define(&xml).map(SecretReply::Def),
            SecretOp::Lookup { uuid } => Ok(SecretReply::Def(self.get(&uuid)?.def.clone())),
            SecretOp::LookupByUsage {
                usage_type,
                usage_id,
            } => self
                .secrets
                .values()
                .find(|s| {
                    s.def.usage_type as i32 == usage_type
                        && s.def.usage_type != UsageType::None
                        && s.def.usage_id.as_deref() == Some(usage_id.as_str())
                })
                .map(|s| SecretReply::Def(s.def.clone()))
                .ok_or_else(|| {
                    Error::NoSecret(format!("no secret with matching usage '{usage_id}'"))
                }),
            SecretOp::Xml { uuid } => Ok(SecretReply::Xml(self.get(&uuid)?.def.to_xml())),
            SecretOp::SetValue { uuid, value } => {
                self.set_value(&uuid, value).map(|()| SecretReply::Done)
            }
            SecretOp::GetValue { uuid } => self.get_value(&uuid).map(SecretReply::Value),
            SecretOp::Undefine { uuid } => self.undefine(&uuid).map(|()| SecretReply::Done),
            SecretOp::List { flags } => Ok(SecretReply::Defs(self.list(flags))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const XML: &str =
        "<secret ephemeral='no' private='no'><uuid>c5e1b8a4-1a3c-4b8e-9d6c-3e1f2a4b5c6d</uuid>\
                       <usage type='iscsi'><target>iqn.x</target></usage></secret>";

    fn with_driver(f: impl FnOnce(&Path, Addr<EventBus>)) {
        let dir = tempfile::tempdir().unwrap();
        actix::System::new().block_on(async {
            let bus = EventBus::default().start();
            f(dir.path(), bus);
        });
    }

    #[test]
    fn persistence_follows_the_ephemeral_flag() {
        with_driver(|dir, bus| {
            let secrets = dir.join("secrets");
            let mut d = SecretDriver::load(secrets.clone(), bus.clone());
            let def = d.define(XML).unwrap();
            let xml_file = secrets.join(format!("{}.xml", def.uuid));
            let value_file = secrets.join(format!("{}.base64", def.uuid));
            d.set_value(&def.uuid, b"v1".to_vec()).unwrap();
            assert_eq!(fs::read_to_string(&value_file).unwrap(), "djE=");

            // Persistent → ephemeral: the files go, the value stays.
            d.define(&XML.replace("ephemeral='no'", "ephemeral='yes'"))
                .unwrap();
            assert!(!xml_file.exists() && !value_file.exists());
            assert_eq!(d.get_value(&def.uuid).unwrap(), b"v1");

            // Ephemeral → persistent: the value is written out again.
            d.define(XML).unwrap();
            assert_eq!(fs::read_to_string(&value_file).unwrap(), "djE=");

            // A restart reads both back.
            let d2 = SecretDriver::load(secrets.clone(), bus.clone());
            assert_eq!(d2.get_value(&def.uuid).unwrap(), b"v1");
            assert_eq!(d2.list(0).len(), 1);
        });
    }

    #[test]
    fn redefinition_rules_are_libvirts() {
        with_driver(|dir, bus| {
            let mut d = SecretDriver::load(dir.join("secrets"), bus);
            d.define(&XML.replace("private='no'", "private='yes'"))
                .unwrap();
            let e = d.define(XML).unwrap_err();
            assert_eq!(
                e.to_string(),
                "internal error: cannot change private flag on existing secret"
            );
            let e = d.define(&XML.replace("iqn.x", "iqn.y")).unwrap_err();
            assert_eq!(
                e.to_string(),
                "internal error: a secret with UUID c5e1b8a4-1a3c-4b8e-9d6c-3e1f2a4b5c6d is already defined for use with iqn.x"
            );
            let e = d.define(&XML.replace("c5e1b8a4", "d5e1b8a4")).unwrap_err();
            assert_eq!(
                e.to_string(),
                "internal error: a secret with UUID c5e1b8a4-1a3c-4b8e-9d6c-3e1f2a4b5c6d already defined for use with iqn.x"
            );
            assert_eq!(d.list(LIST_PRIVATE).len(), 1);
            assert_eq!(d.list(LIST_NO_PRIVATE).len(), 0);
        });
    }
}
