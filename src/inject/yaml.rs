//! YAML handling of `inject`: parsing YAML or JSON, writing YAML that YAML 1.1 readers
//! (kubectl's go-yaml v2, PyYAML) read back the same, and small helpers on the generic tree.

use super::{GIB, MIB, SUPPORTED};
use crate::error::{Error, Result};
use serde_yaml_ng::{Mapping, Value};

/// True for a string a YAML 1.1 reader (kubectl's go-yaml v2, PyYAML) would not read back as a
/// string when written plain: booleans such as `yes`/`on`, dates, sexagesimal and octal numbers.
/// serde_yaml_ng writes YAML 1.2 and quotes only the 1.2 ambiguities.
pub(super) fn ambiguous_in_yaml_1_1(s: &str) -> bool {
    const WORDS: [&str; 22] = [
        "y", "Y", "yes", "Yes", "YES", "n", "N", "no", "No", "NO", "on", "On", "ON", "off", "Off",
        "OFF", "true", "True", "TRUE", "false", "False", "FALSE",
    ];
    let b = s.as_bytes();
    let digits_and =
        |extra: &[u8]| !b.is_empty() && b.iter().all(|c| c.is_ascii_digit() || extra.contains(c));
    WORDS.contains(&s)
        || (b.len() >= 8
            && b[..4].iter().all(u8::is_ascii_digit)
            && b[4] == b'-'
            && b[1..].contains(&b'-'))
        || (digits_and(b":._") && s.contains(':'))
        || (b.len() > 1 && b[0] == b'0' && digits_and(b"_"))
}

/// YAML that YAML 1.1 readers read back the same: ambiguous strings come out single-quoted.
pub(super) fn to_yaml_1_1_safe(mut doc: Value) -> Result<String> {
    let mut quoted = Vec::new();
    mark_ambiguous(&mut doc, &mut quoted);
    let mut out = serde_yaml_ng::to_string(&doc)
        .map_err(|e| Error::Yaml(format!("cannot write the result: {e}")))?;
    for (i, original) in quoted.iter().enumerate().rev() {
        out = out.replace(
            &placeholder(i),
            &format!("'{}'", original.replace('\'', "''")),
        );
    }
    Ok(out)
}

pub(super) fn placeholder(i: usize) -> String {
    format!("ferry-quoted-placeholder-{i}-x")
}

pub(super) fn mark_ambiguous(v: &mut Value, quoted: &mut Vec<String>) {
    match v {
        Value::String(s) if ambiguous_in_yaml_1_1(s) => {
            quoted.push(std::mem::replace(s, placeholder(quoted.len())));
        }
        Value::Sequence(items) => items.iter_mut().for_each(|i| mark_ambiguous(i, quoted)),
        Value::Mapping(m) => {
            let entries: Vec<(Value, Value)> = std::mem::take(m).into_iter().collect();
            for (mut k, mut val) in entries {
                mark_ambiguous(&mut k, quoted);
                mark_ambiguous(&mut val, quoted);
                m.insert(k, val);
            }
        }
        Value::Tagged(t) => mark_ambiguous(&mut t.value, quoted),
        _ => {}
    }
}

pub(super) fn parse(input: &str) -> Result<Value> {
    let doc = match serde_yaml_ng::from_str::<Value>(input) {
        Ok(v) => v,
        // libyaml reads nearly all JSON; serde_json covers the rest (key order is then sorted).
        Err(yaml) => match serde_json::from_str::<serde_json::Value>(input) {
            Ok(j) => serde_yaml_ng::to_value(j).map_err(|e| Error::Yaml(e.to_string()))?,
            Err(_) => {
                return Err(Error::Yaml(format!(
                    "the input is not one YAML or JSON document ({yaml}); give {SUPPORTED}"
                )));
            }
        },
    };
    if doc.is_null() {
        return Err(Error::Yaml(format!("the input is empty; give {SUPPORTED}")));
    }
    Ok(doc)
}

