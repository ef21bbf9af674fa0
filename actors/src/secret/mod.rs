//! The secret driver: secrets with values kept 0600 under the state
//! directory, owned by the [`driver::SecretDriver`] actor. Reading a value is
//! refused on read-only connections by the table (libvirt's access rule).

pub mod driver;

use qemud_protocol::remote::procs::*;
use qemud_protocol::remote::*;
use qemud_protocol::xdr::{Opaque, XdrString};
use uuid::Uuid;

use crate::call;
use crate::error::{Error, Result};
use crate::rpc::{Call, Procedure};
use driver::{handle, SecretOp, SecretReply, LIST_ALL_FLAGS};

/// Most UUIDs one legacy list call returns (`REMOTE_SECRET_LIST_MAX`).
const LIST_MAX: i32 = 16384;

/// This driver's rows of the procedure table.
pub fn procedures() -> Vec<Procedure> {
    vec![
        call!(CONNECT_NUM_OF_SECRETS, Read, num_of_secrets),
        call!(CONNECT_LIST_SECRETS, Read, list_secrets),
        call!(CONNECT_LIST_ALL_SECRETS, Read, list_all_secrets),
        call!(SECRET_LOOKUP_BY_UUID, Read, lookup_by_uuid),
        call!(SECRET_LOOKUP_BY_USAGE, Read, lookup_by_usage),
        call!(SECRET_DEFINE_XML, Write, define_xml),
        call!(SECRET_GET_XML_DESC, Read, get_xml_desc),
        call!(SECRET_SET_VALUE, Write, set_value),
        call!(SECRET_GET_VALUE, Write, get_value),
        call!(SECRET_UNDEFINE, Write, undefine),
    ]
}

async fn op(call: &Call, op: SecretOp) -> Result<SecretReply> {
    call.svc.secrets.send(op).await?
}

fn check_flags(flags: u32, allowed: u32, function: &'static str) -> Result<()> {
    if flags & !allowed != 0 {
        let e = Error::UnsupportedFlags {
            flags: flags & !allowed,
            function,
        };
        return Err(Error::Other {
            code: e.code(),
            domain: qemud_protocol::ErrorDomain::Secret,
            message: e.to_string(),
        });
    }
    Ok(())
}

async fn list(call: &Call, flags: u32) -> Result<Vec<qemud_config::secret::SecretDef>> {
    match op(call, SecretOp::List { flags }).await? {
        SecretReply::Defs(d) => Ok(d),
        _ => Err(Error::Internal("unexpected secret driver reply".into())),
    }
}

async fn num_of_secrets(call: &Call, _: ()) -> Result<ConnectNumOfSecretsRet> {
    let n = list(call, 0).await?.len();
    Ok(ConnectNumOfSecretsRet {
        num: i32::try_from(n).unwrap_or(i32::MAX),
    })
}

async fn list_secrets(call: &Call, a: ConnectListSecretsArgs) -> Result<ConnectListSecretsRet> {
    if a.maxuuids > LIST_MAX {
        return Err(Error::Rpc("maxuuids > REMOTE_SECRET_LIST_MAX".into()));
    }
    let max = usize::try_from(a.maxuuids).unwrap_or(0);
    let uuids: Vec<XdrString> = list(call, 0)
        .await?
        .iter()
        .take(max)
        .map(|d| d.uuid.hyphenated().to_string().into())
        .collect();
    Ok(ConnectListSecretsRet {
        uuids: uuids.into(),
    })
}

async fn list_all_secrets(
    call: &Call,
    a: ConnectListAllSecretsArgs,
) -> Result<ConnectListAllSecretsRet> {
    check_flags(a.flags, LIST_ALL_FLAGS, "secretConnectListAllSecrets")?;
    let defs = list(call, a.flags).await?;
    let ret = u32::try_from(defs.len()).unwrap_or(u32::MAX);
    let secrets = if a.need_results != 0 {
        defs.iter().map(handle).collect()
    } else {
        Vec::new()
    };
    Ok(ConnectListAllSecretsRet {
        secrets: secrets.into(),
        ret,
    })
}

async fn lookup_by_uuid(call: &Call, a: SecretLookupByUuidArgs) -> Result<SecretLookupByUuidRet> {
    let uuid = Uuid::from(a.uuid);
    let def = op(call, SecretOp::Lookup { uuid }).await?.def()?;
    Ok(SecretLookupByUuidRet {
        secret: handle(&def),
    })
}

async fn lookup_by_usage(
    call: &Call,
    a: SecretLookupByUsageArgs,
) -> Result<SecretLookupByUsageRet> {
    let def = op(
        call,
        SecretOp::LookupByUsage {
            usage_type: a.usage_type,
            usage_id: a.usage_id.0,
        },
    )
    .await?
    .def()?;
    Ok(SecretLookupByUsageRet {
        secret: handle(&def),
    })
}

/// `VIR_SECRET_DEFINE_VALIDATE`: qemud always checks the definition fully.
const DEFINE_VALIDATE: u32 = 1;

async fn define_xml(call: &Call, a: SecretDefineXmlArgs) -> Result<SecretDefineXmlRet> {
    check_flags(a.flags, DEFINE_VALIDATE, "secretDefineXML")?;
    let def = op(call, SecretOp::Define { xml: a.xml.0 }).await?.def()?;
    Ok(SecretDefineXmlRet {
        secret: handle(&def),
    })
}

async fn get_xml_desc(call: &Call, a: SecretGetXmlDescArgs) -> Result<SecretGetXmlDescRet> {
    check_flags(a.flags, 0, "secretGetXMLDesc")?;
    let uuid = Uuid::from(a.secret.uuid);
    match op(call, SecretOp::Xml { uuid }).await? {
        SecretReply::Xml(xml) => Ok(SecretGetXmlDescRet { xml: xml.into() }),
        _ => Err(Error::Internal("unexpected secret driver reply".into())),
    }
}

async fn set_value(call: &Call, a: SecretSetValueArgs) -> Result<()> {
    check_flags(a.flags, 0, "secretSetValue")?;
    let uuid = Uuid::from(a.secret.uuid);
    op(
        call,
        SecretOp::SetValue {
            uuid,
            value: a.value.0,
        },
    )
    .await?;
    Ok(())
}

async fn get_value(call: &Call, a: SecretGetValueArgs) -> Result<SecretGetValueRet> {
    check_flags(a.flags, 0, "secretGetValue")?;
    let uuid = Uuid::from(a.secret.uuid);
    match op(call, SecretOp::GetValue { uuid }).await? {
        SecretReply::Value(v) => Ok(SecretGetValueRet { value: Opaque(v) }),
        _ => Err(Error::Internal("unexpected secret driver reply".into())),
    }
}

async fn undefine(call: &Call, a: SecretUndefineArgs) -> Result<()> {
    let uuid = Uuid::from(a.secret.uuid);
    op(call, SecretOp::Undefine { uuid }).await?;
    Ok(())
}
