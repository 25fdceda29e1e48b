"""The report's figures, drawn with matplotlib's Agg backend from the labelled results (no data access), and
:data:`FIGURES`, the registry that declares each figure of the page once (data, plot, section, caption).

Each function returns a matplotlib Figure; :func:`encode` gives its PNG (and SVG for line and box figures, where
a vector file is small and useful for papers) and closes it. :func:`filtershift.report.build.draw` draws every
registered figure that applies, in worker processes (:mod:`filtershift.report.render`);
:func:`filtershift.report.html.run_page` shows each in its section.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import matplotlib

matplotlib.use("Agg", force=False)

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.colors import LogNorm

DIVERGING = "RdBu_r"
SEQUENTIAL = "viridis"
SMALL_COLOUR = "#b0413e"

plt.rcParams.update({"font.size": 9, "axes.titlesize": 10, "axes.spines.top": False, "axes.spines.right": False,
                     "svg.hashsalt": "filtershift", "figure.max_open_warning": 0})


def encode(fig, formats, *, vector: bool = True, dpi: int = 110) -> dict:
    """``fig`` as {format: file bytes}: PNG (and SVG when asked and ``vector``); closes the figure.

    The figures lay themselves out with fixed margins computed from their labels (:func:`text_width`), so one draw
    per file is enough. Should a figure still reach outside its canvas (:func:`overflow`, measured on the PNG's
    draw, whose text layout is cached), it is saved again cropped to its tight box, and so are its other formats."""
    import io

    fig.set_dpi(dpi)
    out = {}
    bbox = None
    for fmt in formats:
        if fmt == "svg" and not vector:
            continue
        buf = io.BytesIO()
        kwargs = {"dpi": dpi} if fmt == "png" else {"metadata": {"Date": None}}
        fig.savefig(buf, format=fmt, bbox_inches=bbox, **kwargs)
        if bbox is None and overflow(fig) > 0.5 / dpi:      # more than half a pixel
            bbox = _tight(fig)
            buf = io.BytesIO()
            fig.savefig(buf, format=fmt, bbox_inches=bbox, **kwargs)
        out[fmt] = buf.getvalue()
    plt.close(fig)
    return out


def overflow(fig) -> float:
    """How far (inches, 0 if not at all) the drawn parts of ``fig`` reach outside its canvas (text layout is
    cached by matplotlib, so after a draw this costs little)."""
    box = fig.get_tightbbox(fig.canvas.get_renderer())
    w, h = fig.get_size_inches()
    return max(0.0, -box.x0, -box.y0, box.x1 - w, box.y1 - h)


def _tight(fig):
    import matplotlib as mpl

    return fig.get_tightbbox(fig.canvas.get_renderer()).padded(mpl.rcParams["savefig.pad_inches"])


def text_width(texts, size: float = 9.0) -> float:
    """The width in inches of the widest of ``texts`` at font ``size`` (matplotlib's own text metrics, without
    drawing anything), so that a figure's margins fit its labels before it is drawn."""
    from matplotlib.font_manager import FontProperties
    from matplotlib.textpath import text_to_path

    prop = FontProperties(size=size)
    widths = [text_to_path.get_text_width_height_descent(str(t), prop, ismath=False)[0] for t in texts if str(t)]
    return max(widths, default=0.0) / 72.0


#: Inches taken by a tick (length and pad) and by one line of text of the default size with its pad.
TICK = 0.11
LINE = 0.24


def _axes(fig, x: float, y: float, w: float, h: float):
    """An axes at (x, y) with size (w, h), all in inches from the figure's lower left corner."""
    fw, fh = fig.get_size_inches()
    return fig.add_axes((x / fw, y / fh, w / fw, h / fh))


def _colorbar(fig, im, x: float, y: float, h: float, label: str):
    """A colour bar 0.14 in wide at (x, y) inches, ``h`` high, with its label."""
    cax = _axes(fig, x, y, 0.14, h)
    return fig.colorbar(im, cax=cax, label=label)


def _frame(width: float, height: float, left: float, bottom: float, right: float = 0.2, top: float = 0.2):
    """A figure whose one axes is ``width`` x ``height`` inches with the given margins (inches) around it."""
    fig = plt.figure(figsize=(left + width + right, bottom + height + top))
    return fig, _axes(fig, left, bottom, width, height)


#: Inches right of a colour bar's left edge taken by the bar, its tick labels and its label.
COLORBAR = 0.14 + TICK + 0.5 + LINE


def group_label(label: str, n_models: int, n_filters: int, small: bool, width: int = 28) -> str:
    """A tick label with the group size; small groups carry a trailing '*'."""
    text = label if len(label) <= width else label[: width - 1] + "…"
    return f"{text} ({n_models}m, {_short(n_filters)}){' *' if small else ''}"


def _short(n: int) -> str:
    n = int(n)
    for div, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if n >= div:
            return f"{n / div:.3g}{suffix}"
    return str(n)


def explained_variance(ratio) -> plt.Figure:
    """Explained variance ratio per component (bars) and its cumulative sum (line)."""
    ratio = np.asarray(ratio, np.float64)
    x = np.arange(len(ratio))
    fig, ax = _frame(4.4, 2.6, left=text_width(["0.00"]) + TICK + LINE + 0.1, bottom=TICK + 2 * LINE, top=0.1)
    ax.bar(x, ratio, color="#4c72b0", label="per component")
    ax.plot(x, np.cumsum(ratio), "o-", color="#dd8452", label="cumulative")
    for xi, c in zip(x, np.cumsum(ratio)):
        ax.annotate(f"{c:.0%}", (xi, c), textcoords="offset points", xytext=(0, 5), ha="center", fontsize=7)
    ax.set_xticks(x)
    ax.set_xlabel("component")
    ax.set_ylabel("explained variance ratio")
    ax.set_ylim(0, 1.1)
    ax.legend(frameon=False, loc="center right")
    return fig


def _kernel(ax, image, vmax, title=None):
    im = ax.imshow(image, cmap=DIVERGING, vmin=-vmax, vmax=vmax)
    ax.set_xticks([])
    ax.set_yticks([])
    for s in ax.spines.values():
        s.set_visible(True)
        s.set_color("#999")
    if title:
        ax.set_title(title, fontsize=8)
    return im


