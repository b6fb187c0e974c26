# The API, the worker and the one-shot migration share this image; docker-compose.yml
# picks the command. Two stages: the build stage has a C compiler (tep-studio compiles its
# Tennessee Eastman model at install) and fills a virtual environment; the runtime stage
# copies that environment alone, without compilers or pip's caches.

# A plant without Docker Hub builds from its own Debian-based Python 3.11 image
# (docker/build-offline.sh makes one with debootstrap).
ARG PYTHON_IMAGE=python:3.11-slim

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/venv/bin:$PATH
# A base image on Debian's python3 package needs BUILD_EXTRA_PACKAGES=python3-dev for the
# headers that python:3.11-slim already carries.
ARG BUILD_EXTRA_PACKAGES=
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc g++ libc6-dev $BUILD_EXTRA_PACKAGES \
    && rm -rf /var/lib/apt/lists/*
# python3: Debian's own python package installs no `python` command.
RUN python3 -m venv /opt/venv
# CPU wheels of torch first, in their own layer: ~200 MB instead of ~2 GB with CUDA,
# and rebuilt only when the torch version changes. A plant's own mirror replaces the index,
# or serves the CPU wheel as a find-links page next to a PyPI mirror.
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ARG TORCH_FIND_LINKS=
RUN pip install torch==2.13.0 --index-url "$TORCH_INDEX_URL" \
    ${TORCH_FIND_LINKS:+--find-links "$TORCH_FIND_LINKS"}
WORKDIR /src
COPY pyproject.toml README.md alembic.ini ./
COPY twin ./twin
COPY processes ./processes
COPY api ./api
COPY dashboards ./dashboards
RUN pip install .

FROM ${PYTHON_IMAGE} AS runtime
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PATH=/opt/venv/bin:$PATH \
    # `pip install .` puts api/ in site-packages without the migrations: point at them.
    TWIN_MIGRATIONS_DIR=/app/migrations
COPY --from=build /opt/venv /opt/venv
WORKDIR /app
COPY alembic.ini ./
COPY migrations ./migrations
COPY docker/entrypoint.sh /usr/local/bin/twin-entrypoint
# Training logs, checkpoints and exports live on the /data volume (docker-compose.yml).
RUN useradd --create-home --uid 1000 twin \
    && mkdir -p /data && chown twin /data \
    && chmod 0755 /usr/local/bin/twin-entrypoint
USER twin
VOLUME ["/data"]
EXPOSE 8000
ENTRYPOINT ["twin-entrypoint"]
CMD ["twin", "serve", "--host", "0.0.0.0"]
