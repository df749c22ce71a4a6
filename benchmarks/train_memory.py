"""Per-GPU memory of WSPO training for the paper configs, on paper (`w2s.memory.train_memory`; nothing runs).

    .venv/bin/python benchmarks/train_memory.py                      # prints the table
    .venv/bin/python benchmarks/train_memory.py --readme docs/memory.md   # between its markers

--readme FILE replaces the text between `<!-- train-memory-table -->` and `<!-- /train-memory-table -->` in FILE
with the table (the markers stay). Each paper config gives two rows: as configured, and with
`train.gradient_checkpointing=true`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.paper_memory import paper_settings, paper_train_memory  # noqa: E402
from w2s.memory import GIB  # noqa: E402

MARKERS = ("<!-- train-memory-table -->", "<!-- /train-memory-table -->")
COLUMNS = ("weights", "gradients", "optimizer", "gathered", "activations", "logprobs")


def how(config: Path, gpus: int) -> str:
    s = paper_settings(config)
    parts = ["LoRA"] * s["lora"] + [f"ZeRO-{s['zero_stage']}"] + ["optimizer offload"] * s["offload"]
    return f"{gpus} GPUs, {', '.join(parts)}, {s['micro_batch']} x {s['max_len']} tokens"


def table(repo: Path = REPO, gpus: int = 4) -> str:
    """The markdown table: each part of the per-GPU memory in GiB, the total, and the host memory per GPU."""
    lines = [
        "| config | setting | gradient checkpointing | weights | gradients | optimizer | ZeRO-3 gathered "
        "| activations | log-prob step | **total per GPU** | CPU per GPU (offload) |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for config in sorted(Path(repo, "configs").glob("paper_*.yaml")):
        for checkpointing in (False, True):
            memory = paper_train_memory(config, gpus, checkpointing)
            cells = [f"{getattr(memory, column) / GIB:.2f}" for column in COLUMNS]
            lines.append(
                f"| {config.stem} | {how(config, gpus)} | {'yes' if checkpointing else 'no'} | {' | '.join(cells)} "
                f"| **{memory.total / GIB:.1f} GiB** | {memory.host / GIB:.1f} GiB |"
            )
    return "\n".join(lines)


def write_between_markers(path: Path, text: str) -> None:
    """Replaces what lies between the train-memory-table markers in `path` with `text`."""
    content = path.read_text()
    start, end = content.find(MARKERS[0]), content.find(MARKERS[1])
    if start < 0 or end < start:
        raise SystemExit(f"{path}: no {MARKERS[0]} ... {MARKERS[1]} markers to write between")
    head = content[: start + len(MARKERS[0])]
    path.write_text(f"{head}\n{text}\n{content[end:]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--readme", type=Path, help="write the table between the train-memory-table markers")
    parser.add_argument("--gpus", type=int, default=4, help="GPUs the policy is trained on (the paper used 4)")
    args = parser.parse_args()
    text = table(REPO, args.gpus)
    if args.readme:
        write_between_markers(args.readme, text)
    print(text)


if __name__ == "__main__":
    main()