/// A Kubernetes quantity in bytes (`20Gi`, `500M`, `1073741824`); None if not understood.
pub(super) fn parse_quantity(v: &Value) -> Option<u64> {
    if let Some(n) = v.as_u64() {
        return Some(n);
    }
    let s = v.as_str()?.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let mult: u64 = match unit {
        "" => 1,
        "Ki" => 1 << 10,
        "Mi" => MIB,
        "Gi" => GIB,
        "Ti" => 1 << 40,
        "k" => 1000,
        "M" => 1_000_000,
        "G" => 1_000_000_000,
        "T" => 1_000_000_000_000,
        _ => return None,
    };
    num.parse::<u64>().ok()?.checked_mul(mult)
}

/// `initContainers`, `volumes`…: the sequence at `key`, created (before `before`, if that key
/// exists, else last) when absent.
pub(super) fn seq_mut<'a>(
    m: &'a mut Mapping,
    key: &str,
    before: Option<&str>,
) -> Result<&'a mut Vec<Value>> {
    if m.get(key).is_none_or(Value::is_null) {
        match before.filter(|b| m.contains_key(*b)) {
            Some(b) => {
                let old = std::mem::take(m);
                for (k, v) in old {
                    if k.as_str() == Some(b) {
                        m.insert(key.into(), Value::Sequence(vec![]));
                    }
                    m.insert(k, v);
                }
            }
            None => {
                m.insert(key.into(), Value::Sequence(vec![]));
            }
        }
    }
    m.get_mut(key)
        .and_then(Value::as_sequence_mut)
        .ok_or_else(|| Error::Yaml(format!("`{key}` is not a list")))
}

pub(super) fn map<const N: usize>(pairs: [(&str, Value); N]) -> Value {
    Value::Mapping(
        pairs
            .into_iter()
            .map(|(k, v)| (Value::from(k), v))
            .collect(),
    )
}

pub(super) fn name_of(v: &Value) -> Option<&str> {
    v.get("name").and_then(Value::as_str)
}

/// Rounded up to whole MiB (saturating).
pub fn round_up_mib(bytes: u64) -> u64 {
    bytes.div_ceil(MIB).min(u64::MAX / MIB) * MIB
}

/// A Kubernetes quantity: `3Gi`, `1025Mi`, or plain bytes.
pub fn quantity(bytes: u64) -> String {
    match bytes {
        b if b >= GIB && b % GIB == 0 => format!("{}Gi", b / GIB),
        b if b >= MIB && b % MIB == 0 => format!("{}Mi", b / MIB),
        b => b.to_string(),
    }
}

/// `defaultMode: 0644` is octal to Kubernetes (YAML 1.1) but a string to our YAML 1.2 reader;
/// write it back as the number Kubernetes meant, so the volumes we pass through stay valid.
pub(super) fn fix_octal_modes(v: &mut Value) {
    match v {
        Value::Mapping(m) => {
            for (k, v) in m.iter_mut() {
                let octal = match (k.as_str(), v.as_str()) {
                    (Some("defaultMode" | "mode"), Some(s))
                        if s.len() > 1 && s.starts_with('0') =>
                    {
                        i64::from_str_radix(s, 8).ok()
                    }
                    _ => None,
                };
                match octal {
                    Some(n) => *v = n.into(),
                    None => fix_octal_modes(v),
                }
            }
        }
        Value::Sequence(s) => s.iter_mut().for_each(fix_octal_modes),
        _ => {}
    }
}

#[cfg(test)]
mod yaml_1_1_tests {
    use super::*;

    #[test]
    fn strings_a_yaml_1_1_reader_would_misread_come_out_quoted() {
        let doc: Value = serde_yaml_ng::from_str(
            "a: 'yes'\nb: 'on'\nc: '2024-01-01'\nd: '017'\ne: '1:20'\n'no': keep\nf: plain\ng: 'N'\n",
        )
        .unwrap();
        let out = to_yaml_1_1_safe(doc.clone()).unwrap();
        for q in [
            "'yes'",
            "'on'",
            "'2024-01-01'",
            "'017'",
            "'1:20'",
            "'no': keep",
            "f: plain",
            "'N'",
        ] {
            assert!(out.contains(q), "{q} missing from:\n{out}");
        }
        let back: Value = serde_yaml_ng::from_str(&out).unwrap();
        assert_eq!(back, doc);
    }
}
