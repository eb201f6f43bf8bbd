# Nereid, CPU image. Multi-stage: a release build, then a slim Debian runtime with ONNX
# Runtime's shared library from the PyPI wheel. No container engine runs on the project's
# machines, so this file is not built in CI; its build steps are the scripts CI runs
# (`cargo build --release --locked`, scripts/install-onnxruntime.sh).
#   docker build -t nereid:cpu .
#   docker run --rm -p 8000-8002:8000-8002 -v $PWD/model_repository:/models:ro nereid:cpu

FROM rust:1.92-bookworm AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3-pip \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin nereid
# ONNX Runtime's libraries, extracted from the PyPI wheel exactly as CI does.
RUN scripts/install-onnxruntime.sh /opt/onnxruntime

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates libgomp1 \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --gid 10001 nereid \
 && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin nereid \
 && mkdir -p /models /var/cache/nereid \
 && chown nereid:nereid /var/cache/nereid
COPY --from=build /src/target/release/nereid /usr/local/bin/nereid
COPY --from=build /opt/onnxruntime /opt/onnxruntime
ENV ORT_DYLIB_PATH=/opt/onnxruntime/libonnxruntime.so.1.31.1 \
    LD_LIBRARY_PATH=/opt/onnxruntime
USER 10001:10001
EXPOSE 8000 8001 8002
VOLUME ["/var/cache/nereid"]
ENTRYPOINT ["/usr/local/bin/nereid"]
CMD ["--model-repository=/models"]
