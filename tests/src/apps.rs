//! The event-processing services of Knative's Sequence and Parallel samples, as sink scripts for
//! [`Sink::respond`](crate::Sink::respond): each answers a delivered event with a reply event, which
//! the dispatcher forwards to the subscriber's `replyUri`.
//!
//! Reply events keep the `ce-id` of the event they answer, so a test can follow one event through a
//! whole flow.

use crate::sink::{Recorded, Reply};
use crate::text::{json_string, json_string_field};

/// The `appender` sample: answers with a binary event whose JSON data is
/// `{"message": <the event's message> + suffix}`.
pub fn appender(suffix: &str) -> impl Fn(&Recorded, usize) -> Reply + Send + Sync + 'static {
    let suffix = suffix.to_string();
    move |req, _| {
        let body = String::from_utf8_lossy(&req.body);
        let message = json_string_field(&body, "message").unwrap_or_default() + &suffix;
        Reply::binary_event(200, req.id(), "/apps/appender", "samples.appender")
            .header("Content-Type", "application/json")
            .body(format!("{{\"message\":{}}}", json_string(&message)))
    }
}

/// The `filter` sample: answers with the event itself when `pass` holds, else an empty 200.
pub fn filter(
    pass: impl Fn(&Recorded) -> bool + Send + Sync + 'static,
) -> impl Fn(&Recorded, usize) -> Reply + Send + Sync + 'static {
    move |req, _| {
        if pass(req) {
            echo(req)
        } else {
            Reply::status(200)
        }
    }
}

/// The `transformer` sample: answers with a binary event whose data is `{"message": message}`.
pub fn transformer(message: &str) -> impl Fn(&Recorded, usize) -> Reply + Send + Sync + 'static {
    let data = format!("{{\"message\":{}}}", json_string(message));
    move |req, _| {
        Reply::binary_event(200, req.id(), "/apps/transformer", "samples.transformed")
            .header("Content-Type", "application/json")
            .body(data.clone())
    }
}

/// A 200 carrying the delivered binary event back: its `ce-*` headers, `Content-Type` and body.
pub fn echo(req: &Recorded) -> Reply {
    let mut reply = Reply::status(200);
    for (name, value) in &req.headers {
        let lower = name.to_ascii_lowercase();
        if lower.starts_with("ce-") || lower == "content-type" {
            reply = reply.header(name, value);
        }
    }
    reply.body(req.body.clone())
}

/// The JSON `message` of a delivered event's data, or "" without one.
pub fn message(req: &Recorded) -> String {
    json_string_field(&String::from_utf8_lossy(&req.body), "message").unwrap_or_default()
}
