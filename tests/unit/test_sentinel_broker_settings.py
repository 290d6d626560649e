"""Brokers behind Redis Sentinel in Settings and the Celery configuration: both spellings,
the service name, the replica acks, TLS, a Redis Cluster refused, and no password printed."""

from __future__ import annotations

import os
import ssl
from pathlib import Path
from typing import Any

import pytest
from agents_persistence import StoreMisconfigured
from agents_persistence.config import Settings, redact_url
from agents_persistence.config.urls import sentinel_broker, url_passwords
from agents_persistence.tasks.worker.app import celery_config
from pydantic import ValidationError

pytestmark = pytest.mark.unit

SECRET = "hunter2-s3ntinel"
SENTINELS = "10.0.0.1:26379,10.0.0.2:26380"
MASTER = {"broker_master_name": "m"}
KOMBU = f"sentinel://:{SECRET}@10.0.0.1:26379;sentinel://:{SECRET}@10.0.0.2:26380"


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in list(os.environ):
        if name.upper().startswith("AGENTS_PERSISTENCE_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)


def _settings(**fields: Any) -> Settings:
    return Settings(_env_file=None, **fields)


def test_the_store_spelling_names_the_service_and_becomes_kombus() -> None:
    settings = _settings(broker_url=f"redis+sentinel://:{SECRET}@{SENTINELS}/mymaster/2")
    sentinel = settings.broker_sentinel
    assert sentinel is not None
    assert sentinel.master_name == "mymaster"
    assert not sentinel.tls
    assert settings.broker.get_secret_value() == f"sentinel://:{SECRET}@10.0.0.1:26379/2"
    assert sentinel.sentinels == (("10.0.0.1", 26379), ("10.0.0.2", 26380))


def test_kombus_spelling_takes_the_service_from_settings(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("AGENTS_PERSISTENCE_BROKER_URL", f"{KOMBU}/1")
    monkeypatch.setenv("AGENTS_PERSISTENCE_BROKER_MASTER_NAME", "svc")
    settings = Settings(_env_file=None)
    assert settings.broker_sentinel is not None
    assert settings.broker_sentinel.master_name == "svc"
    # one URL for kombu (the credentials and the database), every sentinel in a list
    assert settings.broker.get_secret_value() == f"sentinel://:{SECRET}@10.0.0.1:26379/1"
    assert settings.broker_sentinel.sentinels == (("10.0.0.1", 26379), ("10.0.0.2", 26380))
    lone = _settings(broker_url=f"sentinel://:{SECRET}@h1;sentinel://h2:5", broker_master_name="m")
    assert lone.broker.get_secret_value() == f"sentinel://:{SECRET}@h1:26379/0"
    assert lone.broker_sentinel is not None
    assert lone.broker_sentinel.sentinels == (("h1", 26379), ("h2", 5))


def test_a_store_behind_sentinel_is_the_default_broker() -> None:
    settings = _settings(redis_url=f"redis+sentinel://:{SECRET}@{SENTINELS}/svc/0")
    assert settings.broker_sentinel is not None
    assert settings.broker_sentinel.master_name == "svc"
    assert settings.broker.get_secret_value() == f"sentinel://:{SECRET}@10.0.0.1:26379/0"


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"broker_url": KOMBU}, "needs broker_master_name"),
        ({"broker_url": f"redis+sentinel://{SENTINELS}/a", "broker_master_name": "b"}, "differs"),
        ({"broker_url": f"redis+sentinel://:{SECRET}@{SENTINELS}"}, "must name the primary"),
        ({"broker_url": f"{KOMBU}/x", "broker_master_name": "m"}, "not a number"),
        ({"broker_url": f"{KOMBU}/m/1", "broker_master_name": "m"}, "other than /<db>"),
        ({"broker_url": f"sentinel://:{SECRET}@h:99999", "broker_master_name": "m"}, "port"),
        ({"broker_url": f"sentinel://:{SECRET}@h:1;redis://h:2", **MASTER}, "scheme"),
        ({"broker_url": f"{KOMBU}?socket_timeout=3", **MASTER}, "socket_timeout"),
        ({"broker_url": f"{KOMBU}?password={SECRET}", **MASTER}, "more than once"),
        ({"broker_url": f"redis+cluster://:{SECRET}@{SENTINELS}"}, "cannot be a Redis Cluster"),
        ({"broker_url": f"rediss+cluster://:{SECRET}@{SENTINELS}"}, "cannot be a Redis Cluster"),
        ({"broker_url": "amqp://guest:guest@h//", "broker_replica_acks": 1}, "Redis brokers"),
        ({"broker_url": KOMBU, "broker_master_name": " m"}, "spaces"),
    ],
)  # fmt: skip
def test_unusable_sentinel_brokers_are_refused_without_their_password(
    fields: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValidationError) as caught:
        _settings(**fields)
    assert message in str(caught.value)
    for text in (str(caught.value), repr(caught.value.errors()), caught.value.json()):
        assert SECRET not in text


