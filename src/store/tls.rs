//! TLS for every client ferry's SDK makes (S3, and STS for web identity credentials): the CAs
//! they trust (`AWS_CA_BUNDLE` on top of the system roots) and telling a failed TLS handshake
//! (an untrusted certificate, an endpoint that does not speak TLS: fatal at once) from a network
//! error (retried).

use crate::env;
use crate::error::{Error, Result};
use aws_sdk_s3::config::SharedHttpClient;
use aws_smithy_http_client::tls::{self, TlsContext, TrustStore, rustls_provider::CryptoMode};
use aws_smithy_runtime_api::box_error::BoxError;
use aws_smithy_runtime_api::client::connector_metadata::ConnectorMetadata;
use aws_smithy_runtime_api::client::http::{
    HttpClient, HttpConnector, HttpConnectorFuture, HttpConnectorSettings, SharedHttpConnector,
};
use aws_smithy_runtime_api::client::orchestrator::HttpRequest;
use aws_smithy_runtime_api::client::result::ConnectorError;
use aws_smithy_runtime_api::client::runtime_components::{
    RuntimeComponents, RuntimeComponentsBuilder,
};
use aws_smithy_types::config_bag::ConfigBag;

/// The SDK's own HTTPS client (rustls) trusting the system roots plus the certificates of
/// `AWS_CA_BUNDLE`, whose failed handshakes are final (see [`FinalHandshake`]). The system roots
/// are `/etc/ssl/certs/ca-certificates.crt` and friends, or `SSL_CERT_FILE` / `SSL_CERT_DIR`
/// instead when set (rustls-native-certs reads them).
pub fn http_client() -> Result<SharedHttpClient> {
    check_ssl_cert_file()?;
    check_ssl_cert_dir()?;
    let builder = aws_smithy_http_client::Builder::new()
        .tls_provider(tls::Provider::Rustls(CryptoMode::AwsLc));
    let client = match ca_bundle()? {
        Some(context) => builder.tls_context(context).build_https(),
        None => builder.build_https(),
    };
    Ok(SharedHttpClient::new(FinalHandshake(client)))
}

/// A TLS context trusting `AWS_CA_BUNDLE`'s certificates besides the system roots, if it is set.
fn ca_bundle() -> Result<Option<TlsContext>> {
    let path = match std::env::var(env::AWS_CA_BUNDLE) {
        Ok(p) if !p.is_empty() => p,
        _ => return Ok(None),
    };
    let bad = |why: String| Error::Config(format!("{}={path}: {why}", env::AWS_CA_BUNDLE));
    let pem = std::fs::read(&path).map_err(|e| bad(format!("cannot read it: {e}")))?;
    // The SDK parses the bundle lazily and panics on a bad one: check it here first.
    check_bundle(&pem).map_err(|why| bad(format!("{why}; give a PEM file of CA certificates")))?;
    let trust = TrustStore::default().with_pem_certificate(pem);
    let context = TlsContext::builder()
        .with_trust_store(trust)
        .build()
        .map_err(|e| bad(e.to_string()))?;
    Ok(Some(context))
}

/// `SSL_CERT_FILE` replaces the system roots: a typo in it would make every endpoint, AWS's
/// too, look untrusted. Checked like `AWS_CA_BUNDLE`, so the line names the real cause.
fn check_ssl_cert_file() -> Result<()> {
    let path = match std::env::var("SSL_CERT_FILE") {
        Ok(p) if !p.is_empty() => p,
        _ => return Ok(()),
    };
    let bad = |why: String| Error::Config(format!("SSL_CERT_FILE={path}: {why}"));
    let pem = std::fs::read(&path).map_err(|e| bad(format!("cannot read it: {e}")))?;
    check_bundle(&pem)
        .map(|_| ())
        .map_err(|why| bad(format!("{why}; give a PEM file of CA certificates")))
}

/// `SSL_CERT_DIR` replaces the system roots too: it must be a directory ferry can list.
fn check_ssl_cert_dir() -> Result<()> {
    let path = match std::env::var("SSL_CERT_DIR") {
        Ok(p) if !p.is_empty() => p,
        _ => return Ok(()),
    };
    std::fs::read_dir(&path).map(|_| ()).map_err(|e| {
        Error::Config(format!(
            "SSL_CERT_DIR={path}: cannot list it ({e}); give a directory of PEM CA certificates"
        ))
    })
}

/// The number of certificates in a PEM bundle, each usable as a trust anchor.
pub fn check_bundle(pem: &[u8]) -> std::result::Result<usize, String> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| format!("not PEM ({e})"))?;
    if certs.is_empty() {
        return Err("holds no PEM certificate".into());
    }
    let n = certs.len();
    let mut roots = rustls::RootCertStore::empty();
    for cert in certs {
        roots
            .add(cert)
            .map_err(|e| format!("a certificate in it is unusable ({e})"))?;
    }
    Ok(n)
}

