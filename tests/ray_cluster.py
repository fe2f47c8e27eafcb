"""A real local Ray cluster for the scale-out tests, its traffic kept on this machine: as root the test
process enters a network namespace of its own (only `lo`, brought up) while the cluster runs, so Ray
binds 127.0.0.1 and cannot reach anything else; without root it binds 127.0.0.1 all the same."""
from __future__ import annotations

import ctypes
import os
import shutil
import subprocess
from contextlib import contextmanager

import pytest

CLONE_NEWNET = 0x40000000


@contextmanager
def isolated_network():
    """This thread (and the processes and threads it starts) in a new network namespace, then back."""
    if os.geteuid() != 0 or not os.path.exists("/proc/thread-self/ns/net") or not shutil.which("ip"):
        yield False
        return
    libc = ctypes.CDLL(None, use_errno=True)
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    try:
        if libc.unshare(CLONE_NEWNET) != 0:
            yield False
            return
        try:
            subprocess.run(["ip", "link", "set", "lo", "up"], check=True, capture_output=True)
            yield True
        finally:
            assert libc.setns(home, CLONE_NEWNET) == 0, os.strerror(ctypes.get_errno())
    finally:
        os.close(home)


@contextmanager
def local_ray(num_cpus: int):
    """One Ray node in this process's namespace (the driver is this test process)."""
    ray = pytest.importorskip("ray", reason='Ray is not installed (pip install "opensd[ray]")')
    with isolated_network():
        # address="local": always a new node of our own, never a cluster another process on this machine runs
        ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, log_to_driver=False,
                 namespace="opensd-test", _node_ip_address="127.0.0.1")
        try:
            yield ray
        finally:
            ray.shutdown()


@contextmanager
def local_cluster(nodes: int, cpus: int = 1, node_env: list[dict[str, str]] | None = None):
    """A head node with no CPUs of its own (it only runs the front door's Ray driver) and `nodes` worker
    nodes of `cpus` CPUs each, every one its own raylet process; `cluster.add_node` adds one later.
    `node_env[i]`: environment variables of node i's processes (as a machine of its own would have)."""
    ray = pytest.importorskip("ray", reason='Ray is not installed (pip install "opensd[ray]")')
    from ray.cluster_utils import Cluster

    with isolated_network():
        cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "node_ip_address": "127.0.0.1",
                                                                "include_dashboard": False})
        try:
            for i in range(nodes):
                with environment(node_env[i] if node_env else {}):
                    cluster.add_node(num_cpus=cpus, node_ip_address="127.0.0.1")
            ray.init(address=cluster.address, log_to_driver=False, namespace="opensd-test")
            try:
                yield ray, cluster
            finally:
                ray.shutdown()
        finally:
            cluster.shutdown()


@contextmanager
def environment(values: dict[str, str]):
    """os.environ with `values` set (a raylet started now inherits them), then as it was."""
    before = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in before.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
