"""docker-compose.yml, the Dockerfile and the entrypoint (no docker engine here or in CI:
parse the files, and run the entrypoint script itself with sh)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
APP_SERVICES = ("migrate", "api", "worker")


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def _command(service: dict) -> str:
    command = service["command"]
    return command if isinstance(command, str) else " ".join(command)


def test_services(compose: dict) -> None:
    assert {"db", *APP_SERVICES} <= set(compose["services"])


def test_no_secret_is_written_in_the_compose_file(compose: dict) -> None:
    text = (ROOT / "docker-compose.yml").read_text()
    assert "POSTGRES_PASSWORD:" not in text and "twin:twin@" not in text
    db = compose["services"]["db"]
    assert db["environment"]["POSTGRES_PASSWORD_FILE"] == "/run/secrets/db_password"
    assert set(compose["secrets"]) == {"db_password", "session_secret"}
    for secret in compose["secrets"].values():
        assert secret["file"].startswith("./secrets/")
    ignored = (ROOT / "secrets" / ".gitignore").read_text().split()
    assert "*" in ignored  # secret files are never committed
    assert "secrets" in (ROOT / ".dockerignore").read_text().split()  # nor built in


def test_migrations_run_once_before_serving(compose: dict) -> None:
    services = compose["services"]
    assert _command(services["migrate"]) == "twin db upgrade"
    assert services["migrate"]["restart"] == "no"
    assert services["migrate"]["depends_on"]["db"]["condition"] == "service_healthy"
    for name in ("api", "worker"):
        condition = services[name]["depends_on"]["migrate"]["condition"]
        assert condition == "service_completed_successfully", name
    assert _command(services["api"]) == "twin serve --host 0.0.0.0"
    assert _command(services["worker"]) == "twin worker"


def test_app_services_share_the_image_secrets_and_data_volume(compose: dict) -> None:
    for name in APP_SERVICES:
        service = compose["services"][name]
        assert service["build"] == "." and service["image"] == "plant-twin:latest", name
        assert "twin-data:/data" in service["volumes"], name
        assert set(service["secrets"]) == {"db_password", "session_secret"}, name
        env = service["environment"]
        assert env["TWIN_DB_PASSWORD_FILE"] == "/run/secrets/db_password", name
        assert env["TWIN_SESSION_SECRET_FILE"] == "/run/secrets/session_secret", name
    assert compose["services"]["api"]["environment"]["TWIN_AUTH_REQUIRED"] == "true"
    assert "8000:8000" in compose["services"]["api"]["ports"]
    assert {"pgdata", "twin-data"} <= set(compose["volumes"])


def test_dockerfile_builds_with_a_compiler_and_runs_without_one() -> None:
    text = (ROOT / "Dockerfile").read_text()
    head, stages = text.split("FROM ${PYTHON_IMAGE} AS build")
    build, runtime = stages.split("FROM ${PYTHON_IMAGE} AS runtime")
    # the base and torch's index are build args whose defaults are the public ones
    assert "ARG PYTHON_IMAGE=python:3.11-slim" in head and "gcc" in build
    assert "ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu" in build
    assert 'pip install torch==2.13.0 --index-url "$TORCH_INDEX_URL"' in build
    assert build.index("torch==2.13.0") < build.index("RUN pip install .")
    assert "gcc" not in runtime and "RUN pip install" not in runtime
    assert "COPY --from=build /opt/venv /opt/venv" in runtime
    # Migrations are not package data: the image must say where they are.
    assert "TWIN_MIGRATIONS_DIR=/app/migrations" in runtime and "COPY migrations" in runtime
    assert 'VOLUME ["/data"]' in runtime and "USER twin" in runtime
    assert 'ENTRYPOINT ["twin-entrypoint"]' in runtime


def _path_with_this_python() -> str:
    """The image's PATH starts with its venv; here, this interpreter's folder stands in."""
    folder = Path(sys.executable).parent
    if not (folder / "python").exists():
        pytest.skip(f"no `python` beside {sys.executable}")
    return f"{folder}{os.pathsep}{os.environ['PATH']}"


def _entrypoint(env: dict[str, str]) -> str:
    result = subprocess.run(
        ["sh", str(ROOT / "docker" / "entrypoint.sh"), "sh", "-c", 'printf %s "$DATABASE_URL"'],
        env={"PATH": _path_with_this_python(), **env},
        capture_output=True,
        text=True,
        check=True,
    )
    return result.stdout


def test_entrypoint_builds_the_database_url_from_the_password_file(tmp_path: Path) -> None:
    secret = tmp_path / "db_password"
    secret.write_text("p@ss/word:1\n")
    url = _entrypoint({"TWIN_DB_PASSWORD_FILE": str(secret), "TWIN_DB_HOST": "db"})
    assert url == "postgresql+psycopg://twin:p%40ss%2Fword%3A1@db:5432/twin"
    whole = tmp_path / "url"
    whole.write_text("sqlite:////data/twin.db")
    assert _entrypoint({"DATABASE_URL_FILE": str(whole)}) == "sqlite:////data/twin.db"
    assert _entrypoint({"DATABASE_URL": "sqlite:///x.db"}) == "sqlite:///x.db"
