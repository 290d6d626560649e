"""URLs in settings: each namespace's queue, passwords found, redacted and placed.

A password may sit in the user info (``redis://:pw@host``) or in the query
(``redis://host?password=pw``, as redis-py reads it). :func:`redact_url` hides both (and any
query value whose key names a secret), :func:`url_passwords` lists them for scrubbing error
text, and :func:`password_in_userinfo` moves ``?password=`` into the user info, the only
place kombu reads it (given in the query, kombu raises ``TypeError`` at worker start).
"""

from __future__ import annotations

from typing import Final
from urllib.parse import SplitResult, parse_qsl, quote, unquote, urlencode, urlsplit, urlunsplit

from pydantic import SecretStr

__all__ = [
    "DEFAULT_QUEUE",
    "password_in_userinfo",
    "query_problem",
    "queue_for",
    "redact_url",
    "url_passwords",
]

#: The queue of the default namespace (and of every namespace before each had its own).
DEFAULT_QUEUE: Final = "agents_persistence"
_DEFAULT_NAMESPACE: Final = "agents"
#: Query keys whose values are secrets (matched as substrings, case-insensitively).
_SECRET_WORDS: Final = ("password", "passwd", "secret", "token")
#: Query keys kombu's URL parser sets itself: a URL giving one makes kombu raise TypeError
#: when a worker starts (``?password=`` is moved into the user info, not refused).
_KOMBU_OWN_KEYS: Final = frozenset({"transport", "hostname", "port", "userid", "virtual_host"})


def queue_for(namespace: str) -> str:
    """The queue of ``namespace`` when ``queue`` is not set: ``agents_persistence`` for the
    default namespace ``agents`` (its name before namespaces had their own, so a rolling
    upgrade strands nothing), ``agents_persistence.<namespace>`` for any other."""
    return DEFAULT_QUEUE if namespace == _DEFAULT_NAMESPACE else f"{DEFAULT_QUEUE}.{namespace}"


def _is_secret(key: str) -> bool:
    return any(word in key.lower() for word in _SECRET_WORDS)


def redact_url(url: str | SecretStr | None) -> str:
    """Return ``url`` with every password replaced by ``***``: the user info's, and any
    query value whose key names a secret (``?password=``, ``?sentinel_password=``...)."""
    if url is None:
        return "-"
    raw = url.get_secret_value() if isinstance(url, SecretStr) else url
    try:
        parts = urlsplit(raw)
        if parts.password is not None:
            host = parts.hostname or ""
            if parts.port is not None:
                host = f"{host}:{parts.port}"
            parts = parts._replace(netloc=f"{parts.username or ''}:***@{host}")
        pairs = parse_qsl(parts.query, keep_blank_values=True)
        if any(_is_secret(k) for k, _ in pairs):
            hidden = [(k, "***" if _is_secret(k) else v) for k, v in pairs]
            parts = parts._replace(query=urlencode(hidden, safe="*"))
        return urlunsplit(parts)
    except ValueError:
        return "<unparseable url>"


def url_passwords(url: str) -> list[str]:
    """Every secret ``url`` carries, as written and percent-decoded, longest first: the
    strings that must never be printed."""
    try:
        parts = urlsplit(url)
        found = [parts.password or ""]
    except ValueError:
        return []
    for pair in parts.query.split("&"):
        key, _, value = pair.partition("=")
        if _is_secret(unquote(key)):
            found.append(value)
    found += [unquote(s) for s in found] + [unquote(s.replace("+", " ")) for s in found]
    return sorted({s for s in found if s}, key=len, reverse=True)


def query_problem(parts: SplitResult) -> str | None:
    """Why the query of a URL cannot be used (a password given twice, a key kombu sets
    itself), or None."""
    keys = [k for k, _ in parse_qsl(parts.query, keep_blank_values=True)]
    if "password" in keys and (parts.password is not None or keys.count("password") > 1):
        return "gives its password more than once"
    clashing = sorted(_KOMBU_OWN_KEYS.intersection(keys))
    if clashing:
        return f"sets {', '.join(clashing)} in its query (kombu refuses it)"
    return None


def password_in_userinfo(raw: str) -> str:
    """``raw`` with a ``?password=`` value moved into the user info; unchanged without one."""
    parts = urlsplit(raw)
    pairs = parse_qsl(parts.query, keep_blank_values=True)
    passwords = [v for k, v in pairs if k == "password"]
    if not passwords:
        return raw
    rest = urlencode([(k, v) for k, v in pairs if k != "password"])
    userinfo, _, host = parts.netloc.rpartition("@")
    user = userinfo.partition(":")[0]
    netloc = f"{user}:{quote(passwords[-1], safe='')}@{host}"
    return urlunsplit(parts._replace(netloc=netloc, query=rest))
