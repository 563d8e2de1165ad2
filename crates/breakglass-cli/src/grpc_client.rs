//! How the CLI reaches the services' gRPC APIs: the address, the bearer
//! token (from `$BREAKGLASS_GRPC_TOKEN` or `--token-file`, never argv),
//! TLS with a private CA and a client certificate for mutual TLS, and the
//! person named in the audit log.
//!
//! The token is never sent in clear text beyond this machine: a plain
//! `http://` address whose host is not loopback is refused before anything
//! is read or connected, unless `--insecure` says so.

use anyhow::Context;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

/// Flags shared by the commands that call a gRPC API.
#[derive(Debug, clap::Args)]
pub struct GrpcArgs {
    /// The scheduler's gRPC address (`https://` when it serves TLS).
    #[arg(
        long,
        env = "BREAKGLASS_GRPC_URL",
        default_value = "http://127.0.0.1:50051"
    )]
    pub grpc: String,
    /// A file whose first line is the bearer token (else
    /// $BREAKGLASS_GRPC_TOKEN).
    #[arg(long)]
    pub token_file: Option<std::path::PathBuf>,
    /// PEM CA that signed the server's certificate (else the system's).
    #[arg(long, env = "BREAKGLASS_GRPC_CA")]
    pub grpc_ca: Option<std::path::PathBuf>,
    /// PEM client certificate, for servers that require mutual TLS.
    #[arg(long, env = "BREAKGLASS_GRPC_CERT", requires = "grpc_key")]
    pub grpc_cert: Option<std::path::PathBuf>,
    /// PEM private key of `--grpc-cert`.
    #[arg(long, env = "BREAKGLASS_GRPC_KEY", requires = "grpc_cert")]
    pub grpc_key: Option<std::path::PathBuf>,
    /// Who you are, for the audit log of settings changes (default: $USER).
    #[arg(long, env = "BREAKGLASS_ACTOR")]
    pub actor: Option<String>,
    /// Send the bearer token over plain http:// to a host that is not this
    /// machine (anyone on the path can read it and the settings).
    #[arg(long, env = "BREAKGLASS_GRPC_INSECURE")]
    pub insecure: bool,
}

/// Whether `url`'s host is this machine: `localhost`, 127.0.0.0/8, `::1`.
fn is_loopback_host(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Refuses a plain `http://` address to another host unless `insecure`.
fn check_plaintext(url: &str, insecure: bool) -> anyhow::Result<()> {
    let Ok(uri) = url.parse::<tonic::codegen::http::Uri>() else {
        return Ok(()); // reported by the connect step with the right words
    };
    let plain = uri
        .scheme_str()
        .is_some_and(|s| s.eq_ignore_ascii_case("http"));
    let host = uri.host().unwrap_or_default();
    if plain && !insecure && !is_loopback_host(host) {
        anyhow::bail!(
            "--grpc {url}: refusing to send the bearer token in clear text to {host}, which is not this machine; use https:// (the service's grpc_tls_cert), or add --insecure (BREAKGLASS_GRPC_INSECURE=true) to send it anyway"
        );
    }
    Ok(())
}

/// Adds `authorization: Bearer <token>` (and the actor) to every call.
#[derive(Clone)]
pub struct CallHeaders {
    token: tonic::metadata::MetadataValue<tonic::metadata::Ascii>,
    actor: Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>,
}

impl tonic::service::Interceptor for CallHeaders {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        request
            .metadata_mut()
            .insert("authorization", self.token.clone());
        if let Some(actor) = &self.actor {
            request
                .metadata_mut()
                .insert("x-breakglass-actor", actor.clone());
        }
        Ok(request)
    }
}

impl GrpcArgs {
    /// Connects and reads the token; `what` names the API in errors.
    pub async fn connect(&self, what: &str) -> anyhow::Result<(Channel, CallHeaders)> {
        check_plaintext(&self.grpc, self.insecure)?;
        let token = match &self.token_file {
            Some(path) => breakglass_core::limits::read_text(
                path,
                breakglass_core::limits::MAX_SECRET_FILE_BYTES,
                "the token file",
            )?
            .lines()
            .next()
            .unwrap_or_default()
            .to_owned(),
            None => std::env::var("BREAKGLASS_GRPC_TOKEN").unwrap_or_default(),
        };
        if token.is_empty() {
            anyhow::bail!(
                "the {what} needs its bearer token: set BREAKGLASS_GRPC_TOKEN or --token-file"
            );
        }
        let mut token: tonic::metadata::MetadataValue<tonic::metadata::Ascii> =
            format!("Bearer {token}")
                .parse()
                .map_err(|_| anyhow::anyhow!("the token holds characters a header cannot carry"))?;
        token.set_sensitive(true);
        let actor = self
            .actor
            .clone()
            .or_else(|| std::env::var("USER").ok())
            .filter(|a| !a.is_empty())
            .map(|a| {
                a.parse()
                    .map_err(|_| anyhow::anyhow!("--actor {a:?}: not printable ASCII"))
            })
            .transpose()?;
        let mut endpoint = Channel::from_shared(self.grpc.clone()).map_err(|_| {
            anyhow::anyhow!(
                "--grpc {:?}: not a URL such as http://scheduler:50051",
                self.grpc
            )
        })?;
        let tls_wanted =
            self.grpc.starts_with("https://") || self.grpc_ca.is_some() || self.grpc_cert.is_some();
        if tls_wanted {
            if !self.grpc.starts_with("https://") {
                anyhow::bail!(
                    "--grpc {:?}: TLS options were given, so the address must start with https://",
                    self.grpc
                );
            }
            let read = |path: &std::path::PathBuf, flag: &str| {
                breakglass_core::limits::read_file(
                    path,
                    breakglass_core::limits::MAX_PEM_FILE_BYTES,
                    flag,
                )
            };
            let mut tls = ClientTlsConfig::new();
            tls = match &self.grpc_ca {
                Some(ca) => tls.ca_certificate(Certificate::from_pem(read(ca, "--grpc-ca")?)),
                None => tls.with_enabled_roots(),
            };
            if let (Some(cert), Some(key)) = (&self.grpc_cert, &self.grpc_key) {
                tls = tls.identity(Identity::from_pem(
                    read(cert, "--grpc-cert")?,
                    read(key, "--grpc-key")?,
                ));
            }
            endpoint = endpoint
                .tls_config(tls)
                .context("the TLS settings for --grpc are not usable")?;
        }
        let channel = endpoint
            .connect()
            .await
            .with_context(|| format!("cannot reach the {what} at {}", self.grpc))?;
        Ok((channel, CallHeaders { token, actor }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_http_is_refused_beyond_loopback_unless_insecure() {
        for ok in [
            "http://127.0.0.1:50051",
            "http://127.9.9.9:1",
            "http://localhost:50051",
            "http://LOCALHOST",
            "http://[::1]:50051",
            "https://10.255.255.1:1",
            "https://scheduler.example:443",
        ] {
            assert!(check_plaintext(ok, false).is_ok(), "{ok}");
        }
        for refused in [
            "http://10.255.255.1:1",
            "http://0.0.0.0:50051",
            "http://[::]:1",
            "HTTP://scheduler.example",
            "http://localhost.attacker.example",
            "http://127.0.0.1.nip.io",
        ] {
            let err = check_plaintext(refused, false).unwrap_err().to_string();
            assert!(
                err.contains("--insecure") && err.contains("https://"),
                "{err}"
            );
            assert!(check_plaintext(refused, true).is_ok(), "{refused}");
        }
    }
}
