"""Process logs on disk: CSV or Parquet, read with pandas, errors that say what to do."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pyarrow

from .errors import InvalidInput

LOG_SUFFIXES = (".csv", ".parquet")


def _suffix(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix not in LOG_SUFFIXES:
        raise InvalidInput(f"{path}: use a .csv or .parquet file")
    return suffix


def read_log(path: str | Path) -> pd.DataFrame:
    path = Path(path)
    suffix = _suffix(path)
    if not path.is_file():
        raise InvalidInput(f"log file not found: {path}")
    try:
        return pd.read_csv(path) if suffix == ".csv" else pd.read_parquet(path)
    except (
        pd.errors.ParserError,
        pd.errors.EmptyDataError,
        UnicodeDecodeError,
        pyarrow.ArrowException,
        OSError,
    ) as exc:
        raise InvalidInput(f"{path}: cannot read as {suffix[1:]}: {exc}") from None


def write_log(df: pd.DataFrame, path: str | Path) -> None:
    path = Path(path)
    suffix = _suffix(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if suffix == ".csv":
        df.to_csv(path, index=False)
    else:
        df.to_parquet(path, index=False)
