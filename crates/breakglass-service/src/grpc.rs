//! Authentication of the services' gRPC APIs: a bearer token.
//!
//! Every call must carry `authorization: Bearer <token>`, the token being
//! the `grpc_token` setting or `$BREAKGLASS_GRPC_TOKEN` (the environment
//! wins, so a Kubernetes Secret can provide it apart from the config file).
//! Refused calls answer UNAUTHENTICATED and are logged with the peer and the
//! reason, never with the token presented or expected. The token is
//! compared in constant time (`subtle`).
//!
//! Every request body is capped at [`MAX_REQUEST_BYTES`]: a bigger one is
//! refused with RESOURCE_EXHAUSTED before it is held in memory. A port
//! bound beyond loopback without TLS warns at start, once.
//!
//! Every gRPC port also answers, without a token, `grpc.health.v1.Health`
//! (Kubernetes gRPC probes, `grpc_health_probe`) and server reflection v1
//! and v1alpha (`grpcurl` without the `.proto` files): neither tells more
//! than the public `.proto` files and "serving or not".

use breakglass_config::RawConfig;
use breakglass_core::Secret;

/// The environment variable that provides the token.
pub const TOKEN_ENV: &str = "BREAKGLASS_GRPC_TOKEN";
/// The config key that provides the token.
pub const TOKEN_KEY: &str = "grpc_token";
/// The shortest token accepted: a guessable token is no protection.
pub const MIN_TOKEN_CHARS: usize = breakglass_config::settings::MIN_GRPC_TOKEN_CHARS;
/// The largest request body any gRPC API accepts (every request is a few
/// KiB of settings at most).
pub const MAX_REQUEST_BYTES: usize = breakglass_core::limits::MAX_GRPC_REQUEST_BYTES;

/// Why no usable token was found.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TokenError {
    /// Neither the environment nor the config file has one.
    #[error("the gRPC API needs a bearer token: set grpc_token in the config file or {TOKEN_ENV}")]
    Missing,
    /// The token is too short.
    #[error(
        "the gRPC token ({TOKEN_KEY} / {TOKEN_ENV}) must be at least {MIN_TOKEN_CHARS} characters"
    )]
    TooShort,
}

/// The token from `$BREAKGLASS_GRPC_TOKEN` (given as `env`) or the config.
pub fn token_from(env: Option<String>, raw: &RawConfig) -> Result<Secret, TokenError> {
    let token = env
        .filter(|t| !t.is_empty())
        .or_else(|| raw.get(TOKEN_KEY).map(|v| v.value.clone()))
        .ok_or(TokenError::Missing)?;
    if token.chars().count() < MIN_TOKEN_CHARS {
        return Err(TokenError::TooShort);
    }
    Ok(Secret::new(token))
}

/// A bound gRPC port: its listener, the bearer-token check and, when
/// `grpc_tls_cert` / `grpc_tls_key` are set, TLS (mutual TLS with
/// `grpc_client_ca`).
#[derive(Debug)]
pub struct GrpcPort {
    listener: tokio::net::TcpListener,
    auth: BearerAuth,
    tls: Option<tonic::transport::ServerTlsConfig>,
    /// Service names health reports as SERVING besides the served one's.
    also_serving: Vec<&'static str>,
}

/// Binds a service's gRPC API on `addr` and reads its bearer token
/// (`$BREAKGLASS_GRPC_TOKEN`, else `grpc_token` in the config file) and TLS
/// files, so `--grpc` fails at start-up with one line when any is wrong.
pub async fn listen(
    addr: std::net::SocketAddr,
    config: &crate::ConfigSource,
) -> anyhow::Result<GrpcPort> {
    use anyhow::Context;
    let raw = config.raw_file()?;
    let token = token_from(std::env::var(TOKEN_ENV).ok(), &raw)?;
    let wiring = breakglass_config::Settings::from_raw(&raw)?;
    let tls = match &wiring.grpc_tls {
        Some(files) => Some(server_tls(files)?),
        None => None,
    };
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr} for the gRPC API (--grpc)"))?;
    let local = listener.local_addr().unwrap_or(addr);
    if let Some(warning) = plaintext_warning(local, tls.is_some()) {
        tracing::warn!(addr = %local, "{warning}");
    }
    tracing::info!(
        addr = %local,
        tls = tls.is_some(),
        client_certificates = wiring.grpc_tls.as_ref().is_some_and(|t| t.client_ca.is_some()),
        "gRPC API listening"
    );
    Ok(GrpcPort {
        listener,
        auth: BearerAuth::new(token),
        tls,
        also_serving: Vec::new(),
    })
}

