//! XDR encoding through serde-xdr, with the wrappers that make it match
//! libvirt byte for byte and keep hostile lengths from allocating.
//!
//! serde-xdr reads a length word and then allocates that many bytes for
//! strings, opaque data and sequences, and refuses non-ASCII strings when
//! encoding. So the protocol types never use `String`/`Vec` directly: they use
//! [`XdrString`], [`Opaque`] and [`XdrVec`], which decode through a tuple of
//! 32-bit words, check the length against their bound first, and only then
//! fill a buffer. Fixed opaque (UUIDs) uses serde-xdr's own fixed-length
//! module, which packs 16 raw bytes into four words with no length prefix.

use std::fmt;
use std::marker::PhantomData;

use serde::de::{self, DeserializeOwned, SeqAccess, Visitor};
use serde::ser::SerializeTuple;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::STRING_MAX;

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct XdrError(pub String);

/// Encodes a value as XDR.
pub fn to_bytes<T: Serialize>(value: &T) -> Result<Vec<u8>, XdrError> {
    serde_xdr::to_bytes(value).map_err(|e| XdrError(e.to_string()))
}

/// Decodes a value from XDR. Trailing bytes are ignored, as libvirt does.
pub fn from_bytes<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, XdrError> {
    serde_xdr::from_bytes(bytes).map_err(|e| XdrError(e.to_string()))
}

/// The widest tuple we ask serde-xdr for: one length word plus every data
/// word of the largest message. The real bound is checked on the length.
const TUPLE_WORDS: usize = 1 + crate::MESSAGE_MAX / 4;

fn next<'de, A: SeqAccess<'de>, T: Deserialize<'de>>(
    seq: &mut A,
    what: &str,
) -> Result<T, A::Error> {
    seq.next_element()?
        .ok_or_else(|| de::Error::custom(format!("truncated {what}")))
}

/// Reads a length-prefixed, word-padded byte string bounded by `max`.
fn read_padded_bytes<'de, A: SeqAccess<'de>>(
    seq: &mut A,
    max: usize,
    what: &str,
) -> Result<Vec<u8>, A::Error> {
    let len = next::<A, u32>(seq, what)? as usize;
    if len > max {
        return Err(de::Error::custom(format!(
            "{what} length {len} exceeds the maximum of {max}"
        )));
    }
    let mut bytes = Vec::with_capacity(len.min(64 * 1024));
    for _ in 0..len.div_ceil(4) {
        let word: u32 = next(seq, what)?;
        bytes.extend_from_slice(&word.to_be_bytes());
    }
    bytes.truncate(len);
    Ok(bytes)
}

struct PaddedBytesVisitor {
    max: usize,
    what: &'static str,
}

impl<'de> Visitor<'de> for PaddedBytesVisitor {
    type Value = Vec<u8>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "XDR {} of at most {} bytes", self.what, self.max)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<u8>, A::Error> {
        read_padded_bytes(&mut seq, self.max, self.what)
    }
}

fn deserialize_padded<'de, D: Deserializer<'de>>(
    d: D,
    max: usize,
    what: &'static str,
) -> Result<Vec<u8>, D::Error> {
    d.deserialize_tuple(TUPLE_WORDS, PaddedBytesVisitor { max, what })
}

/// `remote_nonnull_string`: a string of at most 4 MiB, any UTF-8.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct XdrString(pub String);

/// `remote_string`: an optional string.
pub type OptString = Option<XdrString>;

impl XdrString {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl From<&str> for XdrString {
    fn from(s: &str) -> Self {
        XdrString(s.to_owned())
    }
}

impl From<String> for XdrString {
    fn from(s: String) -> Self {
        XdrString(s)
    }
}

impl fmt::Display for XdrString {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Serialize for XdrString {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        // Same wire form as an XDR string, without serde-xdr's ASCII check.
        s.serialize_bytes(self.0.as_bytes())
    }
}

impl<'de> Deserialize<'de> for XdrString {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let bytes = deserialize_padded(d, STRING_MAX, "string")?;
        String::from_utf8(bytes)
            .map(XdrString)
            .map_err(|_| de::Error::custom("string is not valid UTF-8"))
    }
}

/// Variable-length opaque data bounded by `MAX` bytes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Opaque<const MAX: usize>(pub Vec<u8>);

impl<const MAX: usize> Serialize for Opaque<MAX> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(&self.0)
    }
}

impl<'de, const MAX: usize> Deserialize<'de> for Opaque<MAX> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        deserialize_padded(d, MAX, "opaque").map(Opaque)
    }
}

/// A variable-length array `T<MAX>`: a count word, then the elements.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct XdrVec<T, const MAX: usize>(pub Vec<T>);

impl<T, const MAX: usize> Default for XdrVec<T, MAX> {
    fn default() -> Self {
        XdrVec(Vec::new())
    }
}

impl<T, const MAX: usize> From<Vec<T>> for XdrVec<T, MAX> {
    fn from(v: Vec<T>) -> Self {
        XdrVec(v)
    }
}

impl<T: Serialize, const MAX: usize> Serialize for XdrVec<T, MAX> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let count =
            u32::try_from(self.0.len()).map_err(|_| serde::ser::Error::custom("array too long"))?;
        let mut t = s.serialize_tuple(1 + self.0.len())?;
        t.serialize_element(&count)?;
        for item in &self.0 {
            t.serialize_element(item)?;
        }
        t.end()
    }
}

struct XdrVecVisitor<T, const MAX: usize>(PhantomData<T>);

