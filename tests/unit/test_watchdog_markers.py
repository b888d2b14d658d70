"""The watchdog stops only the processes of the run it guards: a folder is compared whole,
so a neighbouring run whose folder merely starts with the same text is left alone."""

from __future__ import annotations

import signal

from deploy.watchdog import Guarded, _names

SERVER = ["/opt/pg/bin/postgres", "-D", "/srv/fb/pgdata", "-h", "", "-k", "/srv/fb"]
BROKER = ["java", "-Xmx1G", "kafka.Kafka", "/srv/fb/kafka/server.properties"]


def guarded() -> Guarded:
    watched = Guarded()
    watched.read('{"kind": "postgres", "folder": "/srv/fb/pgdata"}')
    watched.read('{"kind": "kafka", "folder": "/srv/fb/kafka"}')
    return watched


def test_the_guarded_server_and_broker_are_named() -> None:
    postgres, kafka = guarded().targets
    assert postgres.signum == signal.SIGINT and _names(SERVER, postgres.marker)
    assert kafka.signum == signal.SIGTERM and _names(BROKER, kafka.marker)


def test_a_neighbouring_folder_with_the_same_start_is_not() -> None:
    postgres, kafka = guarded().targets
    assert not _names([*SERVER[:2], "/srv/fb/pgdata2", *SERVER[3:]], postgres.marker)
    assert not _names([*SERVER[:2], "/srv/fb/pgdata/pgdata"], postgres.marker)
    assert not _names([*BROKER[:3], "/srv/fb/kafka2/server.properties"], kafka.marker)


def test_pg_ctl_naming_the_folder_is_not_the_server() -> None:
    postgres, _ = guarded().targets
    assert not _names(["/opt/pg/bin/pg_ctl", "-D", "/srv/fb/pgdata", "start"], postgres.marker)
