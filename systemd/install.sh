#!/usr/bin/env bash
# Install (or remove) inspectd as a systemd service. Safe to run again: it upgrades in place and never
# overwrites an existing /etc/inspectd/config.toml or credential.
#
#   sudo systemd/install.sh [--gpu nvidia|jetson|none] [--bundle DIR] [--start]
#   sudo systemd/install.sh --uninstall [--purge]
#
# Layout: venv in /opt/inspectd/venv, model bundle in /opt/inspectd/bundle (read-only to the service), config in
# /etc/inspectd/config.toml, secrets in /etc/inspectd/credentials/ (LoadCredential=), the unit in
# /etc/systemd/system/inspectd.service plus an optional GPU drop-in in inspectd.service.d/gpu.conf. State (the MQTT
# spool) lives in /var/lib/inspectd and TensorRT engines in /var/cache/inspectd, both made by systemd.
#
# --root DIR installs into a staging tree instead of / (no root needed, no systemctl): used by the tests and for
# building images.
set -euo pipefail

usage() {
    cat <<'EOF'
usage: install.sh [options]
  --gpu nvidia|jetson|none  add (or with "none" remove) the GPU device drop-in; default: keep what is installed
  --bundle DIR              copy this model bundle to /opt/inspectd/bundle
  --start                   (re)start the service now (default: enable only; restart only if it was running)
  --python PATH             Python for the venv (default: python3)
  --no-venv                 do not create or update the venv (config, unit and drop-ins only)
  --root DIR                install under DIR instead of / (staging; skips the root check and systemctl)
  --uninstall               stop, disable and remove the unit and /opt/inspectd (config and state are kept)
  --purge                   with --uninstall: also remove /etc/inspectd, /var/lib/inspectd and /var/cache/inspectd
  -h, --help                this text
EOF
}

die() { echo "install.sh: error: $*" >&2; exit 1; }
say() { echo "install.sh: $*"; }

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
SRC="$(dirname "$HERE")"
GPU=""
BUNDLE=""
START=0
PYTHON=python3
VENV=1
ROOT=""
UNINSTALL=0
PURGE=0

while [ $# -gt 0 ]; do
    case "$1" in
        --gpu) [ $# -ge 2 ] || die "--gpu needs nvidia, jetson or none"; GPU="$2"; shift 2 ;;
        --bundle) [ $# -ge 2 ] || die "--bundle needs a folder"; BUNDLE="$2"; shift 2 ;;
        --start) START=1; shift ;;
        --python) [ $# -ge 2 ] || die "--python needs a path"; PYTHON="$2"; shift 2 ;;
        --no-venv) VENV=0; shift ;;
        --root) [ $# -ge 2 ] || die "--root needs a folder"; ROOT="${2%/}"; shift 2 ;;
        --uninstall) UNINSTALL=1; shift ;;
        --purge) PURGE=1; shift ;;
        -h|--help) usage; exit 0 ;;
        *) usage >&2; die "unknown option $1" ;;
    esac
done
case "$GPU" in
    ""|nvidia|jetson|none) ;;
    *) die "--gpu must be nvidia, jetson or none, got '$GPU'" ;;
esac
if [ "$PURGE" = 1 ] && [ "$UNINSTALL" = 0 ]; then
    die "--purge only goes with --uninstall"
fi
if [ -z "$ROOT" ] && [ "$(id -u)" != 0 ]; then
    die "run as root (sudo $0 $*): it writes /opt, /etc and /etc/systemd/system"
fi

OPT="$ROOT/opt/inspectd"
ETC="$ROOT/etc/inspectd"
UNIT_DIR="$ROOT/etc/systemd/system"
UNIT="$UNIT_DIR/inspectd.service"
DROPIN_DIR="$UNIT_DIR/inspectd.service.d"
CREDENTIALS="mqtt_password mqtt_tls_key_password source_password"

systemctl_() {
    # systemctl only on the live system; a staging tree has no running systemd to talk to.
    if [ -z "$ROOT" ]; then
        systemctl "$@"
    fi
}

if [ "$UNINSTALL" = 1 ]; then
    if [ -n "$ROOT" ]; then
        rm -f "$UNIT_DIR/multi-user.target.wants/inspectd.service"
    elif systemctl list-unit-files inspectd.service >/dev/null 2>&1; then
        systemctl disable --now inspectd.service 2>/dev/null || true
    fi
    rm -f "$UNIT"
    rm -rf "$DROPIN_DIR" "$OPT"
    systemctl_ daemon-reload
    if [ "$PURGE" = 1 ]; then
        rm -rf "$ETC" "$ROOT/var/lib/inspectd" "$ROOT/var/lib/private/inspectd" \
            "$ROOT/var/cache/inspectd" "$ROOT/var/cache/private/inspectd"
        say "removed inspectd, its config, credentials, spool and engine cache"
    else
        say "removed inspectd; kept $ETC and /var/lib/inspectd (--purge removes them)"
    fi
    exit 0
