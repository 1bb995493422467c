"""A Triton model's config checked against what it serves: the mistakes Triton reports only at
load time (or, for a preferred batch size outside a profile, at the first large batch).

`check_config` compares a parsed config with an artifact's signature; `check_repository` finds
each model's artifact (a trtc engine's sidecar, or the trtc.json a Python-backend model written
by `trtc export triton` keeps) and lists every problem of every model at once. The decoupled LLM
model (trtc.serve.llm_export) is checked for its form too: decoupled, unbatched, its decoder the
one whose spec trtc.json records.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from trtc.errors import TrtcError
from trtc.serve.schema import CONFIG_NAME, NUMPY_TYPES, model_backend, read_config, triton_type
from trtc.serve.signature import ServedTensor, Signature, plan_signature

MODEL_SPEC = "trtc.json"  # beside a Python-backend model.py: which artifact it serves, and its signature


def _dims(dims: Sequence[int]) -> str:
    return "[" + ", ".join(str(d) for d in dims) + "]"


def _check_tensor(t: ServedTensor, entry, skip: int, profiles: Sequence[dict], role: str) -> list[str]:
    problems = []
    if role == "input" and entry.optional != t.optional:
        problems.append(f"input {t.name!r}: optional is {str(entry.optional).lower()}, the model "
                        + ("may be sent without it" if t.optional else "needs it in every request"))
    pb_type = type(entry).DESCRIPTOR.fields_by_name["data_type"].enum_type.values_by_number[entry.data_type].name
    expected = triton_type(t.dtype)
    if pb_type != expected:
        problems.append(f"{role} {t.name!r}: data_type {pb_type}, the artifact's is {expected or t.dtype}"
                        + (f" ({NUMPY_TYPES.get(pb_type, '?')} against {t.dtype})" if pb_type in NUMPY_TYPES else ""))
    want = t.shape[skip:]
    got = tuple(entry.dims)
    if len(got) != len(want):
        batch = " after the batch dim" if skip else ""
        problems.append(f"{role} {t.name!r}: dims {_dims(got)} have rank {len(got)}, the artifact's is "
                        f"{len(want)}{batch} ({_dims(want)})")
        return problems
    for axis, (g, w) in enumerate(zip(got, want)):
        if w >= 0 and g != w:
            problems.append(f"{role} {t.name!r}: dim {axis} is {g}, the artifact's is {w}")
        elif w < 0 and g >= 0 and role == "input":
            # A fixed size for a dynamic dim is fine where every profile takes it.
            outside = [i for i, p in enumerate(profiles)
                       if t.name in p and not p[t.name][0][axis + skip] <= g <= p[t.name][2][axis + skip]]
            if outside:
                problems.append(f"{role} {t.name!r}: dim {axis} is {g}, outside profile {outside[0]}'s range "
                                f"{profiles[outside[0]][t.name][0][axis + skip]}.."
                                f"{profiles[outside[0]][t.name][2][axis + skip]}")
    return problems


def _check_names(kind: str, declared: Sequence[str], actual: Sequence[str]) -> list[str]:
    problems = [f"{kind} {n!r} is not one of the artifact's ({', '.join(actual)})" for n in declared if n not in actual]
    problems += [f"{kind} {n!r} of the artifact is not declared" for n in actual if n not in declared]
    seen = set()
    problems += [f"{kind} {n!r} is declared twice" for n in declared if n in seen or seen.add(n)]
    return problems


def _check_batching(config, signature: Signature) -> list[str]:
    problems = []
    mbs = config.max_batch_size
    if mbs < 0:
        return [f"max_batch_size is {mbs}"]
    if mbs:
        reason = signature.batch_reason()
        if reason is not None:
            return [f"max_batch_size {mbs} needs a batch dim: {reason}"]
        for i, (lo, _, hi) in enumerate(signature.batch_ranges()):
            if mbs > hi:
                problems.append(f"max_batch_size {mbs} is above profile {i}'s batch MAX {hi}")
            if lo > 1:
                problems.append(f"profile {i}'s batch MIN is {lo}: a request batched alone (1 row) would be refused")
    for size in config.dynamic_batching.preferred_batch_size:
        if not mbs or size > mbs:
            problems.append(f"dynamic_batching.preferred_batch_size {size} is above max_batch_size {mbs}")
    if config.HasField("dynamic_batching") and not mbs:
        problems.append("dynamic_batching needs max_batch_size above 0")
    profiles = len(signature.profiles)
    for group in config.instance_group:
        for p in group.profile:
            if not p.isdigit() or int(p) >= max(profiles, 1):
                problems.append(f"instance_group {group.name or '?'}: profile {p!r}, the engine has "
                                f"{profiles or 1} (0..{max(profiles, 1) - 1})")
    return problems


def _check_llm(config) -> list[str]:
    """The decoupled LLM model (trtc.serve.llm_export): a response per token, one prompt per request."""
    problems = []
    if not config.model_transaction_policy.decoupled:
        problems.append("model_transaction_policy.decoupled is not true: the LLM model sends a response per "
                        "generated token, which Triton allows a decoupled model only")
    if config.max_batch_size != 0:
        problems.append(f"max_batch_size {config.max_batch_size}: the LLM model takes one prompt per request "
                        "(no in-flight batching); set 0")
    if config.HasField("dynamic_batching"):
        problems.append("dynamic_batching: the LLM model is not batched (one prompt per request)")
    if model_backend(config) != "python":
        problems.append(f"backend {model_backend(config) or '(none)'!r}: the LLM model is a Python-backend model")
    return problems


def check_config(config, signature: Signature) -> list[str]:
    """Every way `config` (a parsed ModelConfig) disagrees with the artifact it serves."""
    problems = _check_names("input", [e.name for e in config.input], [t.name for t in signature.inputs])
    problems += _check_names("output", [e.name for e in config.output], [t.name for t in signature.outputs])
    skip = 1 if config.max_batch_size > 0 else 0
    for role, entries, tensors in (("input", config.input, signature.inputs),
                                   ("output", config.output, signature.outputs)):
        by_name = {t.name: t for t in tensors}
        for entry in entries:
            if entry.name in by_name:
                problems += _check_tensor(by_name[entry.name], entry, skip, signature.profiles, role)
    problems += _check_llm(config) if signature.kind == "llm" else _check_batching(config, signature)
    if signature.kind != "llm" and config.model_transaction_policy.decoupled:
        problems.append("model_transaction_policy.decoupled is true: the model answers each request once")
    if model_backend(config) == "tensorrt":
        problems += [f"{t.name!r} is {t.dtype}, carried as {t.engine_dtype} in the engine: the TensorRT backend "
                     "cannot convert it (export with --backend python)" for t in signature.tensors() if t.engine_dtype]
    return problems


def _version_dirs(model_dir: Path) -> list[Path]:
    return sorted((p for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit()), key=lambda p: int(p.name))


def model_signature_in(model_dir: Path, config) -> tuple[Signature | None, list[str], str | None]:
    """The signature of what a model directory serves (its newest version), problems finding it,
    and a note when there is nothing of trtc's to check the config against."""
    versions = _version_dirs(model_dir)
    if not versions:
        return None, ["no version folder (1/, 2/, ...)"], None
    version = versions[-1]
    backend = model_backend(config)
    if backend == "tensorrt":
        plan = version / (config.default_model_filename or "model.plan")
        if not plan.is_file():
            return None, [f"{version.name}/{plan.name} is missing"], None
        from trtc.runtime.sidecar import read_sidecar, sidecar_path

        if not sidecar_path(plan).is_file():
            return None, [], (f"{version.name}/{plan.name} has no trtc sidecar beside it: only the config's syntax "
                              "was checked (`trtc export triton` keeps the sidecar)")
        return plan_signature(read_sidecar(plan)), [], None
    if backend == "python":
        spec = version / MODEL_SPEC
        if not (version / (config.default_model_filename or "model.py")).is_file():
            return None, [f"{version.name}/model.py is missing"], None
        if not spec.is_file():
            return None, [], "a Python model of your own: only the config's syntax was checked"
        recorded = json.loads(spec.read_text())
        return spec_signature(recorded), _check_llm_files(version, recorded) if recorded["kind"] == "llm" else [], None
    return None, [], f"backend {backend or '(none)'!r}: only the config's syntax was checked"


