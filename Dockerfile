# dprl: HTTP(S) forward proxy capping concurrent upstream connections per host.
#   docker build -t dprl .
#   docker run --rm -p 8080:8080 -p 9090:9090 dprl --max-connections 25
#   docker run --rm -p 8080:8080 -e REDIS_ADDR=redis:6379 dprl --max-connections 100
# BASE can point at any Debian-like image with python3 (>= 3.10), venv and pip.
ARG BASE=python:3.11-slim

# The wheel, built once; the image installs it as users do (pip install dprl[hiredis]).
FROM ${BASE} AS wheel
WORKDIR /src
COPY setup.py pyproject.toml README.md ./
COPY dprl ./dprl
RUN python3 -m pip wheel --quiet --no-deps --wheel-dir /dist .

FROM ${BASE}
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    DPRL_BIND=0.0.0.0 \
    DPRL_PORT=8080 \
    DPRL_ADMIN_BIND=0.0.0.0 \
    DPRL_ADMIN_PORT=9090

COPY --from=wheel /dist /tmp/dist
RUN python3 -m venv /opt/venv \
    && /opt/venv/bin/pip install --quiet "$(ls /tmp/dist/dprl-*.whl)[hiredis]" \
    && rm -rf /tmp/dist \
    && useradd --system --no-create-home --shell /usr/sbin/nologin dprl

USER dprl
WORKDIR /
# 8080: the proxy; 9090: the admin listener (/metrics, /healthz, /readyz, /hosts)
EXPOSE 8080 9090
ENTRYPOINT ["/opt/venv/bin/python", "-m", "dprl"]
