#!/usr/bin/env bash
# Builds the images Runyard's tests and examples use, from local packages only:
# this machine has no container registry, so nothing is pulled.
#   runyard/busybox:latest  - a static busybox, builds in a second
#   runyard/python:3.11     - Debian bookworm's python3 via debootstrap, about a minute
#   runyard/sh-only:latest  - nothing but /bin/sh (dash, and the libc it loads): what Runyard
#                             needs of an image at least (no cat, no sleep, no mkdir)
# Idempotent: an image that already exists is left alone (pass --force to rebuild).
#
#   images/build.sh [--force] [--push REGISTRY --engine URL] [IMAGE...]
#
# --push then copies each image into REGISTRY under the same name with the registry's
# host in front (runyard/busybox:latest -> REGISTRY/runyard/busybox:latest), through the
# engine at URL, which must reach REGISTRY (lab/swarm.sh uses its manager's engine).
# IMAGE arguments limit the building and pushing to those images (any image the main
# engine has can be pushed); without them, every image above.
set -euo pipefail
force= registry= engine= images=()
while [ $# -gt 0 ]; do
  case $1 in
    --force) force=--force ;;
    --push) registry=${2:?--push needs a registry, e.g. 10.77.0.1:5000}; shift ;;
    --engine) engine=${2:?--engine needs a URL, e.g. unix:///tmp/lab/n1/docker.sock}; shift ;;
    -*) echo "usage: images/build.sh [--force] [--push REGISTRY --engine URL] [IMAGE...]" >&2; exit 2 ;;
    *) images+=("$1") ;;
  esac
  shift
done
if [ -n "$registry" ] && [ -z "$engine" ]; then echo "--push needs --engine" >&2; exit 2; fi
[ ${#images[@]} -gt 0 ] || images=(runyard/busybox:latest runyard/python:3.11 runyard/sh-only:latest)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

have() { [ "$force" != --force ] && docker image inspect "$1" >/dev/null 2>&1; }
wanted() { [[ " ${images[*]} " == *" $1 "* ]]; }

if wanted runyard/busybox:latest && ! have runyard/busybox:latest; then
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

if wanted runyard/sh-only:latest && ! have runyard/sh-only:latest; then
  # dash and the libraries it loads: busybox's sh would run its other applets (cat...) itself.
  mkdir -p "$work/sh-only/bin"
  cp /bin/dash "$work/sh-only/bin/sh"
  for lib in $(ldd /bin/dash | grep -o '/[^ ]*'); do
    mkdir -p "$work/sh-only$(dirname "$lib")"
    cp -L "$lib" "$work/sh-only$lib"
  done
  tar -C "$work/sh-only" -c . | docker import -c 'CMD ["/bin/sh"]' - runyard/sh-only:latest >/dev/null
  echo "built runyard/sh-only:latest"
fi

if wanted runyard/python:3.11 && ! have runyard/python:3.11; then
  debootstrap --variant=minbase --include=python3 bookworm "$work/python" http://deb.debian.org/debian >"$work/debootstrap.log" 2>&1 \
    || { tail -20 "$work/debootstrap.log"; exit 1; }
  ln -sf python3 "$work/python/usr/bin/python"  # `python train.py` works as in any Python image
  rm -rf "$work/python/var/cache/apt/archives/"*.deb "$work/python/var/lib/apt/lists/"*
  tar -C "$work/python" -c . | docker import -c 'CMD ["/usr/bin/python3"]' -c 'ENV PYTHONUNBUFFERED=1' - runyard/python:3.11 >/dev/null
  echo "built runyard/python:3.11"
fi

if [ -n "$registry" ]; then
  for image in "${images[@]}"; do
    # save | load: the engine at URL cannot pull from the main engine
    docker save "$image" | docker -H "$engine" load >/dev/null
    docker -H "$engine" tag "$image" "$registry/$image"
    docker -H "$engine" push --quiet "$registry/$image" >/dev/null
    # Only the registry's name stays there, so that engine runs nothing the registry lacks.
    docker -H "$engine" image rm "$image" >/dev/null
    echo "pushed $registry/$image"
  done
fi
