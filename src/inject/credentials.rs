//! Who in the pod gets S3 credentials: ferry's containers, never the tool's (which run code the
//! head does not trust).
//!
//! - IRSA and EKS Pod Identity: the pod identity webhook injects the role (`AWS_ROLE_ARN` +
//!   `AWS_WEB_IDENTITY_TOKEN_FILE`, or `AWS_CONTAINER_CREDENTIALS_FULL_URI` +
//!   `AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE`, and the token volume) into every container except
//!   those the pod annotation `eks.amazonaws.com/skip-containers` names. Read in
//!   aws/amazon-eks-pod-identity-webhook (commit 3bf80a3): `pkg/annotations.go` defines
//!   `SkipContainersAnnotation = "skip-containers"` ("a comma-separated list of container names
//!   to skip adding environment variables and volumes to. Applies to `initContainers` and
//!   `containers`"), prefixed with the webhook's `--annotation-prefix` (default
//!   `eks.amazonaws.com`); `pkg/handler/handler.go` `getContainersToSkip` reads the value of the
//!   *pod's* annotations with Go's `encoding/csv` (one record, no space trimming: write
//!   `a,b`, not `a, b`) and skips those names for both the web-identity and the
//!   container-credentials (Pod Identity) mutation. So: pod template metadata, names joined
//!   by `,`.
//! - Static keys: `--credentials-secret NAME` references a Kubernetes Secret (keys
//!   `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, optional `AWS_SESSION_TOKEN`) from ferry's
//!   containers only; `--env` refuses them as plain values, which anyone who can read the Job
//!   could see.

use super::{is_ferry_container, map, name_of, pod_spec, seq_mut};
use crate::error::{Error, Result};
use serde_yaml_ng::{Mapping, Value};

/// The pod annotation the EKS pod identity webhook reads (see the module comment).
pub const SKIP_CONTAINERS: &str = "eks.amazonaws.com/skip-containers";

/// Environment variables that carry a credential: never plain values in a Job spec.
pub const CREDENTIAL_NAMES: [&str; 5] = [
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_SECURITY_TOKEN",
    "AWS_CONTAINER_AUTHORIZATION_TOKEN",
];

/// `(variable, key in the Secret, optional)` of `--credentials-secret`.
const SECRET_KEYS: [(&str, bool); 3] = [
    ("AWS_ACCESS_KEY_ID", false),
    ("AWS_SECRET_ACCESS_KEY", false),
    ("AWS_SESSION_TOKEN", true),
];

/// `--env` must not carry a credential as a plain value.
pub fn refuse_plain_credentials(env: &[(String, String)]) -> Result<()> {
    match env
        .iter()
        .find(|(name, _)| CREDENTIAL_NAMES.contains(&name.as_str()))
    {
        Some((name, _)) => Err(Error::Config(format!(
            "--env {name}=…: a credential would be a plain value in the Job spec, readable by \
             anyone who can read the Job; put the keys in a Kubernetes Secret (keys \
             AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY) and pass --credentials-secret NAME, or \
             use IRSA / EKS Pod Identity"
        ))),
        None => Ok(()),
    }
}

/// `--credentials-secret NAME`: a Secret's name (a DNS-1123 subdomain).
pub fn check_secret_name(name: &str) -> Result<&str> {
    let ok = !name.is_empty()
        && name.len() <= 253
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric());
    if ok {
        Ok(name)
    } else {
        Err(Error::Config(format!(
            "--credentials-secret `{name}` is not a Kubernetes Secret name (lowercase letters, \
             digits, `-` and `.`)"
        )))
    }
}

