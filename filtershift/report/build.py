"""``build_report``: one scheduled report run, from the spec to a published, self-contained directory.

Flow: validate the spec → identify the store snapshot (manifest) → take the output lock → reuse a published run
with the same identity, or analyse in a staging directory (figures, tables, results.json, index.html, run.log)
→ rename it into ``runs/`` → switch ``latest`` → rewrite the history page. Any failure before the rename leaves
the published runs untouched and keeps the failed run's log under ``failed/``. On object storage (an output URL)
the rename is an upload under ``runs/`` ending with ``run.json`` and the switch is single-object PUTs (see
:class:`filtershift.report.publish.RemoteOutput`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from filtershift import progress
from filtershift._version import __version__
from filtershift.errors import FiltershiftError, InputError
from filtershift.report import figures, html, publish
from filtershift.report.config import load_config, spec_hash

log = logging.getLogger("filtershift.report")


@dataclass
class ReportResult:
    """What a run did: ``status`` is ``"built"``, ``"skipped"`` (latest already covers this store snapshot and
    spec) or ``"reused"`` (an older published run did; ``latest`` now points to it)."""

    status: str
    out: Path | str
    run: str
    run_dir: Path | str
    spec_hash: str
    identity: dict
    results: dict | None = None
    removed_unfinished: list = field(default_factory=list)

    @property
    def index_html(self) -> Path | str:
        """The run's report page."""
        return _join(self.run_dir, "index.html")

    @property
    def history_html(self) -> Path | str:
        """The history page of the output directory."""
        return _join(self.out, "index.html")

    @property
    def results_json(self) -> Path | str:
        return _join(self.run_dir, "results.json")

    @property
    def exit_code(self) -> int:
        return 0


def _join(base: Path | str, name: str) -> Path | str:
    """A file of a local output directory (a Path) or of an output URL (a string: ``s3://.../name``)."""
    return base / name if isinstance(base, Path) else f"{base}/{name}"


def store_identity(store: str, shash: str, storage_options: dict | None = None) -> dict:
    """What makes two runs interchangeable: the store (location, snapshot version, size and whole-store sum),
    the spec hash and the filtershift version. Reads the manifest only; refuses incomplete stores (exit 3)."""
    from filtershift.store import format as fmt

    loc = fmt.Location.of(store, storage_options)
    manifest = fmt.read_manifest(fmt.open_group(loc, "r"), loc)
    return {"store": loc.display, "store_version": int(manifest["version"]),
            "n_filters": int(manifest["n_filters"]),
            "weights_sum": manifest.get("integrity", {}).get("weights_sum"),
            "spec_hash": shash, "filtershift_version": __version__}


