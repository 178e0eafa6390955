"""Train one model of the zoo on CIFAR-2 and write a self-describing checkpoint.

    python -m models.train --model net                        # the book: SGD 1e-2, batch 64, 100 epochs
    python -m models.train --recipe fast                      # net_fast, ~20 epochs, val >= 0.93
    python -m models.train --model net --recipe fast --out runs/fast/
    python -m models.train --model net_resdeep --arg n_blocks=10 --epochs 20
    python -m models.train --model dense --threads 1          # on a busy shared CPU

Writes OUT/NAME.pt (loads with torch.load(..., weights_only=True)) and OUT/NAME.json (metrics).
The last line printed is ``val_acc=0.xxxx``. Same seed on CPU gives the same weights.
"""

from __future__ import annotations

import argparse
import ast
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from models.checkpoint import make_checkpoint, save_checkpoint
from models.data import DataError, load_cifar2
from models.evaluate import accuracy, normalize
from models.nets import UnknownModelError, build, count_params, model_args
from models.recipes import RECIPES, recipe_for


def augment(images: torch.Tensor, pad: int, flip: bool, gen: torch.Generator) -> torch.Tensor:
    """Random crop (reflect padding) and horizontal flip of a whole uint8 batch at once:
    one slice per distinct shift, instead of one PIL call per image."""
    n = images.shape[0]
    if pad:
        padded = F.pad(images, (pad,) * 4, mode="reflect")
        shifts = torch.randint(0, 2 * pad + 1, (n, 2), generator=gen)
        out = torch.empty_like(images)
        for dy in range(2 * pad + 1):
            for dx in range(2 * pad + 1):
                idx = ((shifts[:, 0] == dy) & (shifts[:, 1] == dx)).nonzero().flatten()
                out[idx] = padded[idx, :, dy:dy + 32, dx:dx + 32]
        images = out
    if flip:
        mask = torch.rand(n, generator=gen) < 0.5
        images = torch.where(mask[:, None, None, None], images.flip(3), images)
    return images


def lr_factor(recipe: dict, total_steps: int):
    """Multiplier of the base lr at each optimizer step."""
    if recipe["schedule"] == "constant":
        return lambda step: 1.0
    warm = max(1, int(recipe["warmup"] * total_steps))
    return lambda step: (step + 1) / warm if step < warm else max(0.0, (total_steps - step) / (total_steps - warm))


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: no usable CUDA GPU here; use --device cpu or auto")
    return torch.device(name)


