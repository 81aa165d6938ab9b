//! The `--channels` source: file shapes, live reloads, bad edits, readiness and deletion
//! (contract §4.1, §4.3, §7 H 71-72 and 79, the "Channel sources" paragraph, D8, D14).

use std::thread;
use std::time::{Duration, Instant};

use imc_e2e::*;

/// A rejected file is reported at warning or error level, naming the file.
fn reports(line: &str, file: &str) -> bool {
    (line.contains("WARN") || line.contains("ERROR")) && line.contains(file)
}

/// Sends `req` with ids `poll-1`, `poll-2`, ... until `sink` has received something.
#[track_caller]
fn send_until_delivered(dut: &Dut, req: &Request, sink: &Sink, what: &str) {
    let mut n = 0;
    eventually(RELOAD, what, || {
        n += 1;
        dut.send(&req.clone().id(&format!("poll-{n}")));
        (!sink.requests().is_empty()).then_some(())
    });
}

/// Sends `req` until it gets `status`.
#[track_caller]
fn send_until_status(dut: &Dut, req: &Request, status: u16, what: &str) {
    eventually(RELOAD, what, || {
        (dut.send(req).status == status).then_some(())
    });
}

fn ids(sink: &Sink) -> Vec<String> {
    sink.requests()
        .iter()
        .map(|r| r.header("ce-id").unwrap_or_default().to_string())
        .collect()
}

fn reload_switches_subscribers_without_restart(driver: Driver) {
    let (s1, s2) = (Sink::ok(), Sink::ok());
    let dut = Dut::start(driver, &[c1().subscriber(Sub::to(&s1.url()))]);
    dut.send(&e1().id("before")).assert_status(202);

    dut.set_channels(&[c1().subscriber(Sub::to(&s2.url()))]);
    send_until_delivered(&dut, &e1(), &s2, "S2 gets events after the reload");
    let s1_seen = s1.requests().len();
    dut.send(&e1().id("after")).assert_status(202);

    assert_eq!(ids(&s2).last().map(String::as_str), Some("after"));
    assert_eq!(
        s1.requests().len(),
        s1_seen,
        "S1 still gets events: {:?}",
        ids(&s1)
    );
    assert_eq!(ids(&s1)[0], "before");
}

fn multi_document_yaml_serves_every_channel(driver: Driver) {
    let (s1, s2) = (Sink::ok(), Sink::ok());
    let c2 = Channel::new("other", "ch2").subscriber(Sub::to(&s2.url()));
    let dut = Dut::start(driver, &[c1().subscriber(Sub::to(&s1.url())), c2.clone()]);

    dut.send(&e1()).assert_status(202);
    dut.send(&e1().host("anything.example").target(&c2.path()))
        .assert_status(202);

    assert_binary_e1(&s1.wait_for(1, DELIVERY)[0]);
    let got = &s2.wait_for(1, DELIVERY)[0];
    got.assert_header("kn-namespace", "other");
    got.assert_header("ce-id", "e1");
}

/// `kubectl get imc -A -o yaml` prints a `kind: List`; its items are channels, whatever
/// annotations and status they carry.
fn kind_list_items_are_served(driver: Driver) {
    let (s1, s2) = (Sink::ok(), Sink::ok());
    let c2 = Channel::new("default", "ch2")
        .subscriber(Sub::to(&s2.url()))
        .ready_status();
    let list = channels_list_yaml(&[
        c1().subscriber(Sub::to(&s1.url())).annotation(
            "kubectl.kubernetes.io/last-applied-configuration",
            r#"{"apiVersion":"messaging.knative.dev/v1","kind":"InMemoryChannel"}"#,
        ),
        c2.clone(),
    ]);
    let dut = Dut::builder(driver)
        .channels_file("channels.yaml", &list)
        .start();

    dut.send(&e1()).assert_status(202);
    dut.send(&e1().host(&c2.host())).assert_status(202);

    assert_binary_e1(&s1.wait_for(1, DELIVERY)[0]);
    assert_binary_e1(&s2.wait_for(1, DELIVERY)[0]);
}

