"""HTML of a run's report and of the history page: plain strings, inline CSS, no script, no external resource.

Pages are built from ``results.json`` content and the figure registry only, so what the page shows is what the
JSON holds. Figures are relative links into ``figures/``; every label is escaped.
"""

from __future__ import annotations

import math
from html import escape

from filtershift.report.figures import FIGURES, expand, headline_unit

CSS = """
:root { --fg:#1f2328; --muted:#59636e; --line:#d1d9e0; --bg:#ffffff; --soft:#f6f8fa; --warn:#b0413e; }
* { box-sizing: border-box; }
body { font: 15px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: var(--fg);
       background: var(--bg); margin: 0; }
header { background: #24292f; color: #fff; padding: 18px 32px; }
header h1 { margin: 0; font-size: 22px; }
header p { margin: 4px 0 0; color: #d0d7de; font-size: 13px; }
header a { color: #9ecbff; }
nav { position: sticky; top: 0; background: var(--soft); border-bottom: 1px solid var(--line); padding: 6px 32px;
      font-size: 13px; z-index: 1; }
nav a { margin-right: 14px; color: #0969da; text-decoration: none; white-space: nowrap; }
main { max-width: 1180px; margin: 0 auto; padding: 8px 32px 48px; }
h2 { border-bottom: 1px solid var(--line); padding-bottom: 4px; margin-top: 36px; }
h3 { margin: 24px 0 6px; font-size: 16px; }
p.note, .muted { color: var(--muted); font-size: 13px; }
figure { margin: 10px 0 18px; }
figure svg { max-width: 100%; height: auto; }
figure img { max-width: 100%; height: auto; border: 1px solid var(--line); background: #fff; }
figcaption { color: var(--muted); font-size: 13px; margin-top: 4px; }
table { border-collapse: collapse; font-size: 13px; margin: 8px 0 16px; }
th, td { border: 1px solid var(--line); padding: 3px 8px; text-align: left; vertical-align: top; }
th { background: var(--soft); }
.scroll { overflow-x: auto; max-width: 100%; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
tr.small td { color: var(--warn); }
tr.pooled td { font-weight: 600; background: var(--soft); }
.row { display: flex; flex-wrap: wrap; gap: 24px; align-items: flex-start; }
.row > * { flex: 0 1 auto; min-width: 0; max-width: 100%; }
.cards { display: flex; flex-wrap: wrap; gap: 12px; margin: 12px 0; }
.card { border: 1px solid var(--line); border-radius: 6px; padding: 10px 14px; min-width: 150px;
        background: var(--soft); }
.card b { display: block; font-size: 20px; }
.flag { color: var(--warn); font-weight: 600; }
code { background: var(--soft); padding: 0 4px; border-radius: 4px; }
details { margin: 6px 0; }
details > summary { cursor: pointer; font-weight: 600; margin: 10px 0 4px; }
details[open] > summary { margin-bottom: 8px; }
.banner { background: #fff8c5; border: 1px solid #d4a72c; border-radius: 6px; padding: 8px 14px; margin: 12px 0;
          font-weight: 600; }
p.lead { margin: 6px 0; }
"""


def esc(value) -> str:
    return escape(str(value), quote=True)


