"""Choose the learning rates of the LR sweep (pvs.sweep): per key, the LR with the lowest dev loss.

    python -m pvs.train.lr_choose pick --key retrain.width --metrics lr/sweep/retrain/flap/r0.5/lr*.json \\
        --out results/lr/chosen/retrain.width.json
    python -m pvs.train.lr_choose table --config CONFIG --chosen results/lr/chosen/*.json --out results

``pick`` reads the sweep runs' metrics (``python -m pvs.train --eval-split dev --eval-out``) of one key and
writes its chosen file: ``{"key", "lr", "source": "sweep", "dev_loss", "losses": {lr: dev loss}, "runs"}``.
The lowest dev loss wins; ties (and non-finite losses, which lose) go to the smaller LR, so the choice is
deterministic. A choice at the smallest or largest swept LR is marked ``"at_edge": "lowest" | "highest"``
(the best LR may lie outside the sweep: widen ``train.lr_sweep``), warned on stderr and flagged in the table.
``table`` writes ``lr/chosen.json`` (every key of the study: lr, source sweep | fixed |
train.lr, the losses per LR), ``lr/sweep.csv`` and ``lr/sweep.md`` (dev loss against LR per key).
"""
from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

from pvs.cli import doc_parser, guarded
from pvs.config import ConfigError, load_config
from pvs.jsonio import write_json
from pvs.sweep import CHOSEN_JSON, SWEEP_CSV, SWEEP_MD, Sweep, format_lr, pick


def sweep_edge(lr: float, lrs: list[float]) -> str | None:
    """'lowest' / 'highest' when ``lr`` is the smallest / largest of three or more swept LRs, else None."""
    if len(lrs) < 3:
        return None
    return "lowest" if lr == min(lrs) else "highest" if lr == max(lrs) else None


def choose(key: str, metrics: list[dict], paths: list[str] | None = None) -> dict:
    """The chosen file of ``key`` from its sweep runs' metrics."""
    best = pick(metrics)
    runs = sorted(zip(metrics, paths or [None] * len(metrics)), key=lambda mp: mp[0]["lr"])
    return {"key": key, "lr": best["lr"], "source": "sweep", "dev_loss": best["dev_loss"],
            "at_edge": sweep_edge(best["lr"], [m["lr"] for m in metrics]),
            "losses": {format_lr(m["lr"]): m["dev_loss"] for m, _ in runs},
            "tokens": best.get("tokens"), "arm": best.get("arm"), "init": best.get("init"),
            "rule": "lowest dev loss; ties -> the smaller LR",
            "runs": [{"lr": m["lr"], "dev_loss": m["dev_loss"], "metrics": p} for m, p in runs]}


def table(cfg: dict, chosen_files: list[str]) -> dict:
    """lr/chosen.json's content: every key of the study with its LR and where it comes from."""
    sweep = Sweep.from_config(cfg)
    chosen = {}
    for path in chosen_files:
        record = json.loads(Path(path).read_text())
        chosen[record["key"]] = record
    keys = {}
    for key in sweep.keys:
        source = sweep.source(key)
        if source == "sweep":
            if key not in chosen:
                raise ValueError(f"key {key} is swept but no chosen file for it was given (--chosen)")
            record = chosen[key]
            keys[key] = {"lr": record["lr"], "source": "sweep", "dev_loss": record["dev_loss"],
                         "at_edge": record.get("at_edge"), "losses": record["losses"], "tokens": record.get("tokens"), "init": record.get("init")}
        else:
            keys[key] = {"lr": sweep.lr_param(key), "source": source, "losses": {}}
    return {"study": cfg["study"], "lr_sweep": list(sweep.lrs), "rule": "lowest dev loss; ties -> the smaller LR",
            "note": "scratch.<granularity> applies to every from-scratch arm of it: S_N, S_{P+N}, S_F",
            "keys": keys}


def write_table(content: dict, out: Path) -> None:
    write_json(out / CHOSEN_JSON, content)
    lrs = [format_lr(x) for x in content["lr_sweep"]]
    rows = []
    for key, entry in content["keys"].items():
        for lr in (lrs if entry["source"] == "sweep" else []):
            loss = entry["losses"].get(lr)
            rows.append({"key": key, "lr": lr, "dev_loss": loss, "chosen": float(lr) == float(entry["lr"])})
    with open(out / SWEEP_CSV, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["key", "lr", "dev_loss", "chosen"])
        writer.writeheader()
        writer.writerows(rows)
    lines = ["# Learning-rate sweep: final dev loss against peak LR", "",
             "Lowest dev loss per key in **bold** (ties: the smaller LR); keys not swept show their LR's source.",
             "A † marks a choice at the edge of the sweep: the best LR may lie beyond it (widen train.lr_sweep).",
             "", "| key | source | LR | " + " | ".join(f"lr {lr}" for lr in lrs) + " |",
             "|---|---|---|" + "---|" * len(lrs)]
    for key, entry in content["keys"].items():
        cells = []
        for lr in lrs:
            loss = entry["losses"].get(lr)
            text = "–" if loss is None else f"{loss:.4f}"
            cells.append(f"**{text}**" if loss is not None and float(lr) == float(entry["lr"]) else text)
        edge = " †" if entry.get("at_edge") else ""
        lines.append(f"| {key} | {entry['source']} | {format_lr(entry['lr'])}{edge} | " + " | ".join(cells) + " |")
    (out / SWEEP_MD).write_text("\n".join(lines) + "\n")


def _pick(args) -> int:
    metrics = [json.loads(Path(p).read_text()) for p in args.metrics]
    record = choose(args.key, metrics, list(args.metrics))
    write_json(Path(args.out), record)
    print(f"[lr_choose] {args.key}: lr {format_lr(record['lr'])} (dev loss {record['dev_loss']:.4f})", file=sys.stderr)
    if record["at_edge"]:
        print(f"[lr_choose] warning: {args.key} chose the {record['at_edge']} swept LR; the best LR may lie outside "
              "train.lr_sweep (widen it)", file=sys.stderr)
    return 0


def _table(args) -> int:
    content = table(load_config(args.config), list(args.chosen))
    write_table(content, Path(args.out))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = doc_parser("python -m pvs.train.lr_choose", __doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("pick", help="one key's chosen file from its sweep runs' metrics")
    p.add_argument("--key", required=True, help="the LR key: parent, retrain.<granularity>, scratch.<granularity>")
    p.add_argument("--metrics", nargs="+", required=True, help="the sweep runs' metrics JSONs (--eval-out)")
    p.add_argument("--out", required=True, help="the chosen file, results/lr/chosen/<key>.json")
    t = sub.add_parser("table", help="lr/chosen.json, lr/sweep.csv and lr/sweep.md from the chosen files")
    t.add_argument("--config", required=True, help="study config (YAML)")
    t.add_argument("--chosen", nargs="*", default=[], help="the chosen files of the swept keys")
    t.add_argument("--out", required=True, help="results_dir (writes lr/chosen.json, lr/sweep.csv, lr/sweep.md)")
    args = parser.parse_args(argv)
    return guarded("python -m pvs.train.lr_choose", (ValueError, KeyError, OSError, ConfigError),
                   _pick if args.command == "pick" else _table, args)


if __name__ == "__main__":
    sys.exit(main())
