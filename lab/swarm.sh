#!/usr/bin/env bash
# A Docker Swarm lab on this one machine, for testing and demoing Runyard's clusters.
#
#   lab/swarm.sh up | down | status | start-node nN        (as root)
#
# Every node is a dockerd of its own (own data root, exec root, socket, pidfile and
# containerd) in a network namespace of its own, ${LAB_NS}-nN with address 10.77.0.N,
# wired to a bridge in a namespace ${LAB_NS}-hub. Nothing is added to the root
# namespace, and the main engine is only read from: images are copied out of it into
# the lab's registry (Debian's docker-registry, at 10.77.0.1:5000 in n1's namespace).
# n1 is the swarm manager, the others are workers; each node carries the label name=nN.
#
# Knobs (environment):
#   LAB_DIR        the lab's state folder (default var/lab in the repository)
#   NODES          how many nodes (default 3)
#   LAB_NS         prefix of the namespace names (default runyard): labs with different
#                  prefixes and folders run side by side, each on its own 10.77.0.0/24
#   LAB_FAKE_GPUS  N > 0 gives the last node N fake GPUs (generic resource gpu=GPU-fake-0 ...)
#   LAB_IMAGES     images copied from the main engine into the lab's registry as
#                  10.77.0.1:5000/<name> (default "runyard/busybox:latest runyard/python:3.11 runyard/sh-only:latest")
#
# `up` writes $LAB_DIR/lab.env, KEY=VALUE lines (LAB_MANAGER, LAB_REGISTRY, LAB_NODES,
# LAB_NODE_nN, LAB_NS, LAB_DIR) for whatever uses the lab. `start-node nN` starts a
# node's dockerd again with its flags, after a crash (or a test's kill -9).
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
LAB_DIR=$(realpath -m "${LAB_DIR:-$root/var/lab}")
NODES=${NODES:-3}
LAB_FAKE_GPUS=${LAB_FAKE_GPUS:-0}
LAB_IMAGES=${LAB_IMAGES-runyard/busybox:latest runyard/python:3.11 runyard/sh-only:latest}
REGISTRY=10.77.0.1:5000

# The namespace prefix is kept in the state folder (lab.ns, written before any namespace
# is made, and the sign that the folder holds a lab): `down` deletes the namespaces of
# the lab in LAB_DIR, whatever LAB_NS says, so it never deletes another lab's.
if [ -f "$LAB_DIR/lab.ns" ]; then LAB_NS=$(cat "$LAB_DIR/lab.ns"); fi
LAB_NS=${LAB_NS:-runyard}

die() { echo "lab/swarm.sh: $*" >&2; exit 1; }

# docker on node i's engine: D 1 ... talks to the manager
D() { local i=$1; shift; docker -H "unix://$LAB_DIR/n$i/docker.sock" "$@"; }

# Is PID a live process (not a zombie) whose command line contains TEXT? Pidfiles can be
# stale, so a PID is only signalled when it is still the process that wrote it.
ours() {
  local pid=$1 text=$2 stat
  stat=$(ps -o stat= -p "$pid" 2>/dev/null) && [[ $stat != Z* ]] &&
    tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF -- "$text"
}

# stop_process PIDFILE TEXT SECONDS: SIGTERM, then SIGKILL if it outlives SECONDS.
stop_process() {
  local pidfile=$1 text=$2 seconds=$3 pid
  pid=$(cat "$pidfile" 2>/dev/null) || return 0
  ours "$pid" "$text" || return 0
  kill -TERM "$pid"
  for _ in $(seq $((seconds * 10))); do ours "$pid" "$text" || return 0; sleep 0.1; done
  echo "pid $pid ($pidfile) ignored SIGTERM for ${seconds}s: SIGKILL"
  kill -KILL "$pid" 2>/dev/null || true
}

# The lab's node folders, $LAB_DIR/nN.
node_dirs() {
  local d
  for d in "$LAB_DIR"/n[0-9]*; do [ -d "$d" ] && echo "$d"; done
  return 0
}

# The lab's namespaces that exist: ${LAB_NS}-hub and ${LAB_NS}-nN, exactly.
lab_namespaces() {
  ip netns list | awk '{print $1}' | grep -E "^${LAB_NS}-(hub|n[0-9]+)\$" || true
}