/// After injection: ferry's containers read the Secret (if any); every other container is named
/// in the skip-containers annotation, so the pod identity webhook gives it no credential.
pub fn isolate(doc: &mut Value, secret: Option<&str>) -> Result<()> {
    let spec = pod_spec(doc)?;
    let mut others = Vec::new();
    for list in ["initContainers", "containers"] {
        for c in spec
            .get_mut(list)
            .and_then(Value::as_sequence_mut)
            .into_iter()
            .flatten()
        {
            let name = name_of(c).unwrap_or_default().to_string();
            if !is_ferry_container(&name) {
                others.push(name);
            } else if let (Some(secret), Some(c)) = (secret, c.as_mapping_mut()) {
                reference_secret(c, secret)?;
            }
        }
    }
    match pod_metadata(doc) {
        Some(meta) => annotate(meta, &others),
        None => {
            tracing::warn!(
                "a bare pod spec has no metadata: add the annotation {SKIP_CONTAINERS}: \"{}\" \
                 to its pod template yourself, or IRSA / Pod Identity also gives the tool credentials",
                others.join(",")
            );
            Ok(())
        }
    }
}

/// The env entries of `--credentials-secret`, replacing any of the same name.
fn reference_secret(c: &mut Mapping, secret: &str) -> Result<()> {
    let env = seq_mut(c, "env", None)?;
    env.retain(|e| !name_of(e).is_some_and(|n| SECRET_KEYS.iter().any(|(k, _)| *k == n)));
    for (key, optional) in SECRET_KEYS {
        let mut r = map([("name", secret.into()), ("key", key.into())]);
        if optional && let Some(r) = r.as_mapping_mut() {
            r.insert("optional".into(), true.into());
        }
        let from = map([("secretKeyRef", r)]);
        env.push(map([("name", key.into()), ("valueFrom", from)]));
    }
    Ok(())
}

/// The pod template's metadata (created if absent); `None` for a bare pod spec.
fn pod_metadata(doc: &mut Value) -> Option<&mut Mapping> {
    let top = doc.as_mapping_mut()?;
    let path: &[&str] = match top.get("kind").and_then(Value::as_str) {
        Some("Job") => &["spec", "template"],
        Some("PodTemplate") => &["template"],
        Some(_) => &[],
        None if top.contains_key("containers") => return None,
        None => &[],
    };
    let mut m = top;
    for key in path {
        m = m.get_mut(*key)?.as_mapping_mut()?;
    }
    if !m.get("metadata").is_some_and(Value::is_mapping) {
        m.insert("metadata".into(), Value::Mapping(Mapping::new()));
    }
    m.get_mut("metadata")?.as_mapping_mut()
}