def eigenimages(components, ratio, n: int = 9) -> plt.Figure:
    """The first ``n`` components as 3x3 images on one symmetric diverging scale."""
    comps = np.asarray(components, np.float64)[:n].reshape(-1, 3, 3)
    vmax = float(np.nanmax(np.abs(comps))) or 1.0
    fig, axes = plt.subplots(1, len(comps), figsize=(1.05 * len(comps) + 0.8, 1.6), squeeze=False)
    for j, ax in enumerate(axes[0]):
        im = _kernel(ax, comps[j], vmax, f"c{j} ({ratio[j]:.0%})")
    fig.colorbar(im, ax=list(axes[0]), fraction=0.02, pad=0.02)
    return fig


def covariance(cov) -> plt.Figure:
    """The 9 x 9 covariance of the scaled filters (k = 3y + x) on a symmetric diverging scale."""
    cov = np.asarray(cov, np.float64)
    vmax = float(np.nanmax(np.abs(cov))) or 1.0
    margin = text_width(["0,0"], 7) + TICK + 0.1
    fig, ax = _frame(2.6, 2.6, left=margin, bottom=margin + LINE, right=0.15 + COLORBAR, top=0.1)
    im = ax.imshow(cov, cmap=DIVERGING, vmin=-vmax, vmax=vmax)
    ticks = [f"{k // 3},{k % 3}" for k in range(9)]
    ax.set_xticks(range(9), ticks, fontsize=7, rotation=90)
    ax.set_yticks(range(9), ticks, fontsize=7)
    ax.set_xlabel("kernel position (y,x)")
    _colorbar(fig, im, margin + 2.6 + 0.15, margin + LINE, 2.6, "")
    return fig


def group_eigenimages(bases, alignment, n: int = 9) -> plt.Figure:
    """Rows of eigenimages, one per group (the same PCA fitted on each group's filters), each group's components
    matched to the global ones (``alignment``: column j shows the group's component of largest |cosine| with
    global component j, signed to a positive cosine), one mosaic on one symmetric diverging scale. Under each image
    the group's explained variance share of that component and the cosine; near-tied components (eigenvalues
    within ``alignment["rtol"]``) are marked with "~" in red. Groups without a basis stay blank."""
    labels = [str(g) for g in bases["group"].values]
    comps = np.asarray(alignment["aligned"])[:, :n].reshape(len(labels), -1, 3, 3)
    valid = bases["valid"].values
    rows = len(labels)
    mosaic = np.full((rows * 5 - 1, n * 4 - 1), np.nan)     # a blank row under the last texts
    for i in range(rows):
        for j in range(n):
            if valid[i]:
                mosaic[5 * i:5 * i + 3, 4 * j:4 * j + 3] = comps[i, j]
    vmax = float(np.nanmax(np.abs(mosaic))) if np.isfinite(mosaic).any() else 1.0
    fig, ax = plt.subplots(figsize=(0.75 * n + 3.2, 0.95 * rows + 0.8))
    cmap = plt.get_cmap(DIVERGING).with_extremes(bad="white")
    im = ax.imshow(np.ma.masked_invalid(mosaic), cmap=cmap, vmin=-vmax, vmax=vmax, interpolation="nearest")
    for i in np.flatnonzero(valid):
        for j in range(n):
            tied = bool(alignment["tied"][i, j])
            ax.text(4 * j + 1, 5 * i + 2.6, f"{alignment['ratio'][i, j]:.0%} {alignment['cosines'][i, j]:.2f}"
                    + (" ~" if tied else ""), ha="center", va="top", fontsize=6,
                    color=SMALL_COLOUR if tied else "#333")
    ax.set_xticks([4 * j + 1 for j in range(n)], [f"c{j}" for j in range(n)])
    ax.xaxis.tick_top()
    ticks = [group_label(lab, int(bases["n_models"][i]), int(bases["n_filters"][i]), bool(bases["small"][i]))
             for i, lab in enumerate(labels)]
    ax.set_yticks([5 * i + 1 for i in range(rows)], ticks, fontsize=7)
    for t, small in zip(ax.get_yticklabels(), bases["small"].values):
        if small:
            t.set_color(SMALL_COLOUR)
    ax.tick_params(length=0)
    for s in ax.spines.values():
        s.set_visible(False)
    fig.colorbar(im, ax=ax, fraction=0.02, pad=0.02)
    return fig


def ridges(kde, order, small, components) -> plt.Figure:
    """Ridge plot: per component (column) one density curve per group (row), groups in ``order``; one figure of
    small multiples (narrower panels when more than three components are drawn)."""
    comps = list(components)
    x = kde["x"].values
    labels = [str(g) for g in kde["group"].values]
    rows = len(order)
    names = [labels[g] + (" *" if small[g] else "") for g in order[::-1]]
    width, gap = (2.3, 0.2) if len(comps) <= 3 else (1.3, 0.12)
    left, bottom, height = text_width(names, 7) + TICK + 0.1, TICK + 2 * LINE, 0.32 * rows + 0.4
    fig = plt.figure(figsize=(left + len(comps) * (width + gap), bottom + height + LINE + 0.1))
    axes = np.empty((1, len(comps)), object)
    for k in range(len(comps)):
        axes[0, k] = _axes(fig, left + k * (width + gap), bottom, width, height)
        if k:
            axes[0, k].sharey(axes[0, 0])
            axes[0, k].tick_params(axis="y", left=False, labelleft=False)
    from matplotlib.collections import LineCollection, PolyCollection

    colours = plt.cm.viridis(np.linspace(0.1, 0.9, max(rows, 1)))
    for c, ax in zip(comps, axes[0]):
        dens = kde.sel(component=c).values
        peak = np.nanmax(dens) if np.isfinite(dens).any() else 1.0
        drawn = [(r, r + np.nan_to_num(dens[g] / peak * 1.8)) for r, g in enumerate(order[::-1])
                 if np.isfinite(dens[g]).any()]
        # one collection of fills and one of outlines per panel (not two artists per curve): cheap at 9 x 40
        ax.add_collection(PolyCollection([np.r_[np.c_[x, y], np.c_[x[::-1], np.full_like(x, r)]] for r, y in drawn],
                                         facecolors=[colours[r] for r, _ in drawn], alpha=0.75, linewidths=0))
        ax.add_collection(LineCollection([np.c_[x, y] for _, y in drawn], colors="k", linewidths=0.4))
        ax.set_xlim(x[0], x[-1])
        ax.set_ylim(-0.1, rows + 1.0)
        ax.set_title(f"component {c}" if len(comps) <= 3 else f"c{c}")
        ax.set_xlabel("coefficient")
        if len(comps) > 3:
            ax.tick_params(axis="x", labelsize=7)
            ax.xaxis.set_major_locator(plt.MaxNLocator(4, prune="both"))
        ax.spines["left"].set_visible(False)
    axes[0, 0].set_yticks(range(rows), names, fontsize=7)
    axes[0, 0].tick_params(axis="y", length=0)
    return fig


