//! Telling a failed credentials lookup (STS for IRSA, the Pod Identity agent, no source at all)
//! from S3's answer to a request, and saying it in one line with the right exit code.

use crate::env;
use crate::error::{Error, in_words};
use aws_credential_types::provider::error::CredentialsError;
use aws_smithy_runtime_api::client::result::ConnectorError;
use std::error::Error as StdError;

/// How error lines name where credentials come from: the STS endpoint of web identity (IRSA),
/// the Pod Identity / container credentials endpoint, else the SDK's provider chain.
pub fn source(sdk: &aws_config::SdkConfig) -> String {
    let var = |name| std::env::var(name).ok().filter(|v: &String| !v.is_empty());
    if let (Some(token), Some(role)) = (var(env::AWS_WEB_IDENTITY_TOKEN_FILE), var("AWS_ROLE_ARN"))
    {
        let region = sdk.region().map(|r| r.as_ref()).unwrap_or("us-east-1");
        let sts = var(env::AWS_ENDPOINT_URL_STS)
            .or_else(|| var(env::AWS_ENDPOINT_URL))
            .unwrap_or_else(|| format!("https://sts.{region}.amazonaws.com"));
        return format!("STS endpoint {sts} (web identity: role {role}, token file {token})");
    }
    match var(env::AWS_CONTAINER_CREDENTIALS_FULL_URI) {
        Some(uri) => format!("credentials endpoint {uri} (Pod Identity)"),
        None => "the AWS credentials chain".into(),
    }
}

/// The error for a failed credentials lookup in `e`'s chain, `None` if there is none (S3
/// answered). `source` is [`source`]'s name for where credentials come from.
pub fn lookup_error(
    e: &(dyn StdError + 'static),
    source: &str,
    op: &'static str,
    bucket: &str,
    key: &str,
) -> Option<Error> {
    let Some(lookup) = chain(e).find_map(|err| err.downcast_ref::<CredentialsError>()) else {
        // The SDK's identity cache gave up waiting (see `Store::connect`'s load timeout).
        let timed_out =
            chain(e).find(|err| err.to_string().contains("identity resolver timed out"))?;
        return Some(unanswered(source, op, bucket, key, in_words(timed_out)));
    };
    if let CredentialsError::CredentialsNotLoaded(_) = lookup {
        return Some(Error::NoCredentials {
            from: "any source".into(),
            reason: format!(
                "none is configured: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (inject \
                 --credentials-secret), or IRSA (AWS_ROLE_ARN and AWS_WEB_IDENTITY_TOKEN_FILE), \
                 or Pod Identity; the SDK tried: {}",
                in_words(lookup)
            ),
        });
    }
    let answered = answer(lookup);
    let reason = answered
        .clone()
        .unwrap_or_else(|| status_in_words(&in_words(lookup)));
    if reason.contains("HTTP 5") || busy(&reason) || (answered.is_none() && unreachable(lookup)) {
        return Some(unanswered(source, op, bucket, key, reason));
    }
    Some(Error::NoCredentials {
        from: source.to_string(),
        reason,
    })
}

/// Like S3 itself not answering: retried, then exit 4.
fn unanswered(source: &str, op: &'static str, bucket: &str, key: &str, reason: String) -> Error {
    Error::S3 {
        op,
        bucket: bucket.to_string(),
        key: key.to_string(),
        message: format!("no credentials: {source} is unreachable or failing: {reason}"),
    }
}

fn chain<'a>(
    e: &'a (dyn StdError + 'static),
) -> impl Iterator<Item = &'a (dyn StdError + 'static)> {
    std::iter::successors(Some(e), |&err| err.source())
}

/// The code and message of the service that answered (`AccessDenied: role not found: ferry`).
fn answer(e: &(dyn StdError + 'static)) -> Option<String> {
    let meta =
        chain(e).find_map(|err| err.downcast_ref::<aws_smithy_types::error::ErrorMetadata>())?;
    let code = meta.code().unwrap_or("error");
    Some(format!(
        "{code}: {}",
        meta.message().unwrap_or("no message")
    ))
}

/// STS answered, but with an error its documentation calls retryable (throttled, unavailable).
fn busy(reason: &str) -> bool {
    const CODES: [&str; 5] = [
        "Throttling:",
        "ServiceUnavailable:",
        "InternalFailure:",
        "IDPCommunicationError:",
        "RequestLimitExceeded:",
    ];
    CODES.iter().any(|c| reason.starts_with(c))
}

/// Below the failed lookup: a network error or a timeout, no answer.
fn unreachable(lookup: &(dyn StdError + 'static)) -> bool {
    chain(lookup).any(|err| {
        err.is::<ConnectorError>()
            || matches!(
                err.downcast_ref::<CredentialsError>(),
                Some(CredentialsError::ProviderTimedOut(_))
            )
    })
}

/// The SDK's `StatusCode(403)` as `HTTP 403`.
fn status_in_words(text: &str) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(at) = rest.find("StatusCode(") {
        let after = &rest[at + "StatusCode(".len()..];
        let Some(end) = after.find(')') else { break };
        out.push_str(&rest[..at]);
        out.push_str("HTTP ");
        out.push_str(&after[..end]);
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_throttled_or_unavailable_sts_is_retryable_not_a_refusal() {
        assert!(busy("Throttling: Rate exceeded"));
        assert!(busy("ServiceUnavailable: try again"));
        assert!(!busy("AccessDenied: role not found: ferry"));
    }

    #[test]
    fn a_status_code_reads_as_http_and_its_number() {
        assert_eq!(
            status_in_words("Non-success status from HTTP credential provider: StatusCode(403)"),
            "Non-success status from HTTP credential provider: HTTP 403"
        );
        assert_eq!(
            status_in_words("a StatusCode(502) b (c)"),
            "a HTTP 502 b (c)"
        );
        assert_eq!(status_in_words("no status"), "no status");
    }
}
