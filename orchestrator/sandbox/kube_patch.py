"""Patches (JSON merge, JSON patch, strategic merge) and selectors (label, field) for the sandbox.

Pure functions on plain JSON values, so they are easy to test and the HTTP layer stays thin. Strategic
merge is simplified: lists of objects that all carry a `name` are merged by name (containers, env,
volumes...), every other list is replaced, as a JSON merge patch would.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass
from typing import Any

from orchestrator.sandbox.kube_status import bad_request, patch_invalid, unsupported_media_type

MERGE = "application/merge-patch+json"
JSON_PATCH = "application/json-patch+json"
STRATEGIC = "application/strategic-merge-patch+json"


class PatchError(ValueError):
    """The patch does not apply to the document (a JSON patch path missing, a failed `test`)."""


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386: objects merge recursively, `null` deletes, anything else replaces."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def _named_list(items: list[Any]) -> bool:
    return all(isinstance(i, dict) and ("name" in i or "$patch" in i) for i in items)


def strategic_merge_patch(target: Any, patch: Any) -> Any:
    """Kubernetes strategic merge, simplified: see the module docstring."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    directive = patch.get("$patch")
    if directive == "delete":
        return None
    if directive == "replace":
        return {k: copy.deepcopy(v) for k, v in patch.items() if not k.startswith("$")}
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if key.startswith("$"):
            continue  # $retainKeys, $setElementOrder/...: ordering and pruning hints we do not model
        if value is None:
            result.pop(key, None)
            continue
        current = result.get(key)
        if isinstance(value, list) and isinstance(current, list) and value and _named_list(value + current):
            result[key] = _merge_named_list(current, value)
            continue
        merged = strategic_merge_patch(current, value)
        if merged is None:
            result.pop(key, None)
        else:
            result[key] = merged
    return result


def _merge_named_list(current: list[Any], patch: list[Any]) -> list[Any]:
    if any(item.get("$patch") == "replace" for item in patch):
        return [copy.deepcopy(i) for i in patch if "$patch" not in i]
    result = [copy.deepcopy(i) for i in current]
    for item in patch:
        name = item.get("name")
        index = next((n for n, existing in enumerate(result) if existing.get("name") == name), None)
        if item.get("$patch") == "delete":
            if index is not None:
                del result[index]
        elif index is None:
            result.append({k: copy.deepcopy(v) for k, v in item.items() if not k.startswith("$")})
        else:
            result[index] = strategic_merge_patch(result[index], item)
    return result


def _pointer(path: str) -> list[str]:
    if path == "":
        return []
    if not path.startswith("/"):
        raise PatchError(f"JSON pointer {path!r} must start with '/'")
    return [p.replace("~1", "/").replace("~0", "~") for p in path[1:].split("/")]


def _index(container: list[Any], token: str, path: str, *, adding: bool) -> int:
    if adding and token == "-":
        return len(container)
    if not token.isdigit() or (len(token) > 1 and token.startswith("0")):
        raise PatchError(f"invalid array index {token!r} in {path}")
    index = int(token)
    limit = len(container) if adding else len(container) - 1
    if index > limit:
        raise PatchError(f"array index {index} out of bounds in {path}")
    return index


def _parent(doc: Any, tokens: list[str], path: str) -> Any:
    node = doc
    for token in tokens[:-1]:
        if isinstance(node, dict):
            if token not in node:
                raise PatchError(f"doc is missing path: {path}")
            node = node[token]
        elif isinstance(node, list):
            node = node[_index(node, token, path, adding=False)]
        else:
            raise PatchError(f"doc is missing path: {path}")
    return node


def _get(doc: Any, path: str) -> Any:
    tokens = _pointer(path)
    if not tokens:
        return doc
    parent = _parent(doc, tokens, path)
    last = tokens[-1]
    if isinstance(parent, dict):
        if last not in parent:
            raise PatchError(f"doc is missing key: {path}")
        return parent[last]
    if isinstance(parent, list):
        return parent[_index(parent, last, path, adding=False)]
    raise PatchError(f"doc is missing path: {path}")