def cell(value, digits: int = 4) -> str:
    """A number for a table cell: integers with separators, floats to ``digits`` significant digits, None (and
    non-finite floats) as an en dash."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "\u2013"
    if isinstance(value, bool):
        return "yes" if value else ""
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return esc(value)


def document(title: str, body: str, *, subtitle: str = "", nav: list | None = None) -> str:
    links = "".join(f'<a href="#{esc(a)}">{esc(t)}</a>' for a, t in (nav or []))
    return ("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
            f"<title>{esc(title)}</title>\n<style>{CSS}</style>\n</head>\n<body>\n"
            f"<header><h1>{esc(title)}</h1><p>{subtitle}</p></header>\n"
            + (f"<nav>{links}</nav>\n" if links else "")
            + f"<main>\n{body}\n</main>\n</body>\n</html>\n")


def figure(files: dict | None, caption: str, alt: str) -> str:
    """An ``<img>`` of the PNG with a link to the SVG when there is one."""
    if not files:
        return ""
    vector = f' <a href="{esc(files["svg"])}">SVG</a>' if "svg" in files else ""
    return (f'<figure><img src="{esc(files["png"])}" alt="{esc(alt)}">'
            f"<figcaption>{caption}{vector}</figcaption></figure>")


def table(headers: list, rows: list, *, numeric=None, row_class=None) -> str:
    numeric = set(numeric or [])
    head = "".join(f"<th>{esc(str(h).replace('_', ' '))}</th>" for h in headers)
    body = []
    for i, row in enumerate(rows):
        cls = f' class="{row_class(i)}"' if row_class and row_class(i) else ""
        cells = "".join(f'<td class="num">{cell(v)}</td>' if j in numeric else f"<td>{cell(v)}</td>"
                        for j, v in enumerate(row))
        body.append(f"<tr{cls}>{cells}</tr>")
    return f'<div class="scroll"><table><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table></div>'


def fold(summary: str, inner: str) -> str:
    """``inner`` in a closed ``<details>`` whose ``<summary>`` (HTML) says what is inside: opens without script."""
    return f"<details><summary>{summary}</summary>\n{inner}\n</details>" if inner else ""


def cards(items: list) -> str:
    return '<div class="cards">' + "".join(f'<div class="card"><b>{cell(v)}</b>{esc(k)}</div>' for k, v in items) + \
        "</div>"


def sizes_table(g: dict, order: list) -> str:
    """Group sizes in display order; small groups in red with a flag."""
    shown = g.get("names") or g["labels"]
    rows = [[shown[i], g["n_models"][i], g["n_filters"][i], "small" if g["small"][i] else ""] for i in order]
    return table(["group", "models", "filters", ""], rows, numeric={1, 2},
                 row_class=lambda i: "small" if rows[i][3] else "")


def registered(section: str, figs: dict, ctx: dict, *, folded: bool = False) -> str:
    """The drawn figures of ``section`` (:data:`filtershift.report.figures.FIGURES`, in order): each with its
    caption, figures of one ``row`` side by side (with the group sizes when the entry says ``beside``), a heading
    before a row or figure that has one. ``folded``: a figure with a heading goes, with the figures of its row, into
    a closed ``<details>`` whose summary is the heading; figures without one stay open."""
    out, row, row_parts, inside = [], None, [], []

    def close():
        if row_parts:
            (inside if inside else out).append('<div class="row">' + "".join(row_parts) + "</div>")
            row_parts.clear()

    def close_fold():
        if inside:
            out.append(fold(inside[0], "\n".join(inside[1:])))
            inside.clear()

    for entry in (f for f in FIGURES if f.section == section):
        for key, c in expand(entry, ctx):
            files = figs.get(key)
            if not files:
                continue
            html = figure(files, esc(entry.caption(c)), entry.alt(c))
            if entry.beside:
                html += sizes_table(c["gr"], c["gr"][entry.beside])
            if entry.row is None or entry.row != row:
                close()
                if folded:
                    close_fold()
                if entry.heading is not None:
                    (inside if folded else out).append(esc(entry.heading(c)) if folded
                                                       else f"<h3>{esc(entry.heading(c))}</h3>")
            row = entry.row
            (row_parts if row is not None else inside if inside else out).append(html)
    close()
    close_fold()
    return "\n".join(out)


def _context(r: dict, **extra) -> dict:
    metrics = r["parameters"]["metrics"]
    return dict({"results": r, "metrics": metrics, "metric0": metrics[0], "gr": {"display": None}}, **extra)


def synthetic(r: dict) -> bool:
    """Whether the store's provenance says its data are generated (``filtershift synth`` and the demo write kind
    ``synth``)."""
    return any(p.get("kind") == "synth" for p in r["store"].get("provenance") or [])


def banner(r: dict) -> str:
    """A banner at the top of a report of synthetic data, so no one reads its numbers as CNN-Filter-DB's."""
    if not synthetic(r):
        return ""
    return ('<div class="banner" id="synthetic">Synthetic data: this store was generated by filtershift (provenance '
            "kind <code>synth</code>), not converted from CNN-Filter-DB. Its drifts show what the tool finds in "
            "planted data, not findings about trained networks.</div>")


