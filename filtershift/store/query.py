"""A small expression language over the meta of records: ``--where 'task == "Classification" and conv_depth_norm
<= 0.3'``.

Grammar (keywords lower case; parsed here, never given to ``eval``)::

    expr       := term ("or" term)*
    term       := factor ("and" factor)*
    factor     := "not" factor | "(" expr ")" | comparison
    comparison := NAME ("==" | "!=" | "<" | "<=" | ">" | ">=") VALUE
                | NAME ["not"] "in" "[" VALUE ("," VALUE)* "]"
    NAME       := identifier | `any text in backticks`   (a column such as `Training-Dataset`)
    VALUE      := "text" | 'text' | number | true | false

A name is a coordinate of the Dataset (``task``, ``model_id``, ``conv_depth_norm``, ...), a column of the records
table (``layer``, ``in_channels``, ...) or of the models table (``total_filters``, ``Visual Category``, ...; a
grouping column by its original name means its coordinate). The expression is evaluated once per record, in
O(records): a model column gives each record its model's value. A comparison with a missing value is false (so
``not`` of it is true); ordering (``<`` ...) applies to numbers only; a label that a grouping coordinate does not
have, an unknown name, or a string compared with a number is an error that lists the choices.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import pandas as pd

from filtershift.errors import InputError

_TOKEN = re.compile(r"""
    (?P<space>\s+)
  | (?P<op>==|!=|<=|>=|<|>|=)
  | (?P<punct>[()\[\],])
  | (?P<string>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*')
  | (?P<quoted>`[^`]*`)
  | (?P<number>[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)
  | (?P<word>[A-Za-z_][A-Za-z0-9_.]*)
""", re.VERBOSE)
_KEYWORDS = {"and", "or", "not", "in", "true", "false"}
_ORDER = {"<", "<=", ">", ">="}


@dataclass(frozen=True)
class _Tok:
    kind: str
    text: str
    pos: int


@dataclass(frozen=True)
class Compare:
    """``name op value``."""

    name: str
    op: str
    value: object


@dataclass(frozen=True)
class In:
    """``name in [values]`` (``negate``: ``not in``)."""

    name: str
    values: tuple
    negate: bool = False


@dataclass(frozen=True)
class BoolOp:
    """``and`` / ``or`` of two or more parts."""

    op: str
    parts: tuple


@dataclass(frozen=True)
class Not:
    part: object


@dataclass(frozen=True)
class Query:
    """A parsed ``--where`` expression: :func:`parse` builds it, :meth:`mask` evaluates it on a table."""

    text: str
    root: object

    @property
    def names(self) -> set:
        """The names the expression uses."""
        out, todo = set(), [self.root]
        while todo:
            node = todo.pop()
            if isinstance(node, (Compare, In)):
                out.add(node.name)
            elif isinstance(node, BoolOp):
                todo.extend(node.parts)
            elif isinstance(node, Not):
                todo.append(node.part)
        return out

    def mask(self, columns: dict, labels: dict | None = None) -> np.ndarray:
        """Evaluate on ``columns`` (name -> one value per row; see :func:`query_columns`): a boolean per row.
        ``labels`` (name -> the labels of a grouping coordinate) makes an unknown label an error."""
        labels = labels or {}
        unknown = sorted(self.names - set(columns))
        if unknown:
            raise InputError(f"--where {self.text!r}: unknown name(s) {unknown}; choose among {list(columns)} "
                             "(names with spaces or dashes in backticks, e.g. `Training-Dataset`).")
        return _evaluate(self.root, columns, labels, self.text)


def parse(text: str) -> Query:
    """Parse a ``--where`` expression (see the module docstring); a syntax error names the place."""
    if not isinstance(text, str) or not text.strip():
        raise InputError("--where needs an expression, e.g. 'task == \"Classification\" and conv_depth_norm <= 0.3'.")
    tokens = _tokenize(text)
    parser = _Parser(text, tokens)
    root = parser.expr()
    if parser.i < len(tokens):
        parser.fail("expected 'and', 'or' or the end")
    return Query(text, root)


def query_columns(records: pd.DataFrame, models: pd.DataFrame, coordinates: dict, grouping: dict,
                  missing: dict | None = None) -> dict:
    """The names an expression may use, each with one value per row of ``records``: the ``coordinates`` (name ->
    per-record values), then the records table's columns, then the models table's columns (looked up by the
    record's ``model_id``), and each grouping column's original name as its coordinate (``grouping``: coordinate
    -> column), except a bool column's: ``Robust == true`` compares the flag, ``robust == "True"`` the label.
    ``missing`` (coordinate -> the label that stands for a missing value) turns that label back into a missing
    value, so that a comparison with it is false as with any missing value."""
    coordinates = dict(coordinates)
    for name, label in (missing or {}).items():
        if name in coordinates:
            values = np.array(coordinates[name], dtype=object)
            values[values == label] = None
            coordinates[name] = values
    out = dict(coordinates)
    for col in records.columns:
        out.setdefault(str(col), records[col].to_numpy())
    per_record = models.set_index("model_id").reindex(records["model_id"].to_numpy())
    for col in per_record.columns:
        out.setdefault(str(col), per_record[col].to_numpy())
    for coord, column in grouping.items():
        if coord in coordinates and not pd.api.types.is_bool_dtype(models[column]):
            out[str(column)] = coordinates[coord]
    return out


# -- parsing ---------------------------------------------------------------------------------------------------------

def _tokenize(text: str) -> list:
    tokens, pos = [], 0
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None:
            raise InputError(f"--where: unexpected character {text[pos]!r} at column {pos + 1}:\n  {text}\n"
                             f"  {' ' * pos}^")
        kind = m.lastgroup
        if kind != "space":
            if kind == "op" and m.group() == "=":
                raise InputError(f"--where: '=' at column {pos + 1}: write '==' to compare.\n  {text}\n"
                                 f"  {' ' * pos}^")
            tokens.append(_Tok(kind, m.group(), pos))
        pos = m.end()
    return tokens


class _Parser:
    def __init__(self, text: str, tokens: list):
        self.text, self.tokens, self.i = text, tokens, 0

    def fail(self, what: str):
        pos = self.tokens[self.i].pos if self.i < len(self.tokens) else len(self.text)
        found = repr(self.tokens[self.i].text) if self.i < len(self.tokens) else "the end"
        raise InputError(f"--where: {what} at column {pos + 1}, found {found}:\n  {self.text}\n  {' ' * pos}^")

    def peek(self, text: str | None = None, kind: str | None = None) -> bool:
        if self.i >= len(self.tokens):
            return False
        tok = self.tokens[self.i]
        return (text is None or tok.text == text) and (kind is None or tok.kind == kind)

    def take(self, text: str, what: str) -> None:
        if not self.peek(text):
            self.fail(what)
        self.i += 1

    def expr(self):
        return self.chain("or", self.term)

    def term(self):
        return self.chain("and", self.factor)

    def chain(self, op: str, part):
        """``part (op part)*``: one part, or a BoolOp of them."""
        parts = [part()]
        while self.peek(op, "word"):
            self.i += 1
            parts.append(part())
        return parts[0] if len(parts) == 1 else BoolOp(op, tuple(parts))

    def factor(self):
        if self.peek("not", "word"):
            self.i += 1
            return Not(self.factor())
        if self.peek("("):
            self.i += 1
            node = self.expr()
            self.take(")", "expected ')'")
            return node
        return self.comparison()

    def name(self) -> str:
        if self.peek(kind="quoted"):
            self.i += 1
            return self.tokens[self.i - 1].text[1:-1]
        if self.peek(kind="word") and self.tokens[self.i].text not in _KEYWORDS:
            self.i += 1
            return self.tokens[self.i - 1].text
        self.fail("expected a name (a coordinate or column; in backticks if it has spaces or dashes)")

    def value(self):
        if self.i >= len(self.tokens):
            self.fail("expected a value")
        tok = self.tokens[self.i]
        if tok.kind == "string":
            self.i += 1
            return re.sub(r"\\(.)", r"\1", tok.text[1:-1])
        if tok.kind == "number":
            self.i += 1
            number = float(tok.text)
            return int(number) if re.fullmatch(r"[-+]?\d+", tok.text) else number
        if tok.kind == "word" and tok.text in ("true", "false"):
            self.i += 1
            return tok.text == "true"
        self.fail("expected a value (a \"quoted\" label, a number, true or false)")

    def comparison(self):
        name = self.name()
        negate = False
        if self.peek("not", "word"):
            self.i += 1
            negate = True
            if not self.peek("in", "word"):
                self.fail("expected 'in' after 'not'")
        if self.peek("in", "word"):
            self.i += 1
            self.take("[", "expected '[' to open the list of values")
            values = [self.value()]
            while self.peek(","):
                self.i += 1
                values.append(self.value())
            self.take("]", "expected ',' or ']'")
            return In(name, tuple(values), negate)
        if not self.peek(kind="op"):
            self.fail(f"expected a comparison (==, !=, <, <=, >, >=, in) after {name!r}")
        op = self.tokens[self.i].text
        self.i += 1
        return Compare(name, op, self.value())


# -- evaluation ------------------------------------------------------------------------------------------------------

def _missing(values: np.ndarray) -> np.ndarray:
    return np.asarray(pd.isna(values), bool)


def _is_numeric(values: np.ndarray) -> bool:
    if values.dtype.kind in "iufb":
        return True
    present = values[~_missing(values)]
    return len(present) > 0 and all(isinstance(v, (int, float, np.number)) and not isinstance(v, bool)
                                    for v in present[:1000])


def _check_value(name, values, value, labels, text, op=None) -> None:
    numeric = _is_numeric(values)
    if isinstance(value, str) and numeric:
        raise InputError(f"--where {text!r}: {name} holds numbers; compare it with a number, not {value!r}.")
    if not isinstance(value, str) and not numeric:
        raise InputError(f"--where {text!r}: {name} holds text; compare it with a \"quoted\" label, not {value!r}.")
    if op in _ORDER and not numeric:
        raise InputError(f"--where {text!r}: {op} orders numbers; {name} holds text (use == or in [...]).")
    if isinstance(value, str) and name in labels and value not in labels[name]:
        raise InputError(f"--where {text!r}: {name} has no label {value!r}; the labels are {list(labels[name])}.")


def _evaluate(node, columns: dict, labels: dict, text: str) -> np.ndarray:
    if isinstance(node, BoolOp):
        parts = [_evaluate(p, columns, labels, text) for p in node.parts]
        return np.logical_and.reduce(parts) if node.op == "and" else np.logical_or.reduce(parts)
    if isinstance(node, Not):
        return ~_evaluate(node.part, columns, labels, text)
    values = np.asarray(columns[node.name])
    present = ~_missing(values)
    if isinstance(node, In):
        for v in node.values:
            _check_value(node.name, values, v, labels, text)
        hit = np.zeros(len(values), bool)
        hit[present] = pd.Index(values[present]).isin(list(node.values))
        return (present & ~hit) if node.negate else hit
    _check_value(node.name, values, node.value, labels, text, node.op)
    out = np.zeros(len(values), bool)
    v, value = values[present], node.value
    if not isinstance(value, str):
        # compare in the column's own precision: conv_depth_norm <= 0.3 keeps a float32 0.3
        v = v if v.dtype.kind in "fb" else v.astype(np.float64)
        value = v.dtype.type(value) if v.dtype.kind == "f" else value
    compare = {"==": np.equal, "!=": np.not_equal, "<": np.less, "<=": np.less_equal, ">": np.greater,
               ">=": np.greater_equal}[node.op]
    out[present] = np.asarray(compare(v, value), bool)
    return out