/// A `.json` file in the shape `kubectl get imc ch1 -o json` prints.
fn json_file_is_accepted(driver: Driver) {
    let s1 = Sink::ok();
    let json = format!(
        r#"{{
    "apiVersion": "messaging.knative.dev/v1",
    "kind": "InMemoryChannel",
    "metadata": {{
        "generation": 1,
        "name": "ch1",
        "namespace": "default"
    }},
    "spec": {{
        "subscribers": [
            {{
                "generation": 1,
                "name": "sub-json",
                "subscriberUri": "{}",
                "uid": "00000000-0000-0000-0000-00000000abcd"
            }}
        ]
    }}
}}
"#,
        s1.url()
    );
    let dut = Dut::builder(driver)
        .channels_file("channels.json", &json)
        .start();

    dut.send(&e1()).assert_status(202);

    assert_binary_e1(&s1.wait_for(1, DELIVERY)[0]);
}

/// A directory source serves the channels of all its files, and watches each of them.
fn directory_of_files_is_merged(driver: Driver) {
    let (s1, s2, s3) = (Sink::ok(), Sink::ok(), Sink::ok());
    let c2 = Channel::new("default", "ch2");
    let dut = Dut::builder(driver)
        .channels_dir(&[
            ("a.yaml", &c1().subscriber(Sub::to(&s1.url())).to_yaml()),
            (
                "b.yaml",
                &c2.clone().subscriber(Sub::to(&s2.url())).to_yaml(),
            ),
        ])
        .start();

    dut.send(&e1()).assert_status(202);
    dut.send(&e1().host(&c2.host())).assert_status(202);
    assert_eq!(ids(&s1), ["e1"]);
    assert_eq!(ids(&s2), ["e1"]);

    dut.write_in_dir(
        "b.yaml",
        &c2.clone().subscriber(Sub::to(&s3.url())).to_yaml(),
    );
    send_until_delivered(
        &dut,
        &e1().host(&c2.host()),
        &s3,
        "C2 goes to S3 after b.yaml changed",
    );
    dut.send(&e1().id("still")).assert_status(202);

    assert_eq!(ids(&s1), ["e1", "still"], "C1 from a.yaml is unaffected");
}

/// A file that does not parse is reported with its name, and the previous channels stay in force;
/// the watch goes on.
fn bad_edit_keeps_previous_set_and_logs_file(driver: Driver) {
    let (s1, s2) = (Sink::ok(), Sink::ok());
    let dut = Dut::start(driver, &[c1().subscriber(Sub::to(&s1.url()))]);
    let mark = dut.log_mark();

    dut.write_channels_raw(
        "apiVersion: messaging.knative.dev/v1\nkind: InMemoryChannel\nmetadata: [unclosed\n",
    );
    let line = dut.wait_log(mark, RELOAD, |l| reports(l, "channels.yaml"));
    assert!(
        line.is_some(),
        "no warning naming channels.yaml after a bad edit"
    );

    dut.send(&e1()).assert_status(202);
    assert_eq!(ids(&s1), ["e1"], "the previous set still serves");

    dut.set_channels(&[c1().subscriber(Sub::to(&s2.url()))]);
    send_until_delivered(&dut, &e1(), &s2, "a good edit after a bad one is applied");
}

/// A subscriber with an invalid delivery rejects the channel's update: the previous subscribers stay.
fn invalid_delivery_keeps_previous_subscribers(driver: Driver) {
    let (s1, s2) = (Sink::ok(), Sink::ok());
    let dut = Dut::start(driver, &[c1().subscriber(Sub::to(&s1.url()))]);
    let mark = dut.log_mark();

    dut.set_channels(&[
        c1().subscriber(Sub::to(&s2.url()).delivery_yaml("{backoffDelay: garbage}"))
    ]);
    let line = dut.wait_log(mark, RELOAD, |l| {
        reports(l, "channels.yaml") && l.contains("backoffDelay")
    });
    assert!(
        line.is_some(),
        "no warning naming channels.yaml and backoffDelay after an invalid delivery"
    );

    dut.send(&e1()).assert_status(202);
    assert_eq!(ids(&s1), ["e1"]);
    s2.assert_untouched();
}

/// D8: deleting a channel removes its host key and its path key at once.
fn deleted_channel_is_404_on_host_and_path(driver: Driver) {
    let (s1, s2) = (Sink::ok(), Sink::ok());
    let c2 = Channel::new("default", "ch2").subscriber(Sub::to(&s2.url()));
    let dut = Dut::start(driver, &[c1().subscriber(Sub::to(&s1.url())), c2.clone()]);
    dut.send(&e1()).assert_status(202);

    let c2_host = c2.host();
    dut.set_channels(&[c2]);
    send_until_status(
        &dut,
        &e1().id("gone"),
        404,
        "C1's host answers 404 after the delete",
    );
    let s1_seen = s1.requests().len();

    dut.send(&e1().host("anything.example").target("/default/ch1"))
        .assert_status_empty(404);
    dut.send(&e1().host(&c2_host)).assert_status(202);
    assert_eq!(
        s1.requests().len(),
        s1_seen,
        "the deleted channel still delivers"
    );
    assert_eq!(s2.requests().len(), 1);
}

