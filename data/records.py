"""Records: one JSONL manifest line -> a validated ``Record``; ``RecordError`` names the record, the field, the reason.

A manifest is a JSONL file; each line is an object::

    {"id": "q17", "task": "vqa", "image": "images/12.png", "text": "what color is the shape?", "target": "red"}

Keys: ``id`` (non-empty string, unique in the manifest), ``task`` (one of ``TASKS``), optional ``image`` / ``audio``
(paths, relative to the manifest's folder; they may not leave it), optional ``text``, ``target`` (a string, or any
JSON value for task ``json``; required when training), optional ``schema`` (task ``json`` only: an inline JSON Schema
object or a path to a ``.json`` file) and ``meta`` (an object). Any other key (``answers``, ``view`` ...) is kept in
``Record.meta``. At least one of ``image`` / ``audio`` / ``text`` must be present.

A UTF-8 byte-order mark at the start of a manifest is ignored. An entry whose id cannot be used (bad JSON, no id, a
duplicate: the first line with an id owns it) is reported under its own line label, ``line N`` (docs/inputs.md).
"""

from __future__ import annotations

import codecs
import json
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omnifuse.data.tokenizer import TASKS

# Text and string targets larger than this are refused: a 50 MB "question" is a broken record, and it would otherwise
# be tokenised into a 50M-long sequence before truncation.
MAX_TEXT_BYTES = 1_000_000
# JSON Schema files are small; a bigger one is almost certainly the wrong file.
MAX_SCHEMA_BYTES = 1_000_000

# Longer ids are refused (under their line label): an id is a key, not a payload.
MAX_ID_CHARS = 1000
# "line 7" labels an entry whose id cannot be used (bad JSON, no id, a duplicate): such ids are reserved for that.
LINE_LABEL = re.compile(r"line [0-9]+")

INPUT_FIELDS: tuple[str, ...] = ("image", "audio", "text")
KNOWN_KEYS = frozenset({"id", "task", "image", "audio", "text", "target", "schema", "meta"})


class RecordError(Exception):
    """A record that cannot be used: ``str(err)`` reads ``record 'q17': field 'image': <reason>``."""

    def __init__(self, record_id: str, field: str, reason: str) -> None:
        self.record_id = record_id
        self.field = field
        self.reason = reason
        super().__init__(f"record {record_id!r}: {self.detail}")

    @property
    def detail(self) -> str:
        """The message without the record id: ``field 'image': <reason>`` (what batch.failed carries)."""
        return f"field {self.field!r}: {self.reason}"

    def __reduce__(self):  # keep the three attributes when pickled across DataLoader worker processes
        return (type(self), (self.record_id, self.field, self.reason))


@dataclass
class Record:
    """One validated manifest entry; paths are absolute and exist, ``schema`` is loaded."""

    id: str
    task: str
    image: Path | None = None
    audio: Path | None = None
    text: str | None = None
    target: Any = None
    schema: dict | None = None
    meta: dict = field(default_factory=dict)


def resolve_path(value: Any, root: Path, record_id: str, field_name: str, cache: dict[str, Path] | None = None) -> Path:
    """Resolve a manifest path against ``root``; refuse escapes (``..``, absolute paths, symlinks) and missing files.

    ``cache`` maps path strings already accepted under this ``root`` to their result (many records share an image).
    """
    if cache is not None and isinstance(value, str) and value in cache:
        return cache[value]
    if not isinstance(value, str) or not value.strip():
        raise RecordError(record_id, field_name, f"must be a non-empty path string, got {_describe(value)}")
    if "\x00" in value:
        raise RecordError(record_id, field_name, "path contains a NUL byte")
    root = root.resolve()
    # An absolute path is accepted only when it lies inside root; resolve() follows symlinks, so a link that points
    # outside the manifest folder is refused like a literal ``../``.
    resolved = (root / value).resolve()
    if not resolved.is_relative_to(root):
        raise RecordError(record_id, field_name, f"path {value!r} escapes the manifest folder {str(root)!r}")
    if not resolved.exists():
        raise RecordError(record_id, field_name, f"file not found: {value!r}")
    if not resolved.is_file():
        raise RecordError(record_id, field_name, f"not a regular file: {value!r}")
    if cache is not None:
        cache[value] = resolved
    return resolved


def _describe(value: Any) -> str:
    if isinstance(value, str):
        return f"a string of {len(value)} characters"
    return type(value).__name__