def overview_section(r: dict) -> str:
    """Cards and one paragraph, open; the tables behind them (groups, 3x3 share, provenance, parameters, notes)
    folded, so the key figure right after stays above the fold."""
    s, p = r["store"], r["parameters"]
    groupings = ", ".join(r["groupings"]) or "none"
    lead = (f'<p class="lead">{s["n_filters"]:,} trained 3x3 filters of {s["n_models"]:,} models, projected on one '
            f"PCA basis and binned per component; drift between groups of {esc(groupings)} by "
            f"{esc(', '.join(p['metrics']))} (the first, {esc(p['metrics'][0])}, orders the matrices and the key "
            "figure). Details open on a click.</p>")
    parts = ['<section id="overview"><h2>Overview</h2>',
             cards([("filters", s["n_filters"]), ("models", s["n_models"]), ("records", s["n_records"]),
                    ("store version", s["version"]), ("passes over the data", r["run"]["passes"])]), lead]
    tables = [f"<h3>By {esc(name.replace('_', ' '))}</h3>"
              + table([name, "models", "filters"], [[label, v["n_models"], v["n_filters"]]
                                                    for label, v in groups.items()], numeric={1, 2})
              for name, groups in s["groups"].items()]
    parts.append(fold("Filters and models by " + esc(", ".join(n.replace("_", " ") for n in s["groups"])),
                      "\n".join(tables)))
    share = r["overview"].get("share_3x3")
    if share:
        rows = [[k, v] for k, v in share.get("by_task", {}).items()]
        parts.append(fold(f"Share of 3x3 filters among all convolution filters: {cell(share.get('overall'))}",
                          f"<p>Overall {cell(share.get('overall'))} ({esc(share.get('method', ''))}).</p>"
                          + (table(["task", "mean share"], rows, numeric={1}) if rows else "")))
    prov = [[e.get("time"), e.get("kind"), e.get("source"), str(e.get("sha256") or "")[:16], e.get("converter")]
            for e in s.get("provenance", [])]
    parts.append(fold(f"Provenance ({len(prov)} entries: where the store's data came from)",
                      table(["time (UTC)", "kind", "source", "sha256 (first 16)", "converter"], prov)))
    params = [["store", s["store"]], ["groupings", ", ".join(r["groupings"])], ["metrics", ", ".join(p["metrics"])],
              ["bins", p["bins"]],
              ["models without a label", "kept as a group" if p.get("keep_missing") else "left out"],
              ["min filters / min models (small groups)",
                                     f"{p['thresholds']['min_filters']} / {p['thresholds']['min_models']}"],
              ["sparsity eps", p["thresholds"]["sparsity_eps"]],
              ["bootstrap", f"{p['bootstrap']['n_boot']} replicates, seed {p['bootstrap']['seed']}, "
                            f"level {p['bootstrap']['level']}"],
              ["within strata", ", ".join(r.get("within", {})) or "none"],
              ["random-initialisation references", ", ".join(p.get("init") or []) or "none"],
              ["attribution (most drifted pairs)", p.get("explain", 0)],
              ["spec hash", r["run"]["spec_hash"][:16]], ["filtershift", r["run"]["filtershift_version"]],
              ["scheduler", r["run"].get("scheduler", "")]]
    parts.append(fold("Parameters of this report (metrics, bins, thresholds, bootstrap, versions)",
                      table(["parameter", "value"], params)))
    if r.get("notes"):
        parts.append(fold(f"Notes ({len(r['notes'])})",
                          "<ul>" + "".join(f"<li>{esc(n)}</li>" for n in r["notes"]) + "</ul>"))
    parts.append("</section>")
    return "\n".join(parts)


def scope_note(b: dict, where) -> str:
    """Whose basis and coefficient range the histograms use (the whole store's or the selection's)."""
    if "basis_scope" not in b:
        return ""
    whose = {"store": "the whole store", "selection": "the selected records", "given": "a given basis"}
    lo, hi = b["range"]
    sel = f" Selection: <code>{escape(where)}</code>." if where else ""
    return (f'<p class="note">Basis of {whose[b["basis_scope"]]}; histograms binned over the coefficient range of '
            f'{whose[b["range_scope"]]}, [{lo:.4g}, {hi:.4g}].{sel}</p>')


