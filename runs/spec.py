"""Parse and validate run specs (VESSL-style run YAML).

A spec arrives as YAML text (JSON is valid YAML, so API clients use the same
path) or as an already-parsed dict. ``parse_spec`` turns it into a normalized,
JSON-serializable dict with every key present, or raises ``SpecError`` listing
every problem it could find, each with a location the UI can point at.

This module deliberately imports nothing from Django so it can be used by the
API, the worker and the tests without settings or a database.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from typing import Any

import yaml

__all__ = [
    "SpecError", "parse_spec", "parse_spec_with_secrets", "parse_spec_with_warnings", "parse_spec_in_full",
    "dump_spec_yaml", "line_of", "org_warnings", "warning", "split_warnings", "format_duration", "MAX_SPEC_BYTES",
]

MAX_SPEC_BYTES = 256 * 1024
# Hostile YAML: nesting deeper than this is refused before PyYAML recurses into it,
# and a document whose aliases expand it past this size is refused before it is built.
MAX_YAML_DEPTH = 32
MAX_EXPANDED_YAML_BYTES = 4 * MAX_SPEC_BYTES
MAX_NAME_LENGTH = 200
MAX_TAG_LENGTH = 64
MAX_GRACE_SECONDS = 3600
DEFAULT_GRACE_SECONDS = 10.0
DEFAULT_CLUSTER = "default"
DEFAULT_PRESET = "cpu-small"
DEFAULT_GIT_REF = "HEAD"
RESERVED_ENV_PREFIX = "RUNYARD_"
MAX_WAIT_SECONDS = 30 * 86400

# Top-level sections whose keys are user-chosen (paths, variable names), so
# their locations are written as import["/code/"] rather than import./code/.
_KEYED_BY_NAME = frozenset({"import", "export", "env"})

_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# A team credential's name (runs.credentials), as a secret's.
CREDENTIAL_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]{0,99}")
_DATASET_URI = re.compile(r"dataset://(?P<name>[A-Za-z0-9._-]+)(?:@(?P<version>.*))?", re.DOTALL)
_CODE_URI = re.compile(r"code://(?P<hash>[0-9a-f]{64})")
_VOLUME_URI = re.compile(r"volume://(?P<name>[A-Za-z0-9._-]+)")
_GIT_SHORTHAND = re.compile(r"git://(?P<host>[A-Za-z0-9.-]+(?::[0-9]{1,5})?)/(?P<path>[A-Za-z0-9._~/-]+?)(?:@(?P<ref>[^@\s]+))?")
_HF_URI = re.compile(r"hf://(?P<host>[^/\s]+)/(?P<path>[A-Za-z0-9._/-]+?)(?:@(?P<rev>[^@\s]+))?")
_BUCKET_URI = re.compile(r"(?:s3|gs)://[A-Za-z0-9][A-Za-z0-9._-]{1,221}(?:/\S*)?")
# Units must appear largest first, each at most once ("1m30s", "500ms").
# The (?!s) keeps the minutes group from eating the "m" of "ms".
_DURATION = re.compile(
    r"(?:(?P<h>[0-9]{1,10})h)?(?:(?P<m>[0-9]{1,10})m(?!s))?(?:(?P<s>[0-9]{1,10})s)?(?:(?P<ms>[0-9]{1,10})ms)?"
)
_MILLIS_PER_UNIT = {"h": 3_600_000, "m": 60_000, "s": 1_000, "ms": 1}

_MSG_STRING = "expected a string"
_MSG_LIST = "expected a list"
_MSG_MAPPING = "expected a mapping"
_MSG_BOOLEAN = "expected a boolean"
_MSG_DURATION = "expected a duration like 10s"
_MSG_EMPTY = "must not be empty"
_MSG_ABSOLUTE_PATH = "expected an absolute path"
_MSG_UNSTORABLE = "must not contain NUL (\\0) or an unpaired surrogate"
_STEP_FORMS = "a command string, {command, workdir} or {wait: DURATION}"

Error = dict[str, str]
Errors = list[Error]
# A field parser validates one value, appends problems to the error list and
# returns the normalized value (None when the value is unusable).
FieldParser = Callable[[Any, str, Errors], Any]


class SpecError(Exception):
    """A spec failed to parse or validate; ``errors`` holds every problem found."""

    def __init__(self, errors: Errors, warnings: Errors | None = None) -> None:
        # Passing errors to Exception keeps the exception picklable (Celery
        # results, multiprocessing), since unpickling calls cls(*args).
        super().__init__(errors)
        self.errors: Errors = list(errors)
        self.warnings: Errors = list(warnings or [])  # notes found before the errors (parse_spec_with_warnings)

    def __str__(self) -> str:
        return "; ".join(f"{e['loc']}: {e['msg']}" if e["loc"] else e["msg"] for e in self.errors)


# ---------------------------------------------------------------- locations


def _key_loc(parent: str, key: object) -> str:
    return f"{parent}.{key}" if parent else str(key)


def _name_loc(parent: str, name: object) -> str:
    return f"{parent}[{json.dumps(str(name), ensure_ascii=False)}]"


def _index_loc(parent: str, index: int) -> str:
    return f"{parent}[{index}]"


def _loc_from_path(path: list[str | int]) -> str:
    loc = ""
    for depth, segment in enumerate(path):
        if isinstance(segment, int):
            loc = _index_loc(loc, segment)
        elif depth == 1 and path[0] in _KEYED_BY_NAME:
            loc = _name_loc(loc, segment)
        else:
            loc = _key_loc(loc, segment)
    return loc


def _add(errors: Errors, loc: str, msg: str) -> None:
    errors.append({"loc": loc, "msg": msg})


# ---------------------------------------------------------------- warnings
#
# A warning is a note about a file that is still accepted (a VESSL key Runyard
# ignores, an organization that is not the run's team). Parsers and resolvers put
# it in the same list as the errors, marked, so no function's signature changes;
# whoever finishes (parse_spec_with_warnings, runs.services) splits the two.

_WARNING_MARK = "warning"


def warning(loc: str, msg: str) -> dict[str, Any]:
    """A problem entry that does not refuse the file: append it to an error list."""
    return {"loc": loc, "msg": msg, _WARNING_MARK: True}


def split_warnings(problems: list[dict[str, Any]]) -> tuple[Errors, Errors]:
    """(errors, warnings) of a list that may hold both; each as {"loc", "msg"}."""
    errors = [p for p in problems if not p.get(_WARNING_MARK)]
    warnings = [{"loc": p["loc"], "msg": p["msg"]} for p in problems if p.get(_WARNING_MARK)]
    return errors, warnings


# ---------------------------------------------------------------- YAML loading


class _DuplicateKeyError(yaml.YAMLError):
    def __init__(self, mapping_node: yaml.MappingNode, key_node: yaml.Node) -> None:
        super().__init__("duplicate key")
        self.mapping_node = mapping_node
        self.key_node = key_node


class _UniqueKeySafeLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate mapping keys; PyYAML silently keeps the last one.
    It also refuses nesting deeper than MAX_YAML_DEPTH while composing: PyYAML's
    composer recurses once per level, and "a: [[[[..." would otherwise end in RecursionError."""

    _depth = 0

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node:
        if self._depth >= MAX_YAML_DEPTH:
            mark = self.peek_event().start_mark
            raise SpecError([{"loc": "", "msg": f"invalid YAML: nested deeper than {MAX_YAML_DEPTH} levels at line {mark.line + 1}"}])
        self._depth += 1
        try:
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen_keys: set[Any] = set()
        # Checked before SafeConstructor flattens "<<" merges, so a key that
        # overrides a merged-in default is not mistaken for a duplicate.
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                if key in seen_keys:
                    raise _DuplicateKeyError(node, key_node)
                seen_keys.add(key)
            except TypeError:
                pass  # unhashable key: SafeConstructor reports it with a mark
        return super().construct_mapping(node, deep=deep)