def _check_llm_files(version: Path, spec: dict[str, Any]) -> list[str]:
    """An LLM model's decoder and tokenizer are there, and the decoder is the one whose spec the
    trtc.json records (its graph read again: layers, heads, vocab, padding, positions)."""
    from trtc.serve.llm_export import read_decoder

    problems = []
    if spec.get("tokenizer") and not (version / spec["tokenizer"]).is_file():
        problems.append(f"{version.name}/{spec['tokenizer']} (the tokenizer {MODEL_SPEC} names) is missing")
    decoder = version / spec["decoder"]
    if not decoder.exists():
        return [*problems, f"{version.name}/{spec['decoder']} (the decoder {MODEL_SPEC} names) is missing"]
    try:
        found = read_decoder(decoder).spec().as_dict()
    except TrtcError as exc:
        return [*problems, f"{version.name}/{spec['decoder']}: {exc.message}"]
    recorded = spec["decoder_spec"]
    changed = [f"{k} {found[k]!r} (recorded {recorded[k]!r})" for k in sorted(found.keys() & recorded.keys())
               if found[k] != recorded[k]]
    if changed:
        problems.append(f"{version.name}/{spec['decoder']} is not the decoder exported: its {', '.join(changed)}")
    return problems


def spec_signature(spec: dict[str, Any]) -> Signature:
    """The signature a trtc.json records."""
    def tensors(entries):
        return tuple(ServedTensor(e["name"], e["dtype"], tuple(e["shape"]), tuple(e.get("dim_names") or ()),
                                  e.get("engine_dtype"), bool(e.get("optional"))) for e in entries)

    profiles = tuple({n: tuple(tuple(d) for d in r) for n, r in p.items()} for p in spec["profiles"])
    return Signature(spec["kind"], tensors(spec["inputs"]), tensors(spec["outputs"]), profiles)