def _check_text(value: Any, record_id: str, field_name: str) -> str:
    if not isinstance(value, str):
        raise RecordError(record_id, field_name, f"must be a string, got {_describe(value)}")
    # len(str) <= bytes <= 4 * len(str): the cheap character count settles most cases without encoding 50 MB.
    size = len(value) if len(value) > MAX_TEXT_BYTES else len(value.encode("utf-8", errors="surrogatepass"))
    if size > MAX_TEXT_BYTES:
        raise RecordError(record_id, field_name, f"too large ({size:,} bytes; the limit is {MAX_TEXT_BYTES:,})")
    return value


def load_schema(value: Any, root: Path, record_id: str, cache: dict[Path, dict] | None = None) -> dict:
    """An inline schema object, or a path to a JSON file (resolved like any manifest path) holding one."""
    if isinstance(value, dict):
        return value
    path = resolve_path(value, root, record_id, "schema")
    if cache is not None and path in cache:
        return cache[path]
    size = path.stat().st_size
    if size > MAX_SCHEMA_BYTES:
        raise RecordError(record_id, "schema", f"schema file too large ({size:,} bytes)")
    try:
        schema = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise RecordError(record_id, "schema", f"schema file {value!r} is not valid JSON ({e})") from None
    if not isinstance(schema, dict):
        raise RecordError(record_id, "schema", f"schema file {value!r} must hold a JSON object")
    if cache is not None:
        cache[path] = schema
    return schema


def parse_record(
    raw: Any,
    root: str | Path,
    *,
    require_target: bool,
    line_no: int | None = None,
    schema_cache: dict[Path, dict] | None = None,
    path_cache: dict[str, Path] | None = None,
) -> Record:
    """Validate one raw manifest entry and return a ``Record``; raise ``RecordError`` on the first problem.

    ``root`` is the folder paths resolve against (the manifest's folder). ``require_target`` is True for training and
    evaluation data, False for inference. ``line_no`` names the record in errors raised before its id is known. The
    caches (filled by ``read_manifest``) let records that share a file skip its checks; they must belong to ``root``.
    """
    root = Path(root)
    fallback_id = f"line {line_no}" if line_no is not None else "<unknown>"
    if not isinstance(raw, dict):
        raise RecordError(fallback_id, "<record>", f"must be a JSON object, got {type(raw).__name__}")

    rid = raw.get("id")
    if not isinstance(rid, str) or not rid.strip():
        raise RecordError(fallback_id, "id", f"must be a non-empty string, got {_describe(rid)}")
    if len(rid) > MAX_ID_CHARS:
        raise RecordError(fallback_id, "id", f"too long ({len(rid)} characters; the limit is {MAX_ID_CHARS})")
    if LINE_LABEL.fullmatch(rid):
        raise RecordError(fallback_id, "id", f"{rid!r} is reserved: 'line N' labels entries whose id is unusable")

    task = raw.get("task")
    if task not in TASKS:
        raise RecordError(rid, "task", f"unknown task {task!r}; known tasks: {', '.join(TASKS)}")

    image = resolve_path(raw["image"], root, rid, "image", path_cache) if raw.get("image") is not None else None
    audio = resolve_path(raw["audio"], root, rid, "audio", path_cache) if raw.get("audio") is not None else None
    text = _check_text(raw["text"], rid, "text") if raw.get("text") is not None else None
    if text is not None and not text.strip():
        # A present-but-empty text would reach the text encoder as a sequence with no tokens at all.
        raise RecordError(rid, "text", "is empty (leave the field out when a record has no text)")
    if image is None and audio is None and text is None:
        # The model needs at least one input to attend to; a record without any is a manifest mistake.
        raise RecordError(rid, "image", "record has no input: give at least one of 'image', 'audio', 'text'")

    target = raw.get("target")
    if target is None:
        if require_target:
            raise RecordError(rid, "target", "missing target (required for training and evaluation)")
    elif task == "json":
        # Any JSON value is a valid structured target; only its size is bounded.
        size = len(json.dumps(target, ensure_ascii=False).encode("utf-8"))
        if size > MAX_TEXT_BYTES:
            raise RecordError(rid, "target", f"too large ({size:,} bytes; the limit is {MAX_TEXT_BYTES:,})")
    else:
        target = _check_text(target, rid, "target")

    schema = None
    if raw.get("schema") is not None:
        if task != "json":
            raise RecordError(rid, "schema", f"a schema is only used by task 'json', not {task!r}")
        schema = load_schema(raw["schema"], root, rid, schema_cache)

    meta = raw.get("meta", {})
    if meta is None:
        meta = {}
    if not isinstance(meta, dict):
        raise RecordError(rid, "meta", f"must be a JSON object, got {type(meta).__name__}")
    meta = dict(meta)
    meta.update({k: v for k, v in raw.items() if k not in KNOWN_KEYS})
    return Record(id=rid, task=task, image=image, audio=audio, text=text, target=target, schema=schema, meta=meta)