def _path_to_node(node: yaml.Node, target: yaml.Node, visited: set[int]) -> list[str | int] | None:
    if node is target:
        return []
    # Aliases can make the node graph cyclic.
    if id(node) in visited:
        return None
    visited.add(id(node))
    children: list[tuple[str | int, yaml.Node]] = []
    if isinstance(node, yaml.MappingNode):
        children = [(str(key_node.value), value_node) for key_node, value_node in node.value]
    elif isinstance(node, yaml.SequenceNode):
        children = list(enumerate(node.value))
    for segment, child in children:
        sub_path = _path_to_node(child, target, visited)
        if sub_path is not None:
            return [segment, *sub_path]
    return None


def _node_children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.MappingNode):
        return [part for pair in node.value for part in pair]
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    return []


def _check_expanded_size(root: yaml.Node) -> None:
    """Refuse a document whose aliases, written out, make it larger than
    MAX_EXPANDED_YAML_BYTES ("billion laughs": a few lines that expand to gigabytes
    once stored as JSON), or that contains itself. Iterative, each node sized once."""
    sizes: dict[int, int] = {}
    open_nodes: set[int] = set()  # the nodes whose children are being sized: the path from the root
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, children_sized = stack.pop()
        key = id(node)
        if children_sized:
            open_nodes.discard(key)
            own = len(node.value) + 1 if isinstance(node, yaml.ScalarNode) else 1
            sizes[key] = own + sum(sizes[id(child)] for child in _node_children(node))
            if sizes[key] > MAX_EXPANDED_YAML_BYTES:
                raise SpecError([{"loc": "", "msg": f"invalid YAML: its aliases expand it beyond {MAX_EXPANDED_YAML_BYTES // 1024} KiB"}])
            continue
        if key in sizes:
            continue
        if key in open_nodes:
            line = node.start_mark.line + 1
            raise SpecError([{"loc": "", "msg": f"invalid YAML: an alias refers to a node that contains it (line {line})"}])
        open_nodes.add(key)
        stack.append((node, True))
        stack.extend((child, False) for child in _node_children(node))


def _duplicate_key_error(root: yaml.Node | None, exc: _DuplicateKeyError) -> Error:
    mapping_path = _path_to_node(root, exc.mapping_node, set()) if root is not None else None
    key_path = [*(mapping_path or []), str(exc.key_node.value)]
    line = exc.key_node.start_mark.line + 1
    return {"loc": _loc_from_path(key_path), "msg": f"duplicate key (line {line})"}


def _line_and_column(text: str, offset: int) -> str:
    line = text.count("\n", 0, offset) + 1
    column = offset - (text.rfind("\n", 0, offset) + 1) + 1
    return f"line {line}, column {column}"


def _describe_yaml_error(exc: yaml.YAMLError, text: str) -> str:
    if isinstance(exc, yaml.MarkedYAMLError) and exc.problem_mark is not None:
        mark = exc.problem_mark
        problem = exc.problem or exc.context or "syntax error"
        return f"invalid YAML: {problem} at line {mark.line + 1}, column {mark.column + 1}"
    if isinstance(exc, yaml.reader.ReaderError):
        # The reader reports a character offset rather than a mark.
        problem = str(exc).splitlines()[0]
        return f"invalid YAML: {problem} at {_line_and_column(text, exc.position)}"
    return "invalid YAML: " + " ".join(str(exc).split())


def _decode_yaml_bytes(data: bytes) -> str:
    # YAML streams are UTF-8 or BOM-marked UTF-16. Decoding here rather than in
    # PyYAML's reader lets every error position refer to the same text.
    encoding = "utf-16" if data[:2] in (b"\xff\xfe", b"\xfe\xff") else "utf-8-sig"
    try:
        return data.decode(encoding)
    except UnicodeDecodeError as exc:
        valid_prefix = data[: exc.start].decode(encoding, errors="replace")
        position = _line_and_column(valid_prefix, len(valid_prefix))
        raise SpecError([{"loc": "", "msg": f"invalid YAML: not valid {exc.encoding.upper()} at {position}"}]) from None


def _load_yaml(source: str | bytes) -> Any:
    size = len(source) if isinstance(source, bytes) else len(source.encode("utf-8", "surrogatepass"))
    if size > MAX_SPEC_BYTES:
        raise SpecError([{"loc": "", "msg": "spec is larger than 256 KiB"}])
    text = _decode_yaml_bytes(source) if isinstance(source, bytes) else source
    if templates := _template_errors(text):
        raise SpecError(templates)
    # Same as yaml.safe_load, but with the duplicate-key check and a clear
    # error for multi-document streams instead of a generic ComposerError.
    loader: _UniqueKeySafeLoader | None = None
    root: yaml.Node | None = None
    try:
        # The reader already rejects control characters when it is created.
        loader = _UniqueKeySafeLoader(text)
        if loader.check_node():
            root = loader.get_node()
        if loader.check_node():
            raise SpecError([{"loc": "", "msg": "expected a single YAML document, found several"}])
        if root is None:
            return None
        _check_expanded_size(root)
        _keep_env_text(root)
        return loader.construct_document(root)
    except _DuplicateKeyError as exc:
        raise SpecError([_duplicate_key_error(root, exc)]) from None
    except yaml.YAMLError as exc:
        raise SpecError([{"loc": "", "msg": _describe_yaml_error(exc, text)}]) from None
    except RecursionError:
        raise SpecError([{"loc": "", "msg": "invalid YAML: nested too deeply"}]) from None
    finally:
        if loader is not None:
            loader.dispose()


# ---------------------------------------------------------------- field parsers


def _parse_fields(
    raw: Mapping[Any, Any],
    loc: str,
    parsers: Mapping[str, FieldParser],
    required: frozenset[str],
    errors: Errors,
) -> dict[str, Any]:
    """Run each key's parser in document order; returns only the usable values."""
    parsed: dict[str, Any] = {}
    for key, value in raw.items():
        key_loc = _key_loc(loc, key)
        parser = parsers.get(key) if isinstance(key, str) else None
        if parser is None:
            _add(errors, key_loc, "unknown key")
            continue
        # A bare "key:" in YAML means "not set", so it falls back to the default.
        if value is None:
            continue
        result = parser(value, key_loc, errors)
        if result is not None:
            parsed[key] = result
    for key in parsers:
        if key in required and raw.get(key) is None:
            _add(errors, _key_loc(loc, key), "required")
    return parsed


def storable_text(text: str) -> bool:
    """No NUL and no lone surrogate: YAML's "\\0" and "\\ud800" escapes make both,
    and neither can be stored (PostgreSQL refuses NUL, UTF-8 the surrogate)."""
    if "\x00" in text:
        return False
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _parse_string(value: Any, loc: str, errors: Errors) -> str | None:
    if not isinstance(value, str):
        _add(errors, loc, _MSG_STRING)
        return None
    if not storable_text(value):
        _add(errors, loc, _MSG_UNSTORABLE)
        return None
    return value


def _parse_non_empty_string(value: Any, loc: str, errors: Errors) -> str | None:
    text = _parse_string(value, loc, errors)
    if text is not None and not text.strip():
        _add(errors, loc, _MSG_EMPTY)
        return None
    return text


def _parse_name(value: Any, loc: str, errors: Errors) -> str | None:
    name = _parse_non_empty_string(value, loc, errors)
    if name is not None and len(name) > MAX_NAME_LENGTH:
        _add(errors, loc, f"must be at most {MAX_NAME_LENGTH} characters")
        return None
    return name


def _parse_image(value: Any, loc: str, errors: Errors) -> str | None:
    image = _parse_non_empty_string(value, loc, errors)
    if image is not None and any(char.isspace() for char in image):
        _add(errors, loc, "must not contain whitespace")
        return None
    return image


