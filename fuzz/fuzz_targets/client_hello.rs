//! Any input must yield a hello or an error, never a panic; and a hello parsed from a prefix
//! must not change when more bytes arrive (what a peeking proxy relies on).
#![no_main]

use libfuzzer_sys::fuzz_target;
use tollgate_wire::{parse_client_hello, HelloError};

fuzz_target!(|data: &[u8]| {
    let full = parse_client_hello(data);
    if let Ok(hello) = &full {
        assert!(hello.wire_len <= data.len());
        let again = parse_client_hello(&data[..hello.wire_len]).expect("hello from its own bytes");
        assert_eq!(&again, hello);
    }
    // A verdict other than Incomplete on a prefix is final: a longer input cannot undo it.
    if data.len() > 1 {
        let prefix = parse_client_hello(&data[..data.len() / 2]);
        match (prefix, &full) {
            (Err(HelloError::Incomplete { .. }), _) => {}
            (Ok(a), Ok(b)) => assert_eq!(&a, b),
            (Err(a), Err(b)) => assert_eq!(&a, b),
            (a, b) => panic!("prefix gave {a:?}, full input gave {b:?}"),
        }
    }
});
