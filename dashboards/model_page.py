"""The model page, `/models/{id}`: one registered twin's health.

Per model: its training curves (from the per-epoch history stored with it), and,
computed on held-out data, collapse diagnostics (effective rank, per-dimension std),
open-loop prediction error against horizon, a 2-D PCA map of embeddings coloured by
time and by operating regime, and the surprise (anomaly) trace with its threshold.

Held-out data: a short log from the process's simulator with a seed kept for
diagnostics (never a training seed), or, for a process defined by its files alone,
the newest stored run of that process. The computation is deterministic for a given
checkpoint, so its result is cached per (model id, checkpoint sha256): a reload is fast.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse
from fastapi.templating import Jinja2Templates
from sqlalchemy.orm import Session

from api.deps import SessionDep
from api.orm import RunKind, TwinModel
from api.series.ranges import step_span
from api.services import models as models_service
from api.services import runs as runs_service
from api.services.replay_data import run_frame
from dashboards.model_figures import (  # noqa: F401 (re-exported for callers of this module)
    FALSE_ALARM_RATE,
    collapse_figure,
    horizon_figure,
    map_figure,
    surprise_figure,
    training_figure,
)
from twin.diagnostics import (
    effective_rank,
    embed_log,
    error_by_horizon,
    pca_2d,
    per_dimension_std,
)
from twin.errors import InvalidInput
from twin.spec import ProcessSpec, SpecError, Tag

if TYPE_CHECKING:
    from twin.twin_model import Twin

HELDOUT_SEED = 90_001  # simulator seed of the held-out log; training uses small seeds
TARGET_SAMPLES = 1_200  # length of the held-out log, samples
MAX_HOURS = 12.0  # ... but no more than this (slow sample periods)
CACHE_SIZE = 16  # models whose page is kept
_CONFIG = {"displaylogo": False, "responsive": True}

templates = Jinja2Templates(directory=Path(__file__).resolve().parent / "templates")
router = APIRouter(include_in_schema=False)


# ---------------------------------------------------------------- held-out data


@dataclass(frozen=True)
class HeldOut:
    frame: pd.DataFrame
    source: str  # said on the page


def held_out_log(session: Session, model: TwinModel, spec: ProcessSpec) -> HeldOut:
    """A short log the twin was not trained on (InvalidInput when there is none)."""
    from processes import find_process  # late: simulators are not free to import

    module = find_process(spec.name)
    if module is not None:
        hours = min(MAX_HOURS, TARGET_SAMPLES * spec.sample_period_s / 3600.0)
        seed = HELDOUT_SEED
        if (model.config.get("data") or {}).get("seed") == seed:
            seed += 1
        frame = module.generate_training_log(hours, seed)
        return HeldOut(
            frame,
            f"{_duration(hours * 3600.0)} of excitation data from the "
            f"{spec.name} simulator, seed {seed} (not a training seed)",
        )
    return _stored_run_log(session, spec)


def _stored_run_log(session: Session, spec: ProcessSpec) -> HeldOut:
    for run in runs_service.list_runs(session, process=spec.name, limit=50):
        if run.kind not in (RunKind.CONTROL, RunKind.REPLAY):
            continue
        span = step_span(session, run.id)
        if span.count < 2 or span.last_s is None:
            continue
        start_s = span.last_s - TARGET_SAMPLES * spec.sample_period_s
        frame = run_frame(session, run.id, start_s=start_s).log(spec)
        return HeldOut(
            frame,
            f"the last {len(frame)} samples of stored run {run.id} ({run.kind}, {run.controller})",
        )
    raise InvalidInput(
        f"process '{spec.name}' has no simulator and no stored control or "
        "replay run to evaluate the twin on"
    )


def _duration(seconds: float) -> str:
    return f"{seconds / 3600:.3g} h" if seconds >= 3600 else f"{seconds / 60:.3g} min"


# ---------------------------------------------------------------- the page's numbers


@dataclass
class ModelPage:
    """Everything the page shows, figures already rendered to HTML."""

    summary: dict[str, str]
    figures: dict[str, str] = field(default_factory=dict)
    notes: dict[str, str] = field(default_factory=dict)  # figure -> why it is missing
    compute_s: float = 0.0


def build_model_page(session: Session, model: TwinModel) -> ModelPage:
    from twin.twin_model import Twin  # late: torch loads only when a model page is asked

    started = time.perf_counter()
    twin = Twin.from_bytes(models_service.load_model_bytes(session, model.id))
    page = ModelPage(summary=_summary(model, twin))
    _add(
        page,
        "training",
        lambda: training_figure(
            model.metrics.get("history") or [], twin.config.embed_dim, _sensor_std(twin)
        ),
    )
    try:
        held = held_out_log(session, model, twin.spec)
    except Exception as exc:  # a simulator is third-party code: its failure is a note
        for name in ("collapse", "horizon", "map", "surprise"):
            page.notes[name] = f"no held-out data: {exc}"
    else:
        page.summary["held-out data"] = held.source
        _add_held_out(page, twin, held.frame)
    page.compute_s = time.perf_counter() - started
    page.summary["computed in"] = f"{page.compute_s:.1f} s (cached until the server restarts)"
    return page


def _add_held_out(page: ModelPage, twin: Twin, frame: pd.DataFrame) -> None:
    spec = twin.spec
    times_s = _relative_times(frame, spec)
    try:
        z, rows = embed_log(twin, frame)
    except InvalidInput as exc:
        page.notes.update({n: str(exc) for n in ("collapse", "map")})
    else:
        rank, std = effective_rank(z), per_dimension_std(z)
        page.summary["effective rank (held-out)"] = f"{rank:.2f} of {z.shape[1]} dimensions"
        page.summary["per-dimension std (held-out)"] = (
            f"min {std.min():.3f}, mean {std.mean():.3f} (training keeps them near 1)"
        )
        page.figures["collapse"] = _html(collapse_figure(std, rank))
        regime = _regime_tag(spec)
        page.figures["map"] = _html(
            map_figure(
                pca_2d(z),
                times_s[rows],
                frame[regime.name].to_numpy(dtype=float)[rows],
                f"{regime.name} [{regime.unit}]",
            )
        )
    horizon = max(20, 2 * int(twin.train_config.get("rollout_steps", 16)))
    _add(
        page,
        "horizon",
        lambda: horizon_figure(
            error_by_horizon(twin, frame, horizon),
            {t.name: t.unit for t in spec.sensors},
            int(twin.train_config.get("rollout_steps", 0)),
        ),
    )
    _add(page, "surprise", lambda: _surprise(twin, frame, times_s))


def _add(page: ModelPage, name: str, build: Callable[[], go.Figure | str]) -> None:
    try:
        result = build()
    except InvalidInput as exc:
        page.notes[name] = str(exc)
        return
    if isinstance(result, str):
        page.notes[name] = result
    else:
        page.figures[name] = _html(result)


def _surprise(twin: Twin, frame: pd.DataFrame, times_s: np.ndarray) -> go.Figure | str:
    trace = surprise_trace(twin, frame)
    return trace if isinstance(trace, str) else surprise_figure(*trace, times_s)


def surprise_trace(twin: Twin, frame: pd.DataFrame) -> tuple[np.ndarray, float, int] | str:
    """(scores, threshold, rows used to calibrate) or why there is no trace.

    The threshold is set on the first half of the held-out log at FALSE_ALARM_RATE;
    the second half shows how often normal data crosses it."""
    try:
        from twin.surprise import calibrate_threshold, surprise_scores
    except ImportError:
        return "surprise detector not available (twin.surprise is not installed)"
    scores = np.asarray(surprise_scores(twin, frame), dtype=float)
    half = len(scores) // 2
    return scores, calibrate_threshold(scores[:half], FALSE_ALARM_RATE), half


def _summary(model: TwinModel, twin: Twin) -> dict[str, str]:
    metrics = model.metrics or {}
    out = {
        "process": model.process.name,
        "model": f"{model.name} v{model.version} (id {model.id})",
        "checkpoint": f"sha256 {model.sha256[:16]}..., {model.size_bytes / 1e6:.2f} MB",
        "registered": model.created_at.strftime("%Y-%m-%d %H:%M:%S UTC"),
        "embedding": f"{twin.config.embed_dim} dimensions, window {twin.config.window} "
        f"samples of {twin.spec.sample_period_s:g} s",
    }
    if "epochs" in metrics:
        seconds = metrics.get("train_seconds")
        took = f" in {seconds:.0f} s" if isinstance(seconds, int | float) else ""
        out["training"] = f"{metrics['epochs']} epochs{took}"
    return out


def _sensor_std(twin: Twin) -> dict[str, float]:
    return {t: float(twin.norm.std[twin.norm.index(t)]) for t in twin.layout.sensors}


def _regime_tag(spec: ProcessSpec) -> Tag:
    """The sensor that best tells operating regimes apart: the first controlled one."""
    return (spec.controlled or spec.sensors)[0]


def _relative_times(frame: pd.DataFrame, spec: ProcessSpec) -> np.ndarray:
    from twin.data import timestamps_s  # late: torch loads only when a model page is asked

    ts = timestamps_s(frame, spec)
    return ts - ts[0]


def _html(figure: go.Figure) -> str:
    return figure.to_html(include_plotlyjs=False, full_html=False, config=_CONFIG)


# ---------------------------------------------------------------- cache


class PageCache:
    """Pages by key, least recently used evicted; one computation per key at a time."""

    def __init__(self, size: int = CACHE_SIZE) -> None:
        self.size = size
        self._pages: OrderedDict[tuple[int, str], ModelPage] = OrderedDict()
        self._lock = threading.Lock()
        self._computing: dict[tuple[int, str], threading.Lock] = {}

    def get(self, key: tuple[int, str], compute: Callable[[], ModelPage]) -> ModelPage:
        with self._lock:
            if key in self._pages:
                self._pages.move_to_end(key)
                return self._pages[key]
            key_lock = self._computing.setdefault(key, threading.Lock())
        with key_lock:  # a second request for the same model waits for the first
            with self._lock:
                if key in self._pages:
                    return self._pages[key]
            page = compute()
            with self._lock:
                self._pages[key] = page
                while len(self._pages) > self.size:
                    self._pages.popitem(last=False)
                self._computing.pop(key, None)
        return page

    def clear(self) -> None:
        with self._lock:
            self._pages.clear()


CACHE = PageCache()


# ---------------------------------------------------------------- routes


@router.get("/models/{model_id}", response_class=HTMLResponse)
def model_page(request: Request, model_id: int, session: SessionDep) -> HTMLResponse:
    model = models_service.get_model(session, model_id)
    try:
        page = CACHE.get((model.id, model.sha256), lambda: build_model_page(session, model))
    except SpecError as exc:
        raise InvalidInput(f"model {model_id} cannot be loaded: {exc}") from None
    return templates.TemplateResponse(
        request, "model.html", {"model": model, "page": page, "nav_active": "models"}
    )