/// The start-up warning for a port that others can reach in plain text:
/// the bearer token and the settings would cross the network readable.
pub fn plaintext_warning(addr: std::net::SocketAddr, tls: bool) -> Option<String> {
    (!tls && !addr.ip().is_loopback()).then(|| {
        format!(
            "gRPC API on {addr} without TLS: the bearer token and settings cross the network in clear text; set grpc_tls_cert and grpc_tls_key, or bind --grpc to 127.0.0.1"
        )
    })
}

/// The server side of TLS from the PEM files; with a client CA, clients
/// must present a certificate that chains to it.
fn server_tls(
    files: &breakglass_config::GrpcTlsFiles,
) -> anyhow::Result<tonic::transport::ServerTlsConfig> {
    use anyhow::Context as _;
    let read = |path: &std::path::PathBuf, key: &str| {
        breakglass_core::limits::read_file(path, breakglass_core::limits::MAX_PEM_FILE_BYTES, key)
            .context("the gRPC TLS files")
    };
    let identity = tonic::transport::Identity::from_pem(
        read(&files.cert, "grpc_tls_cert")?,
        read(&files.key, "grpc_tls_key")?,
    );
    let mut tls = tonic::transport::ServerTlsConfig::new().identity(identity);
    if let Some(ca) = &files.client_ca {
        tls = tls.client_ca_root(tonic::transport::Certificate::from_pem(read(
            ca,
            "grpc_client_ca",
        )?));
    }
    Ok(tls)
}

impl GrpcPort {
    /// The token check, to wrap each service with.
    pub fn auth(&self) -> BearerAuth {
        self.auth.clone()
    }

    /// Health also reports `name` as SERVING (a second service behind a
    /// [`PathSplit`], whose own name health learns from the first).
    pub fn also_serving(mut self, name: &'static str) -> Self {
        self.also_serving.push(name);
        self
    }

    /// Serves `service` until `shutdown`, over TLS when configured, next to
    /// `grpc.health.v1.Health` and server reflection (no token needed for
    /// either). Health answers SERVING for the whole server (`""`) and each
    /// service name until shutdown begins, then NOT_SERVING.
    pub async fn serve<S, ResBody>(
        self,
        service: S,
        shutdown: tokio_util::sync::CancellationToken,
    ) -> Result<(), tonic::transport::Error>
    where
        S: tonic::codegen::Service<
                tonic::codegen::http::Request<tonic::body::Body>,
                Response = tonic::codegen::http::Response<ResBody>,
                Error = std::convert::Infallible,
            > + tonic::server::NamedService
            + Clone
            + Send
            + 'static,
        S::Future: Send,
        ResBody: http_body::Body<Data = bytes::Bytes> + Send + 'static,
        ResBody::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let (reporter, health) = tonic_health::server::health_reporter();
        let names: Vec<&'static str> = std::iter::once("")
            .chain(std::iter::once(S::NAME))
            .chain(self.also_serving.iter().copied())
            .collect();
        for name in &names {
            reporter
                .set_service_status(*name, tonic_health::ServingStatus::Serving)
                .await;
        }
        let draining = shutdown.clone();
        tokio::spawn(async move {
            draining.cancelled().await;
            for name in names {
                reporter
                    .set_service_status(name, tonic_health::ServingStatus::NotServing)
                    .await;
            }
        });
        let reflection = reflection_services();
        let incoming = tonic::transport::server::TcpIncoming::from(self.listener);
        let mut server = tonic::transport::Server::builder();
        if let Some(tls) = self.tls {
            server = server.tls_config(tls)?;
        }
        let (v1, v1alpha) = reflection;
        let service = PathSplit::new(
            health,
            PathSplit::new(v1, PathSplit::new(v1alpha, OneBody(service))),
        );
        server
            .serve_with_incoming_shutdown(
                Capped::new(service, MAX_REQUEST_BYTES),
                incoming,
                shutdown.cancelled_owned(),
            )
            .await
    }
}

/// A service whose request bodies are cut off at `limit` bytes with
/// RESOURCE_EXHAUSTED (tonic's own per-service limit answers OUT_OF_RANGE
/// and must be set on every generated server; this covers all at once).
#[derive(Clone, Debug)]
struct Capped<S> {
    inner: S,
    limit: usize,
}

impl<S> Capped<S> {
    fn new(inner: S, limit: usize) -> Self {
        Self { inner, limit }
    }
}

impl<S: tonic::server::NamedService> tonic::server::NamedService for Capped<S> {
    const NAME: &'static str = S::NAME;
}

impl<S> tonic::codegen::Service<tonic::codegen::http::Request<tonic::body::Body>> for Capped<S>
where
    S: tonic::codegen::Service<tonic::codegen::http::Request<tonic::body::Body>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: tonic::codegen::http::Request<tonic::body::Body>) -> Self::Future {
        let limit = self.limit;
        self.inner.call(request.map(|body| {
            tonic::body::Body::new(CappedBody {
                inner: body,
                seen: 0,
                limit,
            })
        }))
    }
}

