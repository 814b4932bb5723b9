"""Avalanche plugins that cannot apply to a prompt pool, refused with the reason.

Each experience trains a new prompt and head from scratch on its own data, and nothing earlier
(entries, backbone) is ever trained again: replaying earlier data, protecting earlier weights
or rewriting the classifier has nothing to act on. Such a plugin used to run silently (replay
doubled the compute for nothing) or fail deep inside Avalanche; it is refused at construction.
"""

from __future__ import annotations

from collections.abc import Sequence

from ...errors import ContinualError

_REPLAY = (
    "replays stored examples of earlier experiences, but the new prompt and head have none "
    "of their classes and earlier entries are never trained again"
)
_REGULARISE = (
    "protects earlier weights from change, but the backbone and earlier prompts and heads "
    "are frozen and the new ones start fresh"
)
_EDIT = "rewrites the model's classifier, but each pool entry keeps its own frozen head"
REFUSED_PLUGINS = {
    **dict.fromkeys(
        (
            "ReplayPlugin",
            "GDumbPlugin",
            "GSS_greedyPlugin",
            "GenerativeReplayPlugin",
            "MIRPlugin",
            "RARPlugin",
            "CoPEPlugin",
            "BiCPlugin",
            "GEMPlugin",
            "AGEMPlugin",
        ),
        _REPLAY,
    ),
    **dict.fromkeys(
        (
            "EWCPlugin",
            "SynapticIntelligencePlugin",
            "MASPlugin",
            "RWalkPlugin",
            "LwFPlugin",
            "LFLPlugin",
            "FeatureDistillationPlugin",
        ),
        _REGULARISE,
    ),
    **dict.fromkeys(
        (
            "CWRStarPlugin",
            "FromScratchTrainingPlugin",
            "CurrentDataNCMUpdate",
            "MemoryNCMUpdate",
            "NCMOracle",
            "CurrentDataFeCAMUpdate",
            "MemoryFeCAMUpdate",
            "FeCAMOracle",
            "TrainGeneratorAfterExpPlugin",
        ),
        _EDIT,
    ),
}


def refuse_plugins(plugins: Sequence[object]) -> None:
    """A `ContinualError` for the first plugin that cannot apply to a prompt pool, saying why."""
    for plugin in plugins:
        for cls in type(plugin).__mro__:
            reason = REFUSED_PLUGINS.get(cls.__name__)
            if reason is not None:
                raise ContinualError(
                    f"{type(plugin).__name__} cannot apply to PromptPoolStrategy: it {reason}; "
                    "leave it out (metrics, early stopping, LR schedules and other plugins "
                    "that do not train earlier weights or replay data work)"
                )
