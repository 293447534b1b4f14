"""The token budget of a FLOP-matched arm (S_F, setting 3), written before it trains.

    python -m pvs.train.budget --pruned results/models/pruned/flap/r0.5 --parent-tokens 800k --budget 200k
    python -m pvs.train.budget --pruned DIR --parent-tokens 800k --budget 200k --out setting3.json

The tokens are ceil(FLOPs of the whole P-R_N pipeline / (6 N_child)), from the pruned child's meta.json
(``pvs.compute`` states the convention); the trainer reads them with ``--tokens-from``.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

from pvs.budget import format_tokens, parse_tokens
from pvs.cli import doc_parser
from pvs.compute import setting3_record


def main(argv: list[str] | None = None) -> int:
    parser = doc_parser("python -m pvs.train.budget", __doc__)
    parser.add_argument("--pruned", required=True, help="one-shot pruned model directory (has meta.json)")
    parser.add_argument("--parent-tokens", required=True, help="the parent's pretraining tokens P, e.g. 800k")
    parser.add_argument("--budget", required=True, help="the retraining budget N of the matched P-R_N, e.g. 200k")
    parser.add_argument("--out", help="write the record as JSON here (default: print it)")
    args = parser.parse_args(argv)
    try:
        record = setting3_record(args.pruned, parse_tokens(args.parent_tokens), parse_tokens(args.budget))
    except (FileNotFoundError, KeyError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    text = json.dumps(record, indent=2) + "\n"
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text)
    print(text if not args.out else f"setting 3: {format_tokens(record['tokens'])} tokens -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
