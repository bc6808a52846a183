"""Summaries of a sweep: mean ± sd over seeds, the Markdown table and the drop-vs-strength plot."""

from __future__ import annotations

import math

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from isnet.evaluate.stress.config import StressConfig  # noqa: E402


# -- summaries ----------------------------------------------------------------------------------------
SUMMARY_METRICS = [("clean", "accuracy"), ("aligned", "accuracy"), ("flipped", "accuracy"), ("drop", "accuracy"),
                   ("clean", "macro_auc"), ("flipped", "macro_auc"), ("clean", "bg_share"), ("biased", "bg_share"),
                   ("biased", "bias_share"), ("clean", "target_gap"), ("flipped", "token_shift"),
                   ("flipped", "logit_shift"), ("flipped", "heatmap_shift")]


def summarise(results: pd.DataFrame) -> pd.DataFrame:
    """One row per (method, strength): mean and standard deviation over seeds of the headline metrics."""
    if results.empty:
        return pd.DataFrame()
    df = results.copy()
    df["col"] = df["test_set"] + "." + df["metric"]
    wide = df.pivot_table(index=["method", "strength", "seed"], columns="col", values="value", aggfunc="first")
    cols = [f"{s}.{m}" for s, m in SUMMARY_METRICS if f"{s}.{m}" in wide.columns]
    g = wide[cols].groupby(level=["method", "strength"], sort=False)
    mean, std = g.mean(), g.std(ddof=1)
    out = mean.add_suffix(" mean").join(std.add_suffix(" sd"))
    out["seeds"] = g.size()
    out["seed list"] = wide.reset_index().groupby(["method", "strength"], sort=False)["seed"].apply(
        lambda s: ",".join(str(int(v)) for v in sorted(s)))
    return out.reset_index()


#: a cell hides its shortcut when the heatmap puts less than this share of relevance on the bias ...
HIDDEN_MAX_SHARE = 0.05
#: ... while the bias still costs more than this much accuracy (clean − flipped)
HIDDEN_MIN_DROP = 0.05


def hidden_shortcut(row: pd.Series) -> bool:
    """Whether a summary row is a "hidden shortcut": the model falls for the bias (mean drop over 5 points) but
    its heatmaps show almost none of it (mean share of relevance on the bias under 5 %). A clean heatmap is no
    proof that a shortcut is unused; these cells are where that matters."""
    share, drop = row.get("biased.bias_share mean", math.nan), row.get("drop.accuracy mean", math.nan)
    if share is None or drop is None or math.isnan(share) or math.isnan(drop):
        return False
    return share < HIDDEN_MAX_SHARE and drop > HIDDEN_MIN_DROP


def _pm(row: pd.Series, col: str, scale: float = 1.0, fmt: str = "{:.1f}") -> str:
    m = row.get(f"{col} mean", math.nan)
    s = row.get(f"{col} sd", math.nan)
    if m is None or (isinstance(m, float) and math.isnan(m)):
        return "–"
    text = fmt.format(m * scale)
    if s is not None and not (isinstance(s, float) and math.isnan(s)):
        text += " ± " + fmt.format(s * scale)
    return text


def summary_markdown(summary: pd.DataFrame, cfg: StressConfig) -> str:
    biases = ", ".join(b.spec().label for b in cfg.biases)
    lines = [f"Bias: {biases} on class `{cfg.target_class}`; accuracies in %, drop = clean − flipped accuracy in "
             f"points; mean ± sd over seeds. Token shift: how much the token raises the target class's logit "
             f"margin on the other classes' images; target gap: how far below the winner the target lies without it. "
             f"Logit / heatmap shift: how much the token changes the target class's logit, and the total of its LRP "
             f"heatmap, on the same images; the difference went through relevance LRP gives to no pixel (biases, ε). "
             f"Hidden shortcut: the drop is over {HIDDEN_MIN_DROP * 100:.0f} points while the heatmaps put under "
             f"{HIDDEN_MAX_SHARE:.0%} of their relevance on the bias.",
             "",
             "| method | strength | seeds | clean acc | aligned acc | flipped acc | drop (points) | clean AUC | "
             "flipped AUC | bg share clean | bg share biased | share on bias | target gap | token shift | "
             "logit shift | heatmap shift | hidden shortcut |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for _, r in summary.iterrows():
        lines.append(
            f"| {r['method']} | {r['strength']:g} | {r['seed list']} | {_pm(r, 'clean.accuracy', 100)} | "
            f"{_pm(r, 'aligned.accuracy', 100)} | {_pm(r, 'flipped.accuracy', 100)} | {_pm(r, 'drop.accuracy', 100)} | "
            f"{_pm(r, 'clean.macro_auc', 1, '{:.3f}')} | {_pm(r, 'flipped.macro_auc', 1, '{:.3f}')} | "
            f"{_pm(r, 'clean.bg_share', 1, '{:.2f}')} | {_pm(r, 'biased.bg_share', 1, '{:.2f}')} | "
            f"{_pm(r, 'biased.bias_share', 1, '{:.2f}')} | {_pm(r, 'clean.target_gap', 1, '{:.2f}')} | "
            f"{_pm(r, 'flipped.token_shift', 1, '{:.2f}')} | {_pm(r, 'flipped.logit_shift', 1, '{:.2f}')} | "
            f"{_pm(r, 'flipped.heatmap_shift', 1, '{:.2f}')} | {'**yes**' if hidden_shortcut(r) else 'no'} |")
    return "\n".join(lines) + "\n"


def drop_plot(results: pd.DataFrame):
    """Clean→flipped accuracy drop against correlation strength, one line per method, error bars = sd over seeds."""
    d = results[(results["test_set"] == "drop") & (results["metric"] == "accuracy")]
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for method, g in d.groupby("method", sort=False):
        s = g.groupby("strength")["value"]
        m, sd = s.mean() * 100, s.std(ddof=1).fillna(0) * 100
        ax.errorbar(m.index, m.values, yerr=sd.values, marker="o", capsize=3, label=method)
    ax.axhline(0, color="grey", lw=0.6)
    ax.set_xlabel("bias–class correlation strength")
    ax.set_ylabel("accuracy drop clean → flipped (points)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig
