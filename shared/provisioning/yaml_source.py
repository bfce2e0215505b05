"""YAML parsed with its line numbers, so configuration errors can say where the bad entry is."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import yaml

Path = tuple[Any, ...]


class ConfigError(ValueError):
    """A configuration file problem; the message names the line and the field path."""

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems = list(problems)
        super().__init__("; ".join(self.problems))


@dataclass
class LocatedYaml:
    """A YAML document's data and the 1-based line of every mapping value and sequence item, by path."""

    data: Any
    lines: dict[Path, int] = field(default_factory=dict)

    def line_of(self, path: Sequence[Any]) -> int | None:
        """The line of `path`, or of its nearest located ancestor."""
        path = tuple(path)
        while path:
            if path in self.lines:
                return self.lines[path]
            path = path[:-1]
        return self.lines.get(())


def format_path(path: Sequence[Any]) -> str:
    """('sources', 0, 'port') -> 'sources[0].port'."""
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "(document)"


def located_problem(doc: LocatedYaml, path: Sequence[Any], message: str) -> str:
    """'line N: path: message' (the line of the entry at `path`, or its nearest parent)."""
    line = doc.line_of(path)
    where = f"line {line}: " if line is not None else ""
    return f"{where}{format_path(path)}: {message}"


def _record_lines(node: yaml.Node, path: Path, lines: dict[Path, int], problems: list[str]) -> None:
    if isinstance(node, yaml.MappingNode):
        seen: set[Any] = set()
        for key_node, value_node in node.value:
            key = key_node.value if isinstance(key_node, yaml.ScalarNode) else str(key_node.value)
            if key in seen:
                problems.append(f"line {key_node.start_mark.line + 1}: {format_path(path + (key,))}: duplicate key")
            seen.add(key)
            lines[path + (key,)] = key_node.start_mark.line + 1
            _record_lines(value_node, path + (key,), lines, problems)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            lines[path + (index,)] = item.start_mark.line + 1
            _record_lines(item, path + (index,), lines, problems)


def load_located_yaml(text: str) -> LocatedYaml:
    """Parse one YAML document (safe types only); ConfigError with line and column on bad YAML or duplicate keys."""
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        data = loader.construct_document(node) if node is not None else None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        detail = ", ".join(part for part in (exc.context, exc.problem) if part)
        raise ConfigError([f"invalid YAML{where}: {detail}"]) from None
    except yaml.YAMLError as exc:
        raise ConfigError([f"invalid YAML: {exc}"]) from None
    finally:
        loader.dispose()
    lines: dict[Path, int] = {}
    problems: list[str] = []
    if node is not None:
        lines[()] = node.start_mark.line + 1
        _record_lines(node, (), lines, problems)
    if problems:
        raise ConfigError(problems)
    return LocatedYaml(data=data, lines=lines)
