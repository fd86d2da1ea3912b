"""Screenshot a report page in headless Chromium (Debian's ``chromium``), checking its console.

    python benchmarks/screenshot.py docs/results/parrot/report.html docs/results/parrot/report.png --height 3000

Exits 1 if Chromium logs a console error or an uncaught exception while loading the page.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--hide-scrollbars",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--enable-logging=stderr", "--v=0",
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("page")
    parser.add_argument("png")
    parser.add_argument("--width", type=int, default=1400)
    parser.add_argument("--height", type=int, default=3000)
    args = parser.parse_args()
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        sys.exit("chromium not found (apt-get install chromium)")
    page = Path(args.page).resolve()
    with tempfile.TemporaryDirectory() as profile:
        proc = subprocess.run(
            [chromium, *FLAGS, f"--user-data-dir={profile}", f"--screenshot={Path(args.png).resolve()}",
             f"--window-size={args.width},{args.height}", page.as_uri()],
            capture_output=True, text=True, timeout=180,
        )
    errors = [line for line in proc.stderr.splitlines() if "CONSOLE" in line or "Uncaught" in line]
    print(f"{args.png}: exit {proc.returncode}, {len(errors)} console errors")
    for line in errors:
        print(line)
    sys.exit(1 if errors or proc.returncode else 0)


if __name__ == "__main__":
    main()
