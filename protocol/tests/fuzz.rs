//! Property-based fuzzing of everything that reads bytes from a peer: the
//! frame decoder and the XDR decoding of every procedure's arguments. The
//! properties: never panic, never grow a buffer past the message limit,
//! and decode what was encoded. Set FUZZ_CASES for longer runs.

use bytes::BytesMut;
use proptest::prelude::*;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio_util::codec::{Decoder, Encoder};

use qemud_protocol::remote::*;
use qemud_protocol::xdr::{from_bytes, to_bytes, Uuid16, XdrString, XdrVec};
use qemud_protocol::{Header, Packet, RemoteError, RpcCodec, MESSAGE_MAX};

fn cases() -> u32 {
    std::env::var("FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000)
}

/// Decodes `bytes` as T; must return, never panic.
fn try_decode<T: DeserializeOwned>(bytes: &[u8]) {
    let _ = from_bytes::<T>(bytes);
}

/// Every argument (and message) type a peer can send us.
fn decode_all(bytes: &[u8]) {
    try_decode::<ConnectOpenArgs>(bytes);
    try_decode::<ConnectSupportsFeatureArgs>(bytes);
    try_decode::<ConnectGetMaxVcpusArgs>(bytes);
    try_decode::<ConnectListAllDomainsArgs>(bytes);
    try_decode::<ConnectListDomainsArgs>(bytes);
    try_decode::<ConnectListDefinedDomainsArgs>(bytes);
    try_decode::<DomainCreateArgs>(bytes);
    try_decode::<DomainGetStateArgs>(bytes);
    try_decode::<DomainLookupByNameArgs>(bytes);
    try_decode::<DomainLookupByUuidArgs>(bytes);
    try_decode::<DomainLookupByIdArgs>(bytes);
    try_decode::<DomainDefineXmlArgs>(bytes);
    try_decode::<DomainDefineXmlFlagsArgs>(bytes);
    try_decode::<DomainCreateXmlArgs>(bytes);
    try_decode::<DomainSetAutostartArgs>(bytes);
    try_decode::<ConnectDomainEventRegisterAnyArgs>(bytes);
    try_decode::<ConnectDomainEventCallbackRegisterAnyArgs>(bytes);
    try_decode::<ConnectDomainEventCallbackDeregisterAnyArgs>(bytes);
    // What a client decodes from a server.
    try_decode::<RemoteError>(bytes);
    try_decode::<ConnectListAllDomainsRet>(bytes);
    try_decode::<DomainEventCallbackLifecycleMsg>(bytes);
    try_decode::<NodeGetInfoRet>(bytes);
    try_decode::<DomainGetInfoRet>(bytes);
    try_decode::<AuthListRet>(bytes);
}

fn roundtrip<T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug>(v: &T) {
    let b = to_bytes(v).expect("encode");
    assert_eq!(b.len() % 4, 0, "XDR output is word aligned");
    assert_eq!(&from_bytes::<T>(&b).expect("decode"), v);
}

fn domain() -> impl Strategy<Value = NonnullDomain> {
    (".{0,40}", any::<[u8; 16]>(), any::<i32>()).prop_map(|(name, uuid, id)| NonnullDomain {
        name: XdrString(name),
        uuid: Uuid16(uuid),
        id,
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases()))]

    #[test]
    fn arbitrary_bytes_never_panic_any_decoder(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        decode_all(&bytes);
    }

    #[test]
    fn word_structured_garbage_never_panics(words in proptest::collection::vec(
        prop_oneof![Just(0u32), Just(1), Just(2), Just(0xffff_ffff), Just(0x0040_0001), any::<u32>()], 0..64)) {
        let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_be_bytes()).collect();
        decode_all(&bytes);
    }

    #[test]
    fn frame_decoder_never_panics_or_overgrows(chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..64), 0..16)) {
        let mut codec = RpcCodec::default();
        let mut buf = BytesMut::new();
        'feed: for c in chunks {
            buf.extend_from_slice(&c);
            loop {
                match codec.decode(&mut buf) {
                    Ok(Some(_)) => continue,
                    Ok(None) => break,
                    Err(_) => break 'feed,
                }
            }
            prop_assert!(buf.capacity() <= MESSAGE_MAX + 4 + 1024);
        }
    }

    #[test]
    fn frames_roundtrip(program in any::<u32>(), procedure in any::<i32>(), serial in any::<u32>(),
                        kind in 0i32..7, status in 0i32..3, body in proptest::collection::vec(any::<u8>(), 0..256)) {
        let mut h = Header::call(program, 1, procedure, serial);
        h.kind = qemud_protocol::MessageType::from_i32(kind);
        h.status = qemud_protocol::MessageStatus::from_i32(status);
        let p = Packet::new(h, body);
        let mut buf = BytesMut::new();
        let mut codec = RpcCodec::default();
        codec.encode(p.clone(), &mut buf).unwrap();
        prop_assert_eq!(codec.decode(&mut buf).unwrap(), Some(p));
        prop_assert!(buf.is_empty());
    }

    #[test]
    fn arguments_roundtrip(dom in domain(), xml in ".{0,200}", flags in any::<u32>(), id in any::<i32>()) {
        roundtrip(&DomainGetStateArgs { dom: dom.clone(), flags });
        roundtrip(&DomainDefineXmlFlagsArgs { xml: XdrString(xml.clone()), flags });
        roundtrip(&DomainCreateXmlArgs { xml_desc: XdrString(xml), flags });
        roundtrip(&DomainLookupByIdArgs { id });
        roundtrip(&ConnectDomainEventCallbackRegisterAnyArgs { event_id: id, dom: Some(dom.clone()) });
        roundtrip(&ConnectListAllDomainsRet { domains: XdrVec(vec![dom.clone(); (flags % 5) as usize]), ret: flags });
        roundtrip(&DomainEventCallbackLifecycleMsg {
            callback_id: id,
            msg: DomainEventLifecycleMsg { dom, event: id, detail: flags as i32 },
        });
    }
}