def build_report(store=None, out=None, config=None, scheduler=None, *, force: bool = False,
                 default_scheduler: str = "threads", storage_options: dict | None = None,
                 keep_missing: bool | None = None, where: str | None = None) -> ReportResult:
    """Build (or reuse) the report of ``store`` into ``out``.

    ``config`` is a report.yaml path or a spec dict (see :mod:`filtershift.report.config`); ``store``, ``out`` and
    ``scheduler`` override its keys. ``force`` builds a new run even when one with the same identity exists.
    ``out`` may be a URL (``s3://bucket/reports``): the run is built locally, then uploaded and published by
    single-object writes (:class:`filtershift.report.publish.RemoteOutput`); the result's paths are then URLs.
    ``storage_options`` (fsspec) serve the store and the output URLs; they are not part of the spec or its hash.
    ``keep_missing`` overrides ``keep_missing`` of the config (part of the spec and its hash), ``where`` its
    ``where`` (an expression of docs/analysis.md: the report covers the records that satisfy it).

    Parameters
    ----------
    store : str or os.PathLike, optional
        Store path or URL; overrides ``store`` of the config.
    out : str or os.PathLike, optional
        Output directory or URL; overrides ``output`` of the config.
    config : str, os.PathLike or dict, optional
        A report.yaml path or a spec dict; default the built-in spec.
    scheduler : str, optional
        Dask scheduler (see :func:`~filtershift.scheduler_context`); overrides ``scheduler`` of the config.
    force : bool, default False
        Build a new run even when a published run has the same identity (store snapshot, spec hash, version).
    default_scheduler : str, default "threads"
        Scheduler used when neither the arguments, the config nor the environment choose one.
    storage_options : dict, optional
        fsspec options of the store and output URLs.
    keep_missing : bool, optional
        Keep the models whose label is missing as a group of their own in every grouping; overrides
        ``keep_missing`` of the config (default there: False, they are left out and counted).
    where : str, optional
        Analyse only the records whose meta satisfies this expression (``--where``, docs/analysis.md); overrides
        ``where`` of the config (part of the spec and its hash).

    Returns
    -------
    ReportResult
        ``status`` (``"built"``, ``"skipped"`` or ``"reused"``), ``out``, ``run``, ``run_dir``, ``spec_hash``,
        ``identity``, ``results`` (None unless built) and ``removed_unfinished``; ``index_html``,
        ``history_html`` and ``results_json`` give the pages' paths (URLs for a URL output).

    Raises
    ------
    filtershift.errors.InputError
        If no store or no output is given, or the config is invalid.
    filtershift.errors.StoreError
        If the store is missing, incomplete or unreadable.

    Examples
    --------
    >>> import filtershift
    >>> result = filtershift.build_report("filters.zarr", "reports", config="report.yaml")
    >>> result.status  # doctest: +SKIP
    'built'
    >>> result.index_html  # doctest: +SKIP
    """
    overrides = {"store": None if store is None else str(store), "output": None if out is None else str(out),
                 "scheduler": scheduler, "keep_missing": keep_missing, "where": where}
    spec = load_config(config, overrides)
    if not spec["store"]:
        raise InputError("no store given: pass STORE on the command line or set 'store' in report.yaml.")
    if not spec["output"]:
        raise InputError("no output directory given: pass --out DIR or set 'output' in report.yaml.")
    shash = spec_hash(spec)
    identity = store_identity(spec["store"], shash, storage_options)
    target = publish.open_output(spec["output"], storage_options)
    with target.exclusive():
        removed = target.clean()
        existing = None if force else target.find_run(identity)
        if existing is not None:
            status = "skipped" if target.latest() == existing else "reused"
            if status == "reused":
                target.point_latest(existing)
            write_history(target)
            log.info("%s: run %s already covers store version %s with spec %s; nothing to compute",
                     status, existing, identity["store_version"], shash[:8])
            return ReportResult(status, target.location, existing,
                                target.run_dir(existing), shash, identity, removed_unfinished=removed)
        name = target.unique_name(shash)
        staging = target.staging(name)
        handler = logging.FileHandler(staging / "run.log", encoding="utf-8")
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        root = logging.getLogger("filtershift")
        root.addHandler(handler)
        level = root.level
        if root.getEffectiveLevel() > logging.INFO:
            root.setLevel(logging.INFO)
        try:
            log.info("run %s: store %s (version %s), spec %s, output %s", name, identity["store"],
                     identity["store_version"], shash[:8], target.display)
            results = _build_run(spec, identity, name, staging, default_scheduler,
                                 storage_options=storage_options)
            final = target.promote(staging, name)
            write_history(target)
            log.info("published %s", final)
        except BaseException as exc:
            expected = isinstance(exc, (FiltershiftError, KeyboardInterrupt))
            log.error("run %s failed: %s", name, exc if expected else f"{type(exc).__name__}: {exc}",
                      exc_info=not expected)
            kept = target.discard(staging, name)
            if kept is not None:
                log.error("the failed run's files and log are in %s; the published report is unchanged", kept)
            raise
        finally:
            root.removeHandler(handler)
            handler.close()
            root.setLevel(level)
    return ReportResult("built", target.location, name, final, shash, identity, results, removed)


