"""`trtc export triton` of an LLM decoder: a decoupled Python-backend model streaming its tokens.

A decoder is what trtc's generation loop drives on the CPU reference (trtc.llm.decoder.DecoderSpec
reads its roles off the graph): an .onnx or .trtir with a growing KV cache, a .trtir with the
static cache of `optimize --llm`, or an onnxruntime-genai folder. (An --llm engine is the loop's on
a GPU; serving one is not in this build: the report says so and the tensor model is written.)
`find_decoder` says whether an artifact is one (automatic; `--llm`: it must be; `--no-llm`: not
asked), and `export_llm` writes REPO/NAME/config.pbtxt (backend python, max_batch_size 0,
`model_transaction_policy { decoupled: true }`, the inputs of trtc.serve.llm_signature) and

    VERSION/model.py        trtc/serve/python_llm_model.py (the same file for every decoder)
    VERSION/trtc.json       kind "llm": the decoder's path and spec, the tokenizer, the request
                            defaults and the signature the config was written from
    VERSION/decoder/...     the decoder as given: an .onnx as exported (its external data copied:
                            onnx refuses a hard-linked one), a .trtir, or a genai folder's config,
                            model and tokenizer files
    VERSION/tokenizer.json  --tokenizer, when given

No batching: one prompt per request, an instance serving its requests one after another
(`--instances N` serves N at once). Triton's dynamic batcher gathers requests only before they
start, so batching generations needs in-flight batching (rows joining a running batch), which
this build does not have.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path
from typing import Any

import onnx_ir as ir

from trtc import __version__
from trtc.errors import TrtcError
from trtc.fileio import file_sha256
from trtc.llm.decoder import DecoderSpec
from trtc.llm.genai import GenaiConfig, find_genai
from trtc.serve.check import MODEL_SPEC, check_config
from trtc.serve.config import TritonExportOptions
from trtc.serve.export import place_file, write_model_dir
from trtc.serve.llm_signature import llm_signature
from trtc.serve.schema import CONFIG_NAME, config_module, config_text, parse_config, triton_type
from trtc.serve.signature import Signature

PYTHON_LLM_MODEL = Path(__file__).with_name("python_llm_model.py")
DECODER_DIR = "decoder"
# Files of a genai folder the served model may read besides its config and decoder.
_GENAI_EXTRAS = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json")


@dataclasses.dataclass(frozen=True)
class DecoderSource:
    """A decoder found in an artifact: what was given (a file, or a genai folder), the model file,
    its genai config, its spec and the files it is made of (the model file, external data)."""

    path: Path
    model_file: Path
    genai: GenaiConfig | None
    spec: DecoderSpec
    files: tuple[Path, ...]

    @property
    def form(self) -> str:
        if self.genai:
            return "onnxruntime-genai folder"
        cache = f"static cache of {self.spec.static.max_seq} slots" if self.spec.static else "growing cache"
        return f"{self.model_file.suffix} decoder, {cache}"


@dataclasses.dataclass(frozen=True)
class DecoderFile:
    """A decoder file or genai folder read as trtc.llm.decoder.open_decoder reads it: the model file,
    its genai config, the graph (weights stay on disk) and a .trtir's static-cache record."""

    model_file: Path
    genai: GenaiConfig | None
    model: ir.Model
    llm: dict[str, Any] | None = None

    def spec(self) -> DecoderSpec:
        return DecoderSpec.from_model(self.model, self.genai, str(self.model_file), llm=self.llm)


def read_decoder(path: Path) -> DecoderFile:
    """`path` (a file or genai folder) read as a decoder; one line when it is not a model."""
    from trtc.loading import artifact_kind

    model_file, genai = find_genai(path)
    if artifact_kind(model_file) == "trtir":
        from trtc.ir import load_artifact

        artifact = load_artifact(model_file)
        return DecoderFile(model_file, genai, artifact.model, artifact.meta.get("llm"))
    try:
        return DecoderFile(model_file, genai, ir.load(model_file))
    except Exception as exc:  # protobuf and onnx_ir raise their own types for a file that is not ONNX
        text = " ".join(str(exc).split())[:200] or type(exc).__name__
        raise TrtcError(f"cannot read it as ONNX: {text}", where=str(model_file)) from None


