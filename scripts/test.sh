#!/usr/bin/env bash
# The whole test suite: `cargo test --locked`, after making sure the window test has an X server.
# tests/window.rs opens the real window under Xvfb (with Mesa's software OpenGL); on a machine without them
# this installs them from the distribution's packages (Debian/Ubuntu: apt; Fedora: dnf), as root or via sudo.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v Xvfb >/dev/null 2>&1; then
    echo "scripts/test.sh: installing Xvfb for the window test" >&2
    sudo=""
    if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
    if command -v apt-get >/dev/null 2>&1; then
        $sudo apt-get update -qq
        $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
            xvfb libgl1-mesa-dri libegl1 libxkbcommon-x11-0 >/dev/null
    elif command -v dnf >/dev/null 2>&1; then
        $sudo dnf install -y xorg-x11-server-Xvfb mesa-dri-drivers libxkbcommon-x11
    else
        echo "scripts/test.sh: install Xvfb (the X virtual framebuffer) and run again" >&2
        exit 1
    fi
fi

exec cargo test --locked "$@"
