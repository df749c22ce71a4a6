"""Training metrics: one JSON line per step, TensorBoard scalars, a PNG of the curves and a closing summary."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from rich.console import Console  # noqa: E402

from w2s.io import atomic_write_text  # noqa: E402
from w2s.train.losses import describe_loss  # noqa: E402

CURVES = ("loss", "strong_ratio_mean", "weak_ratio_mean", "ratio_correlation")


class MetricsLog:
    """Appends step metrics to `metrics.jsonl` and TensorBoard (rank 0 only); keeps them for the summary."""

    def __init__(self, out_dir: Path, enabled: bool = True):
        self.path, self.enabled, self.rows = out_dir / "metrics.jsonl", enabled, []
        self.writer = None
        if enabled:
            out_dir.mkdir(parents=True, exist_ok=True)
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(out_dir / "tensorboard"))

    def write(self, row: dict, log_now: bool = True) -> None:
        self.rows.append(row)
        if not self.enabled:
            return
        with open(self.path, "a") as handle:
            handle.write(json.dumps(row) + "\n")
        if log_now:
            for key, value in row.items():
                if key != "step":
                    self.writer.add_scalar(f"train/{key}", value, row["step"])
            self.writer.flush()


def read_metrics(out_dir: Path, up_to_step: int | None = None) -> list[dict]:
    """Every step's metrics of a run, resumed segments included (a step logged twice keeps its last line).

    A line cut short by a killed process is skipped.
    """
    rows: dict[int, dict] = {}
    if (out_dir / "metrics.jsonl").exists():
        for line in (out_dir / "metrics.jsonl").read_text().splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            if up_to_step is None or row["step"] <= up_to_step:
                rows[row["step"]] = row
    return [rows[k] for k in sorted(rows)]


def rewind_metrics(out_dir: Path, step: int) -> None:
    """Keeps only the metrics of steps up to `step` (where a resumed run restarts), written atomically."""
    rows = read_metrics(out_dir, up_to_step=step)
    atomic_write_text(out_dir / "metrics.jsonl", "".join(json.dumps(row) + "\n" for row in rows))


def plot_curves(rows: list[dict], path: Path, title: str) -> None:
    """One panel per curve the loss logged (a loss of your own may log only `loss`)."""
    curves = [key for key in CURVES if all(key in r for r in rows)]
    fig, axes = plt.subplots(1, len(curves), figsize=(4 * len(curves), 3.2), squeeze=False)
    steps = [r["step"] for r in rows]
    for axis, key in zip(axes[0], curves):
        axis.plot(steps, [r[key] for r in rows])
        axis.set(title=key, xlabel="step")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def summarise(out_dir: Path, loss: dict) -> dict:
    """Writes curves.png and summary.json and prints a one-screen summary (`loss`: the run's loss spec)."""
    rows = read_metrics(out_dir)
    plot_curves(rows, out_dir / "curves.png", describe_loss(loss))
    read, total = sum(r["read_seconds"] for r in rows), sum(r["step_seconds"] for r in rows)
    summary = {
        "out_dir": str(out_dir),
        "loss": loss,
        "steps": len(rows),
        "first_loss": rows[0]["loss"],
        "last_loss": rows[-1]["loss"],
        "last_correlation": rows[-1].get("ratio_correlation"),
        "seconds": total,
        "reader_share": read / total if total else 0.0,
    }
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    correlation = summary["last_correlation"]
    correlation = f", strong/weak ratio correlation {correlation:.3f}" if correlation is not None else ""
    Console().print(
        f"[green]training done[/green] {describe_loss(loss)}: {summary['steps']} steps in {total:.1f} s, loss "
        f"{summary['first_loss']:.4f} -> {summary['last_loss']:.4f}{correlation}, reader "
        f"{100 * summary['reader_share']:.2f}% of step time\n"
        f"model: {out_dir / 'final'}   curves: {out_dir / 'curves.png'}   metrics: {out_dir / 'metrics.jsonl'}"
    )
    return summary
