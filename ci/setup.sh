#!/usr/bin/env bash
# Make this machine ready to build and test bentoship; safe to run again, fast when all is there.
#
#   Debian packages  docker.io docker-registry debootstrap (installed only when missing)
#   Docker engine    dockerd in the background unless `docker info` answers
#   OCI registry     Debian's docker-registry on 127.0.0.1:5000 unless /v2/ answers
#   .venv            python3.11 venv with `pip install -e '.[dev]'` (again when pyproject changes)
#   root image       bentoship/python-root:3.11-bookworm: pulled, else made with debootstrap
#   base image       `.venv/bin/bentoship base` (builds and pushes it, prints its reference)
#
# State lives in $BENTOSHIP_HOME (default: .bentoship in the repo root); logs are kept there.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
export BENTOSHIP_HOME="${BENTOSHIP_HOME:-$ROOT/.bentoship}"
STATE="$BENTOSHIP_HOME"
mkdir -p "$STATE"

ROOT_IMAGE="bentoship/python-root:3.11-bookworm"
REGISTRY_ADDR="127.0.0.1:5000"
PIP_VERSION="26.3"
STARTED_AT=$SECONDS

say() { printf '[setup %3ds] %s\n' "$((SECONDS - STARTED_AT))" "$*"; }
die() { printf '[setup] error: %s\n' "$*" >&2; exit 1; }

# Poll `$@` once a second for up to $timeout seconds.
wait_for() {
    local timeout=$1; shift
    local i
    for ((i = 0; i < timeout; i++)); do
        if "$@" >/dev/null 2>&1; then return 0; fi
        sleep 1
    done
    return 1
}

