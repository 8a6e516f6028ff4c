//! The differential table: every exchange of `tests/qmp-differential.json` runs against QEMU
//! 7.2 and netdevd, and their answers are compared (see the table's "about").

mod common;

use std::os::fd::AsFd;
use std::time::Duration;

use common::{start_netdevd, start_qemu, Qmp, TempDir};
use serde_json::{json, Value};

const IDLE: Duration = Duration::from_millis(400);

/// What a comparison looks at.
fn summary(v: &Value, compare: &str) -> Value {
    if let Some(e) = v.get("error") {
        let mut s = json!({"error": {"class": e["class"]}});
        if compare == "exact" {
            s["error"]["desc"] = e["desc"].clone();
        }
        if let Some(id) = v.get("id") {
            s["id"] = id.clone();
        }
        return s;
    }
    let ret = &v["return"];
    let mut s = match compare {
        "exact" => json!({"return": ret}),
        "shape" => json!({"return_keys": keys(ret)}),
        _ => json!({"return": "ok"}),
    };
    if let Some(id) = v.get("id") {
        s["id"] = id.clone();
    }
    s
}

fn keys(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(m.iter().map(|(k, v)| (k.clone(), keys(v))).collect()),
        _ => Value::Null,
    }
}

fn payload(case: &Value) -> Vec<u8> {
    match (case.get("send"), case.get("raw")) {
        (Some(v), _) => serde_json::to_vec(v).unwrap(),
        (_, Some(Value::String(s))) => s
            .chars()
            .map(|c| c as u32 as u8)
            .collect::<Vec<u8>>()
            .into_iter()
            .collect(),
        _ => panic!("case needs send or raw: {case}"),
    }
}

/// Raw strings are bytes: chars above U+00FF are sent UTF-8 encoded.
fn raw_bytes(case: &Value) -> Vec<u8> {
    match case.get("raw") {
        Some(Value::String(s)) if s.chars().any(|c| c as u32 > 0xff) => s.as_bytes().to_vec(),
        Some(Value::String(_)) => payload(case),
        _ => payload(case),
    }
}

fn exchange(q: &mut Qmp, case: &Value) -> Vec<Value> {
    let data = raw_bytes(case);
    if case.get("fd").and_then(Value::as_bool) == Some(true) {
        let (r, _w) = rustix::pipe::pipe().unwrap();
        q.send_with_fd(&data, r.as_fd());
    } else {
        q.send_raw(&data);
    }
    if case.get("raw").is_some() {
        let want = case.get("replies").and_then(Value::as_u64);
        if want == Some(0) {
            return q.read_until_idle(Duration::from_millis(150));
        }
        q.read_until_idle(IDLE)
    } else {
        q.read_line(Duration::from_secs(10)).into_iter().collect()
    }
}

/// For a case where QEMU aborts: run it on a QEMU of its own and check that it dies.
fn check_qemu_aborts(case: &Value) {
    let dir = TempDir::new("qemu-abort");
    let sock = dir.path("q.sock");
    let mut qemu = start_qemu(&sock, &[]);
    let mut q = Qmp::negotiated(&sock);
    for s in case
        .get("setup")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let r = q.cmd(s);
        assert!(
            r.get("return").is_some(),
            "setup step {s} failed on QEMU: {r}"
        );
    }
    let replies = exchange(&mut q, case);
    assert!(
        replies.is_empty(),
        "QEMU answered {replies:?} where it was expected to abort"
    );
    let status = qemu.child.wait().unwrap();
    assert!(!status.success(), "QEMU exited cleanly: {status}");
}

#[test]
fn qmp_answers_match_qemu() {
    let table: Value = serde_json::from_str(include_str!("qmp-differential.json")).unwrap();
    let cases = table["cases"].as_array().unwrap();
    assert!(cases.len() >= 80, "the table has {} exchanges", cases.len());
    let dir = TempDir::new("diff");
    let (qs, ns) = (dir.path("qemu.sock"), dir.path("netdevd.sock"));
    let mut qemu_proc = start_qemu(&qs, &[]);
    let mut nd_proc = start_netdevd(&ns, &[]);
    let mut qemu = Qmp::connect(&qs);
    let mut nd = Qmp::connect(&ns);
    assert_eq!(keys(&qemu.greeting), keys(&nd.greeting), "greeting shape");
    assert_eq!(
        qemu.greeting["QMP"]["capabilities"],
        nd.greeting["QMP"]["capabilities"]
    );

    let mut failures = Vec::new();
    let (mut same, mut deliberate) = (0, 0);
    for case in cases {
        let name = case["name"].as_str().unwrap();
        if case.get("deliberate").is_some() {
            deliberate += 1;
            let n = exchange(&mut nd, case);
            let want = &case["netdevd"];
            let got = n.first().cloned().unwrap_or(Value::Null);
            let ok = match want.get("class") {
                Some(class) => {
                    got["error"]["class"] == *class
                        && want.get("desc").is_none_or(|d| got["error"]["desc"] == *d)
                }
                None => got.get("return") == want.get("return"),
            };
            if !ok {
                failures.push(format!(
                    "{name}: netdevd answered {got}, the table says {want}"
                ));
            }
            if case["qemu"] == "aborts" {
                check_qemu_aborts(case);
            } else {
                let q = exchange(&mut qemu, case);
                let qgot = q.first().cloned().unwrap_or(Value::Null);
                let qwant = &case["qemu"];
                let qok = match qwant.get("class") {
                    Some(class) => {
                        qgot["error"]["class"] == *class
                            && qwant
                                .get("desc")
                                .is_none_or(|d| qgot["error"]["desc"] == *d)
                    }
                    None => qgot.get("return") == qwant.get("return"),
                };
                if !qok {
                    failures.push(format!(
                        "{name}: QEMU answered {qgot}, the table says {qwant}"
                    ));
                }
            }
            continue;
        }
        let compare = case
            .get("compare")
            .and_then(Value::as_str)
            .unwrap_or("exact");
        let q: Vec<Value> = exchange(&mut qemu, case)
            .iter()
            .map(|v| summary(v, compare))
            .collect();
        let n: Vec<Value> = exchange(&mut nd, case)
            .iter()
            .map(|v| summary(v, compare))
            .collect();
        if q != n {
            failures.push(format!("{name}:\n    qemu:    {q:?}\n    netdevd: {n:?}"));
        } else {
            same += 1;
        }
    }
    // `quit` was the last exchange: both must exit on their own.
    for (who, p) in [("qemu", &mut qemu_proc), ("netdevd", &mut nd_proc)] {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while p.child.try_wait().unwrap().is_none() {
            assert!(
                std::time::Instant::now() < deadline,
                "{who} did not exit after quit"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    println!(
        "differential table: {} exchanges, {same} identical, {deliberate} deliberate differences",
        cases.len()
    );
    assert!(
        failures.is_empty(),
        "{} differences:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
