"""`make gpu-check DEVICE=cpu` end to end, and the pieces the GPU machine relies on that can be
checked without one: the wheelhouse's parts and checksums, the bundle, FLOPs from the ONNX graph,
the real test images' eager reference, the CUDA libraries found in NVIDIA's pip packages.

The CUDA steps themselves cannot run here; the report must say so, in every section.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from conftest import untrained_checkpoint
from test_service_http import server_env

from bench.gpu import pack, wheelhouse
from bench.gpu.flops import count
from bench.gpu.machine import NO_GPU
from export.inputs import recorded_batches
from export.pipeline import export_checkpoint

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bundle(tmp_path_factory, image_folder) -> tuple[Path, dict]:
    """Both served models, untrained, exported with --fp16 and the (synthetic) test images,
    packed as the GPU machine gets them."""
    root = tmp_path_factory.mktemp("gpu_bundle")
    folders, parities = [], {}
    for name in ("net", "dense"):
        ckpt = untrained_checkpoint(name, root / f"{name}.pt")
        out, parities[name] = export_checkpoint(ckpt, root / name, data_dir=image_folder,
                                                progress=False, batch_sizes=(1, 7, 64), fp16=True)
        folders.append(str(out))
    assert pack.main([*folders, "--out", str(root / "bundle"), "--data-dir",
                      str(image_folder)]) == 0
    return root / "bundle", parities


def test_parity_json_keeps_the_test_images_reference(bundle, image_folder):
    path, parities = bundle
    images = np.load(path / "test_images.npy")
    assert images.shape == (32, 3, 32, 32) and images.dtype == np.uint8
    batches, refs = recorded_batches(parities["net"], images)
    assert [b.name for b in batches] == ["random"] * 3 + ["test"]
    assert refs[-1][0].shape == (32, 2) and np.allclose(refs[-1][1].sum(1), 1, atol=1e-6)
    with pytest.raises(ValueError, match="not the ones exported"):
        recorded_batches(parities["net"], images[::-1])


def test_make_gpu_check_cpu_writes_every_section(bundle, tmp_path):
    path, _ = bundle
    out = tmp_path / "report"
    # -o: the suite already runs inside .venv; do not let make rebuild it. About 15-30 s on
    # two cores; the timeout is the bound.
    done = subprocess.run(["make", "-s", "-o", ".venv/.installed", "gpu-check", "DEVICE=cpu",
                           f"GPU_BUNDLE={path}", f"GPU_OUT={out}"], check=False, cwd=ROOT,
                          env=server_env(tmp_path / "home"), capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    md = (out / "gpu.md").read_text()
    for section in ("### Machine", "### Parity", "### In-process throughput", "### HTTP",
                    "### Goals"):
        assert section in md
    assert md.count(NO_GPU) >= 10 and "<!-- gpu-check report: end -->" in md
    assert (out / "gpu_check.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    r = json.loads((out / "gpu_check.json").read_text())
    assert r["machine"]["gpu"] == NO_GPU and r["machine"]["peak"] == NO_GPU
    assert all(v == NO_GPU for _, _, v in r["goals"])
    assert r["flops"] == {"net": 1507456, "dense": 3147776}
    for model in ("net", "dense"):  # the carried files, checked on the CPU provider
        p32, p16 = r["parity"][model]["onnxruntime_cpu"], r["parity"][model]["onnxruntime_cpu_fp16"]
        assert p32["passed"] and p32["max_abs"] <= 1e-4 and p32["inputs"] == ["random", "test"]
        assert p16["passed"] and p16["inputs"] == ["test"] and p16["images"] == 32
    by_mode = {}
    for row in r["sweep"]:
        by_mode.setdefault(row["mode"], set()).add(row["status"])
    assert by_mode["run"] == by_mode["iobinding"] == {"measured"}
    assert by_mode["cuda_graph"] == by_mode["tensorrt"] == {NO_GPU}
    measured = [x for x in r["sweep"] if x["status"] == "measured"]
    assert len(measured) == 2 * 2 * 2 * 3 and all(x["images_per_s"] > 0 for x in measured)
    assert r["http"]["runs"]["cuda"]["status"] == NO_GPU
    cpu = r["http"]["runs"]["cpu"]
    assert cpu["status"] == "measured", cpu
    assert cpu["providers"] == {"convnet": "CPUExecutionProvider",
                                "dense": "CPUExecutionProvider"}
    for cell in cpu["cells"]:
        assert cell["status"] == "measured", cell
        # No 4xx/5xx or broken connection. A request left without a reply at the end of a run
        # is counted apart ("unanswered"); a couple are tolerated here.
        assert cell["requests"] > 0 and cell["errors"] == 0 and cell["images_per_s"] > 0
        assert cell["unanswered"] <= 2 and cell["statuses"] == {"200": cell["requests"]}
        # The service's own means for the cell, from /metrics: requests of one image ride in
        # calls of at least one image, and their wait and model call fit in their time.
        server = cell["server"]
        assert server["images_per_call"] >= cell["images"]
        assert 0 <= server["queue_ms"] and 0 < server["model_ms"]
        assert server["queue_ms"] + server["model_ms"] <= server["server_ms"] + 0.01 < 1000


def test_gpu_check_refuses_what_it_cannot_run(bundle, tmp_path):
    path, _ = bundle
    for args, why in ((["--bundle", str(tmp_path / "none")], "make gpu-bundle"),
                      (["--device", "cuda", "--bundle", str(path)], "no usable GPU")):
        done = subprocess.run([sys.executable, "-m", "bench.gpu_check", *args], check=False,
                              cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert done.returncode == 2 and why in done.stderr, done.stderr
        assert "Traceback" not in done.stderr


def test_pack_refuses_a_folder_without_the_fp16_file(exported, tmp_path, capsys):
    _, net, _ = exported("net")  # exported without --fp16
    assert pack.main([str(net), str(net), "--out", str(tmp_path / "b")]) == 2
    assert "--fp16" in capsys.readouterr().err


def test_flops_counted_from_the_onnx_graph_match_torch(bundle):
    from bench.bench_backends import flops_per_image
    from models.nets import build, model_args

    path, _ = bundle
    for name in ("net", "dense"):
        counted = count(path / name / "model.onnx")
        assert counted["flops_per_image"] == flops_per_image(build(name, **model_args(name)))
        assert counted["uncounted"] == [] and counted["elementwise_per_image"] > 3072


def _wheel(tmp: Path) -> Path:
    """A real, tiny wheel of one module."""
    whl = tmp / "gpucheck_probe-1.0-py3-none-any.whl"
    dist = "gpucheck_probe-1.0.dist-info"
    with zipfile.ZipFile(whl, "w") as z:
        z.writestr("gpucheck_probe.py", "VALUE = 42\n" + "# padding\n" * 400)
        z.writestr(f"{dist}/METADATA", "Metadata-Version: 2.1\nName: gpucheck-probe\n"
                                        "Version: 1.0\n")
        z.writestr(f"{dist}/WHEEL", "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: "
                                    "true\nTag: py3-none-any\n")
        z.writestr(f"{dist}/RECORD", "")
    return whl


def test_wheelhouse_travels_in_parts_and_installs_checked(tmp_path):
    whl = _wheel(tmp_path)
    house = tmp_path / "wheelhouse"
    info = {"python_version": f"{sys.version_info.major}.{sys.version_info.minor}"}
    manifest = wheelhouse.lay_out([whl], house, part_mib=300 / 2**20, group_mib=700 / 2**20,
                                  info=info)
    (entry,) = manifest["wheels"]
    assert len(entry["parts"]) >= 2 and len(manifest["groups"]) >= 2  # cut, and spread

    def install(target: str):
        return subprocess.run([sys.executable, str(ROOT / "bench/gpu/install.py"),
                               "--wheelhouse", str(house), "--target", str(tmp_path / target)],
                              check=False, capture_output=True, text=True, timeout=120)

    done = install("site")
    assert done.returncode == 0, done.stderr
    probe = subprocess.run([sys.executable, "-c", "import gpucheck_probe as p; print(p.VALUE)"],
                           check=False, env={"PYTHONPATH": str(tmp_path / "site")},
                           capture_output=True, text=True)
    assert probe.stdout.strip() == "42"
    # A damaged part is caught by its sha256, a missing folder named.
    part = house / entry["where"][entry["parts"][0]] / entry["parts"][0]
    part.write_bytes(b"x" + part.read_bytes()[1:])
    shutil.rmtree(house / "joined")  # the first install's joined copy, checked, would be reused
    done = install("site2")
    assert done.returncode == 2 and "damaged" in done.stderr
    missing = entry["where"][entry["parts"][-1]]
    for f in (house / missing).iterdir():
        f.unlink() if f.name != "manifest.json" else None
    done = install("site3")
    assert done.returncode == 2 and f"carry {missing}" in done.stderr


def test_wheelhouse_asks_for_the_service_runtime_without_cuda_wheels():
    reqs = wheelhouse.requirements(with_cuda=False)
    assert any(r.startswith("onnxruntime-gpu>=") for r in reqs)
    assert not any("[" in r for r in reqs) and {"httpx", "tqdm"} <= set(reqs)
    assert any("onnxruntime-gpu[cuda,cudnn]" in r for r in wheelhouse.requirements(True))


def test_cuda_libraries_come_from_nvidia_pip_packages():
    from bench.gpu.cudart import CudaRuntime, cudnn_version
    from export.runtime import preload_cuda_libraries

    found = preload_cuda_libraries()
    if not any(found.values()):
        pytest.skip("no NVIDIA CUDA pip packages in this environment")
    rt = CudaRuntime.load()
    assert rt.runtime_version().split(".")[0] == str(ort.cuda_version).split(".")[0]
    assert cudnn_version()[0].startswith("9.")


def test_the_gpu_side_needs_no_torch_onnx_or_bentoml_in_process():
    """The GPU machine has no torch of ours and the wheelhouse no onnx or matplotlib: the check
    and its helpers must import without them (BentoML runs only in the served subprocess)."""
    blocked = ("torch", "torchvision", "onnx", "matplotlib", "yaml", "bentoml")
    code = (f"import sys; sys.modules.update(dict.fromkeys({blocked!r})); "
            "import bench.gpu_check, bench.gpu.loadgen, bench.gpu.install")
    done = subprocess.run([sys.executable, "-c", code], check=False, cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


def test_probe_answers_its_five_questions_on_the_cpu(bundle, tmp_path):
    """bench/gpu/probe.py's steps on the CPU provider (the GPU run's are in docs/gpu_probe.json):
    every option set runs the convnet, each shape is timed cold and warm, two processes
    report, the run options are timed with and without, and the service's batcher batches."""
    path, _ = bundle
    cmd = [sys.executable, "-m", "bench.gpu.probe", "--device", "cpu", "--bundle", str(path),
           "--out", str(tmp_path)]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    r = json.loads((tmp_path / "gpu_probe.json").read_text())
    assert r["device"] == "cpu" and {x["status"] for x in r["options"]} == {"ok"}
    assert len(r["options"]) == 4 * 3
    assert len(r["shapes"]["cold_ms"]) == len(r["shapes"]["warm_ms"]) == 64
    assert [len(v) for v in r["processes"].values()] == [1, 2]
    assert all(v["median_ms"] > 0 for v in r["shrinkage"].values())
    paths = r["call_paths"]  # 2 thread settings x (plain loop, batcher inline, batcher thread)
    assert len(paths) == 6 and all(row["ms_per_16"] > 0 for row in paths)
    assert all(row["requests_per_call"] > 1 for row in paths if "requests_per_call" in row)
    missing = subprocess.run([*cmd[:6], str(tmp_path / "none")], cwd=ROOT, capture_output=True,
                             text=True, check=False)
    assert missing.returncode == 2 and "make gpu-bundle" in missing.stderr


