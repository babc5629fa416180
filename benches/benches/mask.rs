//! Throughput of masking a 1 MiB response body against 100 secrets.
//!
//! The body is JSON-like text with a handful of secret occurrences (raw, in
//! base64 and JSON-escaped), as an HTTP response that echoes a credential
//! would be. Run with `cargo bench -p wrun-benches --bench mask`.

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_main};
use wrun_runtime::mask::Masker;

/// The size of the scanned body.
const BODY_LEN: usize = 1 << 20;

/// The number of secret values the masker holds.
const SECRETS: usize = 100;

/// The chunk size of the streaming benchmark, a typical body frame.
const CHUNK_LEN: usize = 16 << 10;

/// A small deterministic PRNG (xorshift64), so runs are comparable.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// Returns `SECRETS` token-like values of 32 to 48 bytes.
fn secrets(rng: &mut Rng) -> Vec<String> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    (0..SECRETS)
        .map(|_| {
            let len = 32 + rng.below(17);
            (0..len)
                .map(|_| char::from(ALPHABET[rng.below(ALPHABET.len())]))
                .collect()
        })
        .collect()
}

/// Returns a 1 MiB JSON-like body with six secret occurrences.
fn body(rng: &mut Rng, secrets: &[String]) -> Vec<u8> {
    let names = ["alpha", "beta", "gamma", "delta", "Zürich", "item-42"];
    let mut body = String::from("{\"items\": [\n");
    let mut id = 0_u64;
    while body.len() < BODY_LEN {
        id += 1;
        let name = names[rng.below(names.len())];
        let amount = rng.next() % 1_000_000;
        body.push_str(&format!(
            "  {{\"id\": {id}, \"name\": \"{name}\", \"amount\": {amount}.{:02}, \
             \"url\": \"https://api.example.com/v1/items/{id}?page={}&sort=desc\", \
             \"tags\": [\"red\", \"blue\"], \"active\": {}, \"note\": \"line\\nbreak \\\"quoted\\\"\"}},\n",
            amount % 100,
            id % 50,
            id.is_multiple_of(3),
        ));
    }
    body.truncate(BODY_LEN - 64);
    let mut body = body.into_bytes();
    // A few echoes of credentials, spread through the body.
    let echoes = [
        format!("\"token\": \"{}\"", secrets[3]),
        format!("Authorization: Basic {}", base64_user(&secrets[7])),
        format!("\"password\": \"{}\"", secrets[42]),
        format!("?api_key={}&x=1", secrets[99]),
        format!("\"echo\": \"{}\"", secrets[0]),
        format!("\"again\": \"{}\"", secrets[3]),
    ];
    for (i, echo) in echoes.iter().enumerate() {
        let at = (i + 1) * BODY_LEN / (echoes.len() + 2);
        body.splice(at..at, echo.bytes());
    }
    body.truncate(BODY_LEN);
    body
}

/// Encodes `user:<secret>` in standard base64, as HTTP basic auth does.
fn base64_user(secret: &str) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let input = format!("user:{secret}").into_bytes();
    let mut out = String::new();
    for group in input.chunks(3) {
        let bits = group
            .iter()
            .enumerate()
            .fold(0_u32, |acc, (i, &b)| acc | u32::from(b) << (16 - 8 * i));
        for i in 0..4 {
            if i <= group.len() {
                out.push(char::from(ALPHABET[(bits >> (18 - 6 * i) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Benchmarks `Masker::mask_bytes` and `StreamMasker` on the same body.
fn mask(c: &mut Criterion) {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let secrets = secrets(&mut rng);
    let body = body(&mut rng, &secrets);
    let masker = Masker::new(&secrets);
    let masked = masker.mask_bytes(&body);
    assert_eq!(masked.windows(3).filter(|w| w == b"***").count(), 6);

    let mut group = c.benchmark_group("mask");
    group.throughput(Throughput::Bytes(body.len() as u64));
    group.bench_function("mask_bytes_1mib_100_secrets", |b| {
        b.iter(|| masker.mask_bytes(black_box(&body)).len());
    });
    let mut out = Vec::with_capacity(2 * body.len());
    group.bench_function("stream_1mib_100_secrets_16k_chunks", |b| {
        b.iter(|| {
            out.clear();
            let mut stream = masker.stream();
            for chunk in black_box(&body).chunks(CHUNK_LEN) {
                stream.push(chunk, &mut out);
            }
            stream.finish(&mut out);
            out.len()
        });
    });
    group.finish();
}

/// Runs the benchmarks of this file; written out instead of
/// `criterion_group!`, whose generated function has no doc comment.
fn benches() {
    let mut c = Criterion::default().configure_from_args();
    mask(&mut c);
}

criterion_main!(benches);
