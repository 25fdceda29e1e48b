"""Credentials out of messages and logs: the one place that decides what text may show of a URL or an error.

Three kinds of secret are removed: user info of URLs (``scheme://user:secret@host``), query strings of addresses
(``?token=...``, signed URLs) and the values of credential-like storage options (``key``, ``secret``, ``token``,
...). The store, the output locations and the cluster code all call these functions; none keeps its own regex.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

#: User info of a URL given on its own (a store or output URL, a scheduler address): the authority after ``//``
#: up to its last ``@`` (a password may hold an unescaped ``@``).
_URL_USERINFO = re.compile(r"//[^/?#]*@")
#: User info inside free text (a library's error message): a run up to its last ``@`` that starts a token (after
#: ``//``, a blank, a quote, a bracket, ``=`` or ``,``), so a path such as ``/data/run@2/x`` is left alone.
_TEXT_USERINFO = re.compile(r"(?:(?<=//)|(?<![^\s'\"(\[<=,]))[^\s/'\"?#]+@")
#: A query string with at least one ``key=value`` (tokens, signatures).
_QUERY = re.compile(r"\?[^\s'\"]*=[^\s'\"]*")
_SECRET_OPTION = re.compile(r"key|secret|token|password|credential|sas", re.IGNORECASE)


def url(text: str, *, query: bool = False) -> str:
    """``text``, one URL or address, without user info; without its query string too when ``query``.

    Parameters
    ----------
    text : str
        A URL (``s3://key:secret@bucket/x``) or a scheduler address (``tls://user:secret@host:8786``).
    query : bool, default False
        Also drop everything from the first ``?`` (addresses carry tokens there).

    Returns
    -------
    str
        The URL safe to print or log.
    """
    text = _URL_USERINFO.sub("//", str(text))
    return text.split("?", 1)[0] if query else text


def scrub(text: str, secrets: Iterable[str] = ()) -> str:
    """Free text (a library's error message) without ``secrets``, user info of URLs and query strings in it.

    Parameters
    ----------
    text : str
        The text to clean.
    secrets : iterable of str, optional
        Values to mask as ``***`` wherever they occur (see :func:`secret_values`).

    Returns
    -------
    str
        The text safe for a message.
    """
    text = str(text)
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return _QUERY.sub("", _TEXT_USERINFO.sub("", text))


def secret_values(options) -> list[str]:
    """String values of credential-like options (``key``, ``secret``, ``token``, ...), nested dicts too.

    Parameters
    ----------
    options : dict or None
        fsspec storage options.

    Returns
    -------
    list of str
        The values :func:`scrub` masks (values shorter than 4 characters are not secrets worth masking).
    """
    found = []
    for name, value in (options.items() if isinstance(options, dict) else ()):
        if isinstance(value, dict):
            found += secret_values(value)
        elif isinstance(value, str) and len(value) >= 4 and _SECRET_OPTION.search(str(name)):
            found.append(value)
    return found
