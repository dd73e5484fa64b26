#!/usr/bin/env bash
# Build Loft-<version>-<arch>.AppImage from this repository.
#
#   packaging/appimage/build.sh            # cargo build --release, then package
#   packaging/appimage/build.sh --no-build # package an existing target/release/loft
#   CARGO_FEATURES=cuda packaging/appimage/build.sh   # build with extra features
#
# Needs one of these, on PATH or named by $LINUXDEPLOY / $APPIMAGETOOL:
#   * linuxdeploy (preferred: it also bundles the shared libraries loft links to),
#     from https://github.com/linuxdeploy/linuxdeploy/releases
#     (linuxdeploy-x86_64.AppImage; make it executable). Its AppImage output
#     plugin, linuxdeploy-plugin-appimage, is built in to the release AppImage.
#   * appimagetool, from https://github.com/AppImage/appimagetool/releases
#     (packs the AppDir as it is, without bundling libraries).
# The graphics libraries the window opens at run time (libGL/libEGL, libxkbcommon,
# libwayland-*, libX11) come from the user's system, as for any AppImage.
# The AppDir and the AppImage are written under target/appimage/.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$root"

build=1
[[ "${1:-}" == "--no-build" ]] && build=0

version="$(sed -n 's/^version *= *"\(.*\)"/\1/p' Cargo.toml | head -n1)"
arch="$(uname -m)"
target_dir="${CARGO_TARGET_DIR:-$root/target}"
out_dir="$target_dir/appimage"
appdir="$out_dir/AppDir"
output="$out_dir/Loft-$version-$arch.AppImage"

# Find the packing tool first, so a missing one fails before a long build.
tool="" kind=""
for candidate in "${LINUXDEPLOY:-}" linuxdeploy "linuxdeploy-$arch.AppImage"; do
  if [[ -n "$candidate" ]] && command -v "$candidate" >/dev/null 2>&1; then
    tool="$(command -v "$candidate")" kind=linuxdeploy; break
  fi
done
if [[ -z "$tool" ]]; then
  for candidate in "${APPIMAGETOOL:-}" appimagetool "appimagetool-$arch.AppImage"; do
    if [[ -n "$candidate" ]] && command -v "$candidate" >/dev/null 2>&1; then
      tool="$(command -v "$candidate")" kind=appimagetool; break
    fi
  done
fi
if [[ -z "$tool" ]]; then
  cat >&2 <<MSG
build.sh: neither linuxdeploy nor appimagetool was found.
  Get linuxdeploy from  https://github.com/linuxdeploy/linuxdeploy/releases
  or appimagetool from  https://github.com/AppImage/appimagetool/releases,
  make it executable, and put it on PATH or set LINUXDEPLOY=/path/to/it
  (APPIMAGETOOL=/path/to/it for appimagetool).
MSG
  exit 1
fi

if (( build )); then
  cargo build --release --locked ${CARGO_FEATURES:+--features "$CARGO_FEATURES"}
fi
bin="$target_dir/release/loft"
[[ -x "$bin" ]] || { echo "build.sh: $bin is missing; run cargo build --release" >&2; exit 1; }

# Lay out the AppDir as a /usr prefix.
rm -rf "$appdir"
install -Dm755 "$bin" "$appdir/usr/bin/loft"
install -Dm644 packaging/loft.desktop "$appdir/usr/share/applications/loft.desktop"
install -Dm644 packaging/io.github.loft.Loft.metainfo.xml \
  "$appdir/usr/share/metainfo/io.github.loft.Loft.metainfo.xml"
for size in 16 24 32 48 64 128 256 512; do
  install -Dm644 "icons/png/loft-$size.png" \
    "$appdir/usr/share/icons/hicolor/${size}x${size}/apps/loft.png"
done
install -Dm644 icons/loft.svg "$appdir/usr/share/icons/hicolor/scalable/apps/loft.svg"

rm -f "$output"
if [[ "$kind" == linuxdeploy ]]; then
  # linuxdeploy adds AppRun, the top-level .desktop/icon, and the libraries loft needs.
  OUTPUT="$output" LDAI_OUTPUT="$output" "$tool" --appdir "$appdir" \
    --desktop-file "$appdir/usr/share/applications/loft.desktop" \
    --icon-file "$appdir/usr/share/icons/hicolor/256x256/apps/loft.png" \
    --output appimage
else
  # appimagetool wants AppRun, the .desktop file and the icon at the AppDir's top.
  ln -s usr/bin/loft "$appdir/AppRun"
  ln -s usr/share/applications/loft.desktop "$appdir/loft.desktop"
  cp icons/png/loft-256.png "$appdir/loft.png"
  ln -s loft.png "$appdir/.DirIcon"
  ARCH="$arch" "$tool" "$appdir" "$output"
fi
echo "build.sh: wrote $output"
