"""Self-describing model directories: weights + tokenizer + pooling config + ``profiles_model.json``.

``profiles_model.json`` records the base model (name, sha256 of its weights), the sha256 of this
directory's weights, the model fingerprint (``compute_fingerprint``: the id stored in every
snapshot and index), the training-data fingerprint and split, hyper-parameters, validation
metrics and the creation time.  ``load_encoder`` checks it: a directory whose weights do not
match their recorded sha256, whose metadata is unreadable or of an unknown format, or whose
loaded model gives another fingerprint fails with one line (``EncoderError``).
A folder without the file (e.g. the bundled all-MiniLM-L6-v2) loads as a plain model.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

from encoder.base import EncoderError
from stream.core.files import replace_dir

META_FILE = "profiles_model.json"
FORMAT = "profiles-encoder/1"
# sentence-transformers side files copied from the base model (pooling, module layout).
_SIDE_FILES = ("modules.json", "sentence_bert_config.json", "config_sentence_transformers.json")
_REQUIRED = ("format", "fingerprint", "weights_file", "weights_sha256", "base_model", "created")


def read_metadata(folder: Path | str) -> dict[str, Any] | None:
    """The metadata of a model directory, None when it has none; EncoderError when unusable."""
    path = Path(folder) / META_FILE
    if not path.is_file():
        return None
    try:
        meta = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise EncoderError(f"model directory {folder}: unreadable {META_FILE} ({exc})") from exc
    if not isinstance(meta, dict):
        raise EncoderError(f"model directory {folder}: {META_FILE} is not a JSON object")
    if meta.get("format") != FORMAT:
        raise EncoderError(f"model directory {folder}: unsupported format {meta.get('format')!r}, "
                           f"this version reads {FORMAT!r}")
    missing = [k for k in _REQUIRED if k not in meta]
    if missing:
        raise EncoderError(f"model directory {folder}: {META_FILE} lacks {', '.join(missing)}")
    return meta


def verify_weights(folder: Path | str, meta: dict[str, Any]) -> None:
    """The weights file exists and has the sha256 the metadata recorded (catches corruption)."""
    from encoder.transformer import _hash_file

    weights = Path(folder) / str(meta["weights_file"])
    if not weights.is_file():
        raise EncoderError(f"model directory {folder}: weights file {meta['weights_file']} is missing")
    actual = _hash_file(weights)
    if actual != meta["weights_sha256"]:
        raise EncoderError(f"model directory {folder}: {weights.name} sha256 {actual[:12]}… does not "
                           f"match the recorded {str(meta['weights_sha256'])[:12]}… (corrupt or modified)")


def check_loaded(folder: Path | str, meta: dict[str, Any], fingerprint: str) -> None:
    if fingerprint != meta["fingerprint"]:
        raise EncoderError(f"model directory {folder}: loaded model has fingerprint {fingerprint}, "
                           f"metadata says {meta['fingerprint']} (incompatible settings or files)")


def save_model_dir(model: Any, tokenizer: Any, base_folder: Path | str, out: Path | str,
                   meta: dict[str, Any], max_length: int) -> dict[str, Any]:
    """Write weights, tokenizer, side files and metadata to ``out`` atomically; returns the
    metadata with ``weights_sha256``, ``fingerprint`` and ``created`` filled in."""
    from datetime import UTC, datetime

    from encoder.transformer import _hash_file, _read_pooling, compute_fingerprint

    out, base_folder = Path(out), Path(base_folder)
    if out.exists() and any(out.iterdir()) and not (out / META_FILE).is_file():
        raise EncoderError(f"{out} exists and is not a model directory; choose another --out")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        model.save_pretrained(str(tmp), safe_serialization=True)
        tokenizer.save_pretrained(str(tmp))
        for name in _SIDE_FILES:
            if (base_folder / name).is_file():
                shutil.copy2(base_folder / name, tmp / name)
        if (base_folder / "1_Pooling").is_dir():
            shutil.copytree(base_folder / "1_Pooling", tmp / "1_Pooling")
        weights = tmp / "model.safetensors"
        meta = dict(meta)
        meta.update(format=FORMAT, weights_file=weights.name, weights_sha256=_hash_file(weights),
                    max_length=max_length,
                    fingerprint=compute_fingerprint(weights, _read_pooling(tmp), max_length),
                    created=datetime.now(UTC).isoformat(timespec="seconds"))
        (tmp / META_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
        replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return meta