def _remove(doc: Any, path: str) -> Any:
    tokens = _pointer(path)
    if not tokens:
        raise PatchError("cannot remove the whole document")
    parent = _parent(doc, tokens, path)
    last = tokens[-1]
    if isinstance(parent, dict):
        if last not in parent:
            raise PatchError(f"remove operation does not apply: doc is missing key: {path}")
        return parent.pop(last)
    if isinstance(parent, list):
        return parent.pop(_index(parent, last, path, adding=False))
    raise PatchError(f"remove operation does not apply: doc is missing path: {path}")


def _add(doc: Any, path: str, value: Any, *, replace: bool = False) -> Any:
    tokens = _pointer(path)
    if not tokens:
        return value
    parent = _parent(doc, tokens, path)
    last = tokens[-1]
    if isinstance(parent, dict):
        if replace and last not in parent:
            raise PatchError(f"replace operation does not apply: doc is missing key: {path}")
        parent[last] = value
    elif isinstance(parent, list):
        if replace:
            parent[_index(parent, last, path, adding=False)] = value
        else:
            parent.insert(_index(parent, last, path, adding=True), value)
    else:
        raise PatchError(f"add operation does not apply: doc is missing path: {path}")
    return doc


def json_patch(target: Any, operations: Any) -> Any:
    """RFC 6902 on a copy of `target`; raises PatchError when an operation does not apply."""
    if not isinstance(operations, list):
        raise TypeError("a JSON patch must be a list of operations")
    doc = copy.deepcopy(target)
    for op in operations:
        if (
            not isinstance(op, dict)
            or not isinstance(op.get("op"), str)
            or not isinstance(op.get("path"), str)
        ):
            raise TypeError(f"invalid JSON patch operation: {op!r}")
        kind, path = op["op"], op["path"]
        if kind in ("add", "replace", "test") and "value" not in op:
            raise TypeError(f"JSON patch operation {kind} at {path} needs a value")
        if kind == "add":
            doc = _add(doc, path, copy.deepcopy(op["value"]))
        elif kind == "replace":
            doc = _add(doc, path, copy.deepcopy(op["value"]), replace=True)
        elif kind == "remove":
            _remove(doc, path)
        elif kind in ("move", "copy"):
            source = op.get("from")
            if not isinstance(source, str):
                raise TypeError(f"JSON patch operation {kind} at {path} needs 'from'")
            value = _remove(doc, source) if kind == "move" else copy.deepcopy(_get(doc, source))
            doc = _add(doc, path, value)
        elif kind == "test":
            if _get(doc, path) != op["value"]:
                raise PatchError(f"testing value {path} failed")
        else:
            raise TypeError(f"unexpected JSON patch operation {kind!r}")
    return doc


@dataclass(frozen=True)
class Requirement:
    key: str
    op: str  # "=", "!=", "in", "notin", "exists", "!"
    values: tuple[str, ...] = ()

    def matches(self, labels: dict[str, str]) -> bool:
        value = labels.get(self.key)
        if self.op == "=":
            return value == self.values[0]
        if self.op == "!=":
            return value != self.values[0]
        if self.op == "in":
            return value is not None and value in self.values
        if self.op == "notin":
            return value is None or value not in self.values
        if self.op == "exists":
            return self.key in labels
        return self.key not in labels


_SET_RE = re.compile(r"^([^\s!=(),]+)\s+(in|notin)\s*\(([^()]*)\)$")
_EQ_RE = re.compile(r"^([^\s!=(),]+)\s*(==|!=|=)\s*([^\s!=(),]*)$")
_KEY_RE = re.compile(r"^(!?)\s*([^\s!=(),]+)$")


def _split_terms(text: str) -> list[str]:
    terms, depth, start = [], 0, 0
    for n, ch in enumerate(text):
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        elif ch == "," and depth == 0:
            terms.append(text[start:n])
            start = n + 1
    terms.append(text[start:])
    return [t.strip() for t in terms if t.strip()]


