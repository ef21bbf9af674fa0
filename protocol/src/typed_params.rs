//! libvirt's typed parameters (`remote_typed_param`): building lists to
//! send, and reading and validating received ones with the rules and error
//! messages libvirt applies (`virTypedParamsDeserialize`,
//! `virTypedParamsValidate`, `virTypedParamsSerialize`).

use crate::error::{ErrorCode, ErrorDomain, RemoteError};
use crate::remote::{TypedParam, TypedParamValue};
use crate::xdr::XdrString;

/// `VIR_TYPED_PARAM_STRING_OKAY`: the caller understands string values.
/// Clients set it in the flags of "get parameters" calls; without it the
/// server leaves string parameters out of its answer.
pub const STRING_OKAY: u32 = 1 << 2;

/// `VIR_TYPED_PARAM_FIELD_LENGTH`: a field name is at most 79 bytes plus NUL.
pub const FIELD_LENGTH: usize = 80;

/// `virTypedParameterType`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ParamType {
    Int = 1,
    UInt = 2,
    LLong = 3,
    ULLong = 4,
    Double = 5,
    Boolean = 6,
    String = 7,
}

impl ParamType {
    /// libvirt's name of the type, as in its error messages.
    pub fn name(self) -> &'static str {
        match self {
            ParamType::Int => "int",
            ParamType::UInt => "uint",
            ParamType::LLong => "llong",
            ParamType::ULLong => "ullong",
            ParamType::Double => "double",
            ParamType::Boolean => "boolean",
            ParamType::String => "string",
        }
    }

    pub fn of(value: &TypedParamValue) -> ParamType {
        match value {
            TypedParamValue::I(_) => ParamType::Int,
            TypedParamValue::Ui(_) => ParamType::UInt,
            TypedParamValue::L(_) => ParamType::LLong,
            TypedParamValue::Ul(_) => ParamType::ULLong,
            TypedParamValue::D(_) => ParamType::Double,
            TypedParamValue::B(_) => ParamType::Boolean,
            TypedParamValue::S(_) => ParamType::String,
        }
    }
}

/// An error libvirt would report for a parameter list, with its code,
/// domain and whole message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ParamError {
    pub code: ErrorCode,
    pub domain: ErrorDomain,
    pub message: String,
}

impl ParamError {
    fn new(code: ErrorCode, message: String) -> ParamError {
        ParamError {
            code,
            domain: ErrorDomain::None,
            message,
        }
    }

    pub fn to_remote(&self) -> RemoteError {
        RemoteError::new(self.code, self.domain, self.message.clone())
    }
}

/// A list of typed parameters being built, in order.
#[derive(Debug, Clone, Default)]
pub struct ParamList(pub Vec<TypedParam>);

impl ParamList {
    pub fn new() -> ParamList {
        ParamList::default()
    }

    fn push(&mut self, field: impl Into<String>, value: TypedParamValue) -> &mut Self {
        self.0.push(TypedParam {
            field: XdrString(field.into()),
            value,
        });
        self
    }

