//! The `-netdev` option syntax: any string parses, coerces and visits without panicking,
//! and whatever is accepted deserialises into the typed `Netdev`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use netdevd_qapi::schema::Ty;
use netdevd_qapi::{keyval, parse_as, Netdev, NETDEV};

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    let ty = Ty::Union(&NETDEV);
    let Ok(tree) = keyval::parse(s, Some("type")) else {
        return;
    };
    let Ok(v) = keyval::coerce(&tree, &ty) else {
        return;
    };
    if let Err(netdevd_qapi::VisitError::Internal(e)) = parse_as::<Netdev>(&v, &ty) {
        panic!("visitor accepted what the typed schema refuses: {e}");
    }
});
