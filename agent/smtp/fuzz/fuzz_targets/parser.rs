//! The command parser on arbitrary lines: it must never panic, and every refusal must map
//! to a well-formed reply.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tern_smtp::parser::{Command, parse_command};
use tern_smtp::reply::check_wire_form;

fuzz_target!(|line: &[u8]| {
    match parse_command(line) {
        Ok(Command::Mail(mail)) => {
            // A parsed path prints back to something that parses to the same path.
            let again = format!("MAIL FROM:{}", mail.path);
            if let Ok(Command::Mail(m2)) = parse_command(again.as_bytes()) {
                assert_eq!(m2.path, mail.path);
            } else {
                panic!("{again:?} does not parse back");
            }
        }
        Ok(_) => {}
        Err(e) => check_wire_form(&e.reply().to_bytes()).expect("well-formed reply"),
    }
});
