//! The imc-control binary as the dispatcher starts it, and as a person reading `--help` meets
//! it. (These tests also make `cargo test --workspace` build the binary, which the end-to-end
//! suites find next to imc-dispatcher.)

use std::process::Command;

fn control() -> Command {
    Command::new(env!("CARGO_BIN_EXE_imc-control"))
}

/// `--help` names every flag with a description.
#[test]
fn help_explains_every_flag() {
    let out = control()
        .arg("--help")
        .output()
        .expect("run imc-control --help");
    assert!(out.status.success());
    let all = String::from_utf8_lossy(&out.stdout);
    // The flags as listed under "Options:" (the usage line names the required one too).
    let text = &all[all.find("Options:").expect("an Options section")..];
    for flag in [
        "--control-fd",
        "--kubeconfig",
        "--system-namespace",
        "--namespace",
        "--pod-name",
        "--disable-ha",
        "--lease-name",
        "--leader-election-config",
        "--lease-duration",
        "--renew-deadline",
        "--retry-period",
        "--kube-api-qps",
        "--kube-api-burst",
        "--debounce",
        "--log-format",
        "--log-level",
    ] {
        let at = text
            .find(&format!("{flag} "))
            .or_else(|| text.find(&format!("{flag}\n")))
            .unwrap_or_else(|| panic!("{flag} missing from --help:\n{text}"));
        // `--flag <VALUE>  Description...`, the description on the same line or, when clap
        // wraps for a narrow output, on the lines below, up to the next flag.
        let mut lines = text[at..].lines();
        let first = lines.next().unwrap_or("");
        let after = first[flag.len()..].trim_start();
        let after = match after.strip_prefix('<') {
            Some(v) => v.split_once('>').map_or("", |(_, rest)| rest),
            None => after,
        };
        let mut described: Vec<&str> = after.split_whitespace().collect();
        for l in lines.take_while(|l| !l.trim_start().starts_with('-')) {
            described.extend(l.split_whitespace());
        }
        let words = described.iter().take_while(|w| !w.starts_with('[')).count();
        let line = first;
        assert!(words >= 3, "{flag} has no description: {line}");
    }
}

/// Started without the dispatcher's socket, it says so and exits 2 instead of running blind.
#[test]
fn without_the_dispatchers_socket_it_exits_2() {
    let out = control()
        .args(["--control-fd", "250", "--kubeconfig", "/nonexistent"])
        .env_remove("KUBERNETES_SERVICE_HOST")
        .output()
        .expect("run imc-control");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("socket to the dispatcher"), "{err}");
}
