"""Output locations given by the user (``--out``, ``--figure``, ``DST``): a local path or an fsspec URL.

A URL (``s3://``, ``gs://``, ``az://``, ``memory://``, ...) is written through fsspec as whole objects: one PUT
per file, which object stores make visible at once (a reader sees the old object or the new one). A local path is
written through a temporary file and ``os.replace``. A string that names a URL is never used as a local path:
``Path("s3://b/x")`` collapses to ``s3:/b/x`` and would create a directory named ``s3:``; such paths, schemes fsspec
does not know, schemes whose package is missing and read-only schemes are refused with the option's name.
"""

from __future__ import annotations

import mimetypes
import os
import re
from contextlib import contextmanager
from pathlib import Path

import fsspec

from filtershift import credentials
from filtershift.errors import InputError, reason

_URL = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
#: fsspec schemes that can only read.
READ_ONLY = frozenset({"http", "https", "github", "git", "tar", "reference", "data", "libarchive", "jlab",
                       "jupyter", "hf"})
SUPPORTED = "a local path, or a URL fsspec can write (s3://, gs://, az://, memory://, file://, ...)"


def scheme(text) -> str | None:
    """The lower-case URL scheme of ``text`` (``"s3"``), or None for a plain path."""
    m = _URL.match(str(text))
    return m.group(1).lower() if m else None


def is_url(text) -> bool:
    """True for a URL written through fsspec (any scheme but ``file://``)."""
    return scheme(text) not in (None, "file")


def _known(name: str) -> bool:
    return name.lower() in fsspec.available_protocols()


def check(text, option: str, *, write: bool = True) -> str:
    """``text`` as a checked location: a URL whose scheme fsspec can write (or read, ``write=False``), or a local
    path with no component named after a scheme (``s3:``: a URL that lost its ``//``). ``file://`` URLs become
    local paths. Raises InputError naming ``option``."""
    text = str(text)
    name = scheme(text)
    supported = SUPPORTED if write else SUPPORTED.replace("can write", "can open")
    if name == "file":
        text = text[len("file://"):]
    elif name is not None:
        try:
            fsspec.get_filesystem_class(name)
        except ImportError as exc:
            raise InputError(f"{option} {display(text)}: the {name}:// scheme needs a package that is not installed "
                             f"({exc}); install it, or give {supported}.") from None
        except ValueError:
            raise InputError(f"{option} {display(text)}: unknown URL scheme {name}://; give {supported}.") from None
        if write and name in READ_ONLY:
            raise InputError(f"{option} {display(text)}: {name}:// is read-only; give {SUPPORTED}.")
        return text
    for part in Path(text).parts:
        if part.endswith(":") and _known(part[:-1]):
            raise InputError(f"{option} {text}: the path has a component {part!r}, a URL scheme that lost its "
                             f"'//' (a URL passed through pathlib?); write {part}//... for a URL, or choose a "
                             "local name without it.")
    return text


def local_path(text, option: str) -> Path:
    """A checked local path for outputs that cannot go to a URL (``synth``, ``demo``); URLs are refused."""
    checked = check(text, option)
    if is_url(checked):
        raise InputError(f"{option} {display(checked)}: this output must be a local path; URLs are not "
                         "supported here (write locally, then copy).")
    return Path(checked)


def display(url: str) -> str:
    """The URL without credentials (``scheme://user:secret@host``), for messages."""
    return credentials.url(url)


def filesystem(url: str, storage_options: dict | None = None):
    """``(fs, path)`` of a URL (``storage_options``, else fsspec's config and the environment)."""
    with failures(url, "open"):
        return fsspec.core.url_to_fs(url, **(storage_options or {}))


@contextmanager
def failures(url: str, action: str, option: str = "output"):
    """Turn a failure to reach or write an output URL into an InputError naming it and the remedy (one line,
    no credentials); errors filtershift raised itself pass through."""
    from filtershift.errors import FiltershiftError

    try:
        yield
    except FiltershiftError:
        raise
    except NotImplementedError:
        raise InputError(f"{option} {display(url)}: this filesystem cannot {action} files; give {SUPPORTED}.") \
            from None
    except Exception as exc:  # noqa: BLE001 - any backend's failure becomes one InputError naming the URL
        text = credentials.scrub(" ".join(str(exc).split()) or reason(exc))
        raise InputError(f"{option} {display(url)}: cannot {action} ({text}). Check the URL, that the bucket "
                         "exists, the endpoint, the network and the credentials.") from None


def content_type(name: str) -> str:
    return mimetypes.guess_type(name)[0] or "application/octet-stream"


def put_object(fs, path: str, data: bytes, *, mode: str = "overwrite") -> None:
    """One whole-object write (a single PUT on object stores), with a content type where the store keeps one."""
    kwargs = {}
    protocols = {fs.protocol} if isinstance(fs.protocol, str) else set(fs.protocol)
    if protocols & {"s3", "s3a"}:
        kwargs["ContentType"] = content_type(path)
    elif protocols & {"gs", "gcs"}:
        kwargs["content_type"] = content_type(path)
    if mode == "overwrite":
        fs.pipe_file(path, data, **kwargs)
    else:
        fs.pipe_file(path, data, mode=mode, **kwargs)


def write_bytes(target, data: bytes, option: str, storage_options: dict | None = None) -> str:
    """Write ``data`` to ``target`` (checked with :func:`check`) atomically; returns the checked location.

    Local: the folder must exist; a temporary file in it is renamed over the target. URL: one PUT, with
    ``storage_options`` (fsspec)."""
    target = check(target, option)
    if is_url(target):
        with failures(target, "write", option):
            fs, path = fsspec.core.url_to_fs(target, **(storage_options or {}))
            put_object(fs, path, data)
        return target
    path = Path(target)
    if not path.parent.exists():
        raise InputError(f"{option} {target}: folder {path.parent} does not exist; create it or choose another "
                         "path.")
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    except OSError as exc:
        raise InputError(f"{option} {target}: cannot write it ({exc.strerror}); choose a writable path.") from None
    finally:
        tmp.unlink(missing_ok=True)
    return target