#: The basis section's heading by ``basis_scope``: whose filters the PCA was fitted on.
BASIS_HEADINGS = {"store": "Global basis", "selection": "Basis of the selected records", "given": "Given basis"}


def basis_section(r: dict, figs: dict) -> str:
    b = r["basis"]
    return "\n".join([
        f'<section id="basis"><h2>{BASIS_HEADINGS[b.get("basis_scope", "store")]}</h2>',
        f'<p class="note">PCA of {cell(b["n_samples"])} filters, each scaled by its largest absolute weight '
        "(the CNN-Filter-DB convention). Signs: each component's largest entry is positive.</p>",
        scope_note(b, r["parameters"].get("where")),
        registered("basis", figs, _context(r)),
        "</section>"])


def grouping_section(name: str, g: dict, figs: dict, r: dict) -> str:
    metric0 = r["parameters"]["metrics"][0]
    small_note = (f'<p class="note">Groups marked <span class="flag">*</span> (red) are small: fewer than '
                  f'{r["parameters"]["thresholds"]["min_filters"]:,} filters or '
                  f'{r["parameters"]["thresholds"]["min_models"]} models; their drift is noisy.</p>')
    parts = [f'<section id="{esc("g-" + g["slug"])}"><h2>Grouping: {esc(name)}</h2>',
             f'<p class="note">{g["size"]} groups; drift weights are the global explained variance ratios; '
             f"{r['parameters']['bins']} bins per component.</p>", small_note, missing_note(g)]
    if g["display"] != "matrix":
        parts.append(f'<p class="note">Too many groups for a readable matrix: the full matrix is shown clustered '
                     f'(average linkage, optimal leaf order) without labels, then the {len(g["top"])} most shifted '
                     f'groups (largest mean drift) with labels. All values are in '
                     f'<code>{esc(g["metrics"][metric0].get("table", ""))}</code>.</p>')
    key = r.get("key_figure") or {}
    if name in key.get("groupings", []):
        order = list(range(g["size"])) if "depth" in g["by"] else g["order"]
        parts.append(f'<p class="note">The {esc(key["metric"])} matrix of this grouping is in the '
                     '<a href="#key">key figure</a>, on the scale it shares with the other meta axes.</p>'
                     + fold("Group sizes (models, filters) in the key figure's order", sizes_table(g, order)))
    parts.append(registered("grouping", figs, _context(r, name=name, gr=g), folded=True))
    parts.append("</section>")
    return "\n".join(parts)


def missing_note(g: dict) -> str:
    """How many models and filters the grouping left out because a label is missing (results ``dropped``)."""
    dropped = g.get("dropped") or {}
    if g.get("missing_labels") == "kept" or not dropped.get("models"):
        return ""
    return (f'<p class="note">Left out: {dropped["models"]:,} models ({dropped["filters"]:,} filters) whose '
            f'{esc(" or ".join(g["by"]))} label is missing, as a pandas groupby does; <code>keep_missing: '
            "true</code> (or <code>--keep-missing</code>) keeps them as a group of their own.</p>")


def key_section(r: dict, figs: dict) -> str:
    """The key figure: drift by each meta axis on one colour scale, and each axis' pairwise drifts."""
    if not r.get("key_figure") or "key" not in figs:
        return ""
    return ('<section id="key"><h2>Which meta axis shifts the filters most</h2>'
            + registered("key", figs, _context(r)) + "</section>")


#: Pairs of a ``within`` comparison listed on the page, largest pooled drift first (results.json has every pair).
WITHIN_PAIRS = 10