def _matrix_ticks(labels, n_models, n_filters, small, order) -> list[str]:
    """Row labels of a matrix in ``order``: the position (the column's tick), the group and its size."""
    return [f"{k + 1}. {group_label(labels[g], n_models[g], n_filters[g], small[g])}" for k, g in enumerate(order)]


def _matrix(ax, m, ticks, small_rows, *, norm=None, annotate: bool = False, weak=None, title: str = ""):
    """One drift matrix (already in display order) on ``ax``: rows labelled with ``ticks`` (or none), columns by
    position, missing values blank, ``weak`` pairs hatched; returns the image."""
    n = m.shape[0]
    im = ax.imshow(np.ma.masked_invalid(m), cmap="magma_r", norm=norm, aspect="auto", interpolation="nearest")
    ax.set_xticks(range(n), [str(k + 1) for k in range(n)], fontsize=6)
    ax.set_yticks(range(n), ticks if ticks is not None else [], fontsize=7)
    if ticks is None:
        ax.tick_params(axis="y", length=0)
    for t, small in zip(ax.get_yticklabels(), small_rows):
        if small:
            t.set_color(SMALL_COLOUR)
    if annotate and n <= 16:
        lo, hi = im.norm.vmin, im.norm.vmax
        mid = (lo + hi) / 2 if np.isfinite([lo, hi]).all() else 0
        for i, j in zip(*np.nonzero(np.isfinite(m))):
            ax.text(j, i, f"{m[i, j]:.2g}", ha="center", va="center", fontsize=6,
                    color="white" if m[i, j] > mid else "black")
    if weak is not None and np.any(weak):
        from matplotlib.patches import Rectangle

        for i, j in zip(*np.nonzero(weak)):
            ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, hatch="////", edgecolor="0.55",
                                   linewidth=0))
    if title:
        ax.set_title(title)
    return im


def _side(n: int) -> float:
    """Inches of a matrix panel of ``n`` groups."""
    return min(max(0.26 * n, 2.2), 11.0)


def heatmap(matrix, labels, n_models, n_filters, small, order, *, title: str, metric: str, unit: str = "",
            annotate: bool = True, weak=None) -> plt.Figure:
    """A drift matrix in ``order``: rows labelled with the position, group and size (small groups '*' and red),
    columns by position; ``weak`` (bool, same shape) hatches the pairs the permutation test does not call
    significant. Margins are computed from the labels, so the figure needs no tight-box pass."""
    m = np.asarray(matrix, np.float64)[np.ix_(order, order)]
    ticks = _matrix_ticks(labels, n_models, n_filters, small, order)
    side = _side(len(order))
    left = text_width(ticks, 7) + TICK + 0.1
    bottom = TICK + 0.2
    top = LINE + 0.1
    fig = plt.figure(figsize=(left + side + 0.15 + COLORBAR, bottom + side + top))
    ax = _axes(fig, left, bottom, side, side)
    w = None if weak is None else np.asarray(weak, bool)[np.ix_(order, order)]
    im = _matrix(ax, m, ticks, [small[g] for g in order], annotate=annotate, weak=w, title=title)
    _colorbar(fig, im, left + side + 0.15, bottom, side, f"{metric} ({unit})" if unit else metric)
    return fig


def metric_panels(panels, labels, n_models, n_filters, small, order, *, title: str) -> plt.Figure:
    """Further metrics' drift matrices of one grouping side by side in one ``order``, each on its own scale with
    its colour bar; ``panels``: [(metric, unit, matrix)]. Rows are labelled on the first panel only."""
    ticks = _matrix_ticks(labels, n_models, n_filters, small, order)
    side = _side(len(order))
    left = text_width(ticks, 7) + TICK + 0.1
    bottom, top, gap = TICK + 0.2, LINE + 0.35, 0.15 + COLORBAR + 0.2
    fig = plt.figure(figsize=(left + len(panels) * (side + gap), bottom + side + top))
    for k, (metric, unit, matrix) in enumerate(panels):
        x = left + k * (side + gap)
        ax = _axes(fig, x, bottom, side, side)
        m = np.asarray(matrix, np.float64)[np.ix_(order, order)]
        im = _matrix(ax, m, ticks if k == 0 else None, [small[g] for g in order], title=metric)
        _colorbar(fig, im, x + side + 0.15, bottom, side, unit)
    fig.text(0.1 / fig.get_size_inches()[0], 1 - 0.08 / fig.get_size_inches()[1], title, va="top", fontsize=10)
    return fig


def key_figure(panels, *, metric: str, unit: str, vmin: float, vmax: float) -> plt.Figure:
    """The report's key figure (the CNN-Filter-DB paper's): the drift matrices of several groupings side by side on
    ONE colour scale (``vmin``..``vmax``, one colour bar), then a box plot per grouping of its pairwise drifts
    (upper triangle; the mean as a white diamond) on the same axis range, so the groupings compare at a glance.

    ``panels``: [{name, matrix (display order), ticks, small, weak}]."""
    from matplotlib.colors import Normalize

    norm = Normalize(vmin=vmin, vmax=vmax)
    sides = [_side(len(p["ticks"])) for p in panels]
    lefts = [text_width(p["ticks"], 7) + TICK + 0.15 for p in panels]
    height = max(sides)
    names = [p["name"].replace("_", " ") for p in panels]
    bottom, top = max(TICK + 0.3, TICK + 0.5 * text_width(names) + 0.2), LINE + 0.12
    box_w = 0.55 * len(panels) + 0.9
    box_left = text_width(["0.000"], 9) + TICK + LINE + 0.2
    width = sum(lefts) + sum(sides) + box_left + box_w + 0.3 + COLORBAR
    fig = plt.figure(figsize=(width, bottom + height + top))
    x = 0.0
    im = None
    for p, side, left in zip(panels, sides, lefts):
        x += left
        ax = _axes(fig, x, bottom + height - side, side, side)
        im = _matrix(ax, np.asarray(p["matrix"], np.float64), p["ticks"], p["small"], norm=norm, annotate=True,
                     weak=p.get("weak"), title=p["name"].replace("_", " "))
        x += side
    x += box_left
    ax = _axes(fig, x, bottom, box_w, height)
    data = []
    for p in panels:
        m = np.asarray(p["matrix"], np.float64)
        v = m[np.triu_indices(m.shape[0], 1)]
        data.append(v[np.isfinite(v)])
    ax.boxplot(data, tick_labels=names, widths=0.6, showmeans=True,
               meanprops={"marker": "D", "markerfacecolor": "white", "markeredgecolor": "black", "markersize": 4},
               flierprops={"markersize": 2})
    ax.tick_params(axis="x", labelrotation=30)
    for t in ax.get_xticklabels():
        t.set_horizontalalignment("right")
        t.set_rotation_mode("anchor")
    ax.set_ylim(vmin, vmax + 0.04 * (vmax - vmin))
    ax.set_ylabel(f"{metric} ({unit})")
    ax.set_title("pairwise drift")
    _colorbar(fig, im, x + box_w + 0.3, bottom, height, f"{metric} drift ({unit})")
    return fig