/// How error lines name the endpoint: `AWS_ENDPOINT_URL` (or the profile's), else AWS's own.
pub fn endpoint_name(sdk: &aws_config::SdkConfig, bucket: &str) -> String {
    match sdk.endpoint_url() {
        Some(url) => url.to_string(),
        None => {
            let region = sdk.region().map(|r| r.as_ref()).unwrap_or("us-east-1");
            format!("https://{bucket}.s3.{region}.amazonaws.com")
        }
    }
}

/// What went wrong in the TLS handshake, found somewhere in an error's chain, as the rest of an
/// error line: an untrusted certificate (`UnknownIssuer`, `NotValidForName`, `Expired`…) and the
/// fix, or another handshake failure (e.g. `https://` to a plain-HTTP port).
pub fn handshake_error(e: &(dyn std::error::Error + 'static)) -> Option<String> {
    let mut cur = Some(e);
    while let Some(err) = cur {
        match err.downcast_ref::<rustls::Error>() {
            Some(rustls::Error::InvalidCertificate(c)) => {
                return Some(format!(
                    "TLS certificate not trusted ({c}); {}",
                    certificate_fix(c)
                ));
            }
            Some(other) => {
                return Some(format!(
                    "TLS handshake failed ({other}); check that the endpoint speaks HTTPS on that \
                     port (or give it as http://)"
                ));
            }
            None => {}
        }
        // `io::Error::source` skips the error it wraps: look inside it too.
        if let Some(inner) = err
            .downcast_ref::<std::io::Error>()
            .and_then(std::io::Error::get_ref)
            && let Some(found) = handshake_error(inner)
        {
            return Some(found);
        }
        cur = err.source();
    }
    None
}

/// What to do about a certificate the client refused.
fn certificate_fix(c: &rustls::CertificateError) -> String {
    use rustls::CertificateError::*;
    match c {
        UnknownIssuer | BadSignature => match std::env::var(env::AWS_CA_BUNDLE) {
            Ok(path) if !path.is_empty() => format!(
                "its CA is not in {}={path}: add the CA that signed it",
                env::AWS_CA_BUNDLE
            ),
            _ => format!(
                "if it is signed by a private CA, set {} to a PEM file holding that CA",
                env::AWS_CA_BUNDLE
            ),
        },
        NotValidForName | NotValidForNameContext { .. } => {
            "give the endpoint by a name the certificate was issued for".into()
        }
        Expired | ExpiredContext { .. } | NotValidYet | NotValidYetContext { .. } => {
            "renew the certificate, or check the node's clock".into()
        }
        _ => "ask the endpoint's operator for a certificate a standard client accepts".into(),
    }
}

/// An HTTP client whose failed TLS handshakes are not retried: the next attempt fails the same
/// way. The SDK's standard retry treats a connector's I/O error as transient (it retried an
/// untrusted certificate for ~40 s, and STS did so inside every credentials lookup); the same error
/// as a connector error of kind "other" is final, for S3, STS and every other client alike.
#[derive(Debug)]
struct FinalHandshake(SharedHttpClient);

impl HttpClient for FinalHandshake {
    fn http_connector(
        &self,
        settings: &HttpConnectorSettings,
        components: &RuntimeComponents,
    ) -> SharedHttpConnector {
        SharedHttpConnector::new(FinalHandshakeConnector(
            self.0.http_connector(settings, components),
        ))
    }

    fn validate_base_client_config(
        &self,
        components: &RuntimeComponentsBuilder,
        cfg: &ConfigBag,
    ) -> std::result::Result<(), BoxError> {
        self.0.validate_base_client_config(components, cfg)
    }

    fn validate_final_config(
        &self,
        components: &RuntimeComponents,
        cfg: &ConfigBag,
    ) -> std::result::Result<(), BoxError> {
        self.0.validate_final_config(components, cfg)
    }

    fn connector_metadata(&self) -> Option<ConnectorMetadata> {
        self.0.connector_metadata()
    }
}

#[derive(Debug)]
struct FinalHandshakeConnector(SharedHttpConnector);

impl HttpConnector for FinalHandshakeConnector {
    fn call(&self, request: HttpRequest) -> HttpConnectorFuture {
        let call = self.0.call(request);
        HttpConnectorFuture::new(async move {
            call.await.map_err(|e| match handshake_error(&e) {
                Some(_) => ConnectorError::other(e.into(), None),
                None => e,
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bundle_without_a_certificate_is_refused() {
        assert!(check_bundle(b"").is_err());
        assert!(check_bundle(b"hello\n").is_err());
        let garbage = b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
        assert!(check_bundle(garbage).is_err());
    }

    #[test]
    fn a_handshake_error_is_found_inside_an_io_error() {
        let rustls_err = rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer);
        let io = std::io::Error::new(std::io::ErrorKind::InvalidData, rustls_err);
        let line = handshake_error(&io).unwrap();
        assert!(
            line.contains("(UnknownIssuer)") && line.contains("AWS_CA_BUNDLE"),
            "{line}"
        );
        let other = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        assert_eq!(handshake_error(&other), None);
    }
}
