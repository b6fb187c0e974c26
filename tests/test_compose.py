"""docker-compose.yml and Dockerfile structure (no docker engine in CI: parse, don't run)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
PG_URL = "postgresql+psycopg://twin:twin@db:5432/twin"


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def _command(service: dict) -> str:
    command = service["command"]
    return command if isinstance(command, str) else " ".join(command)


def test_three_services(compose: dict) -> None:
    assert {"db", "api", "worker"} <= set(compose["services"])


def test_db_is_postgres_16_with_healthcheck(compose: dict) -> None:
    db = compose["services"]["db"]
    assert db["image"] == "postgres:16"
    assert "pg_isready" in " ".join(db["healthcheck"]["test"])
    env = db["environment"]
    assert (env["POSTGRES_USER"], env["POSTGRES_PASSWORD"], env["POSTGRES_DB"]) == (
        "twin", "twin", "twin")


@pytest.mark.parametrize("name, command", [
    ("api", "twin db upgrade && twin serve --host 0.0.0.0"),
    ("worker", "twin worker"),
])
def test_app_services(compose: dict, name: str, command: str) -> None:
    service = compose["services"][name]
    assert service["build"] == "."
    assert command in _command(service)
    assert service["environment"]["DATABASE_URL"] == PG_URL
    assert service["depends_on"]["db"]["condition"] == "service_healthy"


def test_api_publishes_its_port(compose: dict) -> None:
    assert "8000:8000" in compose["services"]["api"]["ports"]


def test_dockerfile() -> None:
    text = (ROOT / "Dockerfile").read_text()
    assert text.startswith("#") and "FROM python:3.11-slim" in text
    assert ("pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu"
            in text)
    assert "RUN pip install ." in text
    # Migrations are not package data: the image must say where they are.
    assert "TWIN_MIGRATIONS_DIR=/app/migrations" in text and "COPY migrations" in text
    assert text.index("torch==2.13.0") < text.index("RUN pip install .")
