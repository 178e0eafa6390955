#!/usr/bin/env bash
# Build the service's container image from the models in the BentoML store.
#
#     bash scripts/container_build.sh cpu     # image cifar2:cpu  (bentofile.cpu.yaml, onnxruntime)
#     bash scripts/container_build.sh gpu     # image cifar2:gpu  (bentofile.yaml, onnxruntime-gpu)
#
# `make container` / `make container GPU=1` call this. The store is $BENTOML_HOME (default
# ~/bentoml), holding cifar2-net and cifar2-dense (`make models`). Prints the image tag last.
set -euo pipefail
cd "$(dirname "$0")/.."
KIND=${1:-cpu}
case "$KIND" in
  cpu) BENTOFILE=bentofile.cpu.yaml ;;
  gpu) BENTOFILE=bentofile.yaml ;;
  *) echo "usage: $0 cpu|gpu" >&2; exit 2 ;;
esac
BENTOML=$(realpath "${BENTOML:-.venv/bin/bentoml}")
# Debian's docker client has BuildKit built in; a `docker` earlier on PATH may lack buildx.
export PATH=/usr/bin:$PATH DOCKER_BUILDKIT=1 BENTOML_DO_NOT_TRACK=True
for model in cifar2-net cifar2-dense; do
  "$BENTOML" models get "$model:latest" >/dev/null 2>&1 || {
    echo "$model:latest is not in the BentoML store; run \`make models\` first" >&2; exit 2; }
done
TAG=$("$BENTOML" build -f "$BENTOFILE" --output tag | sed -n 's/^__tag__://p')
[ -n "$TAG" ] || { echo "bentoml build -f $BENTOFILE gave no tag" >&2; exit 1; }
# From /: BentoML 1.4 re-reads the bento's dockerfile_template from a temp dir and refuses any
# file outside the working directory, which that temp dir is unless the working directory is /.
(cd / && "$BENTOML" containerize "$TAG" --backend docker -t "cifar2:$KIND" -t "${TAG/:/:$KIND-}" >&2)
echo "cifar2:$KIND"
