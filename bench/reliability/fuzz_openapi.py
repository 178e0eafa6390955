"""Schemathesis against the service's own OpenAPI document (/docs.json), every operation.

    python -m bench.reliability.fuzz_openapi                      # long run, ~2,000+ cases
    python -m bench.reliability.fuzz_openapi --max-examples 50 --seed 1
    python -m bench.reliability.fuzz_openapi --url http://127.0.0.1:3000   # a running server

Starts `bentoml serve` (cifar2-net / cifar2-dense from the model store, CIFAR2_MAX_IMAGES=16 so
that the generated uploads stay small) unless --url is given, then runs the schemathesis CLI with
the three checks that matter for a contract: no 5xx (not_a_server_error), every reply's body
matches the schema the document declares for its status (response_schema_conformance), and
every status is one the document declares (status_code_conformance). Both data generation modes
(valid and invalid requests) and the coverage phase (boundary values) are on. Prints one row
per failure kind with its operations and a curl line to reproduce the first; exit 1 on any.
tests/test_fuzz_openapi.py runs the same function with a small bounded budget in `make test`.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

CHECKS = "not_a_server_error,response_schema_conformance,status_code_conformance"
SCHEMATHESIS = str(Path(sys.executable).with_name("schemathesis"))


def run_schemathesis(url: str, max_examples: int, seed: int | None = None,
                     workdir: Path | None = None, timeout_s: float = 3600) -> dict:
    """Run the CLI against ``url``; return its JSON report plus ``output`` (the CLI's text,
    which has a curl line per failure)."""
    workdir = Path(workdir or tempfile.mkdtemp(prefix="fuzz_openapi_"))
    report = workdir / "report.json"
    cmd = [SCHEMATHESIS, "run", f"{url}/docs.json", "--checks", CHECKS,
           "--max-examples", str(max_examples), "--workers", "1", "--mode", "all",
           "--phases", "examples,coverage,fuzzing", "--request-timeout", "30",
           "--generation-database", "none", "--no-color", "--report", "json",
           "--report-json-path", str(report)]
    if seed is not None:
        cmd += ["--seed", str(seed)]
    env = {**os.environ, "SCHEMATHESIS_TELEMETRY": "false"}
    done = subprocess.run(cmd, cwd=workdir, env=env, capture_output=True, text=True,
                          timeout=timeout_s, check=False)
    if not report.exists():
        raise RuntimeError(f"schemathesis wrote no report (exit {done.returncode}):\n"
                           f"{done.stdout[-3000:]}{done.stderr[-3000:]}")
    result = json.loads(report.read_text())
    result["output"] = done.stdout
    return result


def summary(result: dict) -> str:
    """A table: cases, operations, then one row per failure kind."""
    ops, cases = result["operations"], result["test_cases"]
    lines = [f"schemathesis {result['schemathesis_version']}, seed {result['seed']}, "
             + f"{result['running_time']:.0f} s",
             f"operations tested: {ops['tested']}/{ops['total']} (errored {ops['errored']})",
             f"test cases: {cases['generated']} generated, {cases['with_failures']} with "
             + f"failures, {cases['unique_failures']} unique failures, errored {cases['errored']}",
             "", "| failure | count | operations |", "| --- | ---: | --- |"]
    for f in result["failures"]:
        lines.append(f"| {f['code']} {f['title']} | {f['count']} | "
                     f"{', '.join(f['operations'])} |")
    if not result["failures"]:
        lines.append("| none | 0 | |")
    for e in result.get("errors", []):
        lines.append(f"error: {json.dumps(e)[:300]}")
    curls = re.findall(r"^\s+(curl .+)$", result["output"], re.MULTILINE)
    if curls:
        lines += ["", "reproduce (first of each failure):", *(f"  {c}" for c in curls)]
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--url", help="a running server; default: start one")
    p.add_argument("--max-examples", type=int, default=400, help="cases per operation and phase")
    p.add_argument("--seed", type=int)
    p.add_argument("--port", type=int, default=3140)
    args = p.parse_args()
    proc = None
    url = args.url
    if url is None:
        from bench.bench_http import start

        url = f"http://127.0.0.1:{args.port}"
        env = {**os.environ, "BENTOML_DO_NOT_TRACK": "True", "CIFAR2_MAX_IMAGES": "16"}
        log = Path(tempfile.mkdtemp(prefix="fuzz_openapi_")) / "serve.log"
        print(f"starting bentoml serve on {url} (log: {log})", file=sys.stderr)
        proc = start([str(Path(sys.executable).with_name("bentoml")), "serve", "--port",
                      str(args.port), "--host", "127.0.0.1"], env, f"{url}/readyz", log)
    try:
        result = run_schemathesis(url, args.max_examples, args.seed)
    finally:
        if proc is not None:
            from bench.bench_http import stop

            stop(proc)
    print(summary(result))
    if proc is not None:
        faults = [line for line in log.read_text().splitlines() if "Traceback" in line]
        print(f"\ntracebacks in the server log: {len(faults)}")
    sys.exit(1 if result["failures"] or result.get("errors") else 0)


if __name__ == "__main__":
    main()