def test_shapes_times_each_way_of_calling_on_the_cpu(bundle, tmp_path):
    """bench/gpu/shapes.py on the CPU provider (the H100's run is docs/gpu_shapes.json): one
    session with one shape, two shapes in turn and a random bucket each call, then a session per
    bucket; a missing bundle exits 2."""
    path, _ = bundle
    cmd = [sys.executable, "-m", "bench.gpu.shapes", "--device", "cpu", "--bundle", str(path),
           "--out", str(tmp_path)]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = json.loads((tmp_path / "gpu_shapes.json").read_text())["rows"]
    timed = {k: v for k, v in rows.items() if isinstance(v, dict)}
    assert len(timed) == 4 and all(0 < v["median_ms"] <= v["p90_ms"] for v in timed.values())
    assert "session per bucket, random bucket each call" in timed
    missing = subprocess.run([*cmd[:6], str(tmp_path / "none")], cwd=ROOT, capture_output=True,
                             text=True, check=False)
    assert missing.returncode == 2 and "make gpu-bundle" in missing.stderr


def test_the_report_names_no_output_folder_of_the_machine():
    from bench.gpu_check import command_line

    assert command_line(["--device", "cuda", "--out", "/somewhere/out/docs"]) == \
        "python -m bench.gpu_check --device cuda --out docs"


