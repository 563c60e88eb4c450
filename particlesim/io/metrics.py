"""Per-epoch (or per-N-step) metrics as JSON lines or CSV, flushed row by row."""

from __future__ import annotations

import csv
import json
import math
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from particlesim.core.triggers import Trigger
from particlesim.core.writers import Writer
from particlesim.errors import CheckpointError

if TYPE_CHECKING:
    from particlesim.core.simulation import Simulation


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


class MetricsWriter(Writer):
    """Append one row of scalar observables per due step to ``<out>/metrics.jsonl`` (or ``.csv``).

    Each row is flushed as it is written, so a killed run keeps every row up to
    the last. Non-finite numbers are written as ``null`` (JSON) or empty (CSV).
    A resumed run truncates the file to the rows (bytes) it had at the
    checkpoint and appends from there.

    Args:
        trigger: when to write (default: end of each epoch).
        observables: what to record.
        format: ``"jsonl"`` or ``"csv"``.
        file: file name inside the run directory (default ``metrics.<format>``).
    """

    name = "metrics"
    default_observables = (
        "epoch",
        "train_loss",
        "train_accuracy",
        "val_accuracy",
        "test_loss",
        "test_accuracy",
        "lr",
        "wall_time",
    )

    def __init__(
        self,
        *,
        trigger: Trigger | int | None = None,
        observables: list[str] | None = None,
        format: Literal["jsonl", "csv"] = "jsonl",
        file: str | None = None,
    ) -> None:
        super().__init__(trigger=trigger, observables=observables)
        self.format = format
        self.file_name = file or f"metrics.{format}"
        self.path: Path | None = None
        self._handle = None
        self._csv = None
        self.rows: list[dict[str, Any]] = []
        self._bytes = 0  # size of the file after the last complete row
        self._written = 0  # rows in the file

    def open(self, simulation: Simulation, out_dir: Path | None) -> None:
        if out_dir is None:
            return
        self.path = Path(out_dir) / self.file_name
        self._handle = self.path.open("a", encoding="utf-8", newline="")
        if self.format == "csv":
            self._csv = csv.DictWriter(self._handle, fieldnames=["step", *self.observables])
            if self.path.stat().st_size == 0:
                self._csv.writeheader()
                self._handle.flush()
        self._bytes = os.fstat(self._handle.fileno()).st_size

    def state_dict(self) -> dict[str, Any]:
        """The file, its rows and its size in bytes after the last complete row."""
        return {
            "file": None if self.path is None else str(self.path),
            "rows": self._written,
            "bytes": self._bytes,
        }

    def resume(self, simulation: Simulation, out_dir: Path | None, state: dict[str, Any]) -> None:
        """Truncate the file to its size at the checkpoint (rows after it go), then append."""
        if out_dir is not None:
            path = Path(out_dir) / self.file_name
            size = int(state.get("bytes", 0))
            have = path.stat().st_size if path.is_file() else 0
            if have < size:
                raise CheckpointError(
                    f"{path}: has {have} bytes, but the checkpoint recorded {size}; "
                    "the file does not belong to this checkpoint"
                )
            if path.is_file():
                os.truncate(path, size)
        self.open(simulation, out_dir)
        self._written = int(state.get("rows", 0))

    def report(self, simulation: Simulation, step: int, values: dict[str, Any]) -> None:
        row = {"step": step, **values}
        self.rows.append(row)
        if self._handle is None:
            return
        if self._csv is not None:
            self._csv.writerow({k: ("" if v is None else _json_safe(v)) for k, v in row.items()})
        else:
            self._handle.write(json.dumps({k: _json_safe(v) for k, v in row.items()}) + "\n")
        self._handle.flush()
        self._bytes = os.fstat(self._handle.fileno()).st_size
        self._written += 1

    def close(self, status: str) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None
