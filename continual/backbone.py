"""The frozen backbone: a Hugging Face model and its tokenizer, with every weight frozen.

It exposes the three things the pool needs: input embeddings (to put a soft prompt before),
``encode`` (prompted embeddings → pooled features) and ``query`` (prompt-free features that the
selector routes on). Its ``fingerprint`` lets a saved pool refuse a different backbone.

Which families load and how: `continual.families`. A language model loaded with its output
head (``T5ForConditionalGeneration``, ``LlamaForCausalLM``, ...) also serves text-to-text
tasks: ``language_model`` generates (`continual.generate`). Features are the mean of the
input's tokens for every family, decoders included (measured better than the last token; see
``Backbone``). Inputs are padded on the right, so with the prompt before them a causal model's
real tokens never see padding.
"""

from __future__ import annotations

import functools
import inspect
import os
import threading
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from .errors import ContinualError
from .families import (
    DEFAULT_MODEL_NAME,
    DEFAULT_MODEL_PACKAGE,
    DTYPES,
    Stop,
    default_model_path,
    has_lm_head,
    is_decoder,
    layer_stack,
    load_pretrained,
    position_limit,
    prepare_tokenizer,
    resolve_device,
    resolve_dtype,
    truncated,
    weights_sha256,
)
from .pooling import POOLINGS, Pooling, last_pool, mean_pool
from .query_cache import QueryCache
from .tokens import tokenize

__all__ = [
    "DEFAULT_MODEL_NAME",
    "DEFAULT_MODEL_PACKAGE",
    "DTYPES",
    "POOLINGS",
    "Backbone",
    "default_model_path",
    "resolve_device",
    "resolve_dtype",
]


def _exclusive(method: Callable[..., Any]) -> Callable[..., Any]:
    """Run ``method`` holding its backbone's ``lock`` (see `Backbone.__init__`)."""

    @functools.wraps(method)
    def locked(self: Backbone, *args: Any, **kwargs: Any) -> Any:
        with self.lock:
            return method(self, *args, **kwargs)

    return locked