def parse_label_selector(text: str) -> list[Requirement]:
    """`a=b,c!=d,e in (f,g),h notin (i),j,!k`; raises ValueError with kube-apiserver's wording."""
    requirements = []
    for term in _split_terms(text):
        if m := _SET_RE.match(term):
            values = tuple(v.strip() for v in m.group(3).split(",") if v.strip())
            requirements.append(Requirement(m.group(1), m.group(2), values))
        elif m := _EQ_RE.match(term):
            requirements.append(Requirement(m.group(1), "!=" if m.group(2) == "!=" else "=", (m.group(3),)))
        elif m := _KEY_RE.match(term):
            requirements.append(Requirement(m.group(2), "!" if m.group(1) else "exists"))
        else:
            raise ValueError(f"unable to parse requirement: {term!r}")
    return requirements


FIELD_LABELS = ("metadata.name", "metadata.namespace")


def parse_field_selector(text: str) -> list[tuple[str, bool, str]]:
    """`metadata.name=web,metadata.namespace!=x` → (field, equal, value); only metadata fields."""
    result = []
    for term in _split_terms(text):
        m = _EQ_RE.match(term)
        if not m:
            raise ValueError(f"invalid selector: {term!r}; can't understand {term!r}")
        if m.group(1) not in FIELD_LABELS:
            raise ValueError(f'field label not supported: "{m.group(1)}"')
        result.append((m.group(1), m.group(2) != "!=", m.group(3)))
    return result


def field_matches(selector: list[tuple[str, bool, str]], obj: dict[str, Any]) -> bool:
    meta = obj.get("metadata") or {}
    for field, equal, value in selector:
        actual = meta.get(field.split(".", 1)[1], "")
        if (actual == value) != equal:
            return False
    return True


def selector_matches(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    """A `LabelSelector` object (matchLabels, matchExpressions) against a label map."""
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr.get("key"), expr.get("operator"), expr.get("values") or []
        present = key in labels
        if (
            (op == "In" and not (present and labels[key] in values))
            or (op == "NotIn" and present and labels[key] in values)
            or (op == "Exists" and not present)
            or (op == "DoesNotExist" and present)
        ):
            return False
    return True


def selector_string(selector: dict[str, Any]) -> str:
    """A `LabelSelector` object as the string form a Scale's `status.selector` carries."""
    terms = [f"{k}={v}" for k, v in sorted((selector.get("matchLabels") or {}).items())]
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr.get("key"), expr.get("operator"), sorted(expr.get("values") or [])
        if op == "In":
            terms.append(f"{key} in ({','.join(values)})")
        elif op == "NotIn":
            terms.append(f"{key} notin ({','.join(values)})")
        elif op == "Exists":
            terms.append(str(key))
        elif op == "DoesNotExist":
            terms.append(f"!{key}")
    return ",".join(terms)


def apply_patch(custom: bool, content_type: str, current: dict[str, Any], patch: Any) -> Any:
    """Apply a PATCH body by its media type; errors are the Status a kube-apiserver answers."""
    media = content_type.split(";", 1)[0].strip().lower()
    accepted = "application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml"
    if not custom:
        accepted += ", application/strategic-merge-patch+json"
    if media == JSON_PATCH:
        if not isinstance(patch, list):
            raise bad_request(
                f"json: cannot unmarshal {type(patch).__name__} into Go value of type jsonpatch.Patch"
            )
        try:
            return json_patch(current, patch)
        except TypeError as e:
            raise bad_request(str(e)) from e
        except PatchError as e:
            raise patch_invalid(str(e)) from e
    if media == MERGE or (media == STRATEGIC and not custom):
        if not isinstance(patch, dict):
            kind = type(patch).__name__
            raise bad_request(
                f"json: cannot unmarshal {kind} into Go value of type map[string]interface {{}}"
            )
        return merge_patch(current, patch) if media == MERGE else strategic_merge_patch(current, patch)
    if media == "application/apply-patch+yaml":
        raise unsupported_media_type("server-side apply is not emulated by the sandbox API server")
    raise unsupported_media_type(
        f"the body of the request was in an unknown format - accepted media types include: {accepted}"
    )