def _parse_tags(value: Any, loc: str, errors: Errors) -> list[str] | None:
    if not isinstance(value, list):
        _add(errors, loc, _MSG_LIST)
        return None
    unique_tags: dict[str, None] = {}  # a dict keeps first-seen order
    for index, item in enumerate(value):
        item_loc = _index_loc(loc, index)
        tag = _parse_non_empty_string(item, item_loc, errors)
        if tag is None:
            continue
        if len(tag) > MAX_TAG_LENGTH:
            _add(errors, item_loc, f"must be at most {MAX_TAG_LENGTH} characters")
            continue
        unique_tags.setdefault(tag, None)
    return list(unique_tags)


def _parse_boolean(value: Any, loc: str, errors: Errors) -> bool | None:
    if not isinstance(value, bool):
        _add(errors, loc, _MSG_BOOLEAN)
        return None
    return value


def _duration_millis(value: Any) -> int | None:
    # bool is an int subclass; "termination_grace: yes" must not mean 1 s.
    if isinstance(value, int) and not isinstance(value, bool):
        return value * 1000
    if not isinstance(value, str):
        return None
    match = _DURATION.fullmatch(value)
    if match is None or not any(match.groupdict().values()):
        return None
    return sum(int(amount) * _MILLIS_PER_UNIT[unit] for unit, amount in match.groupdict().items() if amount)


def _parse_grace_seconds(value: Any, loc: str, errors: Errors) -> float | None:
    millis = _duration_millis(value)
    if millis is None:
        _add(errors, loc, _MSG_DURATION)
        return None
    if not 0 <= millis <= MAX_GRACE_SECONDS * 1000:
        _add(errors, loc, f"must be between 0 and {MAX_GRACE_SECONDS} seconds")
        return None
    # Derived from whole milliseconds so dump_spec_yaml can render it exactly.
    return millis / 1000


def _check_container_path(path: Any, loc: str, errors: Errors, *, allow_root: bool) -> bool:
    if not isinstance(path, str) or not path.startswith("/"):
        _add(errors, loc, _MSG_ABSOLUTE_PATH)
        return False
    if not storable_text(path):
        _add(errors, loc, _MSG_UNSTORABLE)
        return False
    if not allow_root and not path.strip("/"):
        _add(errors, loc, "must not be the root directory")
        return False
    if ".." in path.split("/"):
        _add(errors, loc, "must not contain '..'")
        return False
    return True


def _parse_resources(value: Any, loc: str, errors: Errors) -> dict[str, str] | None:
    if not isinstance(value, dict):
        _add(errors, loc, _MSG_MAPPING)
        return None
    parsers = {"cluster": _parse_non_empty_string, "preset": _parse_non_empty_string, **_LEGACY_RESOURCES}
    fields = _parse_fields(value, loc, parsers, frozenset(), errors)
    return {"cluster": fields.get("cluster", DEFAULT_CLUSTER), "preset": fields.get("preset", DEFAULT_PRESET)}


def _parse_git_source(value: Any, loc: str, errors: Errors) -> dict[str, str] | None:
    if not isinstance(value, dict):
        _add(errors, loc, _MSG_MAPPING)
        return None
    parsers = {"url": _parse_non_empty_string, "ref": _parse_non_empty_string, "credential_name": _parse_credential_name}
    fields = _parse_fields(value, loc, parsers, frozenset({"url"}), errors)
    git = {"url": fields.get("url", ""), "ref": fields.get("ref", DEFAULT_GIT_REF)}
    if "credential_name" in fields:
        git["credential"] = fields["credential_name"]
    return git


def _parse_dataset_uri(value: str, loc: str, errors: Errors) -> dict[str, Any] | None:
    match = _DATASET_URI.fullmatch(value)
    if match is None:
        _add(errors, loc, "expected dataset://NAME or dataset://NAME@VERSION")
        return None
    version_text = match["version"]
    if version_text is None:
        return {"dataset": {"name": match["name"], "version": None}}
    if not re.fullmatch(r"[0-9]{1,10}", version_text) or int(version_text) < 1:
        _add(errors, loc, "dataset version must be a positive integer")
        return None
    return {"dataset": {"name": match["name"], "version": int(version_text)}}


def _parse_code_uri(value: str, loc: str, errors: Errors) -> dict[str, Any] | None:
    match = _CODE_URI.fullmatch(value)
    if match is None:
        _add(errors, loc, "expected code://SNAPSHOT (the content hash `runyard run create --code` uploads)")
        return None
    return {"code": {"hash": match["hash"]}}


def _parse_git_uri(value: str, loc: str, errors: Errors) -> dict[str, Any] | None:
    """VESSL's git://HOST/ORG/REPO[.git][@REF]. VESSL means its own clone of the
    repository over HTTPS (with the run's git credential), not git's unauthenticated
    git:// daemon protocol, which GitHub and most hosts no longer serve: so it is the
    verbose {git: {url: https://HOST/ORG/REPO, ref: REF}}."""
    match = _GIT_SHORTHAND.fullmatch(value)
    segments = match["path"].split("/") if match else []
    if match is None or len(segments) < 2 or any(part in ("", ".", "..") for part in segments):
        _add(errors, loc, "expected git://HOST/ORG/REPO[.git][@REF], e.g. git://github.com/org/repo.git@main")
        return None
    return {"git": {"url": f"https://{match['host']}/{match['path']}", "ref": match["ref"] or DEFAULT_GIT_REF}}


def _parse_hf_uri(value: str, loc: str, errors: Errors) -> dict[str, Any] | None:
    """hf://huggingface.co/ORG/REPO[@REVISION] (datasets/ORG/NAME, spaces/ORG/NAME too):
    a Hugging Face repository, fetched over the network when the run is created
    (runs.remote_sources), or refused then if it cannot be."""
    match = _HF_URI.fullmatch(value)
    segments = match["path"].split("/") if match else []
    kind_ok = len(segments) == 2 or len(segments) == 3 and segments[0] in ("datasets", "spaces")
    if match is None or match["host"].lower() != "huggingface.co" or not kind_ok or "" in segments:
        _add(errors, loc, "expected hf://huggingface.co/ORG/REPO[@REVISION] (or hf://huggingface.co/datasets/ORG/NAME)")
        return None
    return {"remote": {"url": value}}


def _parse_bucket_uri(value: str, loc: str, errors: Errors) -> dict[str, Any] | None:
    """s3://BUCKET[/PATH] and gs://BUCKET[/PATH]: refused or resolved at creation (runs.remote_sources)."""
    match = _BUCKET_URI.fullmatch(value)
    if match is None:
        scheme = value.partition("://")[0]
        _add(errors, loc, f"expected {scheme}://BUCKET/PATH")
        return None
    return {"remote": {"url": value}}


def _parse_import_source(value: Any, loc: str, errors: Errors) -> dict[str, Any] | None:
    if isinstance(value, str):
        scheme = value.partition("://")[0] + "://"
        if scheme not in _IMPORT_URIS:
            _add(errors, loc, f"unknown source {value!r}: expected {_import_forms()}")
            return None
        return _IMPORT_URIS[scheme][1](value, loc, errors)
    if isinstance(value, dict):
        fields = _parse_fields(value, loc, {"git": _parse_git_source}, frozenset({"git"}), errors)
        return {"git": fields["git"]} if "git" in fields else None
    _add(errors, loc, f"expected a source: {_import_forms()}")
    return None


def _parse_imports(value: Any, loc: str, errors: Errors) -> dict[str, Any] | None:
    if not isinstance(value, dict):
        _add(errors, loc, _MSG_MAPPING)
        return None
    imports: dict[str, Any] = {}
    for path, source in value.items():
        source_loc = _name_loc(loc, path)
        path_ok = _check_container_path(path, source_loc, errors, allow_root=False)
        # The source is still checked when the path is bad, to report everything at once.
        parsed_source = _parse_import_source(source, source_loc, errors)
        if path_ok and parsed_source is not None:
            imports[path] = parsed_source
    return imports


