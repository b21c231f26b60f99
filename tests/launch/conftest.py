"""The launch tests' shared cluster: two Ray nodes on this machine (``tests.utils.start_cluster``),
one engine replica on each. Session-wide, so the scale-out and fault modules (which run one
after the other) start it once; a test that ends it (SIGTERM) leaves the next one a new one."""

from __future__ import annotations

import pytest

from tests.utils import Reusable, start_cluster, stop_cluster


@pytest.fixture(scope="session")
def two_nodes(tmp_path_factory):
    holder = Reusable(lambda: start_cluster(tmp_path_factory.mktemp("scaleout")), stop_cluster,
                      alive=lambda info: info["serve"].poll() is None)
    yield holder
    holder.close()


@pytest.fixture
def cluster(two_nodes):
    return two_nodes.get()