    pub fn int(&mut self, field: impl Into<String>, v: i32) -> &mut Self {
        self.push(field, TypedParamValue::I(v))
    }
    pub fn uint(&mut self, field: impl Into<String>, v: u32) -> &mut Self {
        self.push(field, TypedParamValue::Ui(v))
    }
    pub fn llong(&mut self, field: impl Into<String>, v: i64) -> &mut Self {
        self.push(field, TypedParamValue::L(v))
    }
    pub fn ullong(&mut self, field: impl Into<String>, v: u64) -> &mut Self {
        self.push(field, TypedParamValue::Ul(v))
    }
    pub fn double(&mut self, field: impl Into<String>, v: f64) -> &mut Self {
        self.push(field, TypedParamValue::D(v))
    }
    pub fn boolean(&mut self, field: impl Into<String>, v: bool) -> &mut Self {
        self.push(field, TypedParamValue::B(v as i32))
    }
    pub fn string(&mut self, field: impl Into<String>, v: impl Into<String>) -> &mut Self {
        self.push(field, TypedParamValue::S(XdrString(v.into())))
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The list as the server sends it (`virTypedParamsSerialize`): at most
    /// `limit` entries, and string values only to callers that set
    /// [`STRING_OKAY`].
    pub fn serialize(self, limit: usize, flags: u32) -> Result<Vec<TypedParam>, ParamError> {
        if self.0.len() > limit {
            return Err(ParamError::new(
                ErrorCode::Rpc,
                format!("too many parameters '{}' for limit '{limit}'", self.0.len()),
            ));
        }
        let strings = flags & STRING_OKAY != 0;
        Ok(self
            .0
            .into_iter()
            .filter(|p| strings || !matches!(p.value, TypedParamValue::S(_)))
            .collect())
    }
}

/// Checks a received list the way libvirt's server does before its driver
/// sees it (`virTypedParamsDeserialize`): no more than `limit` entries and
/// field names that fit libvirt's fixed-size field.
pub fn check_received(params: &[TypedParam], limit: usize) -> Result<(), ParamError> {
    if params.len() > limit {
        return Err(ParamError::new(
            ErrorCode::Rpc,
            format!("too many parameters '{}' for limit '{limit}'", params.len()),
        ));
    }
    for p in params {
        if p.field.0.len() >= FIELD_LENGTH {
            return Err(ParamError::new(
                ErrorCode::InternalError,
                format!(
                    "internal error: parameter {} too big for destination",
                    p.field.0
                ),
            ));
        }
    }
    Ok(())
}

/// One parameter a procedure accepts.
#[derive(Clone, Copy, Debug)]
pub struct Accepted {
    pub name: &'static str,
    pub kind: ParamType,
    /// The parameter may appear more than once (`VIR_TYPED_PARAM_MULTIPLE`).
    pub multiple: bool,
}

impl Accepted {
    pub const fn one(name: &'static str, kind: ParamType) -> Accepted {
        Accepted {
            name,
            kind,
            multiple: false,
        }
    }
}

/// `virTypedParamsValidate`: every parameter is known, has its type and
/// appears once unless it may repeat. Like libvirt, names are checked in
/// sorted order, so the first offending name alphabetically is reported.
pub fn validate(params: &[TypedParam], accepted: &[Accepted]) -> Result<(), ParamError> {
    let mut sorted: Vec<&TypedParam> = params.iter().collect();
    sorted.sort_by(|a, b| a.field.0.cmp(&b.field.0));
    let mut last: Option<&str> = None;
    for p in sorted {
        let name = p.field.0.as_str();
        let Some(key) = accepted.iter().find(|a| a.name == name) else {
            return Err(ParamError::new(
                ErrorCode::ArgumentUnsupported,
                format!("argument unsupported: parameter '{name}' not supported"),
            ));
        };
        if last == Some(name) && !key.multiple {
            return Err(ParamError::new(
                ErrorCode::InvalidArg,
                format!("invalid argument: parameter '{name}' occurs multiple times"),
            ));
        }
        let got = ParamType::of(&p.value);
        if got != key.kind {
            return Err(ParamError::new(
                ErrorCode::InvalidArg,
                format!(
                    "invalid argument: invalid type '{}' for parameter '{name}', expected '{}'",
                    got.name(),
                    key.kind.name()
                ),
            ));
        }
        last = Some(name);
    }
    Ok(())
}

/// Reading values out of a received or returned list.
pub trait ParamLookup {
    fn value(&self, name: &str) -> Option<&TypedParamValue>;

    /// Any integer value, widened (negative ones clamp to 0).
    fn get_u64(&self, name: &str) -> Option<u64> {
        match self.value(name)? {
            TypedParamValue::I(v) => Some((*v).max(0) as u64),
            TypedParamValue::Ui(v) => Some(*v as u64),
            TypedParamValue::L(v) => Some((*v).max(0) as u64),
            TypedParamValue::Ul(v) => Some(*v),
            TypedParamValue::B(v) => Some(*v as u64),
            _ => None,
        }
    }

    fn get_i64(&self, name: &str) -> Option<i64> {
        match self.value(name)? {
            TypedParamValue::I(v) => Some(*v as i64),
            TypedParamValue::Ui(v) => Some(*v as i64),
            TypedParamValue::L(v) => Some(*v),
            TypedParamValue::Ul(v) => i64::try_from(*v).ok(),
            TypedParamValue::B(v) => Some(*v as i64),
            _ => None,
        }
    }

