"""A Redis Cluster on 127.0.0.1 from the same server binary as EmbeddedRedis: masters with the slots split
evenly, and optionally one replica each. The cluster tests and ``bench.scale --cluster`` start one; it is
also the quickest way to try ``RAPPORT_REDIS_CLUSTER`` by hand (``python -m engine.state.local_cluster``).
"""
from __future__ import annotations

import argparse
import random
import signal
import socket
import subprocess
import time
from pathlib import Path

import redis

from .redis_server import server_binary

SLOTS = 16384
BUS_OFFSET = 10000  # each node also listens on port + 10000 (the cluster bus)


def free_node_port(rng: random.Random) -> int:
    """A port p on 127.0.0.1 with p and its bus port p + 10000 free (p <= 55535, as the server requires)."""
    for _ in range(200):
        port = rng.randrange(20000, 45000)
        try:
            with socket.socket() as a, socket.socket() as b:
                a.bind(("127.0.0.1", port))
                b.bind(("127.0.0.1", port + BUS_OFFSET))
            return port
        except OSError:
            continue
    raise RuntimeError("no free pair of ports for a cluster node")


class LocalCluster:
    """``masters`` masters (+ ``replicas`` replicas each) as child processes with their data under ``data_dir``."""

    def __init__(self, data_dir: Path, masters: int = 3, replicas: int = 1, node_timeout_ms: int = 1000) -> None:
        self.data_dir = Path(data_dir)
        self.masters = masters
        self.replicas = replicas
        self.node_timeout_ms = node_timeout_ms
        rng = random.Random()
        self.ports: list[int] = []
        while len(self.ports) < masters * (1 + replicas):
            port = free_node_port(rng)
            if not {port, port + BUS_OFFSET} & {q for p in self.ports for q in (p, p + BUS_OFFSET)}:
                self.ports.append(port)
        self.processes: dict[int, subprocess.Popen] = {}

    @property
    def url(self) -> str:
        """A URL naming every node (any one is enough for the client to learn the others)."""
        return "redis://" + ",".join(f"127.0.0.1:{p}" for p in self.ports)

    def _start_node(self, port: int) -> None:
        folder = self.data_dir / str(port)
        folder.mkdir(parents=True, exist_ok=True)
        args = [server_binary(), "--port", str(port), "--bind", "127.0.0.1", "--dir", str(folder),
                "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                "--cluster-node-timeout", str(self.node_timeout_ms), "--appendonly", "no", "--save", "",
                "--repl-diskless-sync-delay", "0",  # a new replica syncs at once, not after 5 s
                "--daemonize", "no", "--loglevel", "warning", "--logfile", str(folder / "server.log")]
        self.processes[port] = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def client(self, port: int) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=port, socket_timeout=5)

    def _wait(self, check, what: str, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                if check():
                    return
            except (redis.ConnectionError, redis.ResponseError):
                pass
            time.sleep(0.05)
        raise RuntimeError(f"the local cluster did not {what} within {timeout_s} s (logs under {self.data_dir})")

    def start(self, timeout_s: float = 30.0) -> "LocalCluster":
        """Start every node, join them, give the masters their slots and the replicas their masters (on a
        failure, stop the nodes already started and raise)."""
        try:
            return self._start(timeout_s)
        except BaseException:
            self.stop()
            raise

    def _start(self, timeout_s: float) -> "LocalCluster":
        for port in self.ports:
            self._start_node(port)
        for port in self.ports:
            self._wait(lambda p=port: self.client(p).ping(), f"answer on port {port}", timeout_s)
        first = self.client(self.ports[0])
        for port in self.ports[1:]:
            first.execute_command("CLUSTER MEET", "127.0.0.1", port)
        share = SLOTS // self.masters
        for i, port in enumerate(self.ports[: self.masters]):
            last = SLOTS - 1 if i == self.masters - 1 else (i + 1) * share - 1
            self.client(port).execute_command("CLUSTER ADDSLOTSRANGE", i * share, last)
        self._wait(lambda: all(len(self.client(p).execute_command("CLUSTER NODES"))
                               == len(self.ports) for p in self.ports), "join", timeout_s)
        for k, port in enumerate(self.ports[self.masters:]):
            master_id = self.client(self.ports[k % self.masters]).execute_command("CLUSTER MYID").decode()
            self._wait(lambda p=port, m=master_id: self.client(p).execute_command("CLUSTER REPLICATE", m),
                       "attach a replica", timeout_s)
        self.wait_ok(timeout_s)
        self.wait_replicas_synced(timeout_s)
        return self

    def wait_replicas_synced(self, timeout_s: float = 30.0) -> None:
        """Wait until every running replica has finished its first sync with its master. A replica that never
        synced holds no data and does not take over when its master fails (measured: a master killed seconds
        after start left its slots down for good, and every client waiting on them)."""
        def synced() -> bool:
            for port in self.ports[self.masters:]:
                if self.processes[port].poll() is None:
                    info = self.client(port).info("replication")
                    if info.get("role") == "slave" and (info.get("master_link_status") != "up"
                                                        or info.get("master_sync_in_progress")):
                        return False
            return True
        self._wait(synced, "sync every replica", timeout_s)

    def wait_ok(self, timeout_s: float = 30.0) -> None:
        """Wait until every running node reports cluster_state:ok and every slot is served."""
        def ok() -> bool:
            for port, process in self.processes.items():
                if process.poll() is None:
                    info = self.client(port).execute_command("CLUSTER INFO")
                    if info.get("cluster_state") != "ok" or int(info.get("cluster_slots_ok", 0)) != SLOTS:
                        return False
            return True
        self._wait(ok, "reach cluster_state:ok", timeout_s)

    def master_of(self, key: str) -> int:
        """The port of the master serving ``key``'s slot now."""
        slot = int(self.client(self._alive_port()).execute_command("CLUSTER KEYSLOT", key))
        for start, end, master, *_ in self.client(self._alive_port()).execute_command("CLUSTER SLOTS"):
            if start <= slot <= end:
                return int(master[1])
        raise RuntimeError(f"no master serves slot {slot}")

    def _alive_port(self) -> int:
        return next(p for p, proc in self.processes.items() if proc.poll() is None)

    def kill(self, port: int) -> None:
        """Kill one node (SIGKILL: no save, no goodbye), as a crashed machine would."""
        process = self.processes[port]
        process.send_signal(signal.SIGKILL)
        process.wait()

    def keys_everywhere(self, pattern: str) -> list[bytes]:
        """Keys matching ``pattern`` on every running node (replicas included)."""
        found = []
        for port, process in self.processes.items():
            if process.poll() is None:
                found += list(self.client(port).scan_iter(match=pattern, count=1000))
        return found

    def stop(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                process.terminate()
        for process in self.processes.values():
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
        self.processes.clear()

    def __enter__(self) -> "LocalCluster":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dir", type=Path, default=Path("/tmp/rapport-cluster"))
    p.add_argument("--masters", type=int, default=3)
    p.add_argument("--replicas", type=int, default=1)
    args = p.parse_args(argv)
    with LocalCluster(args.dir, args.masters, args.replicas) as cluster:
        print(f"REDIS_URL={cluster.url} (Ctrl-C stops it)", flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    main()