def find_decoder(artifact: Path, wanted: bool | None) -> tuple[DecoderSource | None, str | None]:
    """(the decoder, None) when `artifact` is one trtc's generation loop drives. Otherwise (None, a
    note for the report) for a model that has a decoder's input_ids and logits but is refused as
    one, else (None, None). `wanted` True (--llm) makes a refusal the error; False skips the question."""
    from trtc.runtime.sidecar import PLAN_SUFFIXES

    if wanted is False:
        return None, None
    if artifact.suffix in PLAN_SUFFIXES:
        from trtc.runtime.sidecar import read_sidecar

        why = "serving an engine's generation is not in this build"
        hint = "export the .trtir or .onnx it was built from: trtc's loop streams it on the CPU reference"
        if wanted:
            raise TrtcError(why, where=str(artifact), hint=hint)
        try:
            engine_llm = read_sidecar(artifact).get("llm")
        except TrtcError:  # the tensor model's export says what is wrong with the engine
            engine_llm = None
        return None, (f"not served as a streaming LLM: {why} ({hint})" if engine_llm else None)
    if not artifact.exists():
        raise TrtcError("file not found", where=str(artifact))
    try:
        found = read_decoder(artifact)
    except TrtcError:
        if wanted or artifact.is_dir():
            raise
        return None, None  # not a model trtc reads as a decoder: the tensor model's export says why
    try:
        spec = found.spec()
    except TrtcError as exc:
        if wanted:
            raise
        names = found.genai.names if found.genai else {}
        looks = (names.get("input_ids", "input_ids") in {v.name for v in found.model.graph.inputs}
                 and names.get("logits", "logits") in {v.name for v in found.model.graph.outputs})
        return None, (f"not served as a streaming LLM: {exc.message}" if looks else None)
    genai, model_file = found.genai, found.model_file
    files = (model_file, *_external_files(found.model, model_file))
    return DecoderSource(genai.path.parent if genai else artifact, model_file, genai, spec, files), None


def _external_files(model: ir.Model, model_file: Path) -> list[Path]:
    """The external data files an .onnx's weights are in (a .trtir references its own by absolute path)."""
    files = {}
    for value in model.graph.initializers.values():
        tensor = value.const_value
        if isinstance(tensor, ir.ExternalTensor) and not Path(str(tensor.location)).is_absolute():
            files[str(tensor.location)] = model_file.parent / str(tensor.location)
    return sorted(files.values())


def _refuse_options(options: TritonExportOptions, where: str) -> None:
    why = None
    if options.max_batch:
        why = ("--max-batch", "the LLM model takes one prompt per request: batching generations needs in-flight "
                              "batching, which this build does not have")
    elif options.max_queue_delay_us is not None:
        why = ("--max-queue-delay-us", "the LLM model is not batched (one prompt per request)")
    elif options.profiles:
        why = ("--shapes", "the generation loop sizes every step itself; the LLM model has no profiles")
    elif options.backend == "tensorrt":
        why = ("--backend tensorrt", "the LLM model runs trtc's generation loop in Triton's Python backend")
    if why:
        raise TrtcError(f"{why[1]} ({where} is an LLM decoder)", where=why[0],
                        hint="drop it, or export the tensor-in/tensor-out model with --no-llm")


def _defaults(genai: GenaiConfig | None) -> dict[str, Any]:
    """A request's defaults: a genai folder's eos, pad id, max_length and search settings."""
    from trtc.llm.sampling import SamplingOptions
    from trtc.serve.served_llm import DEFAULT_MAX_TOKENS

    search = genai.search if genai else {}
    sampling = {"do_sample": bool(search.get("do_sample", False))}
    sampling.update({k: search[k] for k in ("temperature", "top_k", "top_p", "min_p", "repetition_penalty")
                     if search.get(k) is not None})
    try:
        SamplingOptions(**sampling)
    except TrtcError as exc:
        raise TrtcError(f"its search setting {exc.message}", where=str(genai.path if genai else None)) from None
    return {"max_tokens": DEFAULT_MAX_TOKENS, "stop_token_ids": list(genai.eos_ids) if genai else [],
            "pad_id": genai.pad_id if genai and genai.pad_id is not None else 0,
            "max_length": search.get("max_length"), "sampling": sampling}


def _tokenizer(source: DecoderSource, options: TritonExportOptions) -> tuple[Path | None, str | None]:
    """The tokenizer.json the model serves text with and a note when a genai folder's is unusable."""
    from trtc.llm.text import load_tokenizer

    if options.tokenizer is not None:
        load_tokenizer(options.tokenizer)  # its one-line error now, not at the server's start
        return (options.tokenizer / "tokenizer.json" if options.tokenizer.is_dir() else options.tokenizer), None
    own = source.genai.tokenizer if source.genai else None
    if own is None:
        return None, None
    try:
        load_tokenizer(own)
    except TrtcError as exc:
        return None, f"no text_input/text_output: the folder's tokenizer cannot be read here ({exc.message})"
    return own, None


