//! A subscriber for demos: prints every CloudEvent it receives the way Knative's `event_display`
//! does, and answers 200. Binary-mode events (what imc-dispatcher delivers) are read from the
//! `Ce-*` headers. One thread per connection, std only: a demo tool, not a benchmark sink.
//!
//!     cargo run -p imc-dispatcher --example event-display -- 127.0.0.1:8081

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};

fn main() -> std::io::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:8081".into());
    let listener = TcpListener::bind(&addr)?;
    eprintln!("event-display listening on {addr}");
    for stream in listener.incoming() {
        let stream = stream?;
        std::thread::spawn(move || {
            if let Err(e) = serve(stream) {
                eprintln!("event-display: {e}");
            }
        });
    }
    Ok(())
}

fn serve(stream: TcpStream) -> std::io::Result<()> {
    let mut out = stream.try_clone()?;
    let mut reader = BufReader::new(stream);
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            return Ok(());
        }
        let mut headers = Vec::new();
        loop {
            let mut h = String::new();
            reader.read_line(&mut h)?;
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                headers.push((k.trim().to_ascii_lowercase(), v.trim().to_owned()));
            }
        }
        let len = headers
            .iter()
            .find(|(k, _)| k == "content-length")
            .and_then(|(_, v)| v.parse().ok())
            .unwrap_or(0);
        let mut body = vec![0; len];
        reader.read_exact(&mut body)?;
        print!("{}", display(&headers, &body));
        std::io::stdout().flush()?;
        out.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")?;
    }
}

/// Context attributes in event_display's order; every other `ce-*` header is an extension.
const CORE: [&str; 7] = [
    "specversion",
    "type",
    "source",
    "subject",
    "id",
    "time",
    "dataschema",
];

fn display(headers: &[(String, String)], body: &[u8]) -> String {
    let get = |name: &str| {
        headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    let mut s = String::from("☁️  cloudevents.Event\nValidation: valid\nContext Attributes,\n");
    for attr in CORE {
        if let Some(v) = get(&format!("ce-{attr}")) {
            s += &format!("  {attr}: {v}\n");
        }
    }
    let content_type = get("content-type");
    if let Some(ct) = content_type {
        s += &format!("  datacontenttype: {ct}\n");
    }
    let ext: Vec<_> = headers
        .iter()
        .filter_map(|(k, v)| k.strip_prefix("ce-").map(|n| (n, v)))
        .filter(|(n, _)| !CORE.contains(n))
        .collect();
    if !ext.is_empty() {
        s += "Extensions,\n";
        for (n, v) in ext {
            s += &format!("  {n}: {v}\n");
        }
    }
    if !body.is_empty() {
        s += "Data,\n";
        let pretty = serde_json::from_slice::<serde_json::Value>(body)
            .ok()
            .and_then(|v| serde_json::to_string_pretty(&v).ok());
        let text = pretty.unwrap_or_else(|| String::from_utf8_lossy(body).into_owned());
        for line in text.lines() {
            s += &format!("  {line}\n");
        }
    }
    s
}
