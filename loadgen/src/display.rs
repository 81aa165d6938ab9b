//! `sink --display`: an event printed the way Knative's `event_display` prints it (the CloudEvents
//! Go SDK's `Event.String()`), from binary mode (`ce-*` headers, data in the body) or structured
//! mode (one `application/cloudevents+json` document).
//!
//! ```text
//! ☁️  cloudevents.Event
//! Validation: valid
//! Context Attributes,
//!   specversion: 1.0
//!   type: dev.knative.eventing.samples.heartbeat
//!   ...
//! Extensions,
//!   beats: true
//! Data,
//!   {
//!     "id": 11
//!   }
//! ```

use std::fmt::Write as _;

use serde_json::Value;

/// Context attributes in the Go SDK's order; `datacontenttype` follows them.
const CORE: [&str; 7] = [
    "specversion",
    "type",
    "source",
    "subject",
    "id",
    "time",
    "dataschema",
];
/// The attributes every event must carry (CloudEvents 1.0).
const REQUIRED: [&str; 4] = ["specversion", "id", "source", "type"];

/// An event as text, from its request headers (`name`, `value`; any case) and body. This is a
/// demo path: it allocates freely.
pub fn render(headers: &[(&str, &[u8])], body: &[u8]) -> String {
    let header = |name: &str| {
        headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
    };
    let content_type = header("content-type");
    let structured = content_type.as_deref().is_some_and(|ct| {
        ct.to_ascii_lowercase()
            .starts_with("application/cloudevents+json")
    });
    // (attribute, value), extensions and data, whichever the mode.
    let mut attrs: Vec<(String, String)> = Vec::new();
    let mut data: Option<Vec<u8>> = None;
    let mut problem: Option<String> = None;
    if structured {
        match serde_json::from_slice::<serde_json::Map<String, Value>>(body) {
            Ok(doc) => {
                for (k, v) in doc {
                    match (k.as_str(), v) {
                        ("data", v) => data = serde_json::to_vec(&v).ok(),
                        ("data_base64", Value::String(s)) => data = Some(s.into_bytes()),
                        (_, Value::String(s)) => attrs.push((k, s)),
                        (_, v) => attrs.push((k, v.to_string())),
                    }
                }
            }
            Err(e) => problem = Some(format!("structured event is not a JSON object: {e}")),
        }
    } else {
        for (k, v) in headers {
            if k.len() > 3 && k[..3].eq_ignore_ascii_case("ce-") {
                attrs.push((
                    k[3..].to_ascii_lowercase(),
                    String::from_utf8_lossy(v).into_owned(),
                ));
            }
        }
        if let Some(ct) = &content_type {
            attrs.push(("datacontenttype".into(), ct.clone()));
        }
        if !body.is_empty() {
            data = Some(body.to_vec());
        }
    }
    let get = |name: &str| attrs.iter().find(|(k, _)| k == name).map(|(_, v)| v);
    let missing: Vec<&str> = REQUIRED
        .into_iter()
        .filter(|a| get(a).is_none_or(|v| v.is_empty()))
        .collect();
    if problem.is_none() && !missing.is_empty() {
        problem = Some(format!("missing {}", missing.join(", ")));
    }

    let mut s = String::from("☁️  cloudevents.Event\n");
    match &problem {
        None => s.push_str("Validation: valid\n"),
        Some(p) => {
            let _ = writeln!(s, "Validation: invalid: {p}");
        }
    }
    s.push_str("Context Attributes,\n");
    for attr in CORE.iter().chain(&["datacontenttype"]) {
        if let Some(v) = get(attr) {
            let _ = writeln!(s, "  {attr}: {v}");
        }
    }
    // The Go SDK prints extensions sorted by name.
    let mut ext: Vec<&(String, String)> = attrs
        .iter()
        .filter(|(k, _)| !CORE.contains(&k.as_str()) && k != "datacontenttype")
        .collect();
    ext.sort();
    if !ext.is_empty() {
        s.push_str("Extensions,\n");
        for (k, v) in ext {
            let _ = writeln!(s, "  {k}: {v}");
        }
    }
    if let Some(d) = data {
        s.push_str("Data,\n");
        let pretty = serde_json::from_slice::<Value>(&d)
            .ok()
            .and_then(|v| serde_json::to_string_pretty(&v).ok());
        let text = pretty.unwrap_or_else(|| String::from_utf8_lossy(&d).into_owned());
        for line in text.lines() {
            let _ = writeln!(s, "  {line}");
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binary_event_prints_like_event_display() {
        let h: Vec<(&str, &[u8])> = vec![
            ("Host", b"x"),
            ("Ce-Specversion", b"1.0"),
            ("Ce-Type", b"dev.knative.eventing.samples.heartbeat"),
            (
                "Ce-Source",
                b"https://knative.dev/eventing-contrib/cmd/heartbeats/#default/heartbeats",
            ),
            ("Ce-Id", b"a6a36488-028f-4fd0-9c2c-31afc389ef73"),
            ("Ce-Time", b"2021-05-05T19:26:15.452991106Z"),
            ("Ce-The", b"42"),
            ("Ce-Beats", b"true"),
            ("Ce-Heart", b"yes"),
            ("Content-Type", b"application/json"),
        ];
        let out = render(&h, br#"{"id":11,"label":""}"#);
        assert_eq!(
            out,
            "☁️  cloudevents.Event\nValidation: valid\nContext Attributes,\n  specversion: 1.0\n  \
             type: dev.knative.eventing.samples.heartbeat\n  source: \
             https://knative.dev/eventing-contrib/cmd/heartbeats/#default/heartbeats\n  id: \
             a6a36488-028f-4fd0-9c2c-31afc389ef73\n  time: 2021-05-05T19:26:15.452991106Z\n  \
             datacontenttype: application/json\nExtensions,\n  beats: true\n  heart: yes\n  the: \
             42\nData,\n  {\n    \"id\": 11,\n    \"label\": \"\"\n  }\n"
        );
    }

    #[test]
    fn structured_event_prints_its_attributes_and_data() {
        let h: Vec<(&str, &[u8])> = vec![("content-type", b"application/cloudevents+json")];
        let body = br#"{"specversion":"1.0","type":"t","source":"s","id":"7","datacontenttype":"application/json","ext":"e","data":{"a":1}}"#;
        let out = render(&h, body);
        assert!(out.contains("Validation: valid\n"), "{out}");
        assert!(
            out.contains("  id: 7\n  datacontenttype: application/json\nExtensions,\n  ext: e\n"),
            "{out}"
        );
        assert!(out.ends_with("Data,\n  {\n    \"a\": 1\n  }\n"), "{out}");
    }

    #[test]
    fn invalid_events_say_what_is_missing() {
        let h: Vec<(&str, &[u8])> = vec![("ce-type", b"t"), ("ce-source", b"s")];
        assert!(render(&h, b"plain").contains("Validation: invalid: missing specversion, id\n"));
        let h: Vec<(&str, &[u8])> = vec![("content-type", b"application/cloudevents+json")];
        assert!(render(&h, b"{nope")
            .contains("Validation: invalid: structured event is not a JSON object"));
    }
}
