//! Knative's Sequence and Parallel flows, built the way the flows controller builds them: one
//! InMemoryChannel per step or branch, chained by `replyUri`, each reply coming back into this
//! dispatcher (by path routing) as a new event.

use imc_e2e::apps::{self, appender, filter, transformer};
use imc_e2e::*;

/// A binary event with JSON data `{"message": message}`, as the PingSource of the samples sends.
fn ping(channel: &Channel, id: &str, message: &str) -> Request {
    Request::post("/")
        .host(&channel.host())
        .header("ce-specversion", "1.0")
        .header("ce-id", id)
        .header(
            "ce-source",
            "/apis/v1/namespaces/default/pingsources/ping-source",
        )
        .header("ce-type", "dev.knative.sources.ping")
        .header("content-type", "application/json")
        .body(format!(
            "{{\"message\":{}}}",
            imc_e2e::text::json_string(message)
        ))
}

/// The requests `sink` received for event `id`.
fn for_id(sink: &Sink, id: &str) -> Vec<Recorded> {
    sink.requests()
        .into_iter()
        .filter(|r| r.id() == id)
        .collect()
}

/// Three steps, each an appender adding " - Handled by N": the last sink sees all three suffixes
/// in order, and each step saw the message as the previous steps left it.
fn sequence_chains_steps_through_replies(driver: Driver) {
    let steps: Vec<Sink> = (0..3)
        .map(|i| Sink::respond(appender(&format!(" - Handled by {i}"))))
        .collect();
    let display = Sink::ok();
    let channel = |i: usize| Channel::new("default", &format!("sequence-kn-sequence-{i}"));
    // The reply URIs point at this DUT, whose port is known only once it runs.
    let dut = Dut::start(
        driver,
        &(0..3)
            .map(|i| channel(i).subscriber(Sub::to(&steps[i].url())))
            .collect::<Vec<_>>(),
    );
    let flow: Vec<Channel> = (0..3)
        .map(|i| {
            let next = if i < 2 {
                dut.channel_url(&channel(i + 1))
            } else {
                display.url()
            };
            channel(i).subscriber(Sub::to(&steps[i].url()).reply(&next))
        })
        .collect();
    dut.apply_channels(&flow);

    for (id, message) in [("seq-1", "hello"), ("seq-2", "hello, world!")] {
        dut.send(&ping(&channel(0), id, message)).assert_status(202);

        let got = for_id(&display, id);
        assert_eq!(got.len(), 1, "display got {id}: {got:#?}");
        assert_eq!(
            apps::message(&got[0]),
            format!("{message} - Handled by 0 - Handled by 1 - Handled by 2")
        );
        got[0].assert_header("ce-type", "samples.appender");
        for (i, step) in steps.iter().enumerate() {
            let seen = for_id(step, id);
            assert_eq!(seen.len(), 1, "step {i} got {id}: {seen:#?}");
            let expected: String = (0..i).map(|j| format!(" - Handled by {j}")).collect();
            assert_eq!(apps::message(&seen[0]), format!("{message}{expected}"));
            seen[0].assert_header("kn-namespace", "default");
        }
    }
}

/// Two branches behind one channel: an even filter and an odd filter (each replies with the
/// event only when it matches), each followed by its branch channel and a transformer. Each
/// branch's final sink sees exactly its own events, transformed, once.
fn parallel_branches_see_only_their_events(driver: Driver) {
    let parity = |r: &Recorded| -> u32 {
        let n: u32 = r.id()[2..].parse().expect("ids are p-<n>");
        n % 2
    };
    let even_filter = Sink::respond(filter(move |r| parity(r) == 0));
    let odd_filter = Sink::respond(filter(move |r| parity(r) == 1));
    let even_transformer = Sink::respond(transformer("this is even!"));
    let odd_transformer = Sink::respond(transformer("this is odd!"));
    let (even_display, odd_display) = (Sink::ok(), Sink::ok());
    let head = Channel::new("default", "odd-even-parallel-kn-parallel");
    let branch = |i: usize| Channel::new("default", &format!("odd-even-parallel-kn-parallel-{i}"));
    let dut = Dut::start(driver, std::slice::from_ref(&head));
    dut.apply_channels(&[
        head.clone()
            .subscriber(Sub::to(&even_filter.url()).reply(&dut.channel_url(&branch(0))))
            .subscriber(Sub::to(&odd_filter.url()).reply(&dut.channel_url(&branch(1)))),
        branch(0).subscriber(Sub::to(&even_transformer.url()).reply(&even_display.url())),
        branch(1).subscriber(Sub::to(&odd_transformer.url()).reply(&odd_display.url())),
    ]);

    let ids: Vec<String> = (0..10).map(|n| format!("p-{n}")).collect();
    for id in &ids {
        dut.send(&ping(&head, id, "Even or odd?"))
            .assert_status(202);
    }

    for (display, transformer, rest, message) in [
        (&even_display, &even_transformer, 0, "this is even!"),
        (&odd_display, &odd_transformer, 1, "this is odd!"),
    ] {
        let mine: Vec<&str> = ids
            .iter()
            .filter(|id| id[2..].parse::<u32>().unwrap() % 2 == rest)
            .map(String::as_str)
            .collect();
        let got = display.wait_for(mine.len(), DELIVERY);
        let got_ids: Vec<&str> = got.iter().map(Recorded::id).collect();
        assert_eq!(got_ids, mine, "{message} display");
        for r in &got {
            assert_eq!(apps::message(r), message, "{r:?}");
            r.assert_header("ce-type", "samples.transformed");
        }
        let transformed: Vec<String> = transformer
            .requests()
            .iter()
            .map(|r| r.id().to_string())
            .collect();
        assert_eq!(transformed, mine, "{message} transformer");
    }
    assert_eq!(even_filter.requests().len(), ids.len());
    assert_eq!(odd_filter.requests().len(), ids.len());
}

both_drivers!(
    sequence_chains_steps_through_replies,
    parallel_branches_see_only_their_events,
);
