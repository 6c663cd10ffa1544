"""Released Act-VAE weights (OpenCLAP's ``clap-s1-l32`` and its variants) as a clap-data checkpoint folder.

Why: tokens are only "the release's tokens" when the release's weights make them. ``clap-data import
act-vae --from openclap CKPT --out DIR`` turns the released file into a folder that ``tokenize act-vae``,
``detokenize``, ``eval act-vae`` and ``train act-vae --init`` read like a trained one.

* **Reading without running the file's code.** A ``.safetensors`` file holds only tensors. A pickle (a
  Lightning ``.ckpt`` or a bare ``torch.save``-d state dict) is read with ``torch.load(weights_only=True)``;
  Lightning's extra objects make that refuse, so it is read again through
  :mod:`clap_data.restricted_pickle` (tensors are real, unknown objects inert stand-ins). A file that
  names a global that runs code, or whose weights need one, is refused unless ``trust_pickle`` (full
  unpickling: the file's code runs).
* **Mapping.** ``clap.`` is dropped (Lightning's module prefix; a bare state dict may lack it),
  ``vq_t.codebook.weight`` becomes ``quantizer.embedding.weight`` and everything under ``action_vae.``
  keeps its name. The model is ``ActVAEConfig.release()`` (the openclap network) with ``Nq``, ``K``, the
  code dimension and the layer counts read off the tensors' shapes, so variant releases import too. Every
  weight must be there with its shape; a tensor the model has no weight for is skipped when its module
  exists (usage counters such as ``clap.vq_t.usage``: buffers, not weights) and refused otherwise.
* **Writing.** ``model.safetensors`` + ``config.json`` through the model's own save path and ``import.json``
  (our sha256, the source's path, sha256 and format, what was skipped), built in a temporary folder beside
  ``out`` and renamed onto it. ``overwrite`` replaces a checkpoint folder only, never another folder.
"""

from __future__ import annotations

import dataclasses
import os
import pickle
import re
import shutil
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from clap_data import restricted_pickle
from clap_data.act_vae.checkpoint import IMPORT_META_NAME, clear_checkpoint, refuse_foreign_files
from clap_data.atomic import remove_temp_leftovers, temp_sibling, write_json_atomic
from clap_data.errors import ClapDataError
from clap_data.hashing import file_sha256
from clap_data.locking import exclusive_lock
from clap_data.models import ActVAE, ActVAEConfig
from clap_data.models.checkpoint import CONFIG_NAME, WEIGHTS_NAME, save_model

RELEASES = ("openclap",)  # whose weights can be imported (--from)
LIGHTNING_PREFIX = "clap."
# release name → ours, most specific first (the codebook is an nn.Embedding here)
RENAMES = (("vq_t.codebook.weight", "quantizer.embedding.weight"), ("vq_t.", "quantizer."))
SHOWN = 5  # names listed per kind of problem in a refusal


@dataclass
class SourceWeights:
    """The tensors of a release file under their names in the file, and how they were read."""

    tensors: dict[str, Any]
    format: str  # lightning-checkpoint | state-dict | safetensors
    loader: str  # safetensors | weights-only | restricted-unpickler | trusted-pickle
    notices: list[str] = field(default_factory=list)


@dataclass
class ImportReport:
    """What ``import act-vae`` wrote; ``to_dict`` is ``import.json`` plus the folder."""

    out: Path
    sha256: str
    source: dict[str, str]  # path, sha256, format, loader
    config: ActVAEConfig
    parameters: int
    skipped_buffers: list[str]
    notices: list[str]
    release: str = "openclap"  # whose release (``--from``)
    stats: str = "openclap"  # the table tokenize and eval default to: the release's q01/q99

    def to_dict(self) -> dict[str, Any]:
        return {
            "sha256": self.sha256, "from": self.release, "source": self.source, "parameters": self.parameters,
            "stats": self.stats, "skipped_buffers": self.skipped_buffers, "notices": self.notices,
        }


def _needs_trust(path: Path, what: str) -> ClapDataError:
    return ClapDataError(
        f"{path} {what}, which could run code on this machine; refusing (pass --trust-pickle only for a file "
        "you trust: it unpickles in full and so executes the file's code)"
    )


def _state_dict_of(obj: Any, path: Path) -> tuple[dict[str, Any], str]:
    """The state dict inside what a pickle held, and the layout it came in."""
    if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
        obj, layout = obj["state_dict"], "lightning-checkpoint"
    elif isinstance(obj, Mapping) and any(isinstance(v, torch.Tensor) for v in obj.values()):
        layout = "state-dict"
    else:
        raise ClapDataError(f"{path} holds neither a Lightning checkpoint (a dict with a state_dict) "
                            "nor a state dict of tensors")
    return {str(k): v for k, v in obj.items()}, layout