def check_model_dir(model_dir: Path) -> dict[str, Any]:
    """One model directory: {"problems": [...], "note": str | None, "backend": ...}."""
    try:
        config = read_config(model_dir / CONFIG_NAME)
    except TrtcError as exc:
        return {"backend": None, "problems": [exc.message], "note": None}
    problems = []
    if config.name and config.name != model_dir.name:
        problems.append(f"name {config.name!r} differs from the folder's {model_dir.name!r} (Triton refuses it)")
    signature, found, note = model_signature_in(model_dir, config)
    problems += found
    if signature is not None:
        problems += check_config(config, signature)
    return {"backend": model_backend(config), "problems": problems, "note": note}


def check_repository(repo: Path) -> dict[str, dict[str, Any]]:
    """Each model directory of `repo` (those with a config.pbtxt) -> check_model_dir's result."""
    if not repo.is_dir():
        raise TrtcError("not a directory", where=str(repo))
    models = sorted(p for p in repo.iterdir() if (p / CONFIG_NAME).is_file())
    if not models:
        raise TrtcError(f"no model folder with a {CONFIG_NAME} in it", where=str(repo),
                        hint="a Triton repository holds REPO/MODEL/config.pbtxt and REPO/MODEL/1/...; "
                             "write one with `trtc export triton ARTIFACT -o REPO`")
    return {p.name: check_model_dir(p) for p in models}