def _parse_exports(value: Any, loc: str, errors: Errors) -> dict[str, Any] | None:
    if not isinstance(value, dict):
        _add(errors, loc, _MSG_MAPPING)
        return None
    exports: dict[str, Any] = {}
    for path, target in value.items():
        target_loc = _name_loc(loc, path)
        path_ok = _check_container_path(path, target_loc, errors, allow_root=False)
        uri = _parse_string(target, target_loc, errors)
        if uri is None:
            continue
        parsed_target = _parse_export_target(uri, target_loc, errors)
        if parsed_target is not None and path_ok:
            exports[path] = parsed_target
    _check_one_export_per_file_set(exports, loc, errors)
    return exports


def _parse_workdir(value: Any, loc: str, errors: Errors) -> str | None:
    workdir = _parse_string(value, loc, errors)
    if workdir is not None and not _check_container_path(workdir, loc, errors, allow_root=True):
        return None
    return workdir


def _parse_run_steps(value: Any, loc: str, errors: Errors) -> list[dict[str, Any]] | None:
    """VESSL's forms of `run`: one command as a string, or a list of steps, each a
    command string, {command, workdir} or {wait: DURATION}."""
    if isinstance(value, str):
        command = _parse_non_empty_string(value, loc, errors)
        return None if command is None else [{"command": command, "workdir": None}]
    if not isinstance(value, list):
        _add(errors, loc, f"expected a command, or a list of steps (each {_STEP_FORMS})")
        return None
    if not value:
        _add(errors, loc, _MSG_EMPTY)
        return None
    steps = [_parse_run_step(item, _index_loc(loc, index), errors) for index, item in enumerate(value)]
    return [step for step in steps if step is not None]


def _parse_run_step(item: Any, loc: str, errors: Errors) -> dict[str, Any] | None:
    if isinstance(item, str):
        command = _parse_non_empty_string(item, loc, errors)
        return None if command is None else {"command": command, "workdir": None}
    if not isinstance(item, dict):
        _add(errors, loc, f"expected {_STEP_FORMS}")
        return None
    if "wait" in item:
        if "command" in item:
            _add(errors, loc, "a step is either {command, workdir} or {wait: DURATION}, not both")
            return None
        fields = _parse_fields(item, loc, {"wait": _parse_wait}, frozenset({"wait"}), errors)
        return {"wait_seconds": fields["wait"]} if "wait" in fields else None
    parsers = {"command": _parse_non_empty_string, "workdir": _parse_workdir}
    fields = _parse_fields(item, loc, parsers, frozenset({"command"}), errors)
    return {"command": fields.get("command", ""), "workdir": fields.get("workdir")}


def _parse_wait(value: Any, loc: str, errors: Errors) -> float | None:
    millis = _duration_millis(value)
    if millis is None:
        _add(errors, loc, _MSG_DURATION)
        return None
    if not 0 <= millis <= MAX_WAIT_SECONDS * 1000:
        _add(errors, loc, f"must be between 0 and {MAX_WAIT_SECONDS // 86400} days")
        return None
    return millis / 1000


def _parse_env_name(name: Any, loc: str, errors: Errors) -> bool:
    if not isinstance(name, str) or not _ENV_NAME.fullmatch(name):
        _add(errors, loc, "invalid variable name; use letters, digits and _, not starting with a digit")
        return False
    if name.startswith(RESERVED_ENV_PREFIX):
        _add(errors, loc, f"names starting with {RESERVED_ENV_PREFIX} are reserved")
        return False
    return True


def _parse_env_value(value: Any, loc: str, errors: Errors) -> str | dict[str, str] | None:
    if isinstance(value, dict) and ("value" in value or isinstance(value.get("secret"), bool)):
        return _parse_env_value_mapping(value, loc, errors)
    if isinstance(value, dict):
        fields = _parse_fields(value, loc, {"secret": _parse_non_empty_string}, frozenset({"secret"}), errors)
        return {"secret": fields["secret"]} if "secret" in fields else None
    return _parse_env_scalar(value, loc, errors)


def _parse_env(value: Any, loc: str, errors: Errors) -> dict[str, Any] | None:
    if not isinstance(value, dict):
        _add(errors, loc, _MSG_MAPPING)
        return None
    env: dict[str, Any] = {}
    for name, raw_value in value.items():
        value_loc = _name_loc(loc, name)
        name_ok = _parse_env_name(name, value_loc, errors)
        parsed_value = _parse_env_value(raw_value, value_loc, errors)
        if name_ok and parsed_value is not None:
            env[name] = parsed_value
    return env


# ---------------------------------------------------------------- models, run files, VESSL URIs (SPEC §8)
#
# Imports, normalized (a version or volume left open is pinned when the run is created):
#   vessl-model://ORG/REPO[/N], model://REPO[@N]    {"model": {"name": REPO, "version": N or None}}
#   vessl-dataset://ORG/NAME[/N]                    {"dataset": {"name": NAME, "version": N or None}}
#   run://ID[/PATH]                                 {"run_files": {"run": ID, "path": "/PATH"}}
#   volume://NAME                                   {"volume": {"name": NAME}}, then run_files
# Exports:
#   vessl-artifact://[NAME]                         {"artifact": NAME or ""}
#   vessl-model://ORG/REPO, model://REPO            {"model": {"name": REPO}}
#   vessl-dataset://ORG/NAME, dataset://NAME        {"dataset": {"name": NAME}}
# VESSL's ORG is the run's own team, whatever it says (org_warnings tells when it differs).

_SET_NAME = r"[A-Za-z0-9._-]{1,100}"
_ORG = r"[A-Za-z0-9._-]{1,100}"
_VESSL_MODEL_URI = re.compile(rf"vessl-model://(?P<org>{_ORG})/(?P<name>{_SET_NAME})(?:/(?P<version>[^/]*))?/?")
_VESSL_DATASET_URI = re.compile(rf"vessl-dataset://(?P<org>{_ORG})/(?P<name>{_SET_NAME})(?:/(?P<version>[^/]*))?/?")
_MODEL_URI = re.compile(rf"model://(?P<name>{_SET_NAME})(?:@(?P<version>.*))?", re.DOTALL)
_RUN_FILES_URI = re.compile(r"run://(?P<run>[^/]*)(?P<path>/.*)?", re.DOTALL)
_ARTIFACT_URI = re.compile(rf"vessl-artifact://(?P<name>{_SET_NAME})?/?")
_EXPORT_DATASET_URI = re.compile(rf"dataset://(?P<name>{_SET_NAME})")
_EXPORT_TARGETS = "volume://NAME, vessl-artifact://[NAME], vessl-model://ORG/REPO or vessl-dataset://ORG/NAME"


def _parse_version(text: str | None, what: str, loc: str, errors: Errors) -> int | None | bool:
    """None for no version (the newest, pinned at creation), the number, or False after an error."""
    if text is None or text == "":
        return None
    if not re.fullmatch(r"[0-9]{1,10}", text) or int(text) < 1:
        _add(errors, loc, f"{what} version must be a positive integer")
        return False
    return int(text)


def _parse_model_import(value: str, loc: str, errors: Errors) -> dict[str, Any] | None:
    if value.startswith("model://"):
        match, expected = _MODEL_URI.fullmatch(value), "expected model://NAME or model://NAME@VERSION"
    else:
        match, expected = _VESSL_MODEL_URI.fullmatch(value), "expected vessl-model://ORG/REPO or vessl-model://ORG/REPO/NUMBER"
    if match is None:
        _add(errors, loc, expected)
        return None
    version = _parse_version(match["version"], "model", loc, errors)
    return None if version is False else {"model": {"name": match["name"], "version": version}}