def test_library_paths_in_the_report_name_no_machine_folder(tmp_path, monkeypatch):
    """A library loaded from a --target install folder (bench/gpu/install.py's .gpu-site) is
    shown relative to it, as one from site-packages is; a system path stays whole."""
    from bench.gpu.machine import short_path

    target = tmp_path / ".gpu-site"
    monkeypatch.syspath_prepend(str(target))
    lib = target / "onnxruntime" / "capi" / "libonnxruntime_providers_cuda.so"
    assert short_path(str(lib)) == "onnxruntime/capi/libonnxruntime_providers_cuda.so"
    assert short_path("/opt/x/site-packages/nvidia/cu13/lib/libcudart.so.13") == \
        "nvidia/cu13/lib/libcudart.so.13"
    assert short_path("/usr/lib/libcuda.so.1") == "/usr/lib/libcuda.so.1"
    assert short_path(None) is None


def test_a_batch_above_every_cuda_graph_bucket_is_not_timed_in_the_largest():
    """A graph replays one shape: batch 32,768 with buckets up to 1,024 once ran 1,024 images
    and counted 32,768 (14M images/s on an H100, over the copy-in bound)."""
    from bench.gpu.sweep import graph_buckets

    assert graph_buckets([1, 3, 1024, 32768], [1, 4, 1024]) == ({1: [1], 4: [3], 1024: [1024]},
                                                                [32768])
    assert graph_buckets([1, 16], [4**i for i in range(9)]) == ({1: [1], 16: [16]}, [])


