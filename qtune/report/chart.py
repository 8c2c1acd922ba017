"""``report.png``: one horizontal bar per stage in three panels — perplexity on the eval text,
eval loss on the task, and size on disk (annotated with bits per weight) — with a dashed line at
the reference's value in the first two, so every bar reads as a change from the reference."""

from __future__ import annotations

from pathlib import Path

KIND_COLORS = {"base": "tab:blue", "run": "tab:green", "export": "tab:purple"}


def _delta(x, fmt: str) -> str:
    return "" if x is None or x == 0 else " (" + fmt.format(x) + ")"


def plot_report(report: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = report["rows"]
    names = [r["stage"] for r in rows]
    colors = [KIND_COLORS.get(r["kind"], "tab:gray") for r in rows]
    ppl = [r["perplexity"]["perplexity"] for r in rows]
    loss = [r.get("eval", {}).get("eval_loss") for r in rows]
    size_mb = [r["size_bytes"] / 1e6 for r in rows]
    p0 = rows[0]["perplexity"]

    fig, axes = plt.subplots(1, 3, figsize=(15, 1.6 + 0.55 * len(rows)), dpi=120, sharey=True)
    y = list(range(len(rows)))
    deltas = [r.get("deltas", {}) for r in rows]
    ppl_labels = [f"{v:.2f}" + _delta(d.get("ppl_pct_vs_reference"), "{:+.1f}%") for v, d in zip(ppl, deltas)]
    loss_labels = ["n/a" if v is None else f"{v:.3f}" + _delta(d.get("eval_loss_vs_reference"), "{:+.3f}") for v, d in zip(loss, deltas)]
    panels = [
        (axes[0], ppl, ppl_labels, "perplexity on eval text (lower is better; Δ vs reference)"),
        (axes[1], [v if v is not None else 0.0 for v in loss], loss_labels, "eval loss on the task, nats/token (lower is better)"),
        (axes[2], size_mb, [f"{v:.0f} MB" for v in size_mb], "size on disk, MB"),
    ]
    for ax, values, labels, xlabel in panels:
        ax.barh(y, values, color=colors)
        ax.set_xlabel(xlabel)
        ax.grid(axis="x", alpha=0.3)
        hi = max(values) if values else 1.0
        ax.set_xlim(0, hi * 1.35 if hi > 0 else 1.0)
        for i, (v, label) in enumerate(zip(values, labels)):
            ax.text(v, i, " " + label, va="center", fontsize=8)
    for ax, values in ((axes[0], ppl), (axes[1], loss)):
        if values[0] is not None and rows[0]["stage"].startswith("reference"):
            ax.axvline(values[0], color="black", linestyle="--", linewidth=1, label="reference")
            ax.legend(loc="lower right", fontsize=8)
    # bits per weight beside the size
    for i, r in enumerate(rows):
        bits = r.get("bits_per_weight")
        if bits is not None:
            axes[2].text(size_mb[i], i - 0.33, f" {bits:.2f} bits/weight", va="center", fontsize=7, color="dimgray")
    axes[0].set_yticks(y, names)
    axes[0].invert_yaxis()
    fig.suptitle(
        f"{Path(report['run']).name}: {report['base']} on {report['device']} — perplexity over {p0['text_tokens']} tokens "
        f"(window {p0['window']}, stride {p0['stride']})",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(out, format="png")
    plt.close(fig)