# No default bridge: a run's container has loopback only, no route out. And
# no-new-privileges for every container: Swarm (API 1.41) cannot ask it per service.
dockerd_flags() {  # the flags of node i's dockerd, one a line
  local i=$1 d=$LAB_DIR/n$1
  printf '%s\n' --data-root "$d/data" --exec-root "$d/x" -H "unix://$d/docker.sock" \
    --pidfile "$d/docker.pid" --bridge=none --iptables=false --ip-masq=false \
    --no-new-privileges --insecure-registry "$REGISTRY"
  if [ "$i" = "$NODES" ]; then
    for g in $(seq 0 $((LAB_FAKE_GPUS - 1))); do
      printf '%s\n' --node-generic-resource "gpu=GPU-fake-$g"
    done
  fi
}

# Start node i's dockerd in its namespace and wait until it answers. nsenter --net, not
# `ip netns exec`, which remounts /sys and hides the cgroup mounts. setsid: the engine
# outlives this script and a Ctrl-C in the terminal that ran it.
start_dockerd() {
  local i=$1 d=$LAB_DIR/n$1 flags pid
  mapfile -t flags <"$d/dockerd.flags"
  setsid nsenter --net="/run/netns/$LAB_NS-n$i" dockerd "${flags[@]}" </dev/null >>"$d/dockerd.log" 2>&1 &
  pid=$!
  for _ in $(seq 600); do
    D "$i" version >/dev/null 2>&1 && return 0
    if ! kill -0 "$pid" 2>/dev/null; then
      tail -n 30 "$d/dockerd.log" >&2
      die "the dockerd of n$i exited (log above: $d/dockerd.log)"
    fi
    sleep 0.1
  done
  tail -n 30 "$d/dockerd.log" >&2
  die "the dockerd of n$i did not answer in 60 s (log above: $d/dockerd.log)"
}

network_up() {
  local hub=$LAB_NS-hub ns i
  ip netns add "$hub"
  ip -n "$hub" link set lo up
  ip -n "$hub" link add br0 type bridge
  ip -n "$hub" link set br0 up
  for i in $(seq "$NODES"); do
    ns=$LAB_NS-n$i
    ip netns add "$ns"
    ip -n "$hub" link add "vh$i" type veth peer name eth0 netns "$ns"
    ip -n "$hub" link set "vh$i" master br0 up
    ip -n "$ns" addr add "10.77.0.$i/24" dev eth0
    ip -n "$ns" link set eth0 up
    ip -n "$ns" link set lo up
  done
}

registry_up() {
  cat >"$LAB_DIR/registry.yml" <<EOF
version: 0.1
log: {level: warn}
storage: {filesystem: {rootdirectory: $LAB_DIR/registry}, delete: {enabled: true}}
http: {addr: $REGISTRY}
EOF
  setsid nsenter --net="/run/netns/$LAB_NS-n1" docker-registry serve "$LAB_DIR/registry.yml" \
    </dev/null >"$LAB_DIR/registry.log" 2>&1 &
  echo $! >"$LAB_DIR/registry.pid"
  for _ in $(seq 100); do
    nsenter --net="/run/netns/$LAB_NS-n1" bash -c "exec 3<>/dev/tcp/${REGISTRY/://}" 2>/dev/null && return 0
    sleep 0.1
  done
  tail -n 30 "$LAB_DIR/registry.log" >&2
  die "the registry did not listen on $REGISTRY in 10 s (log above: $LAB_DIR/registry.log)"
}

swarm_up() {
  local token i joins=()
  # The dispatcher heartbeat stays at its default of 5 s: a node whose engine is killed
  # is marked down ("heartbeat failure") about 11 s later, and a longer period would
  # only make that slower. It is the knob for flaky links, which the lab does not have.
  D 1 swarm init --advertise-addr 10.77.0.1 --listen-addr 10.77.0.1:2377 >/dev/null
  token=$(D 1 swarm join-token -q worker)
  for i in $(seq 2 "$NODES"); do
    D "$i" swarm join --token "$token" --advertise-addr "10.77.0.$i" --listen-addr "10.77.0.$i:2377" \
      10.77.0.1:2377 >/dev/null &
    joins+=($!)
  done
  for pid in "${joins[@]}"; do wait "$pid" || die "a node could not join the swarm"; done
  for i in $(seq "$NODES"); do
    D 1 node update --label-add "name=n$i" "$(D "$i" info --format '{{.Swarm.NodeID}}')" >/dev/null
  done
  for _ in $(seq 300); do
    [ "$(D 1 node ls --format '{{.Status}}' | grep -c Ready)" = "$NODES" ] && return 0
    sleep 0.1
  done
  D 1 node ls >&2
  die "not all $NODES nodes are Ready after 30 s"
}

