"""Reading a fleet file into plain Python data that remembers where every key and value was written.

PyYAML's ``safe_load`` forgets positions, so this module composes the YAML node tree (which carries
line/column marks) and walks it itself, building dicts, lists and scalars while recording, for every
key path, the position of the key and of its value. Along the way it:

- fills in ``${NAME}`` environment references (see ``interpolate``), keeping the result as ``EnvText``
  so the settings read it as the type each key wants (``port: ${METRICS_PORT:-9100}`` gives 9100);
- applies YAML merge keys (``<<: *anchor``), so operators can share blocks with anchors;
- reports duplicate keys, non-string keys and unknown tags, which ``safe_load`` silently accepts or
  turns into tracebacks;
- turns every syntax error (including tab indentation), an empty, binary or non-UTF-8 file and a top
  level that is not a mapping into a ``Problem`` with a position, never an exception.

Positions here are 0-based as in PyYAML; ``Document.position`` returns them 1-based for messages.
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import yaml
from yaml.constructor import ConstructorError, SafeConstructor
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from fogline.fleet.errors import KeyPath, Problem
from fogline.fleet.interpolate import EnvText, interpolate

#: libyaml's parser when PyYAML was built with it (about ten times faster), else the Python one.
_FAST_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
#: Walking stops after this many nodes, so alias bombs (``&a [*b, *b, ...]``) cannot exhaust memory.
MAX_NODES = 200_000
#: Deepest nesting of mappings and lists a fleet file may have. Real fleet files stay under ten levels;
#: the limit is checked over the parser's events (no recursion) before anything builds a tree, and again
#: while walking (aliases can nest a block inside another), so no path relies on ``RecursionError``.
MAX_DEPTH = 64


@dataclass
class Document:
    """A parsed fleet file: its data, the positions of its keys and values, and what went wrong."""

    source: str
    data: Any = None
    key_marks: dict[KeyPath, tuple[int, int]] = field(default_factory=dict)
    value_marks: dict[KeyPath, tuple[int, int]] = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)
    #: Paths whose value still holds an unresolved ``${...}``; later checks skip them (already reported).
    unresolved: set[KeyPath] = field(default_factory=set)

    def position(self, path: KeyPath, *, at_key: bool = False) -> tuple[int, int]:
        """1-based (line, column) of ``path``, or of its closest written ancestor when it is not written.

        ``at_key`` points at the key (for "unknown key" messages) instead of the value.
        """
        for end in range(len(path), -1, -1):
            prefix = path[:end]
            marks = self.key_marks if at_key and end == len(path) else self.value_marks
            mark = marks.get(prefix) or self.key_marks.get(prefix)
            if mark is not None:
                return mark[0] + 1, mark[1] + 1
        return 1, 1

    def add(self, path: KeyPath, message: str, *, at_key: bool = False) -> None:
        line, column = self.position(path, at_key=at_key)
        self.problems.append(Problem(self.source, line, column, path, message))


def read_document(data: bytes | str, source: str, env: Mapping[str, str]) -> Document:
    """Parse ``data`` (the file's bytes or text); problems are collected in ``Document.problems``."""
    doc = Document(source)
    text = _decode(data, doc)
    if text is None:
        return doc
    if not text.strip() or all(
        not line.strip() or line.lstrip().startswith("#") for line in text.splitlines()
    ):
        doc.problems.append(
            Problem(
                source,
                0,
                0,
                (),
                "the file is empty; expected a mapping with version, cloud, defaults, groups and devices",
            )
        )
        return doc
    try:
        too_deep = _too_deep(text)
        if too_deep is not None:
            line, col = too_deep
            doc.problems.append(Problem(source, line, col, (), _too_deep_message()))
            return doc
        root = _compose(text)
    except yaml.MarkedYAMLError as exc:
        _syntax_problem(exc, doc, text)
        return doc
    except yaml.YAMLError as exc:
        doc.problems.append(Problem(source, 0, 0, (), f"not valid YAML: {exc}"))
        return doc
    if root is None:
        doc.problems.append(Problem(source, 0, 0, (), "the file holds no YAML document"))
        return doc
    if not isinstance(root, MappingNode):
        kind = "a list" if isinstance(root, SequenceNode) else f"the value {root.value!r}"
        line, col = root.start_mark.line + 1, root.start_mark.column + 1
        doc.problems.append(
            Problem(
                source,
                line,
                col,
                (),
                f"the top level must be a mapping of keys (version, cloud, ...), not {kind}",
            )
        )
        return doc
    walker = _Walker(doc, env)
    doc.value_marks[()] = (root.start_mark.line, root.start_mark.column)
    doc.data = walker.walk(root, ())
    return doc


def _too_deep_message() -> str:
    return f"the document is nested too deeply (more than {MAX_DEPTH} levels of mappings and lists)"


def _too_deep(text: str) -> tuple[int, int] | None:
    """1-based (line, column) where nesting first exceeds ``MAX_DEPTH``, else None.

    Runs over the parser's flat event stream (a state machine in both libyaml and PyYAML's Python
    parser), so it never recurses however deep the text is. libyaml refuses flow nesting past its own
    limit (1000) with a scanner error before yielding the events that lead there, so on any error the
    check runs again over the pure-Python parser. An error there too ends the check: composing reports
    it, and the text before it is no deeper than the limit.
    """
    loaders = [_FAST_LOADER] if _FAST_LOADER is yaml.SafeLoader else [_FAST_LOADER, yaml.SafeLoader]
    for loader in loaders:
        depth = 0
        try:
            for event in yaml.parse(text, Loader=loader):
                if isinstance(event, (yaml.MappingStartEvent, yaml.SequenceStartEvent)):
                    depth += 1
                    if depth > MAX_DEPTH:
                        return event.start_mark.line + 1, event.start_mark.column + 1
                elif isinstance(event, (yaml.MappingEndEvent, yaml.SequenceEndEvent)):
                    depth -= 1
        except yaml.YAMLError:
            continue
        return None
    return None


def _compose(text: str) -> Node | None:
    """The node tree of ``text``: libyaml when it is there; on an error, the Python parser's message."""
    try:
        return yaml.compose(text, Loader=_FAST_LOADER)
    except yaml.YAMLError:
        # Parse again with the pure-Python parser: its messages are the same on every installation.
        return yaml.compose(text, Loader=yaml.SafeLoader)


def _decode(data: bytes | str, doc: Document) -> str | None:
    if isinstance(data, str):
        text = data
    else:
        if b"\0" in data[:8192]:
            doc.problems.append(Problem(doc.source, 0, 0, (), "this is a binary file, not a YAML text file"))
            return None
        try:
            text = data.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            doc.problems.append(
                Problem(
                    doc.source,
                    0,
                    0,
                    (),
                    f"not a UTF-8 text file (undecodable byte at offset {exc.start}); save it as UTF-8",
                )
            )
            return None
    if "\0" in text:
        doc.problems.append(Problem(doc.source, 0, 0, (), "this is a binary file, not a YAML text file"))
        return None
    return text


def _syntax_problem(exc: yaml.MarkedYAMLError, doc: Document, text: str) -> None:
    mark = exc.problem_mark or exc.context_mark
    line, col = (mark.line + 1, mark.column + 1) if mark is not None else (0, 0)
    problem = exc.problem or "invalid YAML"
    at = text[mark.index] if mark is not None and 0 <= mark.index < len(text) else ""
    if at == "\t" or "'\\t'" in problem:
        message = "a tab character is used for indentation; YAML indents with spaces only"
    else:
        message = f"invalid YAML: {problem}"
        if exc.context:
            message += f" ({exc.context}"
            if exc.context_mark is not None and exc.context_mark is not mark:
                message += f" at line {exc.context_mark.line + 1}"
            message += ")"
    doc.problems.append(Problem(doc.source, line, col, (), message))


class _Walker:
    """Builds plain data from a node tree, recording marks and problems in the ``Document``."""

    def __init__(self, doc: Document, env: Mapping[str, str]):
        self.doc = doc
        self.env = env
        self.constructor = SafeConstructor()
        self.flattened: dict[int, tuple[list[tuple[Node, Node]], set[int]]] = {}
        self.active: set[int] = set()  # ids of mapping/sequence nodes on the current walk (recursion guard)
        self.count = 0

    def problem(self, node: Node, path: KeyPath, message: str) -> None:
        line, col = node.start_mark.line + 1, node.start_mark.column + 1
        self.doc.problems.append(Problem(self.doc.source, line, col, path, message))

    def walk(self, node: Node, path: KeyPath) -> Any:
        self.count += 1
        if self.count > MAX_NODES:
            if self.count == MAX_NODES + 1:
                self.problem(node, path, f"the document expands to more than {MAX_NODES} values (aliases?)")
            return None
        if isinstance(node, ScalarNode):
            return self.scalar(node, path)
        if len(self.active) >= MAX_DEPTH:
            # Only aliases get here: the text itself was checked before composing.
            self.problem(node, path, _too_deep_message() + " once aliases are expanded")
            return None
        if node.tag not in ("tag:yaml.org,2002:map", "tag:yaml.org,2002:seq"):
            self.problem(
                node, path, f"unsupported YAML tag {node.tag!r}; use plain mappings, lists and values"
            )
            return None
        if id(node) in self.active:
            self.problem(node, path, "an alias refers to a block that contains it (a recursive structure)")
            return None
        self.active.add(id(node))
        try:
            if isinstance(node, SequenceNode):
                return self.sequence(node, path)
            return self.mapping(node, path)
        finally:
            self.active.discard(id(node))

    def sequence(self, node: SequenceNode, path: KeyPath) -> list[Any]:
        items = []
        for index, child in enumerate(node.value):
            child_path = (*path, index)
            self.doc.key_marks[child_path] = self.doc.value_marks[child_path] = _mark(child)
            items.append(self.walk(child, child_path))
        return items

    def pairs(self, node: MappingNode, path: KeyPath) -> tuple[list[tuple[Node, Node]], set[int]]:
        """The mapping's (key, value) pairs with '<<' merges applied, and the ids of its own keys.

        Pairs merged in from ``<<: *anchor`` come first and give way to the mapping's own keys. The
        result is remembered per node, since an aliased mapping is walked once per alias.
        """
        known = self.flattened.get(id(node))
        if known is not None:
            return known
        own = {id(key) for key, _ in node.value}
        try:
            self.constructor.flatten_mapping(node)
        except ConstructorError as exc:
            self.problem(node, path, f"bad merge key '<<': {exc.problem}")
            node.value = [(k, v) for k, v in node.value if k.tag != "tag:yaml.org,2002:merge"]
        merged = [(k, v) for k, v in node.value if id(k) not in own]
        self.flattened[id(node)] = ([*merged, *(pair for pair in node.value if id(pair[0]) in own)], own)
        return self.flattened[id(node)]

    def mapping(self, node: MappingNode, path: KeyPath) -> dict[str, Any]:
        pairs, own = self.pairs(node, path)
        own_keys = {k.value for k, _ in pairs if id(k) in own and isinstance(k, ScalarNode)}
        result: dict[str, Any] = {}
        for key_node, value_node in pairs:
            if not isinstance(key_node, ScalarNode):
                self.problem(key_node, path, "a key must be a plain name, not a list or mapping")
                continue
            key = key_node.value
            is_own = id(key_node) in own
            if not is_own and (key in own_keys or key in result):
                continue
            if is_own and key_node.tag != "tag:yaml.org,2002:str" and not key_node.style:
                kind = (
                    self.constructor.construct_object(key_node)
                    if key_node.tag.startswith("tag:yaml.org")
                    else key
                )
                if not isinstance(kind, str):
                    self.problem(
                        key_node,
                        (*path, key),
                        f'the key {key} reads as {type(kind).__name__}; quote it: "{key}"',
                    )
            child_path = (*path, key)
            if key in result:
                first = self.doc.key_marks[child_path][0] + 1
                self.problem(
                    key_node, child_path, f"duplicate key {key!r} (first set at line {first}); remove one"
                )
                continue
            self.doc.key_marks[child_path] = _mark(key_node)
            self.doc.value_marks[child_path] = _mark(value_node)
            result[key] = self.walk(value_node, child_path)
        return result

    def scalar(self, node: ScalarNode, path: KeyPath) -> Any:
        try:
            value = self.constructor.construct_object(node, deep=True)
        except ConstructorError as exc:
            self.problem(node, path, f"cannot read this value: {exc.problem}")
            return None
        if isinstance(value, (datetime.date, datetime.datetime)):
            return node.value  # a date-looking string: keep the text as written
        if not isinstance(value, str) or "$" not in value:
            return value
        text, problems = interpolate(node.value, self.env)
        if problems:
            one_line = node.start_mark.line == node.end_mark.line
            quote = 1 if node.style else 0  # plain scalars have no style (libyaml: "")
            for found in problems:
                column = node.start_mark.column + 1 + (quote + found.offset if one_line else 0)
                line = node.start_mark.line + 1
                self.doc.problems.append(Problem(self.doc.source, line, column, path, found.message))
            self.doc.unresolved.add(path)
        return EnvText(text)


def _mark(node: Node) -> tuple[int, int]:
    return node.start_mark.line, node.start_mark.column
