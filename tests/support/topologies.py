"""Redis topologies on loopback, from real `redis-server` processes: a Redis Cluster of 3 masters
and 3 replicas, and a master with a replica watched by 3 sentinels. Each yields the connection
string Feast expects (nodes, or sentinels, comma-separated) and a handle to kill a master."""

from __future__ import annotations

import signal
import socket
import subprocess
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import redis

from driver_ranker.ops.processes import free_port, wait_for
from tests.support.stack import wait_for_port

SENTINEL_MASTER = "ranker-master"


def cluster_port() -> int:
    """A free port whose cluster bus port (the port + 10000) is a port too, and free: redis-server
    refuses to start otherwise (free_port may give anything up to 65535)."""
    while True:
        port = free_port()
        if port + 10_000 <= 65_535:
            with socket.socket() as bus:
                if bus.connect_ex(("127.0.0.1", port + 10_000)) != 0:
                    return port


@contextmanager
def _server(folder: Path, port: int, *options: str) -> Iterator[subprocess.Popen]:
    folder.mkdir(parents=True)
    proc = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--dir", str(folder), *options],
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        wait_for_port(port, proc)
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGCONT)  # a test may have frozen it
            proc.terminate()
            proc.wait(10)


@dataclass
class Topology:
    connection_string: str
    """Feast's `connection_string`: the nodes, or the sentinels."""
    servers: dict[int, subprocess.Popen] = field(default_factory=dict)
    """redis-server per port (sentinels not included)."""

    def kill(self, port: int) -> None:
        """SIGKILL the redis-server on `port`: a crashed master."""
        self.servers[port].kill()
        self.servers[port].wait(10)


@contextmanager
def redis_cluster(folder: Path, masters: int = 3, replicas: int = 1) -> Iterator[Topology]:
    """A Redis Cluster: `masters` masters (the slots split between them by `redis-cli --cluster
    create`) with `replicas` replicas each; a dead master's replica takes over after
    cluster-node-timeout (1 s here). The other masters keep answering meanwhile
    (cluster-require-full-coverage no, as a team that prefers serving most drivers sets it)."""
    ports = [cluster_port() for _ in range(masters * (1 + replicas))]
    topology = Topology(",".join(f"127.0.0.1:{port}" for port in ports))
    with ExitStack() as stack:
        for port in ports:
            topology.servers[port] = stack.enter_context(
                _server(folder / str(port), port, "--cluster-enabled", "yes", "--cluster-config-file",
                        "nodes.conf", "--cluster-node-timeout", "1000", "--cluster-require-full-coverage", "no")
            )  # fmt: skip
        subprocess.run(
            ["redis-cli", "--cluster", "create", *(f"127.0.0.1:{p}" for p in ports),
             "--cluster-replicas", str(replicas), "--cluster-yes"],
            check=True, capture_output=True, timeout=60,
        )  # fmt: skip

        def settled() -> bool:
            for port in ports:
                info = redis.Redis(port=port).cluster("INFO")
                if info["cluster_state"] != "ok" or int(info["cluster_known_nodes"]) != len(ports):
                    return False
            return True

        wait_for(settled, 30, "every node of the cluster says cluster_state:ok")
        yield topology


def cluster_master_of(connection_string: str, key: bytes) -> int:
    """The port of the master that holds `key`'s slot now."""
    host, port = connection_string.split(",")[0].split(":")
    client = redis.RedisCluster(host=host, port=int(port))
    try:
        return client.get_node_from_key(key).port
    finally:
        client.close()


@contextmanager
def redis_sentinel(folder: Path, sentinels: int = 3, master: str = SENTINEL_MASTER) -> Iterator[Topology]:
    """A master and one replica, watched by `sentinels` sentinels (quorum: a majority) that promote
    the replica 1 s after the master stops answering."""
    master_port, replica_port = free_port(), free_port()
    sentinel_ports = [free_port() for _ in range(sentinels)]
    topology = Topology(",".join(f"127.0.0.1:{port}" for port in sentinel_ports))
    with ExitStack() as stack:
        topology.servers[master_port] = stack.enter_context(_server(folder / "master", master_port))
        topology.servers[replica_port] = stack.enter_context(
            _server(folder / "replica", replica_port, "--replicaof", "127.0.0.1", str(master_port))
        )
        for port in sentinel_ports:
            conf = folder / f"sentinel-{port}" / "sentinel.conf"  # a sentinel rewrites its config
            conf.parent.mkdir()
            conf.write_text(
                f"port {port}\nbind 127.0.0.1\ndir {conf.parent}\n"
                f"sentinel monitor {master} 127.0.0.1 {master_port} {sentinels // 2 + 1}\n"
                f"sentinel down-after-milliseconds {master} 1000\n"
                f"sentinel failover-timeout {master} 5000\n"
            )
            proc = subprocess.Popen(["redis-server", str(conf), "--sentinel"], stdout=subprocess.DEVNULL)
            stack.callback(proc.wait, 10)
            stack.callback(proc.terminate)
            wait_for_port(port, proc)

        def replicated() -> bool:
            info = redis.Redis(port=replica_port).info("replication")
            return info.get("master_link_status") == "up"

        def known_to_all() -> bool:
            for port in sentinel_ports:
                sentinel = redis.Redis(port=port, decode_responses=True)
                replicas = sentinel.execute_command("SENTINEL", "REPLICAS", master)
                if not replicas or sentinel.execute_command(
                    "SENTINEL", "GET-MASTER-ADDR-BY-NAME", master
                ) != ["127.0.0.1", str(master_port)]:
                    return False
            return True

        wait_for(replicated, 20, "the replica is in sync with the master")
        wait_for(known_to_all, 30, "every sentinel knows the master and its replica")
        yield topology


def sentinel_master_port(connection_string: str, master: str = SENTINEL_MASTER) -> int:
    """The port of the master the first sentinel names now."""
    host, port = connection_string.split(",")[0].split(":")
    sentinel = redis.Redis(host=host, port=int(port), decode_responses=True)
    return int(sentinel.execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", master)[1])
