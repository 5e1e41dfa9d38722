"""A conformance suite for any xenstore server, over its Unix socket.

Rule 1: the suite speaks raw wire messages (xenpure's codec, no client logic in between), so what it checks
is the server's answer and nothing else. Point it at a server with ``--xenstored-socket PATH`` or
``$XENSTORED_PATH``; with neither it starts xenpure's own xenstored on a temporary socket.

    python -m pytest tests/xenstored_conformance                                   # xenpure's server
    python -m pytest tests/xenstored_conformance --xenstored-socket /run/xenstored/socket

Every test works under its own node (``/xenpure-conformance/<random>``), removed afterwards, so a real
dom0's store is left as it was. A socket connection is dom0's; tests that need an unprivileged domain
(permissions, quotas, most advisories) use ``guest``, which only xenpure's own server can provide without
a real guest (it hands out connections speaking for any domid): against another server they skip, saying
so. Where oxenstored and C xenstored answer differently, ``accept`` lists every answer seen on a real
daemon and says which one xenpure gives (README.md in this folder).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import threading
import uuid
from collections.abc import Callable, Iterator

import pytest
from xsconf import Conn, Target

from xenpure.xenstore import _wire as W


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--xenstored-socket",
        default=None,
        help="the xenstore server to test (default: $XENSTORED_PATH, else xenpure's own on a temporary socket)",
    )
    parser.addoption(
        "--xenstored-ro-socket",
        default=None,
        help="its read-only socket (default: the socket's path with _ro appended, if it exists)",
    )


#: Tests that crashed a real daemon in the lab (README.md): they run last, so a crash costs nothing else.
RUN_LAST = ("test_xsa_484_reset_watches_inside_a_transaction",)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    items.sort(key=lambda item: item.name in RUN_LAST)  # stable: everything else keeps its order


@pytest.fixture(scope="session")
def target(request: pytest.FixtureRequest) -> Iterator[Target]:
    path = request.config.getoption("--xenstored-socket", default=None) or os.environ.get("XENSTORED_PATH")
    if path:
        if not os.path.exists(path):
            pytest.fail(f"no xenstore server socket at {path}")
        ro = request.config.getoption("--xenstored-ro-socket", default=None) or f"{path}_ro"
        yield Target(path, ro_path=ro if os.path.exists(ro) else None)
        return
    from xenpure.xenstore.server import Xenstored

    with tempfile.TemporaryDirectory(prefix="xenpure-xs-") as d:
        daemon = Xenstored(socket_path=os.path.join(d, "socket"), ro_socket_path=os.path.join(d, "socket_ro"))
        t = threading.Thread(target=daemon.serve, daemon=True, name="xenpure-xenstored")
        t.start()
        try:
            yield Target(os.path.join(d, "socket"), daemon, ro_path=os.path.join(d, "socket_ro"))
        finally:
            daemon.stop()
            t.join(10)


@pytest.fixture
def xs(target: Target) -> Iterator[Conn]:
    c = target.connect()
    yield c
    c.close()


@pytest.fixture
def xs2(target: Target) -> Iterator[Conn]:
    c = target.connect()
    yield c
    c.close()


@pytest.fixture
def base(target: Target) -> Iterator[str]:
    """A fresh node of this test's own, removed afterwards (with all that was created below it)."""
    path = f"/xenpure-conformance/{uuid.uuid4().hex[:12]}"
    c = target.connect()
    c(W.Mkdir(path))
    yield path
    with contextlib.suppress(Exception):
        c(W.Rm(path))
    with contextlib.suppress(Exception):
        if not c(W.Directory("/xenpure-conformance")):
            c(W.Rm("/xenpure-conformance"))
    c.close()


_next_domid = iter(range(0x7000, 0x7FEF))


@pytest.fixture
def guest(target: Target, xs: Conn) -> Iterator[Callable[[], tuple[int, Conn]]]:
    """``guest()`` -> (domid, connection speaking for it): a domain introduced (fake ring) with its home
    /local/domain/<domid> owned by it, as a toolstack leaves it; released afterwards."""
    made: list[int] = []

    def make() -> tuple[int, Conn]:
        conn_domid = next(_next_domid)
        g = target.guest(conn_domid)
        xs(W.Introduce(conn_domid, 1, 1))
        made.append(conn_domid)
        home = f"/local/domain/{conn_domid}"
        xs(W.Mkdir(home))
        xs(W.SetPerms(home, (W.Perm(conn_domid, W.PermAccess.NONE),)))
        return conn_domid, g

    yield make
    for d in made:
        with contextlib.suppress(Exception):
            xs(W.Release(d))
        with contextlib.suppress(Exception):
            xs(W.Rm(f"/local/domain/{d}"))