# --- Debian packages ------------------------------------------------------------------------------
missing=()
command -v dockerd >/dev/null 2>&1 || missing+=(docker.io)
[ -x /usr/bin/docker-registry ] || missing+=(docker-registry)
command -v debootstrap >/dev/null 2>&1 || missing+=(debootstrap)
command -v curl >/dev/null 2>&1 || missing+=(curl)
# `bentoship rehearse` and the canary tests run a private Prometheus (its own port and store).
command -v prometheus >/dev/null 2>&1 && command -v promtool >/dev/null 2>&1 || missing+=(prometheus)
if ((${#missing[@]})); then
    [ "$(id -u)" = 0 ] || die "need root to install ${missing[*]}"
    say "installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq "${missing[@]}" >"$STATE/apt.log" 2>&1 \
        || { tail -n 20 "$STATE/apt.log" >&2; die "apt-get install failed (log: $STATE/apt.log)"; }
else
    say "packages: docker.io docker-registry debootstrap curl prometheus present"
fi

# --- Docker engine --------------------------------------------------------------------------------
if docker info >/dev/null 2>&1; then
    say "docker engine: running"
else
    say "docker engine: starting dockerd (log: $STATE/dockerd.log)"
    # setsid + nohup: the engine outlives this script and its terminal.
    setsid nohup dockerd >"$STATE/dockerd.log" 2>&1 </dev/null &
    wait_for 60 docker info \
        || { tail -n 20 "$STATE/dockerd.log" >&2; die "dockerd did not answer within 60 s"; }
    say "docker engine: ready"
fi

# --- OCI registry ---------------------------------------------------------------------------------
if curl -fsS "http://$REGISTRY_ADDR/v2/" >/dev/null 2>&1; then
    say "registry: answering on $REGISTRY_ADDR"
else
    mkdir -p "$STATE/registry/data"
    cat >"$STATE/registry/config.yml" <<EOF
version: 0.1
log:
  level: warn
storage:
  filesystem:
    rootdirectory: $STATE/registry/data
  delete:
    enabled: true
http:
  addr: $REGISTRY_ADDR
EOF
    say "registry: starting docker-registry on $REGISTRY_ADDR (log: $STATE/registry/registry.log)"
    setsid nohup /usr/bin/docker-registry serve "$STATE/registry/config.yml" \
        >"$STATE/registry/registry.log" 2>&1 </dev/null &
    wait_for 30 curl -fsS "http://$REGISTRY_ADDR/v2/" \
        || { tail -n 20 "$STATE/registry/registry.log" >&2; die "registry did not answer within 30 s"; }
    say "registry: ready"
fi

# --- Python environment ---------------------------------------------------------------------------
stamp="$STATE/venv.stamp"
want="$(sha256sum pyproject.toml | cut -d" " -f1)-pip$PIP_VERSION"
if [ -x .venv/bin/python ] && [ "$(cat "$stamp" 2>/dev/null)" = "$want" ]; then
    say ".venv: up to date"
else
    if [ ! -x .venv/bin/python ]; then
        say ".venv: creating with python3.11"
        python3.11 -m venv .venv
    fi
    # The venv's bundled pip (23.2) cannot resolve for another platform with --dry-run, which
    # the extras layer needs: pin the pip the project is tested with.
    say ".venv: pip==$PIP_VERSION, then pip install -e '.[dev]' (log: $STATE/pip.log)"
    .venv/bin/python -m pip install --disable-pip-version-check -q "pip==$PIP_VERSION" >"$STATE/pip.log" 2>&1 \
        || { tail -n 20 "$STATE/pip.log" >&2; die "pip upgrade failed (log: $STATE/pip.log)"; }
    .venv/bin/python -m pip install --disable-pip-version-check -e '.[dev]' >>"$STATE/pip.log" 2>&1 \
        || { tail -n 20 "$STATE/pip.log" >&2; die "pip install failed (log: $STATE/pip.log)"; }
    echo "$want" >"$stamp"
    say ".venv: ready"
fi

# --- root image -----------------------------------------------------------------------------------
# The Debian mirror apt uses (one-line or deb822 sources), for debootstrap.
debian_mirror() {
    local url
    url="$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources 2>/dev/null \
        | grep -oE 'https?://[^ ]+/debian/?( |$)' | grep -v -- '-security' | head -n 1 | tr -d ' ' || true)"
    echo "${url:-http://deb.debian.org/debian}"
}

if docker image inspect "$ROOT_IMAGE" >/dev/null 2>&1; then
    say "root image: $ROOT_IMAGE present"
elif timeout 120 docker pull -q python:3.11-slim-bookworm >/dev/null 2>&1; then
    docker tag python:3.11-slim-bookworm "$ROOT_IMAGE"
    say "root image: pulled python:3.11-slim-bookworm as $ROOT_IMAGE"
else
    mirror="$(debian_mirror)"
    rootfs="$STATE/rootfs.tmp"
    # --one-file-system: never follow a /proc or /sys that a failed debootstrap left mounted.
    trap 'rm -rf --one-file-system "$rootfs"' EXIT
    rm -rf --one-file-system "$rootfs"
    say "root image: cannot pull python:3.11-slim-bookworm; debootstrap bookworm from $mirror (~80 s, log: $STATE/debootstrap.log)"
    debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
        bookworm "$rootfs" "$mirror" >"$STATE/debootstrap.log" 2>&1 \
        || { tail -n 20 "$STATE/debootstrap.log" >&2; die "debootstrap failed (log: $STATE/debootstrap.log)"; }
    # What an image does not need: downloaded .debs, apt lists, docs (copyrights stay), man pages.
    rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/* \
        "$rootfs"/usr/share/man "$rootfs"/usr/share/info "$rootfs"/usr/share/locale \
        "$rootfs"/var/log/* "$rootfs"/tmp/*
    find "$rootfs/usr/share/doc" -mindepth 1 -not -name copyright -not -type d -delete
    # ensurepip's wheels come with python3-venv, so `python3 -m venv` gives pip without python3-pip.
    if ! { chroot "$rootfs" python3 -m venv /tmp/venv-check \
            && chroot "$rootfs" /tmp/venv-check/bin/pip --version; } >/dev/null 2>&1; then
        die "the debootstrapped root cannot make a virtual environment with pip"
    fi
    rm -rf "$rootfs/tmp/venv-check" "$rootfs/root/.cache"
    tar -C "$rootfs" --numeric-owner -c . | docker import \
        -c 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        -c 'ENV LANG=C.UTF-8' \
        -c 'CMD ["python3"]' \
        -m "debootstrap --variant=minbase bookworm" - "$ROOT_IMAGE" >/dev/null
    rm -rf --one-file-system "$rootfs"
    trap - EXIT
    say "root image: $ROOT_IMAGE imported ($(docker image inspect -f '{{.Size}}' "$ROOT_IMAGE" | awk '{printf "%d MB", $1/1e6}'))"
fi

# --- base image -----------------------------------------------------------------------------------
say "base image: bentoship base"
base_ref="$(.venv/bin/bentoship base)"
say "base image: $base_ref"
say "done in $((SECONDS - STARTED_AT)) s"
