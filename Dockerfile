# syntax=docker/dockerfile:1
# One image for every Tussis process; the command picks the role:
#   ./boot.sh api | worker | beat | migrate      (default: api)
# See docker-compose.yml for how the roles are wired together.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore \
    TF_CPP_MIN_LOG_LEVEL=2 \
    UV_PROJECT_ENVIRONMENT=/opt/venv \
    UV_PYTHON_DOWNLOADS=never \
    UV_COMPILE_BYTECODE=1 \
    PATH=/opt/venv/bin:$PATH

# uv installs exactly what uv.lock pins; its version is pinned as well.
ARG UV_VERSION=0.13.9

# The processes run as this user. It gets a home directory because Keras
# caches downloaded backbone weights under ~/.keras.
RUN groupadd --system --gid 1000 tussis \
    && useradd --system --uid 1000 --gid tussis --create-home --home-dir /home/tussis \
        --shell /usr/sbin/nologin tussis

WORKDIR /app

# The code stays owned by root, so the service user cannot change it.
COPY . /app

# The cache mount keeps downloaded wheels (TensorFlow is large) between builds
# without storing them in the image. The server and worker extras come from the
# lock; the dev group (tests, linters, docs) stays out of the image.
RUN --mount=type=cache,target=/root/.cache/pip \
    --mount=type=cache,target=/root/.cache/uv \
    pip install "uv==${UV_VERSION}" \
    && uv sync --locked --no-dev --extra server --extra worker \
    && chmod 0755 /app/boot.sh \
    && mkdir -p /data \
    && chown tussis:tussis /data

# /data is TUSSIS_DATA_DIR in docker-compose.yml. A new named volume mounted
# there takes this directory's owner, so the service user can write to it.

USER tussis
ENV HOME=/home/tussis

EXPOSE 5000

CMD ["./boot.sh", "api"]
