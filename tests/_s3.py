"""moto's S3 server on 127.0.0.1 for tests that read or write object storage, with fake credentials in the
environment; ``AWS_ENDPOINT_URL`` points at it, so the command line reaches it as a user's does."""

from __future__ import annotations

import logging
import threading
from contextlib import contextmanager
from dataclasses import dataclass

import pytest

KEY_ID = "AKIAFILTERSHIFT0TEST"
SECRET = "fs-Secret-7d1e9c-never-printed"
BUCKET = "filtershift-test"


@dataclass
class S3Server:
    endpoint: str
    bucket: str

    def options(self, **extra) -> dict:
        """fsspec storage options for the server (explicit, for processes started before the environment)."""
        return {"endpoint_url": self.endpoint, "key": KEY_ID, "secret": SECRET,
                "client_kwargs": {"region_name": "us-east-1"}, **extra}

    def fs(self):
        import s3fs

        return s3fs.S3FileSystem(**self.options(), skip_instance_cache=True)


@contextmanager
def moto_server(wrap=None):
    """moto's S3 on 127.0.0.1 in a thread of this process; yields its endpoint. ``wrap(app)`` may put WSGI middleware
    in front (denied keys, slow reads). moto's state is the process's: every server here sees the same buckets."""
    from moto.moto_server.werkzeug_app import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
    from werkzeug.serving import make_server

    werkzeug_log = logging.getLogger("werkzeug")
    level = werkzeug_log.level
    werkzeug_log.setLevel(logging.ERROR)                 # one line per request otherwise
    app = DomainDispatcherApplication(create_backend_app)
    server = make_server("127.0.0.1", 0, wrap(app) if wrap else app, threaded=True,
                         request_handler=MotoRequestHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        thread.join(10)
        werkzeug_log.setLevel(level)


@contextmanager
def moto_s3(home, bucket: str = BUCKET, *, endpoint_variable: str | None = "AWS_ENDPOINT_URL",
            env: dict | None = None, wrap=None):
    """Start the server (``wrap``: see :func:`moto_server`), set the AWS variables (credentials, region, the
    endpoint in ``endpoint_variable`` unless None, and ``env``) and create ``bucket``."""
    import boto3

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AWS_ACCESS_KEY_ID", KEY_ID)
        mp.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
        mp.setenv("AWS_DEFAULT_REGION", "us-east-1")
        mp.setenv("AWS_EC2_METADATA_DISABLED", "true")         # never ask a link-local metadata service
        mp.setenv("AWS_CONFIG_FILE", str(home / "config"))
        mp.setenv("AWS_SHARED_CREDENTIALS_FILE", str(home / "credentials"))
        for name, value in (env or {}).items():
            mp.setenv(name, value)
        for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
            mp.delenv(name, raising=False)
        with moto_server(wrap) as endpoint:
            if endpoint_variable:
                mp.setenv(endpoint_variable, endpoint)
            boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket=bucket)
            yield S3Server(endpoint, bucket)