impl<'de, T: Deserialize<'de>, const MAX: usize> Visitor<'de> for XdrVecVisitor<T, MAX> {
    type Value = XdrVec<T, MAX>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "XDR array of at most {MAX} elements")
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let count = next::<A, u32>(&mut seq, "array")? as usize;
        if count > MAX {
            return Err(de::Error::custom(format!(
                "array length {count} exceeds the maximum of {MAX}"
            )));
        }
        let mut items = Vec::with_capacity(count.min(1024));
        for _ in 0..count {
            items.push(next(&mut seq, "array")?);
        }
        Ok(XdrVec(items))
    }
}

impl<'de, T: Deserialize<'de>, const MAX: usize> Deserialize<'de> for XdrVec<T, MAX> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_tuple(TUPLE_WORDS, XdrVecVisitor::<T, MAX>(PhantomData))
    }
}

/// `remote_uuid`: 16 raw bytes, no length word.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Uuid16(#[serde(with = "serde_xdr::opaque_data::fixed_length")] pub [u8; 16]);

impl From<uuid::Uuid> for Uuid16 {
    fn from(u: uuid::Uuid) -> Self {
        Uuid16(*u.as_bytes())
    }
}

impl From<Uuid16> for uuid::Uuid {
    fn from(u: Uuid16) -> Self {
        uuid::Uuid::from_bytes(u.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn string_is_length_bytes_and_padding() {
        let b = to_bytes(&XdrString::from("abcde")).unwrap();
        assert_eq!(b, vec![0, 0, 0, 5, b'a', b'b', b'c', b'd', b'e', 0, 0, 0]);
        let back: XdrString = from_bytes(&b).unwrap();
        assert_eq!(back.as_str(), "abcde");
    }

    #[test]
    fn empty_and_aligned_strings() {
        assert_eq!(to_bytes(&XdrString::from("")).unwrap(), vec![0, 0, 0, 0]);
        assert_eq!(
            to_bytes(&XdrString::from("abcd")).unwrap(),
            vec![0, 0, 0, 4, b'a', b'b', b'c', b'd']
        );
    }

    #[test]
    fn non_ascii_strings_are_utf8_bytes() {
        let b = to_bytes(&XdrString::from("é")).unwrap();
        assert_eq!(b, vec![0, 0, 0, 2, 0xc3, 0xa9, 0, 0]);
        assert_eq!(from_bytes::<XdrString>(&b).unwrap().as_str(), "é");
    }

    #[test]
    fn huge_string_length_is_rejected_before_allocation() {
        let b = [0xff, 0xff, 0xff, 0xff, 1, 2, 3, 4];
        let err = from_bytes::<XdrString>(&b).unwrap_err();
        assert!(err.0.contains("exceeds"), "{}", err.0);
        // Just over the limit, too.
        let b = ((STRING_MAX + 1) as u32).to_be_bytes();
        assert!(from_bytes::<XdrString>(&b).is_err());
    }

    #[test]
    fn string_longer_than_input_fails_cleanly() {
        let b = [0, 0, 0, 100, b'a', b'b', 0, 0];
        assert!(from_bytes::<XdrString>(&b).is_err());
    }

    #[test]
    fn optional_string_has_boolean_discriminant() {
        let none: OptString = None;
        assert_eq!(to_bytes(&none).unwrap(), vec![0, 0, 0, 0]);
        let some: OptString = Some("x".into());
        let b = to_bytes(&some).unwrap();
        assert_eq!(b, vec![0, 0, 0, 1, 0, 0, 0, 1, b'x', 0, 0, 0]);
        assert_eq!(from_bytes::<OptString>(&b).unwrap(), some);
        assert!(from_bytes::<OptString>(&[0, 0, 0, 2]).is_err());
    }

    #[test]
    fn uuid_is_sixteen_raw_bytes() {
        let raw: [u8; 16] = core::array::from_fn(|i| i as u8 + 1);
        let b = to_bytes(&Uuid16(raw)).unwrap();
        assert_eq!(b, raw.to_vec());
        assert_eq!(from_bytes::<Uuid16>(&b).unwrap(), Uuid16(raw));
    }

    #[test]
    fn variable_opaque_is_padded() {
        let o: Opaque<8> = Opaque(vec![9, 8, 7]);
        let b = to_bytes(&o).unwrap();
        assert_eq!(b, vec![0, 0, 0, 3, 9, 8, 7, 0]);
        assert_eq!(from_bytes::<Opaque<8>>(&b).unwrap(), o);
        assert!(from_bytes::<Opaque<2>>(&b).is_err());
    }

    #[test]
    fn array_has_count_then_elements() {
        let v: XdrVec<i32, 4> = XdrVec(vec![1, -1]);
        let b = to_bytes(&v).unwrap();
        assert_eq!(b, vec![0, 0, 0, 2, 0, 0, 0, 1, 0xff, 0xff, 0xff, 0xff]);
        assert_eq!(from_bytes::<XdrVec<i32, 4>>(&b).unwrap(), v);
        let too_many = [0, 0, 0, 5];
        assert!(from_bytes::<XdrVec<i32, 4>>(&too_many).is_err());
        let huge = [0xff, 0xff, 0xff, 0xff];
        assert!(from_bytes::<XdrVec<i32, 16384>>(&huge).is_err());
    }

    #[test]
    fn hyper_and_char_widths() {
        assert_eq!(to_bytes(&1u64).unwrap(), vec![0, 0, 0, 0, 0, 0, 0, 1]);
        // XDR has no 8-bit type: unsigned char and char take a whole word.
        assert_eq!(to_bytes(&5u8).unwrap(), vec![0, 0, 0, 5]);
        assert_eq!(to_bytes(&-1i8).unwrap(), vec![0xff, 0xff, 0xff, 0xff]);
        assert_eq!(to_bytes(&3u16).unwrap(), vec![0, 0, 0, 3]);
    }
}