def overview(matrix, order, *, title: str, metric: str, max_pixels: int = 600) -> plt.Figure:
    """A large drift matrix as an image in ``order`` (no tick labels), block-averaged to ``max_pixels``."""
    m = np.asarray(matrix, np.float64)[np.ix_(order, order)]
    n = m.shape[0]
    f = max(1, int(np.ceil(n / max_pixels)))
    if f > 1:
        pad = (-n) % f
        m = np.pad(m, ((0, pad), (0, pad)), constant_values=np.nan)
        with np.errstate(all="ignore"):
            m = np.nanmean(m.reshape(m.shape[0] // f, f, m.shape[1] // f, f), axis=(1, 3))
    left = text_width([str(n)]) + TICK + LINE + 0.1
    fig, ax = _frame(4.6, 4.6, left=left, bottom=TICK + 2 * LINE, right=0.15 + COLORBAR, top=LINE + 0.1)
    im = ax.imshow(np.ma.masked_invalid(m), cmap="magma_r", interpolation="nearest", extent=(0, n, n, 0),
                   aspect="auto")
    ax.set_xlabel("group (clustered order)")
    ax.set_ylabel("group (clustered order)")
    ax.set_title(title)
    _colorbar(fig, im, left + 4.6 + 0.15, TICK + 2 * LINE, 4.6, metric)
    return fig


def boxes(matrix, labels, small, order, *, metric: str, title: str) -> plt.Figure:
    """Per group, the distribution of its drift to every other group (one box each), groups in ``order``."""
    m = np.asarray(matrix, np.float64)
    data, names = [], []
    for g in order:
        row = np.delete(m[g], g)
        data.append(row[np.isfinite(row)])
        names.append(labels[g] + (" *" if small[g] else ""))
    fig, ax = _frame(4.4, 0.3 * len(order) + 0.3, left=text_width(names, 7) + TICK + 0.1, bottom=TICK + 2 * LINE,
                     right=0.3, top=LINE + 0.1)
    ax.boxplot(data, orientation="horizontal", tick_labels=names, showfliers=True, widths=0.6,
               flierprops={"markersize": 2})
    ax.invert_yaxis()
    ax.set_xlabel(f"{metric} drift to the other groups")
    ax.tick_params(axis="y", labelsize=7)
    ax.set_title(title)
    return fig


def intervals(pairs, metrics, *, level: float, title: str, method: str = "basic") -> plt.Figure:
    """Point estimate and bootstrap interval of the drift of each pair, one panel per metric.

    ``pairs``: list of pair labels; ``metrics``: {metric: (drift, lower, upper)} arrays aligned with ``pairs``.
    The interval is drawn as it is (a bias-corrected interval may lie beside the estimate); a pair without one
    (a one-model group) is an open marker.
    """
    n = len(pairs)
    left, width, gap, bottom, height = text_width(pairs, 7) + TICK + 0.1, 2.6, 0.35, TICK + 2 * LINE, 0.24 * n + 0.2
    fig = plt.figure(figsize=(left + len(metrics) * (width + gap), bottom + height + LINE + 0.15))
    y = np.arange(n)
    first = None
    for k, (metric, (d, lo, hi)) in enumerate(metrics.items()):
        ax = _axes(fig, left + k * (width + gap), bottom, width, height)
        if first is None:
            first = ax
            ax.set_yticks(y, pairs, fontsize=7)
            ax.invert_yaxis()
        else:
            ax.sharey(first)
            ax.tick_params(axis="y", labelleft=False)
        d, lo, hi = (np.asarray(v, np.float64) for v in (d, lo, hi))
        has = np.isfinite(lo) & np.isfinite(hi)
        ax.hlines(y[has], lo[has], hi[has], color="#999", lw=1.2)
        ax.plot(d[has], y[has], "o", ms=3, color="#4c72b0")
        ax.plot(d[~has], y[~has], "o", ms=4, mfc="none", color="#4c72b0", label="no interval (one model)")
        ax.set_xlabel(f"{metric} drift")
        if (~has).any():
            ax.legend(fontsize=7, loc="lower right")
    fig.text(0.1 / fig.get_size_inches()[0], 1 - 0.08 / fig.get_size_inches()[1],
             f"{title} ({level:.0%} {method} bootstrap intervals over models)", va="top", fontsize=10)
    return fig


def contributions(pairs, parts, totals, *, metric: str, title: str) -> plt.Figure:
    """Per-component terms of the drift of each pair as grouped bars (one colour per pair, components on x); the
    bars of a pair sum to its drift, given in the legend."""
    parts = np.asarray(parts, np.float64)
    k, n = parts.shape
    x = np.arange(n)
    width = 0.8 / k
    fig, ax = _frame(max(4.4, 0.35 * k * n + 0.6), 2.6, left=text_width(["0.000"]) + TICK + LINE + 0.1,
                     bottom=TICK + 2 * LINE, top=LINE + 0.1)
    for i in range(k):
        ax.bar(x - 0.4 + width * (i + 0.5), parts[i], width, color=plt.cm.tab10(i % 10),
               label=f"{pairs[i]} ({totals[i]:.3g})")
    ax.set_xticks(x, [f"c{j}" for j in x])
    ax.set_xlabel("component")
    ax.set_ylabel(f"{metric} term")
    ax.legend(frameon=False, fontsize=7)
    ax.set_title(title)
    return fig


def density(counts, edges, components=(0, 1), vmin: float = 1e-5, dpi: int = 110) -> plt.Figure:
    """2D histogram of two components' coefficients as the CNN-Filter-DB notebook draws it: ``counts`` (x bin,
    y bin; x = ``components[0]``), divided by their maximum, on a log colour scale from ``vmin`` to 1; empty bins
    and bins under ``vmin`` in the colour of the lowest value. The axes get about one pixel per bin at ``dpi`` (the
    figure between 4.4 and 10 inches high), so that no bin is lost to resampling."""
    c = np.asarray(counts, np.float64)
    peak = c.max()
    h = (c / peak if peak > 0 else c).T
    cmap = plt.get_cmap("inferno").copy()
    cmap.set_under(cmap(0.0))
    cmap.set_bad(cmap(0.0))
    side = min(9.0, max(4.0, c.shape[0] / dpi))            # inches of axes: about one pixel per bin
    left, bottom = text_width(["-3.3"]) + TICK + LINE + 0.1, TICK + 2 * LINE
    fig, ax = _frame(side, side, left=left, bottom=bottom, right=0.15 + COLORBAR, top=0.15)
    im = ax.imshow(h, origin="lower", extent=(edges[0], edges[-1], edges[0], edges[-1]), cmap=cmap,
                   norm=LogNorm(vmin=vmin, vmax=1.0), interpolation="nearest", aspect="auto")
    ax.set_xlabel(f"coefficient of component {components[0]}")
    ax.set_ylabel(f"coefficient of component {components[1]}")
    _colorbar(fig, im, left + side + 0.15, bottom, side, "filters per bin / most in one bin (log)")
    return fig


def quality_panels(table, keys) -> plt.Figure:
    """Per-layer sparsity and normalised variance entropy (box plots) by each grouping column in ``keys``
    (categorical columns of a layer_quality table; groups in category order, empty ones left out)."""
    metrics = [(c, t) for c, t in (("sparsity", "sparsity"), ("variance_entropy_norm", "variance entropy (norm.)"))
               if c in table]
    cats = {}
    for key in keys:
        labels = table[key]
        cats[key] = [c for c in labels.cat.categories if (labels == c).any()] if hasattr(labels, "cat") \
            else sorted(set(labels.astype(str)))
    width, height, left = 2.9, 2.0, text_width(["0.00"]) + TICK + 0.2
    below = TICK + 0.87 * text_width([str(c) for v in cats.values() for c in v], 7) + 0.15
    row = below + height + LINE + 0.1
    fig = plt.figure(figsize=(len(keys) * (left + width) + 0.2, len(metrics) * row))
    for i, (col, title) in enumerate(metrics):
        for j, key in enumerate(keys):
            labels = table[key]
            data = [table[col].to_numpy(np.float64)[(labels == c).to_numpy()] for c in cats[key]]
            ax = _axes(fig, j * (left + width) + left, (len(metrics) - 1 - i) * row + below, width, height)
            ax.boxplot([d[np.isfinite(d)] for d in data], tick_labels=[str(c) for c in cats[key]], widths=0.6,
                       flierprops={"markersize": 2})
            ax.tick_params(axis="x", labelrotation=60, labelsize=7)
            ax.set_title(f"{title} by {key.replace('_', ' ')}")
    return fig


def headline_unit(key: str) -> str:
    """The unit of a headline number (:func:`filtershift.report.results.headline`) by its key: ``count``, a share
    or the metric's unit."""
    from filtershift.metrics import METRICS

    if key in ("filters", "models") or key.endswith("(count)"):
        return "count"
    if key == "degenerated layers":
        return "share of layers"
    if key.startswith("explained variance"):
        return "share of variance"
    metric = key.split()[1] if key.startswith("mean ") and " by " in key else None
    return METRICS[metric].units if metric in METRICS else ""


def trend(runs: list, series: dict) -> plt.Figure:
    """Headline numbers across runs (x: run number, oldest first), one panel per series titled with its unit,
    three per row; counts on an integer axis."""
    from matplotlib.ticker import MaxNLocator, ScalarFormatter

    keys = [k for k, v in series.items() if any(x is not None for x in v)] or list(series)[:1]
    cols = min(3, max(len(keys), 1))
    rows = -(-max(len(keys), 1) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.0 * cols, 2.7 * rows), squeeze=False)
    x = np.arange(1, len(runs) + 1)
    for ax in axes.ravel()[len(keys):]:
        ax.axis("off")
    for ax, key in zip(axes.ravel(), keys):
        y = np.array([np.nan if v is None else v for v in series[key]], np.float64)
        ax.plot(x, y, "o-", ms=4, color="#4c72b0")
        unit = headline_unit(key)
        ax.set_title(key if not unit or key.endswith(f"({unit})") else f"{key} ({unit})", fontsize=10)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, nbins=8, min_n_ticks=1))
        ax.set_xlim(0.5, len(runs) + 0.5)
        ax.set_xlabel("run", fontsize=9)
        ax.tick_params(labelsize=8)
        ax.grid(True, color="#e5e5e5", lw=0.6)
        if unit == "count":
            ax.yaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
            if np.isfinite(y).any() and np.nanmin(y) == np.nanmax(y):
                ax.set_ylim(np.nanmin(y) - 1, np.nanmax(y) + 1)
        formatter = ScalarFormatter(useOffset=False)
        formatter.set_scientific(False)
        ax.yaxis.set_major_formatter(formatter)
    fig.tight_layout()
    return fig