def llm_config(signature: Signature, name: str, instances: int):
    """The decoupled model's ModelConfig (Triton's schema)."""
    pb = config_module()
    config = pb.ModelConfig(name=name, backend="python", max_batch_size=0)
    config.model_transaction_policy.decoupled = True
    for t in signature.inputs:
        config.input.add(name=t.name, data_type=getattr(pb.DataType, triton_type(t.dtype)), dims=list(t.shape),
                         optional=t.optional)
    for t in signature.outputs:
        config.output.add(name=t.name, data_type=getattr(pb.DataType, triton_type(t.dtype)), dims=list(t.shape))
    config.instance_group.add(kind=pb.ModelInstanceGroup.KIND_CPU, count=instances)
    return config


def _fill(version_dir: Path, source: DecoderSource, tokenizer: Path | None, signature: Signature,
          defaults: dict[str, Any]) -> list[str]:
    decoder_dir = version_dir / DECODER_DIR
    decoder_dir.mkdir()
    files = list(source.files)
    if source.genai:
        files += [source.genai.path] + [source.path / n for n in _GENAI_EXTRAS if (source.path / n).is_file()]
    data = set(source.files[1:])
    for file in dict.fromkeys(files):
        target = decoder_dir / file.relative_to(source.model_file.parent)
        target.parent.mkdir(parents=True, exist_ok=True)
        if file in data:  # onnx refuses external data with more than one hard link ("a hard link attack")
            shutil.copyfile(file, target)
        else:
            place_file(file, target)
    served_tokenizer = None
    if tokenizer is not None and source.genai and tokenizer.resolve() == (source.path / tokenizer.name).resolve():
        served_tokenizer = f"{DECODER_DIR}/{tokenizer.name}"  # the genai folder's own, placed above
    elif tokenizer is not None:
        shutil.copyfile(tokenizer, version_dir / "tokenizer.json")
        served_tokenizer = "tokenizer.json"
    shutil.copyfile(PYTHON_LLM_MODEL, version_dir / "model.py")

    def tensors(items):
        return [{k: v for k, v in dataclasses.asdict(t).items() if v not in (None, (), False)} for t in items]

    decoder = DECODER_DIR if source.genai else f"{DECODER_DIR}/{source.model_file.name}"
    spec = {"format": "trtc-triton-model", "trtc_version": __version__, "kind": "llm",
            "source": {"path": str(source.path.resolve()), "sha256": file_sha256(source.model_file)},
            "decoder": decoder, "decoder_spec": source.spec.as_dict(), "tokenizer": served_tokenizer,
            "defaults": defaults, "max_batch_size": 0, "decoupled": True,
            "inputs": tensors(signature.inputs), "outputs": tensors(signature.outputs), "profiles": []}
    (version_dir / MODEL_SPEC).write_text(json.dumps(spec, indent=1) + "\n")
    return []


def export_llm(source: DecoderSource, repo: Path, name: str, options: TritonExportOptions) -> dict[str, Any]:
    """Write REPO/NAME, the decoupled model serving `source`; the report as export_triton's."""
    _refuse_options(options, str(source.path))
    tokenizer, note = _tokenizer(source, options)
    signature = llm_signature(text=tokenizer is not None)
    defaults = _defaults(source.genai)
    config = llm_config(signature, name, options.instances)
    text = config_text(config)
    problems = check_config(parse_config(text, f"{name}/{CONFIG_NAME}"), signature)
    if problems:  # the writer and the checks disagree: a trtc bug, said before anything is written
        raise TrtcError(f"the config written for {name} fails its own check: {'; '.join(problems)}",
                        where=str(source.path), hint="please report this")
    target, notes = write_model_dir(repo, name, text, options.version,
                                    lambda version_dir: _fill(version_dir, source, tokenizer, signature, defaults))
    spec = source.spec
    notes.insert(0, f"{source.path} is an LLM decoder ({source.form}, {spec.layers} layers, vocab {spec.vocab}): "
                    f"served as a decoupled model streaming one response per generated token, one prompt per "
                    f"request (--no-llm: the tensor-in/tensor-out model)")
    if note:
        notes.append(note)
    return {"model": name, "path": str(target), "backend": "python", "version": options.version,
            "llm": {"decoder": str(source.path), "form": source.form, "decoupled": True, "spec": spec.as_dict(),
                    "tokenizer": str(tokenizer) if tokenizer else None, "defaults": defaults},
            "max_batch_size": 0, "preferred_batch_size": [], "instance_groups": len(config.instance_group),
            "profiles": 0, "inputs": [t.describe() for t in signature.inputs],
            "outputs": [t.describe() for t in signature.outputs],
            "files": sorted(str(p.relative_to(target)) for p in target.rglob("*") if p.is_file()),
            "config": text, "notes": notes}
