import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
os.environ.setdefault("FILTERSHIFT_PROGRESS", "0")

from _cluster_fixtures import local_cluster, local_cluster_processes, local_processes  # noqa: E402,F401
