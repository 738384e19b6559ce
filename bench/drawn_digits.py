"""Digits drawn with `mnist serve`'s own pen through a headless browser: the page → preparation → model path.

Each digit 0-9 has one to three stroke templates (how people write it: a 1 with or without its flag, a 4 open
or closed, a 7 with or without its bar). Every drawing takes a template and gives it its own size, width,
slant, rotation, place on the canvas and a wobble of every control point, all drawn from a seeded generator,
then draws it with the mouse on the page's canvas (the page's pen: round, 20 px on 280 px). Drawn from
clean templates, they are tidier than people's hands: a check that what the page sends is read right,
and one proxy beside bench/other_writers.py's transformed images, not a stand-in for other writers.
What the page would send is kept: the canvas as a PNG, in `<out>/<digit>/<n>.png`. `bench/other_writers.py --drawn <out>`
then reads that folder with each run's own preparation (the `digit` recipe that serve applies).

    python bench/drawn_digits.py --run outputs/train/<date>/<time> --out /tmp/drawn --per-digit 50
    python bench/drawn_digits.py --run outputs/train/<date>/<time> --out /tmp/messy --per-digit 30 --spread 2

Needs playwright (the dev extra) and Chromium at /usr/bin/chromium (Debian's `chromium`).
"""

from __future__ import annotations

import argparse
import base64
import math
import os
import random
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import List, Tuple

Point = Tuple[float, float]
Stroke = List[Point]

# Control points in a unit box (x right, y down); each stroke is drawn as a Catmull-Rom curve through them.
TEMPLATES = {
    0: [["ellipse"]],  # a loop from a random start, a little past closed
    1: [
        [[(0.5, 0.0), (0.5, 1.0)]],
        [[(0.3, 0.22), (0.5, 0.0), (0.5, 1.0)]],
        [[(0.3, 0.22), (0.5, 0.0), (0.5, 1.0)], [(0.25, 1.0), (0.75, 1.0)]],
    ],
    2: [
        [[(0.12, 0.28), (0.35, 0.03), (0.65, 0.0), (0.86, 0.22), (0.78, 0.48), (0.1, 1.0), (0.92, 1.0)]],
        [[(0.15, 0.25), (0.5, 0.0), (0.85, 0.25), (0.45, 0.7), (0.12, 0.98), (0.5, 0.85), (0.92, 1.0)]],
    ],
    3: [
        [
            [
                (0.15, 0.12),
                (0.5, 0.0),
                (0.82, 0.15),
                (0.75, 0.4),
                (0.4, 0.5),
                (0.8, 0.6),
                (0.85, 0.85),
                (0.5, 1.0),
                (0.12, 0.9),
            ]
        ],
        [[(0.1, 0.02), (0.85, 0.02), (0.4, 0.42), (0.8, 0.58), (0.85, 0.85), (0.5, 1.0), (0.12, 0.9)]],
    ],
    4: [
        [[(0.62, 0.0), (0.08, 0.66), (0.92, 0.66)], [(0.66, 0.3), (0.66, 1.0)]],
        [[(0.2, 0.0), (0.15, 0.55), (0.88, 0.55)], [(0.7, 0.0), (0.7, 1.0)]],
    ],
    5: [
        [[(0.82, 0.0), (0.25, 0.0), (0.2, 0.45), (0.55, 0.38), (0.85, 0.6), (0.8, 0.9), (0.45, 1.0), (0.1, 0.9)]],
        [
            [(0.25, 0.0), (0.2, 0.45), (0.55, 0.38), (0.85, 0.6), (0.8, 0.9), (0.45, 1.0), (0.1, 0.9)],
            [(0.25, 0.0), (0.85, 0.0)],
        ],
    ],
    6: [[[(0.75, 0.0), (0.35, 0.3), (0.15, 0.7), (0.35, 1.0), (0.7, 0.95), (0.8, 0.7), (0.5, 0.5), (0.18, 0.7)]]],
    7: [
        [[(0.1, 0.0), (0.9, 0.0), (0.4, 1.0)]],
        [[(0.1, 0.0), (0.9, 0.0), (0.4, 1.0)], [(0.35, 0.5), (0.8, 0.5)]],
        [[(0.08, 0.12), (0.1, 0.0), (0.9, 0.02), (0.6, 0.45), (0.45, 1.0)]],
    ],
    8: [
        [
            [
                (0.8, 0.15),
                (0.5, 0.0),
                (0.2, 0.15),
                (0.25, 0.35),
                (0.75, 0.65),
                (0.8, 0.9),
                (0.5, 1.0),
                (0.2, 0.9),
                (0.25, 0.65),
                (0.75, 0.35),
                (0.8, 0.15),
            ]
        ],
    ],
    9: [
        [[(0.8, 0.25), (0.5, 0.0), (0.2, 0.2), (0.25, 0.45), (0.6, 0.5), (0.82, 0.25), (0.8, 0.6), (0.75, 1.0)]],
        [
            [
                (0.8, 0.25),
                (0.5, 0.0),
                (0.2, 0.2),
                (0.25, 0.45),
                (0.6, 0.5),
                (0.82, 0.25),
                (0.78, 0.75),
                (0.55, 1.0),
                (0.25, 0.95),
            ]
        ],
    ],
}


