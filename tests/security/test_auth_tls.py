"""Auth and TLS: an ACL user (redis://user:pass@) and rediss:// URLs are accepted and used,
by the store and the broker, producer and worker alike."""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import redis
from agents_persistence import HandOffError, RedisCheckpointer, StoreUnavailable
from agents_persistence.config import Settings
from agents_persistence.tasks import CeleryCheckpointer, create_app

from tests.integration.conftest import WorkerFactory
from tests.support import RedisServer, free_port, sample_state
from tests.support.celery_worker import settings_env

ADMIN_PASSWORD = "admin-Zq8#pw"
USER = "agent_writer"
USER_PASSWORD = "u$er:p@ss/w0rd"  # characters that need quoting in a URL


def _acl_args() -> list[str]:
    return ["--user", USER, "on", f">{USER_PASSWORD}", "~*", "&*", "+@all"]


def _user_url(port: int, scheme: str = "redis", query: str = "") -> str:
    auth = f"{quote(USER, safe='')}:{quote(USER_PASSWORD, safe='')}"
    return f"{scheme}://{auth}@127.0.0.1:{port}/0{query}"


def _clients_of(admin: redis.Redis, user: str) -> list[dict[str, str]]:
    return [c for c in admin.client_list() if c.get("user") == user]


def _round_trip(
    settings: Settings, worker_factory: WorkerFactory, saves: int = 20
) -> RedisCheckpointer:
    """A worker and a client on ``settings``: hand off, flush, check every save landed."""
    store = RedisCheckpointer.from_settings(settings)
    worker_factory(settings_env(**_fields(settings)), concurrency=1)
    with CeleryCheckpointer(store, create_app(settings, store=store)) as client:
        for i in range(saves):
            client.save_state(f"t-{i}", sample_state(f"t-{i}"), version=i + 1)
        client.flush(30)
    for i in range(saves):
        assert store.load_state(f"t-{i}") == sample_state(f"t-{i}")
    return store


def _fields(settings: Settings) -> dict[str, object]:
    return {
        "redis_url": settings.redis_url,
        "broker_url": settings.broker_url,
        "namespace": settings.namespace,
        "queue": settings.queue,
    }


def _settings(url: str, **more: Any) -> Settings:
    tag = uuid.uuid4().hex[:8]
    return Settings(_env_file=None, redis_url=url, namespace=f"sec-{tag}", queue=f"sec-{tag}",
                    **more)  # fmt: skip


@pytest.mark.timeout(90)
def test_acl_user_for_store_and_broker(
    redis_server_factory: Callable[..., RedisServer], celery_worker_factory: WorkerFactory
) -> None:
    """A server with requirepass and an ACL user: store and broker URLs with the user's
    name and password work end to end, and every connection really is that user's."""
    server = redis_server_factory(requirepass=ADMIN_PASSWORD, extra_args=_acl_args())
    settings = _settings(_user_url(server.port))
    store = _round_trip(settings, celery_worker_factory)
    clients = _clients_of(server.client(), USER)
    assert clients, "no connection authenticated as the ACL user"
    assert not [c for c in server.client().client_list() if c.get("user") == "default"
                and c.get("cmd") not in {"client|list", "client"}]  # fmt: skip
    # A wrong password is refused with an error, not ignored.
    wrong = RedisCheckpointer.from_url(
        _user_url(server.port).replace(quote(USER_PASSWORD, safe=""), "nope")
    )
    with pytest.raises(redis.exceptions.AuthenticationError):
        wrong.load_state("t-0")
    store.close()


def _make_certs(directory: Path) -> tuple[Path, Path, Path]:
    """A throwaway CA and a server certificate for 127.0.0.1 signed by it."""
    ca_key, ca_crt = directory / "ca.key", directory / "ca.crt"
    key, csr, crt = directory / "server.key", directory / "server.csr", directory / "server.crt"
    ext = directory / "san.ext"
    ext.write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    run = [
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(ca_key),
         "-out", str(ca_crt), "-days", "1", "-subj", "/CN=test-ca"],
        ["openssl", "req", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out",
         str(csr), "-subj", "/CN=127.0.0.1"],
        ["openssl", "x509", "-req", "-in", str(csr), "-CA", str(ca_crt), "-CAkey", str(ca_key),
         "-CAcreateserial", "-out", str(crt), "-days", "1", "-extfile", str(ext)],
    ]  # fmt: skip
    for argv in run:
        subprocess.run(argv, check=True, capture_output=True, timeout=60)
    return ca_crt, crt, key


@pytest.fixture
def tls_server(
    redis_server_factory: Callable[..., RedisServer], tmp_path: Path
) -> tuple[RedisServer, int, Path]:
    """A redis-server with an ACL user and a TLS port (certificates from a throwaway CA)."""
    ca, crt, key = _make_certs(tmp_path)
    tls_port = free_port()
    server = redis_server_factory(
        requirepass=ADMIN_PASSWORD,
        extra_args=[
            *_acl_args(),
            "--tls-port", str(tls_port),
            "--tls-cert-file", str(crt),
            "--tls-key-file", str(key),
            "--tls-ca-cert-file", str(ca),
            "--tls-auth-clients", "no",
        ],
    )  # fmt: skip
    return server, tls_port, ca


@pytest.mark.timeout(90)
def test_rediss_for_store_and_broker(
    tls_server: tuple[RedisServer, int, Path], celery_worker_factory: WorkerFactory
) -> None:
    """rediss:// with the CA in the URL: the store and the broker (producer and worker)
    talk TLS to the TLS port, and the certificate is verified."""
    server, tls_port, ca = tls_server
    url = _user_url(tls_port, "rediss", f"?ssl_cert_reqs=required&ssl_ca_certs={ca}")
    settings = _settings(url)
    store = _round_trip(settings, celery_worker_factory)
    clients = _clients_of(server.client(), USER)
    assert clients
    ports = {c["laddr"].rsplit(":", 1)[1] for c in clients}
    assert ports == {str(tls_port)}, f"connections not on the TLS port: {clients}"
    store.close()


@pytest.mark.timeout(60)
def test_rediss_verifies_the_certificate(tls_server: tuple[RedisServer, int, Path]) -> None:
    """Without the CA (system trust only) the self-signed chain is refused: the store gives
    StoreUnavailable and a hand-off HandOffError; nothing is sent in clear or unverified."""
    _, tls_port, _ = tls_server
    url = _user_url(tls_port, "rediss")
    settings = _settings(
        url, retry_attempts=1, retry_deadline_seconds=1.0, publish_max_retries=0,
        publish_timeout_seconds=2.0,
    )  # fmt: skip
    store = RedisCheckpointer.from_settings(settings)
    with pytest.raises(StoreUnavailable, match="certificate verify failed"):
        store.load_state("t")
    client = CeleryCheckpointer(store, create_app(settings, store=store))
    with pytest.raises(HandOffError, match="certificate verify failed"):
        client.save_state("t", sample_state("t"))
    store.close()
