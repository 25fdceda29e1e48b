"""deploy/: the compose file against the Compose Specification schema, the Kubernetes manifests against the
Kubernetes API schemas, the cross-file facts they rely on, and local-cluster.sh run for real on 127.0.0.1."""

import copy
import importlib.util
import json
import os
import re
import subprocess
import sys
from importlib import resources
from pathlib import Path

import dask.array as da
import kubernetes_validate
import numpy as np
import pytest
import tomllib
import yaml
from dask.utils import parse_bytes
from jsonschema import validators

from filtershift.cluster import scheduler_context

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
K8S_VERSION = "1.33.0"
REPORT = ["filtershift", "report", "/data/db.zarr", "--out", "/data/reports", "--scheduler", "tcp://scheduler:8786"]


def _compose_validator():
    text = resources.files("check_jsonschema.builtin_schemas.vendor").joinpath("compose-spec.json").read_text()
    schema = json.loads(text)
    cls = validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema, format_checker=cls.FORMAT_CHECKER)


@pytest.fixture(scope="module")
def compose():
    return yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())


def _quantity(text: str) -> int:
    """A Kubernetes memory quantity (binary or decimal suffix) in bytes."""
    m = re.fullmatch(r"(\d+)(Ki|Mi|Gi|Ti|k|M|G|T)?", str(text))
    assert m, text
    scale = {None: 1, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "k": 10**3, "M": 10**6, "G": 10**9,
             "T": 10**12}[m.group(2)]
    return int(m.group(1)) * scale


def _arg(args: list, flag: str) -> str:
    return args[args.index(flag) + 1]


def test_compose_validates_against_compose_spec(compose):
    v = _compose_validator()
    assert [e.message for e in v.iter_errors(compose)] == []
    typo = copy.deepcopy(compose)
    typo["services"]["worker"]["comand"] = typo["services"]["worker"].pop("command")
    assert list(v.iter_errors(typo))


def test_compose_services_fit_together(compose):
    s = compose["services"]
    assert set(s) == {"scheduler", "worker", "report"}
    assert s["report"]["command"] == REPORT
    sched = s["scheduler"]["command"]
    assert sched[:2] == ["dask", "scheduler"] and _arg(sched, "--port") == "8786"
    worker = s["worker"]["command"]
    assert worker[:3] == ["dask", "worker", "tcp://scheduler:8786"]
    assert _arg(worker, "--memory-limit") == s["worker"]["deploy"]["resources"]["limits"]["memory"]
    assert parse_bytes(re.sub(r"\$\{\w+:-(.+)\}", r"\1", _arg(worker, "--memory-limit"))) == 4 * 2**30
    assert s["worker"]["deploy"]["replicas"] >= 1
    for name in s:
        assert "${FILTERSHIFT_DATA:-store}:/data" in s[name]["volumes"]
        assert s[name]["image"] == s["scheduler"]["image"]
    assert "store" in compose["volumes"]
    assert s["report"]["restart"] == "no"
    published = s["scheduler"]["ports"]
    assert all(p.startswith("127.0.0.1:") for p in published)


def test_dockerfile_one_nonroot_image_with_s3_extra():
    text = (DEPLOY / "Dockerfile").read_text()
    users = re.findall(r"^USER\s+(\S+)", text, re.M)
    assert users and users[-1].split(":")[0] not in ("root", "0")
    assert re.search(r"^ARG FILTERSHIFT_EXTRAS=s3$", text, re.M)
    assert 'pip install ".[${FILTERSHIFT_EXTRAS}]"' in text
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert "s3fs" in " ".join(extras["s3"])
    for src in re.findall(r"^COPY\s+(.+)\s+\S+$", text, re.M):
        for path in src.split():
            assert (ROOT / path).exists(), path


def test_kubernetes_manifests_validate_against_api_schemas():
    for doc in yaml.safe_load_all((DEPLOY / "kubernetes" / "report-cronjob.yaml").read_text()):
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    dc = yaml.safe_load((DEPLOY / "kubernetes" / "daskcluster.yaml").read_text())
    assert (dc["apiVersion"], dc["kind"]) == ("kubernetes.dask.org/v1", "DaskCluster")
    for part in ("worker", "scheduler"):
        pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": part}, "spec": dc["spec"][part]["spec"]}
        kubernetes_validate.validate(pod, K8S_VERSION, strict=True)
    svc = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "s"}, "spec": dc["spec"]["scheduler"]["service"]}
    kubernetes_validate.validate(svc, K8S_VERSION, strict=True)
    bad = copy.deepcopy(pod)
    bad["spec"]["containers"][0]["resource"] = bad["spec"]["containers"][0].pop("resources")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, K8S_VERSION, strict=True)


