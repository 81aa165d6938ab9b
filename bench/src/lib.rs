//! Inputs shared by the criterion benchmarks in `benches/`: realistic requests and channel sets.
//! Run them with `cargo bench -p imc-bench` (one group: `cargo bench -p imc-bench --bench routing`).

use bytes::{Bytes, BytesMut};
use imc_dispatcher::channels::{BuildOptions, ChannelSet, FileLoad};
use imc_dispatcher::cloudevent::CeLimits;
use imc_dispatcher::http::{parse_request, RequestHead};
use imc_dispatcher::imc::{Imc, Source};

/// A binary-mode CloudEvent request as wrk's `ce.lua` sends it, with a body of `size` bytes.
pub fn binary_request(size: usize) -> Vec<u8> {
    let mut r = format!(
        "POST / HTTP/1.1\r\nHost: demo-kn-channel.default.svc.cluster.local\r\nce-specversion: 1.0\r\n\
ce-id: 1700000000-0-42\r\nce-type: dev.imc.bench.v1\r\nce-source: /imc/bench\r\n\
content-type: application/json\r\ntraceparent: 00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01\r\n\
Content-Length: {size}\r\n\r\n"
    )
    .into_bytes();
    r.extend(std::iter::repeat_n(b'x', size));
    r
}

/// A structured-mode CloudEvent whose JSON `data` is about `size` bytes.
pub fn structured_request(size: usize) -> Vec<u8> {
    let data = "x".repeat(size);
    let body = format!(
        "{{\"specversion\":\"1.0\",\"id\":\"s1\",\"source\":\"/imc/bench\",\"type\":\"dev.imc.bench.v1\",\
\"datacontenttype\":\"application/json\",\"ext1\":\"v\",\"data\":{{\"payload\":\"{data}\"}}}}"
    );
    let mut r = format!(
        "POST / HTTP/1.1\r\nHost: demo-kn-channel.default.svc.cluster.local\r\n\
Content-Type: application/cloudevents+json; charset=utf-8\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    r.extend_from_slice(body.as_bytes());
    r
}

/// A request split the way the ingress splits it: the parsed head, the frozen head bytes and the
/// body.
pub fn split(raw: &[u8]) -> (RequestHead, Bytes, Bytes) {
    let mut head = RequestHead::new();
    assert!(parse_request(raw, 64 << 10, 128, &mut head).expect("valid request"));
    let frozen = Bytes::copy_from_slice(&raw[..head.len]);
    let body = Bytes::copy_from_slice(&raw[head.len..]);
    (head, frozen, body)
}

/// `n` InMemoryChannels (`ch0` … in namespace `bench`), each with `subs` subscribers, as parsed
/// from manifests.
pub fn channel_manifests(n: usize, subs: usize) -> Vec<Imc> {
    let mut yaml = String::new();
    for i in 0..n {
        yaml.push_str(&format!(
            "---\nkind: InMemoryChannel\nmetadata: {{name: ch{i}, namespace: bench}}\nspec:\n  subscribers:\n"
        ));
        for s in 0..subs {
            yaml.push_str(&format!(
                "  - {{uid: u{i}-{s}, name: s{s}, subscriberUri: 'http://sink-{s}.bench.svc.cluster.local:8080/p'}}\n"
            ));
        }
        if subs == 0 {
            yaml.push_str("  []\n");
        }
    }
    imc_dispatcher::source::parse_manifests(&yaml, std::path::Path::new("bench.yaml"))
        .expect("bench manifests parse")
}

/// The options of a file-source build.
pub const OPTIONS: BuildOptions<'static> = BuildOptions {
    cluster_domain: "cluster.local",
    namespace_mode: None,
    source: Source::File,
};

/// A channel set of `n` channels (`ch0` … in namespace `bench`), each with `subs` subscribers.
pub fn channel_set(n: usize, subs: usize) -> ChannelSet {
    let files = [FileLoad {
        path: std::path::PathBuf::from("bench.yaml"),
        result: Ok(channel_manifests(n, subs)),
    }];
    ChannelSet::build(&ChannelSet::default(), &files, &OPTIONS).0
}

/// A scratch buffer like a worker's event-head buffer.
/// The event limits of the dispatcher's defaults (`--max-attributes`, `--max-header-bytes`).
pub const CE_LIMITS: CeLimits = CeLimits {
    max_attributes: 128,
    max_head: 64 << 10,
};

pub fn scratch() -> BytesMut {
    BytesMut::with_capacity(64 << 10)
}
