"""Client-side behaviour of a method: how a round trains, which model is evaluated and
published, and what extra local state a client keeps.

:class:`~msmtrec.federation.client.ClientRuntime` (shared by the simulation and the gRPC
client) calls one hook object per client at fixed points, so a method that trains or
evaluates differently (FedRep's alternating steps, Ditto's personal model, fine-tuning) is one
subclass in its own module and the simulation and the network run it identically.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

    from msmtrec.federation.client import ClientRuntime
    from msmtrec.model.mmoe import MultiTaskMMoE
    from msmtrec.training.trainer import FitResult


class ClientHooks:
    """The default: train the model the server sends (regularizer anchored at θ^start),
    evaluate and publish that same model, keep no extra state."""

    #: prefix of this method's extra tensors in the client's full state (saved to disk)
    state_prefix = ""

    def attach(self, runtime: ClientRuntime) -> None:
        """Called once the runtime has its model, data and parameter groups."""

    def train(self, runtime: ClientRuntime, round_number: int, progress: bool) -> FitResult:
        """One local round on the model whose shared tensors are sent back."""
        return runtime.trainer.fit(
            runtime.splits.train,
            seed=runtime.round_seed(round_number),
            anchor=runtime.anchor,
            mu=runtime.federation.mu,
            shrink=runtime.shrink,
            progress=progress,
            desc=f"{runtime.scenario} r{round_number}",
        )

    def private_epochs(self, runtime: ClientRuntime) -> int:
        """Epochs per round of ``runtime.trainer`` (the model whose shared tensors are sent),
        which all run DP-SGD when the client trains privately: the privacy budget is planned
        from this."""
        return runtime.trainer.config.local_epochs

    def after_receive(self, runtime: ClientRuntime) -> None:
        """The server's θ^start was just loaded (``runtime.completed_rounds`` is set)."""

    def evaluated_model(self, runtime: ClientRuntime) -> MultiTaskMMoE:
        """The model the client evaluates and publishes (not necessarily the one it sends)."""
        return runtime.model

    def extra_state(self, runtime: ClientRuntime) -> dict[str, torch.Tensor]:
        """Tensors besides the model's, each name starting with :attr:`state_prefix`."""
        return {}

    def load_extra_state(self, runtime: ClientRuntime, state: Mapping[str, torch.Tensor]) -> None:
        """Restore what :meth:`extra_state` returned (names with the prefix)."""
        if state:
            raise ValueError(f"unexpected tensors in the client state: {sorted(state)[:5]}")
