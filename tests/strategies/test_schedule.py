"""Longest-first scheduling of virtual clients: Flower's simulation queues messages in the order
its nodes registered, so the round's largest client goes to the first node (once replies have
told the order), and the checks of a reply follow the node the client was sent to."""

import pytest
from flwr.app import ConfigRecord, Message, MetricRecord, RecordDict

from fedsparse.strategies import MaskedFedAvg
from fedsparse.strategies.messages import NODE_INDEX_KEY
from fedsparse.updates import UpdateRejected
from tests.strategies.test_masked_fedavg import TRAIN_SIZES, make, trained_reply

NODES = {p: 100 + p for p in range(4)}


def node_says(msg: Message, index) -> Message:
    return Message(RecordDict({"metrics": MetricRecord({NODE_INDEX_KEY: index})}), reply_to=msg)


def test_virtual_clients_go_largest_first_to_the_nodes_in_registration_order(task_identity):
    strategy, arrays = make(MaskedFedAvg)
    strategy.bind_nodes(NODES, virtual=True)
    first = list(strategy.configure_train(1, arrays, ConfigRecord(), None))
    largest_first = sorted(range(4), key=lambda p: -TRAIN_SIZES[p])
    assert [int(m.content["config"]["client-id"]) for m in first] == largest_first
    assert [m.metadata.dst_node_id for m in first] == [NODES[p] for p in largest_first]  # order unknown yet
    # the nodes registered in the order 100, 101, 102, 103; a nonsense index is ignored
    strategy.note_node_order([node_says(m, m.metadata.dst_node_id - 100) for m in first]
                             + [node_says(first[0], -5), node_says(first[1], 2.5)])
    second = list(strategy.configure_train(2, arrays, ConfigRecord(), None))
    assert [int(m.content["config"]["client-id"]) for m in second] == largest_first
    assert [m.metadata.dst_node_id for m in second] == [100, 101, 102, 103]
    pid = largest_first[0]
    strategy.aggregate_train(2, [trained_reply(strategy, second[0], pid)])
    report = strategy.report  # past the node check (partition 3 then exceeds its upload budget)
    assert not report.rejected and len(report.costs) + len(report.violations) == 1
    with pytest.raises(UpdateRejected, match="which its node does not serve"):
        strategy.validator.check(trained_reply(strategy, first[0], pid), strategy.train_routes)


def test_clients_with_nodes_of_their_own_keep_their_order(task_identity):
    strategy, arrays = make(MaskedFedAvg)
    sampled = strategy.sample_partitions(1)
    strategy.node_order = {node: 3 - i for i, node in enumerate(NODES.values())}
    messages = list(strategy.configure_train(1, arrays, ConfigRecord(), None))
    assert [m.metadata.dst_node_id for m in messages] == [NODES[p] for p in sampled]
