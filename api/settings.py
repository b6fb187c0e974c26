"""Runtime configuration, read from the environment (and `.env` when present).

`DATABASE_URL` is the one variable most deployments set; the others have the
`TWIN_` prefix (e.g. `TWIN_PORT`, `TWIN_MAX_BODY_BYTES`).

`auth_required` (TWIN_AUTH_REQUIRED) defaults to False. The default install is the
embedded demo: SQLite on a laptop, `twin serve` bound to 127.0.0.1, where demanding a
key before the first page would only be in the way. Any shared deployment sets it to
true, as docker-compose.yml does for its API. Even when it is False, a request that
presents a key is authenticated and held to that key's role (a wrong key is a 401, a
weak one a 403), so clients behave the same before and after auth is switched on;
only requests without any key are let through, as an anonymous admin.
"""

from __future__ import annotations

from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from twin.planner_names import PlannerName


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="TWIN_",
        env_file=".env",
        extra="ignore",
        validate_by_name=True,
        validate_by_alias=True,
    )

    database_url: str = Field(
        default="sqlite:///./twin.db",
        # DATABASE_URL is the convention of docker-compose and most PaaS; TWIN_ for symmetry.
        validation_alias=AliasChoices("DATABASE_URL", "TWIN_DATABASE_URL"),
    )
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65535)
    echo_sql: bool = False
    # Requests larger than this are refused with 413 before they are parsed.
    max_body_bytes: int = Field(default=1_000_000, gt=0)
    # Most tags one control step may carry; a real unit has tens to a few hundred.
    max_tags_per_step: int = Field(default=2_000, gt=0)
    # Ceiling for `max_points` of a series request and the default for dashboards.
    max_series_points: int = Field(default=20_000, gt=0)
    dashboard_points: int = Field(default=2_000, gt=0)
    # Most rows listed by one index request.
    max_list_limit: int = Field(default=1_000, gt=0)
    # How long a step waits for the previous step of the same loop before giving up (409).
    loop_lock_timeout_s: float = Field(default=10.0, gt=0)
    # Refuse requests without an API key (401); see the module docstring for the default.
    auth_required: bool = False

    # ---- live loops: what one key, or all of them, may ask of the server
    # (api.services.loop_limits). Planners any operator's loop may use; the NLP planners
    # (casadi-ipopt, casadi-fatrop) take a minute and gigabytes to build: off by default.
    loop_planners: list[PlannerName] = ["casadi", "cem", "mppi", "hierarchical"]
    # Planners only engineers (and admins) may give a live loop, besides the above.
    engineer_loop_planners: list[PlannerName] = []
    # Running loops in the deployment (counted in the database) and per API key.
    max_loops: int = Field(default=32, gt=0)
    max_loops_per_key: int = Field(default=8, gt=0)
    # Building one controller: time limit (nothing is started past it), builds at once,
    # resident memory it may add, and the server's memory at which no build starts.
    planner_build_timeout_s: float = Field(default=30.0, gt=0)
    max_concurrent_builds: int = Field(default=1, gt=0)
    max_build_memory_mb: float = Field(default=1024.0, gt=0)
    max_server_memory_mb: float = Field(default=2048.0, gt=0)
    # time_s plausibility: never further from zero than the server's Unix time plus this,
    # and never more than max_gap_periods sample periods (plus the server time that
    # passed) ahead of the loop's last step.
    max_clock_lead_s: float = Field(default=3600.0, ge=0)
    max_gap_periods: float = Field(default=100.0, gt=0)
    # Units at the edge: a measurement outside this many training stds of its tag's mean
    # (and, for a positive quantity, more than unit_check_ratio times off its mean) that
    # a unit mix-up explains is refused with the mix-up named.
    unit_check_sigmas: float = Field(default=6.0, gt=0)
    unit_check_ratio: float = Field(default=4.0, gt=1)
