"""Recall@k curves as a PNG: one panel per direction, one line per model (matplotlib, Agg)."""

from __future__ import annotations

from pathlib import Path

from retrieval.errors import RetrievalError

DIRECTIONS = (("text_to_image", "text → image"), ("image_to_text", "image → text"))


def plot_recall(report: dict, path: str | Path) -> Path:
    """Draw recall@k against k for both directions and every model of an evaluation report.

    `report` is ``EvalReport.as_dict()``. Exact search is a solid line over every k up to
    the largest asked, with a dot at each asked k; through-index figures, when present, are
    rings at the asked ks (a ring around a dot: the index agrees with exact search).

    >>> plot_recall(evaluate(ds, ["default"]).as_dict(), "recall.png")   # doctest: +SKIP
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from retrieval.evaluation.evaluate import short_names

    path = Path(path).expanduser()
    ks = report["settings"]["ks"]
    names = short_names([m["model"] for m in report["models"]])
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.6), sharey=True, layout="constrained")
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, (key, title) in zip(axes, DIRECTIONS, strict=True):
        for n, (model, name) in enumerate(zip(report["models"], names, strict=True)):
            color = colors[n % len(colors)]
            curve = [100 * v for v in model["curves"][key]]
            xs = list(range(1, len(curve) + 1))
            ax.plot(xs, curve, color=color, lw=2, label=f"{name}: exact")
            ax.plot(ks, [curve[k - 1] for k in ks], "o", color=color, ms=5)
            indexed = (model.get("through_index") or {}).get(key)
            if indexed:
                # Rings only at the asked ks (the index is searched for max(ks) results, not a curve):
                # a ring around a dot means the index found what exact search found.
                ax.plot(ks, [100 * indexed[f"R@{k}"] for k in ks], "o", color=color, mfc="none", ms=11, mew=1.5,
                        label=f"{name}: through the index ({indexed['index']})")
            for k in ks:
                ax.annotate(f"{curve[k - 1]:.1f}", (k, curve[k - 1]), textcoords="offset points",
                            xytext=(0, 8), ha="center", fontsize=8, color=color)
        ax.set_title(title)
        ax.set_xlabel("k")
        ax.set_xticks(sorted(set([1, *ks])))
        ax.set_xlim(0.5, max(ks) + 0.5)
        ax.set_ylim(0, 109)
        ax.set_yticks(range(0, 101, 20))
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("recall@k (%)")
    handles, labels = axes[0].get_legend_handles_labels()
    # Below the panels, so it never hides a curve.
    fig.legend(handles, labels, loc="outside lower center", ncol=min(len(labels), 2), fontsize=8, frameon=False)
    data = report["dataset"]
    shared = ", shared captions grouped" if data.get("shared_captions") else ""
    fig.suptitle(
        f"{data['name']}" + (f" ({data['split']})" if data.get('split') else "") + f": {data['images']:,} images, "
        f"{data['captions']:,} captions{shared}"
    )
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=110)
    except OSError as exc:
        raise RetrievalError(f"cannot write plot {path}: {exc.strerror or exc}") from None
    finally:
        plt.close(fig)
    return path
