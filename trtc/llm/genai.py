"""onnxruntime-genai model folders: `genai_config.json` beside the decoder's .onnx (and usually a
`tokenizer.json`). Its facts are defaults trtc takes: the decoder's I/O name templates
(`past_key_values.%d.key`), head counts, eos/pad ids, the context length and the search settings.

The graph stays the authority on what the model takes (`decoder.DecoderSpec`); the config names
the caches and fills in dims the graph leaves symbolic (genai writes head_dim as `kv_cache_dim`)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from trtc.errors import TrtcError

CONFIG_NAME = "genai_config.json"
TOKENIZER_NAME = "tokenizer.json"


@dataclasses.dataclass(frozen=True)
class GenaiConfig:
    """What trtc reads from a genai_config.json. `names` maps genai's I/O keys (input_ids,
    attention_mask, position_ids, past_key_names, past_value_names, logits, present_key_names,
    present_value_names) to the graph's names or `%d` templates; `search` is the "search" section
    as written (do_sample, temperature, top_k, top_p, repetition_penalty, max_length, ...)."""

    path: Path
    model_file: Path
    names: dict[str, str]
    layers: int | None = None
    kv_heads: int | None = None
    head_dim: int | None = None
    vocab: int | None = None
    eos_ids: tuple[int, ...] = ()
    pad_id: int | None = None
    context_length: int | None = None
    search: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def tokenizer(self) -> Path | None:
        """The folder's tokenizer.json, if it has one."""
        path = self.path.parent / TOKENIZER_NAME
        return path if path.is_file() else None


def _ids(value: Any) -> tuple[int, ...]:
    if value is None:
        return ()
    return tuple(int(v) for v in value) if isinstance(value, list) else (int(value),)


def read_genai_config(path: Path) -> GenaiConfig:
    """The genai_config.json at `path`; a one-line error when it is not one genai would read."""
    where = str(path)
    try:
        data = json.loads(path.read_text())
        model = data["model"]
        decoder = model["decoder"]
        filename = decoder["filename"]
    except OSError as exc:
        raise TrtcError(f"cannot read it: {exc.strerror or exc}", where=where) from None
    except ValueError as exc:
        raise TrtcError(f"not JSON: {exc}", where=where) from None
    except (KeyError, TypeError) as exc:
        raise TrtcError(f"not an onnxruntime-genai config: no model.decoder.{exc.args[0]}"
                        if isinstance(exc, KeyError) else "not an onnxruntime-genai config", where=where) from None
    names = {**{str(k): str(v) for k, v in (decoder.get("inputs") or {}).items()},
             **{str(k): str(v) for k, v in (decoder.get("outputs") or {}).items()}}
    search = data.get("search") or {}
    return GenaiConfig(
        path=path, model_file=path.parent / filename, names=names,
        layers=decoder.get("num_hidden_layers"), kv_heads=decoder.get("num_key_value_heads"),
        head_dim=decoder.get("head_size"), vocab=model.get("vocab_size"), eos_ids=_ids(model.get("eos_token_id")),
        pad_id=model.get("pad_token_id"), context_length=model.get("context_length"), search=dict(search))


def find_genai(path: Path) -> tuple[Path, GenaiConfig | None]:
    """(the model file, its genai config or None) for a genai folder or any model file; a model file
    with a genai_config.json beside it that names it gets that config too."""
    if path.is_dir():
        config_path = path / CONFIG_NAME
        if not config_path.is_file():
            raise TrtcError(f"a folder, and no {CONFIG_NAME} in it", where=str(path),
                            hint="give a model file (.onnx, .trtir) or an onnxruntime-genai folder")
        config = read_genai_config(config_path)
        if not config.model_file.is_file():
            raise TrtcError(f"{CONFIG_NAME} names decoder file {config.model_file.name!r}, which is not there",
                            where=str(path))
        return config.model_file, config
    beside = path.parent / CONFIG_NAME
    if beside.is_file():
        config = read_genai_config(beside)
        if config.model_file.resolve() == path.resolve():
            return path, config
    return path, None