/// A request body that fails with RESOURCE_EXHAUSTED once more than
/// `limit` bytes came in.
struct CappedBody {
    inner: tonic::body::Body,
    seen: usize,
    limit: usize,
}

impl http_body::Body for CappedBody {
    type Data = bytes::Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let polled = std::pin::Pin::new(&mut self.inner).poll_frame(cx);
        if let std::task::Poll::Ready(Some(Ok(frame))) = &polled
            && let Some(data) = frame.data_ref()
        {
            self.seen = self.seen.saturating_add(data.len());
            if self.seen > self.limit {
                return std::task::Poll::Ready(Some(Err(tonic::Status::resource_exhausted(
                    format!(
                        "the request is larger than the limit of {}",
                        breakglass_core::limits::bytes(self.limit as u64)
                    ),
                ))));
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// Server reflection v1 and v1alpha (grpcurl tries both) over the
/// breakglass and health descriptors.
fn reflection_services() -> (
    tonic_reflection::server::v1::ServerReflectionServer<
        impl tonic_reflection::server::v1::ServerReflection,
    >,
    tonic_reflection::server::v1alpha::ServerReflectionServer<
        impl tonic_reflection::server::v1alpha::ServerReflection,
    >,
) {
    let builder = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(breakglass_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    // The descriptor sets are compiled in (breakglass-proto's build and
    // tonic-health's), so building from them cannot fail at run time.
    (
        builder()
            .build_v1()
            .expect("the compiled-in descriptor sets decode"),
        builder()
            .build_v1alpha()
            .expect("the compiled-in descriptor sets decode"),
    )
}

/// A service whose responses carry tonic's own body type, so it can share
/// a [`PathSplit`] with health and reflection (an intercepted service
/// answers with the interceptor's body wrapper).
#[derive(Clone, Debug)]
struct OneBody<S>(S);

impl<S: tonic::server::NamedService> tonic::server::NamedService for OneBody<S> {
    const NAME: &'static str = S::NAME;
}

type HttpResponse<B> = tonic::codegen::http::Response<B>;

fn to_tonic_body<B>(response: HttpResponse<B>) -> HttpResponse<tonic::body::Body>
where
    B: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    response.map(tonic::body::Body::new)
}

impl<S, B> tonic::codegen::Service<tonic::codegen::http::Request<tonic::body::Body>> for OneBody<S>
where
    S: tonic::codegen::Service<
            tonic::codegen::http::Request<tonic::body::Body>,
            Response = HttpResponse<B>,
            Error = std::convert::Infallible,
        >,
    B: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Response = HttpResponse<tonic::body::Body>;
    type Error = std::convert::Infallible;
    type Future =
        futures::future::MapOk<S::Future, fn(HttpResponse<B>) -> HttpResponse<tonic::body::Body>>;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, request: tonic::codegen::http::Request<tonic::body::Body>) -> Self::Future {
        use futures::TryFutureExt;
        self.0
            .call(request)
            .map_ok(to_tonic_body::<B> as fn(HttpResponse<B>) -> HttpResponse<tonic::body::Body>)
    }
}

/// A tonic interceptor that admits only calls with the bearer token.
#[derive(Clone)]
pub struct BearerAuth {
    expected: std::sync::Arc<Secret>,
}

impl std::fmt::Debug for BearerAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BearerAuth").finish_non_exhaustive()
    }
}

impl BearerAuth {
    /// Admits calls carrying `token`.
    pub fn new(token: Secret) -> Self {
        Self {
            expected: std::sync::Arc::new(token),
        }
    }

    fn check(&self, request: &tonic::Request<()>) -> Result<(), &'static str> {
        let value = request
            .metadata()
            .get("authorization")
            .ok_or("no authorization header")?;
        let value = value
            .to_str()
            .map_err(|_| "authorization header is not text")?;
        let presented = value
            .strip_prefix("Bearer ")
            .or_else(|| value.strip_prefix("bearer "))
            .ok_or("authorization is not a bearer token")?;
        // `subtle`: no early return on the first differing byte, so timing
        // does not tell how much of a guess was right (the length may show).
        use subtle::ConstantTimeEq;
        if bool::from(
            presented
                .as_bytes()
                .ct_eq(self.expected.expose().as_bytes()),
        ) {
            Ok(())
        } else {
            Err("wrong bearer token")
        }
    }
}

