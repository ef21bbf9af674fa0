//! Encode/decode cost of typical messages: a small call, a domain list
//! reply and an XML-carrying reply.

use bytes::BytesMut;
use criterion::{criterion_group, criterion_main, Criterion};
use qemud_protocol::remote::*;
use qemud_protocol::xdr::{from_bytes, to_bytes, Uuid16, XdrString, XdrVec};
use qemud_protocol::{program, Header, Packet, RpcCodec};
use tokio_util::codec::{Decoder, Encoder};

fn domain(i: usize) -> NonnullDomain {
    NonnullDomain {
        name: XdrString(format!("guest-{i}")),
        uuid: Uuid16([i as u8; 16]),
        id: i as i32,
    }
}

fn bench(c: &mut Criterion) {
    let lookup = DomainLookupByNameArgs {
        name: "guest-1".into(),
    };
    c.bench_function("encode lookup_by_name call", |b| {
        b.iter(|| {
            let body = to_bytes(&lookup).unwrap();
            let mut out = BytesMut::new();
            RpcCodec::default()
                .encode(
                    Packet::new(
                        Header::call(program::REMOTE, 1, procs::DOMAIN_LOOKUP_BY_NAME, 1),
                        body,
                    ),
                    &mut out,
                )
                .unwrap();
            out
        })
    });

    let list = ConnectListAllDomainsRet {
        domains: XdrVec((0..100).map(domain).collect()),
        ret: 100,
    };
    let list_bytes = to_bytes(&list).unwrap();
    c.bench_function("encode list_all_domains reply (100)", |b| {
        b.iter(|| to_bytes(&list).unwrap())
    });
    c.bench_function("decode list_all_domains reply (100)", |b| {
        b.iter(|| from_bytes::<ConnectListAllDomainsRet>(&list_bytes).unwrap())
    });

    let xml = DomainGetXmlDescRet {
        xml: XdrString("<domain type='kvm'>".to_string() + &"<x/>".repeat(1000) + "</domain>"),
    };
    let xml_bytes = to_bytes(&xml).unwrap();
    c.bench_function("decode 4 KiB xml reply", |b| {
        b.iter(|| from_bytes::<DomainGetXmlDescRet>(&xml_bytes).unwrap())
    });

    let mut framed = BytesMut::new();
    for s in 0..64 {
        RpcCodec::default()
            .encode(
                Packet::new(Header::call(program::REMOTE, 1, 157, s), Vec::new()),
                &mut framed,
            )
            .unwrap();
    }
    c.bench_function("frame-decode 64 calls", |b| {
        b.iter(|| {
            let mut buf = framed.clone();
            let mut codec = RpcCodec::default();
            while codec.decode(&mut buf).unwrap().is_some() {}
        })
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
