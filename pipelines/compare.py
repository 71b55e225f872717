"""Compare anytime metrics of finished runs:
python pipelines/compare.py RUN_A RUN_B ... [--score macro_f1] [--json] [--figure out.png]."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

try:
    import components  # noqa: F401
except ImportError:  # run as a script from a checkout that is not installed
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from components.errors import InputError  # noqa: E402
from components.eval.compare import compare_runs, format_comparison, write_comparison_figure  # noqa: E402
from components.eval.matrix import ALL_SCORES  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    """Print the comparison table (or JSON); exit code 2 with a one-line error on bad input."""
    parser = argparse.ArgumentParser(description="Compare anytime metrics (anytime.json) of several runs.")
    parser.add_argument("run_dirs", nargs="+", type=Path, help="run directories holding anytime.json")
    parser.add_argument("--labels", help="comma-separated run labels (default: directory names)")
    parser.add_argument("--score", choices=ALL_SCORES, default="accuracy", help="which score's metrics")
    parser.add_argument("--json", action="store_true", help="print machine-readable JSON")
    parser.add_argument("--figure", type=Path, metavar="PNG",
                        help="also write a side-by-side figure (anytime matrices + metric bars) to this file")
    args = parser.parse_args(argv)
    labels = args.labels.split(",") if args.labels else None
    try:
        result = compare_runs(args.run_dirs, labels=labels, score=args.score)
        figure = write_comparison_figure(result, args.figure) if args.figure else None
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(result, indent=2) if args.json else format_comparison(result))
    if figure is not None and not args.json:
        print(f"figure: {figure}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
