# Light CPU image: the gateway, the embedded basic-agent bundle and the default chat model
# (Qwen2.5-Coder-0.5B-Instruct Q4_K_M, Apache-2.0: its licence is copied next to it).
#   docker build -t abstractgateway .
#   docker run -p 8080:8080 -e ABSTRACTGATEWAY_AUTH_TOKEN=$(openssl rand -hex 32) -v agw-data:/data abstractgateway
# Not built here (no Docker engine on the development machine); kept simple to be checkable by reading.

FROM rust:1-bookworm AS build
RUN apt-get update && apt-get install -y --no-install-recommends python3 python3-pip && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
# AVX2/FMA/F16C are enabled by .cargo/config.toml (x86-64-v3 hosts).
RUN cargo build --release --bin abstractgateway \
 && strip target/release/abstractgateway \
 && scripts/fetch-models.sh --dest /opt/abstractgateway/models qwen-coder-0.5b

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --home-dir /data --shell /usr/sbin/nologin gateway \
 && mkdir -p /data && chown gateway /data
COPY --from=build /src/target/release/abstractgateway /usr/local/bin/abstractgateway
COPY --from=build /opt/abstractgateway/models /opt/abstractgateway/models
ENV ABSTRACTGATEWAY_DATA_DIR=/data \
    ABSTRACTGATEWAY_MODELS_DIR=/opt/abstractgateway/models \
    ABSTRACTGATEWAY_DEVICE=cpu
USER gateway
VOLUME ["/data"]
EXPOSE 8080
ENTRYPOINT ["abstractgateway"]
CMD ["serve", "--host", "0.0.0.0", "--port", "8080"]
