#!/usr/bin/env bash
# ONNX Runtime's C/C++ API headers for the C++ scorer (cpp/), from Debian's libonnxruntime-dev package.
#
# Usage: scripts/ort_headers.sh DEST      (prints DEST/include/onnxruntime, the folder to pass to CMake)
#
# The `onnxruntime` wheel ships its shared library but no headers, and PyPI and npm carry none. Debian does: sid
# (1.23 at the time of writing), trixie (1.21) as the fallback. apt-get runs with PRIVATE sources, lists, cache and
# status under DEST, so the system's apt configuration and state are never read or changed; only the one package is
# downloaded (`apt-get download`, no dependencies, nothing installed) and unpacked with `dpkg-deb -x`. The headers are
# older than the wheel's library on purpose: ONNX Runtime's C API is backward compatible (a program built against
# header version N asks for API N with OrtGetApiBase()->GetApi(ORT_API_VERSION), and every later library serves it),
# see cpp/README.md. Idempotent: a second run with the headers present downloads nothing.
set -euo pipefail
if [[ $# -ne 1 ]]; then
    echo "usage: $0 DEST" >&2
    exit 2
fi
mkdir -p "$1"
DEST=$(cd "$1" && pwd)
INCLUDE=$DEST/include/onnxruntime
if [[ -f $DEST/VERSION && -f $INCLUDE/onnxruntime_cxx_api.h ]]; then
    echo "$INCLUDE"
    exit 0
fi
KEYRING=/usr/share/keyrings/debian-archive-keyring.gpg
if [[ ! -f $KEYRING ]]; then
    echo "$0: $KEYRING is missing (install the debian-archive-keyring package): the download cannot be verified" >&2
    exit 1
fi

APT=$DEST/apt
fetch() {  # fetch SUITE: download libonnxruntime-dev of that suite into $APT/debs
    local suite=$1
    rm -rf "$APT"
    mkdir -p "$APT/etc/preferences.d" "$APT/lists/partial" "$APT/cache/archives/partial" "$APT/debs"
    : > "$APT/status"
    echo "deb [signed-by=$KEYRING] http://deb.debian.org/debian $suite main" > "$APT/sources.list"
    local opts=(
        -o "Dir::Etc::sourcelist=$APT/sources.list" -o "Dir::Etc::sourceparts=-"
        -o "Dir::Etc::preferencesparts=$APT/etc/preferences.d" -o "Dir::Etc::preferences=$APT/etc/preferences"
        -o "Dir::State::Lists=$APT/lists" -o "Dir::State::status=$APT/status" -o "Dir::Cache=$APT/cache"
        -o "APT::Sandbox::User=root" -o "Acquire::Languages=none" -o "APT::Architecture=amd64"
        -o "APT::Architectures::=amd64" -o "Debug::NoLocking=1"
    )
    apt-get "${opts[@]}" -qq update >&2 &&
        (cd "$APT/debs" && apt-get "${opts[@]}" -qq download libonnxruntime-dev >&2)
}

suite=""
for candidate in sid trixie; do
    if fetch "$candidate"; then
        suite=$candidate
        break
    fi
    echo "$0: libonnxruntime-dev could not be downloaded from Debian $candidate" >&2
done
if [[ -z $suite ]]; then
    echo "$0: no libonnxruntime-dev from Debian sid or trixie (network to the Debian archive needed once)" >&2
    exit 1
fi

deb=$(ls "$APT"/debs/libonnxruntime-dev_*.deb)
rm -rf "$DEST/extract" "$DEST/include"
dpkg-deb -x "$deb" "$DEST/extract"
found=$(dirname "$(find "$DEST/extract" -name onnxruntime_cxx_api.h | head -n 1)")
if [[ ! -f $found/onnxruntime_cxx_api.h || ! -f $found/onnxruntime_c_api.h ]]; then
    echo "$0: $deb holds no onnxruntime_cxx_api.h" >&2
    exit 1
fi
mkdir -p "$DEST/include"
cp -r "$found" "$INCLUDE"
version=$(dpkg-deb -f "$deb" Version)
api=$(sed -n 's/^#define ORT_API_VERSION \([0-9]*\).*/\1/p' "$INCLUDE/onnxruntime_c_api.h")
printf 'package libonnxruntime-dev %s (Debian %s)\nORT_API_VERSION %s\n' "$version" "$suite" "$api" > "$DEST/VERSION"
rm -rf "$DEST/extract" "$APT"
echo "$INCLUDE"