def _parse_vessl_dataset_import(value: str, loc: str, errors: Errors) -> dict[str, Any] | None:
    match = _VESSL_DATASET_URI.fullmatch(value)
    if match is None:
        _add(errors, loc, "expected vessl-dataset://ORG/NAME or vessl-dataset://ORG/NAME/VERSION")
        return None
    version = _parse_version(match["version"], "dataset", loc, errors)
    return None if version is False else {"dataset": {"name": match["name"], "version": version}}


def _parse_run_files_import(value: str, loc: str, errors: Errors) -> dict[str, Any] | None:
    match = _RUN_FILES_URI.fullmatch(value)
    if match is None:
        _add(errors, loc, "expected run://RUN_ID/PATH, a path that run exported (e.g. run://12/output)")
        return None
    if not re.fullmatch(r"[0-9]{1,18}", match["run"]) or int(match["run"]) < 1:
        _add(errors, loc, "expected run://RUN_ID/PATH: the run id must be a positive integer")
        return None
    path = match["path"] or "/"
    if not _check_container_path(path, loc, errors, allow_root=True):
        return None
    # One spelling per folder: "/output/", "/output" and "//output" name the same files.
    return {"run_files": {"run": int(match["run"]), "path": "/" + "/".join(part for part in path.split("/") if part)}}


def _parse_volume_import(value: str, loc: str, errors: Errors) -> dict[str, Any] | None:
    match = _VOLUME_URI.fullmatch(value)
    if match is None:
        _add(errors, loc, "expected volume://NAME")
        return None
    return {"volume": {"name": match["name"]}}


def _parse_reference_import(value: str, loc: str, errors: Errors) -> dict[str, Any] | None:
    """An import of what the team already has: a model version, a dataset version,
    an earlier run's exported files, or the files last exported to a volume."""
    if value.startswith(("vessl-model://", "model://")):
        return _parse_model_import(value, loc, errors)
    if value.startswith("vessl-dataset://"):
        return _parse_vessl_dataset_import(value, loc, errors)
    if value.startswith("run://"):
        return _parse_run_files_import(value, loc, errors)
    return _parse_volume_import(value, loc, errors)


# Import sources written as one string: each scheme, how it is written, and its parser.
_IMPORT_URIS: dict[str, tuple[str, Callable[[str, str, Errors], dict[str, Any] | None]]] = {
    "git://": ("git://HOST/ORG/REPO[@REF]", _parse_git_uri),
    "dataset://": ("dataset://NAME[@VERSION]", _parse_dataset_uri),
    "code://": ("code://HASH", _parse_code_uri),
    "hf://": ("hf://huggingface.co/ORG/REPO", _parse_hf_uri),
    "s3://": ("s3://BUCKET/PATH", _parse_bucket_uri),
    "gs://": ("gs://BUCKET/PATH", _parse_bucket_uri),
    "vessl-dataset://": ("vessl-dataset://ORG/NAME[/VERSION]", _parse_reference_import),
    "vessl-model://": ("vessl-model://ORG/REPO[/NUMBER]", _parse_reference_import),
    "model://": ("model://NAME[@VERSION]", _parse_reference_import),
    "run://": ("run://RUN_ID/PATH", _parse_reference_import),
    "volume://": ("volume://NAME", _parse_reference_import),
}


def _import_forms() -> str:
    return ", ".join(form for form, _ in _IMPORT_URIS.values()) + " or {git: {url, ref}}"


def _parse_export_target(uri: str, loc: str, errors: Errors) -> dict[str, Any] | None:
    for scheme, pattern, expected in (
        ("volume://", _VOLUME_URI, "expected volume://NAME"),
        ("vessl-artifact://", _ARTIFACT_URI, "expected vessl-artifact:// or vessl-artifact://NAME"),
        ("vessl-model://", _VESSL_MODEL_URI, "expected vessl-model://ORG/REPO"),
        ("model://", _MODEL_URI, "expected model://NAME"),
        ("vessl-dataset://", _VESSL_DATASET_URI, "expected vessl-dataset://ORG/NAME"),
        ("dataset://", _EXPORT_DATASET_URI, "expected dataset://NAME"),
    ):
        if not uri.startswith(scheme):
            continue
        match = pattern.fullmatch(uri)
        if match is None:
            _add(errors, loc, expected)
            return None
        if match.groupdict().get("version"):
            _add(errors, loc, f"an export makes a new version, numbered when the run ends: write {expected[len('expected '):]}, without a version")
            return None
        if scheme == "volume://":
            return {"volume": match["name"]}
        if scheme == "vessl-artifact://":
            return {"artifact": match["name"] or ""}
        return {"model" if "model" in scheme else "dataset": {"name": match["name"]}}
    _add(errors, loc, f"expected {_EXPORT_TARGETS}")
    return None


def _check_one_export_per_file_set(exports: dict[str, Any], loc: str, errors: Errors) -> None:
    """A run makes one new version of a model or dataset: two paths exported to one are refused."""
    first_path: dict[tuple[str, str], str] = {}
    for path, target in exports.items():
        for kind in ("model", "dataset"):
            if kind in target:
                key = (kind, target[kind]["name"])
                if key in first_path:
                    _add(errors, _name_loc(loc, path), f"{kind} {key[1]} is already exported from {_name_loc(loc, first_path[key])}: "
                         f"a run makes one version of a {kind}, from one path")
                first_path.setdefault(key, path)


def org_warnings(source: str | bytes | Mapping[str, Any], team_name: str) -> Errors:
    """VESSL URIs name an organization; here the run's own team is always meant. For
    each vessl-model:// or vessl-dataset:// import or export whose ORG is not
    `team_name`: a warning, {"loc", "msg"}, not an error. `source` is what parse_spec took."""
    try:
        document = _load_yaml(source) if isinstance(source, str | bytes) else source
    except SpecError:
        return []
    warnings: Errors = []
    if not isinstance(document, Mapping):
        return warnings
    for section in ("import", "export"):
        entries = document.get(section)
        if not isinstance(entries, Mapping):
            continue
        for path, uri in entries.items():
            if not isinstance(uri, str):
                continue
            match = _VESSL_MODEL_URI.fullmatch(uri) or _VESSL_DATASET_URI.fullmatch(uri)
            if match is not None and match["org"] != team_name:
                _add(warnings, _name_loc(section, path),
                     f"organization {match['org']!r} is not this run's team: team {team_name}'s "
                     f"{'model' if uri.startswith('vessl-model') else 'dataset'} {match['name']} is used")
    return warnings


def _dump_reference_import(source: Mapping[str, Any]) -> str:
    if "model" in source:
        version = source["model"]["version"]
        return f"model://{source['model']['name']}" + ("" if version is None else f"@{version}")
    if "run_files" in source:
        return f"run://{source['run_files']['run']}{source['run_files']['path'].rstrip('/')}"
    return f"volume://{source['volume']['name']}"


def _dump_export_target(target: Mapping[str, Any]) -> str:
    if "artifact" in target:
        return f"vessl-artifact://{target['artifact']}"
    if "model" in target:
        return f"model://{target['model']['name']}"
    if "dataset" in target:
        return f"dataset://{target['dataset']['name']}"
    return f"volume://{target['volume']}"


PORT_TYPES = ("http", "tcp")
# A port's name is the last part of its address (/runs/ID/ports/NAME/): URL-safe as it is.
_PORT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")


def _parse_port_number(value: Any, loc: str, errors: Errors) -> int | None:
    # bool is an int subclass: "port: yes" is not port 1.
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
        _add(errors, loc, "expected a port number from 1 to 65535")
        return None
    return value


def _parse_port_name(value: Any, loc: str, errors: Errors) -> str | None:
    name = _parse_string(value, loc, errors)
    if name is not None and not _PORT_NAME.fullmatch(name):
        _add(errors, loc, "use 1 to 63 letters, digits, '.', '_' or '-', starting with a letter or digit")
        return None
    return name


