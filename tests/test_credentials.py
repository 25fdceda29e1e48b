"""One credential scrubber (filtershift/credentials.py) behind the store's, the outputs' and the cluster's
messages: a password holding an unescaped '@' leaks no part, signed query strings in a library's error text are
dropped, and paths with an '@' in them are not mangled."""

import pytest

from filtershift import outputs
from filtershift.cluster import probe, redact
from filtershift.errors import FiltershiftError, InputError
from filtershift.store.format import Location


def test_a_password_with_an_at_sign_leaks_no_part():
    assert redact("tls://alice:p@ss@host:8786?token=x") == "tls://host:8786"
    assert Location.of("s3://key:p@ss@bucket/db.zarr").display == "s3://bucket/db.zarr"
    assert outputs.display("s3://key:p@ss@bucket/out") == "s3://bucket/out"
    with pytest.raises(FiltershiftError) as err:
        probe("tcp://al@ice:p@ss@127.0.0.1:notaport", 1.0)
    assert "p@ss" not in str(err.value) and "ss@" not in str(err.value) and "127.0.0.1" in str(err.value)


def test_store_and_output_errors_drop_signed_query_strings():
    loc = Location.of("s3://bucket/db.zarr", {"secret": "s3cret-value"})
    text = loc.scrub("GET https://bucket.host/db.zarr/zarr.json?X-Amz-Signature=abc123&X-Amz-Credential=AKIA "
                     "failed with s3cret-value")
    assert text == "GET https://bucket.host/db.zarr/zarr.json failed with ***"

    def fail():
        raise OSError("PUT https://u:pw@host/out/x.html?sig=abc123 refused")

    with pytest.raises(InputError) as err:
        with outputs.failures("s3://bucket/out", "write"):
            fail()
    message = str(err.value)
    assert "abc123" not in message and "pw@" not in message and "https://host/out/x.html refused" in message


def test_paths_with_an_at_sign_are_not_mangled():
    """The cluster's old rule (any run before an '@') would have cut 'run@' out of store messages."""
    loc = Location.of("/data/run@2/db.zarr")
    assert loc.display == "/data/run@2/db.zarr"
    assert loc.scrub("cannot read /data/run@2/db.zarr/weights/c/0") == "cannot read /data/run@2/db.zarr/weights/c/0"
