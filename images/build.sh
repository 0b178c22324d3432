#!/usr/bin/env bash
# Builds the images Runyard's tests and examples use, from local packages only:
# this machine has no container registry, so nothing is pulled.
#   runyard/busybox:latest  - a static busybox, builds in a second
#   runyard/python:3.11     - Debian bookworm's python3 via debootstrap, about a minute
# Idempotent: an image that already exists is left alone (pass --force to rebuild).
set -euo pipefail
force=${1:-}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

have() { [ "$force" != --force ] && docker image inspect "$1" >/dev/null 2>&1; }

if ! have runyard/busybox:latest; then
  mkdir -p "$work/busybox/bin" "$work/busybox/tmp"
  cp /bin/busybox "$work/busybox/bin/"
  # every applet as its own name, so `ls`, `sleep`, `yes`... exist like in any image
  for applet in $(/bin/busybox --list); do
    [ -e "$work/busybox/bin/$applet" ] || ln -s busybox "$work/busybox/bin/$applet"
  done
  chmod 1777 "$work/busybox/tmp"
  tar -C "$work/busybox" -c . | docker import -c 'CMD ["/bin/sh"]' - runyard/busybox:latest >/dev/null
  echo "built runyard/busybox:latest"
fi

if ! have runyard/python:3.11; then
  debootstrap --variant=minbase --include=python3 bookworm "$work/python" http://deb.debian.org/debian >"$work/debootstrap.log" 2>&1 \
    || { tail -20 "$work/debootstrap.log"; exit 1; }
  ln -sf python3 "$work/python/usr/bin/python"  # `python train.py` works as in any Python image
  rm -rf "$work/python/var/cache/apt/archives/"*.deb "$work/python/var/lib/apt/lists/"*
  tar -C "$work/python" -c . | docker import -c 'CMD ["/usr/bin/python3"]' -c 'ENV PYTHONUNBUFFERED=1' - runyard/python:3.11 >/dev/null
  echo "built runyard/python:3.11"
fi
