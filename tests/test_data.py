"""Data loading from ImageFolder trees the tests build, the cache, and every bad-input case
through the real CLIs (exit code 2, the file named, no traceback)."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from models.data import DataError, load_cifar2, load_split

pytestmark = pytest.mark.usefixtures("one_thread")

ROOT = Path(__file__).resolve().parents[1]


def run_cli(*args, cache: Path, extra_env=None):
    env = dict(os.environ)
    env.update({"CIFAR2_CACHE": str(cache), "OMP_NUM_THREADS": "1", **(extra_env or {})})
    return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, env=env,
                          check=False, capture_output=True, text=True, timeout=120)


def assert_clean_error(proc, *needles):
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    for needle in needles:
        assert needle in proc.stderr, proc.stderr


def test_loads_image_folder_as_uint8(image_folder, tmp_path):
    data = load_cifar2(image_folder, cache_dir=tmp_path)
    assert data.train_x.shape == (128, 3, 32, 32) and data.train_x.dtype == torch.uint8
    assert data.test_x.shape == (32, 3, 32, 32)
    assert torch.bincount(data.train_y).tolist() == [64, 64]
    assert torch.bincount(data.test_y).tolist() == [16, 16]
    # The synthetic airplanes are 'sky' (blue-heavy), birds 'foliage' (green-heavy): the labels
    # must follow the folder names, not the file order.
    blue = data.train_x[:, 2].float().mean((1, 2))
    assert blue[data.train_y == 0].mean() > blue[data.train_y == 1].mean() + 50


def test_cache_is_reused_and_keyed_by_content(image_folder, tmp_path):
    tree = shutil.copytree(image_folder, tmp_path / "tree")
    first = load_cifar2(tree, cache_dir=tmp_path / "cache")
    cached = list((tmp_path / "cache").glob("*.pt"))
    assert len(cached) == 1
    again = load_cifar2(tree, cache_dir=tmp_path / "cache")
    assert again.fingerprint == first.fingerprint and torch.equal(again.train_x, first.train_x)
    # Same images elsewhere: same key. One changed file: a new key and a new decode.
    (tree / "test" / "bird" / "0000.png").write_bytes((tree / "test" / "bird" / "0001.png").read_bytes())
    changed = load_cifar2(tree, cache_dir=tmp_path / "cache")
    assert changed.fingerprint != first.fingerprint
    assert len(list((tmp_path / "cache").glob("*.pt"))) == 2


@pytest.mark.parametrize("broken", ["truncated", "not a dict"])
def test_a_broken_cache_is_decoded_again(image_folder, tmp_path, broken):
    first = load_cifar2(image_folder, cache_dir=tmp_path)
    (cache,) = tmp_path.glob("*.pt")
    if broken == "truncated":
        cache.write_bytes(cache.read_bytes()[:100])
    else:
        torch.save([1, 2, 3], cache)
    again = load_cifar2(image_folder, cache_dir=tmp_path)
    assert torch.equal(again.train_x, first.train_x)
    assert isinstance(torch.load(cache, weights_only=True), dict)  # rewritten


def test_load_split_for_other_stages(image_folder, tmp_path):
    x, y = load_split(image_folder, "test", cache_dir=tmp_path)
    assert x.shape == (32, 3, 32, 32) and x.dtype == torch.uint8 and y.dtype == torch.int64
    with pytest.raises(ValueError, match="split"):
        load_split(image_folder, "val", cache_dir=tmp_path)


def test_corrupt_file_raises_naming_it(image_folder, tmp_path):
    tree = shutil.copytree(image_folder, tmp_path / "tree")
    bad = tree / "train" / "bird" / "0003.png"
    bad.write_bytes(b"not a png at all")
    with pytest.raises(DataError, match="0003.png"):
        load_cifar2(tree, cache_dir=tmp_path / "cache")


@pytest.fixture(scope="module")
def broken_trees(image_folder, tmp_path_factory):
    base = tmp_path_factory.mktemp("broken")
    no_test = shutil.copytree(image_folder / "train", base / "no_test" / "train")
    wrong = base / "wrong_classes"
    shutil.copytree(image_folder, wrong)
    (wrong / "train" / "bird").rename(wrong / "train" / "cat")
    corrupt = shutil.copytree(image_folder, base / "corrupt")
    (corrupt / "test" / "airplane" / "notes.txt").write_text("hello")
    return {"no_test": no_test.parent, "wrong": wrong, "corrupt": corrupt}


def test_cli_missing_data_dir(tmp_path):
    missing = tmp_path / "nowhere"
    proc = run_cli("models.train", "--data-dir", str(missing), cache=tmp_path)
    assert_clean_error(proc, str(missing), "does not exist")


def test_cli_wrong_layout(broken_trees, tmp_path):
    proc = run_cli("models.train", "--data-dir", str(broken_trees["no_test"]), cache=tmp_path)
    assert_clean_error(proc, "ImageFolder layout", "test")
    proc = run_cli("models.data", "--data-dir", str(broken_trees["wrong"]), cache=tmp_path)
    assert_clean_error(proc, "cat", "airplane")


def test_cli_corrupt_file_is_reported_not_skipped(broken_trees, tmp_path):
    proc = run_cli("models.train", "--data-dir", str(broken_trees["corrupt"]), "--epochs", "1",
                   cache=tmp_path)
    assert_clean_error(proc, "notes.txt", "not a readable image")


def test_cli_unknown_model(image_folder, tmp_path):
    proc = run_cli("models.train", "--model", "resnet50", "--data-dir", str(image_folder), cache=tmp_path)
    assert_clean_error(proc, "resnet50", "net_fast")


def test_cli_no_data_no_network_names_both_fixes(tmp_path):
    # A dead proxy makes the download fail at once and keeps the test off the network.
    dead = "http://127.0.0.1:9"
    proc = run_cli("models.data", cache=tmp_path / "empty",
                   extra_env={"http_proxy": dead, "https_proxy": dead, "HTTP_PROXY": dead,
                              "HTTPS_PROXY": dead, "no_proxy": "", "NO_PROXY": ""})
    assert_clean_error(proc, "internet", "CIFAR2_DATA", "--data-dir")


def test_real_data_splits(real_data_dir):
    data = load_cifar2(real_data_dir)  # the default cache: decoded once per machine
    assert data.train_x.shape == (10_000, 3, 32, 32) and data.test_x.shape == (2_000, 3, 32, 32)
    assert torch.bincount(data.train_y).tolist() == [5_000, 5_000]
    assert torch.bincount(data.test_y).tolist() == [1_000, 1_000]
