//! The request a sender writes: one template per connection, with the event id patched in place
//! before every write, so a request costs no allocation and no formatting.

use std::fmt;

/// Digits of the id field. Ids are decimal, zero-padded to this width (`000000000042`), so the
/// template never changes length; the sink parses them back into numbers.
pub const ID_WIDTH: usize = 12;
/// The first id that does not fit in [`ID_WIDTH`] digits.
pub const ID_LIMIT: u64 = 1_000_000_000_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Encoding {
    /// Attributes in `ce-*` headers, data as the body (what imc-dispatcher delivers).
    Binary,
    /// The whole event as one `application/cloudevents+json` document.
    Structured,
}

impl fmt::Display for Encoding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Encoding::Binary => "binary",
            Encoding::Structured => "structured",
        })
    }
}

/// What goes into every event.
#[derive(Debug, Clone)]
pub struct EventSpec {
    pub encoding: Encoding,
    pub path: String,
    pub host: String,
    pub ce_type: String,
    pub ce_source: String,
    /// Bytes of event data (the JSON value carried as `data`).
    pub size: usize,
    /// Extra request headers (`Name: value`).
    pub headers: Vec<(String, String)>,
}

/// A complete HTTP/1.1 request with an id slot.
#[derive(Debug, Clone)]
pub struct Template {
    pub bytes: Vec<u8>,
    /// Where the [`ID_WIDTH`] digits of the id start in `bytes`.
    pub id_at: usize,
}

/// Event data of exactly `size` bytes: a JSON object `{"payload":"xxx…"}` from 15 bytes up, a
/// JSON string below that (and nothing for 0 or 1 byte).
pub fn data(size: usize) -> Vec<u8> {
    const OPEN: &[u8] = b"{\"payload\":\"";
    const CLOSE: &[u8] = b"\"}";
    let mut d = Vec::with_capacity(size);
    if size > OPEN.len() + CLOSE.len() {
        d.extend_from_slice(OPEN);
        d.resize(size - CLOSE.len(), b'x');
        d.extend_from_slice(CLOSE);
    } else if size >= 2 {
        d.push(b'"');
        d.resize(size - 1, b'x');
        d.push(b'"');
    } else {
        d.resize(size, b' ');
    }
    d
}

fn json_str(s: &str) -> String {
    serde_json::to_string(s).expect("a string serializes")
}

impl Template {
    pub fn new(spec: &EventSpec) -> Template {
        let data = data(spec.size);
        let zeros = [b'0'; ID_WIDTH];
        let mut head = Vec::with_capacity(256 + spec.size);
        head.extend_from_slice(b"POST ");
        head.extend_from_slice(spec.path.as_bytes());
        head.extend_from_slice(b" HTTP/1.1\r\nHost: ");
        head.extend_from_slice(spec.host.as_bytes());
        head.extend_from_slice(b"\r\n");
        for (k, v) in &spec.headers {
            head.extend_from_slice(format!("{k}: {v}\r\n").as_bytes());
        }
        // Where the id sits: in the head (binary) or in the body (structured).
        let (head_id, body_id, body) = match spec.encoding {
            Encoding::Binary => {
                head.extend_from_slice(b"Ce-Specversion: 1.0\r\nCe-Type: ");
                head.extend_from_slice(spec.ce_type.as_bytes());
                head.extend_from_slice(b"\r\nCe-Source: ");
                head.extend_from_slice(spec.ce_source.as_bytes());
                head.extend_from_slice(b"\r\nCe-Id: ");
                let at = head.len();
                head.extend_from_slice(&zeros);
                head.extend_from_slice(b"\r\nContent-Type: application/json\r\n");
                (Some(at), None, data)
            }
            Encoding::Structured => {
                head.extend_from_slice(b"Content-Type: application/cloudevents+json\r\n");
                let mut body = format!(
                    "{{\"specversion\":\"1.0\",\"type\":{},\"source\":{},\"datacontenttype\":\"application/json\",\"id\":\"",
                    json_str(&spec.ce_type),
                    json_str(&spec.ce_source)
                )
                .into_bytes();
                let at = body.len();
                body.extend_from_slice(&zeros);
                body.push(b'"');
                if data.len() >= 2 {
                    body.extend_from_slice(b",\"data\":");
                    body.extend_from_slice(&data);
                }
                body.push(b'}');
                (None, Some(at), body)
            }
        };
        head.extend_from_slice(b"Content-Length: ");
        head.extend_from_slice(body.len().to_string().as_bytes());
        head.extend_from_slice(b"\r\n\r\n");
        let id_at = head_id.unwrap_or_else(|| head.len() + body_id.unwrap_or(0));
        head.extend_from_slice(&body);
        Template { bytes: head, id_at }
    }

