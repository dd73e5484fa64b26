#!/usr/bin/env bash
# Assemble Loft.app from a built loft binary.
#
#   cargo build --release                      # on a Mac (Loft runs on the CPU there)
#   packaging/macos/bundle.sh                  # -> target/macos/Loft.app
#   packaging/macos/bundle.sh path/to/loft     # another binary, e.g. a universal one from lipo
#
# Lays out Loft.app/Contents/{Info.plist, MacOS/loft, Resources/loft.icns}, writes the
# version from Cargo.toml into Info.plist, and, where `codesign` exists (macOS), signs
# the bundle: ad hoc by default, or with CODESIGN_IDENTITY="Developer ID Application: ...".
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$root"

target_dir="${CARGO_TARGET_DIR:-$root/target}"
bin="${1:-$target_dir/release/loft}"
[[ -x "$bin" ]] || { echo "bundle.sh: $bin is missing; run cargo build --release first" >&2; exit 1; }

version="$(sed -n 's/^version *= *"\(.*\)"/\1/p' Cargo.toml | head -n1)"
app="$target_dir/macos/Loft.app"

rm -rf "$app"
mkdir -p "$app/Contents/MacOS" "$app/Contents/Resources"
cp "$bin" "$app/Contents/MacOS/loft"
chmod 755 "$app/Contents/MacOS/loft"
cp icons/loft.icns "$app/Contents/Resources/loft.icns"
awk -v v="$version" '
  { print }
  /<key>CFBundle(ShortVersionString|Version)<\/key>/ {
    getline; sub(/<string>.*<\/string>/, "<string>" v "</string>"); print
  }' packaging/macos/Info.plist > "$app/Contents/Info.plist"
printf 'APPL????' > "$app/Contents/PkgInfo"

if command -v codesign >/dev/null 2>&1; then
  codesign --force --deep --sign "${CODESIGN_IDENTITY:--}" "$app"
fi
echo "bundle.sh: wrote $app"
