import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, Error, Message, MetricRecord, RecordDict

from fedsparse.codec import serialized_bytes
from fedsparse.strategies.accounting import CostAccountant


def _reply(values: np.ndarray, error: bool = False) -> Message:
    sent = Message(RecordDict({}), message_type="train", dst_node_id=9)
    sent.metadata.__dict__["_message_id"] = "sent"
    if error:
        return Message(Error(code=0, reason="boom"), reply_to=sent)
    return Message(RecordDict({"arrays": ArrayRecord({"w": Array(values)}),
                               "metrics": MetricRecord({"num-examples": 3})}), reply_to=sent)


class NoCounting:
    def many(self, objs):
        raise AssertionError("counted again after arrival")


def _accountant() -> CostAccountant:
    return CostAccountant(cost_model=None, method=None, batch_size=32, momentum=False,  # type: ignore[arg-type]
                          arrays_key="arrays")


def test_bytes_counted_on_arrival_are_flowers_and_are_not_counted_again(task_identity):
    accountant = _accountant()
    replies = [_reply(np.full(1000, k, dtype=np.float32)) for k in range(3)]
    for reply in replies:
        accountant.arrived(reply)
    accountant.count_bytes = NoCounting()  # type: ignore[assignment]
    for reply in replies:  # each reply its own count (their message ids are all unset here)
        assert accountant.upload_bytes(reply) == (serialized_bytes(reply.content),
                                                  serialized_bytes(reply.content["arrays"]))


def test_replies_not_seen_on_arrival_are_counted_when_costed(task_identity):
    accountant = _accountant()
    early, late = _reply(np.zeros(10, np.float32)), _reply(np.ones(500, np.float32))
    accountant.arrived(early)
    assert accountant.upload_bytes(late) == (serialized_bytes(late.content),
                                             serialized_bytes(late.content["arrays"]))
    accountant.arrived(_reply(np.ones(5, np.float32), error=True))  # nothing to count: no error
    accountant.forget_arrivals()
    accountant.count_bytes = NoCounting()  # type: ignore[assignment]
    with pytest.raises(AssertionError, match="counted again"):
        accountant.upload_bytes(early)  # forgotten: a later round never sees a stale count