def test_broker_replica_acks_follow_replica_acks_on_sentinel_only() -> None:
    sentinel = f"redis+sentinel://{SENTINELS}/svc"
    assert _settings(broker_url=sentinel, replica_acks=2).broker_replica_acks == 2
    assert _settings(broker_url=sentinel).broker_replica_acks == 0
    assert _settings(broker_url="redis://h:1/1", replica_acks=2).broker_replica_acks == 0
    assert (
        _settings(broker_url=sentinel, replica_acks=2, broker_replica_acks=0).broker_replica_acks
        == 0
    )
    assert _settings(broker_url="redis://h:1/1", broker_replica_acks=1).broker_replica_acks == 1


def test_celery_config_uses_the_sentinel_transport() -> None:
    settings = _settings(
        broker_url=f"{KOMBU}/1?sentinel_password=sp",
        broker_master_name="svc",
        replica_acks=1,
        replica_ack_timeout_seconds=0.3,
        publish_timeout_seconds=4.0,
    )
    config = celery_config(settings)
    assert config["broker_transport"].endswith("redis_transport:SentinelTransport")
    options = config["broker_transport_options"]
    assert options["master_name"] == "svc"
    assert options["sentinels"] == [["10.0.0.1", 26379], ["10.0.0.2", 26380]]
    assert (options["replica_acks"], options["replica_ack_timeout"]) == (1, 0.3)
    assert options["priority_steps"] == [0]
    assert options["sentinel_kwargs"] == {
        "socket_timeout": 4.0,
        "socket_connect_timeout": 2.0,
        "password": "sp",
    }
    assert "broker_use_ssl" not in config
    assert config["broker_url"] == f"sentinel://:{SECRET}@10.0.0.1:26379/1"
    plain = celery_config(_settings(broker_url="redis://h:1/1"))
    assert plain["broker_transport"].endswith("redis_transport:Transport")
    assert "replica_acks" not in plain["broker_transport_options"]


def test_tls_behind_sentinel_verifies_and_reaches_the_sentinels_over_tls() -> None:
    settings = _settings(broker_url=f"rediss+sentinel://{SENTINELS}/svc?ssl_ca_certs=/ca.pem")
    config = celery_config(settings)
    assert config["broker_use_ssl"] == {"ssl_cert_reqs": ssl.CERT_REQUIRED}
    talk = config["broker_transport_options"]["sentinel_kwargs"]
    assert talk["ssl"] is True
    assert talk["ssl_ca_certs"] == "/ca.pem"
    assert "ssl_ca_certs=%2Fca.pem" in config["broker_url"]


def test_a_cluster_store_without_a_broker_is_refused_when_the_app_is_built() -> None:
    settings = _settings(redis_url=f"redis+cluster://:{SECRET}@{SENTINELS}")
    with pytest.raises(StoreMisconfigured, match="cannot use as a broker") as caught:
        celery_config(settings)
    assert SECRET not in str(caught.value)


def test_kombu_keeps_the_transport_across_a_reconnect_and_prints_no_password() -> None:
    """kombu fails over between ``;``-joined URLs by re-reading the next one's scheme (its
    own Sentinel transport): the broker URL is one URL, the sentinels a transport option."""
    from agents_persistence.tasks import create_app
    from agents_persistence.tasks.broker.redis_transport import SentinelChannel

    settings = _settings(broker_url=f"redis+sentinel://u:{SECRET}@{SENTINELS}/svc/3")
    app = create_app(settings)
    try:
        with app.connection_for_write() as conn:
            assert conn.alt == []
            assert (conn.userid, conn.password, conn.virtual_host) == ("u", SECRET, "3")
            conn.maybe_switch_next()  # what kombu does on a connection error
            assert conn.transport_cls.endswith("redis_transport:SentinelTransport")
            assert conn.transport.Channel is SentinelChannel  # type: ignore[attr-defined]
            assert SECRET not in conn.as_uri()
            assert SECRET not in repr(conn)
        assert SECRET not in repr(settings)
    finally:
        app.close()


def test_sentinel_urls_are_redacted_one_by_one() -> None:
    raw = f"{KOMBU}/0?sentinel_password={SECRET}x"
    shown = redact_url(raw)
    assert SECRET not in shown
    assert shown.count(":***@") == 2
    assert shown.endswith("sentinel_password=***")
    assert set(url_passwords(raw)) >= {SECRET, f"{SECRET}x"}
    found = sentinel_broker(f"redis+sentinel://u:{SECRET}@[::1]:5,h/svc?sentinel_password=s")
    assert found is not None
    assert SECRET not in repr(found)
    assert "'s'" not in repr(found)
    assert found.url == f"sentinel://u:{SECRET}@[::1]:5/0"
    assert found.sentinels == (("::1", 5), ("h", 26379))
    assert sentinel_broker("redis://h:1/0") is None
