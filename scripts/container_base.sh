#!/usr/bin/env bash
# Test scaffolding: make sure a `python:3.11-slim` image exists for `bentoml containerize`.
#
#     bash scripts/container_base.sh            # no-op when the image is there or can be pulled
#
# Where Docker Hub cannot be reached, build a stand-in from Debian packages instead:
# `debootstrap --variant=minbase bookworm` from this machine's apt mirror, plus python3 (3.11 on
# bookworm), python3-venv and python3-pip, with python/pip on /usr/local/bin as in the official
# image. Where package traffic passes a TLS-intercepting proxy, its CA certificates (in
# /usr/local/share/ca-certificates) are trusted inside the image, and SSL_CERT_FILE / PIP_CERT /
# UV_NATIVE_TLS point pip and uv (BentoML's image build installs with both) at the system store.
# This is never part of the Bento: users with Docker Hub get the real base image.
set -euo pipefail
IMAGE=${BASE_IMAGE:-python:3.11-slim}
DOCKER=${DOCKER:-/usr/bin/docker}

if "$DOCKER" image inspect "$IMAGE" >/dev/null 2>&1; then
  echo "base image $IMAGE: present"; exit 0
fi
if timeout 60 "$DOCKER" pull -q "$IMAGE" >/dev/null 2>&1; then
  echo "base image $IMAGE: pulled"; exit 0
fi
echo "base image $IMAGE: cannot pull it; building a stand-in from Debian bookworm packages"

command -v debootstrap >/dev/null || { apt-get update -qq &&
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q debootstrap; }
# The first Debian archive URI apt is configured with (deb822 or one-line sources).
MIRROR=$(grep -rhoE 'https?://[^ ]+/debian/?( |$)' /etc/apt/sources.list /etc/apt/sources.list.d/ \
         2>/dev/null | head -1 | tr -d ' ' || true)
MIRROR=${MIRROR:-http://deb.debian.org/debian}
ROOT=$(mktemp -d)
trap 'rm -rf "$ROOT"' EXIT
debootstrap --variant=minbase --include=python3,python3-venv,python3-pip,ca-certificates \
  bookworm "$ROOT" "$MIRROR"

if compgen -G "/usr/local/share/ca-certificates/*.crt" >/dev/null; then
  cp /usr/local/share/ca-certificates/*.crt "$ROOT/usr/local/share/ca-certificates/"
  chroot "$ROOT" update-ca-certificates >/dev/null
fi
ln -sf /usr/bin/python3 "$ROOT/usr/local/bin/python"
ln -sf /usr/bin/pip3 "$ROOT/usr/local/bin/pip"
# The official image's pip installs system-wide (BentoML installs uv that way); Debian's marks
# its Python as externally managed, which would refuse that.
rm -f "$ROOT"/usr/lib/python3*/EXTERNALLY-MANAGED
# What the official slim image leaves out too.
chroot "$ROOT" apt-get clean
rm -rf "$ROOT"/var/lib/apt/lists/* "$ROOT"/usr/share/doc/* "$ROOT"/usr/share/man/* \
       "$ROOT"/usr/share/locale/* "$ROOT"/var/cache/debconf/*-old

tar -C "$ROOT" -c . | "$DOCKER" import \
  -c 'ENV PATH=/usr/local/bin:/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin' \
  -c 'ENV LANG=C.UTF-8' \
  -c 'ENV SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt' \
  -c 'ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt' \
  -c 'ENV UV_NATIVE_TLS=1' \
  -c 'CMD ["python3"]' - "$IMAGE" >/dev/null
echo "base image $IMAGE: stand-in built ($("$DOCKER" image inspect -f '{{.Size}}' "$IMAGE" \
  | awk '{printf "%.0f MB", $1/1e6}'))"
