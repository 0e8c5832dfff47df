import os

# as the console script does before any import: flwr-datasets' partitioners print tqdm bars otherwise
os.environ.setdefault("TQDM_DISABLE", "1")

import pytest
from flwr.supercore.task_identity import TaskIdentity


@pytest.fixture
def task_identity():
    """Messages can only be built where Flower knows the current task; pretend to be the server."""
    saved = (TaskIdentity._task_id, TaskIdentity._run_id, TaskIdentity._node_id)
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 7, 42, 1
    yield
    TaskIdentity._task_id, TaskIdentity._run_id, TaskIdentity._node_id = saved