def _parse_port_type(value: Any, loc: str, errors: Errors) -> str | None:
    kind = _parse_string(value, loc, errors)
    if kind is not None and kind not in PORT_TYPES:
        _add(errors, loc, "expected http or tcp")
        return None
    return kind


def _parse_ports(value: Any, loc: str, errors: Errors) -> list[dict[str, Any]] | None:
    """VESSL's `ports`: `{name, type: http|tcp, port}` items or bare numbers, to
    `{"name", "type", "port"}` each (a bare N is `{"name": "N", "type": "http", "port": N}`;
    a missing name is the number, a missing type http). Names and numbers are unique:
    a port is reached by either (runs.ports)."""
    if not isinstance(value, list):
        _add(errors, loc, "expected a list of ports, e.g. [{name: web, type: http, port: 8000}] or [8000]")
        return None
    parsers = {"name": _parse_port_name, "type": _parse_port_type, "port": _parse_port_number}
    ports: list[dict[str, Any]] = []
    names: dict[str, str] = {}
    numbers: dict[int, str] = {}
    for index, item in enumerate(value):
        item_loc = _index_loc(loc, index)
        if isinstance(item, dict):
            before = len(errors)
            fields = _parse_fields(item, item_loc, parsers, frozenset({"port"}), errors)
            if len(errors) > before:
                continue
            number = fields["port"]
            port = {"name": fields.get("name", str(number)), "type": fields.get("type", "http"), "port": number}
            name_loc = _key_loc(item_loc, "name")
        elif isinstance(item, int) and not isinstance(item, bool):
            if _parse_port_number(item, item_loc, errors) is None:
                continue
            port, name_loc = {"name": str(item), "type": "http", "port": item}, item_loc
        else:
            _add(errors, item_loc, "expected a port number or a mapping with name, type and port")
            continue
        if port["name"].isdigit() and int(port["name"]) != port["port"]:
            # /ports/8080/ must not mean one port by name and another by number.
            _add(errors, name_loc, f"a name made of digits must be the port's own number ({port['port']})")
        elif port["name"] in names:
            _add(errors, name_loc, f"duplicate port name {port['name']!r} (also {names[port['name']]})")
        elif port["port"] in numbers:
            _add(errors, _key_loc(item_loc, "port") if isinstance(item, dict) else item_loc,
                 f"port {port['port']} is declared twice (also {numbers[port['port']]})")
        else:
            names[port["name"]], numbers[port["port"]] = item_loc, item_loc
            ports.append(port)
    return ports


# ---------------------------------------------------------------- credentials, inline secrets, interactive
# VESSL's forms (SPEC §8): `image: {url, credential_name}`, `credential_name` on a git
# import, `env: {X: {value, secret: true}}` and `interactive`.


def _parse_credential_name(value: Any, loc: str, errors: Errors) -> str | None:
    name = _parse_non_empty_string(value, loc, errors)
    if name is not None and not CREDENTIAL_NAME.fullmatch(name):
        _add(errors, loc, "expected a credential's name: letters, digits, _ . - (not first), at most 100")
        return None
    return name


def _parse_image_field(value: Any, loc: str, errors: Errors) -> dict[str, str | None] | None:
    """`image: NAME`, or `image: {url: NAME, credential_name: CRED}` (a team registry
    credential that pulls it): {"url", "credential"}."""
    if isinstance(value, dict):
        parsers = {"url": _parse_image, "credential_name": _parse_credential_name}
        fields = _parse_fields(value, loc, parsers, frozenset({"url"}), errors)
        return {"url": fields["url"], "credential": fields.get("credential_name")} if "url" in fields else None
    if not isinstance(value, str):
        _add(errors, loc, "expected an image name, or a mapping with url and credential_name")
        return None
    image = _parse_image(value, loc, errors)
    return None if image is None else {"url": image, "credential": None}


def _parse_env_plain_value(value: Any, loc: str, errors: Errors) -> str | None:
    if isinstance(value, dict | list):
        _add(errors, loc, _MSG_STRING)
        return None
    return _parse_env_value(value, loc, errors)


def _parse_env_value_mapping(value: dict, loc: str, errors: Errors) -> str | dict[str, Any] | None:
    """`{value: X, secret: true}`: an inline secret, whose value never enters the spec
    (parse_spec_with_secrets hands it over apart); `{secret: true}` alone keeps the value
    a reproduced run stored. `{value: X}` or `{value: X, secret: false}`: plain X."""
    parsers = {"value": _parse_env_plain_value, "secret": _parse_boolean}
    fields = _parse_fields(value, loc, parsers, frozenset(), errors)
    if fields.get("secret"):
        return {"inline_secret": True, **({"value": fields["value"]} if "value" in fields else {})}
    if "value" not in fields:
        if "secret" in fields:  # secret: false and no value
            _add(errors, _key_loc(loc, "value"), "required")
        return None
    return fields["value"]


