"""URLs in settings: each namespace's queue, passwords found, redacted and placed.

A password may sit in the user info (``redis://:pw@host``) or in the query
(``redis://host?password=pw``, as redis-py reads it). :func:`redact_url` hides both (and any
query value whose key names a secret), :func:`url_passwords` lists them for scrubbing error
text, and :func:`password_in_userinfo` moves ``?password=`` into the user info, the only
place kombu reads it (given in the query, kombu raises ``TypeError`` at worker start).

A broker behind Redis Sentinel is written either as kombu spells it
(``sentinel://[[user]:pw@]host:port[;sentinel://host:port...][/<db>]``, the service name in
``broker_master_name``) or as the store's URL is
(``redis+sentinel://[[user]:pw@]host:port[,host:port...]/<service>[/<db>]``, TLS:
``rediss+sentinel://``); :func:`sentinel_broker` turns either into one ``sentinel://`` URL
(the first sentinel, the credentials, the database) and the list of every sentinel, which the
transport takes as an option: a kombu connection given several ``;``-joined URLs builds
kombu's own transport from the next URL's scheme when it fails over, and would leave this
project's. Several URLs joined by ``;`` are redacted one by one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final
from urllib.parse import SplitResult, parse_qsl, quote, unquote, urlencode, urlsplit, urlunsplit

from pydantic import SecretStr

__all__ = [
    "DEFAULT_QUEUE",
    "SENTINEL_BROKER_SCHEMES",
    "SentinelBroker",
    "password_in_userinfo",
    "query_problem",
    "queue_for",
    "redact_url",
    "sentinel_broker",
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
#: Schemes of a broker behind Redis Sentinel: kombu's, and the store's spelling.
SENTINEL_BROKER_SCHEMES: Final = frozenset({"sentinel", "redis+sentinel", "rediss+sentinel"})
_SENTINEL_PORT: Final = 26379
#: Query keys of a Sentinel broker URL: the sentinels' own credentials.
_SENTINEL_CREDENTIALS: Final = ("sentinel_username", "sentinel_password")


def queue_for(namespace: str) -> str:
    """The queue of ``namespace`` when ``queue`` is not set: ``agents_persistence`` for the
    default namespace ``agents`` (its name before namespaces had their own, so a rolling
    upgrade strands nothing), ``agents_persistence.<namespace>`` for any other."""
    return DEFAULT_QUEUE if namespace == _DEFAULT_NAMESPACE else f"{DEFAULT_QUEUE}.{namespace}"


def _is_secret(key: str) -> bool:
    return any(word in key.lower() for word in _SECRET_WORDS)


def redact_url(url: str | SecretStr | None) -> str:
    """Return ``url`` with every password replaced by ``***``: the user info's, and any
    query value whose key names a secret (``?password=``, ``?sentinel_password=``...).
    URLs joined by ``;`` (kombu's list of sentinels) are redacted one by one."""
    if url is None:
        return "-"
    raw = url.get_secret_value() if isinstance(url, SecretStr) else url
    if ";" in raw:
        return ";".join(redact_url(part) for part in raw.split(";"))
    try:
        parts = urlsplit(raw)
        if parts.password is not None:
            if "," not in parts.netloc:
                parts.port  # noqa: B018 - raises ValueError on a malformed port
            user = parts.netloc.rpartition("@")[0].partition(":")[0]
            hosts = parts.netloc.rpartition("@")[2]
            parts = parts._replace(netloc=f"{user}:***@{hosts}")
        pairs = parse_qsl(parts.query, keep_blank_values=True)
        if any(_is_secret(k) for k, _ in pairs):
            hidden = [(k, "***" if _is_secret(k) else v) for k, v in pairs]
            parts = parts._replace(query=urlencode(hidden, safe="*"))
        return urlunsplit(parts)
    except ValueError:
        return "<unparseable url>"


def url_passwords(url: str) -> list[str]:
    """Every secret ``url`` carries, as written and percent-decoded, longest first: the
    strings that must never be printed (of every URL, when several are joined by ``;``)."""
    if ";" in url:
        every = {secret for part in url.split(";") for secret in url_passwords(part)}
        return sorted(every, key=len, reverse=True)
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


@dataclass(frozen=True)
class SentinelBroker:
    """A broker behind Redis Sentinel, in kombu's terms (``repr`` shows no password).

    Attributes:
        url: kombu's spelling for the first sentinel, with the data nodes' credentials, the
            database and the ``ssl_*`` options.
        sentinels: every sentinel's (host, port).
        master_name: the sentinels' name of the primary, if the URL gives it
            (``redis+sentinel://.../<service>``); kombu's spelling has none.
        tls: the data nodes (and the sentinels) speak TLS.
        sentinel_options: credentials of the sentinels themselves (``username``,
            ``password``), from ``?sentinel_username=`` / ``?sentinel_password=``.
        ssl_options: the ``ssl_*`` query options, for the sentinels' connections too.
    """

    url: str = field(repr=False)
    sentinels: tuple[tuple[str, int], ...]
    master_name: str | None
    tls: bool = False
    sentinel_options: dict[str, str] = field(default_factory=dict, repr=False)
    ssl_options: dict[str, str] = field(default_factory=dict)


def _sentinel_host(item: str) -> tuple[str, int]:
    """(host, port) of one sentinel (the default port if none), or ValueError."""
    item = item.strip()
    if not item:
        raise ValueError("has an empty host")
    if item.startswith("["):  # [IPv6]:port
        host, _, rest = item.partition("]")
        host, port_text = host + "]", rest.removeprefix(":")
    else:
        host, _, port_text = item.rpartition(":") if ":" in item else (item, "", "")
    if host in ("", "[]"):
        raise ValueError("has an empty host")
    if port_text and not (port_text.isdigit() and 0 < int(port_text) < 65536):
        raise ValueError("has an invalid port")
    return host.removeprefix("[").removesuffix("]"), int(port_text or _SENTINEL_PORT)


def _database(segment: str) -> str:
    if not segment.isdigit():
        raise ValueError("names a database that is not a number")
    return segment


def sentinel_broker(raw: str) -> SentinelBroker | None:
    """``raw`` as a Sentinel broker in kombu's spelling; None if it is no Sentinel URL.

    Raises:
        ValueError: a Sentinel URL that cannot be used; the message holds no part of it.
    """
    scheme = raw.partition("://")[0].lower()
    if scheme not in SENTINEL_BROKER_SCHEMES:
        return None
    urls = [u for u in raw.split(";") if u.strip()]
    userinfo, master, database = "", None, ""
    hosts: list[tuple[str, int]] = []
    pairs: list[tuple[str, str]] = []
    if scheme == "sentinel":
        for url in urls:
            parts = urlsplit(url.strip())
            if parts.scheme.lower() != "sentinel":
                raise ValueError("joins sentinel:// URLs with URLs of another scheme")
            given, at, host = parts.netloc.rpartition("@")
            userinfo = userinfo or (given if at else "")
            hosts.append(_sentinel_host(host))
            path = [p for p in parts.path.split("/") if p]
            if len(path) > 1:
                raise ValueError("has a path other than /<db> (the service: broker_master_name)")
            database = database or (_database(path[0]) if path else "")
            pairs = pairs or parse_qsl(parts.query, keep_blank_values=True)
    else:
        if len(urls) != 1:
            raise ValueError("lists its sentinels with commas, not as ;-joined URLs")
        parts = urlsplit(raw)
        given, at, netloc_hosts = parts.netloc.rpartition("@")
        userinfo = given if at else ""
        hosts = [_sentinel_host(h) for h in netloc_hosts.split(",")]
        path = [unquote(p) for p in parts.path.split("/") if p]
        if not path or len(path) > 2:
            raise ValueError(f"must name the primary's service: {scheme}://host:port/<service>")
        master = path[0]
        database = _database(path[1]) if len(path) == 2 else ""
        pairs = parse_qsl(parts.query, keep_blank_values=True)
    passwords = [v for k, v in pairs if k == "password"]
    if passwords:
        if ":" in userinfo or len(passwords) > 1:
            raise ValueError("gives its password more than once")
        userinfo = f"{userinfo}:{quote(passwords[0], safe='')}"
    sentinel_options = {
        k.removeprefix("sentinel_"): v for k, v in pairs if k in _SENTINEL_CREDENTIALS and v
    }
    ssl_options = {k: v for k, v in pairs if k.startswith("ssl_")}
    other = sorted({k for k, _ in pairs} - {"password", *_SENTINEL_CREDENTIALS, *ssl_options})
    if other:
        raise ValueError(
            f"sets {', '.join(other)} in its query (a Sentinel broker URL takes ssl_* options, "
            "password, sentinel_username and sentinel_password)"
        )
    creds = f"{userinfo}@" if userinfo else ""
    query = f"?{urlencode(ssl_options)}" if ssl_options else ""
    host, port = hosts[0]
    shown = f"[{host}]" if ":" in host else host
    return SentinelBroker(
        url=f"sentinel://{creds}{shown}:{port}/{database or 0}{query}",
        sentinels=tuple(hosts),
        master_name=master,
        tls=scheme == "rediss+sentinel" or bool(ssl_options),
        sentinel_options=sentinel_options,
        ssl_options=ssl_options,
    )