impl tonic::service::Interceptor for BearerAuth {
    fn call(&mut self, request: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        match self.check(&request) {
            Ok(()) => Ok(request),
            Err(reason) => {
                tracing::warn!(
                    peer = ?request.remote_addr(),
                    reason,
                    "refused an unauthenticated gRPC call"
                );
                Err(tonic::Status::unauthenticated(
                    "a valid bearer token is required (authorization: Bearer <grpc_token>)",
                ))
            }
        }
    }
}

/// Two gRPC services on one listener, chosen by the request path
/// (`/<package>.<Service>/<Method>`). tonic's own router would bring axum
/// into the build for this one `if` (ARCHITECTURE.md decision 24).
#[derive(Clone, Debug)]
pub struct PathSplit<A, B> {
    first: A,
    second: B,
}

impl<A, B> PathSplit<A, B> {
    /// Calls to `A`'s service name go to `first`, every other call to
    /// `second`.
    pub fn new(first: A, second: B) -> Self {
        Self { first, second }
    }
}

impl<A: tonic::server::NamedService, B> tonic::server::NamedService for PathSplit<A, B> {
    const NAME: &'static str = A::NAME;
}

impl<A, B, Req, Res, Err> tonic::codegen::Service<tonic::codegen::http::Request<Req>>
    for PathSplit<A, B>
where
    A: tonic::codegen::Service<tonic::codegen::http::Request<Req>, Response = Res, Error = Err>
        + tonic::server::NamedService,
    B: tonic::codegen::Service<tonic::codegen::http::Request<Req>, Response = Res, Error = Err>,
{
    type Response = Res;
    type Error = Err;
    type Future = futures::future::Either<A::Future, B::Future>;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        match self.first.poll_ready(cx) {
            std::task::Poll::Ready(Ok(())) => self.second.poll_ready(cx),
            other => other,
        }
    }

    fn call(&mut self, request: tonic::codegen::http::Request<Req>) -> Self::Future {
        let path = request.uri().path();
        let first = path
            .strip_prefix('/')
            .and_then(|rest| rest.strip_prefix(A::NAME))
            .is_some_and(|rest| rest.starts_with('/'));
        if first {
            futures::future::Either::Left(self.first.call(request))
        } else {
            futures::future::Either::Right(self.second.call(request))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::service::Interceptor;

    fn call(auth: &mut BearerAuth, header: Option<&str>) -> Result<(), tonic::Code> {
        let mut request = tonic::Request::new(());
        if let Some(value) = header {
            request
                .metadata_mut()
                .insert("authorization", value.parse().unwrap());
        }
        auth.call(request).map(|_| ()).map_err(|s| s.code())
    }

    #[test]
    fn only_the_bearer_token_is_admitted() {
        let mut auth = BearerAuth::new(Secret::new("a-long-enough-token-1"));
        assert_eq!(
            call(&mut auth, Some("Bearer a-long-enough-token-1")),
            Ok(())
        );
        assert_eq!(
            call(&mut auth, Some("Bearer a-long-enough-token-2")),
            Err(tonic::Code::Unauthenticated)
        );
        assert_eq!(call(&mut auth, None), Err(tonic::Code::Unauthenticated));
        assert_eq!(
            call(&mut auth, Some("a-long-enough-token-1")),
            Err(tonic::Code::Unauthenticated)
        );
    }

    #[test]
    fn plain_text_beyond_loopback_is_warned_about() {
        let at = |a: &str| a.parse::<std::net::SocketAddr>().unwrap();
        assert_eq!(plaintext_warning(at("127.0.0.1:50051"), false), None);
        assert_eq!(plaintext_warning(at("[::1]:50051"), false), None);
        assert_eq!(plaintext_warning(at("0.0.0.0:50051"), true), None);
        let warning = plaintext_warning(at("0.0.0.0:50051"), false).unwrap();
        assert!(warning.contains("without TLS"), "{warning}");
        assert!(warning.contains("grpc_tls_cert"), "{warning}");
        assert!(plaintext_warning(at("10.0.0.5:1"), false).is_some());
        assert!(plaintext_warning(at("[::]:1"), false).is_some());
    }

    #[test]
    fn the_token_comes_from_env_or_config_and_must_be_long() {
        let raw = RawConfig::parse("grpc_token: from-the-config-file\n", "c").unwrap();
        assert_eq!(
            token_from(None, &raw).unwrap().expose(),
            "from-the-config-file"
        );
        assert_eq!(
            token_from(Some("from-the-environment".into()), &raw)
                .unwrap()
                .expose(),
            "from-the-environment"
        );
        assert!(matches!(
            token_from(None, &RawConfig::new()),
            Err(TokenError::Missing)
        ));
        assert!(matches!(
            token_from(Some("short".into()), &raw),
            Err(TokenError::TooShort)
        ));
    }
}
