"""Local training settings (kept free of torch so that CLIs and settings models can read the
defaults without importing it)."""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class TrainConfig:
    # Chosen on validation for the synthetic benchmark scale (tens of thousands of rows per
    # scenario). MTReclib's full-AliExpress setting is lr 1e-3 with batch 2048.
    lr: float = 3e-3
    weight_decay: float = 1e-6
    batch_size: int = 512
    local_epochs: int = 1
    eval_batch_size: int = 16384

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class PrivacyConfig:
    """Record-level (ε, δ)-differential privacy of a client's local training (DP-SGD; see
    docs/PRIVACY.md and :mod:`msmtrec.training.privacy`).

    ``epsilon``: the budget for every round the client plans to join; without
    ``noise_multiplier`` the noise is calibrated so that all planned rounds spend exactly
    it, with one the noise is fixed and ``epsilon`` only caps the spending (a round that
    would exceed it is refused). ``noise_multiplier`` alone: fixed noise, no cap, ε reported.
    ``delta``: None means 1/n (n = the client's training rows). ``max_grad_norm``: the
    per-sample clipping bound C (the L2 norm over every trained tensor). ``noise_seed``:
    seeds the Poisson sampling and the noise; None draws a secret one from the operating
    system (anyone who knows the seed can subtract the noise, so a networked client must not
    derive it from the federation's seed, which the aggregator knows).
    """

    epsilon: float | None = None
    delta: float | None = None
    max_grad_norm: float = 1.0
    noise_multiplier: float | None = None
    noise_seed: int | None = None

    def __post_init__(self) -> None:
        import math

        if self.epsilon is not None and not (0 < self.epsilon < math.inf):
            raise ValueError(
                f"dp_epsilon must be finite and > 0, got {self.epsilon!r} (leave it unset "
                "to train without differential privacy)"
            )
        if self.delta is not None and not (0 < self.delta < 1):
            raise ValueError(f"dp_delta must be in (0, 1), got {self.delta!r}")
        if not self.max_grad_norm > 0:
            raise ValueError(f"dp_max_grad_norm must be > 0, got {self.max_grad_norm!r}")
        if self.noise_multiplier is not None and not (0 <= self.noise_multiplier < math.inf):
            raise ValueError(
                f"dp_noise_multiplier must be finite and >= 0, got {self.noise_multiplier!r}"
            )
        if self.noise_multiplier and math.isinf(self.max_grad_norm):
            raise ValueError("dp_max_grad_norm must be finite when dp_noise_multiplier > 0")
        if self.epsilon is not None and math.isinf(self.max_grad_norm):
            raise ValueError("dp_max_grad_norm must be finite with a dp_epsilon budget")

    @property
    def enabled(self) -> bool:
        return self.epsilon is not None or self.noise_multiplier is not None

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_values(
        cls,
        epsilon: float | None = None,
        delta: float | None = None,
        max_grad_norm: float | None = None,
        noise_multiplier: float | None = None,
        noise_seed: int | None = None,
    ) -> PrivacyConfig | None:
        """The configuration the ``dp_*`` settings describe, or None when DP is off (neither
        ε nor a noise multiplier). Setting only δ, C or a seed is an error: it would look
        protected without being so."""
        if epsilon is None and noise_multiplier is None:
            stray = [
                name
                for name, v in (
                    ("dp_delta", delta),
                    ("dp_max_grad_norm", max_grad_norm),
                    ("dp_noise_seed", noise_seed),
                )
                if v is not None
            ]
            if stray:
                raise ValueError(
                    f"{', '.join(stray)} set without dp_epsilon or dp_noise_multiplier: "
                    "differential privacy is off unless one of those is set"
                )
            return None
        return cls(
            epsilon=epsilon,
            delta=delta,
            max_grad_norm=1.0 if max_grad_norm is None else max_grad_norm,
            noise_multiplier=noise_multiplier,
            noise_seed=noise_seed,
        )
