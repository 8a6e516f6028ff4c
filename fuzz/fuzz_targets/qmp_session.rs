//! A whole QMP session over the net schema: any bytes give well-formed reply lines, one
//! per complete message, and checked arguments always deserialise into the typed values.
#![no_main]

use libfuzzer_sys::fuzz_target;
use netdevd_qapi::schema::{CommandDef, Ty};
use netdevd_qapi::{parse_as, AnnounceParameters, Netdev, ANNOUNCE_PARAMETERS, COMMANDS, NETDEV};
use netdevd_qmp::{QmpError, Session};
use serde_json::{json, Value};

fuzz_target!(|data: &[u8]| {
    let mut s = Session::new(COMMANDS);
    let mut handler = |cmd: &'static CommandDef, args: Value| -> Result<Value, QmpError> {
        match cmd.name {
            "netdev_add" => {
                if let Err(netdevd_qapi::VisitError::Internal(e)) =
                    parse_as::<Netdev>(&args, &Ty::Union(&NETDEV))
                {
                    panic!("{e}");
                }
            }
            "announce-self" => {
                if let Err(netdevd_qapi::VisitError::Internal(e)) =
                    parse_as::<AnnounceParameters>(&args, &Ty::Struct(&ANNOUNCE_PARAMETERS))
                {
                    panic!("{e}");
                }
            }
            _ => {}
        }
        Ok(json!({}))
    };
    let mut out = String::new();
    s.feed(
        b"{\"execute\":\"qmp_capabilities\"}",
        &mut handler,
        &mut out,
    );
    s.feed(data, &mut handler, &mut out);
    for line in out.split_terminator("\r\n") {
        let v: Value = serde_json::from_str(line).expect("reply lines are JSON");
        assert!(
            v.get("return").is_some() || v.get("error").is_some(),
            "{line}"
        );
        assert!(line.is_ascii());
    }
});
