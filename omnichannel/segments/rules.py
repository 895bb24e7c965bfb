"""Segment rules: validation of the JSON tree, and its compilation to one Q over profiles.

The tree::

    {"op": "all" | "any", "negate": false, "children": [<condition or group>, ...]}
    condition: {"type": "<condition key>", "negate": false, "params": {...}}

A group nests at most ``MAX_DEPTH`` levels (the root is level 1) and a tree holds at most
``MAX_CONDITIONS`` conditions. The root group may be empty and then matches every profile; a
nested group must not be empty. Errors name their place (``children[1].params.days: ...``).

Nothing from the rules is ever written into SQL text: condition types build Django lookups and
subqueries, and values travel as query parameters.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from django.core.exceptions import ValidationError
from django.db.models import Q
from django.utils.translation import gettext

from .conditions import ReferenceField, SegmentField, registry

#: Deepest nesting of groups (the root group is level 1).
MAX_DEPTH = 5
#: Most conditions in one tree (a bigger one is a mistake, and a very long query).
MAX_CONDITIONS = 200

GROUP_KEYS = {"op", "negate", "children"}
CONDITION_KEYS = {"type", "negate", "params"}
OPS = ("all", "any")


class RuleError(ValidationError):
    """Invalid segment rules; each message starts with the place, e.g. ``children[0].type:``."""

    def __init__(self, messages: list[str] | str) -> None:
        super().__init__(messages if isinstance(messages, list) else [messages])


def _at(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


@dataclass
class _Walk:
    """One pass over a tree: errors found, conditions counted, references met."""

    errors: list[str] = field(default_factory=list)
    conditions: int = 0
    #: (path of the params, field name, field, value) of every reference to another object
    references: list[tuple[str, str, ReferenceField, int]] = field(default_factory=list)

    def error(self, path: str, message: str) -> None:
        self.errors.append(f"{path or 'rules'}: {message}")


def _clean_node(node: Any, path: str, depth: int, walk: _Walk) -> dict[str, Any] | None:
    """The cleaned node (params as Python values), or None after recording its errors."""
    if not isinstance(node, dict):
        walk.error(path, gettext("must be an object (a condition or a group)"))
        return None
    if "type" in node:
        return _clean_condition(node, path, walk)
    if "op" in node or "children" in node:
        return _clean_group(node, path, depth, walk)
    walk.error(path, gettext('must have "type" (a condition) or "op" and "children" (a group)'))
    return None


def _clean_negate(node: dict[str, Any], path: str, walk: _Walk) -> bool:
    negate = node.get("negate", False)
    if not isinstance(negate, bool):
        walk.error(_at(path, "negate"), gettext("must be true or false"))
        return False
    return negate


def _clean_group(node: dict[str, Any], path: str, depth: int, walk: _Walk) -> dict | None:
    ok = True
    for key in sorted(set(node) - GROUP_KEYS, key=str):
        walk.error(_at(path, str(key)), gettext("unknown key"))
        ok = False
    if depth > MAX_DEPTH:
        walk.error(path, gettext("groups nest at most %(n)s levels deep") % {"n": MAX_DEPTH})
        return None
    op = node.get("op")
    if op not in OPS:
        walk.error(_at(path, "op"), gettext('must be "all" or "any"'))
        ok = False
    negate = _clean_negate(node, path, walk)
    children = node.get("children", [])
    if not isinstance(children, list):
        walk.error(_at(path, "children"), gettext("must be a list"))
        return None
    if not children and depth > 1:
        walk.error(_at(path, "children"), gettext("a group needs at least one condition"))
        ok = False
    cleaned = []
    for index, child in enumerate(children):
        result = _clean_node(child, _at(path, f"children[{index}]"), depth + 1, walk)
        if result is None:
            ok = False
        cleaned.append(result)
    if not ok:
        return None
    return {"op": op, "negate": negate, "children": cleaned}


def _clean_condition(node: dict[str, Any], path: str, walk: _Walk) -> dict | None:
    walk.conditions += 1
    ok = True
    for key in sorted(set(node) - CONDITION_KEYS, key=str):
        walk.error(_at(path, str(key)), gettext("unknown key"))
        ok = False
    negate = _clean_negate(node, path, walk)
    key = node["type"]
    if not isinstance(key, str) or key not in registry:
        walk.error(
            _at(path, "type"),
            gettext("unknown condition type %(key)s") % {"key": _quote(key)},
        )
        return None
    condition = registry.get(key)
    params_path = _at(path, "params")
    try:
        params = condition.clean_params(node.get("params", {}))
    except ValidationError as exc:
        for name, messages in _error_items(exc):
            place = params_path if name in ("__all__", None) else _at(params_path, name)
            for message in messages:
                walk.error(place, message)
        return None
    if not ok:
        return None
    form_fields = condition.form_class.base_fields
    for name, value in params.items():
        form_field = form_fields.get(name)
        if isinstance(form_field, ReferenceField) and value is not None:
            walk.references.append((params_path, name, form_field, value))
    return {"type": key, "negate": negate, "params": params}


def _quote(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _error_items(exc: ValidationError) -> list[tuple[str | None, list[str]]]:
    if hasattr(exc, "error_dict"):
        return [(name, ValidationError(errors).messages) for name, errors in exc.error_dict.items()]
    return [(None, exc.messages)]


def _clean_tree(data: Any) -> tuple[dict[str, Any], _Walk]:
    walk = _Walk()
    if not isinstance(data, dict):
        walk.error("", gettext("must be an object with op, negate and children"))
        raise RuleError(walk.errors)
    if "type" in data:
        walk.error("", gettext('the root must be a group ("op" and "children"), not a condition'))
        raise RuleError(walk.errors)
    if not data:  # {}: a blank JSON field, the same as an empty "all" group
        data = {"op": "all", "negate": False, "children": []}
    cleaned = _clean_group(data, "", 1, walk)
    if walk.conditions > MAX_CONDITIONS:
        walk.error("", gettext("at most %(n)s conditions") % {"n": MAX_CONDITIONS})
    if walk.errors or cleaned is None:
        raise RuleError(walk.errors or [gettext("rules: invalid")])
    return cleaned, walk


def _to_json(node: dict[str, Any]) -> dict[str, Any]:
    if "type" in node:
        condition = registry.get(node["type"])
        return {
            "type": node["type"],
            "negate": node["negate"],
            "params": condition.to_json(node["params"]),
        }
    return {
        "op": node["op"],
        "negate": node["negate"],
        "children": [_to_json(child) for child in node["children"]],
    }


def validate_rules(data: object, *, segment_id: int | None = None) -> dict[str, Any]:
    """The cleaned rules, ready to store; RuleError listing every problem with its place.

    Also checks that referenced products, categories and segments exist, and that segment
    references make no cycle (``segment_id``: the segment these rules belong to, if saved).
    """
    cleaned, walk = _clean_tree(data)
    errors: list[str] = []
    segment_refs: list[tuple[str, int]] = []
    for params_path, name, form_field, value in walk.references:
        try:
            form_field.check_exists(value)
        except ValidationError as exc:
            errors.extend(f"{_at(params_path, name)}: {message}" for message in exc.messages)
            continue
        if isinstance(form_field, SegmentField):
            segment_refs.append((_at(params_path, name), value))
    if segment_refs:
        errors.extend(_cycle_errors(segment_refs, segment_id))
    if errors:
        raise RuleError(errors)
    return _to_json(cleaned)


def _references_in(rules: Any) -> list[int]:
    """Ids of the segments a stored tree refers to (tolerant of malformed trees)."""
    found: list[int] = []
    if not isinstance(rules, dict):
        return found
    if rules.get("type") == "in_segment":
        params = rules.get("params")
        value = params.get("segment") if isinstance(params, dict) else None
        if isinstance(value, int) and not isinstance(value, bool):
            found.append(value)
    children = rules.get("children")
    if isinstance(children, list):
        for child in children:
            found.extend(_references_in(child))
    return found


def _cycle_errors(refs: list[tuple[str, int]], segment_id: int | None) -> list[str]:
    from .models import Segment

    names: dict[int, str] = {}
    edges: dict[int, list[int]] = {}
    for pk, name, rules in Segment.objects.values_list("pk", "name", "rules"):
        names[pk] = name
        edges[pk] = _references_in(rules)

    def label(pk: int) -> str:
        return f"“{names.get(pk, pk)}”"

    errors = []
    for place, start in refs:
        if segment_id is not None and start == segment_id:
            errors.append(f"{place}: " + gettext("a segment cannot contain itself"))
            continue
        cycle = _find_cycle(start, edges, segment_id)
        if cycle:
            chain = " → ".join(
                label(pk) if pk != segment_id else gettext("this segment") for pk in cycle
            )
            errors.append(
                f"{place}: "
                + gettext("segment %(name)s makes a cycle: %(chain)s")
                % {"name": label(start), "chain": chain}
            )
    return errors


def _find_cycle(start: int, edges: dict[int, list[int]], segment_id: int | None) -> list[int]:
    """A path from ``start`` back to ``segment_id`` or to a segment already on the path."""
    path: list[int] = []

    def visit(pk: int) -> list[int]:
        if pk in path:
            return [*path[path.index(pk) :], pk]
        path.append(pk)
        targets = edges.get(pk, [])
        for target in targets:
            if segment_id is not None and target == segment_id:
                return [*path, target]
            found = visit(target)
            if found:
                return found
        path.pop()
        return []

    return visit(start)


# --- Compilation ------------------------------------------------------------------------------
@dataclass
class _Compilation:
    """State of one top-level compile: other segments' rules (loaded once), segments in
    progress (to stop cycles)."""

    segments: dict[int, tuple[str, Any]] | None = None
    stack: list[int] = field(default_factory=list)


_compilation: ContextVar[_Compilation | None] = ContextVar("segment_compilation", default=None)


@contextmanager
def compiling() -> Iterator[_Compilation]:
    """Share one compilation (other segments' rules read once) across several compile_rules."""
    current = _compilation.get()
    if current is not None:
        yield current
        return
    state = _Compilation()
    token = _compilation.set(state)
    try:
        yield state
    finally:
        _compilation.reset(token)


#: Always true and always false (an empty Q() would be "no filter" either way).
EVERYONE = Q(pk__isnull=False)
NOBODY = Q(pk__isnull=True)


def compile_rules(rules: dict[str, Any], *, now: datetime, segment_id: int | None = None) -> Q:
    """The rules as one Q over CustomerProfile; RuleError if they are not valid.

    Referenced segments are compiled inline; their rules are read in one query the first
    time a tree refers to another segment (so a segment with ``in_segment`` conditions costs
    one more query, whatever the depth). ``segment_id`` is the segment being compiled, to
    catch a reference back to it.
    """
    cleaned, _walk = _clean_tree(rules)
    with compiling() as state:
        pushed = segment_id is not None and segment_id not in state.stack
        if pushed:
            state.stack.append(segment_id)  # type: ignore[arg-type]
        try:
            return _compile(cleaned, now=now)
        finally:
            if pushed:
                state.stack.pop()


def _compile(node: dict[str, Any], *, now: datetime, negated: bool = False) -> Q:
    """The Q of a node; ``negated``: the node is inside an odd number of negations.

    Negations are pushed down to the conditions (De Morgan: not (a and b) = not a or not b),
    so that each condition picks the SQL shape that stays fast when negated (see
    ``ConditionType.to_negated_q``) instead of a NOT around a whole subtree.
    """
    negated = negated != node["negate"]
    if "type" in node:
        condition = registry.get(node["type"])
        if negated:
            return condition.to_negated_q(node["params"], now=now)
        return condition.to_q(node["params"], now=now)
    if not node["children"]:
        return NOBODY if negated else EVERYONE
    op = node["op"]
    if negated:
        op = "any" if op == "all" else "all"
    parts = [_compile(child, now=now, negated=negated) for child in node["children"]]
    q = parts[0]
    for part in parts[1:]:
        q = (q & part) if op == "all" else (q | part)
    return q


def compile_segment_reference(segment_id: int, *, now: datetime, negated: bool = False) -> Q:
    """The Q of another segment's rules, or of their negation (for ``in_segment``)."""
    from .models import Segment

    with compiling() as state:
        if state.segments is None:
            state.segments = {
                pk: (name, rules)
                for pk, name, rules in Segment.objects.values_list("pk", "name", "rules")
            }
        if segment_id not in state.segments:
            raise RuleError(
                gettext("segment %(id)s does not exist (it was deleted?)") % {"id": segment_id}
            )
        name, rules = state.segments[segment_id]
        if segment_id in state.stack:
            chain = [state.segments.get(pk, (str(pk),))[0] for pk in state.stack]
            raise RuleError(
                gettext("segments refer to each other in a cycle: %(chain)s")
                % {"chain": " → ".join([*chain, name])}
            )
        state.stack.append(segment_id)
        try:
            cleaned, _walk = _clean_tree(rules)
        except RuleError as exc:
            raise RuleError(
                [
                    gettext("segment “%(name)s”: %(error)s") % {"name": name, "error": message}
                    for message in exc.messages
                ]
            ) from exc
        try:
            return _compile(cleaned, now=now, negated=negated)
        finally:
            state.stack.pop()


def describe_rules(rules: Any) -> str:
    """The rules as a sentence for people, e.g. ``Orders count at least 2 and not (...)``."""
    try:
        cleaned, _walk = _clean_tree(rules)
    except RuleError:
        return gettext("(invalid rules)")
    return _describe(cleaned, top=True)


def _describe(node: dict[str, Any], *, top: bool = False) -> str:
    if "type" in node:
        text = registry.get(node["type"]).describe(node["params"])
    elif not node["children"]:
        text = gettext("everyone")
    else:
        joiner = gettext(" and ") if node["op"] == "all" else gettext(" or ")
        text = joiner.join(_describe(child) for child in node["children"])
        if len(node["children"]) > 1 and (not top or node["negate"]):
            text = f"({text})"
    if node["negate"]:
        text = gettext("not %(text)s") % {"text": text}
    return text