class Backbone(nn.Module):
    """A frozen Hugging Face encoder or decoder-only language model with its tokenizer.

    Args:
        model: a model taking ``inputs_embeds`` (``BertModel``, ``RobertaModel``,
            ``DistilBertModel``, ``T5EncoderModel``, ``LlamaModel``, ``GPT2Model``, ...), or
            a language model with its output head (``LlamaForCausalLM``, ``GPT2LMHeadModel``,
            ``T5ForConditionalGeneration``, ...): features then come from its base model (the
            encoder of an encoder-decoder) and ``language_model`` keeps the whole model.
        tokenizer: its tokenizer (a missing pad token is set to the end-of-text token).
        name: how the model was loaded (a hub name or a path), recorded in saved pools.
        max_length: inputs are truncated to this many tokens (prompt tokens not counted).
        query_layer: the layer (1..num_layers) whose pooled output routes inputs; by
            default the middle layer (3 of MiniLM's 6): on text4 it routed 95.5% right against
            92.9% from the last layer, at half the cost of a full pass.
        query_cache_size: query features kept per text (least recently used go first); a
            training set's queries are computed once. 0 turns the cache off.
        pooling: ``"mean"`` over the input's tokens (the default, for every family) or the
            ``"last"`` real token. Measured on SmolLM2-135M (GGUF, text4, 16 train and 16 test
            texts per label, `benchmarks/pooling_decoders.py`): mean pooling gave a frozen
            linear probe 62.2% (last token: 60.0%) and routed 85.6% right from layer 15
            (last token: 79.2%). A verbalizer head needs ``"last"`` (the LM's next-token
            logits).
        gguf_sha256: the digest of the ``.gguf`` file the weights came from, if any.

    Examples:
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
        pooling: Pooling | None = None,
        gguf_sha256: str | None = None,
    ) -> None:
        super().__init__()
        # The whole language model where it has an output head; None for an encoder.
        self.language_model: Any = None
        if has_lm_head(model):
            whole: Any = model
            self.language_model = whole.eval()
            for parameter in whole.parameters():
                parameter.requires_grad_(False)
            model = whole.get_encoder() if whole.config.is_encoder_decoder else whole.base_model
        self.model: Any = model.eval()  # a transformers model; typed loosely on purpose
        for parameter in self.model.parameters():
            parameter.requires_grad_(False)
        self.tokenizer = tokenizer
        self.name = name
        self.gguf_sha256 = gguf_sha256
        config: Any = model.config
        self.architecture: str = type(model).__name__
        getter: Any = getattr(model, "get_input_embeddings", None)
        try:
            embeddings = getter() if callable(getter) else None
        except (NotImplementedError, AttributeError):
            embeddings = None
        if not isinstance(embeddings, nn.Embedding):
            raise ContinualError(
                f"backbone {name!r} ({self.architecture}) has no input "
                "embeddings to put a soft prompt before"
            )
        forward = inspect.signature(self.model.forward).parameters
        if "inputs_embeds" not in forward:
            raise ContinualError(
                f"backbone {name!r} ({self.architecture}) does not take inputs_embeds"
            )
        self.is_decoder = is_decoder(model)
        # Token types only where the model has a table for them (GPT-2 would add the embedding
        # of token 0 to every position instead).
        self._token_types = (
            "token_type_ids" in forward and int(getattr(config, "type_vocab_size", 0) or 0) > 0
        )
        self.hidden_size: int = config.hidden_size
        self.num_layers: int = config.num_hidden_layers
        chosen = pooling if pooling is not None else "mean"
        if chosen not in POOLINGS:
            raise ContinualError(f"unknown pooling {pooling!r}; use 'mean' or 'last'")
        self.pooling: Pooling = chosen
        self.position_limit: int | None = position_limit(config)
        limit = self.position_limit
        if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 2:
            # One token would be the special start token alone: nothing of the input is seen.
            raise ContinualError(f"max_length must be an integer of at least 2, got {max_length!r}")
        if limit is not None and max_length > limit:
            raise ContinualError(f"max_length {max_length} exceeds the model's {limit} positions")
        self.max_length = max_length
        self.query_layer = max(1, self.num_layers // 2) if query_layer is None else int(query_layer)
        if not 1 <= self.query_layer <= self.num_layers:
            raise ContinualError(f"query_layer must be in 1..{self.num_layers}, got {query_layer}")
        self.layers = layer_stack(self.model, self.num_layers)
        self._query_model = truncated(self.model, self.query_layer)
        if query_cache_size < 0:
            raise ContinualError(f"query_cache_size must be 0 or more, got {query_cache_size}")
        self._query_cache = QueryCache(query_cache_size)
        self._fingerprint: dict[str, Any] | None = None
        # Deep prompts hook the shared layers and narrow their list during a pass, and the
        # query cache is shared: one pass at a time per backbone, so a thread that trains
        # while another predicts sees neither's hooks (torch's own threads still use every core).
        self.lock = threading.RLock()
        prepare_tokenizer(tokenizer, name)

    @property
    def is_seq2seq(self) -> bool:
        """Whether the language model is an encoder-decoder (T5): the prompt goes before the
        encoder's input and the decoder writes the answer."""
        return self.language_model is not None and bool(
            getattr(self.language_model.config, "is_encoder_decoder", False)
        )

    def check_generative(self) -> None:
        """A `ContinualError` saying why this backbone cannot write text, if it cannot."""
        if self.language_model is not None:
            return
        what = "a decoder without its LM head" if self.is_decoder else "an encoder"
        raise ContinualError(
            f"backbone {self.name!r} ({self.architecture}) is {what}: a text-to-text task needs "
            "a language model with its output head (a decoder LM such as GPT-2, Llama or "
            "SmolLM2, or T5ForConditionalGeneration)"
        )

    @property
    def query_cache_size(self) -> int:
        """Query feature rows kept (see `QueryCache`); 0 keeps none."""
        return self._query_cache.size

    @query_cache_size.setter
    def query_cache_size(self, size: int) -> None:
        self._query_cache.size = size

    @property
    def device(self) -> torch.device:
        """Where the frozen weights are; every tensor the library makes for them goes there."""
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        """The frozen weights' precision; prompts and heads stay float32 whatever it is."""
        return next(self.model.parameters()).dtype

    @classmethod
    def load(
        cls,
        name_or_path: str | os.PathLike | None = None,
        *,
        max_length: int = 128,
        query_layer: int | None = None,
        device: str | torch.device = "cpu",
        dtype: str | torch.dtype = "float32",
        pooling: Pooling | None = None,
    ) -> Backbone:
        """Load a frozen model and its tokenizer; no argument gives the packaged MiniLM.

        ``name_or_path`` is a hub name, a folder, or a ``.gguf`` file (dequantized to
        ``dtype`` on load; the file's sha256 joins the fingerprint). ``device`` is ``"cpu"``,
        ``"cuda"``, ``"cuda:1"``... or ``"auto"`` (the GPU if there is one); ``dtype`` is
        ``float32``, ``bfloat16`` or ``float16`` for the frozen weights.

        Loading never runs code from the model's repository (``trust_remote_code`` stays off)
        nor unpickles weights (``use_safetensors``: a model without safetensors weights is
        refused), and the packaged model is read from its folder alone
        (``local_files_only``), without changing the process's environment.
        """
        model, tokenizer, name, gguf_sha256 = load_pretrained(name_or_path, device, dtype)
        return cls(
            model,
            tokenizer,
            name,
            max_length=max_length,
            query_layer=query_layer,
            pooling=pooling,
            gguf_sha256=gguf_sha256,
        )

    # -- tokens and embeddings -------------------------------------------------------------
    def tokenize(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        """Token ids and attention mask, padded on the right to the longest text, truncated to
        max_length: those of the whole texts, though a very long text is cut at a space before
        it is tokenized (`continual.tokens`)."""
        batch = tokenize(self.tokenizer, texts, self.max_length)
        device = self.device
        return {
            "input_ids": batch["input_ids"].to(device),
            "attention_mask": batch["attention_mask"].to(device),
        }

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Input embeddings of token ids: (B, n) → (B, n, H), in float32."""
        return self.model.get_input_embeddings()(input_ids).float()

    @property
    def embedding_matrix(self) -> torch.Tensor:
        """The vocabulary embedding matrix (V, H), in the backbone's dtype."""
        return self.model.get_input_embeddings().weight

    def extra_inputs(self, attention_mask: torch.Tensor) -> dict[str, Any]:
        """Keyword inputs the model needs besides ids or embeddings and the mask."""
        extra: dict[str, Any] = {}
        if self._token_types:
            extra["token_type_ids"] = torch.zeros_like(attention_mask)
        if self.is_decoder:
            extra["use_cache"] = False
        return extra

    # -- features ----------------------------------------------------------------------------
    @_exclusive
    def encode(
        self,
        inputs_embeds: torch.Tensor,
        attention_mask: torch.Tensor,
        pool_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Run the frozen model on embeddings and pool: (B, n, H) → (B, H), float32.

        Mean pooling averages the positions in ``pool_mask`` (B, n) (by default, the attended
        ones); last pooling takes the last attended position. Gradients flow to
        ``inputs_embeds`` (that is how a soft prompt learns).
        """
        hidden = self.model(
            inputs_embeds=inputs_embeds.to(self.dtype),
            attention_mask=attention_mask,
            **self.extra_inputs(attention_mask),
        ).last_hidden_state  # (B, n, H)
        return self.pool(hidden, attention_mask, pool_mask)

    def pool(
        self,
        hidden: torch.Tensor,
        attention_mask: torch.Tensor,
        pool_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        hidden = hidden.float()
        if self.pooling == "last":
            return last_pool(hidden, attention_mask)
        return mean_pool(hidden, attention_mask if pool_mask is None else pool_mask)

    @_exclusive
    @torch.no_grad()
    def query(
        self,
        texts: Sequence[str],
        batch_size: int = 64,
        *,
        with_last: bool = False,
        prefix: int = 0,
    ) -> torch.Tensor:
        """Prompt-free features (N, H) on the CPU from ``query_layer``: what selectors route on.

        ``with_last``: (N, 2H), the query layer's and the last layer's mean-pooled states side
        by side, from one full pass (what `ViewGaussianSelector` routes on). ``prefix``: the
        input carries that many placeholder positions before it, as in a pass whose prompt is
        put in at the query layer (`continual.placement.deep_pass`), so these are the very features that
        pass routes on. Up to
        ``query_cache_size`` texts' features are cached (least recently used dropped first), so
        a training set's queries are computed once.
        """
        if with_last and prefix:
            raise ContinualError("query features with a prefix come from the query layer only")
        found = self._query_cache.found([(with_last, prefix, text) for text in texts])
        missing = [text for text in dict.fromkeys(texts) if text not in found]
        for start in range(0, len(missing), batch_size):
            chunk = missing[start : start + batch_size]
            batch = self.tokenize(chunk)
            features = self.query_ids(
                batch["input_ids"], batch["attention_mask"], with_last=with_last, prefix=prefix
            ).cpu()
            found.update(zip(chunk, features))
            self._query_cache.add(
                ((with_last, prefix, text), row) for text, row in zip(chunk, features)
            )
        if not texts:
            return torch.zeros(0, self.hidden_size * (2 if with_last else 1))
        return torch.stack([found[text] for text in texts])

    @_exclusive
    @torch.no_grad()
    def query_ids(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        *,
        with_last: bool = False,
        prefix: int = 0,
    ) -> torch.Tensor:
        """`query` for token ids (B, n) that are already tokenized: (B, H) or (B, 2H), not cached."""
        if prefix:
            states = self.lower_states(input_ids, attention_mask, prefix, self.query_layer)
            return self.pool(states, attention_mask)
        inputs = {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            **self.extra_inputs(attention_mask),
        }
        if not with_last:
            hidden = self._query_model(**inputs).last_hidden_state
            return self.pool(hidden, attention_mask)
        states = self.model(**inputs, output_hidden_states=True).hidden_states
        return torch.cat(
            [
                self.pool(states[self.query_layer], attention_mask),
                self.pool(states[-1], attention_mask),
            ],
            dim=1,
        )

    # -- the layers below a deep prompt ----------------------------------------------------
    def with_placeholders(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, length: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Input embeddings with ``length`` zero vectors before them, and the mask to match.

        The zeros hold the places a deep prompt fills at its first layer: every task shares
        them, so the layers below carry no task and one pass of them serves every prompt.
        """
        embeds = self.embed(input_ids)
        batch = embeds.shape[0]
        holes = embeds.new_zeros(batch, length, embeds.shape[2])
        ones = attention_mask.new_ones(batch, length)
        return torch.cat([holes, embeds], dim=1), torch.cat([ones, attention_mask], dim=1)

    @_exclusive
    @torch.no_grad()
    def lower_states(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        length: int,
        start: int,
    ) -> torch.Tensor:
        """The input's states (B, n, H) at the input of layer ``start`` in a pass with
        ``length`` placeholders: what `continual.placement.deep_pass` takes as ``lower``. Only the layers
        below ``start`` run."""
        if self.layers is None or not 0 < start < self.num_layers:
            raise ContinualError(f"no layer {start} to read the states below a deep prompt at")
        captured: list[torch.Tensor] = []

        def stop(_module: nn.Module, args: tuple) -> None:
            captured.append(args[0][:, length:])
            raise Stop

        handle = self.layers[start].register_forward_pre_hook(stop)
        try:
            embeds, mask = self.with_placeholders(input_ids, attention_mask, length)
            self.model(
                inputs_embeds=embeds.to(self.dtype),
                attention_mask=mask,
                **self.extra_inputs(mask),
            )
        except Stop:
            pass
        finally:
            handle.remove()
        if not captured:
            raise ContinualError(f"layer {start} did not run")
        return captured[0]

    # -- identity ----------------------------------------------------------------------------
    @_exclusive
    def fingerprint(self) -> dict[str, Any]:
        """What a saved pool records to recognise this backbone: name, shape, weights hash,
        architecture, pooling and, for a ``.gguf`` file, its sha256.

        The hash covers every weight, so a pool refuses a backbone that was fine-tuned even
        where its embeddings were left alone. It covers the weights as held (the device does
        not matter, the precision does: ``dtype`` is recorded so a pool can say which to load).
        """
        if self._fingerprint is None:
            config = self.model.config
            self._fingerprint = {
                "name": self.name,
                "model_type": getattr(config, "model_type", type(self.model).__name__),
                "architecture": self.architecture,
                "hidden_size": self.hidden_size,
                "num_layers": self.num_layers,
                "vocab_size": int(self.embedding_matrix.shape[0]),
                "weights_sha256": weights_sha256(self.model),
                "gguf_sha256": self.gguf_sha256,
                "dtype": str(self.dtype).removeprefix("torch."),
                "pooling": self.pooling,
                "max_length": self.max_length,
                "query_layer": self.query_layer,
            }
        return dict(self._fingerprint)

    def train(self, mode: bool = True) -> Backbone:
        # The backbone stays in eval mode whatever the caller asks: dropout would make the
        # frozen features noisy and predictions non-deterministic.
        return super().train(False)

    def __getstate__(self) -> dict[str, Any]:
        # A lock cannot be copied or pickled (Avalanche deep-copies the model in several
        # strategies): a copy gets a lock of its own.
        return {key: value for key, value in self.__dict__.items() if key != "lock"}

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        self.lock = threading.RLock()
