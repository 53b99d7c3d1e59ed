"""Writes the model download entries (harness/model_catalog.py) into every template in
example_workflows/: properties.models on each loader node, the workflow-level models list for
alias widget values (taesd). Idempotent; the generated templates get them from their generators
too. Run: .venv/bin/python tools/stamp_template_models.py"""
from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from harness.model_catalog import stamp_models  # noqa: E402


def main() -> None:
    for path in sorted((ROOT / "example_workflows").glob("*.json")):
        text = path.read_text()
        new = json.dumps(stamp_models(json.loads(text)), indent=1) + "\n"
        if new != text:
            path.write_text(new)
            print(f"stamped {path.name}")


if __name__ == "__main__":
    main()