/// D1: a channel whose Ready condition is False is not served (404 on both keys) until it is Ready.
fn not_ready_channel_is_404_until_ready(driver: Driver) {
    let s1 = Sink::ok();
    let sub = Sub::to(&s1.url());
    let dut = Dut::start(driver, &[c1().subscriber(sub.clone()).not_ready()]);

    dut.send(&e1()).assert_status_empty(404);
    dut.send(&e1().host("anything.example").target("/default/ch1"))
        .assert_status_empty(404);
    s1.assert_untouched();

    dut.set_channels(&[c1().subscriber(sub).ready_status()]);
    send_until_status(&dut, &e1(), 202, "C1 is served once Ready");
    assert_binary_e1(&s1.wait_for(1, DELIVERY)[0]);
    dut.send(&e1().host("anything.example").target("/default/ch1"))
        .assert_status(202);
}

/// A request in flight keeps the subscriber list it started with; the next one sees the new list.
fn subscriber_update_is_atomic_for_in_flight_requests(driver: Driver) {
    let s1 = Sink::start(vec![Reply::status(200).delay(Duration::from_secs(3))]);
    let (s2, canary_sink) = (Sink::ok(), Sink::ok());
    let canary = Channel::new("default", "canary").subscriber(Sub::to(&canary_sink.url()));
    let dut = Dut::start(driver, &[c1().subscriber(Sub::to(&s1.url()))]);

    thread::scope(|scope| {
        let in_flight = scope.spawn(|| dut.send(&e1().id("in-flight")));
        s1.wait_for(1, DELIVERY);

        // C1 comes first in the file; once the canary after it is served, the file is applied.
        dut.set_channels(&[c1().subscriber(Sub::to(&s2.url())), canary.clone()]);
        send_until_status(
            &dut,
            &e1().host(&canary.host()),
            202,
            "the new file is applied",
        );
        assert!(
            !in_flight.is_finished(),
            "the reload took longer than S1's 3 s answer, so nothing was in flight during it"
        );
        let start = Instant::now();
        dut.send(&e1().id("next")).assert_status(202);

        assert!(
            start.elapsed() < Duration::from_secs(2),
            "the next event went to slow S1"
        );
        assert_eq!(ids(&s2), ["next"]);
        in_flight
            .join()
            .expect("in-flight sender")
            .assert_status(202);
        assert_eq!(ids(&s1), ["in-flight"]);
    });
}

/// D14: a DUT whose first channels file does not parse is up but not ready, names the file, and
/// becomes ready once a valid file appears.
fn unparseable_file_at_start_is_not_ready_until_fixed(driver: Driver) {
    let s1 = Sink::ok();
    let mut dut = Dut::builder(driver)
        .channels_file("channels.yaml", "apiVersion: [unclosed\n")
        .spawn();

    assert_eq!(dut.probe(), 503, "ready without a channel set");
    let line = dut.wait_log(0, RELOAD, |l| reports(l, "channels.yaml"));
    assert!(line.is_some(), "no warning naming channels.yaml");
    dut.assert_alive();
    assert_eq!(dut.probe(), 503, "ready without a channel set");

    dut.set_channels(&[c1().subscriber(Sub::to(&s1.url()))]);
    eventually(RELOAD, "probe answers 204 after a valid file", || {
        (dut.probe() == 204).then_some(())
    });
    dut.send(&e1()).assert_status(202);
    assert_binary_e1(&s1.wait_for(1, DELIVERY)[0]);
}

both_drivers!(
    reload_switches_subscribers_without_restart,
    multi_document_yaml_serves_every_channel,
    kind_list_items_are_served,
    json_file_is_accepted,
    directory_of_files_is_merged,
    bad_edit_keeps_previous_set_and_logs_file,
    invalid_delivery_keeps_previous_subscribers,
    deleted_channel_is_404_on_host_and_path,
    not_ready_channel_is_404_until_ready,
    subscriber_update_is_atomic_for_in_flight_requests,
    unparseable_file_at_start_is_not_ready_until_fixed,
);