# -- the registry: every figure of the report, declared once -------------------------------------------------------


@dataclass(frozen=True)
class ReportFigure:
    """One figure of the report page: where it goes, what it shows and how it is drawn.

    ``key`` names it in ``results.json``'s figure registry (``{name}``: the grouping, ``{metric}``: the metric);
    ``section`` is the page section (``basis``, ``grouping``, ``density``, ``quality``); ``data(ctx)`` returns the
    keyword arguments of ``plot`` from the analysis, or None when the figure does not apply; ``caption(ctx)`` and
    ``alt(ctx)`` are plain text for the page. ``metrics``: ``"first"`` (the first metric of the spec), ``"others"``
    (one figure per further metric) or None; ``display``: the grouping display it belongs to (``matrix`` or
    ``clustered``; None: both). On the page, figures with the same ``row`` sit side by side, after ``heading``, with
    the group sizes in ``beside`` order (``order`` or ``top``) next to them.
    """

    key: str
    section: str
    data: Callable
    plot: Callable
    stem: str
    caption: Callable
    alt: Callable
    vector: bool = True
    metrics: str | None = None
    display: str | None = None
    row: str | None = None
    heading: Callable | None = None
    beside: str | None = None


def _group_sizes(c):
    r = c["gr"]
    return c["g"].display, r["n_models"], r["n_filters"], r["small"]