# Copy LAB_IMAGES from the main engine into the registry (images/build.sh --push, which
# goes through n1's engine: that one reaches the registry).
images_up() {
  local image present=()
  for image in $LAB_IMAGES; do
    if docker image inspect "$image" >/dev/null 2>&1; then
      present+=("$image")
    else
      echo "skipping $image: the main engine does not have it (images/build.sh builds it)"
    fi
  done
  [ ${#present[@]} -eq 0 ] ||
    "$root/images/build.sh" --push "$REGISTRY" --engine "unix://$LAB_DIR/n1/docker.sock" "${present[@]}"
}

write_env() {
  local i nodes
  nodes=$(for i in $(seq "$NODES"); do printf 'n%s ' "$i"; done)
  {
    echo "LAB_DIR=$LAB_DIR"
    echo "LAB_NS=$LAB_NS"
    echo "LAB_MANAGER=unix://$LAB_DIR/n1/docker.sock"
    echo "LAB_REGISTRY=$REGISTRY"
    echo "LAB_NODES=\"${nodes% }\""
    for i in $(seq "$NODES"); do echo "LAB_NODE_n$i=unix://$LAB_DIR/n$i/docker.sock"; done
  } >"$LAB_DIR/lab.env.tmp"
  mv "$LAB_DIR/lab.env.tmp" "$LAB_DIR/lab.env"
}

up() {
  local started=$SECONDS i
  [ "$(id -u)" = 0 ] || die "the lab needs root (network namespaces, dockerd)"
  for tool in ip nsenter dockerd docker docker-registry; do
    command -v "$tool" >/dev/null || die "$tool is missing (apt-get install -y iproute2 util-linux docker.io docker-registry)"
  done
  [[ $NODES =~ ^[0-9]+$ ]] && [ "$NODES" -ge 1 ] && [ "$NODES" -le 254 ] || die "NODES must be 1..254, not '$NODES'"
  [[ $LAB_FAKE_GPUS =~ ^[0-9]+$ ]] || die "LAB_FAKE_GPUS must be a number, not '$LAB_FAKE_GPUS'"
  [[ $LAB_DIR != *[[:space:]]* ]] || die "LAB_DIR must not contain spaces: '$LAB_DIR'"
  # A unix socket path holds at most 107 bytes; the longest the lab makes is containerd's
  # under the last node's exec root.
  local longest="$LAB_DIR/n$NODES/x/containerd/containerd.sock.ttrpc"
  [ ${#longest} -le 107 ] ||
    die "LAB_DIR is too long for unix sockets ($longest has ${#longest} bytes, at most 107): use a short one, e.g. LAB_DIR=/tmp/rylab"

  if [ -f "$LAB_DIR/lab.env" ] && D 1 info >/dev/null 2>&1; then
    echo "the lab in $LAB_DIR is already up (namespaces $LAB_NS-*)"
    return 0
  fi
  [ ! -f "$LAB_DIR/lab.ns" ] || die "$LAB_DIR holds a lab that is not (fully) up: lab/swarm.sh down first"
  [ -z "$(lab_namespaces)" ] ||
    die "namespaces $LAB_NS-* exist already, but not for a lab in $LAB_DIR: choose another LAB_NS"

  mkdir -p "$LAB_DIR"
  echo "$LAB_NS" >"$LAB_DIR/lab.ns"
  network_up
  for i in $(seq "$NODES"); do
    mkdir -p "$LAB_DIR/n$i"
    dockerd_flags "$i" >"$LAB_DIR/n$i/dockerd.flags"
  done
  registry_up
  # the engines start side by side: each takes a second or two
  local starts=()
  for i in $(seq "$NODES"); do start_dockerd "$i" & starts+=($!); done
  for pid in "${starts[@]}"; do wait "$pid" || exit 1; done
  swarm_up
  echo "swarm of $NODES nodes up in $((SECONDS - started)) s"
  images_up
  write_env
  echo "lab up in $((SECONDS - started)) s: $LAB_DIR/lab.env"
  D 1 node ls
}

down() {
  if [ ! -f "$LAB_DIR/lab.ns" ]; then
    echo "no lab in $LAB_DIR"
    return 0
  fi
  local d
  # Its containers are thrown away: killed, not given their grace period (10 s by
  # default), which the engines would wait for on their way down.
  for d in $(node_dirs); do
    docker -H "unix://$d/docker.sock" ps -q 2>/dev/null | xargs -r docker -H "unix://$d/docker.sock" kill >/dev/null 2>&1 &
  done
  wait
  # Then the engines, side by side: each stops its containerd.
  for d in $(node_dirs); do
    stop_process "$d/docker.pid" "--pidfile $d/docker.pid" 30 &
  done
  wait
  for d in $(node_dirs); do reap_orphans "$d"; done
  stop_process "$LAB_DIR/registry.pid" "$LAB_DIR/registry.yml" 10
  for d in $(node_dirs); do
    if ours "$(cat "$d/docker.pid" 2>/dev/null || echo 0)" "--pidfile $d/docker.pid" || [ -n "$(orphans "$d")" ]; then
      die "the engine or containers of $d still run: $LAB_DIR is left as it is"
    fi
  done
  for ns in $(lab_namespaces); do ip netns del "$ns"; done
  # What the engines left mounted (x/netns/* of the overlay networks, ...), deepest first.
  awk -v dir="$LAB_DIR/" 'index($5, dir) == 1 {print $5}' /proc/self/mountinfo | sort -r |
    while read -r mountpoint; do umount "$mountpoint" 2>/dev/null || umount -l "$mountpoint"; done
  # --one-file-system: should anything still be mounted in there, it is not descended into.
  rm -rf --one-file-system "$LAB_DIR"
  echo "lab in $LAB_DIR is down"
}

# The containers (containerd tasks) node folder D still has: an engine that stops
# removes its own, a killed one leaves them running.
orphans() { ls "$1/x/containerd/daemon/io.containerd.runtime.v2.task/moby" 2>/dev/null || true; }

# A killed engine's containerd dies with it, but its containers run on under their
# shims. That containerd is started again on its own, which finds them, and they are
# killed and deleted through it, as the engine would have done.
reap_orphans() {
  local d=$1 task pid
  [ -n "$(orphans "$d")" ] || return 0
  local socket=$d/x/containerd/containerd.sock
  setsid nsenter --net="/run/netns/$LAB_NS-${d##*/}" containerd --config "$d/x/containerd/containerd.toml" \
    </dev/null >>"$d/containerd.log" 2>&1 &
  pid=$!
  for _ in $(seq 100); do ctr --address "$socket" version >/dev/null 2>&1 && break; sleep 0.1; done
  for task in $(ctr --address "$socket" --namespace moby tasks ls --quiet 2>/dev/null); do
    ctr --address "$socket" --namespace moby tasks kill --signal SIGKILL "$task" >/dev/null 2>&1 || true
    ctr --address "$socket" --namespace moby tasks delete --force "$task" >/dev/null 2>&1 || true
  done
  kill -TERM "$pid"
  for _ in $(seq 100); do ours "$pid" containerd || return 0; sleep 0.1; done
  kill -KILL "$pid" 2>/dev/null || true
}

status() {
  if [ -f "$LAB_DIR/lab.env" ] && D 1 node ls 2>/dev/null; then return 0; fi
  if [ -f "$LAB_DIR/lab.ns" ]; then
    echo "down (leftovers in $LAB_DIR: lab/swarm.sh down removes them)"
  else
    echo down
  fi
  return 1
}

start_node() {
  local node=${1:?usage: lab/swarm.sh start-node nN} i
  i=${node#n}
  [ -f "$LAB_DIR/n$i/dockerd.flags" ] || die "no node $node in the lab in $LAB_DIR"
  if ours "$(cat "$LAB_DIR/n$i/docker.pid" 2>/dev/null || echo 0)" "--pidfile $LAB_DIR/n$i/docker.pid"; then
    echo "$node's engine is running already"
    return 0
  fi
  # A killed dockerd leaves its pidfile, and its containerd's, and neither may be reaped
  # yet (a zombie keeps its /proc entry): dockerd would refuse to start over the one and
  # wait forever for the other's socket.
  rm -f "$LAB_DIR/n$i/docker.pid"
  local containerd_pid
  containerd_pid=$(cat "$LAB_DIR/n$i/x/containerd/containerd.pid" 2>/dev/null || echo 0)
  ours "$containerd_pid" "containerd --config $LAB_DIR/n$i/x/containerd" || rm -f "$LAB_DIR/n$i/x/containerd/containerd.pid"
  start_dockerd "$i"
  echo "$node's engine started"
}

case ${1:-} in
  up) up ;;
  down) down ;;
  status) status ;;
  start-node) start_node "${2:-}" ;;
  *) echo "usage: lab/swarm.sh up|down|status|start-node nN" >&2; exit 2 ;;
esac
