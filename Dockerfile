# Portcullis in two stages: build with the Rust toolchain (and what libpg_query needs), then a
# slim runtime image holding only the `portcullis` binary, run as an unprivileged user.
#
#   docker build -t portcullis .
#   docker run -v ./portcullis.toml:/etc/portcullis/portcullis.toml:ro -p 6432:6432 portcullis
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
# libclang and protoc for libpg_query (the same list the tests' setup uses to build).
RUN bash tests/setup.sh build
RUN cargo build --release -p proxy --locked \
 && cp target/release/portcullis /usr/local/bin/portcullis

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --home-dir /var/lib/portcullis portcullis \
 && mkdir -p /etc/portcullis /var/lib/portcullis \
 && chown portcullis: /var/lib/portcullis
COPY --from=build /usr/local/bin/portcullis /usr/local/bin/portcullis
USER portcullis
WORKDIR /var/lib/portcullis
# PostgreSQL protocol for agents; Qdrant REST for RAG pipelines.
EXPOSE 6432 6333
ENTRYPOINT ["portcullis"]
CMD ["serve", "--config", "/etc/portcullis/portcullis.toml"]