def _heatmap(c, order, title):
    labels, nm, nf, small = _group_sizes(c)
    from filtershift.metrics import METRICS

    unit = METRICS[c["metric"]].units if c["metric"] in METRICS else ""
    return {"matrix": c["g"].drift[c["metric"]].values, "labels": labels, "n_models": nm, "n_filters": nf,
            "small": small, "order": order, "title": title, "metric": c["metric"], "unit": unit, "weak": _weak(c)}


def _weak(c):
    """The pairs of the grouping's permutation test (of this figure's metric) that are not significant, or None."""
    test = getattr(c["g"], "test", None)
    if test is None or test.attrs["metric"] != c["metric"]:
        return None
    adjusted = test["p_adjusted"].values
    return np.isfinite(adjusted) & (adjusted > test.attrs["alpha"])


def _drift_caption(c, text: str) -> str:
    """``text`` plus what hatching means when the figure shows the permutation test."""
    test = c["gr"].get("significance")
    if not test or test["metric"] != c["metric"]:
        return text
    return (f"{text} Hatched: not significant (permutation test of the models, {test['n_perm']} splits per pair at "
            f"most, Benjamini-Hochberg at {test['alpha']:g}; {test['n_significant']} of {test['n_tested']} tested "
            "pairs significant).")


def _unsorted(c):
    g = c["g"]
    if "depth" not in g.dist.attrs["by"] or _in_key(c):
        return None
    return _heatmap(c, np.arange(g.size), f"{c['metric']} drift by {c['name']} (depth order)")


def _boxes(c, order, title):
    labels, _, _, small = _group_sizes(c)
    return {"matrix": c["g"].drift[c["metric0"]].values, "labels": labels, "small": small, "order": order,
            "metric": c["metric0"], "title": title}


def _largest_pairs(ci, labels: list, k: int):
    """Labels and (row, column) indices of the ``k`` pairs (a < b) of largest drift in ``ci``, largest first."""
    from filtershift.report.analysis import largest_pairs

    a, b = largest_pairs(ci["drift"].values, k)
    return [f"{labels[i]} vs {labels[j]}" for i, j in zip(a, b)], (a, b)


def _intervals(c):
    g = c["g"]
    if not g.ci:
        return None
    first = next(iter(g.ci.values()))
    if not np.isfinite(first["lower"].values).any():
        return None
    pairs, idx = _largest_pairs(first, g.display, c["fig_spec"]["top_k"])
    if not pairs:
        return None
    data = {m: tuple(ci[part].values[idx] for part in ("drift", "lower", "upper")) for m, ci in g.ci.items()}
    return {"pairs": pairs, "metrics": data, "level": first.attrs["level"], "title": f"Largest drifts by {c['name']}",
            "method": first.attrs["method"].split(" bootstrap")[0]}


def _attribution(c):
    a = c["gr"].get("attribution")
    if not a:
        return None
    pairs = a["pairs"]
    return {"pairs": [f"{p['a']} vs {p['b']}" for p in pairs], "parts": [p["contributions"] for p in pairs],
            "totals": [p["drift"] for p in pairs], "metric": a["metric"],
            "title": f"The {len(pairs)} largest {a['metric']} drifts by {c['name']}, by component"}


def _attribution_caption(c) -> str:
    return (f"Each bar is one component's term of a pair's {c['gr']['attribution']['metric']} drift: its explained "
            "variance ratio times the divergence between the two groups' histograms of that coefficient. A pair's "
            "bars sum to its drift (in the legend); a tall bar at component k means the coefficients of "
            "eigenimage k moved. results.json also lists each pair's leading bins.")


def _init_matrix(c):
    i = c["gr"].get("init")
    if not i:
        return None
    return {"matrix": i["matrix"], "labels": i["labels"], "n_models": i["n_models"], "n_filters": i["n_filters"],
            "small": i["small"], "order": i["order"], "metric": i["metric"],
            "title": f"{i['metric']} drift by {c['name']} and from random initialisation"}


def _init_caption(c) -> str:
    i = c["gr"]["init"]
    return (f"The groups of {c['name']} sorted by increasing mean {i['metric']} drift between them, and freshly "
            "initialised filters of "
            f"{', '.join(i['inits'])} (last; sampled in {len(i['layers'])} layers each, seed {i['seed']}, counted in "
            "the same bins). A group close to an initialisation looks untrained. Two samples of one initialiser "
            "differ by about 0.0007 nats (kl_sym); after scaling, the two uniform initialisers give one "
            "distribution, and so do the two Gaussian ones.")


def _group_eigenimages(c):
    bases = c["g"].bases
    if bases is None or not bases["valid"].values.any():
        return None
    return {"bases": bases, "alignment": c["g"].alignment, "n": c["fig_spec"]["eigenimage_components"]}


def _ridges(c):
    g = c["g"]
    if g.kde is None or not np.isfinite(g.kde.values).any():
        return None
    return {"kde": g.kde, "order": g.order, "small": c["gr"]["small"], "components": g.kde["component"].values}


def _density(c):
    d = c["analysis"].density
    if d is None:
        return None
    return {"counts": d.values, "edges": d.attrs["bin_edges"], "components": d.attrs["components"],
            "vmin": c["fig_spec"]["density_vmin"], "dpi": c["fig_spec"]["dpi"]}


def _density_caption(c) -> str:
    d = c["results"]["density2d"]
    n, lo, hi = d["bins"], *d["range"]
    fewer = (f" ({d['bins_requested']} asked for, halved while the filters averaged fewer than {d['min_count']:g} "
             "per occupied bin)" if n != d["bins_requested"] else "")
    outside = f"; {_count(d['outside'])} outside the range are not shown" if d.get("outside") else ""
    return (f"{n} x {n} bins{fewer} over [{lo:g}, {hi:g}] on both axes: component {d['components'][0]} (x) against "
            f"component {d['components'][1]} (y) of {_count(d['total'])} filters{outside}. Counts divided by the "
            f"largest, log colour scale from {d['vmin']:g}; empty bins take the lowest colour.")


