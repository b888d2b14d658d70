"""Apache Kafka (KRaft, one combined broker/controller node) from the Maven Central jars.

`start_kafka()` is the one place that knows how a local broker comes to life: swap its body
to change the broker. When `KAFKA_BOOTSTRAP_SERVERS` is set, nothing is started and that
cluster is used.
"""

from __future__ import annotations

import base64
import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

POM = Path(__file__).with_name("kafka") / "pom.xml"
KAFKA_VERSION = "4.1.1"
START_TIMEOUT_S = 90.0


class KafkaStartError(RuntimeError):
    """The local broker could not be started; the message says why and where its log is."""


def cache_dir() -> Path:
    base = os.environ.get("FEEDBACK_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "feedback-platform"
    )
    return Path(base) / f"kafka-{KAFKA_VERSION}"


def ensure_jars() -> Path:
    """Resolve the broker jars from Maven Central once; later starts reuse the cache."""
    jars = cache_dir() / "libs"
    marker = jars / ".complete"
    if marker.exists():
        return jars
    jars.mkdir(parents=True, exist_ok=True)
    mvn = shutil.which("mvn")
    if mvn is None:
        raise KafkaStartError("Maven (mvn) is needed to fetch the Kafka broker jars")
    result = subprocess.run(
        [
            mvn,
            "-q",
            "-B",
            "-f",
            str(POM),
            "dependency:copy-dependencies",
            f"-DoutputDirectory={jars}",
            "-DincludeScope=runtime",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise KafkaStartError(
            f"mvn could not fetch the Kafka jars:\n{result.stdout}\n{result.stderr}"
        )
    marker.touch()
    return jars


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _java() -> str:
    java_home = os.environ.get("JAVA_HOME")
    if java_home and (Path(java_home) / "bin" / "java").exists():
        return str(Path(java_home) / "bin" / "java")
    java = shutil.which("java")
    if java is None:
        raise KafkaStartError("Java 17 is needed to run the Kafka broker")
    return java


LOG4J2 = """\
status = warn
appender.file.type = File
appender.file.name = file
appender.file.fileName = {log}
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = {level}
rootLogger.appenderRef.file.ref = file
logger.kafka.name = kafka
logger.kafka.level = {level}
logger.state.name = state.change.logger
logger.state.level = warn
"""


def _properties(port: int, controller_port: int, data: Path) -> str:
    return "\n".join(
        [
            "process.roles=broker,controller",
            "node.id=1",
            f"controller.quorum.voters=1@127.0.0.1:{controller_port}",
            f"listeners=PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller_port}",
            f"advertised.listeners=PLAINTEXT://127.0.0.1:{port}",
            "controller.listener.names=CONTROLLER",
            "inter.broker.listener.name=PLAINTEXT",
            "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            f"log.dirs={data / 'logs'}",
            # Topics are created by the services with the partition count they need.
            "auto.create.topics.enable=false",
            "num.partitions=4",
            "offsets.topic.replication.factor=1",
            "offsets.topic.num.partitions=4",
            "transaction.state.log.replication.factor=1",
            "transaction.state.log.min.isr=1",
            "share.coordinator.state.topic.replication.factor=1",
            "share.coordinator.state.topic.min.isr=1",
            # A single local node: no reason to delay the first consumer-group rebalance.
            "group.initial.rebalance.delay.ms=0",
            "log.retention.hours=168",
            "",
        ]
    )


@dataclass
class LocalKafka:
    bootstrap_servers: str
    controller_port: int | None = None
    process: subprocess.Popen[bytes] | None = None
    data_dir: Path | None = None
    log_file: Path | None = None
    started_in_s: float = 0.0
    _owns_data_dir: bool = field(default=False, repr=False)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        self.process = None
        if self._owns_data_dir and self.data_dir is not None:
            shutil.rmtree(self.data_dir, ignore_errors=True)

    def start_again(self) -> None:
        """Start a stopped broker again on its ports and data, where its clients expect it
        (a test's outage ends). Only for a broker started here with a data folder of its own
        choosing: a temporary one is deleted by `stop`."""
        if self.data_dir is None or self._owns_data_dir or self.controller_port is None:
            raise KafkaStartError("only a local broker with a kept data folder can start again")
        port = int(self.bootstrap_servers.rpartition(":")[2])
        again = start_kafka(self.data_dir, port=port, controller_port=self.controller_port)
        self.process, self.log_file = again.process, again.log_file


def _run_in_own_loop(probe: Any) -> bool:
    """Run an async probe from sync code, even when the caller has a running event loop."""
    import asyncio
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=1) as pool:
        return bool(pool.submit(lambda: asyncio.run(probe())).result())


def _accepts_connections(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def _wait_until_answering(kafka: LocalKafka, deadline: float) -> None:
    # The broker answers the Kafka protocol once its metadata is loaded; a plain TCP connect
    # would succeed earlier, so ask for metadata.

    from aiokafka.admin import AIOKafkaAdminClient

    async def probe() -> bool:
        client = AIOKafkaAdminClient(
            bootstrap_servers=kafka.bootstrap_servers, request_timeout_ms=3000
        )
        try:
            await client.start()
            await client.describe_cluster()
            return True
        except Exception:
            return False
        finally:
            await client.close()

    host, _, port = kafka.bootstrap_servers.partition(",")[0].rpartition(":")
    while time.monotonic() < deadline:
        if kafka.process is not None and kafka.process.poll() is not None:
            raise KafkaStartError(
                f"Kafka exited with {kafka.process.returncode}; see {kafka.log_file}"
            )
        if _accepts_connections(host, int(port)) and _run_in_own_loop(probe):
            return
        time.sleep(0.2)
    raise KafkaStartError(f"Kafka did not answer within {START_TIMEOUT_S}s; see {kafka.log_file}")


def start_kafka(
    data_dir: Path | None = None,
    log_level: str = "warn",
    port: int | None = None,
    controller_port: int | None = None,
) -> LocalKafka:
    """Start a single-node KRaft broker on free ports (or the given ones, to restart a
    broker where its clients expect it) and wait until it answers."""
    external = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if external:
        return LocalKafka(bootstrap_servers=external)
    began = time.monotonic()
    jars = ensure_jars()
    owns = data_dir is None
    data = Path(tempfile.mkdtemp(prefix="feedback-kafka-")) if data_dir is None else data_dir
    data.mkdir(parents=True, exist_ok=True)
    port, controller_port = port or free_port(), controller_port or free_port()
    properties = data / "server.properties"
    properties.write_text(_properties(port, controller_port, data))
    log_file = data / "kafka.log"
    log4j = data / "log4j2.properties"
    log4j.write_text(LOG4J2.format(log=log_file, level=log_level))
    java = _java()
    classpath = f"{jars}/*"
    jvm = [
        java,
        "-Xms256m",
        "-Xmx1g",
        "-XX:+UseG1GC",
        "-Djava.awt.headless=true",
        f"-Dlog4j2.configurationFile={log4j}",
        "-cp",
        classpath,
    ]
    if not (data / "logs" / "meta.properties").exists():
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        formatted = subprocess.run(
            [
                *jvm,
                "kafka.tools.StorageTool",
                "format",
                f"--cluster-id={cluster_id}",
                "-c",
                str(properties),
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        if formatted.returncode != 0:
            raise KafkaStartError(
                f"kafka storage format failed:\n{formatted.stdout}{formatted.stderr}"
            )
    with open(data / "kafka.stdout", "ab") as out:
        process = subprocess.Popen(
            [*jvm, "kafka.Kafka", str(properties)],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    kafka = LocalKafka(
        bootstrap_servers=f"127.0.0.1:{port}",
        controller_port=controller_port,
        process=process,
        data_dir=data,
        log_file=log_file,
        _owns_data_dir=owns,
    )
    try:
        _wait_until_answering(kafka, began + START_TIMEOUT_S)
    except BaseException:
        kafka.stop()
        raise
    kafka.started_in_s = time.monotonic() - began
    return kafka


@contextmanager
def running_kafka(data_dir: Path | None = None) -> Iterator[LocalKafka]:
    kafka = start_kafka(data_dir)
    try:
        yield kafka
    finally:
        kafka.stop()


if __name__ == "__main__":
    import sys

    if sys.argv[1:] == ["--fetch"]:
        print(f"Kafka {KAFKA_VERSION} jars in {ensure_jars()}")
    else:
        with running_kafka() as kafka:
            print(f"Kafka {KAFKA_VERSION} at {kafka.bootstrap_servers} (Ctrl-C stops)", flush=True)
            with contextlib.suppress(KeyboardInterrupt):
                if kafka.process is not None:
                    kafka.process.wait()
