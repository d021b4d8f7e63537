//! Declared schemas: a tool's `describe` can declare any JSON as its
//! schema. Whatever `backstop::schema::compile` accepts must validate any
//! value without overflowing the stack or running without end (libFuzzer
//! reports both: a crash, or a timeout with `-timeout`).
//!
//! Input: a schema, a newline, then an instance to validate (both JSON).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    let (schema, instance) = text.split_once('\n').unwrap_or((text, "null"));
    let Ok(schema) = serde_json::from_str::<serde_json::Value>(schema) else {
        return;
    };
    let Ok(validator) = backstop::schema::compile(&schema) else {
        return;
    };
    // The schema as its own instance is a deep, schema-shaped value: the
    // case that made validation recurse.
    for value in [serde_json::from_str(instance).ok(), Some(schema.clone())]
        .into_iter()
        .flatten()
    {
        let _ = validator.is_valid(&value);
        let _ = validator.validate(&value).map_err(|e| e.to_string());
    }
});
