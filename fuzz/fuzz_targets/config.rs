//! Config loading: any text either loads or gives an error naming a place
//! in the file; it never panics.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::path::Path;

fuzz_target!(|text: &str| {
    if let Err(e) = backstop::Config::from_str(text, "fuzz.toml", Path::new("/nonexistent")) {
        let message = e.to_string();
        assert!(
            message.starts_with("fuzz.toml"),
            "an error that does not name the file: {message}"
        );
    }
});
