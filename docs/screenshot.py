"""The README's picture of the study page: `accumbench report --format html` on a run database, opened
in headless Chromium (tests/browser.py), the top of the page saved as PNG.

    python docs/screenshot.py --db bench/results/tuned_study.db --out docs/study-page.png
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

import browser  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--db", default="runs.db")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "study-page.png")
    parser.add_argument("--width", type=int, default=1200)
    parser.add_argument("--height", type=int, default=1500)
    args = parser.parse_args()
    if not browser.available():
        raise SystemExit("needs Chromium: apt-get install chromium chromium-driver; pip install selenium")
    with tempfile.TemporaryDirectory() as tmp:
        page = Path(tmp) / "study.html"
        subprocess.run([sys.executable, "-m", "accumbench", "report", "--format", "html", "-o", str(page),
                        "--db", args.db], check=True)
        view = browser.view(page, args.width, args.height)
    if view.errors or not all(image["naturalWidth"] > 0 for image in view.images):
        raise SystemExit(f"the page did not render cleanly: {view.console}")
    args.out.write_bytes(view.screenshot)
    print(f"wrote {args.out} ({len(view.screenshot) // 1024} KB, {len(view.images)} figures)")


if __name__ == "__main__":
    main()