def _restricted(path: Path) -> tuple[dict[str, Any], str, list[str]]:
    """Read through the restricted unpickler: the state dict, its layout, the stand-ins' names outside it."""
    try:
        obj = torch.load(path, map_location="cpu", weights_only=False, pickle_module=restricted_pickle)
    except restricted_pickle.RefusedGlobal as exc:
        raise _needs_trust(path, f"asks for {exc.qualified_name} while loading") from None
    except (pickle.UnpicklingError, RuntimeError, TypeError, ValueError, AttributeError, KeyError, EOFError) as exc:
        raise _needs_trust(path, f"cannot be read without unpickling in full ({type(exc).__name__}: {exc})") from None
    tensors, layout = _state_dict_of(obj, path)
    inside = restricted_pickle.opaque_names(tensors)
    if inside:
        raise _needs_trust(path, f"keeps its weights in objects of {', '.join(inside[:SHOWN])}")
    return tensors, layout, restricted_pickle.opaque_names(obj)


def _is_safetensors(path: Path) -> bool:
    """Told by the content, not the name: torch.save writes a zip archive or (legacy) a pickle's PROTO opcode,
    safetensors an 8-byte header length and then the JSON header. A TorchScript archive is refused here:
    torch.load would hand it to torch.jit.load, which runs it."""
    with path.open("rb") as handle:
        head = handle.read(9)
    if head[:4] == b"PK\x03\x04":
        try:
            with zipfile.ZipFile(path) as archive:
                names = archive.namelist()
        except zipfile.BadZipFile as exc:
            raise ClapDataError(f"{path} cannot be read as a PyTorch checkpoint: {exc}") from None
        if any(name.rpartition("/")[2] == "constants.pkl" for name in names):
            raise ClapDataError(f"{path} is a TorchScript archive (a program), not a checkpoint of weights")
        return False
    if head[:1] == b"\x80":
        return False
    if head[8:9] == b"{":
        return True
    raise ClapDataError(f"{path} is neither a PyTorch checkpoint (zip archive or pickle) nor a safetensors file")


def read_source(path: Path, trust_pickle: bool = False) -> SourceWeights:
    """The tensors of a safetensors file or a pickled checkpoint (module docstring)."""
    if _is_safetensors(path):
        try:
            return SourceWeights(load_file(path), "safetensors", "safetensors")
        except (SafetensorError, OSError) as exc:
            raise ClapDataError(f"{path} cannot be read as safetensors: {exc}") from None
    try:
        tensors, layout = _state_dict_of(torch.load(path, map_location="cpu", weights_only=True), path)
        return SourceWeights(tensors, layout, "weights-only")
    except pickle.UnpicklingError:
        pass  # objects beyond tensors and containers: read them as inert stand-ins
    except (RuntimeError, OSError, EOFError, ValueError) as exc:  # e.g. a truncated archive
        reason = " ".join(str(exc).split())[:300]
        raise ClapDataError(f"{path} cannot be read as a PyTorch checkpoint: {reason}") from None
    try:
        tensors, layout, stand_ins = _restricted(path)
    except ClapDataError:
        if not trust_pickle:
            raise
    else:
        notices = [f"not loaded (only the weights are read): objects of {', '.join(stand_ins)}"] if stand_ins else []
        return SourceWeights(tensors, layout, "restricted-unpickler", notices)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # noqa: BLE001  (the file's own code may raise anything)
        reason = f"{type(exc).__name__}: {exc}"
        raise ClapDataError(f"{path} cannot be unpickled even with --trust-pickle: {reason}") from None
    tensors, layout = _state_dict_of(obj, path)
    return SourceWeights(tensors, layout, "trusted-pickle", ["unpickled in full (--trust-pickle): the file's code ran"])


def target_name(name: str) -> str:
    """Our name for a release tensor (``clap.vq_t.codebook.weight`` → ``quantizer.embedding.weight``)."""
    name = name.removeprefix(LIGHTNING_PREFIX)
    for release, ours in RENAMES:
        if name.startswith(release):
            return ours + name[len(release):]
    return name


def _release_name(ours: str, prefix: str) -> str:
    for release, mine in RENAMES:
        if ours.startswith(mine):
            return prefix + release + ours[len(mine):]
    return prefix + ours


def infer_config(tensors: Mapping[str, Any], path: Path) -> ActVAEConfig:
    """``ActVAEConfig.release()`` with ``Nq`` (register tokens), ``K`` and the code dimension (codebook) and
    the layer counts (``2·input blocks + 1``) the tensors show; a shape it cannot read keeps the release's
    value, and the weight check names the tensor."""
    shapes = {target_name(k): tuple(v.shape) for k, v in tensors.items() if isinstance(v, torch.Tensor)}
    fields: dict[str, int] = {}
    if len(tokens := shapes.get("action_vae.global_motion_token", ())) == 2:
        fields["num_queries"] = tokens[0]
    if len(codebook := shapes.get("quantizer.embedding.weight", ())) == 2:
        fields["codebook_size"], fields["code_dim"] = codebook
    for half in ("encoder", "decoder"):
        block = re.compile(rf"action_vae\.{half}\.input_blocks\.(\d+)\.")
        indices = [int(m.group(1)) for name in shapes if (m := block.match(name))]
        if indices:
            fields[f"{half}_layers"] = 2 * (max(indices) + 1) + 1
    try:
        return dataclasses.replace(ActVAEConfig.release(), **fields)
    except ValueError as exc:
        raise ClapDataError(f"{path}: its tensors' shapes make no valid Act-VAE ({exc})") from None