fi

[ -f "$SRC/pyproject.toml" ] || die "$SRC/pyproject.toml not found: run install.sh from an inspectd checkout"

# 1. The venv. Jetson gets the system site-packages, where JetPack puts TensorRT and pycuda.
install -d -m 0755 "$OPT"
if [ "$VENV" = 1 ]; then
    if [ ! -x "$OPT/venv/bin/python" ]; then
        venv_flags=()
        if [ "$GPU" = jetson ]; then
            venv_flags+=(--system-site-packages)
        fi
        "$PYTHON" -m venv "${venv_flags[@]}" "$OPT/venv"
    fi
    target="$SRC"
    if [ "$GPU" = nvidia ]; then
        target="${SRC}[gpu]"
    fi
    "$OPT/venv/bin/pip" install --quiet --upgrade pip
    "$OPT/venv/bin/pip" install --quiet --upgrade "$target"
    "$OPT/venv/bin/inspectd" --version >/dev/null || die "$OPT/venv/bin/inspectd does not run"
fi
install -m 0644 "$SRC/README.md" "$OPT/README.md"

# 2. The bundle: copied beside the old one, then swapped, so a running service never sees half a bundle.
if [ -n "$BUNDLE" ]; then
    [ -f "$BUNDLE/bundle.json" ] || die "--bundle $BUNDLE has no bundle.json"
    rm -rf "$OPT/bundle.new"
    cp -a "$BUNDLE" "$OPT/bundle.new"
    chmod -R u=rwX,go=rX "$OPT/bundle.new"
    rm -rf "$OPT/bundle.old"
    if [ -e "$OPT/bundle" ]; then
        mv "$OPT/bundle" "$OPT/bundle.old"
    fi
    mv "$OPT/bundle.new" "$OPT/bundle"
    rm -rf "$OPT/bundle.old"
fi

# 3. Config and credentials: never overwritten. An empty credential file means "not set" (LoadCredential= fails
#    on a missing file, so each one exists, root-only).
install -d -m 0755 "$ETC"
if [ ! -e "$ETC/config.toml" ]; then
    sed -e 's#^bundle = "var/bundle"#bundle = "/opt/inspectd/bundle"#' "$SRC/config.toml" > "$ETC/config.toml.new"
    chmod 0644 "$ETC/config.toml.new"
    mv "$ETC/config.toml.new" "$ETC/config.toml"
    say "wrote $ETC/config.toml: edit [source] and [mqtt] for this station"
else
    say "kept the existing $ETC/config.toml"
fi
install -d -m 0700 "$ETC/credentials"
for cred in $CREDENTIALS; do
    if [ ! -e "$ETC/credentials/$cred" ]; then
        install -m 0600 /dev/null "$ETC/credentials/$cred"
    fi
done

# 4. The unit and the GPU drop-in.
install -d -m 0755 "$UNIT_DIR"
install -m 0644 "$HERE/inspectd.service" "$UNIT"
case "$GPU" in
    nvidia|jetson)
        install -d -m 0755 "$DROPIN_DIR"
        install -m 0644 "$HERE/gpu-$GPU.conf" "$DROPIN_DIR/gpu.conf"
        ;;
    none)
        rm -f "$DROPIN_DIR/gpu.conf"
        rmdir "$DROPIN_DIR" 2>/dev/null || true
        ;;
esac

# 5. The groups the unit names in SupplementaryGroups= must exist, or the service fails at start.
if [ -z "$ROOT" ]; then
    for group in video render; do
        if ! getent group "$group" >/dev/null; then
            groupadd --system "$group"
            say "created the missing system group $group"
        fi
    done
    if command -v systemd-analyze >/dev/null; then
        systemd-analyze verify "$UNIT" || die "systemd-analyze verify $UNIT failed"
    fi
fi

# 6. Enable; restart only if asked or if it was already running (an upgrade).
systemctl_ daemon-reload
if [ -n "$ROOT" ]; then
    # Offline, what `systemctl enable` does for WantedBy=multi-user.target (no systemctl needed in a staging tree).
    install -d -m 0755 "$UNIT_DIR/multi-user.target.wants"
    ln -sfn /etc/systemd/system/inspectd.service "$UNIT_DIR/multi-user.target.wants/inspectd.service"
else
    systemctl enable inspectd.service
fi
if [ "$START" = 1 ] || { [ -z "$ROOT" ] && systemctl is-active --quiet inspectd.service; }; then
    systemctl_ restart inspectd.service
    say "inspectd restarted: journalctl -u inspectd -f"
else
    say "inspectd enabled; start it with: systemctl start inspectd"
fi
