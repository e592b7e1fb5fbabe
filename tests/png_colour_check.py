#!/usr/bin/env python3
"""Checks a screenshot (PNG) for where a colour is drawn; used by test_timeline's
headless-Chromium test of timeline.html. Standard library only (zlib): 8-bit RGB or
RGBA, non-interlaced, as Chromium writes them.

  png_colour_check.py SHOT.png --marker RRGGBB --min-markers N --min-w W --min-h H
      at least N separate regions (4-connected) of the colour, each with a bounding
      box of at least W x H pixels;
  png_colour_check.py SHOT.png --stripe RRGGBB --min-run-frac F
      in some row, the colour spans (first to last such pixel) at least F x the
      image's width.

Colours match within 2 per channel. Prints what it found; exit 0 if the check holds,
1 if not, 2 on a bad file.
"""
import argparse
import struct
import sys
import zlib


def read_png(path):
    with open(path, "rb") as f:
        data = f.read()
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        raise ValueError("not a PNG")
    pos, idat, width, height, channels = 8, b"", 0, 0, 0
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + length]
        pos += 12 + length
        if kind == b"IHDR":
            width, height, depth, ctype, _, _, interlace = struct.unpack(">IIBBBBB", body)
            if depth != 8 or ctype not in (2, 6) or interlace:
                raise ValueError("unsupported PNG (depth %d, colour type %d, interlace %d)" % (depth, ctype, interlace))
            channels = 3 if ctype == 2 else 4
        elif kind == b"IDAT":
            idat += body
        elif kind == b"IEND":
            break
    raw = zlib.decompress(idat)
    stride = width * channels
    rows, prev = [], bytearray(stride)
    for y in range(height):
        ftype = raw[y * (stride + 1)]
        line = bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        for i in range(stride):
            a = line[i - channels] if i >= channels else 0
            b = prev[i]
            c = prev[i - channels] if i >= channels else 0
            if ftype == 1:
                line[i] = (line[i] + a) & 255
            elif ftype == 2:
                line[i] = (line[i] + b) & 255
            elif ftype == 3:
                line[i] = (line[i] + (a + b) // 2) & 255
            elif ftype == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
        rows.append(bytes(line))
        prev = line
    return width, height, channels, rows


def mask_of(width, height, channels, rows, hexcolour):
    want = bytes.fromhex(hexcolour)
    mask = []
    for line in rows:
        mask.append([all(abs(line[x * channels + k] - want[k]) <= 2 for k in range(3)) for x in range(width)])
    return mask


def regions(mask, width, height):
    seen = [[False] * width for _ in range(height)]
    out = []
    for y in range(height):
        for x in range(width):
            if not mask[y][x] or seen[y][x]:
                continue
            stack, box, n = [(x, y)], [x, y, x, y], 0
            seen[y][x] = True
            while stack:
                cx, cy = stack.pop()
                n += 1
                box = [min(box[0], cx), min(box[1], cy), max(box[2], cx), max(box[3], cy)]
                for nx, ny in ((cx + 1, cy), (cx - 1, cy), (cx, cy + 1), (cx, cy - 1)):
                    if 0 <= nx < width and 0 <= ny < height and mask[ny][nx] and not seen[ny][nx]:
                        seen[ny][nx] = True
                        stack.append((nx, ny))
            out.append((box[2] - box[0] + 1, box[3] - box[1] + 1, n, box[0], box[1]))
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("png")
    ap.add_argument("--marker")
    ap.add_argument("--min-markers", type=int, default=1)
    ap.add_argument("--min-w", type=int, default=1)
    ap.add_argument("--min-h", type=int, default=1)
    ap.add_argument("--stripe")
    ap.add_argument("--min-run-frac", type=float, default=0.0)
    args = ap.parse_args()
    try:
        width, height, channels, rows = read_png(args.png)
    except (OSError, ValueError, zlib.error) as e:
        print("png_colour_check: %s: %s" % (args.png, e))
        return 2
    ok = True
    if args.marker:
        found = regions(mask_of(width, height, channels, rows, args.marker), width, height)
        big = [r for r in found if r[0] >= args.min_w and r[1] >= args.min_h]
        print("%dx%d screenshot: %d regions of #%s, %d at least %dx%d: %s" %
              (width, height, len(found), args.marker, len(big), args.min_w, args.min_h,
               ", ".join("%dx%d px (%d) at %d,%d" % r for r in found[:20])))
        ok = ok and len(big) >= args.min_markers
    if args.stripe:
        mask = mask_of(width, height, channels, rows, args.stripe)
        best = 0
        for line in mask:
            xs = [x for x, v in enumerate(line) if v]
            if xs:
                best = max(best, xs[-1] - xs[0] + 1)
        print("%dx%d screenshot: #%s spans at most %d px of a row (%.0f %% of the width)" %
              (width, height, args.stripe, best, 100.0 * best / width))
        ok = ok and best >= args.min_run_frac * width
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