def _listing(kind: str, names: list[str]) -> str:
    more = f" and {len(names) - SHOWN} more" if len(names) > SHOWN else ""
    return f"{len(names)} {kind} ({', '.join(names[:SHOWN])}{more})"


def _shape(shape: tuple[int, ...]) -> str:
    return f"({', '.join(str(n) for n in shape)})"


def map_weights(tensors: Mapping[str, Any], model: ActVAE, path: Path) -> tuple[dict[str, torch.Tensor], list[str]]:
    """``model``'s state dict from the release tensors, and the source names of the skipped buffers; refuses in
    one sentence what is missing, unexpected or mis-shaped."""
    expected = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    modules = {name for name, _ in model.named_modules() if name}
    mapped: dict[str, torch.Tensor] = {}
    skipped, unexpected, misshaped = [], [], []
    for name, value in tensors.items():
        ours = target_name(name)
        if ours not in expected:
            if isinstance(value, torch.Tensor) and ours.rpartition(".")[0] in modules:
                skipped.append(name)
            else:
                unexpected.append(name)
        elif not isinstance(value, torch.Tensor):
            misshaped.append(f"{name}: got a {type(value).__name__} vs expected a tensor {_shape(expected[ours])}")
        elif tuple(value.shape) != expected[ours]:
            misshaped.append(f"{name}: got {_shape(tuple(value.shape))} vs expected {_shape(expected[ours])}")
        else:
            mapped[ours] = value
    present = {target_name(name) for name in tensors}
    prefix = LIGHTNING_PREFIX if any(name.startswith(LIGHTNING_PREFIX) for name in tensors) else ""
    missing = [_release_name(name, prefix) for name in expected if name not in present]
    problems = [_listing(kind, names) for kind, names in
                (("missing", missing), ("unexpected", unexpected), ("mis-shaped", misshaped)) if names]
    if problems:
        raise ClapDataError(f"{path} does not fit the OpenCLAP Act-VAE: {'; '.join(problems)}")
    return mapped, skipped


def _check_out(out: Path, overwrite: bool) -> None:
    """Refuse an ``out`` that is a file, or a folder with files unless ``overwrite`` and it is a checkpoint."""
    if not out.exists() or (out.is_dir() and not any(out.iterdir())):
        return
    if not out.is_dir():
        raise ClapDataError(f"{out} is a file, not a checkpoint folder; refusing to overwrite it")
    if not overwrite:
        raise ClapDataError(f"{out} already exists; choose another --out or pass --overwrite to replace it")
    refuse_foreign_files(out)


def _publish(built: Path, out: Path, overwrite: bool) -> None:
    """Move the finished folder onto ``out``: one rename when ``out`` is new (or empty); else, holding the
    checkpoint's lock (no training run writes it meanwhile), clear it and move the files in, config.json
    last, so the folder loads only once it is complete."""
    try:
        os.rename(built, out)
        return
    except OSError:
        if not out.exists():
            raise
    _check_out(out, overwrite)
    with exclusive_lock(out / ".lock", out):
        clear_checkpoint(out)
        for name in (WEIGHTS_NAME, IMPORT_META_NAME, CONFIG_NAME):
            os.replace(built / name, out / name)


def import_act_vae(
    path: Path, out: Path, release: str = "openclap", trust_pickle: bool = False, overwrite: bool = False
) -> ImportReport:
    """Import ``release``'s file ``path`` into the checkpoint folder ``out``; see the module docstring."""
    path, out = Path(path).expanduser(), Path(out).expanduser()
    if release not in RELEASES:
        raise ClapDataError(f"unknown release {release!r}; choose one of {', '.join(RELEASES)}")
    if not path.is_file():
        raise ClapDataError(f"{path} does not exist or is not a file")
    _check_out(out, overwrite)
    weights = read_source(path, trust_pickle)
    model = ActVAE(infer_config(weights.tensors, path))
    mapped, skipped = map_weights(weights.tensors, model, path)
    model.load_state_dict(mapped, strict=True)
    notices = list(weights.notices)
    if skipped:
        notices.append(f"skipped {len(skipped)} buffer(s) of known modules, not weights: {', '.join(skipped)}")
    converted = sorted({str(t.dtype).removeprefix("torch.") for t in mapped.values() if t.dtype != torch.float32})
    if converted:
        notices.append(f"weights stored as {', '.join(converted)} were converted to float32")
    source_id = {
        "path": str(path.resolve()), "sha256": file_sha256(path), "format": weights.format, "loader": weights.loader,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    remove_temp_leftovers(out.parent, out.name)  # of an import of the same --out killed mid-write
    built = temp_sibling(out)
    try:
        sha256 = save_model(model, built)
        report = ImportReport(
            out, sha256, source_id, model.config, sum(p.numel() for p in model.parameters()), skipped, notices, release
        )
        write_json_atomic(built / IMPORT_META_NAME, report.to_dict())
        _publish(built, out, overwrite)
    finally:
        shutil.rmtree(built, ignore_errors=True)
    return report