def within_section(name: str, w: dict) -> str:
    """One ``within`` comparison: for each pair, the pooled drift and the drift inside each stratum with its
    weight (the pair's filters there) and the weight's share of the pooled weight."""
    labels, strata, n = w["labels"], w["strata"], len(w["labels"])
    pairs = [(a, b) for a in range(n) for b in range(a + 1, n) if w["pooled"][a][b] is not None]
    pairs.sort(key=lambda ab: -w["pooled"][ab[0]][ab[1]])
    rows, pooled_rows = [], set()
    for a, b in pairs[:WITHIN_PAIRS]:
        total = w["pooled_weight"][a][b]
        pooled_rows.add(len(rows))
        rows.append([f"{labels[a]} vs {labels[b]}", "pooled", w["pooled"][a][b], total, 1.0, None, None])
        for s, stratum in enumerate(strata):
            value = w["drift"][s][a][b]
            if value is not None:
                weight = w["weight"][s][a][b]
                rows.append(["", stratum, value, weight, weight / total if total else None, w["n_models"][s][a],
                             w["n_models"][s][b]])
    shared = sum(1 for s in range(len(strata)) if sum(1 for x in w["n_filters"][s] if x) >= 2)
    more = (f" The {len(pairs) - WITHIN_PAIRS} other pairs are in results.json." if len(pairs) > WITHIN_PAIRS
            else "")
    note = (f'<p class="note">{esc(w["metric"])} drift between the groups of {esc(w["by"])} inside each stratum of '
            f'{esc(w["within"])}, and pooled: the mean over the strata where both groups have filters, weighted by '
            "the pair's filters in the stratum (weight; share: of the pooled weight). A pooled value compares like "
            f"with like: drift that comes from {esc(w['within'])} alone is not in it. {shared} of {len(strata)} "
            f"strata hold at least two groups; the others compare nothing. Largest pooled drift first.{more}</p>")
    shown = min(len(pairs), WITHIN_PAIRS)
    return (f'<section id="{esc("w-" + w["slug"])}"><h2>Within strata: {esc(name)}</h2>{note}'
            + fold(f"Pooled and per-stratum {esc(w['metric'])} drift of the {shown} largest pairs",
                   table(["pair", "stratum", w["metric"], "weight (filters)", "share", "models a", "models b"], rows,
                         numeric={2, 3, 4, 5, 6}, row_class=lambda i: "pooled" if i in pooled_rows else ""))
            + "</section>")


def init_part(q: dict) -> str:
    """The layers closest to an initialisation reference (they look untrained), with how to read the distance."""
    i = q.get("init")
    if not i:
        return ""
    rows = i["closest_layers"]
    cols = list(rows[0]) if rows else []
    kl = (f" For kl_sym, two samples of one initialiser differ by about 0.0007 nats: a distance below "
          f"{i['seed_error_kl_sym']:g} cannot be told from initialisation." if i["metric"] == "kl_sym" else "")
    note = (f'<p class="note">Each layer\'s {esc(i["metric"])} drift from freshly initialised filters of '
            f'{esc(", ".join(i["inits"]))} (its coefficient histogram against the sampled reference, on the global '
            f"basis in {i['bins']} bins; <code>init_distance</code> in <code>tables/layer_quality</code> is the "
            "smallest over the initialisers, <code>init_nearest</code> names it). The layers closest to one look "
            f"untrained. Layers of few filters have noisy histograms and sit far from everything.{kl}</p>")
    numeric = {j for j, c in enumerate(cols) if c in ("model_id", "conv_depth", "conv_depth_norm", "n",
                                                      "init_distance")}
    return fold(f"Closest to random initialisation: the {len(rows)} layers that look untrained",
                note + table(cols, [[x[c] for c in cols] for x in rows], numeric=numeric))


def density_section(r: dict, figs: dict) -> str:
    d = r.get("density2d")
    if not d:
        return ""
    return ('<section id="density"><h2>Density of components 0 and 1</h2>'
            + registered("density", figs, _context(r)) + "</section>")


