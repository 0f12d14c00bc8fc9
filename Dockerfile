# syntax=docker/dockerfile:1
# One image for both APIs and the CLI; the command chooses (k8s/base names each one):
#   securecache migrate | load-securities FILE | seed --count N
#   python -m servers public   --host 0.0.0.0 --port 8080
#   python -m servers internal --host 0.0.0.0 --port 8081
# Build: docker build -t securecache:0.1.0 .
# Try:   docker run --rm --read-only --tmpfs /tmp securecache:0.1.0 securecache --help

# Both stages use the same interpreter: the venv built in the first is copied into the second.
ARG PYTHON_IMAGE=python:3.12.13-slim-bookworm

FROM ${PYTHON_IMAGE} AS builder
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_ROOT_USER_ACTION=ignore \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
# .dockerignore admits only what the wheel is built from.
COPY . .
# The wheel first (as users get it), then the wheel and the servers extra into a venv without
# pip of its own; the packages' bytecode is compiled here, since the final root is read-only.
RUN python -m pip wheel --no-deps --wheel-dir /dist . \
 && python -m venv --without-pip /opt/securecache \
 && python -m pip --python /opt/securecache/bin/python install \
        "$(ls /dist/securecache-*.whl)[servers]"

FROM ${PYTHON_IMAGE} AS runtime
LABEL org.opencontainers.image.title="securecache" \
      org.opencontainers.image.description="securecache public API, internal API and CLI" \
      org.opencontainers.image.licenses="MIT"
# A named user for uid 10001, so libpq and getpass can look it up; it owns nothing.
RUN groupadd --system --gid 10001 securecache \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /tmp \
        --shell /usr/sbin/nologin securecache
COPY --from=builder /opt/securecache /opt/securecache
# HOME and TMPDIR are /tmp: the one writable place (an emptyDir in Kubernetes, --tmpfs here).
ENV PATH=/opt/securecache/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp \
    TMPDIR=/tmp
USER 10001:10001
WORKDIR /tmp
# 8080 public API, 8081 internal API, 9464 Prometheus metrics (SECURECACHE_METRICS_PORT).
EXPOSE 8080 8081 9464
CMD ["securecache", "--help"]