def usable_id(raw: Any) -> str | None:
    """The id of a raw entry when it can name the entry in outputs: a non-empty string of at most
    ``MAX_ID_CHARS`` characters that is not a line label (``line 7``); else None."""
    rid = raw.get("id") if isinstance(raw, dict) else None
    if not isinstance(rid, str) or not rid.strip() or len(rid) > MAX_ID_CHARS or LINE_LABEL.fullmatch(rid):
        return None
    return rid


def parse_entries(
    entries: Iterable[tuple[int, Any]], root: str | Path, *, require_target: bool
) -> Iterator[Record | RecordError]:
    """``parse_record`` over ``(line number, raw entry)`` pairs, one result per pair, with the duplicate-id rule:
    the first line that uses an id owns it (whether or not that line is valid), and every later line with the same
    id is refused under its own line label (``RecordError('line 9', 'id', "duplicate id 'q1' ...")``), so each id
    names exactly one line in the outputs. A raw entry may already be a ``RecordError`` (a line that is not JSON)."""
    root = Path(root)
    owner: dict[str, int] = {}
    schema_cache: dict[Path, dict] = {}
    path_cache: dict[str, Path] = {}
    for line_no, raw in entries:
        if isinstance(raw, RecordError):
            yield raw
            continue
        rid = usable_id(raw)
        if rid is not None and rid in owner:
            yield RecordError(
                f"line {line_no}",
                "id",
                f"duplicate id {rid!r}: line {owner[rid]} already uses it, so this line is not used (ids must be "
                "unique in a manifest)",
            )
            continue
        if rid is not None:
            owner[rid] = line_no
        try:
            yield parse_record(
                raw,
                root,
                require_target=require_target,
                line_no=line_no,
                schema_cache=schema_cache,
                path_cache=path_cache,
            )
        except RecordError as e:
            yield e


def _manifest_lines(path: Path, texts: dict[int, str] | None = None) -> Iterator[tuple[int, Any]]:
    """``(line number, parsed JSON or RecordError)`` for each non-blank line; a UTF-8 byte-order mark at the start of
    the file (Windows editors write one) is skipped. ``texts``, when given, receives each such line's text (without
    its line ending; undecodable bytes replaced)."""
    with path.open("rb") as fh:
        for line_no, raw_line in enumerate(fh, start=1):
            if line_no == 1 and raw_line.startswith(codecs.BOM_UTF8):
                raw_line = raw_line[len(codecs.BOM_UTF8) :]
            if not raw_line.strip():
                continue
            if texts is not None:
                texts[line_no] = raw_line.decode("utf-8", errors="replace").rstrip("\r\n")
            try:
                yield line_no, json.loads(raw_line.decode("utf-8"))
            except UnicodeDecodeError as e:
                yield line_no, RecordError(f"line {line_no}", "<json>", f"line is not valid UTF-8 ({e.reason})")
            except json.JSONDecodeError as e:
                yield line_no, RecordError(f"line {line_no}", "<json>", f"invalid JSON: {e.msg} at column {e.colno}")
            except RecursionError:
                yield line_no, RecordError(f"line {line_no}", "<json>", "invalid JSON: nested too deeply")


def read_manifest_lines(path: str | Path, *, require_target: bool = True) -> list[tuple[int, str, Record | RecordError]]:
    """``read_manifest`` with each entry's line: ``(line number, the line's text, Record or RecordError)``, so a tool
    that filters a manifest (``omnifuse curate``) can write the kept lines exactly as they were."""
    path = Path(path)
    texts: dict[int, str] = {}
    entries = list(parse_entries(_manifest_lines(path, texts), path.resolve().parent, require_target=require_target))
    return [(n, texts[n], e) for n, e in zip(sorted(texts), entries, strict=True)]


def read_manifest(path: str | Path, *, require_target: bool = True) -> list[Record | RecordError]:
    """Parse a JSONL manifest: one entry per non-blank line, a ``Record`` or the ``RecordError`` that line raised.

    A line that is not valid JSON yields ``RecordError('line N', '<json>', ...)``; a repeated id yields
    ``RecordError('line N', 'id', ...)`` for the later line (see ``parse_entries``). A UTF-8 byte-order mark is
    ignored. A missing manifest file raises ``FileNotFoundError`` (that is not a record's fault).
    """
    path = Path(path)
    return list(parse_entries(_manifest_lines(path), path.resolve().parent, require_target=require_target))