def quality_section(r: dict, figs: dict) -> str:
    q = r.get("quality")
    if not q:
        return ('<section id="quality"><h2>Quality</h2><p class="note">Quality metrics are not available in this '
                "build.</p></section>")
    parts = ['<section id="quality"><h2>Quality</h2>',
             cards([("layers", q["n_layers"]), ("degenerated layers", q["n_degenerated"]),
                    ("sparsity eps", q["sparsity_eps"])]),
             registered("quality", figs, _context(r))]
    for by, rows in q["by"].items():
        cols = [c for c in rows[0] if c != "group"] if rows else []
        parts.append(fold(f"Quality by {esc(by)} ({esc(', '.join(cols))})",
                          table(["group", *cols], [[x["group"], *[x[c] for c in cols]] for x in rows],
                                numeric=set(range(1, len(cols) + 1)))))
    parts.append(init_part(q))
    for title, key in (("Most degenerated layers", "most_degenerated_layers"),
                       ("Most degenerated models", "most_degenerated_models")):
        rows = q.get(key) or []
        if rows:
            cols = list(rows[0])
            parts.append(fold(f"{title} ({len(rows)})",
                              table(cols, [[x[c] for c in cols] for x in rows],
                                    numeric={i for i, c in enumerate(cols) if isinstance(rows[0][c], (int, float))
                                             and not isinstance(rows[0][c], bool)})))
    parts.append("</section>")
    return "\n".join(parts)


def run_page(r: dict) -> str:
    """The report of one run."""
    figs = r["figures"]
    nav = [("overview", "Overview")] + ([("key", "Key figure")] if "key" in figs else []) + [("basis", "Basis")]
    nav += [("g-" + g["slug"], name) for name, g in r["groupings"].items()]
    nav += [("w-" + w["slug"], name) for name, w in r.get("within", {}).items()]
    nav += [("density", "2D density")] if r.get("density2d") else []
    nav += [("quality", "Quality"), ("files", "Files")]
    body = [banner(r), overview_section(r), key_section(r, figs), basis_section(r, figs)]
    body += [grouping_section(name, g, figs, r) for name, g in r["groupings"].items()]
    body += [within_section(name, w) for name, w in r.get("within", {}).items()]
    body += [density_section(r, figs), quality_section(r, figs)]
    files = [[k, v.get("parquet"), v.get("csv")] for k, v in r["tables"].items()]
    body.append('<section id="files"><h2>Files</h2><p><a href="results.json">results.json</a> (schema '
                f'<code>{esc(r["schema"])}</code>) and <a href="run.log">run.log</a>.</p>'
                + fold(f"The {len(files)} tables (parquet, csv)", table(["table", "parquet", "csv"], files))
                + "</section>")
    s = r["store"]
    subtitle = (f"{esc(s['store'])} · store version {s['version']} · {s['n_filters']:,} filters · "
                f"run {esc(r['run']['name'])} · generated {esc(r['run']['created'])}")
    return document("filtershift report", "\n".join(body), subtitle=subtitle, nav=nav)


def history_page(runs: list, latest: str | None, trend_svg: str) -> str:
    """The history of published runs, newest first, with the trend of the headline numbers (inline SVG)."""
    keys = list(dict.fromkeys(k for run in runs for k in run.get("headline", {})))
    rows = []
    for run in reversed(runs):
        link = f'<a href="runs/{esc(run["name"])}/index.html">{esc(run["name"])}</a>'
        mark = " (latest)" if run["name"] == latest else ""
        cells = "".join(f'<td class="num">{cell(run.get("headline", {}).get(k))}</td>' for k in keys)
        rows.append(f"<tr><td>{link}{mark}</td><td>{esc(run.get('created', ''))}</td>"
                    f"<td class=\"num\">{cell(run['identity'].get('store_version'))}</td>{cells}</tr>")
    head = "".join(f"<th>{esc(k)}</th>" for k in ["run", "created (UTC)", "store version"])
    head += "".join(f"<th>{esc(k if k.endswith(')') or not headline_unit(k) else f'{k} ({headline_unit(k)})')}</th>"
                    for k in keys)
    top = (f'<p>Latest report: <a href="runs/{esc(latest)}/index.html">{esc(latest)}</a> '
           '(also at <a href="latest/index.html">latest/</a>).</p>') if latest else "<p>No report yet.</p>"
    body = (top + (f"<h2>Trend</h2><figure>{trend_svg}<figcaption>Headline numbers across runs (x: run number, "
                   "oldest first; each panel's unit in its title).</figcaption></figure>" if trend_svg else "")
            + f'<h2>Runs</h2><div class="scroll"><table><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}'
              "</tbody></table></div>")
    return document("filtershift reports", body, subtitle=f"{len(runs)} published run(s)")