    /// Writes `id` into the id slot of `buf` (a copy of `self.bytes`).
    #[inline]
    pub fn set_id(&self, buf: &mut [u8], id: u64) {
        write_id(&mut buf[self.id_at..self.id_at + ID_WIDTH], id);
    }
}

/// `id` as [`ID_WIDTH`] zero-padded decimal digits.
#[inline]
pub fn write_id(slot: &mut [u8], mut id: u64) {
    for b in slot.iter_mut().rev() {
        *b = b'0' + (id % 10) as u8;
        id /= 10;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(encoding: Encoding, size: usize) -> EventSpec {
        EventSpec {
            encoding,
            path: "/ns/ch".into(),
            host: "demo-kn-channel.default.svc.cluster.local".into(),
            ce_type: "dev.example".into(),
            ce_source: "/src".into(),
            size,
            headers: vec![("X-Test".into(), "1".into())],
        }
    }

    fn parse(bytes: &[u8]) -> (Vec<(String, String)>, Vec<u8>) {
        let mut h = [httparse::EMPTY_HEADER; 32];
        let mut r = httparse::Request::new(&mut h);
        let n = match r.parse(bytes).unwrap() {
            httparse::Status::Complete(n) => n,
            httparse::Status::Partial => panic!("partial"),
        };
        let headers = r
            .headers
            .iter()
            .map(|h| {
                (
                    h.name.to_ascii_lowercase(),
                    String::from_utf8(h.value.to_vec()).unwrap(),
                )
            })
            .collect();
        (headers, bytes[n..].to_vec())
    }

    #[test]
    fn data_has_the_exact_size_and_is_json() {
        for size in [2, 5, 14, 15, 16, 100, 1024, 16384] {
            let d = data(size);
            assert_eq!(d.len(), size);
            serde_json::from_slice::<serde_json::Value>(&d).unwrap();
        }
    }

    #[test]
    fn binary_template_carries_the_patched_id() {
        let t = Template::new(&spec(Encoding::Binary, 1024));
        let mut b = t.bytes.clone();
        t.set_id(&mut b, 42);
        let (headers, body) = parse(&b);
        let get = |n: &str| headers.iter().find(|(k, _)| k == n).unwrap().1.clone();
        assert_eq!(get("ce-id"), "000000000042");
        assert_eq!(get("host"), "demo-kn-channel.default.svc.cluster.local");
        assert_eq!(get("content-length"), "1024");
        assert_eq!(get("x-test"), "1");
        assert_eq!(body.len(), 1024);
    }

    #[test]
    fn structured_template_carries_the_patched_id() {
        let t = Template::new(&spec(Encoding::Structured, 100));
        let mut b = t.bytes.clone();
        t.set_id(&mut b, 999_999_999_999);
        let (headers, body) = parse(&b);
        let cl: usize = headers
            .iter()
            .find(|(k, _)| k == "content-length")
            .unwrap()
            .1
            .parse()
            .unwrap();
        assert_eq!(cl, body.len());
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["id"], "999999999999");
        assert_eq!(v["type"], "dev.example");
        assert_eq!(serde_json::to_vec(&v["data"]).unwrap().len(), 100);
    }
}
