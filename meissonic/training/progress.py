"""Run logging: a progress bar (loss, tokens/s, ETA), a CSV log and TensorBoard scalars, main process only."""

from __future__ import annotations

import csv
import warnings
from pathlib import Path

from tqdm.auto import tqdm


class RunLogger:
    def __init__(
        self,
        run_dir: Path,
        start: int,
        total: int,
        enabled: bool = True,
        tensorboard: bool = True,
        progress: bool = True,
    ):
        self.enabled = enabled
        self.run_dir = run_dir
        self.bar = None
        self.writer = None
        self._tables: dict[str, tuple[object, list[str] | None]] = {}
        if not enabled:
            return
        if progress:
            self.bar = tqdm(total=total, initial=start, desc="train", unit="step", dynamic_ncols=True)
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.writer = SummaryWriter(str(run_dir / "tensorboard"))
            except ImportError:
                warnings.warn("tensorboard is not installed: logging to log.csv only", stacklevel=2)

    def advance(self, steps: int = 1, **postfix) -> None:
        if self.bar is not None:
            self.bar.update(steps)
            if postfix:
                self.bar.set_postfix(
                    {k: (f"{v:.4g}" if isinstance(v, float) else v) for k, v in postfix.items()}
                )

    def log(self, step: int, values: dict[str, float], table: str = "log") -> None:
        """Append a row to `<table>.csv` (columns fixed by its first row; appended to on resume) and
        TensorBoard."""
        if not self.enabled:
            return
        if table not in self._tables:
            path = self.run_dir / f"{table}.csv"
            fields = None
            if path.is_file() and path.stat().st_size:
                with open(path) as f:
                    fields = next(csv.reader(f), None)
            self._tables[table] = (open(path, "a", newline=""), fields)  # noqa: SIM115 - closed in close()
        handle, fields = self._tables[table]
        row = {"step": step, **values}
        if fields is None:
            fields = list(row)
            self._tables[table] = (handle, fields)
            csv.writer(handle).writerow(fields)
        csv.writer(handle).writerow([row.get(k, "") for k in fields])
        handle.flush()
        if self.writer is not None:
            for key, value in values.items():
                self.writer.add_scalar(key if table == "log" else f"{table}/{key}", value, step)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        for handle, _ in self._tables.values():
            handle.close()
        if self.writer is not None:
            self.writer.close()