def _quality(c):
    from filtershift.report.results import QUALITY_BY

    if not c["results"].get("quality"):
        return None
    layer = c["analysis"].layer_quality
    return {"table": layer, "keys": [k for k in QUALITY_BY if k in layer]}


def _views(c):
    from filtershift.metrics import METRICS

    others = [m for m in c["metrics"] if m != c["metric0"]]
    return " and ".join(METRICS[m].label if m in METRICS else m for m in others) + " views"


def _count(value) -> str:
    return f"{value:,}" if isinstance(value, int) else str(value)


#: The groupings of the key figure, in panel order (those the report has, with a labelled matrix).
KEY_GROUPINGS = ("task", "visual_category", "depth")


def key_order(g) -> np.ndarray:
    """Display order of a grouping in the key figure and its further metrics: depth groupings in depth order (the
    notebook's), the others by increasing mean drift."""
    return np.arange(g.size) if "depth" in g.dist.attrs["by"] else np.asarray(g.order)


def key_summary(analysis, spec: dict) -> dict | None:
    """The numbers of the key figure for results.json: its metric (the first) and unit, its groupings, the ONE
    colour scale they share (``vmin`` 0, ``vmax`` the largest finite drift of their matrices) and, per grouping,
    the count, mean and median of its pairwise drifts (upper triangle); None when no key grouping applies."""
    from filtershift.metrics import METRICS

    metric = spec["metrics"][0]
    names = [n for n in KEY_GROUPINGS if n in analysis.groupings
             and 2 <= analysis.groupings[n].size <= spec["figures"]["max_groups"]]
    if not names:
        return None
    pairwise, top = {}, 0.0
    for n in names:
        m = np.asarray(analysis.groupings[n].drift[metric].values, np.float64)
        v = m[np.triu_indices(m.shape[0], 1)]
        v = v[np.isfinite(v)]
        pairwise[n] = {"n_pairs": int(v.size), "mean": float(v.mean()) if v.size else None,
                       "median": float(np.median(v)) if v.size else None}
        finite = m[np.isfinite(m)]
        top = max(top, float(finite.max()) if finite.size else 0.0)
    unit = METRICS[metric].units if metric in METRICS else ""
    return {"metric": metric, "unit": unit, "weighted": "explained variance ratios of the global basis",
            "groupings": names, "vmin": 0.0, "vmax": top or 1.0, "pairwise": pairwise}


def _key(c):
    key = c["results"].get("key_figure")
    if not key:
        return None
    panels = []
    for name in key["groupings"]:
        g = c["analysis"].groupings[name]
        order = key_order(g)
        labels, nm, nf, small = g.labels, *(c["results"]["groupings"][name][k]
                                            for k in ("n_models", "n_filters", "small"))
        weak = _weak(dict(c, g=g, metric=key["metric"]))
        panels.append({"name": name, "matrix": np.asarray(g.drift[key["metric"]].values)[np.ix_(order, order)],
                       "ticks": _matrix_ticks(labels, nm, nf, small, order), "small": [small[i] for i in order],
                       "weak": None if weak is None else weak[np.ix_(order, order)]})
    return {"panels": panels, "metric": key["metric"], "unit": key["unit"], "vmin": key["vmin"],
            "vmax": key["vmax"]}


def _key_caption(c) -> str:
    key = c["results"]["key_figure"]
    means = "; ".join(f"{n.replace('_', ' ')} {v['mean']:.3g}" for n, v in key["pairwise"].items()
                      if v["mean"] is not None)
    return (f"{key['metric']} drift ({key['unit']}, components weighted by the global explained variance ratios) "
            f"by {', '.join(n.replace('_', ' ') for n in key['groupings'])} on one colour scale "
            f"({key['vmin']:g} to {key['vmax']:.3g}); depth in depth order, the others by increasing mean drift; "
            "columns numbered as the rows. Right: each grouping's pairwise drifts (upper triangle), box of the "
            f"quartiles, white diamond the mean ({means}). The higher a grouping's box, the more that meta axis "
            "shifts the filters." + _key_hatching(c, key))


def _key_hatching(c, key) -> str:
    """What hatching means in the key figure, when a grouping of it was tested (permutation test)."""
    tests = [t for t in (c["results"]["groupings"][n].get("significance") for n in key["groupings"])
             if t and t["metric"] == key["metric"]]
    if not tests:
        return ""
    t = tests[0]
    return (f" Hatched: not significant (permutation test of the models, {t['n_perm']} splits per pair at most, "
            f"Benjamini-Hochberg at {t['alpha']:g} within each grouping; "
            f"{sum(x['n_significant'] for x in tests)} of {sum(x['n_tested'] for x in tests)} tested pairs "
            "significant).")


def _in_key(c) -> bool:
    key = c["results"].get("key_figure")
    return bool(key) and c.get("name") in key["groupings"]


def _views_data(c):
    from filtershift.metrics import METRICS

    g = c["g"]
    others = [m for m in c["metrics"] if m != c["metric0"]]
    if not others:
        return None
    labels, nm, nf, small = _group_sizes(c)
    panels = [(m, METRICS[m].units if m in METRICS else "", g.drift[m].values) for m in others]
    return {"panels": panels, "labels": labels, "n_models": nm, "n_filters": nf, "small": small,
            "order": key_order(g) if _in_key(c) else g.order, "title": f"{_views(c)} by {c['name']}"}


