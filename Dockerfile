# One image with every breakglass binary; the compose file and the K3s
# manifests pick the binary per container. Multi-stage: the build tools stay
# in the first stage.
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bins \
 && mkdir /out \
 && cp target/release/breakglass target/release/scheduler target/release/collector \
       target/release/renderer target/release/uploader /out/

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --home-dir /nonexistent --shell /usr/sbin/nologin breakglass \
 && mkdir /backups && chown 10001:10001 /backups
COPY --from=build /out/ /usr/local/bin/
USER 10001:10001
# Temp files (private, 0700) go here; mount an emptyDir when the root file
# system is read-only.
ENV TMPDIR=/tmp BREAKGLASS_LOG_FORMAT=json
ENTRYPOINT ["/usr/local/bin/breakglass"]
CMD ["--help"]