def _split_inline_secrets(spec: dict[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
    env, values = {}, {}
    for name, value in spec["env"].items():
        if isinstance(value, dict) and value.get("inline_secret"):
            if "value" in value:
                values[name] = value["value"]
            value = {"inline_secret": True}
        env[name] = value
    return {**spec, "env": env}, values


def _parse_positive_duration(value: Any, loc: str, errors: Errors) -> float | None:
    millis = _duration_millis(value)
    if millis is None:
        _add(errors, loc, _MSG_DURATION)
        return None
    if millis <= 0:
        _add(errors, loc, "must be longer than 0 seconds")
        return None
    return millis / 1000


def _parse_jupyter(value: Any, loc: str, errors: Errors) -> float | None:
    if not isinstance(value, dict):
        _add(errors, loc, _MSG_MAPPING)
        return None
    fields = _parse_fields(value, loc, {"idle_timeout": _parse_positive_duration}, frozenset(), errors)
    return fields.get("idle_timeout")


def _parse_interactive(value: Any, loc: str, errors: Errors) -> dict[str, float | None] | None:
    """`interactive: {max_runtime: 24h, jupyter: {idle_timeout: 120m}}`: the run is kept
    alive when its command ends (as with termination_protection) and ended at max_runtime."""
    if not isinstance(value, dict):
        _add(errors, loc, _MSG_MAPPING)
        return None
    parsers = {"max_runtime": _parse_positive_duration, "jupyter": _parse_jupyter}
    fields = _parse_fields(value, loc, parsers, frozenset(), errors)
    return {"max_runtime_seconds": fields.get("max_runtime"), "jupyter_idle_timeout_seconds": fields.get("jupyter")}


def keeps_alive(spec: Mapping[str, Any]) -> bool:
    """Whether the run stays (idle) once its command ends: termination protection, or interactive."""
    return bool(spec.get("termination_protection")) or spec.get("interactive") is not None


# ---------------------------------------------------------------- VESSL forms
#
# What a VESSL run file may say that Runyard reads its own way (SPEC §8): env values
# of any scalar type, legacy keys refused with what to write instead, service files
# and templates refused as a whole.

_YAML_STR = "tag:yaml.org,2002:str"
_YAML_NULL = "tag:yaml.org,2002:null"


def _parse_env_scalar(value: Any, loc: str, errors: Errors) -> str | None:
    """An env value as text. From YAML, numbers and booleans arrive as written
    (_keep_env_text: EPOCHS: 010 is "010", DEBUG: yes is "yes"); from JSON they are
    written out here (3 → "3", 0.5 → "0.5", true → "true")."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    if isinstance(value, str):
        return _parse_string(value, loc, errors)
    if value is None:
        _add(errors, loc, 'has no value: write "" for an empty one')
    else:
        _add(errors, loc, "expected a value (text, a number or true/false) or {secret: NAME}")
    return None


def _keep_env_text(root: yaml.Node) -> None:
    """Make the scalars under `env` (and an env entry's `value`) strings as written,
    before PyYAML turns 010 into 8, 0.10 into 0.1 and yes into True. New nodes
    replace the old: an alias elsewhere to the same node keeps its own type."""
    env = _mapping_value(root, "env")
    if not isinstance(env, yaml.MappingNode):
        return
    for index, (name_node, value_node) in enumerate(env.value):
        if isinstance(value_node, yaml.MappingNode):
            for inner_index, (key, inner) in enumerate(value_node.value):
                if isinstance(key, yaml.ScalarNode) and key.value == "value":
                    value_node.value[inner_index] = (key, _as_text(inner))
        else:
            env.value[index] = (name_node, _as_text(value_node))


def _mapping_value(node: yaml.Node, key: str) -> yaml.Node | None:
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            if isinstance(key_node, yaml.ScalarNode) and key_node.value == key:
                return value_node
    return None


def _as_text(node: yaml.Node) -> yaml.Node:
    if not isinstance(node, yaml.ScalarNode) or node.tag in (_YAML_STR, _YAML_NULL):
        return node
    return yaml.ScalarNode(_YAML_STR, node.value, node.start_mark, node.end_mark, style=node.style)


_TEMPLATE = re.compile(r"\{\{.*?\}\}")
_TEMPLATE_MSG = "{template} is a template: Runyard does not fill in templates; write the value itself"


def _template_errors(text: str) -> Errors:
    """A VESSL template ({{ inputs.lr }}) is refused, each naming its line: the file
    is not a run until someone fills it in. Comment lines are left alone."""
    hits = [
        (number, match.group(0))
        for number, line in enumerate(text.splitlines(), 1)
        if not line.lstrip().startswith("#") and (match := _TEMPLATE.search(line))
    ]
    if not hits:
        return []
    locs = _locs_by_line(text)
    return [{"loc": locs.get(number, ""), "msg": f"line {number}: " + _TEMPLATE_MSG.format(template=template)}
            for number, template in hits]


def _locs_by_line(text: str) -> dict[int, str]:
    """For each line, the deepest field that starts on it; where the YAML cannot be
    read (a template often breaks it), the top-level key the line belongs to."""
    try:
        root = yaml.compose(text, Loader=_UniqueKeySafeLoader)
    except (yaml.YAMLError, SpecError):
        root = None
    if root is None:
        locs, current = {}, ""
        for number, line in enumerate(text.splitlines(), 1):
            if (top := re.match(r"([^\s#:'\"-][^:]*):", line)) is not None:
                current = top.group(1).strip()
            locs[number] = current
        return locs
    found: dict[int, list[str | int]] = {}

    def visit(node: yaml.Node, path: list[str | int], seen: set[int]) -> None:
        if id(node) in seen:
            return
        seen.add(id(node))
        found[node.start_mark.line + 1] = path
        children: list[tuple[str | int, yaml.Node, yaml.Node]] = []
        if isinstance(node, yaml.MappingNode):
            children = [(k.value, k, v) for k, v in node.value if isinstance(k, yaml.ScalarNode)]
        elif isinstance(node, yaml.SequenceNode):
            children = [(i, v, v) for i, v in enumerate(node.value)]
        for segment, start, child in children:
            found[start.start_mark.line + 1] = [*path, segment]
            visit(child, [*path, segment], seen)

    visit(root, [], set())
    return {line: _loc_from_path(path) for line, path in found.items()}


def _template_errors_in_data(value: Any, path: list[str | int]) -> Errors:
    """The same for a spec sent as JSON: every string holding a template, by field."""
    if isinstance(value, str):
        match = _TEMPLATE.search(value)
        return [{"loc": _loc_from_path(path), "msg": _TEMPLATE_MSG.format(template=match.group(0))}] if match else []
    if isinstance(value, dict):
        return [e for key, item in value.items() for e in _template_errors_in_data(item, [*path, str(key)])]
    if isinstance(value, list):
        return [e for index, item in enumerate(value) for e in _template_errors_in_data(item, [*path, index])]
    return []


def _refusal(message: str) -> FieldParser:
    """A parser for a key VESSL knows and Runyard does not take: its message says what to write."""

    def refuse(value: Any, loc: str, errors: Errors) -> None:
        _add(errors, loc, message)

    return refuse


def _ignored(message: str) -> FieldParser:
    """A parser for a VESSL key that changes nothing here: accepted, with a warning."""

    def note(value: Any, loc: str, errors: Errors) -> None:
        errors.append(warning(loc, message))

    return note


_PRESET_INSTEAD = "set by the resource preset here: write resources: {preset: NAME} (a preset has CPU, memory and GPUs)"
_LEGACY_TOP_LEVEL: dict[str, FieldParser] = {
    "accelerators": _refusal("VESSL's legacy key: GPUs come with the resource preset; write resources: {preset: NAME}"
                             " with a preset that has GPUs"),
    "volumes": _refusal("VESSL's legacy key: write import: {PATH: SOURCE} for what the run reads and"
                        " export: {PATH: TARGET} for what it writes"),
}
_LEGACY_RESOURCES: dict[str, FieldParser] = {
    "cpu": _refusal(_PRESET_INSTEAD),
    "memory": _refusal(_PRESET_INSTEAD),
    "accelerators": _refusal(_PRESET_INSTEAD),
    "requests": _refusal(_PRESET_INSTEAD),
    "node_names": _ignored("ignored: the cluster chooses the node (a Swarm places the run where there is room)"),
}


def _service_file_error(document: Mapping[Any, Any]) -> Error | None:
    """A VESSL service (a long-lived, autoscaled endpoint) has `service:` and `message:`
    where a run has neither: refused as a whole rather than key by key."""
    for key in document:  # the first of them in the file, so the line shown is where it starts
        if key in ("service", "message"):
            return {"loc": key, "msg": "a service, not a run: this is a VESSL service file (service:, message:);"
                    " Runyard takes run files (name, image, run)"}
    return None


_TOP_LEVEL_PARSERS: dict[str, FieldParser] = {
    "name": _parse_name,
    "description": _parse_string,
    "tags": _parse_tags,
    "image": _parse_image_field,
    "resources": _parse_resources,
    "import": _parse_imports,
    "export": _parse_exports,
    "run": _parse_run_steps,
    "env": _parse_env,
    "termination_protection": _parse_boolean,
    "termination_grace": _parse_grace_seconds,
    "ports": _parse_ports,
    "interactive": _parse_interactive,
    **_LEGACY_TOP_LEVEL,
}
_TOP_LEVEL_REQUIRED = frozenset({"name", "image", "run"})


def _normalize_document(document: Any, warnings: Errors) -> dict[str, Any]:
    """The normalized spec; the warnings found on the way are appended to `warnings`."""
    if not isinstance(document, dict):
        raise SpecError([{"loc": "", "msg": "expected a mapping at the top level"}])
    if (service := _service_file_error(document)) is not None:
        raise SpecError([service])
    problems: Errors = []
    # VESSL: "run could be empty if it's an interactive run" (a workspace kept alive for its terminal).
    required = _TOP_LEVEL_REQUIRED - {"run"} if document.get("interactive") is not None else _TOP_LEVEL_REQUIRED
    fields = _parse_fields(document, "", _TOP_LEVEL_PARSERS, required, problems)
    errors, found_warnings = split_warnings(problems)
    warnings += found_warnings
    if errors:
        raise SpecError(errors, warnings=found_warnings)
    return {
        "name": fields["name"],
        "description": fields.get("description", ""),
        "tags": fields.get("tags", []),
        "image": fields["image"]["url"],
        "image_credential": fields["image"]["credential"],
        "resources": fields.get("resources", {"cluster": DEFAULT_CLUSTER, "preset": DEFAULT_PRESET}),
        "import": fields.get("import", {}),
        "export": fields.get("export", {}),
        "run": fields.get("run", []),
        "env": fields.get("env", {}),
        "termination_protection": fields.get("termination_protection", False),
        "termination_grace_seconds": fields.get("termination_grace", DEFAULT_GRACE_SECONDS),
        "ports": fields.get("ports", []),
        "interactive": fields.get("interactive"),
    }


def parse_spec(source: str | bytes | Mapping[str, Any]) -> dict[str, Any]:
    """Validate a run spec and return it normalized, with every key present.

    ``source`` is YAML (or JSON) text, or a dict that was already parsed, e.g.
    from a JSON request body. Raises ``SpecError`` listing all problems found.
    The result shares no mutable objects with ``source``. The values of inline
    secrets (`env: {X: {value: ..., secret: true}}`) are not in it: see
    parse_spec_with_secrets.
    """
    return parse_spec_in_full(source)[0]


def parse_spec_with_secrets(source: str | bytes | Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
    """parse_spec, and the values of the spec's inline secrets by variable name: what
    creating a run stores encrypted with it. The spec marks each `{"inline_secret": true}`."""
    spec, secrets, _ = parse_spec_in_full(source)
    return spec, secrets


def parse_spec_with_warnings(source: str | bytes | Mapping[str, Any]) -> tuple[dict[str, Any], Errors]:
    """parse_spec, and the notes about what was accepted but changes nothing here
    (each {"loc", "msg"}). A SpecError carries the warnings found too (``.warnings``)."""
    spec, _, warnings = parse_spec_in_full(source)
    return spec, warnings


def parse_spec_in_full(source: str | bytes | Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, str], Errors]:
    """The normalized spec, its inline secrets' values (parse_spec_with_secrets) and its
    warnings (parse_spec_with_warnings): what creating a run needs of the file."""
    if isinstance(source, bytearray | memoryview):
        source = bytes(source)
    if isinstance(source, str | bytes):
        document = _load_yaml(source)
    else:
        if templates := _template_errors_in_data(source, []):
            raise SpecError(templates)
        document = source
    warnings: Errors = []
    spec, secrets = _split_inline_secrets(_normalize_document(document, warnings))
    return spec, secrets, warnings


# ---------------------------------------------------------------- dumping


class _SpecDumper(yaml.SafeDumper):
    pass


def _represent_str(dumper: yaml.SafeDumper, text: str) -> yaml.ScalarNode:
    # Multi-line commands read far better as "|" blocks than as "\n" escapes;
    # the emitter itself falls back to quoting when a block can't be exact.
    style = "|" if "\n" in text else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", text, style=style)


_SpecDumper.add_representer(str, _represent_str)


def format_duration(seconds: float) -> str:
    """10.0 → "10s", 90.5 → "1m30s500ms": as a run file writes a duration."""
    remaining_millis = round(seconds * 1000)
    parts: list[str] = []
    for unit, unit_millis in _MILLIS_PER_UNIT.items():
        amount, remaining_millis = divmod(remaining_millis, unit_millis)
        if amount:
            parts.append(f"{amount}{unit}")
    return "".join(parts) or "0s"


def _dump_import_source(source: Mapping[str, Any]) -> str | dict[str, Any]:
    if "git" in source:
        # A frozen spec pins the commit: the ref written out is that commit.
        git = {"url": source["git"]["url"], "ref": source["git"].get("commit") or source["git"]["ref"]}
        if source["git"].get("credential"):
            git["credential_name"] = source["git"]["credential"]
        return {"git": git}
    if "code" in source:
        return f"code://{source['code']['hash']}"
    if "remote" in source:
        return source["remote"]["url"]
    if "dataset" not in source:
        return _dump_reference_import(source)
    dataset = source["dataset"]
    version = dataset["version"]
    return f"dataset://{dataset['name']}" + ("" if version is None else f"@{version}")


def _dump_run_step(step: Mapping[str, Any]) -> dict[str, str]:
    if "wait_seconds" in step:
        return {"wait": format_duration(step["wait_seconds"])}
    rendered = {"command": step["command"]}
    if step["workdir"] is not None:
        rendered["workdir"] = step["workdir"]
    return rendered


def _dump_env_value(value: str | Mapping[str, Any]) -> str | dict[str, Any]:
    if isinstance(value, str):
        return value
    # An inline secret's value is not in the spec: `{secret: true}` keeps the stored one.
    return {"secret": True} if value.get("inline_secret") else {"secret": value["secret"]}


def _dump_image(spec: Mapping[str, Any]) -> str | dict[str, str]:
    if spec.get("image_credential"):
        return {"url": spec["image"], "credential_name": spec["image_credential"]}
    return spec["image"]


def _dump_interactive(interactive: Mapping[str, Any]) -> dict[str, Any]:
    document: dict[str, Any] = {}
    if interactive.get("max_runtime_seconds") is not None:
        document["max_runtime"] = format_duration(interactive["max_runtime_seconds"])
    if interactive.get("jupyter_idle_timeout_seconds") is not None:
        document["jupyter"] = {"idle_timeout": format_duration(interactive["jupyter_idle_timeout_seconds"])}
    return document


def dump_spec_yaml(spec: Mapping[str, Any]) -> str:
    """Render a spec from ``parse_spec`` back into user-facing run YAML.

    Empty optional fields are left out; ``parse_spec(dump_spec_yaml(s)) == s``.
    """
    document: dict[str, Any] = {"name": spec["name"]}
    if spec["description"]:
        document["description"] = spec["description"]
    if spec["tags"]:
        document["tags"] = list(spec["tags"])
    document["image"] = _dump_image(spec)
    document["resources"] = {"cluster": spec["resources"]["cluster"], "preset": spec["resources"]["preset"]}
    if spec["import"]:
        document["import"] = {path: _dump_import_source(source) for path, source in spec["import"].items()}
    if spec["export"]:
        document["export"] = {path: _dump_export_target(target) for path, target in spec["export"].items()}
    if spec["run"]:  # an interactive run may have none
        document["run"] = [_dump_run_step(step) for step in spec["run"]]
    if spec["env"]:
        document["env"] = {name: _dump_env_value(value) for name, value in spec["env"].items()}
    document["termination_protection"] = spec["termination_protection"]
    document["termination_grace"] = format_duration(spec["termination_grace_seconds"])
    if spec.get("ports"):  # a spec frozen before ports existed has none
        document["ports"] = [dict(port) for port in spec["ports"]]
    if spec.get("interactive") is not None:
        document["interactive"] = _dump_interactive(spec["interactive"])
    # A huge width keeps long commands on one line instead of folding them.
    return yaml.dump(document, Dumper=_SpecDumper, sort_keys=False, allow_unicode=True, width=2**16)


_LOC_PART = re.compile(r'\["((?:[^"\\]|\\.)*)"\]|\[(\d+)\]|\.?([^.\[\]]+)')


def line_of(source: str, loc: str) -> int | None:
    """The 1-based line of the YAML `source` that an error's `loc` points at
    (`run[0].workdir`, `import["/code/"].git.url`), or None if it is not there."""
    if not loc:
        return None
    try:
        node = yaml.compose(source, Loader=_UniqueKeySafeLoader)  # which bounds the nesting
    except (yaml.YAMLError, SpecError):
        return None
    parts: list[str | int] = []
    for quoted, index, plain in _LOC_PART.findall(loc):
        parts.append(int(index) if index else (quoted or plain))
    line = None
    for part in parts:
        if isinstance(node, yaml.MappingNode):
            found = next(((k, v) for k, v in node.value if isinstance(k, yaml.ScalarNode) and k.value == part), None)
            if found is None:
                return line
            line, node = found[0].start_mark.line + 1, found[1]
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            node = node.value[part]
            line = node.start_mark.line + 1
        else:
            return line
    return line
