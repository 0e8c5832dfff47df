"""FedTiny (Huang et al., ICDCS 2023): ``--method fedtiny``.

``method`` holds the client (masked training, top-K pruned gradients, ABNS answers) and the
server part (warm-up, candidates, ABNS, pair validation, prune-and-grow); ``algorithm`` the
plain-torch steps. The mask server and options are the shared-mask family's.
"""

from fedsparse.clients.fedtiny.method import FedTiny

__all__ = ["FedTiny"]
