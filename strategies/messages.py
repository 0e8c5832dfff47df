"""Per-client messages: each sampled client gets its own submodel, budget and method records."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, RecordDict

from fedsparse.budgets import Budget
from fedsparse.codec import encode, pack_records
from fedsparse.masks import Masks
from fedsparse.method import Method


class MessageBuilder:
    """Builds the messages of one round; submodels are computed once per budget and round."""

    def __init__(self, method: Method, budgets: list[Budget], param_names: Mapping[str, int],
                 arrays_key: str, config_key: str) -> None:
        self.method = method
        self.budgets = budgets
        self.param_names = list(param_names)
        self.arrays_key = arrays_key
        self.config_key = config_key
        #: the global model the round's messages carry (numpy views)
        self.global_arrays: dict[str, np.ndarray] = {}
        self._masks_by_budget: dict[Budget, Masks | None] = {}

    def client_masks(self, partition_id: int) -> Masks | None:
        """The submodel this client holds this round (None: the whole model)."""
        budget = self.budgets[partition_id]
        if budget not in self._masks_by_budget:
            params = {n: torch.from_numpy(self.global_arrays[n]) for n in self.param_names}
            self._masks_by_budget[budget] = self.method.client_masks(params, budget)
        return self._masks_by_budget[budget]

    def build(self, partitions: list[int], node_of: Mapping[int, int], arrays: ArrayRecord,
              config: ConfigRecord, server_round: int, message_type: str,
              virtual: bool = False, state_dir: str | None = None) -> list[Message]:
        """One message per partition; ``virtual``: nodes serve many clients, so each message
        names its client (and ``state_dir``, where clients keep private state)."""
        self.global_arrays = {k: v.numpy() for k, v in arrays.items()}
        self._masks_by_budget = {}
        config["server-round"] = server_round
        novel = self.method.novel_clients()
        messages = []
        for pid in partitions:
            masks = self.client_masks(pid)
            if masks is None:
                payload = arrays
            else:
                state = {k: torch.from_numpy(v) for k, v in self.global_arrays.items()}
                payload = encode(state, masks)
            budget = self.budgets[pid]
            client_config = ConfigRecord({**config, **virtual_client_config(pid, virtual, state_dir),
                                          "budget-density": budget.density,
                                          "novel": int(pid in novel)})
            record = RecordDict({self.arrays_key: payload, self.config_key: client_config})
            extras = (self.method.client_records(budget) if message_type == MessageType.TRAIN
                      else self.method.evaluation_records(budget))
            for name, extra in pack_records(extras).items():
                record[name] = extra
            messages.append(Message(content=record, message_type=message_type,
                                    dst_node_id=node_of[pid]))
        return messages


#: message config keys of a virtual client: which client the message is for, and the server's run
#: folder, under which virtual clients keep their private state (simulations: one machine)
CLIENT_ID_KEY = "client-id"
#: reply metric of a simulated node: the index at which Flower registered it (``partition-id``
#: of its node config), which orders Flower's work queue
NODE_INDEX_KEY = "node-index"
STATE_DIR_KEY = "run-dir"


def virtual_client_config(partition_id: int, virtual: bool, state_dir: str | None) -> dict[str, Any]:
    """What a message to a node serving virtual clients adds to its config."""
    if not virtual:
        return {}
    extra: dict[str, Any] = {CLIENT_ID_KEY: partition_id}
    if state_dir is not None:
        extra[STATE_DIR_KEY] = state_dir
    return extra
