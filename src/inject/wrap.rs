//! `inject --wrap`: each tool container's `command` + `args` runs under `ferry exec`, from the
//! `/ferry-bin` emptyDir that `ferry-init --install-self` fills.

use super::{BIN_DIR, BIN_FERRY, name_of, normalise};
use crate::error::{Error, Result};
use crate::manifest::is_within;
use serde_yaml_ng::{Mapping, Value};

/// `command` + `args` → `/ferry-bin/ferry exec --exit-code-file EC -- command… args…`, without
/// `args`. A container without `command` would run its image's ENTRYPOINT, which inject cannot
/// see: `entrypoint` stands for it, else the container is refused.
pub(super) fn wrap(c: &mut Mapping, exit_code_file: &str, entrypoint: &[String]) -> Result<()> {
    let name = c
        .get("name")
        .and_then(Value::as_str)
        .unwrap_or("?")
        .to_string();
    let words = |key: &str| -> Result<Option<Vec<Value>>> {
        match c.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Sequence(s)) if s.is_empty() => Ok(None),
            Some(Value::Sequence(s)) => Ok(Some(s.clone())),
            Some(_) => Err(Error::Yaml(format!(
                "container `{name}`: `{key}` is not a list"
            ))),
        }
    };
    let (command, args) = (words("command")?, words("args")?);
    let command = match (command, args.is_some(), entrypoint.is_empty()) {
        (Some(command), _, _) => command,
        (None, true, false) => entrypoint.iter().map(|w| w.as_str().into()).collect(),
        (None, false, false) => {
            return Err(Error::Yaml(format!(
                "container `{name}` sets neither `command` nor `args`, so its image's CMD would run, \
                 which inject cannot see; --wrap needs `command` (or `args` with --entrypoint)"
            )));
        }
        (None, _, true) => {
            return Err(Error::Yaml(format!(
                "container `{name}` sets no `command`, so its image's ENTRYPOINT would run, which \
                 inject cannot see; --wrap needs `command` in the YAML, or the ENTRYPOINT given \
                 with --entrypoint (repeat it once per word)"
            )));
        }
    };
    let wrapped: Vec<Value> = [BIN_FERRY, "exec", "--exit-code-file", exit_code_file, "--"]
        .into_iter()
        .map(Value::from)
        .chain(command)
        .chain(args.into_iter().flatten())
        .collect();
    if c.contains_key("command") {
        c.insert("command".into(), Value::Sequence(wrapped));
        c.shift_remove("args");
    } else {
        // `command` takes the place of `args`, so the key order stays the input's.
        let old = std::mem::take(c);
        for (k, v) in old {
            if k.as_str() == Some("args") {
                c.insert("command".into(), Value::Sequence(wrapped.clone()));
            } else {
                c.insert(k, v);
            }
        }
    }
    Ok(())
}

/// Undoes [`wrap`]: a command `/ferry-bin/ferry exec … -- ORIGINAL…` becomes `ORIGINAL…`.
pub(super) fn unwrap(c: &mut Value) {
    let Some(command) = c.get_mut("command").and_then(Value::as_sequence_mut) else {
        return;
    };
    let is_ours = command.first().and_then(Value::as_str) == Some(BIN_FERRY)
        && command.get(1).and_then(Value::as_str) == Some("exec");
    if let Some(end) = command
        .iter()
        .position(|w| w.as_str() == Some("--"))
        .filter(|_| is_ours)
    {
        command.drain(..=end);
    }
}

/// With `--wrap`, `/ferry-bin` is ferry's: a container must not mount anything at or inside it.
pub(super) fn check_bin_mount(c: &Value, container: &str) -> Result<()> {
    for m in c
        .get("volumeMounts")
        .and_then(Value::as_sequence)
        .into_iter()
        .flatten()
    {
        let Some(raw) = m.get("mountPath").and_then(Value::as_str) else {
            continue;
        };
        if is_within(&normalise(raw), BIN_DIR) {
            return Err(Error::Yaml(format!(
                "container `{container}` mounts volume `{}` at {raw}, where --wrap puts ferry; \
                 remove that mount",
                name_of(m).unwrap_or("?")
            )));
        }
    }
    Ok(())
}