    fn get_str(&self, name: &str) -> Option<&str> {
        match self.value(name)? {
            TypedParamValue::S(s) => Some(s.0.as_str()),
            _ => None,
        }
    }
}

impl ParamLookup for [TypedParam] {
    fn value(&self, name: &str) -> Option<&TypedParamValue> {
        self.iter().find(|p| p.field.0 == name).map(|p| &p.value)
    }
}

impl ParamLookup for Vec<TypedParam> {
    fn value(&self, name: &str) -> Option<&TypedParamValue> {
        self.as_slice().value(name)
    }
}

/// A value as text, the way virsh prints it.
pub fn display(value: &TypedParamValue) -> String {
    match value {
        TypedParamValue::I(v) => v.to_string(),
        TypedParamValue::Ui(v) => v.to_string(),
        TypedParamValue::L(v) => v.to_string(),
        TypedParamValue::Ul(v) => v.to_string(),
        TypedParamValue::D(v) => format!("{v:.6}"),
        TypedParamValue::B(v) => if *v != 0 { "yes" } else { "no" }.to_string(),
        TypedParamValue::S(s) => s.0.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list() -> Vec<TypedParam> {
        let mut l = ParamList::new();
        l.ullong("hard_limit", 1024).string("name", "x");
        l.0
    }

    const MEMORY: &[Accepted] = &[
        Accepted::one("hard_limit", ParamType::ULLong),
        Accepted::one("soft_limit", ParamType::ULLong),
        Accepted::one("name", ParamType::String),
    ];

    #[test]
    fn valid_list_passes_and_reads_back() {
        let l = list();
        validate(&l, MEMORY).unwrap();
        assert_eq!(l.get_u64("hard_limit"), Some(1024));
        assert_eq!(l.get_str("name"), Some("x"));
        assert_eq!(l.get_u64("soft_limit"), None);
    }

    #[test]
    fn unknown_wrong_type_and_duplicates_are_libvirts_errors() {
        let mut l = ParamList::new();
        l.ullong("bogus", 1);
        let e = validate(&l.0, MEMORY).unwrap_err();
        assert_eq!(e.code, ErrorCode::ArgumentUnsupported);
        assert_eq!(
            e.message,
            "argument unsupported: parameter 'bogus' not supported"
        );

        let mut l = ParamList::new();
        l.int("hard_limit", 1);
        let e = validate(&l.0, MEMORY).unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidArg);
        assert_eq!(
            e.message,
            "invalid argument: invalid type 'int' for parameter 'hard_limit', expected 'ullong'"
        );

        let mut l = ParamList::new();
        l.ullong("soft_limit", 1).ullong("soft_limit", 2);
        let e = validate(&l.0, MEMORY).unwrap_err();
        assert_eq!(
            e.message,
            "invalid argument: parameter 'soft_limit' occurs multiple times"
        );
    }

    #[test]
    fn limits_on_count_and_field_length() {
        let mut l = ParamList::new();
        for i in 0..17 {
            l.int(format!("p{i}"), i);
        }
        let e = check_received(&l.0, 16).unwrap_err();
        assert_eq!(e.code, ErrorCode::Rpc);
        assert_eq!(e.message, "too many parameters '17' for limit '16'");
        let mut l = ParamList::new();
        l.int("x".repeat(80), 1);
        assert_eq!(
            check_received(&l.0, 16).unwrap_err().code,
            ErrorCode::InternalError
        );
        let mut l = ParamList::new();
        l.int("x".repeat(79), 1);
        check_received(&l.0, 16).unwrap();
    }

    #[test]
    fn strings_only_to_callers_that_understand_them() {
        assert_eq!(ParamList(list()).serialize(16, 0).unwrap().len(), 1);
        assert_eq!(
            ParamList(list()).serialize(16, STRING_OKAY).unwrap().len(),
            2
        );
        assert!(ParamList(list()).serialize(1, STRING_OKAY).is_err());
    }
}
