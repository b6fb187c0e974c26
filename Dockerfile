# The API and the worker share this image; docker-compose.yml picks the command.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    # `pip install .` puts api/ in site-packages without the migrations: point at them.
    TWIN_MIGRATIONS_DIR=/app/migrations

WORKDIR /app

# CPU wheels of torch first, in their own layer: ~200 MB instead of ~2 GB with CUDA,
# and rebuilt only when the torch version changes.
RUN pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu

COPY pyproject.toml README.md alembic.ini ./
COPY twin ./twin
COPY processes ./processes
COPY api ./api
COPY dashboards ./dashboards
COPY migrations ./migrations
RUN pip install .

RUN useradd --create-home --uid 1000 twin
USER twin

EXPOSE 8000
CMD ["sh", "-c", "twin db upgrade && twin serve --host 0.0.0.0"]