def train(name: str, args: dict, recipe: dict, data, device: torch.device, seed: int):
    """The loop: returns (model, metrics). Deterministic on CPU for a fixed seed."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)  # shuffling and augmentation, on the CPU
    model = build(name, **args).to(device, memory_format=torch.channels_last)
    decay, no_decay = [], []
    for p in model.parameters():  # weight decay on weights only, never on biases or BN
        (decay if p.ndim > 1 else no_decay).append(p)
    opt = torch.optim.SGD(
        [{"params": decay, "weight_decay": recipe["weight_decay"]}, {"params": no_decay, "weight_decay": 0}],
        lr=recipe["lr"], momentum=recipe["momentum"], nesterov=recipe["nesterov"],
    )
    n, bs = len(data.train_y), recipe["batch_size"]
    steps_per_epoch = (n + bs - 1) // bs
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_factor(recipe, recipe["epochs"] * steps_per_epoch))
    loss_fn = nn.CrossEntropyLoss(label_smoothing=recipe["label_smoothing"])
    train_y = data.train_y.to(device)
    history, start = [], time.perf_counter()
    print(f"{'epoch':>9} {'loss':>7} {'train_acc':>9} {'val_acc':>8} {'lr':>8} {'seconds':>8}")
    for epoch in range(1, recipe["epochs"] + 1):
        t0 = time.perf_counter()
        model.train()
        images = augment(data.train_x, recipe["crop_pad"], recipe["flip"], gen).to(device)
        order = torch.randperm(n, generator=gen).to(device)
        # Summed on the device and read once per epoch: .item() every step is a GPU sync.
        loss_sum = torch.zeros((), device=device)
        correct_sum = torch.zeros((), dtype=torch.long, device=device)
        lr = opt.param_groups[0]["lr"]
        for i in tqdm(range(steps_per_epoch), desc=f"epoch {epoch}", leave=False, unit="batch"):
            idx = order[i * bs:(i + 1) * bs]
            x = normalize(images[idx]).contiguous(memory_format=torch.channels_last)
            logits = model(x)
            loss = loss_fn(logits, train_y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            loss_sum += loss.detach() * len(idx)
            correct_sum += (logits.argmax(1) == train_y[idx]).sum()
        total_loss, correct = loss_sum.item(), correct_sum.item()
        val_acc = accuracy(model, data.test_x, data.test_y, device)
        row = {"epoch": epoch, "loss": total_loss / n, "train_acc": correct / n, "val_acc": val_acc,
               "lr": lr, "seconds": time.perf_counter() - t0}
        history.append(row)
        print(f"{epoch:>4}/{recipe['epochs']:<4} {row['loss']:7.4f} {row['train_acc']:9.4f} "
              f"{val_acc:8.4f} {lr:8.5f} {row['seconds']:8.1f}", flush=True)
    seconds = time.perf_counter() - start
    model = model.to(memory_format=torch.contiguous_format)
    metrics = {
        # The book's train accuracy: the final model in eval mode on the un-augmented train set.
        "train_acc": accuracy(model, data.train_x, data.train_y, device),
        "val_acc": history[-1]["val_acc"], "epochs": recipe["epochs"], "seconds": round(seconds, 1),
        "device": str(device), "threads": torch.get_num_threads(), "seed": seed, "history": history,
    }
    return model.cpu(), metrics


def parse_arg(text: str) -> tuple[str, object]:
    """``--arg n_blocks=10`` -> ("n_blocks", 10); values are Python literals."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise ValueError(f"--arg {text!r}: expected KEY=VALUE, e.g. n_blocks=10")
    try:
        return key, ast.literal_eval(value)
    except (ValueError, SyntaxError):
        raise ValueError(f"--arg {text!r}: {value!r} is not a Python literal") from None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", help="zoo name (default: the recipe's model: book -> net, fast -> net_fast)")
    p.add_argument("--recipe", choices=list(RECIPES), default="book")
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--data-dir", help="ImageFolder tree (default: $CIFAR2_DATA, else download)")
    p.add_argument("--out", default="runs/", help="output directory for NAME.pt and NAME.json")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int,
                   help="torch CPU threads (default: torch's choice; 1 is faster on a busy shared CPU)")
    p.add_argument("--arg", action="append", default=[], metavar="KEY=VALUE",
                   help="model constructor override, e.g. --arg n_blocks=10 (repeatable)")
    a = p.parse_args(argv)
    for flag in ("epochs", "batch_size"):
        if getattr(a, flag) is not None and getattr(a, flag) < 1:
            p.error(f"--{flag.replace('_', '-')} must be at least 1")
    if a.lr is not None and not a.lr > 0:
        p.error("--lr must be positive")
    if a.threads is not None:
        if a.threads < 1:
            p.error("--threads must be at least 1")
        torch.set_num_threads(a.threads)
    name = a.model or RECIPES[a.recipe]["default_model"]
    try:
        args = model_args(name, **dict(parse_arg(t) for t in a.arg))
        try:  # fail on bad constructor args before decoding any data
            params = count_params(build(name, **args))
        except TypeError as e:
            raise ValueError(f"bad --arg for model {name}: {e}") from None
        recipe = recipe_for(a.recipe, name, epochs=a.epochs, batch_size=a.batch_size, lr=a.lr)
        device = pick_device(a.device)
        data = load_cifar2(a.data_dir)
    except (UnknownModelError, DataError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"model {name} {args} ({params:,} params), recipe {recipe}")
    print(f"data {data.source} ({data.fingerprint}), device {device}, threads {torch.get_num_threads()}")
    model, metrics = train(name, args, recipe, data, device, a.seed)
    ckpt = make_checkpoint(name, args, model, metrics=metrics, recipe=recipe,
                           data_fingerprint=data.fingerprint)
    out = Path(a.out)
    pt = save_checkpoint(ckpt, out / f"{name}.pt")
    summary = {"model": name, "model_args": args, "params": ckpt["params"], "recipe": recipe,
               "metrics": metrics, "data_fingerprint": data.fingerprint, "checkpoint": str(pt)}
    (out / f"{name}.json").write_text(json.dumps(summary, indent=2, default=list) + "\n")
    print(f"wrote {pt} and {out / f'{name}.json'}: train_acc={metrics['train_acc']:.4f} "
          f"in {metrics['seconds']:.0f}s")
    print(f"val_acc={metrics['val_acc']:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
