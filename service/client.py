"""A small command-line client for the running service.

    python -m service.client photo.jpg bird.png                 # convnet, localhost:3000
    python -m service.client *.png --model dense --url http://host:3000
    python -m service.client photo.jpg --compare                # convnet vs dense

Exit codes: 0 ok; 1 the server could not be reached or failed; 2 bad input (a missing file,
or the server refused the request with a 4xx, whose message is printed).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import httpx

CHUNK = 256  # images per request: well under the server's default limit of 1024


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m service.client",
                                description=__doc__.splitlines()[0])
    p.add_argument("images", nargs="+", type=Path, help="image files (JPEG, PNG, WebP, BMP, GIF)")
    p.add_argument("--url", default="http://localhost:3000", help="service URL")
    p.add_argument("--model", choices=["convnet", "dense"], default="convnet")
    p.add_argument("--compare", action="store_true", help="run both models side by side")
    return p.parse_args(argv)


def post(client: httpx.Client, route: str, paths: list[Path], data: dict) -> dict:
    files = [("images", (p.name, p.read_bytes())) for p in paths]
    r = client.post(route, files=files, data=data)
    if 400 <= r.status_code < 500:
        try:
            message = r.json()
            message = message[0] if isinstance(message, list) else message
            message = message.get("error", message)
        except ValueError:
            message = r.text
        raise ValueError(f"the server refused the request ({r.status_code}): {message}")
    r.raise_for_status()
    return r.json()


def main(argv=None) -> int:
    args = parse_args(argv)
    missing = [str(p) for p in args.images if not p.is_file()]
    if missing:
        print(f"error: no such file: {', '.join(missing)}", file=sys.stderr)
        return 2
    route = "/compare" if args.compare else "/classify"
    data = {} if args.compare else {"model": args.model}
    try:
        with httpx.Client(base_url=args.url, timeout=60) as client:
            for start in range(0, len(args.images), CHUNK):
                paths = args.images[start:start + CHUNK]
                result = post(client, route, paths, data)
                print_result(paths, result, args.compare, header=start == 0)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except httpx.TransportError as e:
        print(f"error: cannot reach {args.url} ({e}); start the service with `bentoml serve`",
              file=sys.stderr)
        return 1
    except httpx.HTTPStatusError as e:
        print(f"error: the server failed: {e}", file=sys.stderr)
        return 1
    return 0


def print_result(paths: list[Path], result: dict, compare: bool, header: bool) -> None:
    width = max(len(str(p)) for p in paths)
    if compare:
        if header:
            print(f"{'image':<{width}}  {'convnet':>16}  {'dense':>16}  agree")
        for p, pred in zip(paths, result["predictions"]):
            c, d = pred["convnet"], pred["dense"]
            print(f"{p!s:<{width}}  {c['label']:>8} {c['probabilities'][c['label']]:.3f}"
                  f"    {d['label']:>8} {d['probabilities'][d['label']]:.3f}  "
                  f"{'yes' if pred['agree'] else 'NO'}")
        times = ", ".join(f"{k} {v['inference_ms']:.2f} ms" for k, v in result["models"].items())
        print(f"agreement {result['agreement']:.0%}; inference: {times}")
        return
    if header:
        print(f"# {result['model']} = {result['model_tag']}")
        print(f"{'image':<{width}}  {'label':>8}  {'p(airplane)':>11}  {'p(bird)':>8}")
    for p, pred in zip(paths, result["predictions"]):
        probs = pred["probabilities"]
        print(f"{p!s:<{width}}  {pred['label']:>8}  {probs.get('airplane', 0):>11.3f}  "
              f"{probs.get('bird', 0):>8.3f}")


if __name__ == "__main__":
    sys.exit(main())