def test_ab_http_runs_each_arm_in_turn_and_prints_the_medians(bundle, tmp_path):
    """bench/gpu/ab_http.py (the same-machine before/after of docs/gpu.md) on the CPU provider:
    both arms are this checkout, one round, short cells; each arm's service answers every cell."""
    path, _ = bundle
    out = tmp_path / "ab.json"
    done = subprocess.run([sys.executable, "-m", "bench.gpu.ab_http", f"a:@{ROOT}", f"b:@{ROOT}",
                           "--device", "cpu", "--seconds", "0.5", "--rounds", "1", "--bundle",
                           str(path), "--out", str(out)], check=False, cwd=ROOT,
                          env=server_env(tmp_path / "home"), capture_output=True, text=True,
                          timeout=180)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    runs = json.loads(out.read_text())["runs"]
    assert [(r["arm"], r["round"]) for r in runs] == [("a", 1), ("b", 1)]
    for r in runs:
        assert [c["cell"] for c in r["cells"]] == [
            "/predict .npy 1 image c=32", "V2 binary 1 image c=32",
            "/predict .npy 1024 images c=4", "/predict .npy 4096 images c=4"]
        assert all(c["status"] == "measured" and c["images_per_s"] > 0 for c in r["cells"]), r
    table = done.stdout.split("medians over 1 round(s)")[1]
    assert "| cell | a | b |" in table and table.count("\n| /predict .npy") == 3
    bad = subprocess.run([sys.executable, "-m", "bench.gpu.ab_http", f"a:{ROOT}"], check=False,
                         cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "an arm is NAME:@PATH" in bad.stderr
