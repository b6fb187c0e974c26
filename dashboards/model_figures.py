"""The model page's figures, pure: numbers in, `go.Figure` out (no database, no twin)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from twin.diagnostics import HorizonError, Projection

FALSE_ALARM_RATE = 0.01  # of the surprise threshold, calibrated on normal data
MAX_MAP_POINTS = 3_000  # embeddings drawn on the PCA map
_PALETTE = (
    "rgb(31, 119, 180)",
    "rgb(255, 127, 14)",
    "rgb(44, 160, 44)",
    "rgb(214, 39, 40)",
    "rgb(148, 103, 189)",
    "rgb(140, 86, 75)",
    "rgb(227, 119, 194)",
    "rgb(23, 190, 207)",
)


def _time_axis(times_s: np.ndarray) -> tuple[np.ndarray, str]:
    """Hours for a long log, minutes for a short one."""
    span = float(np.nanmax(times_s)) if len(times_s) else 0.0
    return (times_s / 3600.0, "h") if span >= 3 * 3600 else (times_s / 60.0, "min")


def training_figure(
    history: Sequence[Mapping[str, Any]], embed_dim: int, sensor_std: Mapping[str, float]
) -> go.Figure | str:
    """Loss, effective rank, per-dimension std and readout error per epoch."""
    if not history:
        return "no per-epoch history was stored with this model"
    epochs = [h["epoch"] for h in history]
    fig = make_subplots(
        rows=2,
        cols=2,
        horizontal_spacing=0.1,
        vertical_spacing=0.16,
        subplot_titles=(
            "loss (normalised units, log scale)",
            "effective rank of held-out embeddings",
            "per-dimension std of held-out embeddings",
            "readout RMSE (in each sensor's training std)",
        ),
    )
    for i, (key, name) in enumerate(
        (("train_loss", "training loss (total)"), ("holdout_prediction", "held-out prediction MSE"))
    ):
        fig.add_trace(
            go.Scatter(
                x=epochs,
                y=[h.get(key) for h in history],
                name=name,
                mode="lines+markers",
                line={"color": _PALETTE[i]},
            ),
            row=1,
            col=1,
        )
    fig.add_trace(
        go.Scatter(
            x=epochs,
            y=[h.get("effective_rank") for h in history],
            name="effective rank",
            mode="lines+markers",
            line={"color": _PALETTE[2]},
        ),
        row=1,
        col=2,
    )
    fig.add_hline(
        y=embed_dim,
        line_dash="dot",
        line_color="gray",
        row=1,
        col=2,
        annotation_text=f"{embed_dim} dimensions",
    )
    for i, (key, name) in enumerate((("dim_std_min", "min std"), ("dim_std_mean", "mean std"))):
        fig.add_trace(
            go.Scatter(
                x=epochs,
                y=[h.get(key) for h in history],
                name=name,
                mode="lines+markers",
                line={"color": _PALETTE[3 + i]},
            ),
            row=2,
            col=1,
        )
    fig.add_hline(
        y=1.0, line_dash="dot", line_color="gray", row=2, col=1, annotation_text="target 1"
    )
    for i, (tag, std) in enumerate(sensor_std.items()):
        rmse = [(h.get("holdout_readout_rmse") or {}).get(tag) for h in history]
        fig.add_trace(
            go.Scatter(
                x=epochs,
                y=[None if r is None else r / std for r in rmse],
                customdata=rmse,
                name=f"readout {tag}",
                mode="lines",
                line={"color": _PALETTE[i % len(_PALETTE)], "dash": "dash"},
                hovertemplate=f"{tag}: %{{customdata:.4g}} (in std %{{y:.3f}})<extra></extra>",
                showlegend=len(sensor_std) <= 12,
            ),
            row=2,
            col=2,
        )
    fig.update_yaxes(type="log", title_text="loss [-]", row=1, col=1)
    fig.update_yaxes(title_text="rank [-]", rangemode="tozero", row=1, col=2)
    fig.update_yaxes(title_text="std [embedding units]", rangemode="tozero", row=2, col=1)
    fig.update_yaxes(type="log", title_text="RMSE / std [-]", row=2, col=2)
    fig.update_xaxes(title_text="epoch")
    fig.update_layout(height=620, template="plotly_white", margin={"t": 50})
    return fig


def collapse_figure(dim_std: np.ndarray, rank: float) -> go.Figure:
    """Per-dimension std of held-out embeddings, with the effective rank in the title."""
    dims = [f"z{i}" for i in range(len(dim_std))]
    fig = go.Figure(go.Bar(x=dims, y=dim_std, marker_color=_PALETTE[0], name="std"))
    fig.add_hline(y=1.0, line_dash="dot", line_color="gray", annotation_text="target 1")
    fig.update_layout(
        title=f"effective rank {rank:.2f} of {len(dim_std)}",
        xaxis_title="embedding dimension",
        yaxis_title="std [embedding units]",
        height=340,
        template="plotly_white",
        margin={"t": 50},
    )
    return fig


def horizon_figure(
    errors: HorizonError, units: Mapping[str, str], trained_steps: int = 0
) -> go.Figure:
    """RMSE / training std per sensor against how far ahead the twin predicted."""
    fig = go.Figure()
    for i, (tag, in_std) in enumerate(errors.rmse_in_std.items()):
        fig.add_trace(
            go.Scatter(
                x=errors.horizon_s,
                y=in_std,
                customdata=errors.rmse[tag],
                mode="lines",
                name=tag,
                line={"color": _PALETTE[i % len(_PALETTE)]},
                hovertemplate=(
                    f"{tag} at %{{x:g}} s: RMSE %{{customdata:.4g}} "
                    f"{units.get(tag, '')}<extra></extra>"
                ),
            )
        )
    if 0 < trained_steps:
        step_s = float(errors.horizon_s[0])
        fig.add_vline(
            x=trained_steps * step_s,
            line_dash="dot",
            line_color="gray",
            annotation_text=f"trained rollout ({trained_steps} steps)",
        )
    fig.update_layout(
        xaxis_title="horizon [s]",
        yaxis_title="RMSE / training std [-]",
        title=f"open-loop prediction error, {errors.samples} starts",
        height=380,
        template="plotly_white",
        margin={"t": 50},
    )
    return fig


def map_figure(
    projection: Projection, times_s: np.ndarray, regime: np.ndarray, regime_label: str
) -> go.Figure:
    """Embeddings on their two principal axes, coloured by time and by regime."""
    keep = np.unique(
        np.linspace(0, len(times_s) - 1, min(len(times_s), MAX_MAP_POINTS)).astype(int)
    )
    t, unit = _time_axis(times_s)
    ex = projection.explained
    fig = make_subplots(
        rows=1,
        cols=2,
        horizontal_spacing=0.14,
        subplot_titles=("coloured by time", f"coloured by {regime_label}"),
    )
    for col, (values, title, bar_x) in enumerate(
        ((t, f"time [{unit}]", 0.43), (regime, regime_label, 1.0)), start=1
    ):
        fig.add_trace(
            go.Scattergl(
                x=projection.coords[keep, 0],
                y=projection.coords[keep, 1],
                mode="markers",
                marker={
                    "color": values[keep],
                    "colorscale": "Viridis",
                    "size": 4,
                    "colorbar": {"title": {"text": title}, "x": bar_x, "len": 0.9},
                },
                name=title,
                showlegend=False,
                hovertemplate=f"{title}: %{{marker.color:.4g}}<extra></extra>",
            ),
            row=1,
            col=col,
        )
    fig.update_xaxes(title_text=f"PC1 ({100 * ex[0]:.0f} % of variance)")
    fig.update_yaxes(title_text=f"PC2 ({100 * ex[1]:.0f} % of variance)")
    fig.update_layout(height=420, template="plotly_white", margin={"t": 50})
    return fig


def surprise_figure(
    scores: np.ndarray, threshold: float, calibration_rows: int, times_s: np.ndarray
) -> go.Figure:
    """The surprise trace, its threshold, and the rows the threshold was set on."""
    t, unit = _time_axis(times_s)
    above = np.nan_to_num(scores, nan=-np.inf) > threshold
    test = scores[calibration_rows:]
    finite = test[np.isfinite(test)]
    rate = float(np.mean(finite > threshold)) if finite.size else math.nan
    fig = go.Figure()
    fig.add_trace(
        go.Scattergl(
            x=t, y=scores, mode="lines", name="surprise", line={"color": _PALETTE[0], "width": 1}
        )
    )
    fig.add_trace(
        go.Scattergl(
            x=t[above],
            y=scores[above],
            mode="markers",
            name="above threshold",
            marker={"color": _PALETTE[3], "size": 5},
        )
    )
    fig.add_hline(
        y=threshold,
        line_color=_PALETTE[3],
        line_dash="dash",
        annotation_text=f"threshold {threshold:.3g} ({100 * FALSE_ALARM_RATE:g} % false alarms)",
    )
    if calibration_rows > 0:
        fig.add_vrect(
            x0=t[0],
            x1=t[calibration_rows - 1],
            fillcolor="gray",
            opacity=0.1,
            line_width=0,
            annotation_text="calibration",
            annotation_position="top left",
        )
    fig.update_layout(
        title=f"share above threshold after calibration: {100 * rate:.2f} % "
        f"(target {100 * FALSE_ALARM_RATE:g} %)",
        xaxis_title=f"time [{unit}]",
        yaxis_title="surprise [squared embedding units]",
        yaxis_type="log",
        height=360,
        template="plotly_white",
        margin={"t": 50},
    )
    return fig