def test_kubernetes_worker_limit_matches_and_cronjob_reaches_cluster():
    dc = yaml.safe_load((DEPLOY / "kubernetes" / "daskcluster.yaml").read_text())
    worker = dc["spec"]["worker"]["spec"]["containers"][0]
    limit = parse_bytes(_arg(worker["args"], "--memory-limit"))
    resources = worker["resources"]
    assert limit == _quantity(resources["requests"]["memory"]) == _quantity(resources["limits"]["memory"])
    assert worker["args"][:2] == ["dask", "worker"]
    sched = dc["spec"]["scheduler"]
    assert sched["service"]["selector"] == {"dask.org/cluster-name": dc["metadata"]["name"],
                                            "dask.org/component": "scheduler"}
    comm_port = next(p["port"] for p in sched["service"]["ports"] if p["targetPort"] == "tcp-comm")
    docs = {d["kind"]: d for d in yaml.safe_load_all((DEPLOY / "kubernetes" / "report-cronjob.yaml").read_text())}
    pod = docs["CronJob"]["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    args = pod["containers"][0]["args"]
    assert args[:2] == ["filtershift", "report"] and "--out" in args
    ns, name = dc["metadata"]["namespace"], dc["metadata"]["name"]
    assert _arg(args, "--scheduler") == f"tcp://{name}-scheduler.{ns}.svc.cluster.local:{comm_port}"
    assert docs["CronJob"]["metadata"]["namespace"] == ns == docs["PersistentVolumeClaim"]["metadata"]["namespace"]
    assert pod["volumes"][0]["persistentVolumeClaim"]["claimName"] == docs["PersistentVolumeClaim"]["metadata"]["name"]
    assert pod["containers"][0]["image"] == worker["image"] == sched["spec"]["containers"][0]["image"]
    assert pod["securityContext"]["runAsUser"] == 10001


def test_slurm_example_parses_and_scripts_are_valid_bash():
    spec = importlib.util.spec_from_file_location("slurm_report", DEPLOY / "slurm" / "slurm_report.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    args = module.parse_args(["/s/db.zarr", "--out", "/s/r", "--jobs", "3", "--memory", "16GiB", "--processes", "2"])
    assert (args.store, args.out, args.jobs) == ("/s/db.zarr", "/s/r", 3)
    assert parse_bytes(args.memory) // args.processes == 8 * 2**30
    for script in ("local-cluster.sh", "slurm/report.sbatch"):
        subprocess.run(["bash", "-n", str(DEPLOY / script)], check=True)


def test_local_cluster_script_start_compute_stop(tmp_path):
    env = dict(os.environ, DASK=f"{sys.executable} -m dask",
               PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    script = [str(DEPLOY / "local-cluster.sh")]
    state = tmp_path / "cluster"

    def run(*args, check=True):
        return subprocess.run(script + list(args) + ["-d", str(state)], env=env, capture_output=True, text=True,
                              timeout=60, check=check)

    try:
        out = run("start", "-n", "1", "-p", "0", "-t", "1").stdout
        address = re.search(r"^scheduler (tcp://127\.0\.0\.1:\d+)$", out, re.M).group(1)
        pids = [int((state / f).read_text()) for f in ("scheduler.pid", "worker-0.pid")]
        data = np.arange(5000.0).reshape(500, 10)
        with scheduler_context(str(state / "scheduler.json"), quiet=True) as conn:
            assert conn.address == address
            np.testing.assert_array_equal(da.from_array(data, chunks=(100, 10)).sum(axis=0).compute(),
                                          data.sum(axis=0))
            workers = conn.client.scheduler_info(n_workers=-1)["workers"]
        mem_total = int(re.search(r"^MemTotal:\s+(\d+) kB", Path("/proc/meminfo").read_text(), re.M).group(1)) * 1024
        assert [w["memory_limit"] for w in workers.values()] == [round(0.8 * mem_total)]
        assert "workers running 1" in run("status").stdout
    finally:
        run("stop", check=False)
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    assert run("status", check=False).returncode != 0
    assert not (state / "scheduler.json").exists()
