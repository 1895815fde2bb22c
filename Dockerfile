# One image for every channels-lite process: `channels-lite protocol-server`,
# `channels-lite worker APP`, `channels-lite publish ...`; see docker-compose.yml.
#
#   docker build -t channels-lite .
#   docker run --rm -e CHANNELS_LITE_REDIS_URL=redis://redis:6379/0 channels-lite worker --help
#
# Configuration is the environment (CHANNELS_LITE_<OPTION>, REDIS_URL), never
# baked in. Your own app: build FROM this image, COPY it in, and run
# `worker yourapp:app --app-dir /app/yourapp` (or pip install it).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# The package, from the sources only (see .dockerignore); the `examples`
# extra adds what the chat examples need (Starlette; Django and Channels).
WORKDIR /src
COPY pyproject.toml README.md ./
COPY channels_lite/ channels_lite/
COPY protocol_server/ protocol_server/
COPY worker/ worker/
RUN pip install '.[examples]' && rm -rf /src

# Read-only for the process: everything under /app belongs to root.
WORKDIR /app
COPY examples/ examples/
COPY docker/healthcheck.py docker/healthcheck.py
RUN useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin channels
USER 10001:10001

EXPOSE 8000
# Exec form: channels-lite is PID 1 and gets SIGTERM itself, then drains for
# CHANNELS_LITE_SHUTDOWN_TIMEOUT seconds (keep stop_grace_period above it).
ENTRYPOINT ["channels-lite"]
CMD ["--help"]
