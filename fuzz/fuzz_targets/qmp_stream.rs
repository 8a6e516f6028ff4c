//! The QMP JSON stream parser: any bytes, fed in two pieces, give the same messages as fed
//! whole, and every message that parses re-parses from its QMP serialisation.
#![no_main]

use libfuzzer_sys::fuzz_target;
use netdevd_qmp::json::JsonStream;

fuzz_target!(|data: &[u8]| {
    let mut whole = Vec::new();
    JsonStream::new().feed(data, &mut whole);
    let cut = data
        .first()
        .map(|b| *b as usize % (data.len() + 1))
        .unwrap_or(0);
    let mut split = Vec::new();
    let mut s = JsonStream::new();
    s.feed(&data[..cut], &mut split);
    s.feed(&data[cut..], &mut split);
    assert_eq!(whole, split);
    for v in whole.into_iter().flatten() {
        // QEMU's output form is stable after one round: print, parse, print again.
        let reparse = |line: &str| {
            let mut msgs = Vec::new();
            JsonStream::new().feed(line.as_bytes(), &mut msgs);
            assert_eq!(msgs.len(), 1, "{line}");
            msgs.pop().unwrap().expect("printed JSON parses")
        };
        let first = netdevd_qmp::emit::to_line(&v);
        let second = netdevd_qmp::emit::to_line(&reparse(&first));
        let third = netdevd_qmp::emit::to_line(&reparse(&second));
        assert_eq!(second, third);
        assert!(first.is_ascii());
    }
});
