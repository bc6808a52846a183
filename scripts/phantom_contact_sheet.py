"""Regenerate docs/phantom_contact_sheet.png: classes (rows) x sites (columns), each case shown twice,
as displayed (MONOCHROME2) and with the lung mask outline and lesion support overlaid.

Usage: python scripts/phantom_contact_sheet.py [--out docs/phantom_contact_sheet.png] [--size 256] [--seed 0]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from isnet.data.phantom import LABELS, SITE_TABLE, render_case


def outline(mask: np.ndarray) -> np.ndarray:
    m = mask.astype(bool)
    inner = m.copy()
    inner[1:-1, 1:-1] = m[1:-1, 1:-1] & m[:-2, 1:-1] & m[2:, 1:-1] & m[1:-1, :-2] & m[1:-1, 2:]
    return m & ~inner


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", default="docs/phantom_contact_sheet.png")
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    s, pad, head = args.size, 6, 22
    cols = len(SITE_TABLE)
    sheet = Image.new("RGB", (cols * (2 * s + pad) + pad + 60, len(LABELS) * (s + pad) + pad + head), "white")
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default(size=14)
    for si, st in enumerate(SITE_TABLE):
        x0 = 60 + pad + si * (2 * s + pad)
        draw.text((x0, 4), f"{st.name}: {st.fmt.upper()} {st.bits}-bit {st.photometric}", fill="black", font=font)
    for li, label in enumerate(LABELS):
        y0 = head + pad + li * (s + pad)
        draw.text((4, y0 + s // 2), label, fill="black", font=font)
        for si, st in enumerate(SITE_TABLE):
            c = render_case(np.random.SeedSequence([args.seed, si, li, 0]), label=label, site=st, size=s)
            g = (np.clip(c.image, 0, 1) * 255).astype(np.uint8)
            rgb = np.stack([g, g, g], -1)
            over = rgb.copy()
            les = c.lesion > 1e-3
            over[les] = (0.6 * over[les] + 0.4 * np.array([255, 200, 0])).astype(np.uint8)
            over[outline(c.mask)] = (255, 40, 40)
            x0 = 60 + pad + si * (2 * s + pad)
            sheet.paste(Image.fromarray(rgb), (x0, y0))
            sheet.paste(Image.fromarray(over), (x0 + s, y0))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    sheet.save(args.out)
    print(args.out)


if __name__ == "__main__":
    main()
