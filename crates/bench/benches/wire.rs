//! The pure parsers the proxy runs on every connection (`intransit-wire`):
//! PostgreSQL initial messages and backend framing, the MySQL greeting and
//! HandshakeResponse41. Inputs are built once, outside the timed loop.

// A benchmark fails loudly on bad input it built itself.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use intransit_wire::mysql::{
    HandshakeResponse41, HandshakeV10, CLIENT_PLUGIN_AUTH, CLIENT_PROTOCOL_41,
    CLIENT_SECURE_CONNECTION, CLIENT_SSL, UTF8MB4_GENERAL_CI,
};
use intransit_wire::pg::{self, StartupMessage};

/// A MariaDB 10.11 greeting as sent on the wire (payload only).
fn mariadb_greeting() -> Vec<u8> {
    let mut g = vec![10];
    g.extend_from_slice(b"5.5.5-10.11.19-MariaDB-0+deb12u1\0");
    g.extend_from_slice(&42u32.to_le_bytes());
    g.extend_from_slice(b"abcdefgh\0");
    let caps: u32 = 0xf7fe_ffff;
    g.extend_from_slice(&(caps as u16).to_le_bytes());
    g.push(45);
    g.extend_from_slice(&2u16.to_le_bytes());
    g.extend_from_slice(&((caps >> 16) as u16).to_le_bytes());
    g.push(21);
    g.extend_from_slice(&[0; 6]);
    g.extend_from_slice(&0x1du32.to_le_bytes());
    g.extend_from_slice(b"ijklmnopqrst\0");
    g.extend_from_slice(b"mysql_native_password\0");
    g
}

fn parsers(c: &mut Criterion) {
    let startup = StartupMessage {
        protocol: pg::ProtocolVersion::V3_0,
        params: vec![
            ("user".into(), "trainer".into()),
            ("database".into(), "features".into()),
            ("application_name".into(), "psql".into()),
            ("client_encoding".into(), "UTF8".into()),
        ],
    }
    .encode()
    .unwrap();
    assert!(pg::parse_initial_message(&startup).unwrap().is_some());
    c.bench_function("pg/parse_initial_message(startup)", |b| {
        b.iter(|| pg::parse_initial_message(black_box(&startup)))
    });

    // 100 DataRow frames of one 64-byte column: what the copy loop would
    // walk if it framed the stream.
    let mut rows = Vec::new();
    for _ in 0..100 {
        rows.push(b'D');
        rows.extend_from_slice(&(4u32 + 2 + 4 + 64).to_be_bytes());
        rows.extend_from_slice(&1u16.to_be_bytes());
        rows.extend_from_slice(&64u32.to_be_bytes());
        rows.extend_from_slice(&[b'x'; 64]);
    }
    let mut group = c.benchmark_group("pg/parse_backend_frame");
    group.throughput(Throughput::Bytes(rows.len() as u64));
    group.bench_function("100 DataRows", |b| {
        b.iter(|| {
            let mut at = 0;
            while let Some((_, used)) = pg::parse_backend_frame(black_box(&rows[at..])).unwrap() {
                at += used;
            }
            at
        })
    });
    group.finish();

    let greeting = mariadb_greeting();
    let parsed = HandshakeV10::parse(&greeting).unwrap();
    assert_eq!(parsed.scramble().len(), 20);
    c.bench_function("mysql/HandshakeV10::parse", |b| {
        b.iter(|| HandshakeV10::parse(black_box(&greeting)))
    });

    let response = HandshakeResponse41 {
        capabilities: CLIENT_PROTOCOL_41
            | CLIENT_SSL
            | CLIENT_SECURE_CONNECTION
            | CLIENT_PLUGIN_AUTH,
        max_packet_size: 1 << 24,
        collation: UTF8MB4_GENERAL_CI,
        extended_capabilities: 0,
        user: b"trainer".to_vec(),
        auth_response: vec![7; 20],
        database: None,
        auth_plugin_name: Some(b"mysql_native_password".to_vec()),
        connect_attrs: None,
        zstd_compression_level: None,
    }
    .encode()
    .unwrap();
    // The response the proxy reads inside TLS (CLIENT_SSL set).
    assert_eq!(
        HandshakeResponse41::parse(&response).unwrap().user,
        b"trainer"
    );
    c.bench_function("mysql/HandshakeResponse41::parse", |b| {
        b.iter(|| HandshakeResponse41::parse(black_box(&response)))
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20).warm_up_time(std::time::Duration::from_millis(300)).measurement_time(std::time::Duration::from_secs(1));
    targets = parsers
}
criterion_main!(benches);
