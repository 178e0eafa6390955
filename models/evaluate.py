"""Compare trained checkpoints with the book: a markdown table and a bar chart.

    python -m models.evaluate runs/*.pt runs/fast/*.pt [--data-dir DIR] \
        [--plot docs/accuracy_comparison.png] [--curves docs/val_curves.png]

With data available (--data-dir, $CIFAR2_DATA, or the cached download) each checkpoint is
re-evaluated on the test split; that ``val_acc (re-eval)`` number is the one the HTTP accuracy
check compares against.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from models.checkpoint import MEAN, STD, CheckpointError, load_checkpoint, model_from_checkpoint
from models.nets import UnknownModelError

# The book's p1ch7 / p1ch8 notebooks: 100 epochs, SGD lr 1e-2, batch 64.
BOOK = {
    "dense": (0.998, 0.82), "dense_deep": (1.00, 0.80), "net": (0.93, 0.89),
    "net_width": (0.96, 0.90), "net_dropout": (0.89, 0.88), "net_batchnorm": (1.00, 0.89),
    "net_depth": (0.95, 0.90), "net_res": (0.97, 0.90), "net_resdeep": (0.97, 0.86),
}

_MEAN = torch.tensor(MEAN).view(1, 3, 1, 1)
_STD = torch.tensor(STD).view(1, 3, 1, 1)


def normalize(images: torch.Tensor) -> torch.Tensor:
    """uint8 [N,3,32,32] RGB 0-255 -> the float input every zoo model expects."""
    x = images.float().div_(255)
    return (x - _MEAN.to(x.device)) / _STD.to(x.device)


@torch.no_grad()
def accuracy(model, images: torch.Tensor, labels: torch.Tensor, device="cpu", batch: int = 1000) -> float:
    """Top-1 accuracy in eval mode; leaves the model in eval mode."""
    model.eval()
    correct = 0
    for i in range(0, len(labels), batch):
        x = normalize(images[i:i + batch].to(device))
        correct += (model(x).argmax(1).cpu() == labels[i:i + batch]).sum().item()
    return correct / len(labels)


def rows_for(paths: list[Path], test=None) -> list[dict]:
    rows = []
    for path in paths:
        ckpt = load_checkpoint(path)
        m, r = ckpt["metrics"], ckpt["recipe"]
        row = {"file": str(path), "model": ckpt["model"], "params": ckpt["params"],
               "recipe": r.get("name", "?"), "epochs": m.get("epochs"), "train_acc": m.get("train_acc"),
               "val_acc": m.get("val_acc"), "seconds": m.get("seconds"), "reeval": None,
               "book": BOOK.get(ckpt["model"]) if r.get("name") == "book" else None}
        if ckpt["model"] == "net_resdeep" and ckpt["model_args"].get("n_blocks") != 100:
            row["model"] += f" ({ckpt['model_args']['n_blocks']} blocks)"
        if m.get("seed"):  # tell repeated runs of one model apart
            row["model"] += f" (seed {m['seed']})"
        if test is not None:
            row["reeval"] = accuracy(model_from_checkpoint(ckpt), *test)
        rows.append(row)
    return rows


def markdown(rows: list[dict]) -> str:
    def f(v, spec):
        return "-" if v is None else format(v, spec)
    header = ("| model | params | recipe | epochs | train acc | val acc | val acc (re-eval) "
              "| seconds | book train | book val |")
    lines = [header, "|" + " --- |" * 10]
    for r in rows:
        book = r["book"] or (None, None)
        lines.append(f"| {r['model']} | {r['params']:,} | {r['recipe']} | {r['epochs']} | "
                     f"{f(r['train_acc'], '.4f')} | {f(r['val_acc'], '.4f')} | {f(r['reeval'], '.4f')} | "
                     f"{f(r['seconds'], '.0f')} | {f(book[0], '.3f')} | {f(book[1], '.2f')} |")
    return "\n".join(lines)


def plot(rows: list[dict], path: Path) -> None:
    """Grouped bars like the book's accuracy_comparison.png: train and val per model, ours
    solid, the book's hatched."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [f"{r['model']}\n({r['recipe']})" for r in rows]
    xs = range(len(rows))
    w = 0.2
    fig, ax = plt.subplots(figsize=(max(6, 1.3 * len(rows)), 5))
    ax.bar([x - 1.5 * w for x in xs], [r["train_acc"] or 0 for r in rows], w, label="train (ours)")
    ax.bar([x - 0.5 * w for x in xs], [r["val_acc"] or 0 for r in rows], w, label="val (ours)")
    ax.bar([x + 0.5 * w for x in xs], [(r["book"] or (0, 0))[0] for r in rows], w, hatch="//",
           alpha=0.5, label="train (book)")
    ax.bar([x + 1.5 * w for x in xs], [(r["book"] or (0, 0))[1] for r in rows], w, hatch="//",
           alpha=0.5, label="val (book)")
    ax.set_xticks(list(xs), labels, fontsize=8)
    ax.set_ylim(0.7, 1.0)
    ax.set_ylabel("accuracy")
    ax.set_title("CIFAR-2: accuracy per model (ours vs the book)")
    ax.legend(fontsize=8, ncol=4, loc="upper center", bbox_to_anchor=(0.5, -0.15))
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_curves(paths: list[Path], path: Path) -> None:
    """Validation accuracy per epoch of every checkpoint, from its recorded history."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for p in paths:
        ckpt = load_checkpoint(p)
        hist = ckpt["metrics"].get("history", [])
        ax.plot([h["epoch"] for h in hist], [h["val_acc"] for h in hist],
                label=f"{ckpt['model']} ({ckpt['recipe'].get('name', '?')})")
    ax.set_xscale("log")
    ax.set_xlabel("epoch")
    ax.set_ylabel("val accuracy")
    ax.set_ylim(0.6, 1.0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title("CIFAR-2: validation accuracy per epoch")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("checkpoints", nargs="+", type=Path)
    p.add_argument("--data-dir", help="ImageFolder tree (default: $CIFAR2_DATA, else download)")
    p.add_argument("--no-data", action="store_true", help="skip the re-evaluation on the test split")
    p.add_argument("--plot", type=Path, default=Path("runs/accuracy_comparison.png"))
    p.add_argument("--curves", type=Path, help="also plot val accuracy per epoch to this PNG")
    a = p.parse_args(argv)
    test = None
    if not a.no_data:
        from models.data import DataError, load_split
        try:
            test = load_split(a.data_dir, "test")
        except DataError as e:
            print(f"note: no test data, so no re-evaluation ({e})", file=sys.stderr)
    try:
        rows = rows_for(a.checkpoints, test)
    except (CheckpointError, UnknownModelError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(markdown(rows))
    plot(rows, a.plot)
    print(f"\nchart: {a.plot}")
    if a.curves:
        plot_curves(a.checkpoints, a.curves)
        print(f"curves: {a.curves}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
