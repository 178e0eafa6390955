"""Training: it learns (overfits a small batch), it is deterministic, the CLI writes its files."""

import json

import pytest
import torch

from models.checkpoint import load_checkpoint
from models.data import load_cifar2
from models.recipes import RECIPES, recipe_for
from models.train import augment, lr_factor, train

pytestmark = pytest.mark.usefixtures("one_thread")

@pytest.fixture(scope="module")
def tiny(image_folder, tmp_path_factory):
    return load_cifar2(image_folder, cache_dir=tmp_path_factory.mktemp("cache"))


@pytest.mark.parametrize("name", ["net", "net_fast"])
def test_overfits_a_small_batch(name):
    torch.manual_seed(0)
    from models.nets import build
    model = build(name).train()
    x, y = torch.randn(8, 3, 32, 32), torch.arange(8) % 2  # random pictures, arbitrary labels
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(40):
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.05
    assert (model.eval()(x).argmax(1) == y).all()


@pytest.mark.parametrize("recipe", ["book", "fast"])
def test_same_seed_same_weights(tiny, recipe):
    r = recipe_for(recipe, "net", epochs=2)
    a, ma = train("net", {"n_chans1": 16}, r, tiny, torch.device("cpu"), seed=3)
    b, mb = train("net", {"n_chans1": 16}, r, tiny, torch.device("cpu"), seed=3)
    c, _ = train("net", {"n_chans1": 16}, r, tiny, torch.device("cpu"), seed=4)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert ma["history"][-1]["loss"] == mb["history"][-1]["loss"]
    assert any(not torch.equal(sa[k], sc[k]) for k in sa)


def test_fast_recipe_learns_the_tiny_set(tiny):
    # Batch 16 for 6 epochs: 48 steps, enough for BatchNorm's running statistics to settle.
    recipe = recipe_for("fast", "net_fast", epochs=6, batch_size=16)
    _, metrics = train("net_fast", {"widths": (16, 16, 16)}, recipe, tiny, torch.device("cpu"), seed=0)
    assert metrics["val_acc"] >= 0.9  # sky vs foliage is easy once the net trains at all


def test_augment_crops_and_flips_uint8_batches():
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (64, 3, 32, 32), dtype=torch.uint8)
    out = augment(x, pad=0, flip=True, gen=gen)
    flipped = [torch.equal(o, i.flip(2)) for o, i in zip(out, x)]
    kept = [torch.equal(o, i) for o, i in zip(out, x)]
    assert all(f or k for f, k in zip(flipped, kept)) and 10 < sum(flipped) < 54
    out = augment(x, pad=2, flip=False, gen=gen)
    assert out.dtype == torch.uint8 and out.shape == x.shape
    # Every crop is a 32x32 window of the reflect-padded picture; most are shifted.
    assert sum(torch.equal(o, i) for o, i in zip(out, x)) < 20
    assert torch.equal(augment(x, 0, False, gen), x)


def test_onecycle_warms_up_then_decays_to_zero():
    f = lr_factor(RECIPES["fast"] | {"warmup": 0.25}, total_steps=100)
    assert f(0) < f(10) < f(24) == 1.0
    assert f(50) > f(90) > f(99) > 0 and f(100) == 0.0


def test_book_recipe_defaults():
    assert recipe_for("book", "net")["lr"] == 1e-2 and recipe_for("book", "net_resdeep")["lr"] == 3e-3
    book = recipe_for("book", "dense")
    assert (book["batch_size"], book["epochs"], book["momentum"]) == (64, 100, 0.0)


def test_cli_writes_checkpoint_json_and_last_line(trained_run):
    proc, out = trained_run
    assert proc.returncode == 0, proc.stderr
    last = proc.stdout.strip().splitlines()[-1]
    assert last.startswith("val_acc=0.") and len(last) == len("val_acc=0.xxxx")
    ckpt = load_checkpoint(out / "net.pt")
    summary = json.loads((out / "net.json").read_text())
    m = ckpt["metrics"]
    assert float(last.split("=")[1]) == pytest.approx(m["val_acc"], abs=5e-5)
    assert {"train_acc", "val_acc", "epochs", "seconds", "device", "history"} <= set(m)
    assert m["epochs"] == 1 and len(m["history"]) == 1 and m["device"] == "cpu"
    assert ckpt["recipe"]["name"] == "book" and ckpt["recipe"]["lr"] == 1e-2
    assert ckpt["data_fingerprint"].startswith("imagefolder-")
    assert summary["metrics"]["val_acc"] == m["val_acc"] and summary["model"] == "net"
