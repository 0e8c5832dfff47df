import os

# as the console script does before any import: flwr-datasets' partitioners print tqdm bars otherwise
os.environ.setdefault("TQDM_DISABLE", "1")

import pytest
from flwr.supercore.task_identity import TaskIdentity

#: fixtures that run a whole simulation (or deployment) once and are shared by several tests:
#: under pytest-xdist every test that uses one runs on the same worker, so each runs once
SHARED_RUNS = ("pfedgate_runs", "fedtiny_runs", "deployments")
#: the pytest major version from which pytest-xdist 3.8's groups are lost
PYTEST_GROUPS_BROKEN = 9


def _shared_run(item: pytest.Item) -> str | None:
    callspec = getattr(item, "callspec", None)  # a parameter naming the fixture it looks up
    values = [v for v in (callspec.params.values() if callspec else ()) if isinstance(v, str)]
    named = {*getattr(item, "fixturenames", ()), *values}
    return next((name for name in SHARED_RUNS if name in named), None)


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist's own, which turns the groups into node ids
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        shared = _shared_run(item)
        if shared:
            item.add_marker(pytest.mark.xdist_group(shared))


def pytest_configure(config: pytest.Config) -> None:
    """Under ``--dist loadgroup`` a shared run left ungrouped runs once per worker: minutes of
    the suite, silently. pytest-xdist 3.8 groups by rewriting node ids, which pytest 9 no longer
    reads (hence ``pytest<9`` in the dev extra): refuse to start rather than run them twice."""
    major = int(pytest.__version__.split(".")[0])
    if config.getoption("dist", None) == "loadgroup" and major >= PYTEST_GROUPS_BROKEN:
        raise pytest.UsageError(f"pytest {pytest.__version__} breaks pytest-xdist's --dist loadgroup "
                                "(shared runs would run once per worker): install 'pytest<9', as "
                                "pyproject.toml's dev extra pins")


@pytest.fixture(scope="session", autouse=True)
def one_torch_thread_per_worker():
    """Two xdist workers on two cores: torch's own thread pool per worker would oversubscribe."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        import torch

        torch.set_num_threads(1)


@pytest.fixture
def task_identity():
    """Messages can only be built where Flower knows the current task; pretend to be the server."""
    saved = (TaskIdentity._task_id, TaskIdentity._run_id, TaskIdentity._node_id)
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 7, 42, 1
    yield
    TaskIdentity._task_id, TaskIdentity._run_id, TaskIdentity._node_id = saved
