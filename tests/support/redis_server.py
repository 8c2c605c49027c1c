"""A private ``redis-server`` on a free loopback port, that tests may kill and restart.

Tests never touch the Redis on 6379; each one gets its own process (and so its own data).
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time

import redis

from .network import free_port, wait_for


class RedisServer:
    def __init__(self, *extra_args: str, password: str = "") -> None:
        """``password``: required of clients (requirepass), and used to follow a master."""
        self.binary = shutil.which("redis-server") or "/usr/bin/redis-server"
        self.password = password
        if password:
            extra_args = (*extra_args, "--requirepass", password, "--masterauth", password)
        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix="dprl-redis-")
        self.extra_args = [arg.replace("{dir}", self.dir) for arg in extra_args]
        self.proc: subprocess.Popen | None = None
        self.start()

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [
                self.binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                self.dir,
                "--logfile",
                "",
                *self.extra_args,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        client = self.client()
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                assert self.proc.poll() is None, "redis-server exited at start"
                assert time.monotonic() < deadline, "redis-server did not answer within 10s"
                time.sleep(0.01)
        client.close()

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def restart(self) -> None:
        """Kill and start again on the same port, with no data (no persistence)."""
        self.kill()
        self.start()

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port, socket_timeout=5, password=self.password or None)

    def stop(self) -> None:
        self.kill()
        shutil.rmtree(self.dir, ignore_errors=True)


def leftover_keys(client: redis.Redis, prefix: str) -> list[bytes]:
    """Keys left under ``prefix``, except those that expire by themselves by design.

    The epoch marker names the life of the fleet's data in this Redis (see redis/refresh.py);
    it outlives the workers for at most three lease ttls. A host's rate key holds its
    theoretical arrival time; it lives until that time has passed (then it says nothing).
    """
    return [
        key
        for key in client.scan_iter(f"{prefix}:*")
        if not (key.endswith((b":epoch", b":rate")) and client.pttl(key) > 0)
    ]


class SentinelSetup:
    """A master, a replica of it, and one sentinel watching them (quorum 1, down after 1 s).

    ``url`` is the ``redis+sentinel://`` URL dprl takes; ``kill_master`` makes the sentinel
    promote the replica (about 1 s to notice, then the election and promotion).
    """

    SERVICE = "dprlmaster"

    def __init__(self, password: str = "") -> None:
        self.password = password
        self.master = RedisServer(password=password)
        self.replica = RedisServer("--replicaof", "127.0.0.1", str(self.master.port), password=password)
        self.sentinel_port = free_port()
        self.dir = tempfile.mkdtemp(prefix="dprl-sentinel-")
        config = f"{self.dir}/sentinel.conf"
        with open(config, "w") as file:
            file.write(
                f"port {self.sentinel_port}\nbind 127.0.0.1\ndir {self.dir}\n"
                f"sentinel monitor {self.SERVICE} 127.0.0.1 {self.master.port} 1\n"
                f"sentinel down-after-milliseconds {self.SERVICE} 1000\n"
                f"sentinel failover-timeout {self.SERVICE} 5000\n"
                f"sentinel parallel-syncs {self.SERVICE} 1\n"
                + (f"sentinel auth-pass {self.SERVICE} {password}\n" if password else "")
            )
        binary = shutil.which("redis-server") or "/usr/bin/redis-server"
        self.sentinel = subprocess.Popen(
            [binary, config, "--sentinel"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        replica = self.replica.client()
        wait_for(
            lambda: replica.info("replication")["master_link_status"] == "up",
            15,
            "the replica to sync",
            ignore=(redis.RedisError,),
            interval=0.05,
        )
        replica.close()
        wait_for(
            lambda: self.master_port() == self.master.port,
            15,
            "the sentinel to know the master",
            ignore=(redis.RedisError,),
            interval=0.05,
        )

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis+sentinel://{auth}127.0.0.1:{self.sentinel_port}/{self.SERVICE}/0"

    def master_port(self) -> int:
        client = redis.Redis(port=self.sentinel_port, socket_timeout=2)
        try:
            return int(client.execute_command("SENTINEL", "get-master-addr-by-name", self.SERVICE)[1])
        finally:
            client.close()

    def kill_master(self) -> None:
        self.master.kill()

    def stop(self) -> None:
        self.sentinel.kill()
        self.sentinel.wait()
        self.replica.stop()
        self.master.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


class ClusterSetup:
    """Three primaries (no replicas) in one Redis Cluster: ``redis-cli --cluster create``.

    ``cluster-require-full-coverage no``: when a node dies the others go on serving their
    own slots (with the default, the whole cluster refuses commands until it is back).
    """

    def __init__(self, size: int = 3, password: str = "") -> None:
        self.password = password
        self.nodes = [
            RedisServer(
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                "{dir}/nodes.conf",
                "--cluster-node-timeout",
                "2000",
                "--cluster-require-full-coverage",
                "no",
                "--cluster-port",  # the default, port + 10000, may be taken or past 65535
                str(free_port()),
                password=password,
            )
            for _ in range(size)
        ]
        subprocess.run(
            [
                "redis-cli",
                *(["--no-auth-warning", "-a", password] if password else []),
                "--cluster",
                "create",
                *(f"127.0.0.1:{n.port}" for n in self.nodes),
                "--cluster-replicas",
                "0",
                "--cluster-yes",
            ],
            check=True,
            capture_output=True,
        )
        for node in self.nodes:
            client = node.client()
            wait_for(
                lambda c=client: self._formed(c.cluster("info")),
                15,
                "the cluster to form",
                ignore=(redis.RedisError,),
                interval=0.05,
            )
            client.close()

    def _formed(self, info: dict) -> bool:
        return info["cluster_state"] == "ok" and int(info["cluster_known_nodes"]) == len(self.nodes)

    def url(self, *nodes: RedisServer) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis+cluster://{auth}" + ",".join(f"127.0.0.1:{n.port}" for n in (nodes or self.nodes[:1]))

    def node_of(self, key: str) -> RedisServer:
        """The node serving the slot of ``key``."""
        client = self.nodes[0].client()
        try:
            slot = client.cluster("keyslot", key)
            for start, end, primary, *_ in client.execute_command("CLUSTER", "SLOTS"):
                if start <= slot <= end:
                    return next(n for n in self.nodes if n.port == int(primary[1]))
        finally:
            client.close()
        raise AssertionError(f"no node serves {key}")

    def node_id(self, node: RedisServer) -> str:
        client = node.client()
        try:
            return client.execute_command("CLUSTER", "MYID").decode()
        finally:
            client.close()

    def move_slot(self, slot: int, source: RedisServer, target: RedisServer, pause: float = 0.0) -> None:
        """Reshard one slot, keys and all, the way redis-cli does (IMPORTING, MIGRATING, MIGRATE, NODE)."""
        src, dst = source.client(), target.client()
        try:
            dst.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", self.node_id(source))
            src.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", self.node_id(target))
            time.sleep(pause)  # clients meet ASK redirections meanwhile
            while keys := src.execute_command("CLUSTER", "GETKEYSINSLOT", slot, 100):
                src.execute_command("MIGRATE", "127.0.0.1", target.port, "", 0, 5000, "KEYS", *keys)
            for node in self.nodes:
                client = node.client()
                client.execute_command("CLUSTER", "SETSLOT", slot, "NODE", self.node_id(target))
                client.close()
        finally:
            src.close()
            dst.close()

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()