def _curve(points: List[Point], per_segment: int = 8) -> Stroke:
    """A Catmull-Rom curve through `points` (ends repeated), sampled `per_segment` times between each pair."""
    if len(points) < 3:
        return [
            (
                points[0][0] + (points[-1][0] - points[0][0]) * t / 16,
                points[0][1] + (points[-1][1] - points[0][1]) * t / 16,
            )
            for t in range(17)
        ]
    padded = [points[0], *points, points[-1]]
    out: Stroke = []
    for i in range(1, len(padded) - 2):
        p0, p1, p2, p3 = padded[i - 1 : i + 3]
        for step in range(per_segment):
            t = step / per_segment
            out.append(
                tuple(
                    0.5
                    * (
                        2 * p1[k]
                        + (-p0[k] + p2[k]) * t
                        + (2 * p0[k] - 5 * p1[k] + 4 * p2[k] - p3[k]) * t * t
                        + (-p0[k] + 3 * p1[k] - 3 * p2[k] + p3[k]) * t**3
                    )
                    for k in range(2)
                )
            )
    out.append(points[-1])
    return out


def drawing(digit: int, rng: random.Random, spread: float = 1.0) -> List[Stroke]:
    """One drawing of `digit` in canvas pixels (280 x 280): a template, wobbled, sized, slanted, rotated, placed."""
    template = rng.choice(TEMPLATES[digit])
    wobble = rng.uniform(0.0, 0.05 * spread)
    strokes = []
    for control in template:
        if control == "ellipse":
            start, turns = rng.uniform(0, 2 * math.pi), rng.uniform(1.0, 1.12)
            control = [
                (0.5 + 0.45 * math.sin(start + a), 0.5 - 0.5 * math.cos(start + a))
                for a in (turns * 2 * math.pi * i / 12 for i in range(13))
            ]
        moved = [(x + rng.gauss(0, wobble), y + rng.gauss(0, wobble)) for x, y in control]
        strokes.append(_curve(moved))
    height = rng.uniform(0.4, 0.85) * 280
    width = height * rng.uniform(0.45, 0.85)
    slant, angle = rng.uniform(-0.35, 0.35) * spread, math.radians(rng.uniform(-12, 12) * spread)
    placed = []
    for stroke in strokes:
        points = []
        for x, y in stroke:
            px, py = (x - 0.5) * width + slant * (0.5 - y) * height, (y - 0.5) * height
            points.append((px * math.cos(angle) - py * math.sin(angle), px * math.sin(angle) + py * math.cos(angle)))
        placed.append(points)
    margin = 14  # the pen's radius and a little: every point, the first included, lands on the canvas
    xs = [x for s in placed for x, _ in s]
    ys = [y for s in placed for _, y in s]
    room = 280 - 2 * margin
    if max(xs) - min(xs) >= room or max(ys) - min(ys) >= room:  # too large once slanted: shrunk to fit, centred
        shrink = (room - 1) / max(max(xs) - min(xs), max(ys) - min(ys))
        mx, my = (max(xs) + min(xs)) / 2, (max(ys) + min(ys)) / 2
        return [[(140 + (x - mx) * shrink, 140 + (y - my) * shrink) for x, y in s] for s in placed]
    cx = rng.uniform(margin - min(xs), 280 - margin - max(xs))
    cy = rng.uniform(margin - min(ys), 280 - margin - max(ys))
    return [[(x + cx, y + cy) for x, y in s] for s in placed]


def _serve(run: str, log: Path) -> Tuple[subprocess.Popen, str]:
    process = subprocess.Popen(
        [sys.executable, "-m", "mnist_cli", "serve", f"run={run}", "port=0", "device=cpu"],
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
        env={**os.environ, "CI": "true"},
    )
    end = time.monotonic() + 120
    while time.monotonic() < end and process.poll() is None:
        found = re.search(r"at (http://\S+/) ", log.read_text())
        if found:
            return process, found.group(1)
        time.sleep(0.2)
    process.kill()
    sys.exit(f"mnist serve did not start: {log.read_text()}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", required=True, help="any run to serve the page (its answers are not kept)")
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--per-digit", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--spread", type=float, default=1.0, help="wobble, slant and rotation times this: 2 for messier hands"
    )
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    args = parser.parse_args()
    from playwright.sync_api import expect, sync_playwright

    args.out.mkdir(parents=True, exist_ok=True)
    process, url = _serve(args.run, args.out / "serve.log")
    rng = random.Random(args.seed)
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=args.chromium)
            page = browser.new_context(viewport={"width": 800, "height": 560}, bypass_csp=True).new_page()
            page.goto(url)
            box = page.locator("#pad").bounding_box()
            scale = box["width"] / 280
            for n in range(args.per_digit):
                for digit in range(10):
                    page.click("#clear")
                    for stroke in drawing(digit, rng, args.spread):
                        page.mouse.move(box["x"] + stroke[0][0] * scale, box["y"] + stroke[0][1] * scale)
                        page.mouse.down()
                        for x, y in stroke[1:]:
                            page.mouse.move(box["x"] + x * scale, box["y"] + y * scale)
                        page.mouse.up()
                    expect(page.locator("body")).to_have_attribute("data-pending", "0", timeout=60_000)
                    sent = page.evaluate("document.getElementById('pad').toDataURL('image/png')")
                    folder = args.out / str(digit)
                    folder.mkdir(exist_ok=True)
                    (folder / f"{n:04d}.png").write_bytes(base64.b64decode(sent.split(",", 1)[1]))
            browser.close()
    finally:
        process.terminate()
        process.wait(30)
    print(f"{10 * args.per_digit} drawings in {args.out} (seed {args.seed})")


if __name__ == "__main__":
    main()
