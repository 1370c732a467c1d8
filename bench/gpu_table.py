"""One markdown table of what `bench/gpu.sh` measured: every number each script's JSON
reports at its top level (ratios, speed-ups, peaks, matching rows), and its rows.

    python bench/gpu_table.py bench/gpu/
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

SKIP = ("args", "env", "environment")


def flatten(prefix: str, value: Any) -> list[tuple[str, Any]]:
    """(dotted key, value) for each number, string or flag under `value`."""
    if isinstance(value, dict):
        return [item for k, v in value.items() for item in flatten(f"{prefix}.{k}", v)]
    if isinstance(value, list):
        return [item for i, v in enumerate(value) for item in flatten(f"{prefix}[{i}]", v)]
    return [(prefix, value)]


def main() -> None:
    folder = Path(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).parent / "gpu")
    print("| script | measure | value |\n|---|---|---|")
    for path in sorted(folder.glob("*.json")):
        payload = json.loads(path.read_text())
        device = (payload.get("env") or payload.get("environment") or {}).get("device", "?")
        print(f"| {path.stem} | device | {device} |")
        for key, value in payload.items():
            if key in SKIP:
                continue
            for name, v in flatten(key, value):
                shown = f"{v:.4g}" if isinstance(v, float) else v
                print(f"| {path.stem} | {name} | {shown} |")


if __name__ == "__main__":
    main()
