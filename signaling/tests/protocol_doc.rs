//! docs/PROTOCOL.md cannot drift from the code: every example JSON line in it must be
//! a valid message of the direction it is shown in, with no field the types do not have.

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use signaling::protocol::{ChatMessage, ClientMessage, Participant, ServerMessage};

/// Parses `json` as `T` and checks the round trip: every field written in the doc
/// exists with the same value, and every field the doc leaves out is null (optional).
fn check<T: DeserializeOwned + Serialize>(json: &str) -> Result<(), String> {
    let doc: Value = serde_json::from_str(json).map_err(|e| format!("not JSON: {e}"))?;
    let parsed: T = serde_json::from_value(doc.clone()).map_err(|e| format!("rejected: {e}"))?;
    let back = serde_json::to_value(&parsed).map_err(|e| e.to_string())?;
    compare(&doc, &back, "")
}

fn compare(doc: &Value, back: &Value, path: &str) -> Result<(), String> {
    match (doc, back) {
        (Value::Object(d), Value::Object(b)) => {
            for (k, v) in d {
                let bv = b
                    .get(k)
                    .ok_or_else(|| format!("field {path}.{k} is not in the protocol"))?;
                compare(v, bv, &format!("{path}.{k}"))?;
            }
            for (k, v) in b {
                if !d.contains_key(k) && !v.is_null() {
                    return Err(format!("field {path}.{k} is missing from the example"));
                }
            }
            Ok(())
        }
        (Value::Array(d), Value::Array(b)) if d.len() == b.len() => d
            .iter()
            .zip(b)
            .enumerate()
            .try_for_each(|(i, (x, y))| compare(x, y, &format!("{path}[{i}]"))),
        (Value::Number(d), Value::Number(b)) => {
            // f32 levels do not round-trip exactly through f64.
            let (d, b) = (
                d.as_f64().unwrap_or(f64::NAN),
                b.as_f64().unwrap_or(f64::NAN),
            );
            if (d - b).abs() < 1e-6 {
                Ok(())
            } else {
                Err(format!("{path}: {d} != {b}"))
            }
        }
        (d, b) if d == b => Ok(()),
        (d, b) => Err(format!("{path}: {d} != {b}")),
    }
}

#[test]
fn every_example_line_in_protocol_md_matches_the_protocol_types() {
    let doc = include_str!("../../docs/PROTOCOL.md");
    let mut checked = 0;
    let mut failures = Vec::new();
    for (n, line) in doc.lines().enumerate() {
        let line = line.trim();
        let result = if let Some(json) = line.strip_prefix("> ") {
            check::<ClientMessage>(json)
        } else if let Some(json) = line.strip_prefix("< ") {
            check::<ServerMessage>(json)
        } else if line.starts_with(r#"{"participantId""#) {
            check::<Participant>(line)
        } else if line.starts_with(r#"{"_id""#) {
            check::<ChatMessage>(line)
        } else {
            continue;
        };
        checked += 1;
        if let Err(e) = result {
            failures.push(format!("line {}: {e}\n  {line}", n + 1));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert!(checked >= 20, "only {checked} example lines found");
}

#[test]
fn the_checker_catches_a_misspelt_field() {
    assert!(check::<ClientMessage>(r#"{"type":"join_room","roomID":"x","roomId":"x"}"#).is_err());
    assert!(check::<ServerMessage>(r#"{"type":"pong","extra":1}"#).is_err());
    assert!(check::<ClientMessage>(r#"{"type":"join_room","roomId":"x"}"#).is_ok());
}