#: Every figure of the report, in page order.
FIGURES = (
    ReportFigure("key", "key", _key, key_figure, "key-figure", _key_caption,
                 lambda c: "key figure: drift by meta axis on one colour scale", vector=False),
    ReportFigure("basis.explained_variance", "basis",
                 lambda c: {"ratio": c["analysis"].basis.explained_variance_ratio_}, explained_variance,
                 "basis-explained-variance", lambda c: "Explained variance ratio and its cumulative sum.",
                 lambda c: "explained variance", row="basis"),
    ReportFigure("basis.covariance", "basis", lambda c: {"cov": c["analysis"].covariance}, covariance,
                 "basis-covariance", lambda c: "Covariance of the scaled filters (k = 3y + x).",
                 lambda c: "covariance", row="basis"),
    ReportFigure("basis.eigenimages", "basis",
                 lambda c: {"components": c["analysis"].basis.components_,
                            "ratio": c["analysis"].basis.explained_variance_ratio_,
                            "n": c["fig_spec"]["eigenimage_components"]}, eigenimages, "basis-eigenimages",
                 lambda c: "Eigenimages (components as 3x3 kernels) on one symmetric diverging scale: red positive, "
                           "blue negative.", lambda c: "eigenimages"),
    ReportFigure("grouping.{name}.drift.{metric}", "grouping",
                 lambda c: None if _in_key(c) else _heatmap(c, c["g"].order, f"{c['metric']} drift by {c['name']}"),
                 heatmap, "drift-{slug}-{metric}",
                 lambda c: _drift_caption(c, f"{c['metric']} drift, groups sorted by mean drift; columns numbered "
                                             "as the rows."),
                 lambda c: f"{c['name']} drift", vector=False, metrics="first", display="matrix", row="main",
                 beside="order"),
    ReportFigure("grouping.{name}.drift.{metric}.unsorted", "grouping", _unsorted, heatmap,
                 "drift-{slug}-{metric}-unsorted", lambda c: f"{c['metric']} drift in natural (depth) order.",
                 lambda c: f"{c['name']} drift unsorted", vector=False, metrics="first", display="matrix",
                 heading=lambda c: "In natural (depth) order"),
    ReportFigure("grouping.{name}.views", "grouping", _views_data, metric_panels, "drift-{slug}-views",
                 lambda c: "The other metrics' drift matrices, each on its own scale, rows in the order of the "
                           f"{c['metric0']} matrix{' of the key figure' if _in_key(c) else ''}.",
                 lambda c: f"{c['name']} {_views(c)}", vector=False, display="matrix", heading=_views),
    ReportFigure("grouping.{name}.overview", "grouping",
                 lambda c: {"matrix": c["g"].drift[c["metric0"]].values, "order": c["g"].cluster_order,
                            "title": f"{c['metric0']} drift by {c['name']} ({c['g'].size} groups, clustered)",
                            "metric": c["metric0"]}, overview, "drift-{slug}-{metric0}-clustered",
                 lambda c: f"{c['metric0']} drift, clustered order.", lambda c: f"{c['name']} clustered drift",
                 vector=False, display="clustered"),
    ReportFigure("grouping.{name}.top", "grouping",
                 lambda c: dict(_heatmap(dict(c, metric=c["metric0"]), c["g"].top,
                                         f"{c['metric0']} drift: {len(c['g'].top)} most shifted groups by "
                                         f"{c['name']}")),
                 heatmap, "drift-{slug}-{metric0}-top", lambda c: f"Top {len(c['gr']['top'])} most shifted groups.",
                 lambda c: f"{c['name']} top shifted", vector=False, display="clustered", row="top", beside="top"),
    ReportFigure("grouping.{name}.boxes", "grouping",
                 lambda c: _boxes(c, c["g"].top, f"{c['metric0']} drift of the most shifted groups by {c['name']}"),
                 boxes, "boxes-{slug}", lambda c: "Drift of the most shifted groups to every other group.",
                 lambda c: f"{c['name']} drift boxes", display="clustered"),
    ReportFigure("grouping.{name}.intervals", "grouping", _intervals, intervals, "intervals-{slug}",
                 lambda c: f"The largest drifts with {c['gr']['bootstrap']['level']:.0%} "
                           f"{c['gr']['bootstrap']['method']} ({c['gr']['bootstrap']['n_boot']} resamples), one "
                           "panel per metric; pairs ordered by the first metric. A finite-sample divergence is "
                           "biased upwards, so a bias-corrected interval may lie below the estimate.",
                 lambda c: f"{c['name']} bootstrap intervals", heading=lambda c: "Bootstrap intervals"),
    ReportFigure("grouping.{name}.attribution", "grouping", _attribution, contributions, "attribution-{slug}",
                 _attribution_caption, lambda c: f"{c['name']} drift by component",
                 heading=lambda c: "Which components drive the largest drifts"),
    ReportFigure("grouping.{name}.init", "grouping", _init_matrix, heatmap, "drift-{slug}-{metric0}-init",
                 _init_caption, lambda c: f"{c['name']} drift from random initialisation", vector=False,
                 heading=lambda c: "Against random initialisation"),
    ReportFigure("grouping.{name}.eigenimages", "grouping", _group_eigenimages, group_eigenimages,
                 "eigenimages-{slug}",
                 lambda c: "The same PCA fitted on each group's filters, its components matched one-to-one to the "
                           "global ones by largest |cosine| (column cj: the group's component most parallel to "
                           "global cj, signed so that the cosine is positive). Under each image: the group's share "
                           "of variance in that component and the cosine; ~ in red: the group has another "
                           f"eigenvalue within {c['gr']['group_bases']['tie_rtol']:.0%} of it, so the two may swap.",
                 lambda c: f"{c['name']} eigenimages", heading=lambda c: "Eigenimages per group"),
    ReportFigure("grouping.{name}.ridges", "grouping", _ridges, ridges, "ridges-{slug}",
                 lambda c: "Gaussian KDE of the coefficients per group (rows, sorted by mean drift) and component "
                           "(columns), with the notebook's Silverman bandwidth (KDEpy's rule) on fine bins; each "
                           "panel scaled to its highest peak.",
                 lambda c: f"{c['name']} ridge plot", heading=lambda c: "Coefficient distributions"),
    ReportFigure("density2d", "density", _density, density, "density2d", _density_caption,
                 lambda c: "2D density", vector=False),
    ReportFigure("quality", "quality", _quality, quality_panels, "quality",
                 lambda c: "Per-layer sparsity and normalised variance entropy.", lambda c: "quality"),
)


def expand(fig: ReportFigure, ctx: dict):
    """The (key, context) of each figure ``fig`` stands for in ``ctx`` (one per metric for ``metrics="others"``);
    none when its display is not the grouping's."""
    if fig.display is not None and ctx["gr"]["display"] != fig.display:
        return []
    if fig.metrics == "first":
        metrics = [ctx["metric0"]]
    elif fig.metrics == "others":
        metrics = [m for m in ctx["metrics"] if m != ctx["metric0"]]
    else:
        metrics = [ctx["metric0"]]
    out = []
    for m in metrics:
        c = dict(ctx, metric=m)
        out.append((fig.key.format(name=c.get("name"), metric=m), c))
    return out
