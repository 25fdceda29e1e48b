"""Figures drawn by worker processes: the same bytes as drawn in the report's process, errors that name the figure,
no process left behind by a killed report, and scripts without a ``__main__`` guard are safe."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from filtershift.errors import InputError
from filtershift.report import figures, render

ROOT = Path(__file__).resolve().parents[1]


def _jobs(n: int = render.MIN_FIGURES) -> list[render.FigureJob]:
    rng = np.random.default_rng(0)
    jobs = []
    for i in range(n):
        ratio = np.sort(rng.random(9))[::-1]
        jobs.append(render.FigureJob(f"ev{i}", figures.explained_variance, {"ratio": ratio / ratio.sum()},
                                     f"ev-{i}", ("png", "svg"), True, 60))
    m = rng.random((5, 5))
    jobs.append(render.FigureJob("heat", figures.heatmap,
                                 {"matrix": m + m.T, "labels": list("abcde"), "n_models": [1] * 5,
                                  "n_filters": [10] * 5, "small": [False] * 5, "order": np.arange(5),
                                  "title": "t", "metric": "kl_sym"}, "heat", ("png", "svg"), False, 60))
    return jobs


def _files(d: Path) -> dict:
    return {p.name: p.read_bytes() for p in sorted(d.iterdir())}


def test_workers_write_the_bytes_the_report_process_would(tmp_path, monkeypatch):
    jobs = _jobs()
    here, there = tmp_path / "here", tmp_path / "there"
    here.mkdir()
    there.mkdir()
    monkeypatch.setenv("FILTERSHIFT_FIGURE_PROCESSES", "0")
    seen = []
    want = render.render(jobs, here, on_done=lambda job: seen.append(job.key))
    monkeypatch.setenv("FILTERSHIFT_FIGURE_PROCESSES", "2")
    got = render.render(jobs, there, on_done=lambda job: seen.append(job.key))
    assert len(render._pool(2)) == 2 and all(w.alive() for w in render._pool(2))
    assert got == want and list(got) == [j.key for j in jobs]
    assert want["heat"] == {"png": "heat.png"}                  # no SVG for a raster figure
    assert sorted(seen) == sorted([j.key for j in jobs] * 2)
    assert _files(there) == _files(here) and len(_files(here)) == 2 * len(jobs) - 1
    assert _files(here)["ev-0.png"].startswith(b"\x89PNG") and b"<svg" in _files(here)["ev-0.svg"]


def test_a_failing_figure_is_an_error_naming_it(tmp_path, monkeypatch):
    monkeypatch.setenv("FILTERSHIFT_FIGURE_PROCESSES", "2")
    bad = render.FigureJob("broken", figures.explained_variance, {"ratio": "not numbers"}, "broken", ("png",),
                           True, 60)
    with pytest.raises(render.RenderError, match=r"(?s)figure 'broken' could not be drawn.*Traceback"):
        render.render([*_jobs(), bad], tmp_path)
    assert render.render(_jobs(), tmp_path)                     # the workers are still usable


def test_a_dead_worker_is_an_error_and_is_replaced(tmp_path, monkeypatch):
    monkeypatch.setenv("FILTERSHIFT_FIGURE_PROCESSES", "2")
    first = render._pool(2)
    first[0].proc.kill()
    first[0].proc.wait()
    with pytest.raises(render.RenderError, match=r"the process drawing figure .* ended"):
        first[0].draw(_jobs(1)[0])
    assert render.render(_jobs(), tmp_path)
    assert all(w.alive() for w in render._pool(2)) and first[0] not in render._pool(2)


def test_workers_exit_with_a_killed_report_process(tmp_path):
    script = ("from filtershift.report import render\n"
              "print(*[w.proc.pid for w in render._pool(2)], flush=True)\n"
              "import time; time.sleep(600)\n")
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    pids = [int(p) for p in proc.stdout.readline().split()]
    assert len(pids) == 2
    proc.send_signal(signal.SIGKILL)
    proc.wait(30)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and any(_running(p) for p in pids):
        time.sleep(0.1)
    assert not any(_running(p) for p in pids), "a figure process outlived the killed report"


def _running(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][0] != "Z"
    except FileNotFoundError:
        return False


def test_a_script_without_a_main_guard_draws_once(tmp_path):
    """multiprocessing's spawn would import this script again in each worker (and draw, or report, again)."""
    script = tmp_path / "plain.py"
    script.write_text("import os\n"
                      "from pathlib import Path\n"
                      "from filtershift.report import render\n"
                      "import test_render\n"
                      f"out = Path({str(tmp_path)!r}) / 'figs'\n"
                      "out.mkdir()\n"
                      "print(sorted(render.render(test_render._jobs(), out)))\n")
    env = {**os.environ, "FILTERSHIFT_FIGURE_PROCESSES": "2",
           "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests")])}
    done = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip() == str(sorted([j.key for j in _jobs()]))
    assert len(list((tmp_path / "figs").iterdir())) == 2 * len(_jobs()) - 1


@pytest.mark.parametrize("value", ["-1", "two", "1.5"])
def test_the_process_count_is_validated(monkeypatch, value):
    monkeypatch.setenv("FILTERSHIFT_FIGURE_PROCESSES", value)
    with pytest.raises(InputError, match="FILTERSHIFT_FIGURE_PROCESSES must be a whole number"):
        render.processes()


def test_a_few_figures_are_drawn_without_workers(tmp_path, monkeypatch):
    monkeypatch.setenv("FILTERSHIFT_FIGURE_PROCESSES", "2")
    monkeypatch.setattr(render, "_workers", [])
    render.start(render.MIN_FIGURES - 1)
    assert set(render.render(_jobs(2), tmp_path)) == {"ev0", "ev1", "heat"}
    assert render._workers == []
    render.start(render.MIN_FIGURES)
    assert len(render._workers) == 2
    for worker in render._workers:
        worker.close()


def test_reports_in_two_threads_share_the_workers(tmp_path, monkeypatch):
    """Two threads drawing at once (two reports of one process) take turns on each worker's pipes."""
    import threading

    monkeypatch.setenv("FILTERSHIFT_FIGURE_PROCESSES", "2")
    results, dirs = {}, {}
    for name in ("a", "b"):
        dirs[name] = tmp_path / name
        dirs[name].mkdir()

    def run(name):
        results[name] = render.render(_jobs(), dirs[name])

    threads = [threading.Thread(target=run, args=(n,)) for n in dirs]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert results["a"] == results["b"] and len(results["a"]) == len(_jobs())
    assert _files(dirs["a"]) == _files(dirs["b"])
