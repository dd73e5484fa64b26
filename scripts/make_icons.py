#!/usr/bin/env python3
"""Regenerate Loft's raster icons from the SVG master, icons/loft.svg.

Run from anywhere:  python3 scripts/make_icons.py

Needs:
  * an SVG rasterizer, either `rsvg-convert` (Debian: apt-get install librsvg2-bin),
    used when on PATH, or the cairosvg module (pip install cairosvg; needs libcairo2);
  * Pillow (pip install pillow), for the .ico and for reading/writing the PNGs.

Writes (all committed):
  icons/png/loft-{16,24,32,48,64,128,256,512}.png  square RGBA, transparent corners
  icons/loft.ico   Windows, 16..256 (PNG-compressed frames)
  icons/loft.icns  macOS, 16..512 plus 512@2x (1024)

Every size is rendered straight from the SVG, never scaled down from a bigger PNG.
The .icns is written here rather than by Pillow, whose writer leaves out the 16 px
and 1x 32 px entries (Finder's list view and the Dock's smallest sizes use them).
"""

import io
import shutil
import struct
import subprocess
import sys
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
SVG = ROOT / "icons" / "loft.svg"
PNG_DIR = ROOT / "icons" / "png"
PNG_SIZES = [16, 24, 32, 48, 64, 128, 256, 512]
ICO_SIZES = [16, 24, 32, 48, 64, 128, 256]


def render(size: int) -> Image.Image:
    """The SVG rasterized at size x size, as RGBA."""
    if shutil.which("rsvg-convert"):
        png = subprocess.run(
            ["rsvg-convert", "-w", str(size), "-h", str(size), "-f", "png", str(SVG)],
            check=True, capture_output=True,
        ).stdout
    else:
        try:
            import cairosvg
        except ImportError:
            sys.exit("make_icons: need rsvg-convert (apt-get install librsvg2-bin) "
                     "or cairosvg (pip install cairosvg)")
        png = cairosvg.svg2png(url=str(SVG), output_width=size, output_height=size)
    im = Image.open(io.BytesIO(png)).convert("RGBA")
    assert im.size == (size, size), im.size
    return im


def png_bytes(im: Image.Image) -> bytes:
    buf = io.BytesIO()
    im.save(buf, "PNG", optimize=True)
    return buf.getvalue()


def packbits_channel(data: bytes) -> bytes:
    """Apple's icns RLE for one channel: 0x80+n repeats the next byte n+3 times
    (n+3 in 3..130); 0..0x7f copies the next n+1 bytes (1..128) literally."""
    out, lit, i = bytearray(), bytearray(), 0
    while i < len(data):
        run = 1
        while i + run < len(data) and run < 130 and data[i + run] == data[i]:
            run += 1
        if run >= 3:
            if lit:
                out += bytes([len(lit) - 1]) + lit
                lit.clear()
            out += bytes([0x80 + run - 3, data[i]])
            i += run
        else:
            lit.append(data[i])
            i += 1
            if len(lit) == 128:
                out += bytes([127]) + lit
                lit.clear()
    if lit:
        out += bytes([len(lit) - 1]) + lit
    return bytes(out)


def legacy_entries(im: Image.Image, rgb_type: bytes, mask_type: bytes) -> list:
    """The classic RLE RGB entry plus its 8-bit alpha mask (is32/s8mk, il32/l8mk)."""
    r, g, b, a = im.split()
    rgb = b"".join(packbits_channel(ch.tobytes()) for ch in (r, g, b))
    return [(rgb_type, rgb), (mask_type, a.tobytes())]


def write_icns(path: Path, images: dict) -> None:
    entries = legacy_entries(images[16], b"is32", b"s8mk")
    entries += legacy_entries(images[32], b"il32", b"l8mk")
    # PNG-based entries: type -> pixel size (the @2x types hold the doubled size).
    for kind, size in [(b"ic11", 32), (b"ic12", 64), (b"ic07", 128), (b"ic13", 256),
                       (b"ic08", 256), (b"ic14", 512), (b"ic09", 512), (b"ic10", 1024)]:
        entries.append((kind, png_bytes(images[size])))
    body = b"".join(kind + struct.pack(">I", 8 + len(data)) + data for kind, data in entries)
    path.write_bytes(b"icns" + struct.pack(">I", 8 + len(body)) + body)


def main() -> None:
    images = {s: render(s) for s in sorted(set(PNG_SIZES + [1024]))}
    PNG_DIR.mkdir(parents=True, exist_ok=True)
    for s in PNG_SIZES:
        (PNG_DIR / f"loft-{s}.png").write_bytes(png_bytes(images[s]))
    images[256].save(ROOT / "icons" / "loft.ico", format="ICO",
                     sizes=[(s, s) for s in ICO_SIZES],
                     append_images=[images[s] for s in ICO_SIZES if s != 256])
    write_icns(ROOT / "icons" / "loft.icns", images)
    print(f"make_icons: wrote {len(PNG_SIZES)} PNGs, loft.ico and loft.icns under {ROOT / 'icons'}")


if __name__ == "__main__":
    main()
