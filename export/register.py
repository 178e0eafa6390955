"""Put a checked artifact folder into the BentoML model store as ``cifar2-<model>``.

    python -m export runs/net.pt --register          # export, gate, then register
    BENTOML_HOME=$PWD/bentoml_home python -m export ...   # another store, as BentoML does

Only a folder whose parity.json says ``passed`` is stored, and its files must still be the
ones model.json describes; anything else is refused with RegisterError.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from export import card
from export.formats import ArtifactError

STORE_PREFIX = "cifar2-"


class RegisterError(ValueError):
    """The artifact folder may not go into the store; the message says why and what to do."""


def _checked(artifact_dir: Path) -> tuple[dict, dict]:
    try:
        parity = card.read_json(artifact_dir / card.PARITY)
        model_card = card.read_json(artifact_dir / card.CARD)
    except ArtifactError as e:
        raise RegisterError(f"refusing to register {artifact_dir}: parity is missing or "
                            f"unreadable ({e})") from None
    if parity.get("passed") is not True:
        why = "; ".join(parity.get("failures", [])) or "parity.json does not say passed"
        raise RegisterError(f"refusing to register {artifact_dir}: parity failed ({why}); "
                            "fix the export and run `python -m export <checkpoint>` again")
    changed = card.changed_files(artifact_dir, model_card)
    if changed:
        raise RegisterError(f"refusing to register {artifact_dir}: {changed[0]} is missing or "
                            "changed since it was checked; export again")
    return parity, model_card


def store_metadata(parity: dict, model_card: dict) -> tuple[dict, dict]:
    """(labels, metadata) per the project's store contract."""
    metrics, recipe = model_card.get("metrics", {}), model_card.get("recipe", {})
    recipe_name = recipe.get("name", "") if isinstance(recipe, dict) else str(recipe)
    metadata = {
        "model": model_card["model"],
        "classes": model_card["classes"],
        "mean": model_card["mean"],
        "std": model_card["std"],
        "params": model_card.get("params"),
        "val_acc": metrics.get("val_acc"),
        "train_acc": metrics.get("train_acc"),
        "recipe": recipe_name,
        "io": model_card["io"],
        "parity": {fmt: {"max_abs": r["max_abs"], "argmax_agreement": r["argmax_agreement"],
                         "passed": r["passed"]} for fmt, r in parity["formats"].items()},
        "checkpoint_sha256": model_card["checkpoint_sha256"],
        "versions": model_card["versions"],
        "files": model_card["files"],
    }
    labels = {"model": model_card["model"], "recipe": recipe_name or "unknown",
              "parity": "passed"}
    return labels, metadata


def register(artifact_dir: str | Path) -> str:
    """Store the folder's files (model.json included) as ``cifar2-<model>``; return the tag."""
    import bentoml  # slow to import; only registering needs it

    artifact_dir = Path(artifact_dir)
    parity, model_card = _checked(artifact_dir)
    labels, metadata = store_metadata(parity, model_card)
    files = list(model_card["files"]) + [card.CARD]
    with bentoml.models.create(STORE_PREFIX + model_card["model"], labels=labels,
                               metadata=metadata) as stored:
        for name in files:
            shutil.copy2(artifact_dir / name, stored.path_of(name))
    return str(stored.tag)