def _build_run(spec: dict, identity: dict, name: str, staging: Path, default_scheduler: str,
               storage_options: dict | None = None) -> dict:
    from filtershift.cluster import scheduler_context
    from filtershift.report import render
    from filtershift.report.analysis import analyse
    from filtershift.report.results import build_results, write_json
    from filtershift.store.dataset import models, open_store, query, records
    from filtershift.store.format import utc_now
    from filtershift.store.verify import info

    (staging / "figures").mkdir()
    (staging / "tables").mkdir()
    created = utc_now()
    n_steps = (3 + len(spec["groupings"]) + len(spec["within"]) + (1 if spec["init"] else 0)
               + (1 if spec["figures"]["density_bins"] else 0))
    with progress.bar(total=n_steps, desc="report", unit="stage") as bar:
        def step(label):
            log.info("stage: %s", label)
            bar.set_postfix_str(label)
            bar.update(1)

        # the figure processes import matplotlib while the data is analysed (the basis figures and, per grouping,
        # one per metric and the boxes are always drawn)
        render.start(3 + len(spec["groupings"]) * (len(spec["metrics"]) + 1))
        with scheduler_context(spec["scheduler"], default=default_scheduler, quiet=True) as conn:
            log.info("computing on %s", conn.describe())
            ds = open_store(spec["store"], storage_options=storage_options)
            if spec["where"]:
                ds = query(ds, spec["where"])
            summary = info(spec["store"], storage_options=storage_options)
            analysis = analyse(ds, summary, spec, step=step)
            scheduler = conn.describe()
        step("figures and tables")
        run = {"name": name, "created": created, "spec_hash": identity["spec_hash"], "identity": identity,
               "filtershift_version": __version__, "passes": analysis.passes, "scheduler": scheduler}
        results, _ = build_results(analysis, spec, run, staging / "tables", models(ds), records(ds))
        results["key_figure"] = figures.key_summary(analysis, spec)
        results["figures"] = draw(analysis, results, spec, staging / "figures")
        write_json_file = staging / "results.json"
        write_json(results, write_json_file)
        (staging / "index.html").write_text(html.run_page(_reloaded(write_json_file)), encoding="utf-8")
        publish.write_text_atomic(staging / publish.RUN_JSON, _run_json(results))
        bar.update(1)
    return results


def _reloaded(path: Path) -> dict:
    import json

    return json.loads(path.read_text())


def _run_json(results: dict) -> str:
    import json

    from filtershift.report.results import clean

    run = dict(results["run"])
    run.update({"status": "complete", "headline": results["headline"]})
    return json.dumps(clean(run), indent=1) + "\n"


def draw(analysis, results: dict, spec: dict, directory: Path) -> dict:
    """Draw every registered figure (:data:`filtershift.report.figures.FIGURES`) that applies into ``directory``
    (in parallel, :mod:`filtershift.report.render`); returns the registry {key: {format: 'figures/<file>'}}."""
    from filtershift.report import render

    fig_spec = spec["figures"]
    formats, dpi = tuple(fig_spec["formats"]), fig_spec["dpi"]
    base = {"analysis": analysis, "results": results, "spec": spec, "fig_spec": fig_spec,
            "metrics": spec["metrics"], "metric0": spec["metrics"][0], "gr": {"display": None}}
    contexts = {"grouping": [dict(base, name=name, g=g, gr=results["groupings"][name],
                                  slug=results["groupings"][name]["slug"])
                             for name, g in analysis.groupings.items() if g.size]}
    jobs = []
    for entry in figures.FIGURES:
        for ctx in contexts.get(entry.section, [base]):
            for key, c in figures.expand(entry, ctx):
                kwargs = entry.data(c)
                if kwargs is None:
                    continue
                stem = entry.stem.format(slug=c.get("slug"), metric=c["metric"], metric0=c["metric0"])
                jobs.append(render.FigureJob(key, entry.plot, kwargs, publish.safe_name(stem), formats,
                                             entry.vector, dpi))
    with progress.bar(total=len(jobs), desc="figures", unit="figure") as bar:
        files = render.render(jobs, directory, on_done=lambda job: bar.update(1))
    return {key: {fmt: f"figures/{name}" for fmt, name in names.items()} for key, names in files.items()}


#: Panels of the history page's trend (the headline numbers, in the order they first appear).
TREND_PANELS = 9


def trend_series(runs: list) -> dict:
    """Each headline number across ``runs`` (None where a run lacks it), models left out (the filters panel says
    how big the store is), at most :data:`TREND_PANELS`."""
    keys = [k for k in dict.fromkeys(k for r in runs for k in r.get("headline", {})) if k != "models"]
    return {k: [r.get("headline", {}).get(k) for r in runs] for k in keys[:TREND_PANELS]}


def write_history(target) -> None:
    """Rewrite ``OUT/index.html`` (atomically) from the published runs of ``target`` (a
    :func:`filtershift.report.publish.open_output`)."""
    import io

    runs = target.list_runs()
    svg = ""
    if len(runs) >= 1:
        fig = figures.trend(runs, trend_series(runs))
        buf = io.StringIO()
        fig.savefig(buf, format="svg", bbox_inches="tight", metadata={"Date": None})
        figures.plt.close(fig)
        svg = buf.getvalue()
        svg = svg[svg.index("<svg"):]
    target.write_index(html.history_page(runs, target.latest(), svg))
