"""Markdown tables for docs/notes/generalisation-log.md from the reports of scripts/generalisation.sh.

    python scripts/generalisation_table.py runs/generalisation/seed0 runs/generalisation/seed1 ...

Each folder holds report.json and runs.tsv (name, run id). Prints, per seed, each method's external macro AUC,
balanced accuracy and ECE per external site (95 % bootstrap CIs), its background share, and the paired
difference of macro AUC against the standard model with its CI; then a summary across seeds.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path


def _fmt(v: float, ci: list | None = None, nd: int = 3) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "—"
    s = f"{v:.{nd}f}"
    if ci and all(c is not None and not math.isnan(c) for c in ci):
        s += f" [{ci[0]:.{nd}f}, {ci[1]:.{nd}f}]"
    return s


def load(folder: Path) -> tuple[dict, dict[str, str]]:
    report = json.loads((folder / "report.json").read_text())
    names = dict(line.split("\t") for line in (folder / "runs.tsv").read_text().splitlines() if line.strip())
    by_run = {run_id: name for name, run_id in names.items()}
    label = {m["name"]: by_run.get(m["run_id"], m["name"]) for m in report["methods"]}
    return report, label


def seed_tables(folder: Path) -> tuple[str, dict]:
    report, label = load(folder)
    groups = report["groups"]
    lines = [f"#### {folder.name}", "",
             "| method | group | macro AUC [95 % CI] | balanced acc. | ECE | bg share | ΔAUC vs standard [95 % CI] |",
             "|---|---|---|---|---|---|---|"]
    std = next((k for k, v in label.items() if v == "standard"), None)
    paired = {(p["a"], p["b"], p["group"], p["metric"]): p for p in report["paired"]}
    summary: dict = {}
    for name, nice in label.items():
        for g in groups:
            e = report["metrics"][name][g]
            v, ci = e["values"], e["ci"]
            diff = ""
            if std is not None and name != std:
                p = paired.get((name, std, g, "macro_auc"))
                sign = 1
                if p is None:
                    p, sign = paired.get((std, name, g, "macro_auc")), -1
                if p is not None and not math.isnan(p["difference"]):
                    lo, hi = sorted((sign * p["ci_low"], sign * p["ci_high"]))
                    diff = f"{sign * p['difference']:+.3f} [{lo:+.3f}, {hi:+.3f}]"
                    summary.setdefault(nice, {})[g] = (sign * p["difference"], lo, hi)
            lines.append(f"| {nice} | {g} | {_fmt(v['macro_auc'], ci['macro_auc'])} | "
                         f"{_fmt(v['balanced_accuracy'], ci['balanced_accuracy'])} | {_fmt(v['ece'])} | "
                         f"{_fmt(v.get('bg_share_mean'), nd=2)} | {diff} |")
    return "\n".join(lines) + "\n", summary


def main(folders: list[str]) -> None:
    summaries = {}
    for f in folders:
        text, summary = seed_tables(Path(f))
        print(text)
        summaries[Path(f).name] = summary
    methods = sorted({m for s in summaries.values() for m in s})
    print("#### Across seeds: external macro AUC minus the standard model's (overall), CI above 0?\n")
    print("| method | " + " | ".join(summaries) + " | seeds with CI > 0 |")
    print("|---|" + "---|" * (len(summaries) + 1))
    for m in methods:
        cells, wins = [], 0
        for s in summaries.values():
            d = s.get(m, {}).get("overall")
            if d is None:
                cells.append("—")
                continue
            cells.append(f"{d[0]:+.3f} [{d[1]:+.3f}, {d[2]:+.3f}]")
            wins += d[1] > 0
        print(f"| {m} | " + " | ".join(cells) + f" | {wins} of {sum(c != '—' for c in cells)} |")


if __name__ == "__main__":
    main(sys.argv[1:])