/// Adds `names` to the skip-containers annotation, keeping names already there (but never
/// ferry's own containers, which need the credentials).
fn annotate(meta: &mut Mapping, names: &[String]) -> Result<()> {
    if !meta.get("annotations").is_some_and(Value::is_mapping) {
        meta.insert("annotations".into(), Value::Mapping(Mapping::new()));
    }
    let Some(annotations) = meta.get_mut("annotations").and_then(Value::as_mapping_mut) else {
        return Ok(());
    };
    let existing = annotations
        .get(SKIP_CONTAINERS)
        .and_then(Value::as_str)
        .unwrap_or_default();
    let mut all: Vec<String> = existing
        .split(',')
        .map(str::trim)
        .filter(|n| !n.is_empty() && !is_ferry_container(n))
        .map(str::to_string)
        .collect();
    for n in names {
        if !all.contains(n) {
            all.push(n.clone());
        }
    }
    annotations.insert(SKIP_CONTAINERS.into(), all.join(",").into());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::tests::{JOB, opts, spec};
    use super::super::{SidecarKind, inject_with_credentials};
    use super::*;
    use crate::manifest::tests::sample;

    fn injected(input: &str, sidecar: SidecarKind, secret: Option<&str>) -> Value {
        let out = inject_with_credentials(input, &sample(), &opts(sidecar), secret).unwrap();
        serde_yaml_ng::from_str(&out).unwrap()
    }

    fn env_names(c: &Value) -> Vec<String> {
        c["env"]
            .as_sequence()
            .into_iter()
            .flatten()
            .filter_map(|e| e["name"].as_str().map(str::to_string))
            .collect()
    }

    #[test]
    fn the_tool_containers_are_named_in_the_pod_identity_skip_annotation() {
        for mode in [SidecarKind::Native, SidecarKind::SharedPid] {
            let out = injected(JOB, mode, None);
            let skip = &out["spec"]["template"]["metadata"]["annotations"][SKIP_CONTAINERS];
            assert_eq!(skip.as_str(), Some("tool"), "{mode:?}");
            assert_eq!(
                out["spec"]["template"]["metadata"]["annotations"]["note"].as_str(),
                Some("kept")
            );
        }
    }

    #[test]
    fn the_skip_annotation_keeps_its_names_lists_user_init_containers_and_never_ferry() {
        let input = JOB.replace(
            "        note: kept\n",
            "        note: kept\n        eks.amazonaws.com/skip-containers: \"other,ferry-init\"\n",
        );
        let input = input.replace(
            "      containers:\n",
            "      initContainers:\n      - name: prepare\n        image: busybox\n      containers:\n",
        );
        let out = injected(&input, SidecarKind::Native, None);
        let skip = &out["spec"]["template"]["metadata"]["annotations"][SKIP_CONTAINERS];
        assert_eq!(skip.as_str(), Some("other,prepare,tool"));
        // Injecting again changes nothing.
        let again = inject_with_credentials(
            &serde_yaml_ng::to_string(&out).unwrap(),
            &sample(),
            &opts(SidecarKind::Native),
            None,
        )
        .unwrap();
        assert_eq!(serde_yaml_ng::from_str::<Value>(&again).unwrap(), out);
    }

    #[test]
    fn a_credentials_secret_reaches_ferrys_containers_only_by_reference() {
        for mode in [SidecarKind::Native, SidecarKind::SharedPid] {
            let out = injected(JOB, mode, Some("ferry-s3"));
            let s = spec(&out);
            let mut ferry_containers = 0;
            for list in ["initContainers", "containers"] {
                for c in s[list].as_sequence().into_iter().flatten() {
                    let name = c["name"].as_str().unwrap();
                    let names = env_names(c);
                    if is_ferry_container(name) {
                        ferry_containers += 1;
                        for (key, optional) in SECRET_KEYS {
                            let e = c["env"]
                                .as_sequence()
                                .unwrap()
                                .iter()
                                .find(|e| e["name"].as_str() == Some(key))
                                .unwrap();
                            assert!(e.get("value").is_none(), "{name}: {key} is plain");
                            let r = &e["valueFrom"]["secretKeyRef"];
                            assert_eq!(r["name"].as_str(), Some("ferry-s3"));
                            assert_eq!(r["key"].as_str(), Some(key));
                            assert_eq!(r["optional"].as_bool(), optional.then_some(true));
                        }
                    } else {
                        assert!(
                            names
                                .iter()
                                .all(|n| !CREDENTIAL_NAMES.contains(&n.as_str())),
                            "{name} got a credential"
                        );
                    }
                }
            }
            assert_eq!(ferry_containers, 2, "{mode:?}");
        }
    }

    #[test]
    fn env_refuses_a_credential_as_a_plain_value() {
        for name in CREDENTIAL_NAMES {
            let env = [(name.to_string(), "x".to_string())];
            let e = refuse_plain_credentials(&env).unwrap_err();
            assert_eq!(e.exit_code().code(), 2);
            let line = e.to_string();
            assert!(
                line.contains(name) && line.contains("--credentials-secret"),
                "{line}"
            );
            assert!(!line.contains("=x"), "the value must not be echoed: {line}");
        }
        let fine = [("AWS_ENDPOINT_URL".to_string(), "http://s3".to_string())];
        assert!(refuse_plain_credentials(&fine).is_ok());
    }

    #[test]
    fn a_secret_name_must_be_a_kubernetes_name() {
        assert!(check_secret_name("ferry-s3.creds").is_ok());
        for bad in ["", "Ferry", "a_b", "-a", "a-", "a b"] {
            assert!(check_secret_name(bad).is_err(), "{bad}");
        }
    }
}
