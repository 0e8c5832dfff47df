"""Cost accounting: what each client spent in a round, beside the dense model doing the same.

FLOPs and memory are counted by the server from the coordinates a client uploaded (the method
adds what masked training does not show, or substitutes what only the client can measure);
bytes are measured on the messages themselves.
"""

from __future__ import annotations

from flwr.app import ArrayRecord, Message

from fedsparse.codec import ByteCounter
from fedsparse.costs import BACKWARD_FACTOR, ClientRoundCost, CostModel
from fedsparse.method import CostContext, Method
from fedsparse.strategies.validation import ClientUpdate


class CostAccountant:
    """Download sizes when a round's messages are built; each accepted reply's full cost."""

    def __init__(self, cost_model: CostModel, method: Method, batch_size: int, momentum: bool,
                 arrays_key: str) -> None:
        self.cost_model = cost_model
        self.method = method
        self.batch_size = batch_size
        self.momentum = momentum
        self.arrays_key = arrays_key
        self.count_bytes = ByteCounter()
        self._download: dict[int, tuple[int, int]] = {}
        self._upload: dict[int, tuple[Message, tuple[int, int]]] = {}
        self._dense_array_bytes: int | None = None

    def downloads(self, arrays: ArrayRecord, partitions: list[int], messages: list[Message]) -> None:
        """Remember each client's download (and a dense model's) for this round's messages."""
        self.count_bytes.forget()
        self._upload.clear()
        sizes = self.count_bytes.many([arrays, *(part for msg in messages for part in (
            msg.content, msg.content[self.arrays_key]))])
        self._dense_array_bytes = sizes[0]
        self._download = {pid: (sent, sent - arrays_sent + self._dense_array_bytes)
                          for pid, sent, arrays_sent in zip(partitions, sizes[1::2], sizes[2::2],
                                                            strict=True)}

    def arrived(self, reply: Message) -> None:
        """Count a reply's upload bytes when it arrives, while other clients still train, so
        that the count is off the round's critical path; ``cost`` uses it. Error replies
        (nothing to count) and replies without the model (rejected later) are skipped."""
        if reply.has_error() or self.arrays_key not in reply.content.array_records:
            return
        self._upload[id(reply)] = (reply, self._count_upload(reply))

    def upload_bytes(self, reply: Message) -> tuple[int, int]:
        """The reply's serialized bytes and those of its model record: counted on arrival, or now."""
        # keyed by the object (message ids may be unset on an in-memory grid), which the
        # entry keeps alive so that its id cannot be reused before it is taken
        counted = self._upload.pop(id(reply), None)
        return counted[1] if counted is not None and counted[0] is reply \
            else self._count_upload(reply)

    def forget_arrivals(self) -> None:
        """Drop what ``arrived`` counted for replies never costed (rejected), and the replies."""
        self._upload.clear()

    def _count_upload(self, reply: Message) -> tuple[int, int]:
        upload, arrays_up = self.count_bytes.many([reply.content, reply.content[self.arrays_key]])
        return upload, arrays_up

    def cost(self, client: ClientUpdate, server_round: int, local_epochs: int) -> ClientRoundCost:
        """The client's round: server-counted FLOPs and memory of the coordinates it uploaded
        (adjusted by the method), measured bytes. ``UpdateRejected`` from the method passes.
        Samples are the protocol's (every local epoch over the verified training set), not the
        client's word: a client reporting fewer cannot slip under a FLOPs budget."""
        model = self.cost_model
        samples = local_epochs * client.num_examples
        kept = {n: client.update.tensors[n].nnz if n in client.update.tensors else 0
                for n in model.param_sizes}
        sparse = model.training_cost(kept, samples, self.batch_size, self.momentum)
        dense = model.training_cost(model.dense_counts(), samples, self.batch_size, self.momentum)
        sparse, density = self.method.round_cost(client.budget, sparse,
                                                 client.update.density(model.param_sizes),
                                                 client.metrics, CostContext(
                                                     client.partition_id, server_round,
                                                     client.num_examples, local_epochs,
                                                     self.batch_size, self.momentum))
        reply = client.reply
        upload, arrays_up = self.upload_bytes(reply)
        down, dense_down = self._download.get(client.partition_id, (0, 0))
        dense_arrays = self._dense_array_bytes or arrays_up
        return ClientRoundCost(
            partition_id=client.partition_id, density=density,
            train_flops=sparse.flops, memory_bytes=sparse.memory_bytes,
            activation_bytes=sparse.activation_bytes, upload_bytes=upload,
            download_bytes=down, dense_train_flops=dense.flops,
            dense_memory_bytes=dense.memory_bytes, dense_activation_bytes=dense.activation_bytes,
            dense_upload_bytes=upload - arrays_up + dense_arrays, dense_download_bytes=dense_down,
            conv_linear_flops=sparse.conv_linear_flops if sparse.conv_linear_flops is not None
            else (1 + BACKWARD_FACTOR) * samples * model.multiply_flops_per_sample(kept),
            dense_conv_linear_flops=(1 + BACKWARD_FACTOR) * samples * model.multiply_flops_per_sample(
                model.dense_counts()))
