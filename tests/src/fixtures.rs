//! The fixtures of contract §7: channel C1, event E1, and the "delivered as binary E1" check.

use crate::client::Request;
use crate::manifest::Channel;
use crate::sink::Recorded;

/// C1's host routing key.
pub const C1_HOST: &str = "ch1-kn-channel.default.svc.cluster.local";

/// Channel C1 (`default/ch1`), Ready, with no subscribers yet.
pub fn c1() -> Channel {
    Channel::new("default", "ch1")
}

/// Event E1 in binary mode, `POST /` to C1's host.
pub fn e1() -> Request {
    Request::post("/")
        .host(C1_HOST)
        .header("ce-specversion", "1.0")
        .header("ce-id", "e1")
        .header("ce-source", "/src")
        .header("ce-type", "t.e1")
        .header("content-type", "application/json")
        .body(r#"{"k":1}"#)
}

/// A structured-mode request to C1's host with this JSON body.
pub fn structured(body: &str) -> Request {
    Request::post("/")
        .host(C1_HOST)
        .header(
            "content-type",
            "application/cloudevents+json; charset=utf-8",
        )
        .body(body)
}

/// Panics unless `r` is E1 delivered in binary mode, as contract §7 defines it.
#[track_caller]
pub fn assert_binary_e1(r: &Recorded) {
    assert_binary_e1_with_id(r, "e1");
}

/// [`assert_binary_e1`] for an E1 sent with another `ce-id`.
#[track_caller]
pub fn assert_binary_e1_with_id(r: &Recorded, id: &str) {
    assert_e1_event(r, id);
    r.assert_header("prefer", "reply");
    r.assert_header("kn-namespace", "default");
    r.assert_no_header("authorization");
}

/// Panics unless `r` is a POST carrying E1 (with this `ce-id`) in binary mode: attributes,
/// `Content-Type` and body. Says nothing about the other headers (a dead-letter sink gets E1 this
/// way, without `Prefer`).
#[track_caller]
pub fn assert_e1_event(r: &Recorded, id: &str) {
    assert_eq!(r.method, "POST", "method of {r:?}");
    r.assert_header("ce-specversion", "1.0");
    r.assert_header("ce-id", id);
    r.assert_header("ce-source", "/src");
    r.assert_header("ce-type", "t.e1");
    r.assert_header("content-type", "application/json");
    assert_eq!(r.body, br#"{"k":1}"#, "body of {r:?}");
}
